"""``pinsage predict``: embed the whole catalogue layer by layer and write the serving artifacts.

What the folder holds, how it is named and swapped into place: :mod:`app.artifact_format` (the
one owner of the format).  This module computes what goes in it: neighbourhoods, layer-wise
embeddings (or the Ray engine's), the item table, user histories, the FAISS index and its
similar-items table, ``metrics.json``, and the inductive files (:mod:`app.inductive`).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np

from . import artifact_format as fmt
# re-exported: the names callers used before the format had its own module
from .artifact_format import (ARTIFACTS_FORMAT, check_output_dir, clean_stale_temps, file_digest,  # noqa: F401
                              is_artifact_folder, read_title, safe_title)

INDEX_KINDS = ("auto", "exact", "hnsw", "ivfpq")


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
    from .inductive import write_inductive_files
    from .inference import neighbourhoods_for_all

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
    tmp = Path(tempfile.mkdtemp(prefix=fmt.temp_prefix(out), suffix=".tmp", dir=out.parent))
    try:
        layers = _write_embeddings(module.model, datamodule, nbr, tmp, chunk_size, progress, engine, ray_address)
        # read back from the file the model streamed it into, mapped (copy-on-write: evaluation may
        # hand it to torch; nothing writes it): its pages are the file's, read where needed
        emb = np.load(tmp / fmt.EMBEDDINGS, mmap_mode="c")
        log(f"embeddings {emb.shape} in {time.perf_counter() - t0:.1f}s")
        cats, years = item_categories_and_years(ds)
        fmt.write_items(tmp / fmt.ITEMS, ds.interactions.item_ids.tolist(), ds.item_titles(), cats, years)
        _write_users(tmp, ds, module, emb.shape[1])
        # the Ray engine keeps its layer tables in the object store: no inductive files then
        inductive = None if layers is None else write_inductive_files(tmp, module.model, datamodule, nbr, layers)
        del layers
        nb_info = _write_index(tmp, emb, kind, neighbours, log)
        if evaluate:
            metrics = _evaluate(module, datamodule, emb, baselines, log)
            (tmp / fmt.METRICS).write_text(json.dumps(metrics, indent=1, sort_keys=True))
        fmt.write_manifest(tmp, {
            "dataset": ds.name, "count": int(emb.shape[0]), "dims": int(emb.shape[1]), "index": kind,
            "checkpoint": None if ckpt_path is None else str(Path(ckpt_path).resolve()),
            "num_layers": int(module.model.num_layers), "num_neighbors": getattr(datamodule, "num_neighbors", None),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "config": config or {},
            "inductive": inductive, "neighbours": nb_info})
        fmt.publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"wrote {out}")
    return out


def _write_embeddings(model, datamodule, nbr, tmp: Path, chunk_size: int, progress: bool, engine: str,
                      ray_address: Optional[str]):
    """``embeddings.npy`` (and, locally, the layer tables) into ``tmp``; returns the layers for
    :func:`app.inductive.write_inductive_files`, ``None`` with the Ray engine."""
    ds = datamodule.dataset
    if engine != "ray":
        return _stream_embeddings(model, ds, nbr, tmp, chunk_size, progress)
    from .ray_inference import ray_layerwise_embeddings

    emb = ray_layerwise_embeddings(model, ds.item_features, datamodule.neighbour_sampler(),
                                   partition_size=chunk_size, address=ray_address)
    np.save(tmp / fmt.EMBEDDINGS, np.asarray(emb, dtype=np.float32))
    return None


def _write_users(tmp: Path, ds, module, dims: int) -> None:
    """``users.npz``: each user's items in time order (the explorer's "recent history"; the log's
    order without timestamps), the model's user-encoder matrix (identity when it has none) and,
    when the model has one, its user-id table (:data:`app.artifact_format.USER_ID_TABLE`).

    The table's row ``u`` is the model's user ``u``: the dense user index of the log
    (``ds.interactions.users``, the rows of every history CSR the model trained and was evaluated
    on), which is also the order of ``user_ids`` and ``ptr`` here, so it is written as is; a table
    whose row count is not the log's user count is refused (a checkpoint of another dataset).

    The order is :meth:`InteractionGraph.from_edges`'s (its ``_csr``: by user, then timestamp, then
    log position), but no second graph of the whole log is built: the user pointer is a chunked
    count, an already grouped log (the synthetic generator's) needs no sort at all, and the
    ``items`` / ``user_ids`` arrays are written to the archive chunk by chunk (one chunk of
    temporaries, not the 100M-row copies; benchmarks/SCALE.md)."""
    from datamodules import chunks
    from datamodules.graph import _csr

    inter = ds.interactions
    ptr, src = _csr(inter.users, inter.num_users, inter.timestamps)  # src None: the log's own order
    chunks.release(inter.users, inter.timestamps)
    enc = module.user_encoder.lin
    encoder = (np.eye(dims, dtype=np.float32) if enc is None
               else enc.weight.detach().cpu().numpy().astype(np.float32))
    table = _user_id_table(module, inter.num_users, dims)
    items = inter.items
    with zipfile.ZipFile(tmp / fmt.USERS, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        _npz_chunks(zf, "user_ids", *_as_str_chunks(np.asarray(inter.user_ids)))
        _npz_array(zf, "ptr", ptr)
        del ptr
        n = items.shape[0] if src is None else src.shape[0]
        _npz_chunks(zf, "items", np.dtype(np.int64), (n,), _items_in_order(items, src, n))
        _npz_array(zf, "encoder", encoder)
        if table is not None:
            _npz_chunks(zf, fmt.USER_ID_TABLE, np.dtype(np.float32), table.shape,
                        (table[a:b] for a, b in chunks.spans(table.shape[0])))


def _user_id_table(module, num_users: int, dims: int) -> Optional[np.ndarray]:
    """The model's user-id table ``float32 [num_users, dims]`` (``None``: it has none), checked
    against the log it is written beside."""
    emb = getattr(module.user_encoder, "user_emb", None)
    if emb is None:
        return None
    table = emb.weight.detach().cpu().numpy().astype(np.float32, copy=False)
    if table.shape != (num_users, dims):
        raise ValueError(f"the model's user-id table has shape {tuple(table.shape)}, the dataset has "
                         f"{num_users} users and the embeddings {dims} dims: expected ({num_users}, {dims}); "
                         "predict with the dataset the checkpoint was trained on")
    return table


def _items_in_order(items: np.ndarray, src: Optional[np.ndarray], n: int):
    """``items[src]`` (``items`` when ``src`` is None) as int64 chunks; a mapped log's pages are
    handed back after each chunk."""
    from datamodules import chunks

    for a, b in chunks.spans(n):
        yield (items[a:b] if src is None else items[src[a:b]]).astype(np.int64)
        chunks.release(items)


def _npz_array(zf: "zipfile.ZipFile", name: str, arr: np.ndarray) -> None:
    """One array into an open ``.npz`` archive, as ``np.savez`` writes it."""
    with zf.open(name + ".npy", "w", force_zip64=True) as fid:
        np.lib.format.write_array(fid, np.asanyarray(arr), allow_pickle=False)


def _npz_chunks(zf: "zipfile.ZipFile", name: str, dtype: np.dtype, shape: tuple, parts) -> None:
    """An array of ``dtype`` and ``shape`` into an open ``.npz`` archive from its consecutive C-order
    ``parts``: the bytes ``np.savez`` writes for the whole array, without the whole in memory."""
    header = np.lib.format.header_data_from_array_1_0(np.empty(0, dtype=dtype))
    header["shape"] = tuple(int(s) for s in shape)
    want = int(np.prod(header["shape"])) * np.dtype(dtype).itemsize
    done = 0
    with zf.open(name + ".npy", "w", force_zip64=True) as fid:
        np.lib.format.write_array_header_1_0(fid, header)
        for part in parts:
            part = np.ascontiguousarray(part, dtype=dtype)
            fid.write(part.data)
            done += part.nbytes
    if done != want:
        raise RuntimeError(f"{name}: {done} bytes written for shape {shape} of {dtype} ({want} expected)")


def _as_str_chunks(ids: np.ndarray):
    """``(dtype, shape, parts)`` of ``ids.astype(str)``: integer ids (whose string width depends only
    on their dtype) are converted chunk by chunk; other ids at once."""
    from datamodules import chunks

    if ids.dtype.kind in "iu":
        dtype = np.empty(0, dtype=ids.dtype).astype(str).dtype
        return dtype, ids.shape, (ids[a:b].astype(dtype) for a, b in chunks.spans(ids.shape[0]))
    s = ids.astype(str)
    return s.dtype, s.shape, [s]


def _write_index(tmp: Path, emb: np.ndarray, kind: str, neighbours: int, log: Callable[[str], None]) -> Optional[dict]:
    """``index.faiss`` and the similar-items table ``neighbours.npy``; returns the manifest's
    ``neighbours`` block (``None``: no table)."""
    from .retrieval import build_index, neighbour_table, save_index

    t1 = time.perf_counter()
    log(f"building the {kind} index of {emb.shape[0]} x {emb.shape[1]} embeddings")
    index_obj = build_index(emb, kind)
    save_index(index_obj, tmp / fmt.INDEX)
    log(f"{kind} index in {time.perf_counter() - t1:.1f}s")
    if not neighbours or emb.shape[0] <= 1:
        return None
    t1 = time.perf_counter()
    nb_k = min(int(neighbours), emb.shape[0] - 1)
    np.save(tmp / fmt.NEIGHBOURS, neighbour_table(index_obj, emb, nb_k))
    info = {"file": fmt.NEIGHBOURS, "k": nb_k, "seconds": round(time.perf_counter() - t1, 1)}
    log(f"top-{nb_k} neighbour table in {info['seconds']}s")
    return info


def _evaluate(module, datamodule, emb: np.ndarray, baselines: Optional[Sequence[str]], log) -> dict:
    """Every test protocol, the model and the baselines scored by the same code (``metrics.json``)."""
    import torch

    from .evaluation import evaluate_module

    return evaluate_module(module, datamodule, torch.from_numpy(emb), part="test", baselines=baselines, log=log)


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

    layers = [npy(fmt.layer_file(k), model.hidden_channels) for k in range(model.num_layers)]
    emb = npy(fmt.EMBEDDINGS, model.out_channels)
    layerwise_embeddings(model, ds.item_features, nbr, chunk_size=chunk_size, progress=progress,
                         layers_out=layers, out=emb)
    for a in layers + [emb]:
        a.flush()
    del layers, emb  # unmapped: the files hold them
    return [None] * model.num_layers
