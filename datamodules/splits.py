"""Train / validation / test splits and PinSage training pairs, without leakage.

* ``temporal``: per user, interactions ordered by (timestamp, file order); the last one is the
  test interaction, the second last the validation one (users with fewer than 3 interactions
  keep everything in training).
* ``fixed``: the dataset's own train/test split (``Interactions.is_test``); validation is the last
  training interaction (file order) of every user with at least 3 training interactions, so the
  test split stays exactly the published one.

Held-out interactions are never part of the training graph (``RecDataset.train_graph``).

Pairs (q, i): "the user engaged with i right after q". Training pairs come from consecutive
interactions of the same user inside the training part only. A held-out interaction i gets the
pair (q, i) with q = the user's interaction right before it (a training item for validation
items; for test items the validation item when there is one).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .interactions import Interactions

SPLITS = ("auto", "temporal", "fixed")


@dataclass
class Split:
    """Row indices into an :class:`Interactions` log, each ``int64``."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def sizes(self) -> dict:
        return {"train": int(self.train.size), "val": int(self.val.size), "test": int(self.test.size)}


def user_time_order(inter: Interactions, rows: np.ndarray | None = None) -> np.ndarray:
    """Rows sorted by (user, timestamp, file position)."""
    rows = np.arange(inter.num_interactions) if rows is None else np.asarray(rows, dtype=np.int64)
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


def temporal_leave_last_out(inter: Interactions, min_interactions: int = 3) -> Split:
    order = user_time_order(inter)
    u = inter.users[order]
    from_end = _rank_from_end(u)
    eligible = _run_length(u) >= min_interactions
    test = order[eligible & (from_end == 1)]
    val = order[eligible & (from_end == 2)]
    train = order[~(eligible & (from_end <= 2))]
    return Split(np.sort(train), np.sort(val), np.sort(test))


def fixed_split(inter: Interactions, min_train: int = 3) -> Split:
    if inter.is_test is None:
        raise ValueError("split='fixed' needs a dataset with its own train/test split; use split='temporal'")
    test = np.flatnonzero(inter.is_test)
    train_rows = np.flatnonzero(~inter.is_test)
    order = user_time_order(inter, train_rows)
    u = inter.users[order]
    from_end = _rank_from_end(u)
    eligible = _run_length(u) >= min_train
    val = order[eligible & (from_end == 1)]
    train = order[~(eligible & (from_end == 1))]
    return Split(np.sort(train), np.sort(val), test)


def make_split(inter: Interactions, split: str = "auto") -> Split:
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not valid; choose one of {list(SPLITS)}")
    if split == "auto":
        split = "fixed" if inter.is_test is not None else "temporal"
    return temporal_leave_last_out(inter) if split == "temporal" else fixed_split(inter)


def consecutive_pairs(inter: Interactions, rows: np.ndarray) -> np.ndarray:
    """``int64 [P, 2]`` pairs (q, i) of consecutive interactions of one user within ``rows``."""
    order = user_time_order(inter, rows)
    u, it = inter.users[order], inter.items[order]
    same = u[1:] == u[:-1]
    pairs = np.stack([it[:-1][same], it[1:][same]], axis=1)
    return pairs[pairs[:, 0] != pairs[:, 1]]


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

    cu, ck = inter.users[ctx], key(ctx)
    hu, hk = inter.users[heldout_rows], key(heldout_rows)
    # for each held-out row: the last context row of the same user with key < hk
    order_h = np.lexsort((hk, hu))
    hu_s, hk_s, hrows = hu[order_h], hk[order_h], heldout_rows[order_h]
    # lexicographic (user, key) search via structured arrays
    c_struct = np.empty(ctx.size, dtype=[("u", np.int64), ("k", np.int64)])
    c_struct["u"], c_struct["k"] = cu, ck
    h_struct = np.empty(hrows.size, dtype=[("u", np.int64), ("k", np.int64)])
    h_struct["u"], h_struct["k"] = hu_s, hk_s
    pos = np.searchsorted(c_struct, h_struct, side="left") - 1
    ok = (pos >= 0) & (cu[np.clip(pos, 0, None)] == hu_s)
    q = inter.items[ctx[pos[ok]]]
    i = inter.items[hrows[ok]]
    pairs = np.stack([q, i], axis=1)
    return pairs[pairs[:, 0] != pairs[:, 1]]
