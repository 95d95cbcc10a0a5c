"""The bipartite users (or boards) x items interaction graph that PinSage walks on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


def _csr(rows: np.ndarray, cols: np.ndarray, num_rows: int, order_key: Optional[np.ndarray] = None):
    """Sort edges by ``(rows, order_key)`` (stable) and return ``(ptr, perm)``.

    ``perm`` maps CSR position -> input edge position.
    """
    if order_key is None:
        perm = np.argsort(rows, kind="stable")
    else:
        perm = np.lexsort((order_key, rows))
    counts = np.bincount(rows, minlength=num_rows)
    ptr = np.zeros(num_rows + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    return ptr, perm


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
    ) -> "InteractionGraph":
        """Build both CSR layouts from edge arrays (vectorised, no per-edge Python loop).

        Within each user, edges keep the order ``(timestamp, input position)``.
        """
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        if users.shape != items.shape or users.ndim != 1:
            raise ValueError(
                f"users and items must be 1-d arrays of equal length, got {users.shape} and {items.shape}"
            )
        if users.size and (users.min() < 0 or users.max() >= num_users):
            raise ValueError(f"user index out of range [0, {num_users}): min {users.min()}, max {users.max()}")
        if items.size and (items.min() < 0 or items.max() >= num_items):
            raise ValueError(f"item index out of range [0, {num_items}): min {items.min()}, max {items.max()}")
        user_ptr, uperm = _csr(users, items, num_users, timestamps)
        user_items = np.ascontiguousarray(items[uperm], dtype=np.int32)
        ts = None if timestamps is None else np.ascontiguousarray(np.asarray(timestamps)[uperm], dtype=np.int64)
        w = None if weights is None else np.ascontiguousarray(np.asarray(weights)[uperm], dtype=np.float32)
        # item-major transpose of the user-major layout
        users_sorted = users[uperm]
        item_ptr, iperm = _csr(user_items.astype(np.int64), users_sorted, num_items, users_sorted)
        item_users = np.ascontiguousarray(users_sorted[iperm], dtype=np.int32)
        return cls(
            num_users=int(num_users),
            num_items=int(num_items),
            user_ptr=user_ptr,
            user_items=user_items,
            item_ptr=item_ptr,
            item_users=item_users,
            item_to_user_edge=np.ascontiguousarray(iperm, dtype=np.int64),
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
