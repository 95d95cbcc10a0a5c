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

import os
import sys
import tempfile


def _default_numba_cache_dir() -> None:
    if os.environ.get("NUMBA_CACHE_DIR") or "numba" in sys.modules:
        return
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    for cand in (os.path.join(base, "pinsage", "numba"), os.path.join(tempfile.gettempdir(), "pinsage-numba")):
        try:
            os.makedirs(cand, exist_ok=True)
            if os.access(cand, os.W_OK):
                os.environ["NUMBA_CACHE_DIR"] = cand
                return
        except OSError:
            continue


_default_numba_cache_dir()

from typing import NamedTuple, Optional, Tuple  # noqa: E402

import numba  # noqa: E402
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

Ragged = Tuple[np.ndarray, np.ndarray, np.ndarray]

# ----------------------------------------------------------------------------------------------
# counter-based random numbers (splitmix64)
# ----------------------------------------------------------------------------------------------
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S32 = np.uint64(32)
_LO32 = np.uint64(0xFFFFFFFF)
_CHUNK = 16  # seeds per parallel task


def _mix_py(z: int) -> int:
    m = (1 << 64) - 1
    z &= m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def _stream_key(seed: int, epoch: int, salt: int) -> np.uint64:
    """64-bit key of the random stream for ``(seed, epoch)`` (``salt`` separates the kernels)."""
    k = _mix_py(int(seed) * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019 + salt)
    k = _mix_py(k ^ ((int(epoch) + 1) * 0xD1B54A32D192ED03))
    return np.uint64(k)


@njit(inline="always", cache=True)
def _mix(z):
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(inline="always", cache=True)
def _below(r, n):
    """Map the high 32 bits of ``r`` to ``[0, n)`` (multiply-shift; ``n < 2**32``)."""
    return np.int64(((r >> _S32) * np.uint64(n)) >> _S32)


# ----------------------------------------------------------------------------------------------
# fused count + top-T on a scratch buffer
# ----------------------------------------------------------------------------------------------
@njit(inline="always", cache=True)
def _sort_small(a, n):
    """In-place ascending sort of ``a[:n]``: insertion sort when short, else numba's sort."""
    if n <= 48:
        for i in range(1, n):
            v = a[i]
            j = i - 1
            while j >= 0 and a[j] > v:
                a[j + 1] = a[j]
                j -= 1
            a[j + 1] = v
    else:
        a[:n].sort()


@njit(inline="always", cache=True)
def _count_topk(buf, n, keys, k, out_items, out_cnt, out_off):
    """Count the ids in ``buf[:n]`` and write the ``k`` most frequent (count desc, id asc) to
    ``out_items/out_cnt[out_off:]``. Returns the number written. ``buf`` is clobbered."""
    if n == 0:
        return 0
    _sort_small(buf, n)
    # run-length encode into sortable keys: (n - count) << 32 | id  => count desc, id asc
    m = 0
    prev = buf[0]
    c = 1
    for i in range(1, n):
        v = buf[i]
        if v == prev:
            c += 1
        else:
            keys[m] = (np.int64(n - c) << 32) | prev
            m += 1
            prev = v
            c = 1
    keys[m] = (np.int64(n - c) << 32) | prev
    m += 1
    kk = min(k, m)
    if m > kk and kk <= 8:
        # partial selection for tiny k: kk passes of min-extraction (cheaper than a full sort)
        for i in range(kk):
            best = i
            for j in range(i + 1, m):
                if keys[j] < keys[best]:
                    best = j
            t = keys[i]
            keys[i] = keys[best]
            keys[best] = t
    else:
        _sort_small(keys, m)
    mask = np.int64(0xFFFFFFFF)
    for i in range(kk):
        key = keys[i]
        out_items[out_off + i] = key & mask
        out_cnt[out_off + i] = n - (key >> 32)
    return kk


