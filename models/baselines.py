"""Non-learned item-to-item baselines, scored by the same ranking code as the model.

Each baseline scores every item for a chunk of query items from the *training* graph only
(CSR arrays, so this module does not depend on the data package):

* ``random``: i.i.d. uniform scores (seeded);
* ``popularity``: training degree of the candidate (the same list for every query);
* ``cooccurrence``: item-kNN by co-engagement, ``score(q, i) = #users who engaged both q and i``
  (ties broken by popularity), the classic "people who liked q also liked" list.
"""

from __future__ import annotations

from typing import Callable, Dict

import numpy as np
import torch
from torch import Tensor

BASELINES = ("random", "popularity", "cooccurrence")


def baseline_scorer(name: str, user_ptr, user_items, item_ptr, item_users, num_items: int,
                    seed: int = 0) -> Callable[[Tensor], Tensor]:
    """Return ``f(query_items [B]) -> scores [B, num_items]`` for baseline ``name``."""
    if name not in BASELINES:
        raise ValueError(f"baseline={name!r} is not valid; choose one of {list(BASELINES)}")
    degree = torch.from_numpy(np.diff(np.asarray(item_ptr)).astype(np.float32))
    if name == "random":
        gen = torch.Generator().manual_seed(seed)
        return lambda q: torch.rand(q.numel(), num_items, generator=gen)
    if name == "popularity":
        return lambda q: degree.unsqueeze(0).expand(q.numel(), -1).clone()
    user_ptr = np.asarray(user_ptr, dtype=np.int64)
    user_items = np.asarray(user_items)
    item_ptr = np.asarray(item_ptr, dtype=np.int64)
    item_users = np.asarray(item_users)
    tie = (degree / (degree.max() + 1.0)).numpy()  # < 1: only breaks ties between equal co-counts

    def score(q: Tensor) -> Tensor:
        out = np.empty((q.numel(), num_items), dtype=np.float32)
        for r, item in enumerate(q.tolist()):
            users = item_users[item_ptr[item]:item_ptr[item + 1]]
            starts, lens = user_ptr[users], user_ptr[users + 1] - user_ptr[users]
            idx = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens) + np.repeat(starts, lens)
            out[r] = np.bincount(user_items[idx], minlength=num_items) + tie
        return torch.from_numpy(out)

    return score


@torch.no_grad()
def ranks_from_scorer(scorer: Callable[[Tensor], Tensor], query: Tensor, target: Tensor,
                      batch_size: int = 512) -> Tensor:
    """Rank (1 = best; ties counted against the target) of ``target`` among all items other
    than the query itself, for scores from ``scorer``."""
    out = []
    for s in range(0, query.numel(), batch_size):
        q, t = query[s:s + batch_size], target[s:s + batch_size]
        scores = scorer(q)
        rows = torch.arange(q.numel())
        st = scores[rows, t].unsqueeze(1)
        scores[rows, q] = float("-inf")
        scores[rows, t] = float("-inf")
        out.append(1 + (scores >= st).sum(1))
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def item_to_item_metrics(ranks: Tensor, ks=(10, 100, 500), num_items: int | None = None) -> Dict[str, float]:
    """PinSage protocol metrics from target ranks: hit_rate@K (K <= catalogue), scaled MRR,
    plus HR@10 / NDCG@10 of the full ranking."""
    from .metrics import hit_rate_at_k, ndcg_at_k, scaled_mrr

    out: Dict[str, float] = {}
    for k in ks:
        if num_items is None or k < num_items:
            out[f"hit_rate@{k}"] = float(hit_rate_at_k(ranks, k))
    out["mrr"] = float(scaled_mrr(ranks))
    out["hr@10"] = float(hit_rate_at_k(ranks, 10))
    out["ndcg@10"] = float(ndcg_at_k(ranks, 10))
    return out
