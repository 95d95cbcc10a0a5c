"""Non-learned baselines and embedding scorers, ranked by one shared set of ranking functions.

A *scorer* is ``f(queries [B]) -> scores [B, num_items]`` (float32, higher = better). Queries are
item ids (item-to-item) or user ids (user -> items). Every scorer is built from the *training*
graph only (CSR arrays, so this module does not depend on the data package).

Item-to-item (:func:`baseline_scorer`):

* ``random``: i.i.d. uniform scores (seeded);
* ``popularity``: training degree of the candidate (the same list for every query);
* ``cooccurrence``: item-kNN by co-engagement, ``score(q, i) = #users who engaged both q and i``
  (ties broken by popularity), the classic "people who liked q also liked" list.

User -> items (:func:`user_scorer`), with ``h_u`` the indicator of the user's history (by default
the user's training items) and ``A`` the users x items training matrix:

* ``random``: uniform scores from a counter-based hash of ``(seed, user, item)``, so a user's
  scores do not depend on how users are batched;
* ``popularity``: training degree of the candidate;
* ``cooccurrence``: ``A^T (A h_u)``, i.e. the sum over the user's history items ``q`` of the
  co-engagement counts ``#users who engaged both q and i`` (ties broken by popularity).
  Computed by a numba kernel (:func:`cooccurrence_scores`) that walks history item -> users ->
  items, so the cost is the number of co-engaged edges, not ``users x items``: all 29,858 Gowalla
  users (40,981 items, 780k training edges) take about 15 s on 2 cores.

Embeddings (:func:`embedding_item_scorer`, :func:`embedding_user_scorer`): item-to-item scores are
dot products of item embeddings; a user's score for item ``j`` is ``z_j . p_u`` with the profile
``p_u`` = the L2-normalised mean of the embeddings of the user's history items
(:func:`user_profiles`; a user without history gets the zero profile, so all-equal scores and the
worst possible ranks).

Ranking (:func:`grouped_target_ranks`, :func:`candidate_ranks_from_scorer`,
:func:`full_ranking_from_scorer`) is written once, here, for the model and every baseline (the
metrics of a rank list are :mod:`models.metrics`): ties are counted against the target, training
items are masked with ``-inf``; each distinct query is scored once even when it has many targets,
and at most ``[batch_size, num_items]`` scores exist at a time.  The tests check it against plain
embedding rankers (``tests/models/reference_ranking.py``).
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
    graph = _graph_arrays(user_ptr, user_items, item_ptr, item_users, num_items)
    tie = _popularity_tie(degree)  # < 1: only breaks ties between equal co-counts
    singletons = np.arange(num_items + 1, dtype=np.int64)  # CSR of the sets {q}

    def score(q: Tensor) -> Tensor:
        q = _as_ids(q, num_items, "query items")
        out = cooccurrence_scores(singletons, np.arange(num_items, dtype=np.int64), q, *graph)
        out += tie
        return torch.from_numpy(out)

    return score


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


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _as_ids(ids, bound: int, what: str) -> np.ndarray:
    """``ids`` as a 1-d int64 numpy array inside ``[0, bound)``, else ValueError."""
    a = ids.detach().cpu().numpy() if isinstance(ids, Tensor) else np.asarray(ids)
    a = a.reshape(-1).astype(np.int64, copy=False)
    if a.size and (a.min() < 0 or a.max() >= bound):
        raise ValueError(f"{what} contain ids outside [0, {bound}): min {a.min()}, max {a.max()}")
    return a


def _graph_arrays(user_ptr, user_items, item_ptr, item_users, num_items: int):
    user_ptr = np.ascontiguousarray(user_ptr, dtype=np.int64)
    item_ptr = np.ascontiguousarray(item_ptr, dtype=np.int64)
    if item_ptr.shape != (num_items + 1,):
        raise ValueError(f"item_ptr has shape {item_ptr.shape}: expected ({num_items + 1},) for num_items={num_items}")
    return (user_ptr, np.ascontiguousarray(user_items, dtype=np.int64), item_ptr,
            np.ascontiguousarray(item_users, dtype=np.int64))


def _popularity_tie(degree: Tensor) -> np.ndarray:
    return (degree / (degree.max() + 1.0)).numpy().astype(np.float32) if degree.numel() else degree.numpy()


# ----------------------------------------------------------------------------------------------
# numba kernels: co-occurrence, counting, hashing
# ----------------------------------------------------------------------------------------------
_ROWS_PER_TASK = 16
_KERNELS: Dict[str, Callable] = {}


def _kernel(name: str) -> Callable:
    """Compile on first use (and cache on disk, numba ``cache=True``) the numba kernels."""
    if not _KERNELS:
        from numba import njit, prange

        @njit(parallel=True, nogil=True, cache=True)
        def cooccurrence(set_ptr, set_items, rows, user_ptr, user_items, item_ptr, item_users, out):
            num_users = user_ptr.shape[0] - 1
            n_rows = rows.shape[0]
            for c in prange((n_rows + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK):
                w = np.zeros(num_users, np.int64)
                touched = np.empty(num_users, np.int64)
                for r in range(c * _ROWS_PER_TASK, min(n_rows, (c + 1) * _ROWS_PER_TASK)):
                    s = rows[r]
                    n = 0
                    for e in range(set_ptr[s], set_ptr[s + 1]):  # history item q
                        q = set_items[e]
                        for f in range(item_ptr[q], item_ptr[q + 1]):  # users v of q
                            v = item_users[f]
                            if w[v] == 0:
                                touched[n] = v
                                n += 1
                            w[v] += 1  # w[v] = |history & items(v)| = (A h)_v
                    for t in range(n):
                        v = touched[t]
                        wv = np.float32(w[v])
                        for h in range(user_ptr[v], user_ptr[v + 1]):  # A^T (A h)
                            out[r, user_items[h]] += wv
                        w[v] = 0

        @njit(parallel=True, nogil=True, cache=True)
        def count_ge(scores, local, value, out):
            for n in prange(local.shape[0]):
                row = scores[local[n]]
                v = value[n]
                c = 0
                for j in range(row.shape[0]):
                    c += row[j] >= v
                out[n] = c

        @njit(parallel=True, nogil=True, cache=True)
        def hash_uniform(rows, num_items, key, out):
            for r in prange(rows.shape[0]):
                base = np.uint64(rows[r]) * np.uint64(0x9E3779B97F4A7C15) + key
                for j in range(num_items):
                    z = base + np.uint64(j) * np.uint64(0xD1B54A32D192ED03)
                    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
                    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
                    z = z ^ (z >> np.uint64(31))
                    out[r, j] = np.float32(z >> np.uint64(40)) * np.float32(1.0 / (1 << 24))

        _KERNELS.update(cooccurrence=cooccurrence, count_ge=count_ge, hash_uniform=hash_uniform)
    return _KERNELS[name]


def count_at_least(scores: Tensor, local: Tensor, value: Tensor) -> Tensor:
    """``out[n] = #{j: scores[local[n], j] >= value[n]}`` (no ``[n, I]`` temporary)."""
    s = np.ascontiguousarray(scores.detach().cpu().numpy(), dtype=np.float32)
    out = np.zeros(local.numel(), dtype=np.int64)
    if out.size:
        _kernel("count_ge")(s, local.cpu().numpy().astype(np.int64),
                            value.detach().cpu().numpy().astype(np.float32), out)
    return torch.from_numpy(out)


