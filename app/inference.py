"""Full-catalogue item embeddings: layer-wise inference (no recomputation) and the naive per-item
minibatch path it replaces.

PinSage (Ying et al., KDD 2018, Sec. 3.3, "Node embeddings via MapReduce") embeds the whole
catalogue layer by layer: the top-T importance neighbourhood of every item is computed once, then
layer 1 for *every* item from the encoded features, then layer 2 from those layer-1 vectors, and
so on; every ``h^{(k)}_u`` is computed exactly once.  The per-item minibatch algorithm of training (GraphSAGE
Algorithm 2) instead expands a K-hop computation graph around each batch of targets and so
recomputes the lower layers of shared neighbours again and again (about ``1 + T + ... + T^K``
encodings and ``1 + T + ... + T^(K-1)`` neighbourhoods per target).

Given the same neighbourhood of every item, both paths compute the same function (the model is in
eval mode: no dropout; the LSTM aggregator keeps the edge order); :func:`layerwise_embeddings`
equals :func:`naive_embeddings` up to float rounding.

Neighbourhood tables are ragged CSR triples ``(ptr int64 [I+1], items int64 [E], weights
float32 [E])``: the neighbours of item ``u`` are ``items[ptr[u]:ptr[u+1]]`` with importance weights
``weights[ptr[u]:ptr[u+1]]`` -- the format of ``datamodules.walks.PinSageSampler.sample``.
"""

from __future__ import annotations

import mmap
import sys
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from datamodules.minibatch import ComputationGraphBuilder
from models.convolve import linear_relu_into
from models.pinsage import PinSage
from models.sparse import pool_rows

Ragged = Tuple[np.ndarray, np.ndarray, np.ndarray]

__all__ = [
    "encode_chunk",
    "convolve_chunk",
    "FixedNeighbourhoods",
    "neighbourhoods_for_all",
    "layerwise_embeddings",
    "naive_embeddings",
]


# ----------------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------------
def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r} is invalid: expected an int >= 1")
    return int(value)


def _check_ragged(nbr, num_items: int, name: str = "nbr") -> Ragged:
    """Validate a ``(ptr, items, weights)`` table over ``num_items`` items; return numpy arrays."""
    if not isinstance(nbr, (tuple, list)) or len(nbr) != 3:
        raise ValueError(f"{name} is invalid: expected a (ptr, items, weights) triple, got {type(nbr).__name__}")
    ptr, items, weights = (np.asarray(a.cpu() if isinstance(a, Tensor) else a) for a in nbr)
    if ptr.ndim != 1 or ptr.shape[0] != num_items + 1:
        raise ValueError(
            f"{name}[0] (ptr) has shape {ptr.shape}: expected [{num_items + 1}] (num_items + 1; "
            f"one neighbourhood per item)")
    if items.ndim != 1 or weights.shape != items.shape:
        raise ValueError(
            f"{name} items/weights have shapes {items.shape}/{weights.shape}: expected equal 1-d shapes")
    ptr = ptr.astype(np.int64, copy=False)
    if ptr[0] != 0 or ptr[-1] != items.shape[0] or (num_items and np.any(np.diff(ptr) < 0)):
        raise ValueError(
            f"{name}[0] (ptr) is invalid: expected non-decreasing offsets from 0 to len(items)="
            f"{items.shape[0]}, got first {ptr[0]}, last {ptr[-1]}")
    items = items.astype(np.int64, copy=False)
    if items.size and (items.min() < 0 or items.max() >= num_items):
        raise ValueError(
            f"{name}[1] (items) holds ids in [{items.min()}, {items.max()}]: expected ids in "
            f"[0, {num_items})")
    return ptr, items, weights.astype(np.float32, copy=False)


