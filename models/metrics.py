"""Ranking metrics (pure torch): what a list of target ranks scores, and the top-k of embeddings.

- PinSage (Ying et al., 2018): rank of the positive among all items -> :func:`hit_rate_at_k`,
  :func:`scaled_mrr` (``mean 1 / ceil(rank / 100)``), :func:`mrr`;
- NCF (He et al., 2017) and full ranking: :func:`hit_rate_at_k`, :func:`ndcg_at_k`.

The ranks themselves are computed once, from scorers, for the model and every baseline
(:mod:`models.baselines`); :func:`topk_items` serves the model's recommendation tables.  Scores are
dot products; no function materialises more than ``[batch_size, num_items]`` scores at once.  Ties
are counted against the target (pessimistic ranks), so degenerate embeddings can never score well.

Sets of items per query row (items to exclude, ground truth) are given either as a
``LongTensor [2, M]`` of ``(row, item)`` pairs or as a CSR pair ``(indptr [R + 1],
indices [M])``; ``rows`` index the query rows ``0 .. B-1``.
"""

from __future__ import annotations

from typing import Iterator, Optional, Tuple, Union

import torch
from torch import Tensor

RowSets = Union[Tensor, Tuple[Tensor, Tensor]]


def to_csr(sets: RowSets, num_rows: int) -> Tuple[Tensor, Tensor]:
    """``(row, item)`` pairs ``[2, M]`` or a CSR ``(indptr, indices)`` -> CSR
    ``(indptr [num_rows + 1], indices [M])`` with rows in order."""
    if isinstance(sets, Tensor):
        if sets.dim() != 2 or sets.size(0) != 2:
            raise ValueError(
                f"row sets have shape {tuple(sets.shape)}: expected [2, M] (row, item) pairs "
                f"or an (indptr, indices) tuple")
        rows, items = sets[0].long(), sets[1].long()
        if rows.numel() and (rows.min() < 0 or rows.max() >= num_rows):
            raise ValueError(f"row sets reference rows outside [0, {num_rows})")
        perm = torch.sort(rows, stable=True)[1]
        counts = torch.bincount(rows, minlength=num_rows)
        indptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        return indptr, items[perm]
    indptr, indices = (torch.as_tensor(t).long() for t in sets)
    if indptr.dim() != 1 or indptr.numel() != num_rows + 1:
        raise ValueError(
            f"indptr has shape {tuple(indptr.shape)}: expected [{num_rows + 1}] "
            f"(one row per query + 1)")
    return indptr, indices


def _slice_csr(csr: Tuple[Tensor, Tensor], start: int, end: int) -> Tuple[Tensor, Tensor]:
    """``(local row, item)`` of rows ``start .. end-1``."""
    indptr, indices = csr
    lo, hi = int(indptr[start]), int(indptr[end])
    counts = indptr[start + 1:end + 1] - indptr[start:end]
    rows = torch.repeat_interleave(torch.arange(end - start, device=counts.device), counts)
    return rows, indices[lo:hi]


def _check_emb(query_emb: Tensor, item_emb: Tensor) -> None:
    if query_emb.dim() != 2 or item_emb.dim() != 2 or query_emb.size(1) != item_emb.size(1):
        raise ValueError(
            f"query_emb {tuple(query_emb.shape)} / item_emb {tuple(item_emb.shape)} are "
            f"invalid: expected [B, d] and [I, d]")


def _masked_scores(
    query_emb: Tensor,
    item_emb: Tensor,
    exclude: Optional[RowSets],
    query_items: Optional[Tensor],
    batch_size: int,
) -> Iterator[Tuple[int, int, Tensor, Tensor]]:
    """Yields ``(start, end, scores [b, I], excluded [b, I] bool)`` per chunk of queries."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is invalid: expected an int >= 1")
    num_q, num_items = query_emb.size(0), item_emb.size(0)
    csr = None if exclude is None else to_csr(exclude, num_q)
    if query_items is not None and query_items.shape != (num_q,):
        raise ValueError(
            f"query_items has shape {tuple(query_items.shape)}: expected [{num_q}]")
    for start in range(0, num_q, batch_size):
        end = min(start + batch_size, num_q)
        scores = query_emb[start:end] @ item_emb.t()
        excluded = torch.zeros(end - start, num_items, dtype=torch.bool, device=scores.device)
        if csr is not None:
            rows, cols = _slice_csr(csr, start, end)
            excluded[rows.to(scores.device), cols.to(scores.device)] = True
        if query_items is not None:
            excluded[torch.arange(end - start, device=scores.device),
                     query_items[start:end].to(scores.device)] = True
        yield start, end, scores, excluded


@torch.no_grad()
def topk_items(
    query_emb: Tensor,
    item_emb: Tensor,
    k: int,
    exclude: Optional[RowSets] = None,
    query_items: Optional[Tensor] = None,
    batch_size: int = 1024,
) -> Tuple[Tensor, Tensor]:
    """Top-``k`` non-excluded items per query: ``(scores [B, k], items [B, k])``, best first.
    ``exclude``: items to leave out per query row (pairs ``[2, M]`` or CSR); ``query_items``: the
    ``[B]`` item of each query, left out of its own list; ``1 <= k <= I``."""
    _check_emb(query_emb, item_emb)
    if not 1 <= k <= item_emb.size(0):
        raise ValueError(f"k={k!r} is invalid: expected 1 <= k <= num_items={item_emb.size(0)}")
    out_s, out_i = [], []
    for _, _, scores, excluded in _masked_scores(
            query_emb, item_emb, exclude, query_items, batch_size):
        s, i = scores.masked_fill(excluded, float("-inf")).topk(k, dim=1)
        out_s.append(s)
        out_i.append(i)
    if not out_i:
        return query_emb.new_empty(0, k), torch.empty(0, k, dtype=torch.long)
    return torch.cat(out_s), torch.cat(out_i)


def hit_rate_at_k(ranks: Tensor, k: int) -> Tensor:
    """Share of targets ranked ``<= k`` (HR@K)."""
    if k < 1:
        raise ValueError(f"k={k!r} is invalid: expected an int >= 1")
    return (ranks <= k).float().mean()


def scaled_mrr(ranks: Tensor, scale: int = 100) -> Tensor:
    """PinSage's scaled MRR: ``mean 1 / ceil(rank / scale)`` (Ying et al., 2018, Sec. 4.2)."""
    if scale < 1:
        raise ValueError(f"scale={scale!r} is invalid: expected an int >= 1")
    return (1.0 / torch.ceil(ranks.double() / scale)).mean().float()


def mrr(ranks: Tensor) -> Tensor:
    """Mean reciprocal rank."""
    return (1.0 / ranks.double()).mean().float()


def ndcg_at_k(ranks: Tensor, k: int) -> Tensor:
    """NDCG@K with a single relevant item: ``mean [rank <= k] / log2(rank + 1)``."""
    if k < 1:
        raise ValueError(f"k={k!r} is invalid: expected an int >= 1")
    r = ranks.double()
    return torch.where(r <= k, 1.0 / torch.log2(r + 1.0), torch.zeros_like(r)).mean().float()
