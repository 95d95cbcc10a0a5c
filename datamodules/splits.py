"""Train / validation / test splits and PinSage training pairs, without leakage.

* ``temporal``: per user, interactions ordered by (timestamp, file order); the last one is the
  test interaction, the second last the validation one (users with fewer than 3 interactions
  keep everything in training).
* ``random``: a seeded random per-user leave-one-out: per user one random interaction is the test
  one, another random one the validation one (users with fewer than 3 interactions keep
  everything in training). For logs without timestamps, where file order says nothing about time
  (many logs are sorted by item id, so "the last row" would be the user's highest item id).
* ``fixed``: the dataset's own train/test split (``Interactions.is_test``), kept exactly;
  validation is one training interaction of every user with at least 3 training interactions:
  the latest one when the log has timestamps, a seeded random one when it has none.
* ``auto``: ``fixed`` when the dataset has its own split, else ``temporal`` when it has
  timestamps, else ``random`` (announced on stderr once per process).

The seed (``split_seed``) is a data argument: the split is a pure function of (log, kind, seed).
Held-out interactions are never part of the training graph (``RecDataset.train_graph``).

Pairs (q, i): "the user engaged with i right after q". Training pairs come from consecutive
interactions of the same user inside the training part only. A held-out interaction i gets the
pair (q, i) with q from the user's *context* (training rows for validation; training and
validation rows for test): for an ordered split (``temporal``, or ``fixed`` with timestamps) q is
the context row right before i; for an unordered one (``random``, ``fixed`` without timestamps)
q is a seeded random context item of the same user.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from . import chunks
from .checks import check_int
from .interactions import Interactions

SPLITS = ("auto", "temporal", "random", "fixed")

_SALT_SPLIT, _SALT_VAL, _SALT_QUERY = 0x5B117, 0x7A1, 0x9E7


@dataclass
class Split:
    """Row indices into an :class:`Interactions` log, each ``int64``."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def sizes(self) -> dict:
        return {"train": int(self.train.size), "val": int(self.val.size), "test": int(self.test.size)}


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not valid; choose one of {list(SPLITS)}")
    return split


def check_split_seed(seed) -> int:
    return check_int("split_seed", seed, 0)


def resolve_split(split: str, inter: Interactions) -> str:
    """The split kind ``split`` means for ``inter`` (``auto`` resolved; see module docstring)."""
    check_split(split)
    if split != "auto":
        return split
    if inter.is_test is not None:
        return "fixed"
    return "temporal" if inter.timestamps is not None else "random"


def is_ordered(kind: str, inter: Interactions) -> bool:
    """Whether held-out items of a ``kind`` split follow their context in time (see module docstring)."""
    return kind == "temporal" or (kind == "fixed" and inter.timestamps is not None)


_announced: set = set()


def announce_split(split: str, inter: Interactions, seed: int = 0, name: str = "", auto: bool = True) -> None:
    """Say on stderr (once per process and dataset) that ``auto`` chose the random split (unless
    ``auto=False``: the caller says it, as the DataModule's line of :mod:`datamodules.choices`),
    or that ``temporal`` met a log without timestamps (file order is then taken as time order)."""
    if split == "temporal" and inter.timestamps is None and ("temporal", name) not in _announced:
        _announced.add(("temporal", name))
        what = f"dataset {name!r}" if name else "the log"
        print(f"pinsage: warning: split='temporal' but {what} has no timestamps (no time_col): file order is "
              "taken as time order, so each user's last row in the file is held out; if the file is not in time "
              "order (e.g. sorted by item id) use split: auto (a seeded random split) or set time_col",
              file=sys.stderr, flush=True)
    if auto and split == "auto" and resolve_split(split, inter) == "random" and (name, seed) not in _announced:
        _announced.add((name, seed))
        what = f"dataset {name!r}" if name else "the log"
        print(f"pinsage: {what} has no timestamps, so split='auto' is a seeded random per-user leave-one-out "
              f"(split='random', split_seed={seed}); pass --data.split temporal if file order is time order",
              file=sys.stderr, flush=True)


def _rng(seed: int, salt: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), salt]))


def user_time_order(inter: Interactions, rows: np.ndarray | None = None) -> np.ndarray:
    """Rows sorted by (user, timestamp, file position); ``rows`` itself when already in that order."""
    order = _user_time_order(inter, rows)
    return np.arange(inter.num_interactions) if order is None else order