def cooccurrence_scores(set_ptr, set_items, rows, user_ptr, user_items, item_ptr,
                        item_users) -> np.ndarray:
    """``out[r, j] = sum_{q in S(rows[r])} #users engaging both q and j`` = ``A^T (A h)``.

    Args:
        set_ptr, set_items: CSR of item sets ``S(s)`` (a user's history, or ``{q}``).
        rows: ``[B]`` which sets to score.
        user_ptr, user_items, item_ptr, item_users: the training graph ``A`` in both CSR layouts.

    Returns:
        ``float32 [B, num_items]`` (exact integers up to 2^24), ``num_items = len(item_ptr) - 1``.
    """
    set_ptr = np.ascontiguousarray(set_ptr, dtype=np.int64)
    set_items = np.ascontiguousarray(set_items, dtype=np.int64)
    rows = _as_ids(rows, set_ptr.shape[0] - 1, "rows")
    user_ptr, user_items, item_ptr, item_users = _graph_arrays(
        user_ptr, user_items, item_ptr, item_users, np.asarray(item_ptr).shape[0] - 1)
    num_items = item_ptr.shape[0] - 1
    if set_items.size and (set_items.min() < 0 or set_items.max() >= num_items):
        raise ValueError(f"set_items contain item ids outside [0, {num_items})")
    out = np.zeros((rows.size, num_items), dtype=np.float32)
    if rows.size:
        _kernel("cooccurrence")(set_ptr, set_items, rows, user_ptr, user_items, item_ptr, item_users, out)
    return out


