"""``pinsage predict``: embed the whole catalogue layer by layer and write the serving artifacts.

The output folder (``artifacts.output_dir`` in the config, default ``artifacts/<dataset>``) holds:

* ``embeddings.npy``: ``float32 [num_items, d]``, row i = dense item index i;
* ``items.csv``: ``index,id,title`` (title empty where the dataset has none), and ``categories``
  (names joined by ``|``) and ``year`` where the dataset has them;
* ``users.npz``: every user's raw id and the items of their whole log (CSR, each user's in time
  order), for ``pinsage recommend --user`` (seen items are excluded from its answers);
* ``index.faiss``: the FAISS index (``artifacts.index``: exact | hnsw | ivfpq | auto);
* ``metrics.json`` (when ``artifacts.evaluate``): every evaluation protocol on the test split,
  the model and the baselines scored by the same code;
* ``manifest.json``: dims, count, index type, checkpoint, the resolved config;
* the inductive files (``model.pt``, ``layer_<k>.npy`` per-layer vectors, ``walk_graph.npz``,
  ``neighbourhoods.npz``, ``features.json``; see :mod:`app.inductive`): what ``pinsage serve``
  ``POST /items`` and ``pinsage embed-new`` need to embed new items.

The folder is written under a temporary name beside the target and renamed into place at the
end, so a crash never leaves a half-written artifact set (an older set is replaced only once the
new one is complete). Only an artifact folder (its ``manifest.json`` says ``"format":
"pinsage-artifacts"``, or an empty folder) is ever replaced: any other existing folder is refused
before any work is done. Temporary folders left by a killed predict (named with their process id)
are removed by the next run. The folder and its files get the permissions of the umask, like any
file the user creates. ``manifest.json`` records the size and SHA-256 of every other file;
``pinsage recommend`` verifies them at load.
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
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

INDEX_KINDS = ("auto", "exact", "hnsw", "ivfpq")
ARTIFACTS_FORMAT = "pinsage-artifacts"
#: first characters a spreadsheet reads as a formula (CSV injection); such a title is written with a
#: leading ``'`` (and a title starting with ``'`` gets one more), undone by :func:`read_title`
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def safe_title(title: str) -> str:
    return "'" + title if title.startswith(_FORMULA_START) else title


def read_title(cell: str) -> str:
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(_FORMULA_START) else cell


def file_digest(path: Path) -> Dict[str, Any]:
    """``{"size": bytes, "sha256": hex}`` of one file (read in 8 MiB blocks)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(8 << 20), b""):
            h.update(block)
    return {"size": path.stat().st_size, "sha256": h.hexdigest()}


def check_output_dir(output_dir: str) -> Path:
    """Refuse (ValueError) an output folder that is not ours to replace; called before any work."""
    out = Path(output_dir)
    if out.resolve() == Path.cwd().resolve() or out.resolve() == Path(out.resolve().anchor):
        raise ValueError(f"--artifacts.output_dir {output_dir!r} is the current folder or the root: predict "
                         "replaces its output folder as a whole; name a folder of its own (e.g. artifacts/<dataset>)")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--artifacts.output_dir {output_dir!r} is a file: name a folder")
    if out.is_dir() and any(out.iterdir()) and not is_artifact_folder(out):
        raise ValueError(f"--artifacts.output_dir {output_dir!r} exists and is not an artifact folder written by "
                         "`pinsage predict` (no manifest.json saying so): predict replaces its output folder as a "
                         "whole, so it only replaces its own; choose a new or empty folder")
    return out


def is_artifact_folder(folder: Path) -> bool:
    """True when ``folder/manifest.json`` marks it as written by predict and it holds nothing else."""
    try:
        man = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(man, dict) or man.get("format") != ARTIFACTS_FORMAT:
        return False
    listed = set(man.get("files", []))
    return all(p.name in listed for p in folder.iterdir())


def clean_stale_temps(out: Path) -> List[Path]:
    """Remove temp/old folders of earlier predicts into ``out`` whose process is gone."""
    removed = []
    if not out.parent.is_dir():
        return removed
    for p in out.parent.glob(f".{out.name}.*"):
        parts = p.name[len(out.name) + 2:].split(".")
        # ours: .<name>.<pid>.<random>.tmp (being written) and .<name>.old-<pid> (being swapped)
        pid = parts[0] if p.name.endswith(".tmp") else (parts[0][4:] if parts[0].startswith("old-") else "")
        if not p.is_dir() or not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def choose_index(kind: str, num_items: int) -> str:
    if kind not in INDEX_KINDS:
        raise ValueError(f"artifacts.index={kind!r} is not valid; choose one of {list(INDEX_KINDS)}")
    if kind == "auto":
        return "exact" if num_items < 200_000 else "ivfpq"
    return kind


