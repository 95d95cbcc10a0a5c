"""Random-walk importance neighbourhoods (PinSage) and uniform neighbourhoods (GraphSAGE).

Definitions
-----------
The graph is the bipartite users x items engagement graph, stored as CSR in both directions
(``item_ptr``/``item_users``: users of each item, ``user_ptr``/``user_items``: items of each user;
see :class:`datamodules.graph.InteractionGraph`). One *hop* (a "traversal") goes
item -> uniformly random user of that item -> uniformly random item of that user.

**PinSage neighbourhood** of a seed item ``s`` (Ying et al. 2018, Sec. 3.1, "importance-based
neighbourhoods"): run ``num_walks`` independent walks from ``s``. Each walk makes at most
``walk_length`` hops; after every hop the item reached is *visited* (counted once), and then the
walk ends with probability ``restart_prob`` (the next walk restarts at ``s``). A walk also ends at a
dead end (an item without users: only possible at an isolated seed). Visits to ``s`` itself are not
counted. The neighbourhood is the ``top_t`` items with the most visits (ties: smaller item id
first), in that order, with weights ``count / sum(kept counts)`` (L1-normalised importance; they
sum to 1 for every seed that reached any other item). Seeds reaching fewer than ``top_t`` distinct
items get all of them; isolated seeds get an empty range.

Relation to personalised PageRank: let ``P`` be the item->item transition matrix of one hop. The
expected number of visits of one walk to item ``j`` is
``sum_{k=1..L} (1-p)^(k-1) P^k[s, j]`` (``L = walk_length``, ``p = restart_prob``), while the PPR
vector with teleport probability ``p`` is ``pi = p * sum_{k>=0} (1-p)^k P^k[s, :]``. So for
``j != s`` the expected visit counts are exactly proportional to ``pi`` truncated at ``L`` hops,
and visit counts of many long walks rank items as PPR does (the tests check it against an exact
power iteration, ``exact_ppr`` in ``tests/datamodules/test_walks.py``).

**Semantics vs DGL** (``dgl.sampling.PinSAGESampler(G, ntype, other, num_traversals=walk_length,
termination_prob=restart_prob, num_random_walks=num_walks, num_neighbors=top_t)``, read from DGL's
``python/dgl/sampling/pinsage.py`` and ``src/graph/sampling/randomwalks/``): DGL builds a metapath
``[item->user, user->item] * num_traversals`` with a per-step stop probability that is
``termination_prob`` at the first item->user step of every traversal after the first (i.e. after
every completed traversal but the last) and 0 elsewhere: the same walk distribution as here.
Differences: (1) DGL counts visits back to the seed itself, so the seed can occupy one of its own
``num_neighbors`` slots (here it is excluded and the slot goes to the next item); (2) DGL returns
raw counts as edge weights (here: L1-normalised; :func:`visit_ranking` returns raw counts);
(3) DGL breaks ties arbitrarily (here: smaller id first, deterministic); (4) DGL uses a stateful
per-thread RNG (not reproducible across thread counts); here randomness is a counter-based hash of
``(seed, epoch, seed item, walk, hop)``, so results depend only on those, never on threads,
batch composition or order.

**Weighted walks** (``walk_weights``, ``PinSageSampler(weighted=True)``): with interaction
weights ``w(u, i)`` (play counts, ratings), a hop goes item ``i`` -> user ``u`` with probability
``w(u, i) / sum_u' w(u', i)``, then user ``u`` -> item ``j`` with ``w(u, j) / sum_j' w(u, j')``:
the uniform walk is the special case of equal weights. The kernels draw a slot with per-segment
alias tables (Walker/Vose; :class:`WalkWeights`, 8 bytes per edge and layout): the uniform slot
of the same random number, kept or replaced by its alias, so equal weights give exactly the
uniform path's walks and a hop costs one extra load whatever the degree; graphs without weights
(or with all weights equal) take the uniform path itself.

**Uniform neighbourhood** (GraphSAGE baseline): ``num_samples`` one-hop draws with replacement:
a uniform user of ``s``, then a uniform item of that user other than ``s`` (users whose only item
is ``s`` are redrawn). Returned deduplicated in the same ragged format, ordered by count
(desc, then id), with weights ``count / total draws`` so that weighted pooling equals the mean over
the draws.

Performance notes
-----------------
Native kernels (numba, ``nogil=True, cache=True``), no Python per walk or per seed:

* walks of one seed advance in lockstep groups of up to 32, one dependent memory load (item
  pointer, user, user pointer, item) at a time across the group, so the cache misses of
  independent walks overlap (the walk is memory-latency bound on large graphs);
* visits are counted in a small per-thread open-addressing hash table (L1-resident, cleared via its
  used-slot list) and the top-T read off with a bounded heap: count and top-T are fused, nothing is
  allocated per seed;
* the parallel driver is ``@njit(parallel=True)`` with ``prange`` over chunks of 16 seeds; a serial
  driver (same per-chunk code, never touching numba's threading layer) is used for small batches,
  with one numba thread, and inside torch DataLoader worker processes (GNU OpenMP, numba's usual
  threading layer, is not fork-safe) -- ``parallel=`` forces either. Results are identical.

Threads: numba's pool (``NUMBA_NUM_THREADS``, default all cores; ``numba.set_num_threads`` at
run time). On a loaded or oversubscribed machine set ``OMP_WAIT_POLICY=PASSIVE`` (or
``NUMBA_THREADING_LAYER=workqueue``) before numba starts: with GNU OpenMP's default active
waiting, idle pool threads spin and a parallel call can become ~10x slower than a serial one.
The compiled code is cached on disk: if ``NUMBA_CACHE_DIR`` is unset when this module is imported
*before numba itself*, it is set to ``$XDG_CACHE_HOME/pinsage/numba`` (``~/.cache/pinsage/numba``),
falling back to a temp dir; the first compile takes ~10-20 s, later imports load from the cache.
"""