# ----------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------
@njit(inline="always", cache=True)
def _heap_sift_down(heap, i, size):
    """Max-heap sift-down of ``heap[i]`` within ``heap[:size]``."""
    v = heap[i]
    while True:
        c = 2 * i + 1
        if c >= size:
            break
        if c + 1 < size and heap[c + 1] > heap[c]:
            c += 1
        if heap[c] <= v:
            break
        heap[i] = heap[c]
        i = c
    heap[i] = v


@njit(inline="always", cache=True)
def _heap_push(heap, size, v):
    i = size
    while i > 0:
        p = (i - 1) >> 1
        if heap[p] >= v:
            break
        heap[i] = heap[p]
        i = p
    heap[i] = v


@njit(inline="always", cache=True)
def _hash_topk(hkeys, hcnt, used, m, cap, heap, k, out_items, out_cnt, out_off):
    """Top-``k`` of the ``m`` (item, count) slots of the hash table (count desc, id asc), written to
    ``out_*[out_off:]``; clears the used slots. Returns the number written."""
    # key = (cap - count) << 32 | item: ascending key == count desc, then id asc
    size = 0
    for i in range(m):
        slot = used[i]
        key = (np.int64(cap - hcnt[slot]) << 32) | hkeys[slot]
        hkeys[slot] = -1
        if size < k:
            _heap_push(heap, size, key)
            size += 1
        elif key < heap[0]:
            heap[0] = key
            _heap_sift_down(heap, 0, size)
    # heap sort ascending in place
    for end in range(size - 1, 0, -1):
        t = heap[0]
        heap[0] = heap[end]
        heap[end] = t
        _heap_sift_down(heap, 0, end)
    mask = np.int64(0xFFFFFFFF)
    for i in range(size):
        key = heap[i]
        out_items[out_off + i] = key & mask
        out_cnt[out_off + i] = np.int32(cap - (key >> 32))
    return size


_GROUP = 32  # walks advanced in lockstep (memory-level parallelism)
_ALIAS_KEY = np.uint64(0xA5A5F00DC0FFEE11)


@njit(inline="always", cache=True)
def _pick_weighted(tab, lo, hi, r):
    """A CSR slot in ``[lo, hi)`` with probability proportional to its weight (alias method).

    ``tab[e]`` (:func:`alias_table`) packs slot ``e``'s acceptance threshold (high 32 bits) and
    its alias (low 32 bits, an offset from ``lo``). The slot ``k = lo + _below(r, hi - lo)`` is
    drawn exactly as on the uniform path, then kept when a second uniform (a mix of ``r``; the
    walk's random stream is not advanced) is below its threshold, else replaced by its alias.
    Full slots have threshold ``2**32 - 1`` and themselves as alias, so with equal weights this
    is exactly the uniform path. One extra load per hop, O(1) whatever the degree.
    """
    k = lo + _below(r, hi - lo)
    t = tab[k]
    if (_mix(r ^ _ALIAS_KEY) >> _S32) < (t >> _S32):
        return k
    return lo + np.int64(t & _LO32)


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
                        us = item_ptr[cur[j]]
                        if weighted:
                            pos[j] = _pick_weighted(item_tab, us, item_ptr[cur[j] + 1], r)
                        else:
                            pos[j] = us + _below(r, item_ptr[cur[j] + 1] - us)
                    # phase 2: load the user, pick an item slot
                    for j in range(na):
                        u = item_users[pos[j]]
                        x = st[j] + _GOLDEN
                        st[j] = x
                        r = _mix(x)
                        is_ = user_ptr[u]
                        if weighted:
                            pos[j] = _pick_weighted(user_tab, is_, user_ptr[u + 1], r)
                        else:
                            pos[j] = is_ + _below(r, user_ptr[u + 1] - is_)
                    # phase 3: load the item, count it, drop walks that stop
                    j = 0
                    while j < na:
                        it = np.int64(user_items[pos[j]])
                        if it != s:
                            slot = np.int64((np.uint64(it) * _GOLDEN) >> shift)
                            while True:
                                hk = hkeys[slot]
                                if hk == it:
                                    hcnt[slot] += 1
                                    break
                                if hk == -1:
                                    hkeys[slot] = it
                                    hcnt[slot] = 1
                                    used[m] = slot
                                    m += 1
                                    break
                                slot = (slot + 1) & tmask
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