def _as_features(x, num_items: Optional[int], model: PinSage) -> Tensor:
    x = torch.as_tensor(x)
    if x.dim() != 2:
        raise ValueError(f"x has shape {tuple(x.shape)}: expected a 2-d [num_items, num_features] array")
    if num_items is not None and x.size(0) != num_items:
        raise ValueError(
            f"x has {x.size(0)} rows: expected one row per item, num_items={num_items} (the "
            f"neighbourhood table covers {num_items} items)")
    if x.size(1) != model.in_channels:
        raise ValueError(
            f"x has {x.size(1)} columns: the model expects in_channels={model.in_channels} features")
    if model.id_embedding and x.size(0) > model.num_items:
        raise ValueError(
            f"x has {x.size(0)} rows: the model's ID embedding only covers num_items="
            f"{model.num_items} items")
    return x.to(torch.float32)


def _check_out(name: str, a, shape) -> None:
    if not isinstance(a, np.ndarray) or a.shape != shape or a.dtype != np.float32 or not a.flags.writeable \
            or not a.flags.c_contiguous:
        raise ValueError(f"{name} is invalid: expected a writable C-contiguous float32 array of shape {shape}, got "
                         f"{type(a).__name__} {getattr(a, 'shape', None)} {getattr(a, 'dtype', None)}")


def _slice_ragged(nbr: Ragged, seeds: np.ndarray) -> Ragged:
    """Rows ``seeds`` of a ragged table, vectorised."""
    ptr, items, weights = nbr
    starts, ends = ptr[seeds], ptr[seeds + 1]
    deg = ends - starts
    out_ptr = np.zeros(seeds.shape[0] + 1, dtype=np.int64)
    np.cumsum(deg, out=out_ptr[1:])
    pos = np.repeat(starts - out_ptr[:-1], deg) + np.arange(out_ptr[-1], dtype=np.int64)
    return out_ptr, items[pos], weights[pos]


class FixedNeighbourhoods:
    """A sampler that looks neighbourhoods up in a precomputed table (e.g. the output of
    :func:`neighbourhoods_for_all`), so that every path sees the same neighbourhood of every item.

    ``sample(seeds, epoch=0) -> (ptr, items, weights)`` has the interface of
    ``datamodules.walks.PinSageSampler.sample`` (``epoch`` is ignored).
    """

    def __init__(self, ptr, items, weights):
        self.num_items = int(np.asarray(ptr).shape[0]) - 1
        if self.num_items < 0:
            raise ValueError("ptr is invalid: expected at least one offset (num_items + 1 >= 1)")
        self.table = _check_ragged((ptr, items, weights), self.num_items, "table")

    def sample(self, seeds, epoch: int = 0) -> Ragged:
        seeds = np.asarray(seeds, dtype=np.int64).reshape(-1)
        if seeds.size and (seeds.min() < 0 or seeds.max() >= self.num_items):
            raise ValueError(
                f"seeds hold ids in [{seeds.min()}, {seeds.max()}]: expected ids in [0, {self.num_items})")
        return _slice_ragged(self.table, seeds)

    __call__ = sample

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_items={self.num_items}, num_edges={self.table[1].shape[0]})"