from __future__ import annotations

from typing import Optional, Tuple

# first: it points numba at its cache folder before numba is imported
from .walk_primitives import (_CHUNK, _GOLDEN, _GROUP, _LO32, _M2, Ragged, WalkWeights, _arrays_of, _below,  # noqa: F401, I001
                              _check_graph, _check_prob, _check_seeds, _check_walk_weights,
                              _compact, _count_topk, _empty, _hash_topk, _mix, _pick_weighted,
                              _stream_key, _use_parallel, alias_table, walk_weights)
from .checks import check_int  # noqa: E402

import numpy as np  # noqa: E402
from numba import njit, prange  # noqa: E402

__all__ = [
    "pinsage_neighbors",
    "visit_ranking",
    "uniform_neighbors",
    "PinSageSampler",
    "UniformSampler",
    "WalkWeights",
    "walk_weights",
    "alias_table",
]


# ----------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------

@njit(inline="always", cache=True)
def _pick(ptr, tab, weighted, node, r):
    """Edge slot of ``node``'s CSR row drawn with random ``r`` (by weight, or uniform)."""
    a = ptr[node]
    if weighted:
        return _pick_weighted(tab, a, ptr[node + 1], r)
    return a + _below(r, ptr[node + 1] - a)


@njit(inline="always", cache=True)
def _count_visit(hkeys, hcnt, used, m, it, shift, tmask):
    """Count a visit of item ``it`` in the open-addressing table; returns the new ``m`` (slots used)."""
    slot = np.int64((np.uint64(it) * _GOLDEN) >> shift)
    while True:
        hk = hkeys[slot]
        if hk == it:
            hcnt[slot] += 1
            return m
        if hk == -1:
            hkeys[slot] = it
            hcnt[slot] = 1
            used[m] = slot
            return m + 1
        slot = (slot + 1) & tmask