def _user_time_order(inter: Interactions, rows: np.ndarray | None = None):
    """:func:`user_time_order`, with ``None`` for "all rows, already in (user, time) order" (a log
    grouped by user: no sort and no ``arange`` of the log)."""
    if rows is not None:
        rows = np.asarray(rows, dtype=np.int64)
    if chunks.in_group_order(inter.users, inter.timestamps, rows):
        return rows
    rows = np.arange(inter.num_interactions) if rows is None else rows
    keys = [rows, inter.users[rows]] if inter.timestamps is None else [rows, inter.timestamps[rows], inter.users[rows]]
    return rows[np.lexsort(keys)]


def _rank_from_end(users_sorted: np.ndarray) -> np.ndarray:
    """Position (from the end, 1 = last) of each element within its user run."""
    n = users_sorted.shape[0]
    is_end = np.ones(n, dtype=bool)
    is_end[:-1] = users_sorted[1:] != users_sorted[:-1]
    end_idx = np.flatnonzero(is_end)
    run_end = np.repeat(end_idx, np.diff(np.concatenate([[-1], end_idx])))
    return run_end - np.arange(n) + 1


def _run_length(users_sorted: np.ndarray) -> np.ndarray:
    _, counts = np.unique(users_sorted, return_counts=True)
    return np.repeat(counts, counts)


def _last_two_out(inter: Interactions, order, min_interactions: int) -> Split:
    """``order`` (all rows; ``None`` = the identity) groups rows by ascending user: test = each
    eligible user's last row in it, val = the one before (from the users' run pointers: no
    per-row temporaries but one mask)."""
    n = inter.num_interactions
    counts = chunks.bincount(inter.users, inter.num_users)
    end = np.cumsum(counts)
    eligible = (counts >= min_interactions) & (counts > 0)
    last, second = end[eligible] - 1, end[eligible & (counts >= 2)] - 2
    train_pos = np.ones(n, dtype=bool)
    train_pos[last] = False
    train_pos[second] = False
    if order is None:  # positions are rows: already ascending
        return Split(np.flatnonzero(train_pos).astype(np.int64), second.astype(np.int64), last.astype(np.int64))
    return Split(np.sort(order[train_pos]), np.sort(order[second]), np.sort(order[last]))


def temporal_leave_last_out(inter: Interactions, min_interactions: int = 3) -> Split:
    return _last_two_out(inter, _user_time_order(inter), min_interactions)


def random_leave_one_out(inter: Interactions, seed: int = 0, min_interactions: int = 3) -> Split:
    """Per user (>= ``min_interactions`` rows): test = one seeded random row, val = another."""
    n = inter.num_interactions
    key = _rng(seed, _SALT_SPLIT).random(n)
    order = np.lexsort((key, inter.users))  # per user, a random order of its rows
    return _last_two_out(inter, order, min_interactions)


def fixed_split(inter: Interactions, min_train: int = 3, seed: int = 0) -> Split:
    """The dataset's own test rows; validation = one training row per user with >= ``min_train``
    training rows: the latest (timestamp, file order) with timestamps, a seeded random one without."""
    if inter.is_test is None:
        raise ValueError("split='fixed' needs a dataset with its own train/test split; "
                         "use split='temporal' or split='random'")
    test = np.flatnonzero(inter.is_test)
    train_rows = np.flatnonzero(~inter.is_test)
    if inter.timestamps is not None:
        order = user_time_order(inter, train_rows)
    else:
        key = _rng(seed, _SALT_VAL).random(inter.num_interactions)[train_rows]
        order = train_rows[np.lexsort((key, inter.users[train_rows]))]
    u = inter.users[order]
    from_end = _rank_from_end(u)
    eligible = _run_length(u) >= min_train
    val = order[eligible & (from_end == 1)]
    train = order[~(eligible & (from_end == 1))]
    return Split(np.sort(train), np.sort(val), test)


def make_split(inter: Interactions, split: str = "auto", seed: int = 0) -> Split:
    """Split ``inter`` (``split`` in ``SPLITS``, ``seed`` = ``split_seed``; see module docstring)."""
    kind = resolve_split(split, inter)
    seed = check_split_seed(seed)
    if kind == "temporal":
        return temporal_leave_last_out(inter)
    if kind == "random":
        return random_leave_one_out(inter, seed)
    return fixed_split(inter, seed=seed)