# ----------------------------------------------------------------------------------------------
# neighbourhoods of the whole catalogue
# ----------------------------------------------------------------------------------------------
def neighbourhoods_for_all(sampler, num_items: int, chunk_size: int = 65536, epoch: int = 0,
                           progress: bool = False) -> Ragged:
    """The top-T neighbourhood of every item ``0 .. num_items-1``, sampled once.

    Args:
        sampler: anything with ``sample(seeds, epoch) -> (ptr, items, weights)`` (e.g.
            ``datamodules.walks.PinSageSampler``; the walk kernel is parallel inside a call).
        num_items: catalogue size ``I`` (must match the sampler's graph when it says).
        chunk_size: seeds per ``sample`` call (bounds the sampler's scratch memory).
        epoch: the sampler's epoch (its random stream); inference uses a fixed one.
        progress: show a tqdm progress bar on stderr.

    Returns:
        ``(ptr int64 [I+1], items int64 [E], weights float32 [E])``.
    """
    if isinstance(num_items, bool) or not isinstance(num_items, (int, np.integer)) or num_items < 0:
        raise ValueError(f"num_items={num_items!r} is invalid: expected an int >= 0")
    num_items = int(num_items)
    chunk_size = _positive_int("chunk_size", chunk_size)
    have = getattr(sampler, "num_items", None)
    if have is not None and int(have) != num_items:
        raise ValueError(
            f"num_items={num_items} does not match the sampler's graph, which has {have} items")
    ptrs, items, weights = [np.zeros(1, dtype=np.int64)], [], []
    offset = 0
    bar = _progress_bar(progress, num_items, "walks for every item")
    for start in range(0, num_items, chunk_size):
        seeds = np.arange(start, min(start + chunk_size, num_items), dtype=np.int64)
        p, it, w = sampler.sample(seeds, epoch=epoch)
        if bar is not None:
            bar.update(len(seeds))
        p = np.asarray(p, dtype=np.int64)
        ptrs.append(p[1:] + offset)
        offset += int(p[-1])
        items.append(np.asarray(it, dtype=np.int64))
        weights.append(np.asarray(w, dtype=np.float32))
    if bar is not None:
        bar.close()
    ptr = np.concatenate(ptrs)
    it = np.concatenate(items) if items else np.zeros(0, dtype=np.int64)
    w = np.concatenate(weights) if weights else np.zeros(0, dtype=np.float32)
    return ptr, it, w


# ----------------------------------------------------------------------------------------------
# layer-wise inference
# ----------------------------------------------------------------------------------------------
def _progress_bar(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="item", file=sys.stderr, dynamic_ncols=True)


def _chunk_graph(nbrs: Tensor, deg: Tensor, g2l: Tensor) -> Tuple[Optional[Tensor], Tensor]:
    """The bipartite message graph of one chunk of targets.

    ``nbrs [E]`` are the global neighbour ids of the chunk's targets (grouped by target, ``deg``
    each).  Returns ``(src_global, edge_index)``: the distinct neighbours in ascending id order
    (``None`` when that is every item, so the caller can skip the gather) and ``[2, E]`` edges
    (local source, local target).  ``g2l`` is an all ``-1`` ``[num_items]`` scratch map, left
    all ``-1``; linear time (no sort).
    """
    num_items = g2l.size(0)
    mark = torch.zeros(num_items, dtype=torch.bool)
    mark[nbrs] = True
    src_global = mark.nonzero().view(-1)
    dst = torch.repeat_interleave(torch.arange(deg.size(0)), deg)
    if src_global.size(0) == num_items:
        return None, torch.stack([nbrs, dst])
    g2l[src_global] = torch.arange(src_global.size(0))
    src = g2l[nbrs]
    g2l[src_global] = -1
    return src_global, torch.stack([src, dst])


def encode_chunk(model: PinSage, x_chunk: Tensor, ids: Tensor, device) -> Tensor:
    """Layer 0 of items ``ids`` (their feature rows ``x_chunk``), on the CPU."""
    return model.encode(x_chunk.to(device), ids.to(device)).float().cpu()


def convolve_chunk(model: PinSage, k: int, gather, h_self: Tensor, nbrs: Tensor, deg: Tensor, weights: Tensor,
                   g2l: Tensor, device) -> Tensor:
    """Layer ``k`` of one chunk of targets from the previous layer (shared by every engine).

    ``nbrs [E]`` / ``weights [E]``: the targets' neighbours (grouped by target, ``deg`` each);
    ``h_self``: the targets' own previous-layer rows; ``gather(ids)`` returns the previous-layer
    rows of global item ``ids`` (``None``: every item, in id order). Returns CPU float32 rows.
    """
    src_global, edge_index = _chunk_graph(nbrs, deg, g2l)
    h_src = gather(src_global)
    return model.layer(k, h_src.to(device), h_self.to(device), edge_index.to(device),
                       weights.to(device)).float().cpu()


