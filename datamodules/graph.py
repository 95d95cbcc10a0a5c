"""The bipartite users (or boards) x items interaction graph that PinSage walks on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numba
import numpy as np

from . import chunks

def _csr(rows: np.ndarray, num_rows: int, order_key: Optional[np.ndarray] = None, sel: Optional[np.ndarray] = None):
    """Sort the edges ``sel`` (all when None) by ``(rows, order_key)`` (stable); ``(ptr, src)``.

    ``src[p]`` is the input position of CSR edge ``p``; ``None`` for the identity (all edges,
    already in order: no sort and no ``arange`` of the edge count).
    """
    if chunks.in_group_order(rows, order_key, sel):
        src = sel
    else:
        r = rows if sel is None else rows[sel]
        if order_key is None:
            perm = np.argsort(r, kind="stable")
        else:
            perm = np.lexsort((order_key if sel is None else order_key[sel], r))
        src = perm if sel is None else sel[perm]
    ptr = np.zeros(num_rows + 1, dtype=np.int64)
    np.cumsum(chunks.bincount(rows, num_rows, sel), out=ptr[1:])
    return ptr, src


def _min_max(values: np.ndarray, sel: Optional[np.ndarray]):
    lo, hi = None, None
    for a, b in chunks.spans(values.shape[0] if sel is None else sel.shape[0]):
        v = values[a:b] if sel is None else values[sel[a:b]]
        lo = v.min() if lo is None else min(lo, v.min())
        hi = v.max() if hi is None else max(hi, v.max())
    return lo, hi


def _gather(values: np.ndarray, src: Optional[np.ndarray], dtype) -> np.ndarray:
    """``values[src]`` as a contiguous ``dtype`` array (``src=None``: all of it), chunk by chunk."""
    n = values.shape[0] if src is None else src.shape[0]
    out = np.empty(n, dtype=dtype)
    for a, b in chunks.spans(n):
        out[a:b] = values[a:b] if src is None else values[src[a:b]]
    return out


@numba.njit(cache=True)
def _transpose(user_ptr, user_items, item_ptr, item_users, item_to_user_edge):
    """Counting sort of the user-major edges by item: edge ``e`` (users ascending in ``e``) goes to
    the next free slot of its item, so each item's users come out ascending (ties: edge order)."""
    cursor = item_ptr[:-1].copy()
    for u in range(user_ptr.shape[0] - 1):
        for e in range(user_ptr[u], user_ptr[u + 1]):
            i = user_items[e]
            p = cursor[i]
            item_users[p] = u
            item_to_user_edge[p] = e
            cursor[i] = p + 1


