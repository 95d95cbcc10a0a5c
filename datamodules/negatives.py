"""Negative items for the max-margin loss: easy (uniform, shared) and hard (PPR-ranked, per query).

**Easy negatives** (PinSage Sec. 3.3): ``num_easy_negatives`` items drawn uniformly *without
replacement* per minibatch and shared by all its pairs, excluding every query and positive of the
batch; the count is capped to the items left (``num_items - |queries U positives|``).

**Hard negatives**: for query ``q`` the items whose visit-count rank from ``q`` lies in a window
``[lo, hi]`` (1-based, inclusive; rank 1 = the most visited item, ``q`` itself never ranked). The
ranking is :func:`datamodules.walks.visit_ranking` (the same restart walks as the importance
neighbourhoods, with many more walks, a fresh stream per epoch), which approximates personalised
PageRank from ``q``. Items are drawn uniformly from the window without replacement (with
replacement only when the window holds fewer items than requested), never ``q`` (excluded by
the ranking) and never the pair's positive ``i`` (removed from the window before drawing). A
query that occurs in several pairs of one batch only has the positive of the *same* pair removed.

Window (``hard_negative_window = [lo, hi]``): each bound ``< 1`` is a fraction of the catalogue
(``lo = ceil(lo * num_items)``, ``hi = floor(hi * num_items)``), each bound ``>= 1`` an absolute
rank. The paper uses ranks 2000-5000 out of billions of pins, i.e. "related but not the answer";
on public catalogues the default ``[0.01, 0.05]`` gives ranks 17-84 on MovieLens-100K (1,682
items) and 410-2,049 on Gowalla (40,981 items). For fractional bounds ``lo`` is floored to
``num_neighbors + 1`` (the top ``T`` are the item's own neighbourhood, too close to be negatives)
and ``hi`` to ``lo``. A window whose ``hi`` exceeds ``num_items - 1`` (the ranks that exist) is a
``ValueError`` naming ``hard_negative_window``.

Fallback when a query's walks reach fewer than ``lo`` distinct items: draw from the ranks past
the neighbourhood that were reached (``T+1 .. reached``); when even those are empty (fewer than
``T + 1`` items reached, e.g. an isolated or tiny-degree query), draw uniformly from the
catalogue minus ``{q, i}`` (with replacement).

Cost: ranking a query takes ``hard_num_walks`` walks (auto: about two visits per window rank), by
far the most expensive part of a batch on large catalogues; a query occurs in many pairs per
epoch, so each process keeps this epoch's rankings in a bounded cache (``cache_mb``; a ranking is
a function of ``(seed, epoch, query)``, so the cache never changes a batch). Visit-count ties are
broken by smaller item id (see :mod:`datamodules.walks`), so among equally-visited items at the
window's edges low ids are favoured; more walks mean fewer ties.

**Curriculum**: the batch built for Lightning's ``current_epoch = e`` (0-based; the paper's epoch
``n = e + 1``) gets ``min(e, max_hard_negatives)`` hard negatives per query, i.e. none in the first
epoch, ``n - 1`` at epoch ``n``; ``hard_negatives=False`` switches them off (the ablation).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np

from .checks import check_int
from .walks import visit_ranking

DEFAULT_HARD_WINDOW = (0.01, 0.05)
# distinct-item coverage: walks are sized so that a query makes about this many visits per window rank
_VISITS_PER_RANK = 2.0


def num_hard_for_epoch(epoch: int, max_hard_negatives: int, enabled: bool = True) -> int:
    """Hard negatives per query for Lightning epoch ``epoch`` (0-based): ``min(epoch, max)``."""
    check_int("epoch", epoch, 0, hint=" (Lightning's current_epoch)")
    if not enabled:
        return 0
    return int(min(int(epoch), int(max_hard_negatives)))


def resolve_hard_window(window: Sequence[float], num_items: int, num_neighbors: int) -> Tuple[int, int]:
    """``hard_negative_window`` -> 1-based inclusive ranks ``(lo, hi)`` (see module docstring)."""
    try:
        w = [float(v) for v in window]
    except (TypeError, ValueError):
        raise ValueError(f"hard_negative_window must be two numbers [lo, hi], got {window!r}") from None
    if len(w) != 2 or not all(math.isfinite(v) and v > 0 for v in w):
        raise ValueError(
            f"hard_negative_window must be two positive numbers [lo, hi] (fractions of the catalogue "
            f"when < 1, absolute ranks when >= 1), got {window!r}")
    if w[0] > w[1]:
        raise ValueError(f"hard_negative_window must have lo <= hi, got {window!r}")
    max_rank = int(num_items) - 1
    frac_lo, frac_hi = w[0] < 1, w[1] < 1
    lo = math.ceil(w[0] * num_items) if frac_lo else int(round(w[0]))
    hi = math.floor(w[1] * num_items) if frac_hi else int(round(w[1]))
    if frac_lo:
        lo = max(lo, int(num_neighbors) + 1)
    lo = max(lo, 1)
    if frac_hi:
        hi = max(hi, lo)
    if hi < lo:
        raise ValueError(f"hard_negative_window={list(window)!r} resolves to ranks [{lo}, {hi}] with lo > hi")
    if hi > max_rank:
        raise ValueError(
            f"hard_negative_window={list(window)!r} resolves to ranks [{lo}, {hi}] (1-based; fractional lower "
            f"bounds are floored to num_neighbors + 1 = {int(num_neighbors) + 1}), beyond the {max_rank} ranks a "
            f"catalogue of {num_items} items has; use a smaller window, a smaller num_neighbors, or "
            f"hard_negatives=False")
    return int(lo), int(hi)


def auto_hard_num_walks(hi: int, walk_length: int, restart_prob: float) -> int:
    """Walks per query so that the expected number of visits is ``~2 * hi`` (at least 100)."""
    visits = sum((1.0 - restart_prob) ** k for k in range(int(walk_length)))
    return int(max(100, math.ceil(_VISITS_PER_RANK * hi / max(visits, 1e-9))))


def _exclusion_map(t: np.ndarray, excluded_sorted: np.ndarray) -> np.ndarray:
    """Map ``t`` in ``[0, n - len(excluded))`` to the ``t``-th integer not in ``excluded_sorted``."""
    if excluded_sorted.size == 0:
        return t
    adj = excluded_sorted - np.arange(excluded_sorted.size, dtype=np.int64)
    return t + np.searchsorted(adj, t, side="right")


def sample_easy_negatives(num_items: int, num: int, exclude: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``min(num, available)`` distinct items uniformly from ``[0, num_items)`` minus ``exclude``
    (``int64``, in draw order)."""
    ex = np.unique(np.asarray(exclude, dtype=np.int64))
    avail = int(num_items) - ex.size
    n = int(min(max(int(num), 0), max(avail, 0)))
    if n == 0:
        return np.empty(0, dtype=np.int64)
    t = rng.choice(avail, size=n, replace=False).astype(np.int64)
    return _exclusion_map(t, ex)