@torch.no_grad()
def layerwise_embeddings(
    model: PinSage,
    x: Union[Tensor, np.ndarray],
    nbr: Ragged,
    chunk_size: int = 65536,
    device: Union[str, torch.device] = "cpu",
    progress: bool = False,
    return_layers: bool = False,
    layers_out: Optional[Sequence[np.ndarray]] = None,
    out: Optional[np.ndarray] = None,
):
    r"""Embeddings of the whole catalogue, layer by layer, every ``h^{(k)}_u`` computed once.

    :math:`\mathbf{h}^{(0)} = \mathrm{encode}(\mathbf{x}, [0, I))` for all items (in chunks); for
    ``k = 1 .. K``, for every chunk of ``chunk_size`` target items ``u``:
    :math:`\mathbf{h}^{(k)}_u = \mathrm{layer}_{k-1}(\mathbf{h}^{(k-1)}_{\mathcal{N}(u)},
    \mathbf{h}^{(k-1)}_u)`; finally
    :math:`\mathbf{z} = \mathrm{head}(\mathbf{h}^{(K)})`.

    Each layer runs in stages over fixed buffers (no per-chunk allocation): the neighbour
    transform (``Q`` of PinSage's CONVOLVE, ``W_pool`` of the pooling aggregators) is applied
    once per layer to every item into a reused ``[I, hidden]`` table; per chunk, the neighbours'
    rows are pooled straight from that table by a CSR row-slice kernel
    (:func:`models.sparse.pool_rows`: no per-edge messages), and the layer's ``W`` is applied as
    its self and neighbour halves (no concatenation).  The LSTM aggregator, which has no CSR
    form, runs per chunk on the chunk's message graph (:func:`convolve_chunk`).

    Memory: three ``[I, hidden]`` float32 tables (``K + 2`` with ``return_layers``) and
    ``chunk_size`` scratch rows, all on ``device``.  The model
    runs in eval mode under ``torch.no_grad()`` (its training flag is restored afterwards) and is
    moved to ``device``.

    Args:
        model: a :class:`~models.pinsage.PinSage` (any ``conv``).
        x: item features ``float32 [I, F]`` (``F = model.in_channels``), row ``u`` = item ``u``.
        nbr: ``(ptr [I+1], items [E], weights [E])``, the neighbourhood of every item (e.g.
            :func:`neighbourhoods_for_all`).
        chunk_size: target items per step (``>= 1``).
        device: where the model runs.
        progress: show a tqdm progress bar on stderr.
        return_layers: also return the per-layer vectors ``[h^(0), ..., h^(K-1)]`` (each
            ``[I, hidden]``): what the inductive path (``app/inductive.py``) needs to embed a new
            item from its neighbours' stored vectors.
        layers_out: ``K`` writable ``float32 [I, hidden]`` host arrays that receive
            ``h^(0) .. h^(K-1)`` -- e.g. ``np.lib.format.open_memmap`` files: on the CPU they *are*
            the layer tables, and the rows of a memory-mapped one are handed back to the page cache
            as soon as a chunk has used them, so resident memory is bounded by one ``[I, hidden]``
            table (the transformed sources, which every chunk gathers from at random) plus the
            chunk, not by the ``K + 1`` tables.  (Aggregators without a source transform --
            ``sage-mean``, ``sage-gcn`` -- gather from the previous layer itself.)
        out: a writable ``float32 [I, out_channels]`` host array (e.g. a memmap) for ``z``.

    Returns:
        ``FloatTensor [I, out_channels]`` on the CPU, row ``u`` = item ``u``; with
        ``return_layers`` the pair ``(z, [h^(0), ..., h^(K-1)])``.
    """
    if not isinstance(model, PinSage):
        raise ValueError(f"model={type(model).__name__} is invalid: expected a models.pinsage.PinSage")
    chunk_size = _positive_int("chunk_size", chunk_size)
    if not isinstance(nbr, (tuple, list)) or len(nbr) != 3:
        raise ValueError(f"nbr is invalid: expected a (ptr, items, weights) triple, got {type(nbr).__name__}")
    num_items = int(np.asarray(nbr[0]).shape[0]) - 1
    x_file = x  # a memory-mapped feature table: its rows are handed back once encoded
    x = _as_features(x, num_items, model)
    ptr, items, weights = _check_ragged(nbr, num_items)
    device = torch.device(device)
    _check_outputs(model, num_items, layers_out, out)
    was_training = model.training
    model.eval()
    model.to(device)
    bar = _progress_bar(progress, num_items * (model.num_layers + 1), "layer-wise inference")
    try:
        return _layerwise(model, x, (ptr, items, weights), chunk_size, device, bar, return_layers, layers_out, out,
                          x_file)
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)