@njit(nogil=True, cache=True)
def _pinsage_chunk(item_ptr, item_users, user_ptr, user_items, item_tab, user_tab, weighted, seeds, lo, hi,
                   num_walks, walk_length, stop_threshold, K, key, out_items, out_cnt, out_len):
    """Visit counts of ``seeds[lo:hi]`` -> top-K blocks ``out_items/out_cnt[b*K:]``, ``out_len[b]``.

    Per seed, walks are advanced in groups of ``_GROUP`` in lockstep, one phase (one dependent
    memory load) at a time over the whole group, so the cache misses of independent walks overlap.
    Visits are counted in a small open-addressing hash table (L1-resident) and the top-K read off
    with a bounded heap. Walk ``w`` of seed ``s`` draws from its own counter-based stream, so the
    result does not depend on threads, grouping or batch composition. ``weighted``: transitions
    proportional to edge weight (alias tables ``item_tab``/``user_tab``, see :func:`_pick_weighted`),
    else uniform.
    """
    cap = num_walks * walk_length
    bits = 4
    while (1 << bits) < 2 * cap:
        bits += 1
    tsize = 1 << bits
    tmask = tsize - 1
    shift = np.uint64(64 - bits)
    thr = np.uint64(stop_threshold)
    G = min(_GROUP, num_walks)
    if True:
        hkeys = np.full(tsize, -1, dtype=np.int64)
        hcnt = np.zeros(tsize, dtype=np.int32)
        used = np.empty(cap, dtype=np.int64)
        heap = np.empty(min(K, cap), dtype=np.int64)
        cur = np.empty(G, dtype=np.int64)
        st = np.empty(G, dtype=np.uint64)
        pos = np.empty(G, dtype=np.int64)
        rr = np.empty(G, dtype=np.uint64)
        for b in range(lo, hi):
            s = seeds[b]
            if item_ptr[s + 1] == item_ptr[s]:
                out_len[b] = 0
                continue
            base = _mix(key ^ (np.uint64(s) * _GOLDEN))
            m = 0
            for g0 in range(0, num_walks, G):
                na = min(G, num_walks - g0)
                for j in range(na):
                    cur[j] = s
                    st[j] = _mix(base + np.uint64(g0 + j) * _M2)
                for h in range(walk_length):
                    # phase 1: pick a user slot of the current item
                    for j in range(na):
                        x = st[j] + _GOLDEN
                        st[j] = x
                        r = _mix(x)
                        rr[j] = r
                        pos[j] = _pick(item_ptr, item_tab, weighted, cur[j], r)
                    # phase 2: load the user, pick an item slot
                    for j in range(na):
                        x = st[j] + _GOLDEN
                        st[j] = x
                        pos[j] = _pick(user_ptr, user_tab, weighted, item_users[pos[j]], _mix(x))
                    # phase 3: load the item, count it, drop walks that stop
                    j = 0
                    while j < na:
                        it = np.int64(user_items[pos[j]])
                        if it != s:
                            m = _count_visit(hkeys, hcnt, used, m, it, shift, tmask)
                        if (rr[j] & _LO32) < thr:
                            na -= 1  # swap-remove the stopped walk
                            cur[j] = cur[na]
                            st[j] = st[na]
                            rr[j] = rr[na]
                            pos[j] = pos[na]
                        else:
                            cur[j] = it
                            j += 1
                    if na == 0:
                        break
            out_len[b] = _hash_topk(hkeys, hcnt, used, m, cap, heap, K, out_items, out_cnt, b * K)


@njit(parallel=True, nogil=True, cache=True)
def _pinsage_parallel(item_ptr, item_users, user_ptr, user_items, item_tab, user_tab, weighted, seeds, num_walks,
                      walk_length, stop_threshold, K, key):
    """Parallel driver (prange over chunks of ``_CHUNK`` seeds) -> (out_items, out_cnt, out_len)."""
    B = seeds.shape[0]
    out_items = np.empty(B * K, dtype=np.int64)
    out_cnt = np.empty(B * K, dtype=np.int32)
    out_len = np.zeros(B, dtype=np.int64)
    nchunks = (B + _CHUNK - 1) // _CHUNK
    for c in prange(nchunks):
        _pinsage_chunk(item_ptr, item_users, user_ptr, user_items, item_tab, user_tab, weighted, seeds, c * _CHUNK,
                       min(B, (c + 1) * _CHUNK), num_walks, walk_length, stop_threshold, K, key, out_items, out_cnt,
                       out_len)
    return out_items, out_cnt, out_len


@njit(nogil=True, cache=True)
def _pinsage_serial(item_ptr, item_users, user_ptr, user_items, item_tab, user_tab, weighted, seeds, num_walks,
                    walk_length, stop_threshold, K, key):
    """Serial driver (no threading layer involved: safe in forked DataLoader workers)."""
    B = seeds.shape[0]
    out_items = np.empty(B * K, dtype=np.int64)
    out_cnt = np.empty(B * K, dtype=np.int32)
    out_len = np.zeros(B, dtype=np.int64)
    _pinsage_chunk(item_ptr, item_users, user_ptr, user_items, item_tab, user_tab, weighted, seeds, 0, B, num_walks,
                   walk_length, stop_threshold, K, key, out_items, out_cnt, out_len)
    return out_items, out_cnt, out_len




