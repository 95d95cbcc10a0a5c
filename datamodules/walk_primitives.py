"""The building blocks of the random-walk kernels of :mod:`datamodules.walks`: the numba cache
folder, counter-based random numbers (splitmix64), the fused visit count + top-T, weighted slot
draws from per-segment alias tables (:class:`WalkWeights`), the ragged output and the argument
checks of the public walk functions.  See :mod:`datamodules.walks` for the definitions.
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
from numba import njit  # noqa: E402


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
# heap for the top-T
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