def _check_outputs(model: PinSage, num_items: int, layers_out, out) -> None:
    """``layers_out``: ``K`` arrays ``[I, hidden]``; ``out``: ``[I, out_channels]`` (either may be None)."""
    if layers_out is not None:
        if len(layers_out) != model.num_layers:
            raise ValueError(f"layers_out has {len(layers_out)} arrays: expected num_layers={model.num_layers}")
        for k, a in enumerate(layers_out):
            _check_out(f"layers_out[{k}]", a, (num_items, model.hidden_channels))
    if out is not None:
        _check_out("out", out, (num_items, model.out_channels))


def _layerwise(model: PinSage, x: Tensor, nbr: Ragged, chunk_size: int, device: torch.device, bar,
               return_layers: bool, layers_out=None, out=None, x_file=None):
    """The body of :func:`layerwise_embeddings` (arguments validated, model in eval mode).

    Tables are allocated once: the layer tables ``h^(0..K-1)`` (two that swap roles when no layer
    is kept; the caller's ``layers_out`` arrays when given, on the CPU), ``msg`` (the sources
    transformed once per layer) and the chunk's scratch rows. The last layer never has a table:
    each chunk of ``h^(K)`` goes straight through the head into ``z``.
    """
    num_items, d, K = x.size(0), model.hidden_channels, model.num_layers
    csr = _csr_on(nbr, device)
    on_cpu = device.type == "cpu"
    mapped = layers_out is not None and on_cpu  # the caller's arrays are the layer tables
    keep = return_layers or layers_out is not None
    cs = min(chunk_size, max(num_items, 1))
    chunks = [(s, min(s + chunk_size, num_items)) for s in range(0, num_items, chunk_size)]
    tick = (lambda n: bar.update(n)) if bar is not None else (lambda n: None)  # noqa: E731

    def layer_table(k):
        return torch.from_numpy(layers_out[k]) if mapped else _table(num_items, d, device)

    def written(k, table, s, e):  # rows [s, e) of layer k are final
        if layers_out is not None:
            if not mapped:
                layers_out[k][s:e] = table[s:e].cpu().numpy()
            _release(layers_out[k], s, e)

    def release(k, s, e):  # rows [s, e) of layer k read for now (pages left to the page cache)
        if mapped:
            _release(layers_out[k], s, e)

    h = layer_table(0)
    _encode_all(model, x, h, chunks, device, lambda s, e: (written(0, h, s, e), _release(x_file, s, e), tick(e - s)))
    h0 = h if model.skip else None  # layer 0 kept for the head's skip connection
    need_msg = any(conv.pool is not None and conv.source_linear is not None for conv in model.convs)
    msg = _table(num_items, d, device) if need_msg else None
    pooled, rows = _table(cs, d, device), _table(cs, d, device)
    z = torch.from_numpy(out) if out is not None else _table(num_items, model.out_channels, torch.device("cpu"))
    z_dev = None if on_cpu else _table(cs, model.out_channels, device)

    def head(h_rows, s, e):
        zs = z[s:e] if on_cpu else z_dev[:e - s]
        model.head(h_rows, None if h0 is None else h0[s:e], out=zs, buf=pooled[:e - s])
        release(0, s, e)
        if not on_cpu:
            z[s:e].copy_(zs)
        if out is not None:
            _release(out, s, e)

    layers, spare = [h], None
    for k, conv in enumerate(model.convs):
        last = k == K - 1
        dst = None if last else (layer_table(k + 1) if keep else spare if spare is not None else _table(num_items, d, device))
        if conv.pool is None:  # no CSR form (LSTM): the per-chunk message graph, into a full table
            full = dst if dst is not None else _table(num_items, d, device)
            _convolve_chunks(model, k, h, full, nbr, chunks, device, tick)
        else:
            table = h if conv.source_linear is None else _transform_sources(conv, h, msg, chunks, lambda s, e: release(k, s, e))
        for s, e in chunks:
            if conv.pool is None:
                h_rows = full[s:e]
            else:
                h_rows = rows[:e - s] if last else dst[s:e]
                pool_rows(csr[0], csr[1], csr[2], table, pooled[:e - s], s, conv.pool)
                conv.combine(h[s:e], pooled[:e - s], out=h_rows, deg=csr[3][s:e])
                release(k, s, e)
                tick(e - s)
            if last:
                head(h_rows, s, e)
            else:
                written(k + 1, dst, s, e)
        if not last:
            spare = None if (keep or h is h0) else h
            h = dst
            layers.append(h)
    if return_layers:
        return z, [t if t.device.type == "cpu" else t.cpu() for t in layers[:K]]
    return z


