"""Build a minibatch's K-hop computation graph (see :mod:`datamodules.batch` for the layout).

Given the target items of a step (queries U positives U negatives, de-duplicated and sorted), the
neighbourhoods are sampled outward hop by hop: hop 1 samples the targets' neighbourhoods and
appends the items not yet present; hop ``h`` samples only the nodes hop ``h-1`` appended (the
neighbourhoods of the older nodes are already known: a sampler's neighbourhood of an item is a
function of ``(seed, epoch, item)``, so re-sampling them would return the same edges). Hence::

    node_ids[:n_K]      targets                                   (layer K)
    node_ids[:n_{K-h}]  targets + everything appended by hops 1..h (layer K-h)

and ``blocks[k]`` (computing layer ``k+1`` from layer ``k``) holds the edges of every destination
``< n_{k+1}``: the edges sampled by hops ``1 .. K-k``. Edges are grouped by destination in
ascending order; within a destination they keep the sampler's order (visit count desc).

Global -> local re-indexing uses one ``int32 [num_items]`` map per process (allocated lazily,
so it is never pickled into DataLoader workers) that is reset after every batch: no Python dict,
no per-node loop.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
import torch

from .batch import Block, EvalBatch, PinSageBatch
from .checks import check_int


def _as_ids(name: str, a, num_items: int) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    arr = np.asarray(a)
    if arr.size and (not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must hold integer item ids, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() >= num_items):
        bad = int(arr[(arr < 0) | (arr >= num_items)].ravel()[0])
        raise ValueError(f"{name} must be item ids in [0, {num_items}), got {bad}")
    return arr


class ComputationGraphBuilder:
    """Samples and re-indexes K-hop computation graphs, slices feature rows.

    Args:
        sampler: an object with ``sample(seeds, epoch) -> (ptr, items, weight)`` (ragged
            neighbourhoods, e.g. :class:`datamodules.walks.PinSageSampler` or ``UniformSampler``).
        item_features: ``float32 [num_items, F]`` (``F`` may be 0).
        num_layers: ``K`` (>= 0).
    """

    def __init__(self, sampler, item_features: np.ndarray, num_layers: int = 2):
        check_int("num_layers", num_layers, 0)
        feats = np.asarray(item_features)
        if feats.ndim != 2:
            raise ValueError(f"item_features must be a 2-d [num_items, F] array, got shape {feats.shape}")
        self.sampler = sampler
        self.item_features = np.ascontiguousarray(feats, dtype=np.float32)
        self.num_items = int(feats.shape[0])
        self.num_layers = int(num_layers)
        self._g2l: Optional[np.ndarray] = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_g2l"] = None
        return state

    def _map(self) -> np.ndarray:
        if self._g2l is None:
            self._g2l = np.full(self.num_items, -1, dtype=np.int32 if self.num_items < 2**31 else np.int64)
        return self._g2l

    def build(self, targets: np.ndarray, epoch: int = 0) -> Tuple[np.ndarray, List[Block], torch.Tensor]:
        """``(node_ids int64 [n_0], blocks, x)`` for distinct ``targets`` (they become ``node_ids[:n_K]``
        in the given order)."""
        targets = _as_ids("targets", targets, self.num_items).ravel()
        g2l = self._map()
        n = targets.size
        parts = [targets]
        sizes = [n]  # n_K, n_{K-1}, ..., n_0
        srcs, dsts, ws = [], [], []
        edge_counts = []  # cumulative edges after each hop
        try:
            g2l[targets] = np.arange(n, dtype=g2l.dtype)
            if not np.array_equal(g2l[targets], np.arange(n)):
                raise ValueError("targets must be distinct item ids")
            lo, hi, total = 0, n, n
            frontier = targets
            for _ in range(self.num_layers):
                ptr, nbr, w = self.sampler.sample(frontier, epoch)
                nbr = np.asarray(nbr, dtype=np.int64)
                deg = np.diff(np.asarray(ptr, dtype=np.int64))
                loc = g2l[nbr]
                new = np.unique(nbr[loc < 0])
                g2l[new] = np.arange(total, total + new.size, dtype=g2l.dtype)
                srcs.append(g2l[nbr].astype(np.int64))
                dsts.append(np.repeat(np.arange(lo, hi, dtype=np.int64), deg))
                ws.append(np.asarray(w, dtype=np.float32))
                parts.append(new)
                lo, hi, total = hi, total + new.size, total + new.size
                sizes.append(total)
                edge_counts.append(sum(s.size for s in srcs))
                frontier = new
            node_ids = np.concatenate(parts)
        finally:
            for p in parts:
                g2l[p] = -1
        src = np.concatenate(srcs) if srcs else np.empty(0, dtype=np.int64)
        dst = np.concatenate(dsts) if dsts else np.empty(0, dtype=np.int64)
        wt = np.concatenate(ws) if ws else np.empty(0, dtype=np.float32)
        K = self.num_layers
        blocks = []
        for k in range(K):
            e = edge_counts[K - k - 1]
            ei = torch.from_numpy(np.stack([src[:e], dst[:e]]))
            blocks.append(Block(ei, torch.from_numpy(wt[:e].copy()), (int(sizes[K - k]), int(sizes[K - k - 1]))))
        x = torch.from_numpy(self.item_features[node_ids])
        return node_ids, blocks, x

    def train_batch(self, query, pos, easy_neg, hard_neg, epoch: int = 0) -> PinSageBatch:
        """A :class:`PinSageBatch` for pairs ``(query[b], pos[b])``, shared ``easy_neg [N]`` and
        per-query ``hard_neg [B, H]`` (global ids)."""
        q = _as_ids("query", query, self.num_items).ravel()
        p = _as_ids("pos", pos, self.num_items).ravel()
        en = _as_ids("easy_neg", easy_neg, self.num_items).ravel()
        hn = _as_ids("hard_neg", hard_neg, self.num_items)
        if hn.size == 0:
            hn = hn.reshape(q.size, 0)
        if hn.ndim != 2 or hn.shape[0] != q.size:
            raise ValueError(f"hard_neg must have shape [B={q.size}, H], got {hn.shape}")
        if p.size != q.size:
            raise ValueError(f"query and pos must have the same length, got {q.size} and {p.size}")
        targets = np.unique(np.concatenate([q, p, en, hn.ravel()]))
        node_ids, blocks, x = self.build(targets, epoch)
        loc = lambda a: torch.from_numpy(np.searchsorted(targets, a).astype(np.int64))  # noqa: E731
        return PinSageBatch(node_ids=torch.from_numpy(node_ids), x=x, blocks=blocks, query=loc(q), pos=loc(p),
                            easy_neg=loc(en), hard_neg=loc(hn).reshape(hn.shape), epoch=int(epoch))

    def eval_batch(self, items, epoch: int = 0) -> EvalBatch:
        """An :class:`EvalBatch` whose targets are ``items`` (distinct, kept in the given order)."""
        items = _as_ids("items", items, self.num_items).ravel()
        node_ids, blocks, x = self.build(items, epoch)
        return EvalBatch(node_ids=torch.from_numpy(node_ids), x=x, blocks=blocks,
                         targets=torch.from_numpy(items.copy()))