def _uniform_excluding_pair(q: np.ndarray, pos: np.ndarray, num_items: int, h: int,
                            rng: np.random.Generator) -> np.ndarray:
    """``[R, h]`` uniform items (with replacement) avoiding each row's ``q`` and ``pos``."""
    e0, e1 = np.minimum(q, pos), np.maximum(q, pos)
    two = (e0 != e1)
    n_avail = num_items - 1 - two.astype(np.int64)
    if np.any(n_avail < 1):
        raise ValueError(f"cannot draw hard negatives from a catalogue of {num_items} items")
    t = np.floor(rng.random((q.size, h)) * n_avail[:, None]).astype(np.int64)
    t = np.minimum(t, n_avail[:, None] - 1)
    t = t + (t >= e0[:, None])
    t = t + ((t >= e1[:, None]) & two[:, None])
    return t


def sample_from_ranges(starts: np.ndarray, sizes: np.ndarray, skip: np.ndarray, h: int,
                       rng: np.random.Generator) -> np.ndarray:
    """For each row ``r``: ``h`` offsets into ``[0, sizes[r])`` minus ``skip[r]`` (``-1`` = nothing
    to skip), distinct when ``sizes[r] - has_skip >= h`` (Floyd's algorithm, vectorised over rows),
    else with replacement; returned as absolute positions ``starts[r] + offset`` (``[R, h]``).
    Rows must have at least one allowed offset."""
    R = starts.size
    has_skip = (skip >= 0) & (skip < sizes)
    n = sizes - has_skip.astype(np.int64)
    if np.any(n < 1):
        raise ValueError("sample_from_ranges: a row has no allowed offset")
    out = np.empty((R, h), dtype=np.int64)
    distinct = n >= h
    if h > 0:
        u = rng.random((R, h))
        # Floyd: for j = n-h .. n-1: t = randint(0, j]; if t already chosen, take j
        for s in range(h):
            j = n - h + s
            t = np.floor(u[:, s] * (j + 1)).astype(np.int64)
            t = np.minimum(t, j)
            if s:
                dup = (out[:, :s] == t[:, None]).any(axis=1)
                t = np.where(dup, j, t)
            out[:, s] = t
        # rows with fewer allowed offsets than h: with replacement
        if not distinct.all():
            rows = np.flatnonzero(~distinct)
            tr = np.floor(rng.random((rows.size, h)) * n[rows, None]).astype(np.int64)
            out[rows] = np.minimum(tr, n[rows, None] - 1)
    out = out + ((out >= skip[:, None]) & has_skip[:, None])
    return starts[:, None] + out