def _encode_all(model: PinSage, x: Tensor, h: Tensor, chunks, device, done) -> Tensor:
    """Layer 0 of every item into ``h``, chunk by chunk (``done(s, e)`` after each)."""
    for s, e in chunks:
        ids = torch.arange(s, e, device=device) if model.id_embedding else None
        model.encode(x[s:e].to(device, non_blocking=True), ids, out=h[s:e])
        done(s, e)
    return h


def _csr_on(nbr: Ragged, device: torch.device) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(ptr, items, weights, degree)`` tensors (moved to ``device`` unless it is the CPU)."""
    ptr_t, items_t, weights_t = (torch.from_numpy(a) for a in nbr)
    out = (ptr_t, items_t, weights_t, ptr_t[1:] - ptr_t[:-1])
    return out if device.type == "cpu" else tuple(t.to(device) for t in out)


def _transform_sources(conv, h: Tensor, msg: Tensor, chunks, done) -> Tensor:
    """``msg = ReLU(conv.source_linear(h))`` for every item, chunk by chunk (Q once per layer)."""
    for s, e in chunks:
        linear_relu_into(conv.source_linear, h[s:e], msg[s:e])
        done(s, e)
    return msg


def _release(arr, start: int, end: int) -> None:
    """Let the kernel unmap rows ``[start, end)`` of a memory-mapped ``.npy`` array
    (``np.lib.format.open_memmap``): they stay in the file / page cache and fault back in when
    read again, but stop counting in this process's resident memory. No-op for other arrays."""
    mm = getattr(arr, "_mmap", None)
    if mm is None or not isinstance(arr, np.memmap) or not hasattr(mmap, "MADV_DONTNEED") or end <= start:
        return
    row = arr.strides[0]
    base = arr.offset % mmap.ALLOCATIONGRANULARITY  # where the array starts inside the mapping
    lo = base + start * row
    lo -= lo % mmap.PAGESIZE
    hi = min(base + end * row, len(mm))
    if hi > lo:
        mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


def _table(rows: int, cols: int, device: torch.device) -> Tensor:
    return torch.empty(rows, cols, dtype=torch.float32, device=device)