def _without(sp: Split, exclude: np.ndarray, train_extra, n: int) -> Split:
    out = np.zeros(n, dtype=bool)
    out[exclude] = True
    train = sp.train[~out[sp.train]]
    if train_extra is not None and train_extra.size:
        train = np.union1d(train, train_extra)
    return Split(train, sp.val[~out[sp.val]], sp.test[~out[sp.test]])


def consecutive_pairs(inter: Interactions, rows: np.ndarray) -> np.ndarray:
    """``int64 [P, 2]`` pairs (q, i) of consecutive interactions of one user within ``rows``."""
    order = user_time_order(inter, rows)
    n = order.shape[0]
    # one chunk of the user-time order at a time (one row of overlap), into an upper-bound buffer
    # whose untouched tail is never resident
    out = np.empty((max(n - 1, 0), 2), dtype=np.int64)
    k = 0
    for a, b in chunks.spans(max(n - 1, 0)):
        o = order[a:b + 1]
        u, it = inter.users[o], inter.items[o]
        same = u[1:] == u[:-1]
        q, i = it[:-1][same], it[1:][same]
        keep = q != i
        m = int(keep.sum())
        out[k:k + m, 0], out[k:k + m, 1] = q[keep], i[keep]
        k += m
    return out[:k]


def heldout_pairs(inter: Interactions, context_rows: np.ndarray, heldout_rows: np.ndarray) -> np.ndarray:
    """``int64 [H, 2]`` pairs (q, i): i held out, q = the user's latest context row before it.

    ``context_rows`` are the rows a query may come from (training rows, plus validation rows when
    building test pairs). Held-out rows of users with no earlier context row are skipped.
    """
    heldout_rows = np.asarray(heldout_rows, dtype=np.int64)
    if heldout_rows.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    ctx = user_time_order(inter, context_rows)
    t = inter.timestamps
    # position key inside a user: (timestamp, file row); combine into one sortable float-free key
    def key(rows):
        base = rows.astype(np.int64)
        if t is None:
            return base
        return t[rows] * np.int64(inter.num_interactions + 1) + base

    hu, hk = inter.users[heldout_rows], key(heldout_rows)
    # for each held-out row: the last context row of the same user with key < hk
    order_h = np.lexsort((hk, hu))
    hu_s, hk_s, hrows = hu[order_h], hk[order_h], heldout_rows[order_h]
    del hu, hk, order_h
    # context rows of user u: ctx[cptr[u]:cptr[u + 1]]; searched one range of users at a time
    # (about chunks.ROWS context rows each), the held-out rows of the same users with it
    cptr = np.zeros(inter.num_users + 1, dtype=np.int64)
    np.cumsum(chunks.bincount(inter.users, inter.num_users, ctx), out=cptr[1:])
    cuts = np.unique(np.concatenate([[0], inter.users[ctx[::chunks.ROWS]], [inter.num_users]]))
    hcut = np.searchsorted(hu_s, cuts, side="left")
    out = np.empty((hrows.size, 2), dtype=np.int64)
    k = 0
    for j in range(cuts.size - 1):
        ha, hb = hcut[j], hcut[j + 1]
        if ha == hb:
            continue
        c = ctx[cptr[cuts[j]]:cptr[cuts[j + 1]]]
        cu = inter.users[c]
        # lexicographic (user, key) search via structured arrays
        c_struct = np.empty(c.size, dtype=[("u", np.int64), ("k", np.int64)])
        c_struct["u"], c_struct["k"] = cu, key(c)
        h_struct = np.empty(hb - ha, dtype=[("u", np.int64), ("k", np.int64)])
        h_struct["u"], h_struct["k"] = hu_s[ha:hb], hk_s[ha:hb]
        pos = np.searchsorted(c_struct, h_struct, side="left") - 1
        ok = (pos >= 0) & (cu[np.clip(pos, 0, None)] == hu_s[ha:hb]) if c.size else np.zeros(hb - ha, dtype=bool)
        q = inter.items[c[pos[ok]]]
        i = inter.items[hrows[ha:hb][ok]]
        keep = q != i
        m = int(keep.sum())
        out[k:k + m, 0], out[k:k + m, 1] = q[keep], i[keep]
        k += m
    return out[:k]