class HardNegativeMiner:
    """PPR-ranked hard negatives from a window of visit-count ranks (see module docstring).

    Args:
        graph: an ``InteractionGraph`` (``item_ptr/item_users/user_ptr/user_items``).
        window: ``hard_negative_window`` (fractions < 1 or absolute ranks >= 1).
        num_neighbors: ``T``, the neighbourhood size (fractional ``lo`` is floored to ``T + 1``).
        num_walks: walks per query for the ranking (``None``: :func:`auto_hard_num_walks`).
        walk_length, restart_prob: the walks (as for the neighbourhoods).
        seed: random stream; the ranking is a function of ``(seed, epoch, query)``.
        cache_mb: per-process memory for rankings already computed this epoch (a query occurs in
            many pairs per epoch; 0 disables the cache; results are identical either way).
    """

    def __init__(self, graph, window: Sequence[float] = DEFAULT_HARD_WINDOW, num_neighbors: int = 20,
                 num_walks: Optional[int] = None, walk_length: int = 2, restart_prob: float = 0.5, seed: int = 0,
                 cache_mb: float = 64.0):
        self.arrays = (np.ascontiguousarray(graph.item_ptr, dtype=np.int64), np.ascontiguousarray(graph.item_users),
                       np.ascontiguousarray(graph.user_ptr, dtype=np.int64), np.ascontiguousarray(graph.user_items))
        self.num_items = int(self.arrays[0].shape[0] - 1)
        self.num_neighbors = int(num_neighbors)
        self.lo, self.hi = resolve_hard_window(window, self.num_items, self.num_neighbors)
        self.walk_length = int(walk_length)
        self.restart_prob = float(restart_prob)
        if num_walks is None:
            num_walks = auto_hard_num_walks(self.hi, self.walk_length, self.restart_prob)
        self.num_walks = check_int("hard_num_walks", num_walks, 1, hint=" or null (auto)")
        self.seed = int(seed)
        try:
            cache_mb = float(cache_mb)
        except (TypeError, ValueError):
            cache_mb = float("nan")
        if not cache_mb >= 0:
            raise ValueError(f"hard_cache_mb must be a number >= 0, got {cache_mb!r}")
        self.cache_bytes = int(cache_mb * 2**20)
        self._cache_epoch = -1
        self._cache: dict = {}
        self._cache_used = 0

    def clear_cache(self) -> None:
        self._cache, self._cache_epoch, self._cache_used = {}, -1, 0

    def __getstate__(self):
        state = dict(self.__dict__)
        state.update(_cache={}, _cache_epoch=-1, _cache_used=0)
        return state

    def cached_ranking(self, queries: np.ndarray, epoch: int):
        """:meth:`ranking` of distinct ``queries`` through a per-process, per-epoch cache.

        A ranking is a function of ``(seed, epoch, query)``, so the cache never changes a result;
        it saves the walks of queries already ranked this epoch in this process. Rankings (int32,
        at most ``hi`` items each) are kept until ``hard_cache_mb`` is used up; a new epoch empties it.
        """
        if self.cache_bytes <= 0:
            ptr, items, _ = self.ranking(queries, epoch)
            return ptr, items
        if epoch != self._cache_epoch:
            self._cache, self._cache_epoch, self._cache_used = {}, epoch, 0
        cache = self._cache
        got = [cache.get(int(q)) for q in queries]
        miss = np.array([i for i, r in enumerate(got) if r is None], dtype=np.int64)
        if miss.size:
            mptr, mitems, _ = self.ranking(queries[miss], epoch)
            mitems = mitems.astype(np.int32)
            for j, i in enumerate(miss):
                r = mitems[mptr[j]:mptr[j + 1]].copy()
                got[i] = r
                if self._cache_used + r.nbytes + 100 <= self.cache_bytes:
                    cache[int(queries[i])] = r
                    self._cache_used += r.nbytes + 100
        lens = np.fromiter((r.size for r in got), dtype=np.int64, count=len(got))
        ptr = np.zeros(len(got) + 1, dtype=np.int64)
        np.cumsum(lens, out=ptr[1:])
        items = np.concatenate(got).astype(np.int64) if got else np.empty(0, dtype=np.int64)
        return ptr, items

    def ranking(self, queries: np.ndarray, epoch: int = 0):
        """``(ptr, items, counts)`` visit ranking of each query up to rank ``hi``."""
        return visit_ranking(*self.arrays, queries, self.num_walks, self.walk_length, self.restart_prob,
                             self.hi, self.seed, epoch)

    def sample(self, queries: np.ndarray, positives: np.ndarray, num: int, epoch: int,
               rng: np.random.Generator) -> np.ndarray:
        """``int64 [B, num]`` hard negatives for the pairs ``(queries[b], positives[b])``."""
        queries = np.asarray(queries, dtype=np.int64)
        positives = np.asarray(positives, dtype=np.int64)
        B = queries.size
        if num <= 0 or B == 0:
            return np.empty((B, max(int(num), 0)), dtype=np.int64)
        uq, inv = np.unique(queries, return_inverse=True)
        ptr, items = self.cached_ranking(uq, epoch)
        reached = np.diff(ptr)[inv]  # per pair
        base = ptr[:-1][inv]
        T, lo, hi = self.num_neighbors, self.lo, self.hi
        # window positions (0-based within the query's ranking): [a, e)
        in_window = reached >= lo
        past_t = ~in_window & (reached > T)
        a = np.where(in_window, lo - 1, T)
        e = np.where(in_window, np.minimum(hi, reached), reached)
        # the positive's position inside the query's ranking (-1 = not ranked)
        pos_rank = np.full(B, -1, dtype=np.int64)
        if items.size:
            # look the pair's positive up among its query's ranked items via a (query, item) key
            seg = np.repeat(np.arange(uq.size, dtype=np.int64), np.diff(ptr))
            key_items = seg * self.num_items + items
            srt = np.argsort(key_items, kind="stable")
            sk = key_items[srt]
            key_pairs = inv.astype(np.int64) * self.num_items + positives
            loc = np.minimum(np.searchsorted(sk, key_pairs), sk.size - 1)
            pos_rank = np.where(sk[loc] == key_pairs, srt[loc] - base, -1)
        skip = np.where((pos_rank >= a) & (pos_rank < e), pos_rank - a, -1)
        sizes = e - a
        usable = (in_window | past_t) & (sizes - (skip >= 0) >= 1)
        out = np.empty((B, num), dtype=np.int64)
        rows = np.flatnonzero(usable)
        if rows.size:
            p = sample_from_ranges(base[rows] + a[rows], sizes[rows], skip[rows], num, rng)
            out[rows] = items[p]
        rest = np.flatnonzero(~usable)
        if rest.size:
            out[rest] = _uniform_excluding_pair(queries[rest], positives[rest], self.num_items, num, rng)
        return out

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(ranks=[{self.lo}, {self.hi}], num_walks={self.num_walks}, "
                f"walk_length={self.walk_length}, restart_prob={self.restart_prob}, seed={self.seed})")