# ----------------------------------------------------------------------------------------------
# user -> items scorers
# ----------------------------------------------------------------------------------------------
def hash_uniform(rows, num_items: int, seed: int) -> Tensor:
    """``float32 [B, num_items]`` uniform in ``[0, 1)`` (24-bit resolution) from a splitmix64
    hash of ``(seed, row id, item)``: a row always gets the same scores, however it is batched."""
    rows = np.ascontiguousarray(np.asarray(rows, dtype=np.int64).reshape(-1))
    key = np.uint64((int(seed) * 0x632BE59BD9B4E019 + 0x27D4EB2F165667C5) & (2**64 - 1))
    out = np.empty((rows.size, num_items), dtype=np.float32)
    if out.size:
        _kernel("hash_uniform")(rows, np.int64(num_items), key, out)
    return torch.from_numpy(out)


def user_scorer(name: str, user_ptr, user_items, item_ptr, item_users, num_items: int, seed: int = 0,
                history=None) -> Callable[[Tensor], Tensor]:
    """Return ``f(users [B]) -> scores [B, num_items]`` for baseline ``name`` (see module doc).

    Args:
        user_ptr, user_items, item_ptr, item_users: the training graph (both CSR layouts).
        num_items: catalogue size.
        seed: for ``random``.
        history: optional CSR ``(ptr [U + 1], items)`` of each user's history (e.g. training plus
            validation items when scoring the test part); default the training items.
    """
    if name not in BASELINES:
        raise ValueError(f"baseline={name!r} is not valid; choose one of {list(BASELINES)}")
    num_users = np.asarray(user_ptr).shape[0] - 1
    degree = torch.from_numpy(np.diff(np.asarray(item_ptr)).astype(np.float32))
    if degree.numel() != num_items:
        raise ValueError(f"item_ptr has {degree.numel() + 1} entries: expected num_items + 1 = {num_items + 1}")
    if name == "random":
        return lambda u: hash_uniform(_as_ids(u, num_users, "users"), num_items, seed)
    if name == "popularity":
        return lambda u: degree.unsqueeze(0).expand(_as_ids(u, num_users, "users").size, -1).clone()
    graph = _graph_arrays(user_ptr, user_items, item_ptr, item_users, num_items)
    h_ptr, h_items = (graph[0], graph[1]) if history is None else (
        np.ascontiguousarray(history[0], dtype=np.int64), np.ascontiguousarray(history[1], dtype=np.int64))
    if h_ptr.shape != (num_users + 1,):
        raise ValueError(f"history ptr has shape {h_ptr.shape}: expected ({num_users + 1},), one row per user + 1")
    tie = _popularity_tie(degree)

    def score(u: Tensor) -> Tensor:
        out = cooccurrence_scores(h_ptr, h_items, _as_ids(u, num_users, "users"), *graph)
        out += tie
        return torch.from_numpy(out)

    return score


# ----------------------------------------------------------------------------------------------
# embedding scorers
# ----------------------------------------------------------------------------------------------
def _check_item_emb(item_emb: Tensor) -> Tensor:
    if not isinstance(item_emb, Tensor) or item_emb.dim() != 2:
        raise ValueError(f"item_emb must be a float tensor [num_items, d], got "
                         f"{getattr(item_emb, 'shape', type(item_emb).__name__)}")
    return item_emb.float()


def embedding_item_scorer(item_emb: Tensor) -> Callable[[Tensor], Tensor]:
    """Item-to-item: ``f(q) = item_emb[q] @ item_emb.T``."""
    emb = _check_item_emb(item_emb)
    return lambda q: emb[torch.as_tensor(q, dtype=torch.long)] @ emb.t()


