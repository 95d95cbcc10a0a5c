"""An interaction log with dense indices: what every reader returns.

Readers parse a file format into raw ids; :meth:`Interactions.from_raw` validates them, maps them
to dense indices ``0..U-1`` / ``0..I-1`` (ascending raw-id order, so the map is reproducible),
applies the duplicate policy and keeps the item metadata aligned with the dense item index.

Duplicate policy: a (user, item) pair that occurs more than once is kept once, at its earliest
occurrence (by timestamp, then file order); the number of dropped rows is recorded in
``num_duplicates_dropped`` and reported by ``pinsage data``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np


class DataError(ValueError):
    """Bad input data: the message names the file (and line) and what would be valid."""


@dataclass
class ItemTable:
    """Item metadata keyed by raw item id (one row per catalogue item).

    Attributes:
        ids: raw item ids ``[N]``.
        titles: ``[N]`` strings ("" when unknown) or ``None``.
        category_names: names of the multi-hot columns (e.g. genres).
        categories: ``uint8 [N, C]`` multi-hot matrix or ``None``.
        years: ``int64 [N]`` release year (-1 unknown) or ``None``.
    """

    ids: np.ndarray
    titles: Optional[np.ndarray] = None
    category_names: List[str] = field(default_factory=list)
    categories: Optional[np.ndarray] = None
    years: Optional[np.ndarray] = None

    def take(self, rows: np.ndarray) -> "ItemTable":
        return ItemTable(
            ids=self.ids[rows],
            titles=None if self.titles is None else self.titles[rows],
            category_names=list(self.category_names),
            categories=None if self.categories is None else self.categories[rows],
            years=None if self.years is None else self.years[rows],
        )


@dataclass
class Interactions:
    """A users x items log with dense indices.

    Attributes:
        users, items: ``int64 [E]`` dense indices, in file order (duplicates removed).
        timestamps: ``int64 [E]`` or ``None`` (then file order is the time order).
        weights: ``float32 [E]`` (e.g. ratings) or ``None``.
        user_ids, item_ids: raw ids of dense index ``u`` / ``i``.
        is_test: ``bool [E]`` for datasets with a fixed train/test split, else ``None``.
        items: metadata aligned with the dense item index, or ``None``.
        test_negatives: ``int64 [T, K]`` dense item indices of sampled negatives for the test
            rows (NCF protocol), row ``t`` belonging to the ``t``-th row with ``is_test`` set (in
            the order of ``np.flatnonzero(is_test)``), or ``None``. Set by the reader after
            :meth:`from_raw`.
    """

    users: np.ndarray
    items: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    timestamps: Optional[np.ndarray] = None
    weights: Optional[np.ndarray] = None
    is_test: Optional[np.ndarray] = None
    item_table: Optional[ItemTable] = None
    num_duplicates_dropped: int = 0
    num_catalogue_items_without_interactions: int = 0
    test_negatives: Optional[np.ndarray] = None

    @property
    def num_users(self) -> int:
        return int(self.user_ids.shape[0])

    @property
    def num_items(self) -> int:
        return int(self.item_ids.shape[0])

    @property
    def num_interactions(self) -> int:
        return int(self.users.shape[0])

    @classmethod
    def from_raw(
        cls,
        users,
        items,
        timestamps=None,
        weights=None,
        is_test=None,
        item_table: Optional[ItemTable] = None,
        source: str = "<interactions>",
    ) -> "Interactions":
        """Validate raw ids, densify them, drop duplicate pairs and align the item table.

        Raises:
            DataError: empty log, mismatched lengths, or timestamps that are not numeric.
        """
        users = np.asarray(users)
        items = np.asarray(items)
        n = users.shape[0]
        if n == 0:
            raise DataError(f"{source}: the interaction log is empty (no user-item rows)")
        for name, arr in (("items", items), ("timestamps", timestamps), ("weights", weights), ("is_test", is_test)):
            if arr is not None and np.asarray(arr).shape[0] != n:
                raise DataError(f"{source}: {name} has {np.asarray(arr).shape[0]} rows, users has {n}")
        if timestamps is not None:
            timestamps = np.asarray(timestamps)
            if not np.issubdtype(timestamps.dtype, np.number):
                raise DataError(
                    f"{source}: the timestamp column is not numeric (dtype {timestamps.dtype}); "
                    "give integer or float seconds, or leave the timestamp column out"
                )
            if np.issubdtype(timestamps.dtype, np.floating) and not np.isfinite(timestamps).all():
                bad = int(np.flatnonzero(~np.isfinite(timestamps))[0])
                raise DataError(f"{source}: row {bad + 1}: timestamp is missing or not finite")
            timestamps = timestamps.astype(np.int64)
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float32)
            if not np.isfinite(weights).all():
                bad = int(np.flatnonzero(~np.isfinite(weights))[0])
                raise DataError(f"{source}: row {bad + 1}: weight is missing or not finite")

        user_ids, u = _densify(users)
        item_ids, i = _densify(items)

        # duplicate policy: keep the earliest occurrence (timestamp, then file order)
        order = np.arange(n) if timestamps is None else np.lexsort((np.arange(n), timestamps))
        key = u[order] * np.int64(len(item_ids)) + i[order]
        _, first = np.unique(key, return_index=True)
        keep = np.sort(order[first])
        dropped = n - keep.shape[0]
        if dropped:
            u, i = u[keep], i[keep]
            timestamps = None if timestamps is None else timestamps[keep]
            weights = None if weights is None else weights[keep]
            is_test = None if is_test is None else np.asarray(is_test)[keep]

        table = None
        without = 0
        if item_table is not None:
            table, without = _align_table(item_table, item_ids, source)
        return cls(
            users=u,
            items=i,
            user_ids=user_ids,
            item_ids=item_ids,
            timestamps=timestamps,
            weights=weights,
            is_test=None if is_test is None else np.asarray(is_test, dtype=bool),
            item_table=table,
            num_duplicates_dropped=int(dropped),
            num_catalogue_items_without_interactions=int(without),
        )


def _densify(ids: np.ndarray):
    """``(sorted unique raw ids, dense index per row)``; O(n) for compact non-negative ints."""
    if np.issubdtype(ids.dtype, np.integer) and ids.size and ids.min() >= 0 and ids.max() < 4 * ids.size + 1024:
        present = np.bincount(ids, minlength=int(ids.max()) + 1) > 0
        dense = np.cumsum(present) - 1
        return np.flatnonzero(present).astype(ids.dtype), dense[ids].astype(np.int64)
    uniq, inv = np.unique(ids, return_inverse=True)
    return uniq, inv.astype(np.int64).reshape(-1)


def _align_table(table: ItemTable, item_ids: np.ndarray, source: str):
    """Rows of ``table`` in dense-item order; items missing from the table get empty metadata."""
    tids = np.asarray(table.ids)
    if np.unique(tids).shape[0] != tids.shape[0]:
        vals, counts = np.unique(tids, return_counts=True)
        raise DataError(f"{source}: item table lists item id {vals[counts > 1][0]!r} more than once")
    try:
        sorter = np.argsort(tids)
        pos = np.searchsorted(tids, item_ids, sorter=sorter)
    except TypeError as e:
        raise DataError(f"{source}: item table ids ({tids.dtype}) and interaction item ids ({item_ids.dtype}) differ in type") from e
    pos = np.clip(pos, 0, len(tids) - 1)
    rows = sorter[pos]
    found = tids[rows] == item_ids
    n = len(item_ids)
    titles = None
    if table.titles is not None:
        titles = np.full(n, "", dtype=object)
        titles[found] = table.titles[rows[found]]
    cats = None
    if table.categories is not None:
        cats = np.zeros((n, table.categories.shape[1]), dtype=np.uint8)
        cats[found] = table.categories[rows[found]]
    years = None
    if table.years is not None:
        years = np.full(n, -1, dtype=np.int64)
        years[found] = table.years[rows[found]]
    without = len(tids) - int(found.sum())
    return ItemTable(ids=item_ids, titles=titles, category_names=list(table.category_names), categories=cats, years=years), without
