"""``pinsage predict``: embed the whole catalogue layer by layer and write the serving artifacts.

The output folder (``artifacts.output_dir`` in the config, default ``artifacts/<dataset>``) holds:

* ``embeddings.npy``: ``float32 [num_items, d]``, row i = dense item index i;
* ``items.csv``: ``index,id,title`` (title empty where the dataset has none);
* ``users.npz``: every user's raw id and the items of their whole log (CSR), for
  ``pinsage recommend --user`` (seen items are excluded from its answers);
* ``index.faiss``: the FAISS index (``artifacts.index``: exact | hnsw | ivfpq | auto);
* ``metrics.json`` (when ``artifacts.evaluate``): every evaluation protocol on the test split,
  the model and the baselines scored by the same code;
* ``manifest.json``: dims, count, index type, checkpoint, the resolved config;
* the inductive files (``model.pt``, ``layer_<k>.npy`` per-layer vectors, ``walk_graph.npz``,
  ``neighbourhoods.npz``, ``features.json``; see :mod:`app.inductive`): what ``pinsage serve``
  ``POST /items`` and ``pinsage embed-new`` need to embed new items.

The folder is written under a temporary name beside the target and renamed into place at the
end, so a crash never leaves a half-written artifact set (an older set is replaced only once the
new one is complete).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

INDEX_KINDS = ("auto", "exact", "hnsw", "ivfpq")


def choose_index(kind: str, num_items: int) -> str:
    if kind not in INDEX_KINDS:
        raise ValueError(f"artifacts.index={kind!r} is not valid; choose one of {list(INDEX_KINDS)}")
    if kind == "auto":
        return "exact" if num_items < 200_000 else "ivfpq"
    return kind


def load_weights(module, ckpt_path: Optional[str]) -> Dict[str, Any]:
    """Load a Lightning checkpoint into ``module`` (``weights_only=True``; shape checked)."""
    if not ckpt_path:
        raise ValueError("predict needs --ckpt_path: the checkpoint of a trained model (e.g. <run>/checkpoints/last.ckpt)")
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"--ckpt_path {ckpt_path!r} does not exist")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    module.on_load_checkpoint(ckpt)
    module.load_state_dict(ckpt["state_dict"])
    return ckpt


def write_artifacts(
    module,
    datamodule,
    output_dir: str,
    index: str = "auto",
    chunk_size: int = 65536,
    evaluate: bool = True,
    ckpt_path: Optional[str] = None,
    config: Optional[dict] = None,
    progress: bool = True,
) -> Path:
    """Embed every item layer-wise with the trained model and write the artifact folder."""
    from datamodules.graph import InteractionGraph

    from .evaluation import evaluate as run_evaluation
    from .evaluation import recency_from_end
    from .inductive import write_inductive_files
    from .inference import layerwise_embeddings, neighbourhoods_for_all
    from .retrieval import build_index, save_index

    log = (lambda m: print(f"[pinsage predict] {m}", file=sys.stderr, flush=True)) if progress else (lambda m: None)
    datamodule.setup("predict")
    ds = datamodule.dataset
    kind = choose_index(index, ds.num_items)
    t0 = time.perf_counter()
    nbr = neighbourhoods_for_all(datamodule.neighbour_sampler(), ds.num_items, chunk_size=chunk_size)
    log(f"neighbourhoods of {ds.num_items} items in {time.perf_counter() - t0:.1f}s")
    module.eval()
    emb, layers = layerwise_embeddings(module.model, ds.item_features, nbr, chunk_size=chunk_size,
                                       progress=progress, return_layers=True)
    emb = emb.detach().cpu().numpy().astype(np.float32)
    log(f"embeddings {emb.shape} in {time.perf_counter() - t0:.1f}s")

    out = Path(output_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        np.save(tmp / "embeddings.npy", emb)
        titles = ds.item_titles()
        with open(tmp / "items.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["index", "id", "title"])
            for i, raw in enumerate(ds.interactions.item_ids.tolist()):
                w.writerow([i, raw, "" if titles is None else titles[i]])
        inter = ds.interactions
        full = InteractionGraph.from_edges(inter.users, inter.items, inter.num_users, inter.num_items)
        enc = module.user_encoder.lin
        encoder = (np.eye(emb.shape[1], dtype=np.float32) if enc is None
                   else enc.weight.detach().cpu().numpy().astype(np.float32))
        np.savez(tmp / "users.npz", user_ids=np.asarray(inter.user_ids).astype(str), ptr=full.user_ptr,
                 items=full.user_items.astype(np.int64), encoder=encoder)
        inductive = write_inductive_files(tmp, module.model, datamodule, nbr, layers)
        del layers
        t1 = time.perf_counter()
        save_index(build_index(emb, kind), tmp / "index.faiss")
        log(f"{kind} index in {time.perf_counter() - t1:.1f}s")
        metrics = None
        if evaluate:
            hp = module.hparams
            half = getattr(datamodule, "user_recency_half_life", None)
            metrics = run_evaluation(
                ds, torch.from_numpy(emb), part="test", log=log, ks=[k for k in hp.eval_ks if k < ds.num_items],
                protocols=hp.test_protocols, baselines=hp.baselines, seed=getattr(datamodule, "seed", 0),
                user_fn=module.user_vectors, history_weights=None if half is None else (
                    lambda part: np.exp2(-recency_from_end(ds, part) / float(half)).astype(np.float32)))
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
        manifest = {
            "dataset": ds.name, "count": int(emb.shape[0]), "dims": int(emb.shape[1]), "index": kind,
            "checkpoint": None if ckpt_path is None else str(Path(ckpt_path).resolve()),
            "num_layers": int(module.model.num_layers), "num_neighbors": getattr(datamodule, "num_neighbors", None),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "config": config or {},
            "inductive": inductive,
            "files": sorted(p.name for p in tmp.iterdir()) + ["manifest.json"],
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"wrote {out}")
    return out


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` is moved aside first and removed after."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