def user_profiles(item_emb: Tensor, history_ptr, history_items) -> Tensor:
    """``[U, d]``: L2-normalised mean of the embeddings of each user's history items (zero rows
    for users without history)."""
    emb = _check_item_emb(item_emb)
    ptr = torch.as_tensor(np.asarray(history_ptr, dtype=np.int64))
    items = torch.as_tensor(np.asarray(history_items, dtype=np.int64))
    counts = ptr[1:] - ptr[:-1]
    owner = torch.repeat_interleave(torch.arange(counts.numel()), counts)
    prof = torch.zeros(counts.numel(), emb.size(1), dtype=emb.dtype)
    prof.index_add_(0, owner, emb[items])
    prof = prof / counts.clamp(min=1).unsqueeze(1).to(emb.dtype)
    return torch.nn.functional.normalize(prof, dim=1)


def embedding_user_scorer(item_emb: Tensor, history_ptr, history_items) -> Callable[[Tensor], Tensor]:
    """User -> items: ``f(u) = user_profiles(...)[u] @ item_emb.T`` (see :func:`user_profiles`)."""
    emb = _check_item_emb(item_emb)
    prof = user_profiles(emb, history_ptr, history_items)
    return lambda u: prof[torch.as_tensor(u, dtype=torch.long)] @ emb.t()


# ----------------------------------------------------------------------------------------------
# ranking from scorers (shared by embeddings and baselines)
# ----------------------------------------------------------------------------------------------
def _grouped(scorer: Callable[[Tensor], Tensor], query: Tensor, batch_size: int):
    """Score every distinct query once; yield ``(scores [b, I], cases [n], local rows [n])`` per
    chunk of distinct queries, ``cases`` indexing the input ``query``."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is invalid: expected an int >= 1")
    query = torch.as_tensor(query, dtype=torch.long).view(-1)
    uniq, inverse = torch.unique(query, return_inverse=True)
    order = torch.argsort(inverse, stable=True)
    counts = torch.bincount(inverse, minlength=uniq.numel())
    ptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    for s in range(0, uniq.numel(), batch_size):
        e = min(s + batch_size, uniq.numel())
        scores = scorer(uniq[s:e])
        cases = order[int(ptr[s]):int(ptr[e])]
        yield scores, cases, inverse[cases] - s


@torch.no_grad()
def grouped_target_ranks(scorer: Callable[[Tensor], Tensor], query: Tensor, target: Tensor,
                         exclude_query: bool = True, batch_size: int = 512) -> Tensor:
    """Rank (1 = best; ties against the target) of ``target[n]`` among all items for the scores
    of ``query[n]``, the query item itself left out when ``exclude_query`` (item-to-item).
    Equals the tests' plain ``target_ranks`` for a deterministic scorer, scoring each distinct
    query once."""
    query = torch.as_tensor(query, dtype=torch.long).view(-1)
    target = torch.as_tensor(target, dtype=torch.long).view(-1)
    if query.shape != target.shape:
        raise ValueError(f"query {tuple(query.shape)} and target {tuple(target.shape)} must have the same length")
    ranks = torch.zeros(query.numel(), dtype=torch.long)
    for scores, cases, local in _grouped(scorer, query, batch_size):
        scores = scores.float().contiguous()
        st = scores[local, target[cases]]
        # >= s_t among all items counts the target itself once: rank = 1 + the others
        rank = count_at_least(scores, local, st)
        if exclude_query:
            q = query[cases]
            rank -= ((scores[local, q] >= st) & (q != target[cases])).long()
        ranks[cases] = rank
    return ranks


@torch.no_grad()
def candidate_ranks_from_scorer(scorer: Callable[[Tensor], Tensor], query: Tensor, candidates: Tensor,
                                batch_size: int = 512) -> Tensor:
    """Rank (1 = best; ties against the target) of column 0 of ``candidates [N, C]`` among its
    row's ``C`` candidates for the scores of ``query[n]`` (NCF protocol)."""
    query = torch.as_tensor(query, dtype=torch.long).view(-1)
    candidates = torch.as_tensor(candidates, dtype=torch.long)
    if candidates.dim() != 2 or candidates.size(0) != query.numel() or candidates.size(1) < 1:
        raise ValueError(f"candidates has shape {tuple(candidates.shape)}: expected [{query.numel()}, C] "
                         f"with the target in column 0")
    ranks = torch.zeros(query.numel(), dtype=torch.long)
    for scores, cases, local in _grouped(scorer, query, batch_size):
        s = scores[local.view(-1, 1), candidates[cases]]  # [n, C]
        ranks[cases] = 1 + (s[:, 1:] >= s[:, :1]).sum(1)
    return ranks


