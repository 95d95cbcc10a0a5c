"""Reference rankers from embeddings, for the tests only: the straightforward ``query_emb @
item_emb.T`` versions of the item-to-item, NCF and full-ranking protocols.  Production ranks
through scorers (:mod:`models.baselines`: :func:`grouped_target_ranks`,
:func:`candidate_ranks_from_scorer`, :func:`full_ranking_from_scorer`), and the tests check that
both give the same numbers (two code paths, one written for reading)."""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Union

import torch
from torch import Tensor

from models.metrics import (RowSets, _check_emb, _masked_scores, _slice_csr, hit_rate_at_k, ndcg_at_k, to_csr,
                            topk_items)


@torch.no_grad()
def target_ranks(
    query_emb: Tensor,
    item_emb: Tensor,
    target: Tensor,
    exclude: Optional[RowSets] = None,
    query_items: Optional[Tensor] = None,
    batch_size: int = 1024,
) -> Tensor:
    """Rank (1 = best) of each query's target among all non-excluded items.

    Args:
        query_emb: ``[B, d]``.
        item_emb: ``[I, d]`` every candidate item.
        target: ``[B]`` item id of each query's target.
        exclude: optional items to leave out per query row (pairs ``[2, M]`` or CSR); the
            target itself is never left out.
        query_items: optional ``[B]`` item id of each query, left out of its own ranking
            (item-to-item protocol).
        batch_size: queries scored at once.

    Returns:
        ``LongTensor [B]``: ``1 + #{non-excluded items j != target: s_j >= s_target}``.
    """
    _check_emb(query_emb, item_emb)
    if target.shape != (query_emb.size(0),):
        raise ValueError(f"target has shape {tuple(target.shape)}: expected [{query_emb.size(0)}]")
    ranks = []
    for start, end, scores, excluded in _masked_scores(
            query_emb, item_emb, exclude, query_items, batch_size):
        t = target[start:end].to(scores.device).view(-1, 1)
        s_t = scores.gather(1, t)
        excluded.scatter_(1, t, True)  # compare against the others only
        ranks.append(1 + ((scores >= s_t) & ~excluded).sum(dim=1))
    return torch.cat(ranks) if ranks else target.new_empty(0)


@torch.no_grad()
def candidate_ranks(query_emb: Tensor, item_emb: Tensor, candidates: Tensor) -> Tensor:
    """Rank (1 = best, ties against the target) of column 0 of ``candidates [B, C]`` (the
    target) among its row's ``C`` candidates (NCF protocol: ``C = 100``)."""
    _check_emb(query_emb, item_emb)
    if candidates.dim() != 2 or candidates.size(0) != query_emb.size(0) or candidates.size(1) < 1:
        raise ValueError(
            f"candidates has shape {tuple(candidates.shape)}: expected [{query_emb.size(0)}, C] "
            f"with the target in column 0")
    scores = torch.einsum("bd,bcd->bc", query_emb, item_emb[candidates])
    return 1 + (scores[:, 1:] >= scores[:, :1]).sum(dim=1)


def sampled_metrics(query_emb: Tensor, item_emb: Tensor, candidates: Tensor,
                    k: int = 10) -> Dict[str, Tensor]:
    """NCF leave-one-out protocol: ``{"hr@k", "ndcg@k"}`` of the target (column 0 of
    ``candidates [B, C]``) among its sampled negatives."""
    ranks = candidate_ranks(query_emb, item_emb, candidates)
    return {f"hr@{k}": hit_rate_at_k(ranks, k), f"ndcg@{k}": ndcg_at_k(ranks, k)}


@torch.no_grad()
def full_ranking_metrics(
    user_emb: Tensor,
    item_emb: Tensor,
    ground_truth: RowSets,
    k: Union[int, Sequence[int]] = 20,
    exclude: Optional[RowSets] = None,
    batch_size: int = 1024,
) -> Dict[str, Tensor]:
    r"""LightGCN full-ranking protocol: Recall@K and NDCG@K over all items, training items
    masked, several ground-truth items per user.

    .. math::
        \mathrm{Recall@K}_u = \frac{|\mathrm{top}_K(u) \cap T_u|}{|T_u|}, \qquad
        \mathrm{NDCG@K}_u = \frac{\sum_{r=1}^{K} [\mathrm{top}_K(u)_r \in T_u] / \log_2(r+1)}
        {\sum_{r=1}^{\min(K, |T_u|)} 1 / \log_2(r+1)}

    averaged over the users with at least one ground-truth item.

    Args:
        user_emb: ``[U, d]``; item_emb: ``[I, d]``.
        ground_truth: test items per user row (pairs ``[2, M]`` or CSR).
        k: one cut-off or several.
        exclude: training items per user row to mask (pairs or CSR).
        batch_size: users scored at once.

    Returns:
        ``{"recall@k": ..., "ndcg@k": ...}`` for every ``k``.
    """
    ks = [k] if isinstance(k, int) else list(k)
    if not ks or any(not 1 <= kk <= item_emb.size(0) for kk in ks):
        raise ValueError(
            f"k={k!r} is invalid: expected cut-offs with 1 <= k <= num_items={item_emb.size(0)}")
    k_max = max(ks)
    num_u = user_emb.size(0)
    gt = to_csr(ground_truth, num_u)
    discount = 1.0 / torch.log2(torch.arange(2, k_max + 2, dtype=torch.float64))
    idcg = torch.cat([discount.new_zeros(1), discount.cumsum(0)])  # idcg[n] for n hits
    sums = {f"{m}@{kk}": torch.zeros((), dtype=torch.float64) for kk in ks
            for m in ("recall", "ndcg")}
    num_users = 0
    _, top = topk_items(user_emb, item_emb, k_max, exclude, None, batch_size)
    for start in range(0, num_u, batch_size):
        end = min(start + batch_size, num_u)
        rows, cols = _slice_csr(gt, start, end)
        relevant = torch.zeros(end - start, item_emb.size(0), dtype=torch.bool,
                               device=top.device)
        relevant[rows.to(top.device), cols.to(top.device)] = True
        count = relevant.sum(dim=1).cpu()  # [b] (duplicates counted once)
        hits = relevant.gather(1, top[start:end]).double().cpu()  # [b, k_max]
        has = count > 0
        num_users += int(has.sum())
        for kk in ks:
            h = hits[has, :kk]
            sums[f"recall@{kk}"] += (h.sum(1) / count[has]).sum()
            dcg = (h * discount[:kk]).sum(1)
            sums[f"ndcg@{kk}"] += (dcg / idcg[count[has].clamp(max=kk)]).sum()
    return {name: (s / max(num_users, 1)).float() for name, s in sums.items()}


@torch.no_grad()
def ranks_from_scorer(scorer: Callable[[Tensor], Tensor], query: Tensor, target: Tensor,
                      batch_size: int = 512) -> Tensor:
    """Rank (1 = best; ties counted against the target) of ``target`` among all items other
    than the query itself, for scores from ``scorer`` (one query row per case, no grouping)."""
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