def _compact(out_items, out_cnt, out_len, K):
    """Ragged CSR ``(ptr, items, weights, counts)`` from the padded per-seed top-K blocks; weights are
    counts L1-normalised per seed (vectorised numpy: no parallel region)."""
    B = out_len.shape[0]
    ptr = np.zeros(B + 1, dtype=np.int64)
    np.cumsum(out_len, out=ptr[1:])
    if B * K == ptr[-1]:
        items, counts = out_items, out_cnt
    else:
        mask = (np.arange(K)[None, :] < out_len[:, None]).reshape(-1)
        items, counts = out_items[mask], out_cnt[mask]
    seg = np.repeat(np.arange(B), out_len)
    tot = np.bincount(seg, weights=counts, minlength=B) if B else np.zeros(0)
    weight = (counts / tot[seg]).astype(np.float32) if counts.size else np.empty(0, dtype=np.float32)
    return ptr, items, weight, counts


# ----------------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------------
def _check_int(name: str, value, lo: int, hi: Optional[int] = None) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer in [{lo}, {hi if hi is not None else 'inf'}), got {value!r}")
    if value < lo or (hi is not None and value >= hi):
        raise ValueError(f"{name} must be in [{lo}, {hi if hi is not None else 'inf'}), got {value!r}")
    return int(value)


def _check_prob(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a float in [0, 1), got {value!r}") from None
    if not (0.0 <= v < 1.0):
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return v


def _check_graph(item_ptr, item_users, user_ptr, user_items):
    item_ptr = np.ascontiguousarray(item_ptr, dtype=np.int64)
    user_ptr = np.ascontiguousarray(user_ptr, dtype=np.int64)
    item_users = np.ascontiguousarray(item_users)
    user_items = np.ascontiguousarray(user_items)
    for name, a in (("item_users", item_users), ("user_items", user_items)):
        if a.dtype not in (np.int32, np.int64):
            raise ValueError(f"{name} must be an int32 or int64 array, got dtype {a.dtype}")
    if item_ptr.ndim != 1 or item_ptr.shape[0] < 1 or user_ptr.ndim != 1 or user_ptr.shape[0] < 1:
        raise ValueError("item_ptr and user_ptr must be 1-d CSR pointer arrays of length >= 1")
    if item_users.shape[0] != item_ptr[-1] or user_items.shape[0] != user_ptr[-1]:
        raise ValueError(
            f"CSR arrays disagree: item_ptr[-1]={item_ptr[-1]} vs len(item_users)={item_users.shape[0]}, "
            f"user_ptr[-1]={user_ptr[-1]} vs len(user_items)={user_items.shape[0]}")
    if item_users.shape[0] != user_items.shape[0]:
        raise ValueError(
            f"item_users ({item_users.shape[0]}) and user_items ({user_items.shape[0]}) must hold the same edges")
    return item_ptr, item_users, user_ptr, user_items


def _check_seeds(seeds, num_items: int) -> np.ndarray:
    if hasattr(seeds, "detach") and hasattr(seeds, "cpu"):  # torch tensor
        seeds = seeds.detach().cpu().numpy()
    arr = np.asarray(seeds)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"seeds must be a 1-d array of item ids, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        raise ValueError(f"seeds must be integer item ids in [0, {num_items}), got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= num_items):
        bad = arr[(arr < 0) | (arr >= num_items)][0]
        raise ValueError(f"seeds must be item ids in [0, {num_items}), got {int(bad)}")
    return arr


def _arrays_of(graph):
    """(item_ptr, item_users, user_ptr, user_items) of an InteractionGraph-like object or tuple."""
    if isinstance(graph, (tuple, list)):
        if len(graph) != 4:
            raise ValueError("graph arrays must be (item_ptr, item_users, user_ptr, user_items)")
        return tuple(graph)
    try:
        return graph.item_ptr, graph.item_users, graph.user_ptr, graph.user_items
    except AttributeError:
        raise ValueError(
            "graph must have item_ptr, item_users, user_ptr and user_items attributes "
            f"(e.g. datamodules.graph.InteractionGraph), got {type(graph).__name__}") from None


