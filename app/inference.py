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

import sys
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from datamodules.minibatch import ComputationGraphBuilder
from models.pinsage import PinSage

Ragged = Tuple[np.ndarray, np.ndarray, np.ndarray]

__all__ = [
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
def neighbourhoods_for_all(sampler, num_items: int, chunk_size: int = 65536, epoch: int = 0) -> Ragged:
    """The top-T neighbourhood of every item ``0 .. num_items-1``, sampled once.

    Args:
        sampler: anything with ``sample(seeds, epoch) -> (ptr, items, weights)`` (e.g.
            ``datamodules.walks.PinSageSampler``; the walk kernel is parallel inside a call).
        num_items: catalogue size ``I`` (must match the sampler's graph when it says).
        chunk_size: seeds per ``sample`` call (bounds the sampler's scratch memory).
        epoch: the sampler's epoch (its random stream); inference uses a fixed one.

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
    for start in range(0, num_items, chunk_size):
        seeds = np.arange(start, min(start + chunk_size, num_items), dtype=np.int64)
        p, it, w = sampler.sample(seeds, epoch=epoch)
        p = np.asarray(p, dtype=np.int64)
        ptrs.append(p[1:] + offset)
        offset += int(p[-1])
        items.append(np.asarray(it, dtype=np.int64))
        weights.append(np.asarray(w, dtype=np.float32))
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


@torch.no_grad()
def layerwise_embeddings(
    model: PinSage,
    x: Union[Tensor, np.ndarray],
    nbr: Ragged,
    chunk_size: int = 65536,
    device: Union[str, torch.device] = "cpu",
    progress: bool = False,
    return_layers: bool = False,
):
    r"""Embeddings of the whole catalogue, layer by layer, every ``h^{(k)}_u`` computed once.

    :math:`\mathbf{h}^{(0)} = \mathrm{encode}(\mathbf{x}, [0, I))` for all items (in chunks); for
    ``k = 1 .. K``, for every chunk of ``chunk_size`` target items ``u``:
    :math:`\mathbf{h}^{(k)}_u = \mathrm{layer}_{k-1}(\mathbf{h}^{(k-1)}_{\mathcal{N}(u)},
    \mathbf{h}^{(k-1)}_u)` over a bipartite message graph whose sources are the distinct
    neighbours of the chunk (their rows of :math:`\mathbf{h}^{(k-1)}` gathered); finally
    :math:`\mathbf{z} = \mathrm{head}(\mathbf{h}^{(K)})`.

    Memory: two ``[I, hidden]`` float32 tables on the host plus, per chunk, at most
    ``chunk_size * (1 + T)`` gathered rows and ``chunk_size * T`` edges (on ``device``).  The model
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
    x = _as_features(x, num_items, model)
    ptr, items, weights = _check_ragged(nbr, num_items)
    device = torch.device(device)

    was_training = model.training
    model.eval()
    model.to(device)
    K = model.num_layers
    bar = _progress_bar(progress, num_items * (K + 1), "layer-wise inference")
    try:
        # layer 0: encode every item
        h = torch.empty(num_items, model.hidden_channels, dtype=torch.float32)
        for s in range(0, num_items, chunk_size):
            e = min(s + chunk_size, num_items)
            ids = torch.arange(s, e, device=device)
            h[s:e] = model.encode(x[s:e].to(device), ids).float().cpu()
            if bar is not None:
                bar.update(e - s)
        h0 = h if model.skip else None  # layer 0 kept for the head's skip connection
        items_t = torch.from_numpy(items)
        weights_t = torch.from_numpy(weights)
        deg_t = torch.from_numpy(np.diff(ptr))
        g2l = torch.full((num_items,), -1, dtype=torch.int64)  # global -> local source id
        layers = []
        # layers 1 .. K: every item once, from the previous layer of every item
        for k in range(K):
            if return_layers:
                layers.append(h)
            h_next = torch.empty(num_items, model.hidden_channels, dtype=torch.float32)
            for s in range(0, num_items, chunk_size):
                e = min(s + chunk_size, num_items)
                ps, pe = int(ptr[s]), int(ptr[e])
                src_global, edge_index = _chunk_graph(items_t[ps:pe], deg_t[s:e], g2l)
                h_src = h if src_global is None else h.index_select(0, src_global)
                out = model.layer(k, h_src.to(device), h[s:e].to(device), edge_index.to(device),
                                  weights_t[ps:pe].to(device))
                h_next[s:e] = out.float().cpu()
                if bar is not None:
                    bar.update(e - s)
            h = h_next
        # head
        z = torch.empty(num_items, model.out_channels, dtype=torch.float32)
        for s in range(0, num_items, chunk_size):
            e = min(s + chunk_size, num_items)
            z[s:e] = model.head(h[s:e].to(device), None if h0 is None else h0[s:e].to(device)).float().cpu()
        return (z, layers) if return_layers else z
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)


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