def _csr_rows(ptr: Tensor, items: Tensor, rows: Tensor):
    """``(local row, item)`` of the given CSR rows."""
    counts = ptr[rows + 1] - ptr[rows]
    local = torch.repeat_interleave(torch.arange(rows.numel()), counts)
    starts = torch.repeat_interleave(ptr[rows] - (counts.cumsum(0) - counts), counts)
    return local, items[starts + torch.arange(int(counts.sum()))]


@torch.no_grad()
def full_ranking_from_scorer(scorer: Callable[[Tensor], Tensor], gt_ptr, gt_items, ks=(20,),
                             exclude_ptr=None, exclude_items=None, batch_size: int = 512) -> Dict[str, float]:
    """LightGCN full ranking (Recall@K / NDCG@K as PyG's ``LinkPredRecall`` / ``LinkPredNDCG``): for every user
    ``u`` with ground truth ``gt_items[gt_ptr[u]:gt_ptr[u+1]]``, all items ranked by
    ``scorer([u])`` with ``exclude`` items (training history) masked; Recall@K / NDCG@K averaged
    over those users. Returns ``{"recall@K", "ndcg@K"}`` as floats."""
    gt_ptr = torch.as_tensor(np.asarray(gt_ptr, dtype=np.int64))
    gt_items = torch.as_tensor(np.asarray(gt_items, dtype=np.int64))
    ks = [int(k) for k in ks]
    num_users = gt_ptr.numel() - 1
    if exclude_ptr is not None:
        exclude_ptr = torch.as_tensor(np.asarray(exclude_ptr, dtype=np.int64))
        exclude_items = torch.as_tensor(np.asarray(exclude_items, dtype=np.int64))
        if exclude_ptr.numel() != num_users + 1:
            raise ValueError(f"exclude_ptr has {exclude_ptr.numel()} entries: expected {num_users + 1} (as gt_ptr)")
    users = torch.nonzero(gt_ptr[1:] > gt_ptr[:-1]).view(-1)
    sums = {f"{m}@{k}": torch.zeros((), dtype=torch.float64) for k in ks for m in ("recall", "ndcg")}
    if users.numel() == 0:
        return {k: 0.0 for k in sums}
    k_max = max(ks)
    discount = 1.0 / torch.log2(torch.arange(2, k_max + 2, dtype=torch.float64))
    idcg = torch.cat([discount.new_zeros(1), discount.cumsum(0)])
    for s in range(0, users.numel(), batch_size):
        u = users[s:s + batch_size]
        scores = scorer(u)
        num_items = scores.size(1)
        if not all(1 <= k <= num_items for k in ks):
            raise ValueError(f"ks={ks!r} is invalid: expected cut-offs with 1 <= k <= num_items={num_items}")
        if exclude_ptr is not None:
            lr, it = _csr_rows(exclude_ptr, exclude_items, u)
            scores[lr, it] = float("-inf")
        top = scores.topk(k_max, dim=1).indices
        relevant = torch.zeros(u.numel(), num_items, dtype=torch.bool)
        lr, it = _csr_rows(gt_ptr, gt_items, u)
        relevant[lr, it] = True
        count = torch.count_nonzero(relevant, dim=1)
        hits = relevant.gather(1, top).double()
        for k in ks:
            h = hits[:, :k]
            sums[f"recall@{k}"] += (h.sum(1) / count).sum()
            sums[f"ndcg@{k}"] += ((h * discount[:k]).sum(1) / idcg[count.clamp(max=k)]).sum()
    return {name: float(v / users.numel()) for name, v in sums.items()}