_PARALLEL_MIN_WORK = 20_000  # hops (or draws) below which one thread beats waking the pool


def _in_dataloader_worker() -> bool:
    data = sys.modules.get("torch.utils.data")
    try:
        return data is not None and data.get_worker_info() is not None
    except Exception:  # pragma: no cover - defensive
        return False


def _use_parallel(parallel: Optional[bool], work: int) -> bool:
    """Parallel driver or serial one. Auto mode keeps forked DataLoader workers off the threading
    layer (GNU OpenMP is not fork-safe) and small batches off the thread pool."""
    if parallel is not None:
        return bool(parallel)
    if work < _PARALLEL_MIN_WORK or _in_dataloader_worker():
        return False
    return numba.get_num_threads() > 1


def _empty() -> Ragged:
    return np.zeros(1, dtype=np.int64), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)


# ----------------------------------------------------------------------------------------------
# edge weights (weighted transitions)
# ----------------------------------------------------------------------------------------------
class WalkWeights(NamedTuple):
    """Alias tables (:func:`alias_table`, ``uint64``, one entry per edge) of both CSR layouts:
    ``item_table`` aligned with ``item_users``, ``user_table`` with ``user_items``."""

    item_table: np.ndarray
    user_table: np.ndarray


_NO_TAB = np.zeros(1, dtype=np.uint64)
_FULL = np.uint64(0xFFFFFFFF)


@njit(nogil=True, cache=True)
def _alias_kernel(ptr, w, out):
    """Vose's alias method per CSR segment; ``out[e] = threshold << 32 | alias offset``."""
    n = ptr.shape[0] - 1
    maxd = 0
    for s in range(n):
        maxd = max(maxd, ptr[s + 1] - ptr[s])
    q = np.empty(maxd, dtype=np.float64)
    small = np.empty(maxd, dtype=np.int64)
    large = np.empty(maxd, dtype=np.int64)
    for s in range(n):
        lo = ptr[s]
        d = ptr[s + 1] - lo
        tot = 0.0
        for k in range(d):
            tot += w[lo + k]
        for k in range(d):  # full slot, alias = itself (also the zero-total fallback: uniform)
            out[lo + k] = (_FULL << _S32) | np.uint64(k)
        if d == 0 or not tot > 0.0:
            continue
        ns = 0
        nl = 0
        for k in range(d):
            q[k] = w[lo + k] * d / tot
            if q[k] < 1.0:
                small[ns] = k
                ns += 1
            else:
                large[nl] = k
                nl += 1
        while ns > 0 and nl > 0:
            ns -= 1
            sm = small[ns]
            lg = large[nl - 1]
            thr = min(np.uint64(q[sm] * 4294967296.0), _FULL)
            out[lo + sm] = (thr << _S32) | np.uint64(lg)
            q[lg] = (q[lg] + q[sm]) - 1.0
            if q[lg] < 1.0:
                nl -= 1
                small[ns] = lg
                ns += 1
        # what is left (rounding) stays full