@njit(nogil=True, cache=True)
def _uniform_chunk(item_ptr, item_users, user_ptr, user_items, seeds, lo, hi, K, key, out_items, out_cnt, out_len):
    max_tries = 8 * K + 64
    if True:
        buf = np.empty(K, dtype=np.int64)
        keys = np.empty(K, dtype=np.int64)
        for b in range(lo, hi):
            s = seeds[b]
            us = item_ptr[s]
            du = item_ptr[s + 1] - us
            n = 0
            if du > 0:
                state = _mix(key ^ (np.uint64(s) * _GOLDEN))
                tries = 0
                while n < K and tries < max_tries:
                    tries += 1
                    state += _GOLDEN
                    r1 = _mix(state)
                    state += _GOLDEN
                    r2 = _mix(state)
                    u = item_users[us + _below(r1, du)]
                    is_ = user_ptr[u]
                    di = user_ptr[u + 1] - is_
                    if di < 2:
                        continue
                    # uniform over the user's other items: draw among di-1 slots; the seed's slot
                    # stands for the last one
                    j = np.int64(user_items[is_ + _below(r2, di - 1)])
                    if j == s:
                        j = np.int64(user_items[is_ + di - 1])
                    if j == s:  # duplicate edges
                        continue
                    buf[n] = j
                    n += 1
            out_len[b] = _count_topk(buf, n, keys, K, out_items, out_cnt, b * K)


@njit(parallel=True, nogil=True, cache=True)
def _uniform_parallel(item_ptr, item_users, user_ptr, user_items, seeds, K, key):
    B = seeds.shape[0]
    out_items = np.empty(B * K, dtype=np.int64)
    out_cnt = np.empty(B * K, dtype=np.int32)
    out_len = np.zeros(B, dtype=np.int64)
    nchunks = (B + _CHUNK - 1) // _CHUNK
    for c in prange(nchunks):
        _uniform_chunk(item_ptr, item_users, user_ptr, user_items, seeds, c * _CHUNK, min(B, (c + 1) * _CHUNK), K,
                       key, out_items, out_cnt, out_len)
    return out_items, out_cnt, out_len


@njit(nogil=True, cache=True)
def _uniform_serial(item_ptr, item_users, user_ptr, user_items, seeds, K, key):
    B = seeds.shape[0]
    out_items = np.empty(B * K, dtype=np.int64)
    out_cnt = np.empty(B * K, dtype=np.int32)
    out_len = np.zeros(B, dtype=np.int64)
    _uniform_chunk(item_ptr, item_users, user_ptr, user_items, seeds, 0, B, K, key, out_items, out_cnt, out_len)
    return out_items, out_cnt, out_len




# ----------------------------------------------------------------------------------------------
# public functions
# ----------------------------------------------------------------------------------------------
def pinsage_neighbors(item_ptr, item_users, user_ptr, user_items, seeds, num_walks: int = 10,
                      walk_length: int = 2, restart_prob: float = 0.5, top_t: int = 10, seed: int = 0,
                      epoch: int = 0, parallel: Optional[bool] = None,
                      walk_weights: Optional["WalkWeights"] = None) -> Ragged:
    """PinSage importance neighbourhoods of ``seeds`` (see the module docstring for the definition).

    Returns ``(nbr_ptr int64 [B+1], nbr_items int64 [nnz], nbr_weight float32 [nnz])``: the
    neighbours of ``seeds[b]`` are ``nbr_items[nbr_ptr[b]:nbr_ptr[b+1]]``, ordered by visit count
    (desc, ties by smaller id), weights L1-normalised over the kept items. Deterministic in
    ``(seed, epoch)``; a different ``epoch`` gives fresh walks. With a large ``top_t`` this is the
    full visit ranking (see :func:`visit_ranking` for raw counts).

    Raises ``ValueError`` (naming the argument, its value and the valid range) for
    ``num_walks < 1``, ``walk_length < 1``, ``top_t < 1``, ``restart_prob`` outside ``[0, 1)``,
    ``seed``/``epoch < 0``, and seeds that are not integers in ``[0, num_items)``.

    ``parallel``: ``None`` (auto: all numba threads for large batches; serial for small ones, with
    one numba thread, and inside torch DataLoader workers), ``True`` or ``False``. The result is
    the same either way. In forked worker processes that are not torch DataLoader workers pass
    ``parallel=False``: GNU OpenMP aborts a forked child whose parent already used its pool.

    ``walk_weights``: ``None`` (uniform transitions, the fast path) or a :class:`WalkWeights` of
    the same graph (transitions proportional to edge weight; see "Weighted walks" above).
    """
    ptr, items, weight, _ = _walk_counts_full(item_ptr, item_users, user_ptr, user_items, seeds, num_walks,
                                              walk_length, restart_prob, top_t, seed, epoch, parallel,
                                              walk_weights)
    return ptr, items, weight