def _convolve_chunks(model: PinSage, k: int, h: Tensor, h_next: Tensor, nbr: Ragged, chunks, device, tick) -> None:
    """Layer ``k`` through :func:`convolve_chunk` (the message-graph path every engine shares)."""
    ptr, items, weights = nbr
    items_t, weights_t = torch.from_numpy(items), torch.from_numpy(weights)
    deg_t = torch.from_numpy(np.diff(ptr))
    h_host = h.cpu()
    g2l = torch.full((h.size(0),), -1, dtype=torch.int64)  # global -> local source id
    gather = lambda idx: h_host if idx is None else h_host.index_select(0, idx)  # noqa: E731
    for s, e in chunks:
        ps, pe = int(ptr[s]), int(ptr[e])
        h_next[s:e] = convolve_chunk(model, k, gather, h_host[s:e], items_t[ps:pe], deg_t[s:e],
                                     weights_t[ps:pe], g2l, device).to(h_next.device)
        tick(e - s)


# ----------------------------------------------------------------------------------------------
# naive per-item minibatch inference (the baseline layer-wise inference replaces)
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def naive_embeddings(
    model: PinSage,
    x: Union[Tensor, np.ndarray],
    sampler,
    items: Optional[Sequence[int]] = None,
    batch_size: int = 512,
    num_layers: Optional[int] = None,
    device: Union[str, torch.device] = "cpu",
    epoch: int = 0,
    progress: bool = False,
) -> Tensor:
    """Embeddings of ``items`` by the per-item minibatch algorithm of training: for every batch
    of targets, sample their K-hop computation graph outward hop by hop
    (``datamodules.minibatch.ComputationGraphBuilder.eval_batch``; within a batch each node's
    neighbourhood is sampled once) and run ``model.forward``.  Shared neighbours are re-sampled,
    re-encoded and re-convolved in every batch that touches them.

    Args:
        model: a :class:`~models.pinsage.PinSage`.
        x: item features ``[I, F]``.
        sampler: ``sample(seeds, epoch) -> (ptr, items, weights)`` (a ``PinSageSampler`` or a
            :class:`FixedNeighbourhoods` table).
        items: the target item ids (default: all ``I`` items); duplicates are allowed.
        batch_size: targets per minibatch (``>= 1``).
        num_layers: ``K`` (default and only valid value: ``model.num_layers``).
        device: where the model runs (it is moved there).
        epoch: the sampler's epoch.
        progress: tqdm progress bar on stderr.

    Returns:
        ``FloatTensor [len(items), out_channels]`` on the CPU, in the order of ``items``.
    """
    if not isinstance(model, PinSage):
        raise ValueError(f"model={type(model).__name__} is invalid: expected a models.pinsage.PinSage")
    batch_size = _positive_int("batch_size", batch_size)
    if num_layers is None:
        num_layers = model.num_layers
    if num_layers != model.num_layers:
        raise ValueError(f"num_layers={num_layers!r} is invalid: the model has num_layers={model.num_layers}")
    x = _as_features(x, getattr(sampler, "num_items", None), model)
    num_items = x.size(0)
    items = np.arange(num_items, dtype=np.int64) if items is None else np.asarray(items, dtype=np.int64).reshape(-1)
    if items.size and (items.min() < 0 or items.max() >= num_items):
        raise ValueError(f"items hold ids in [{items.min()}, {items.max()}]: expected ids in [0, {num_items})")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    model.to(device)
    builder = ComputationGraphBuilder(sampler, x.cpu().numpy(), num_layers=num_layers)
    out = torch.empty(items.shape[0], model.out_channels, dtype=torch.float32)
    bar = _progress_bar(progress, items.shape[0], "naive inference")
    try:
        for s in range(0, items.shape[0], batch_size):
            chunk = items[s:s + batch_size]
            targets, back = np.unique(chunk, return_inverse=True)
            batch = builder.eval_batch(targets, epoch=epoch).to(device)
            z = model(batch.x, batch.node_ids, batch.blocks).float().cpu()
            out[s:s + chunk.shape[0]] = z[torch.from_numpy(back.reshape(-1))]
            if bar is not None:
                bar.update(chunk.shape[0])
        return out
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