@dataclass
class InteractionGraph:
    """Users x items engagement graph, CSR in both directions.

    Edge ``e`` of the user-major layout is ``(u, user_items[e])`` for
    ``user_ptr[u] <= e < user_ptr[u + 1]``; within a user, edges are ordered by timestamp (file
    order where there is none). ``timestamps`` and ``weights`` (optional) are aligned with that
    layout. ``item_ptr``/``item_users`` is the item-major transpose (users of each item, ascending).
    ``item_to_user_edge[j]`` is the user-major position of item-major edge ``j``.

    All index arrays are contiguous; neighbour ids are ``int32`` (half the memory traffic of a
    random walk), pointers ``int64``.
    """

    num_users: int
    num_items: int
    user_ptr: np.ndarray
    user_items: np.ndarray
    item_ptr: np.ndarray
    item_users: np.ndarray
    item_to_user_edge: np.ndarray
    timestamps: Optional[np.ndarray] = None
    weights: Optional[np.ndarray] = None

    @classmethod
    def from_edges(
        cls,
        users: np.ndarray,
        items: np.ndarray,
        num_users: int,
        num_items: int,
        timestamps: Optional[np.ndarray] = None,
        weights: Optional[np.ndarray] = None,
        rows: Optional[np.ndarray] = None,
    ) -> "InteractionGraph":
        """Build both CSR layouts from edge arrays (vectorised, no per-edge Python loop).

        Within each user, edges keep the order ``(timestamp, input position)``. ``rows``: the
        edges are those rows of the arrays only (as if ``users[rows]``, ``items[rows]``... were
        passed), read one chunk at a time (the training rows of a log, without copying them).
        """
        users = np.asarray(users)
        items = np.asarray(items)
        if users.shape != items.shape or users.ndim != 1:
            raise ValueError(
                f"users and items must be 1-d arrays of equal length, got {users.shape} and {items.shape}"
            )
        if not (np.issubdtype(users.dtype, np.integer) and np.issubdtype(items.dtype, np.integer)):
            users, items = users.astype(np.int64), items.astype(np.int64)
        sel = None if rows is None else np.asarray(rows, dtype=np.int64)
        n = users.shape[0] if sel is None else sel.shape[0]
        if n:
            lo, hi = _min_max(users, sel)
            if lo < 0 or hi >= num_users:
                raise ValueError(f"user index out of range [0, {num_users}): min {lo}, max {hi}")
            lo, hi = _min_max(items, sel)
            if lo < 0 or hi >= num_items:
                raise ValueError(f"item index out of range [0, {num_items}): min {lo}, max {hi}")
        if timestamps is not None:
            timestamps = np.asarray(timestamps)
        user_ptr, src = _csr(users, num_users, timestamps, sel)
        chunks.release(users)
        user_items = _gather(items, src, np.int32)
        ts = None if timestamps is None else _gather(timestamps, src, np.int64)
        w = None if weights is None else _gather(np.asarray(weights), src, np.float32)
        chunks.release(items, timestamps, weights, src)
        del src
        # item-major transpose of the user-major layout: a counting sort by item (the order of
        # np.lexsort((users, items)) over the user-major edges)
        item_ptr = np.zeros(num_items + 1, dtype=np.int64)
        np.cumsum(chunks.bincount(user_items, num_items), out=item_ptr[1:])
        item_users = np.empty(user_items.shape[0], dtype=np.int32)
        item_to_user_edge = np.empty(user_items.shape[0], dtype=np.int64)
        _transpose(user_ptr, user_items, item_ptr, item_users, item_to_user_edge)
        return cls(
            num_users=int(num_users),
            num_items=int(num_items),
            user_ptr=user_ptr,
            user_items=user_items,
            item_ptr=item_ptr,
            item_users=item_users,
            item_to_user_edge=item_to_user_edge,
            timestamps=ts,
            weights=w,
        )

    @property
    def num_edges(self) -> int:
        return int(self.user_items.shape[0])

    def user_degree(self) -> np.ndarray:
        return np.diff(self.user_ptr)

    def item_degree(self) -> np.ndarray:
        return np.diff(self.item_ptr)

    def edge_users(self) -> np.ndarray:
        """User of every user-major edge, ``int64 [E]``."""
        return np.repeat(np.arange(self.num_users, dtype=np.int64), self.user_degree())

    def items_of(self, user: int) -> np.ndarray:
        return self.user_items[self.user_ptr[user] : self.user_ptr[user + 1]]

    def users_of(self, item: int) -> np.ndarray:
        return self.item_users[self.item_ptr[item] : self.item_ptr[item + 1]]

    def to_arrays(self, prefix: str = "") -> dict:
        out = {
            f"{prefix}user_ptr": self.user_ptr,
            f"{prefix}user_items": self.user_items,
            f"{prefix}item_ptr": self.item_ptr,
            f"{prefix}item_users": self.item_users,
            f"{prefix}item_to_user_edge": self.item_to_user_edge,
            f"{prefix}shape": np.array([self.num_users, self.num_items], dtype=np.int64),
        }
        if self.timestamps is not None:
            out[f"{prefix}timestamps"] = self.timestamps
        if self.weights is not None:
            out[f"{prefix}weights"] = self.weights
        return out

    @classmethod
    def from_arrays(cls, arrays, prefix: str = "") -> "InteractionGraph":
        shape = arrays[f"{prefix}shape"]
        get = lambda k: arrays[f"{prefix}{k}"] if f"{prefix}{k}" in arrays else None  # noqa: E731
        return cls(
            num_users=int(shape[0]),
            num_items=int(shape[1]),
            user_ptr=get("user_ptr"),
            user_items=get("user_items"),
            item_ptr=get("item_ptr"),
            item_users=get("item_users"),
            item_to_user_edge=get("item_to_user_edge"),
            timestamps=get("timestamps"),
            weights=get("weights"),
        )

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(num_users={self.num_users}, num_items={self.num_items}, "
            f"num_edges={self.num_edges}, timestamps={self.timestamps is not None}, "
            f"weights={self.weights is not None})"
        )