def visit_ranking(item_ptr, item_users, user_ptr, user_items, seeds, num_walks: int = 1000,
                  walk_length: int = 3, restart_prob: float = 0.5, max_rank: int = 5000, seed: int = 0,
                  epoch: int = 0, parallel: Optional[bool] = None,
                  walk_weights: Optional["WalkWeights"] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Items reached from each seed ranked by visit count: ``(ptr, items, counts int32)``.

    Same walks as :func:`pinsage_neighbors` with ``top_t=max_rank``; entry ``r`` of a seed's range
    is its rank-``r`` item (0-based, count desc, ties by smaller id; the seed excluded). At most
    ``min(max_rank, num_walks * walk_length)`` items per seed. Use it for PPR-ranked hard negatives
    (e.g. items ranked in a window ``[lo, hi)``: ``items[ptr[b] + lo : min(ptr[b] + hi, ptr[b+1])]``).
    Working memory is ``12 * len(seeds) * min(max_rank, num_walks * walk_length)`` bytes, so rank
    large windows in batches of a few hundred seeds.
    """
    max_rank = check_int("max_rank", max_rank, 1)
    res = _walk_counts_full(item_ptr, item_users, user_ptr, user_items, seeds, num_walks, walk_length,
                            restart_prob, max_rank, seed, epoch, parallel, walk_weights)
    ptr, items, _, counts = res
    return ptr, items, counts


def _walk_counts_full(item_ptr, item_users, user_ptr, user_items, seeds, num_walks, walk_length, restart_prob,
                      top_t, seed, epoch, parallel=None, walk_weights=None):
    """(ptr, items, weight, counts) -- the shared body of the public walk functions."""
    item_ptr, item_users, user_ptr, user_items = _check_graph(item_ptr, item_users, user_ptr, user_items)
    num_walks = check_int("num_walks", num_walks, 1)
    walk_length = check_int("walk_length", walk_length, 1)
    top_t = check_int("top_t", top_t, 1)
    restart_prob = _check_prob("restart_prob", restart_prob)
    seed = check_int("seed", seed, 0)
    epoch = check_int("epoch", epoch, 0)
    seeds = _check_seeds(seeds, item_ptr.shape[0] - 1)
    if num_walks * walk_length >= 2**31:
        raise ValueError(f"num_walks * walk_length must be < 2**31, got {num_walks * walk_length}")
    if seeds.shape[0] == 0:
        p, i, w = _empty()
        return p, i, w, np.empty(0, dtype=np.int32)
    k = min(top_t, num_walks * walk_length)
    thr = min(int(restart_prob * 2**32), 2**32 - 1)
    work = seeds.shape[0] * num_walks * walk_length
    kernel = _pinsage_parallel if _use_parallel(parallel, work) else _pinsage_serial
    item_tab, user_tab, weighted = _check_walk_weights(walk_weights, item_ptr, user_ptr)
    out_items, out_cnt, out_len = kernel(
        item_ptr, item_users, user_ptr, user_items, item_tab, user_tab, weighted, seeds, np.int64(num_walks),
        np.int64(walk_length), np.int64(thr), np.int64(k), _stream_key(seed, epoch, 1))
    return _compact(out_items, out_cnt, out_len, k)


def uniform_neighbors(item_ptr, item_users, user_ptr, user_items, seeds, num_samples: int = 10, seed: int = 0,
                      epoch: int = 0, parallel: Optional[bool] = None) -> Ragged:
    """GraphSAGE uniform neighbourhoods: ``num_samples`` one-hop draws with replacement per seed.

    Each draw: a uniform user of the seed, then a uniform item of that user other than the seed
    (users whose only item is the seed are redrawn; after ``8 * num_samples + 64`` attempts a seed
    keeps what it has, so seeds without any 2-hop item neighbour get an empty range). Returned as
    ``(ptr, items, weights)`` like :func:`pinsage_neighbors`: distinct items ordered by count
    (desc, then id), weight = count / number of successful draws (so weighted pooling = the mean
    over the draws). Deterministic in ``(seed, epoch)``.
    """
    item_ptr, item_users, user_ptr, user_items = _check_graph(item_ptr, item_users, user_ptr, user_items)
    num_samples = check_int("num_samples", num_samples, 1)
    seed = check_int("seed", seed, 0)
    epoch = check_int("epoch", epoch, 0)
    seeds = _check_seeds(seeds, item_ptr.shape[0] - 1)
    if seeds.shape[0] == 0:
        return _empty()
    kernel = _uniform_parallel if _use_parallel(parallel, seeds.shape[0] * num_samples) else _uniform_serial
    out_items, out_cnt, out_len = kernel(item_ptr, item_users, user_ptr, user_items, seeds,
                                         np.int64(num_samples), _stream_key(seed, epoch, 2))
    ptr, items, weight, _ = _compact(out_items, out_cnt, out_len, num_samples)
    return ptr, items, weight


# ----------------------------------------------------------------------------------------------
# thin classes over a graph object
# ----------------------------------------------------------------------------------------------
class PinSageSampler:
    """Importance neighbourhoods over a graph with ``item_ptr/item_users/user_ptr/user_items``.

    ``sample(seeds, epoch=0) -> (ptr, items, weights)``; see :func:`pinsage_neighbors`. Arguments
    are validated at construction (``ValueError`` naming the argument, value and valid range).
    ``weighted=True``: transitions proportional to the graph's edge weights (:func:`walk_weights`;
    a graph without weights, or with all weights equal, stays on the uniform fast path).
    """

    def __init__(self, graph, num_walks: int = 10, walk_length: int = 2, restart_prob: float = 0.5,
                 top_t: int = 10, seed: int = 0, parallel: Optional[bool] = None, weighted: bool = False):
        self.arrays = _check_graph(*_arrays_of(graph))
        self.walk_weights = walk_weights(graph) if weighted else None
        self.parallel = parallel
        self.num_items = self.arrays[0].shape[0] - 1
        self.num_walks = check_int("num_walks", num_walks, 1)
        self.walk_length = check_int("walk_length", walk_length, 1)
        self.restart_prob = _check_prob("restart_prob", restart_prob)
        self.top_t = check_int("top_t", top_t, 1)
        self.seed = check_int("seed", seed, 0)

    def sample(self, seeds, epoch: int = 0) -> Ragged:
        return pinsage_neighbors(*self.arrays, seeds, self.num_walks, self.walk_length, self.restart_prob,
                                 self.top_t, self.seed, epoch, self.parallel, self.walk_weights)

    __call__ = sample

    def ranking(self, seeds, max_rank: int, num_walks: Optional[int] = None, epoch: int = 0):
        """:func:`visit_ranking` with this sampler's walk parameters (``num_walks`` overridable)."""
        return visit_ranking(*self.arrays, seeds, num_walks or self.num_walks, self.walk_length,
                             self.restart_prob, max_rank, self.seed, epoch, self.parallel, self.walk_weights)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_walks={self.num_walks}, walk_length={self.walk_length}, "
                f"restart_prob={self.restart_prob}, top_t={self.top_t}, seed={self.seed}, "
                f"weighted={self.walk_weights is not None})")


class UniformSampler:
    """GraphSAGE uniform neighbourhoods; ``sample(seeds, epoch=0)``, see :func:`uniform_neighbors`."""

    def __init__(self, graph, num_samples: int = 10, seed: int = 0, parallel: Optional[bool] = None):
        self.arrays = _check_graph(*_arrays_of(graph))
        self.parallel = parallel
        self.num_items = self.arrays[0].shape[0] - 1
        self.num_samples = check_int("num_samples", num_samples, 1)
        self.seed = check_int("seed", seed, 0)

    def sample(self, seeds, epoch: int = 0) -> Ragged:
        return uniform_neighbors(*self.arrays, seeds, self.num_samples, self.seed, epoch, self.parallel)

    __call__ = sample

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_samples={self.num_samples}, seed={self.seed})"
