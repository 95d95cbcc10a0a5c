"""Layer-wise full-catalogue inference on Ray Data: the paper's MapReduce job structure.

PinSage (Sec. 3.3) embeds billions of pins with MapReduce: (i) the neighbourhood of every item
in parallel partitions; (ii) per layer ``k``, every item's layer-``k`` vector from its neighbours'
layer-``(k-1)`` vectors -- a join of the neighbourhood table with the previous layer's embedding
table -- then the layer as a batched map; (iii) the head; (iv) the index build. Here:

* the catalogue is a Ray Dataset of item ids (``ray.data.range``) in contiguous id-range blocks;
* (i) ``map_batches`` samples each block's neighbourhoods (the sampler -- the graph -- is one
  object in the object store, read zero-copy by every worker of a node) into fixed-width columns
  ``nbr int64 [B, T]`` (``-1`` padded) and ``w float32 [B, T]``;
* layer 0 encodes each block's feature rows into column ``h``; the dataset is materialised: its
  blocks live in the object store, the driver holds only references;
* (ii) for each layer, every task receives the *references* of the previous layer's blocks and
  reads them zero-copy from its node's object store (a broadcast join: each node pulls each block
  once per layer), gathers its neighbours' rows and runs
  :func:`app.inference.convolve_chunk` -- the very code of the single-process path -- so the
  result equals :func:`app.inference.layerwise_embeddings` given the same neighbourhoods;
* (iii) the head is one more map; (iv) the caller builds the index from the final table, the only
  array ever assembled on the driver (or ``output_parquet`` writes it from the workers).

Ray is an optional extra (``pip install -e ".[ray]"``): only this module imports it.
``address=None`` starts a local Ray on this machine (and stops it afterwards); pass
``"auto"`` or ``"ray://host:10001"`` / ``"host:6379"`` to join an existing cluster.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from datamodules.checks import check_int

from .inference import FixedNeighbourhoods, convolve_chunk, encode_chunk

__all__ = ["ray_layerwise_embeddings", "ray_available"]


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


def _require_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise ValueError("--engine ray needs Ray Data: pip install -e \".[ray]\" (the optional 'ray' extra); "
                         "or use --engine local") from e
    return ray


def _width(sampler) -> int:
    """Fixed neighbourhood width ``T`` of the padded columns."""
    for attr in ("top_t", "num_samples"):
        if getattr(sampler, attr, None) is not None:
            return int(getattr(sampler, attr))
    if isinstance(sampler, FixedNeighbourhoods):
        ptr = sampler.table[0]
        return int(np.diff(ptr).max()) if ptr.shape[0] > 1 else 1
    raise ValueError(f"sampler={type(sampler).__name__} is invalid: expected a PinSageSampler, UniformSampler or "
                     "FixedNeighbourhoods (one with a fixed neighbourhood size)")


def _threads() -> None:
    """One worker = the CPUs Ray gave it (numba's and torch's pools sized to match)."""
    import ray

    n = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    torch.set_num_threads(n)
    try:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except (ImportError, ValueError):
        pass


# -- the Ray Data maps (module-level functions: pickled by reference) --------------------------------
def _get(obj):
    """Object-store references passed through ``fn_args`` arrive unresolved: read them here
    (zero-copy for numpy arrays on the same node; each worker caches nothing across tasks)."""
    import ray

    return ray.get(obj) if isinstance(obj, ray.ObjectRef) else obj


def _neighbourhoods(batch, sampler, width: int, epoch: int):
    _threads()
    sampler = _get(sampler)
    ids = np.asarray(batch["id"], dtype=np.int64)
    ptr, items, weights = sampler.sample(ids, epoch=epoch)
    ptr = np.asarray(ptr, dtype=np.int64)
    deg = np.diff(ptr)
    if deg.size and deg.max() > width:
        raise ValueError(f"a neighbourhood has {deg.max()} items, more than the width {width}")
    col = np.arange(ptr[-1]) - np.repeat(ptr[:-1], deg)
    row = np.repeat(np.arange(ids.shape[0]), deg)
    nbr = np.full((ids.shape[0], width), -1, dtype=np.int64)
    w = np.zeros((ids.shape[0], width), dtype=np.float32)
    nbr[row, col] = items
    w[row, col] = weights
    return {"id": ids, "nbr": nbr, "w": w}


def _encode(batch, model, x):
    _threads()
    model, x = _get(model), _get(x)
    ids = torch.from_numpy(np.asarray(batch["id"], dtype=np.int64))
    with torch.no_grad():
        h = encode_chunk(model, torch.from_numpy(np.asarray(x[ids.numpy()], dtype=np.float32)), ids, "cpu")
    out = {"id": batch["id"], "nbr": batch["nbr"], "w": batch["w"], "h": h.numpy()}
    if model.skip:  # the head's skip connection needs every item's layer-0 row
        out["h0"] = out["h"]
    return out


class _Table:
    """The previous layer's embedding table as the object-store blocks of a materialised dataset:
    rows of global ids gathered block by block (each block one contiguous id range)."""

    def __init__(self, parts: Sequence[dict], num_items: int):
        parts = sorted(parts, key=lambda p: int(p["id"][0]) if len(p["id"]) else num_items)
        parts = [p for p in parts if len(p["id"])]
        self.starts = np.array([int(p["id"][0]) for p in parts], dtype=np.int64)
        for p, s in zip(parts, self.starts):
            ids = np.asarray(p["id"])
            if ids[-1] - s + 1 != ids.shape[0]:
                raise RuntimeError("a Ray block does not hold one contiguous id range")
        self.parts = [np.asarray(p["h"]) for p in parts]
        self.num_items = num_items

    def __call__(self, idx: Optional[torch.Tensor]) -> torch.Tensor:
        if idx is None:
            return torch.from_numpy(np.concatenate(self.parts))
        idx = idx.numpy()
        out = np.empty((idx.shape[0], self.parts[0].shape[1]), dtype=np.float32)
        b = np.searchsorted(self.starts, idx, side="right") - 1
        for j in np.unique(b):
            m = b == j
            out[m] = self.parts[j][idx[m] - self.starts[j]]
        return torch.from_numpy(out)


def _convolve(batch, model, k: int, table_refs, num_items: int):
    import ray

    _threads()
    model = _get(model)
    table = _Table(ray.get(list(table_refs)), num_items)
    nbr = np.asarray(batch["nbr"])
    mask = nbr >= 0
    deg = torch.from_numpy(mask.sum(1).astype(np.int64))
    nbrs = torch.from_numpy(nbr[mask])
    weights = torch.from_numpy(np.asarray(batch["w"])[mask])
    g2l = torch.full((num_items,), -1, dtype=torch.int64)
    with torch.no_grad():
        h = convolve_chunk(model, k, table, torch.from_numpy(np.asarray(batch["h"])), nbrs, deg, weights, g2l, "cpu")
    out = {"id": batch["id"], "nbr": batch["nbr"], "w": batch["w"], "h": h.numpy()}
    if "h0" in batch:
        out["h0"] = batch["h0"]
    return out


def _head(batch, model):
    _threads()
    model = _get(model)
    with torch.no_grad():
        h0 = torch.from_numpy(np.asarray(batch["h0"])) if "h0" in batch else None
        z = model.head(torch.from_numpy(np.asarray(batch["h"])), h0).float()
    return {"id": batch["id"], "z": z.numpy()}


# -- the driver ----------------------------------------------------------------------------------------
@torch.no_grad()
def ray_layerwise_embeddings(
    model,
    x,
    sampler,
    num_items: Optional[int] = None,
    partition_size: int = 65536,
    address: Optional[str] = None,
    epoch: int = 0,
    output_parquet: Optional[str] = None,
    progress: bool = False,
) -> Optional[np.ndarray]:
    """Embeddings of every item, layer by layer on Ray Data (see the module docstring).

    Args:
        model: a :class:`~models.pinsage.PinSage` (run in eval mode on the workers' CPUs).
        x: item features ``[I, F]``.
        sampler: neighbourhoods: ``sample(seeds, epoch) -> (ptr, items, weights)`` with a fixed
            size (a ``PinSageSampler``, ``UniformSampler`` or a ``FixedNeighbourhoods`` table).
        num_items: ``I`` (default ``len(x)``).
        partition_size: items per block (one task per block and step).
        address: Ray cluster to join; ``None`` starts (and then stops) a local Ray.
        epoch: the sampler's epoch (inference uses a fixed one).
        output_parquet: write ``(id, z)`` Parquet files there from the workers and return ``None``
            instead of assembling the array on the driver.
        progress: Ray Data progress bars.

    Returns:
        ``float32 [I, out_channels]`` (row ``u`` = item ``u``), or ``None`` with ``output_parquet``.
    """
    ray = _require_ray()
    from models.pinsage import PinSage

    if not isinstance(model, PinSage):
        raise ValueError(f"model={type(model).__name__} is invalid: expected a models.pinsage.PinSage")
    check_int("partition_size", partition_size, 1)
    num_items = int(len(x) if num_items is None else num_items)
    if len(x) != num_items:
        raise ValueError(f"x has {len(x)} rows: expected one row per item, num_items={num_items}")
    width = _width(sampler)
    started = False
    if not ray.is_initialized():
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                 configure_logging=False, ignore_reinit_error=True)
        started = address is None
    was_training = model.training
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = bool(progress)
        ctx.execution_options.preserve_order = True
        ctx.execution_options.verbose_progress = False
        m = model.cpu().eval()
        model_ref = ray.put(m)
        x_ref = ray.put(np.ascontiguousarray(np.asarray(x), dtype=np.float32))
        sampler_ref = ray.put(sampler)
        blocks = max(1, -(-num_items // int(partition_size)))
        ds = ray.data.range(num_items, override_num_blocks=blocks)
        ds = ds.map_batches(_neighbourhoods, batch_size=None, batch_format="numpy",
                            fn_args=(sampler_ref, width, int(epoch)))
        ds = ds.map_batches(_encode, batch_size=None, batch_format="numpy", fn_args=(model_ref, x_ref))
        ds = ds.materialize()
        for k in range(m.num_layers):
            refs = ds.to_numpy_refs()  # references only: the table stays in the object store
            nxt = ds.map_batches(_convolve, batch_size=None, batch_format="numpy",
                                 fn_args=(model_ref, k, refs, num_items)).materialize()
            del refs
            ds = nxt
        ds = ds.map_batches(_head, batch_size=None, batch_format="numpy", fn_args=(model_ref,))
        if output_parquet is not None:
            ds.write_parquet(output_parquet)
            return None
        z = np.empty((num_items, m.out_channels), dtype=np.float32)
        for part in ray.get(ds.materialize().to_numpy_refs()):
            ids = np.asarray(part["id"], dtype=np.int64)
            z[ids] = np.asarray(part["z"])
        return z
    finally:
        model.train(was_training)
        if started:
            ray.shutdown()