def alias_table(ptr: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per-segment alias table of a CSR (``uint64 [E]``, see :func:`_pick_weighted`): slot ``e`` of
    segment ``s`` is drawn with probability ``weights[e] / sum(weights[segment s])``; a segment of
    total weight 0 is drawn uniformly."""
    ptr = np.ascontiguousarray(ptr, dtype=np.int64)
    w = np.ascontiguousarray(weights, dtype=np.float64)
    out = np.empty(w.shape[0], dtype=np.uint64)
    _alias_kernel(ptr, w, out)
    return out


def walk_weights(graph) -> Optional[WalkWeights]:
    """The :class:`WalkWeights` of an ``InteractionGraph`` (``weights`` aligned with ``user_items``,
    ``item_to_user_edge`` mapping item-major to user-major edges), or ``None`` (the uniform fast
    path) when the graph has no weights or all of them are equal (then weighted = uniform).

    Raises ``ValueError`` for negative or non-finite weights, or a graph whose weights do not
    match its edges."""
    w = getattr(graph, "weights", None)
    if w is None:
        return None
    w = np.asarray(w, dtype=np.float64)
    if w.shape != (int(graph.user_ptr[-1]),):
        raise ValueError(f"graph weights must have one entry per edge ({int(graph.user_ptr[-1])}), got shape {w.shape}")
    if w.size == 0 or np.all(w == w[0]):
        return None
    if not np.isfinite(w).all() or w.min() < 0:
        bad = w[~np.isfinite(w) | (w < 0)][0]
        raise ValueError(f"weighted walks need finite edge weights >= 0, got {bad!r}; "
                         "pass weighted_walks=false to walk uniformly")
    item_w = w[np.asarray(graph.item_to_user_edge, dtype=np.int64)]
    return WalkWeights(alias_table(graph.item_ptr, item_w), alias_table(graph.user_ptr, w))


def _check_walk_weights(ww, item_ptr, user_ptr):
    """``(item_table, user_table, weighted)`` for the kernels (dummies and ``False`` when ``ww`` is None)."""
    if ww is None:
        return _NO_TAB, _NO_TAB, False
    item_tab = np.ascontiguousarray(ww[0])
    user_tab = np.ascontiguousarray(ww[1])
    if (item_tab.dtype != np.uint64 or user_tab.dtype != np.uint64 or item_tab.shape != (int(item_ptr[-1]),)
            or user_tab.shape != (int(user_ptr[-1]),)):
        raise ValueError(f"walk_weights must be a WalkWeights of uint64 alias tables with one entry per edge "
                         f"({int(item_ptr[-1])}), got {item_tab.dtype}{item_tab.shape} and {user_tab.dtype}{user_tab.shape}")
    return item_tab, user_tab, True


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
    max_rank = _check_int("max_rank", max_rank, 1)
    res = _walk_counts_full(item_ptr, item_users, user_ptr, user_items, seeds, num_walks, walk_length,
                            restart_prob, max_rank, seed, epoch, parallel, walk_weights)
    ptr, items, _, counts = res
    return ptr, items, counts


def _walk_counts_full(item_ptr, item_users, user_ptr, user_items, seeds, num_walks, walk_length, restart_prob,
                      top_t, seed, epoch, parallel=None, walk_weights=None):
    """(ptr, items, weight, counts) -- the shared body of the public walk functions."""
    item_ptr, item_users, user_ptr, user_items = _check_graph(item_ptr, item_users, user_ptr, user_items)
    num_walks = _check_int("num_walks", num_walks, 1)
    walk_length = _check_int("walk_length", walk_length, 1)
    top_t = _check_int("top_t", top_t, 1)
    restart_prob = _check_prob("restart_prob", restart_prob)
    seed = _check_int("seed", seed, 0)
    epoch = _check_int("epoch", epoch, 0)
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
    num_samples = _check_int("num_samples", num_samples, 1)
    seed = _check_int("seed", seed, 0)
    epoch = _check_int("epoch", epoch, 0)
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
        self.num_walks = _check_int("num_walks", num_walks, 1)
        self.walk_length = _check_int("walk_length", walk_length, 1)
        self.restart_prob = _check_prob("restart_prob", restart_prob)
        self.top_t = _check_int("top_t", top_t, 1)
        self.seed = _check_int("seed", seed, 0)

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
        self.num_samples = _check_int("num_samples", num_samples, 1)
        self.seed = _check_int("seed", seed, 0)

    def sample(self, seeds, epoch: int = 0) -> Ragged:
        return uniform_neighbors(*self.arrays, seeds, self.num_samples, self.seed, epoch, self.parallel)

    __call__ = sample

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_samples={self.num_samples}, seed={self.seed})"