def random_heldout_pairs(inter: Interactions, context_rows: np.ndarray, heldout_rows: np.ndarray,
                         seed: int = 0, salt: int = 0) -> np.ndarray:
    """``int64 [H, 2]`` pairs (q, i): i held out, q = a seeded random context item of the same user.

    For splits without a time order (``random``; ``fixed`` without timestamps). Held-out rows of
    users without any context row are skipped. ``salt`` separates the validation and test draws.
    """
    heldout_rows = np.asarray(heldout_rows, dtype=np.int64)
    if heldout_rows.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    ctx = np.asarray(context_rows, dtype=np.int64)
    if not chunks.in_group_order(inter.users, None, ctx):
        ctx = ctx[np.lexsort((ctx, inter.users[ctx]))]
    ptr = np.zeros(inter.num_users + 1, dtype=np.int64)
    np.cumsum(chunks.bincount(inter.users, inter.num_users, ctx), out=ptr[1:])
    hrows = np.sort(heldout_rows)
    hu = inter.users[hrows]
    count = ptr[hu + 1] - ptr[hu]
    ok = count > 0
    r = _rng(seed, _SALT_QUERY + int(salt)).random(hrows.size)
    pick = np.minimum((r * count).astype(np.int64), np.maximum(count - 1, 0))
    q = inter.items[ctx[(ptr[hu] + pick)[ok]]]
    pairs = np.stack([q, inter.items[hrows[ok]]], axis=1)
    return pairs[pairs[:, 0] != pairs[:, 1]]


def split_and_pairs(inter: Interactions, split: str = "auto", seed: int = 0, store=None,
                    exclude: np.ndarray | None = None, train_extra: np.ndarray | None = None):
    """``(Split, train_pairs, val_pairs, test_pairs)`` of ``inter`` (see module docstring).

    ``exclude`` (row indices) leaves rows out of every part and every pair's context;
    ``train_extra`` (a subset of ``exclude``) puts rows back into the training part only (the
    cold-item protocol, :mod:`datamodules.cold`).

    ``store(name, array) -> array``, when given, receives each result as soon as it exists (the
    dataset cache writes it to disk and hands back a memory map, so the build does not hold them
    all in RAM); names are the cache's (``split_train``, ``train_pairs``...).
    """
    keep = store or (lambda name, arr: arr)
    kind = resolve_split(split, inter)
    sp = make_split(inter, kind, seed)
    if exclude is not None and exclude.size:
        sp = _without(sp, exclude, train_extra, inter.num_interactions)
    sp = Split(keep("split_train", sp.train), keep("split_val", sp.val), keep("split_test", sp.test))
    chunks.release(inter.users, inter.timestamps)
    # (chunks.release: the passes' pages of memory-mapped inputs stop counting in this process)
    train_pairs = keep("train_pairs", consecutive_pairs(inter, sp.train))
    chunks.release(inter.users, inter.items, inter.timestamps, sp.train)
    # train + val = every row but the test ones (the three parts partition the log): ascending, so
    # an already grouped log needs no sort of it
    test_ctx = np.ones(inter.num_interactions, dtype=bool)
    test_ctx[sp.test] = False
    if exclude is not None:
        test_ctx[exclude] = False
        if train_extra is not None:
            test_ctx[train_extra] = True
    test_ctx = np.flatnonzero(test_ctx)
    if is_ordered(kind, inter):
        val_pairs = keep("val_pairs", heldout_pairs(inter, sp.train, sp.val))
        chunks.release(inter.users, inter.items, inter.timestamps, sp.train)
        test_pairs = keep("test_pairs", heldout_pairs(inter, test_ctx, sp.test))
    else:
        val_pairs = keep("val_pairs", random_heldout_pairs(inter, sp.train, sp.val, seed, salt=1))
        chunks.release(inter.users, inter.items, sp.train)
        test_pairs = keep("test_pairs", random_heldout_pairs(inter, test_ctx, sp.test, seed, salt=2))
    chunks.release(inter.users, inter.items, inter.timestamps)
    return sp, train_pairs, val_pairs, test_pairs