def load_weights(module, ckpt_path: Optional[str]) -> Dict[str, Any]:
    """Load a Lightning checkpoint into ``module`` (``weights_only=True``; shape checked)."""
    from .checkpoints import read_checkpoint

    if not ckpt_path:
        raise ValueError("predict needs --ckpt_path: the checkpoint of a trained model (e.g. <run>/checkpoints/last.ckpt)")
    ckpt = read_checkpoint(ckpt_path)
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
    baselines: Optional[Sequence[str]] = None,
    engine: str = "local",
    ray_address: Optional[str] = None,
    neighbours: int = 50,
) -> Path:
    """Embed every item layer-wise with the trained model and write the artifact folder.

    ``engine``: ``local`` (this process, :func:`app.inference.layerwise_embeddings`) or ``ray``
    (:func:`app.ray_inference.ray_layerwise_embeddings` on the cluster at ``ray_address``, a
    local Ray when ``None``): the same embeddings either way.  ``neighbours``: every item's top-K
    from the index, precomputed into ``neighbours.npy`` (what ``pinsage serve`` answers
    ``k <= K`` from); 0: none."""
    import torch

    from datamodules.graph import InteractionGraph

    from .evaluation import evaluate as run_evaluation
    from .evaluation import recency_weights
    from .inductive import write_inductive_files
    from .inference import neighbourhoods_for_all
    from .retrieval import build_index, neighbour_table, save_index

    log = (lambda m: print(f"[pinsage predict] {m}", file=sys.stderr, flush=True)) if progress else (lambda m: None)
    out = check_output_dir(output_dir)
    for p in clean_stale_temps(out):
        log(f"removed {p} (left by a predict that was killed)")
    datamodule.setup("predict")
    ds = datamodule.dataset
    kind = choose_index(index, ds.num_items)
    t0 = time.perf_counter()
    module.eval()
    nbr = neighbourhoods_for_all(datamodule.neighbour_sampler(), ds.num_items, chunk_size=chunk_size, progress=progress)
    log(f"neighbourhoods of {ds.num_items} items in {time.perf_counter() - t0:.1f}s")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp", dir=out.parent))
    try:
        if engine == "ray":
            from .ray_inference import ray_layerwise_embeddings

            emb, layers = ray_layerwise_embeddings(module.model, ds.item_features, datamodule.neighbour_sampler(),
                                                   partition_size=chunk_size, address=ray_address), None
            np.save(tmp / "embeddings.npy", np.asarray(emb, dtype=np.float32))
        else:
            layers = _stream_embeddings(module.model, ds, nbr, tmp, chunk_size, progress)
        # read back from the file the model streamed it into (memory: the table, not the tables)
        emb = np.load(tmp / "embeddings.npy")
        log(f"embeddings {emb.shape} in {time.perf_counter() - t0:.1f}s")
        titles = ds.item_titles()
        cats, years = item_categories_and_years(ds)
        with open(tmp / "items.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["index", "id", "title"] + (["categories"] if cats else []) + (["year"] if years else []))
            for i, raw in enumerate(ds.interactions.item_ids.tolist()):
                w.writerow([i, safe_title(str(raw)), "" if titles is None else safe_title(str(titles[i]))]
                           + ([safe_title(cats[i])] if cats else []) + ([years[i]] if years else []))
        inter = ds.interactions
        # each user's items in time order (the explorer's "recent history"; the log's order without timestamps)
        full = InteractionGraph.from_edges(inter.users, inter.items, inter.num_users, inter.num_items,
                                           timestamps=inter.timestamps)
        enc = module.user_encoder.lin
        encoder = (np.eye(emb.shape[1], dtype=np.float32) if enc is None
                   else enc.weight.detach().cpu().numpy().astype(np.float32))
        np.savez(tmp / "users.npz", user_ids=np.asarray(inter.user_ids).astype(str), ptr=full.user_ptr,
                 items=full.user_items.astype(np.int64), encoder=encoder)
        # the Ray engine keeps its layer tables in the object store: no inductive files then
        inductive = None if layers is None else write_inductive_files(tmp, module.model, datamodule, nbr, layers)
        del layers
        t1 = time.perf_counter()
        log(f"building the {kind} index of {emb.shape[0]} x {emb.shape[1]} embeddings")
        index_obj = build_index(emb, kind)
        save_index(index_obj, tmp / "index.faiss")
        log(f"{kind} index in {time.perf_counter() - t1:.1f}s")
        nb_info = None
        if neighbours and emb.shape[0] > 1:
            t1 = time.perf_counter()
            nb_k = min(int(neighbours), emb.shape[0] - 1)
            np.save(tmp / "neighbours.npy", neighbour_table(index_obj, emb, nb_k))
            nb_info = {"file": "neighbours.npy", "k": nb_k, "seconds": round(time.perf_counter() - t1, 1)}
            log(f"top-{nb_k} neighbour table in {nb_info['seconds']}s")
        del index_obj
        metrics = None
        if evaluate:
            hp = module.hparams
            half = getattr(datamodule, "user_recency_half_life", None)
            metrics = run_evaluation(
                ds, torch.from_numpy(emb), part="test", log=log, ks=[k for k in hp.eval_ks if k < ds.num_items],
                protocols=hp.test_protocols, baselines=hp.baselines if baselines is None else list(baselines),
                seed=getattr(datamodule, "seed", 0),
                user_fn=module.user_vectors, history_weights=None if half is None else (
                    lambda part: recency_weights(ds, part, half)), history_half_life=half)
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
        manifest = {
            "format": ARTIFACTS_FORMAT, "dataset": ds.name, "count": int(emb.shape[0]), "dims": int(emb.shape[1]), "index": kind,
            "checkpoint": None if ckpt_path is None else str(Path(ckpt_path).resolve()),
            "num_layers": int(module.model.num_layers), "num_neighbors": getattr(datamodule, "num_neighbors", None),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "config": config or {},
            "inductive": inductive, "neighbours": nb_info,
            "files": sorted(p.name for p in tmp.iterdir()) + ["manifest.json"],
            "checksums": {p.name: file_digest(p) for p in sorted(tmp.iterdir())},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
        mode = 0o666 & ~_umask()
        for p in tmp.iterdir():
            os.chmod(p, mode)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700: a serving account could not read it
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"wrote {out}")
    return out


def item_categories_and_years(ds):
    """Per item its categories (names joined by ``|``) and its year (``""`` when unknown), from the
    dataset's item table; ``None`` for a column the dataset does not have.  They become the optional
    ``categories`` / ``year`` columns of ``items.csv`` (shown by the explorer's item cards)."""
    t = ds.interactions.item_table
    cats = years = None
    if t is not None and t.categories is not None and len(t.category_names):
        names = np.asarray([str(c).replace("|", "/") for c in t.category_names], dtype=object)
        multi = np.asarray(t.categories).astype(bool)
        cats = ["|".join(names[row]) for row in multi]
    if t is not None and t.years is not None:
        years = ["" if int(y) < 0 else str(int(y)) for y in np.asarray(t.years).tolist()]
    return cats, years


def _stream_embeddings(model, ds, nbr, tmp: Path, chunk_size: int, progress: bool) -> list:
    """Layer-wise inference straight into ``tmp``: the layer tables ``layer_k.npy`` (the
    inductive files) and ``embeddings.npy``, created with ``np.lib.format.open_memmap`` so that
    the model's tables are those files and resident memory stays bounded by one table and a chunk
    (see :func:`app.inference.layerwise_embeddings`). Returns ``[None] * K``: the layers are
    written (what :func:`app.inductive.write_inductive_files` expects of layers it must not write)."""
    from .inference import layerwise_embeddings

    def npy(name, cols):
        return np.lib.format.open_memmap(tmp / name, mode="w+", dtype=np.float32, shape=(ds.num_items, cols))

    layers = [npy(f"layer_{k}.npy", model.hidden_channels) for k in range(model.num_layers)]
    emb = npy("embeddings.npy", model.out_channels)
    layerwise_embeddings(model, ds.item_features, nbr, chunk_size=chunk_size, progress=progress,
                         layers_out=layers, out=emb)
    for a in layers + [emb]:
        a.flush()
    del layers, emb  # unmapped: the files hold them
    return [None] * model.num_layers


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` (an artifact folder or an empty one, checked
    again here) is moved aside first and removed after."""
    check_output_dir(str(out))
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
