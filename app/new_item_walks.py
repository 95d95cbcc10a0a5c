"""Importance neighbourhoods of new items, walked by the numba kernels of :mod:`datamodules.walks`
(:func:`datamodules.walks.pinsage_neighbors`: the same walks, weighted like training).

A new item ``n`` is not in the stored walk graph.  For each new item the graph is extended at its
tail only (the stored arrays are never copied or changed; they sit at the head of buffers that keep
room for the tail):

* one *clone* of every engaged user ``u``, holding ``u``'s stored items and ``n`` (a hop from ``n``
  lands on a clone, and from it on one of ``u``'s items or back on ``n``);
* a *session* user holding ``co_engaged_items`` and ``n`` (when there are any);
* the users of ``n`` are its clones and its session; items inserted earlier that it is co-engaged
  with have the session as their user (the others are not reachable).

``n`` takes the first id after the stored items, whatever was inserted before it, and inserted
co-engaged items the ids after it (mapped back to their dense ids in the answer).

Walks from ``n`` then follow the kernels' definition (``num_walks`` walks of at most ``walk_length``
hops, stop with ``restart_prob`` after a hop, visits to ``n`` not counted, top ``num_neighbors`` by
visit count, L1-normalised).  Hops from stored items follow the stored graph, so a walk does not
step from a stored item back into ``n``; a co-engaged stored item without training users is left
out (a dead end the kernels do not take).  When the artifacts store the training graph's
interaction weights (``walk_graph.npz``: ``item_weights``, ``user_weights``; predict writes them
when the DataModule walks weighted), hops are drawn by weight as at training; a clone's edge to
``n`` gets the mean weight of the user's stored edges, and the new item's own edges are equal.
The random stream of an item's walks is keyed by ``key`` (the CRC-32 of its raw id), so the
explorer re-derives the same neighbourhood later, and a batch embeds each item as it would alone.
"""

from __future__ import annotations

import threading
from typing import Optional, Tuple

import numpy as np

from datamodules.walk_settings import WalkSettings
from datamodules.walks import WalkWeights, alias_table, pinsage_neighbors


class _Tail:
    """A base array at the head of a buffer with room for a tail written per call."""

    def __init__(self, base: np.ndarray):
        self.n = base.shape[0]
        self.buf = np.empty(self.n + 1024, dtype=base.dtype)
        self.buf[:self.n] = base

    @property
    def base(self) -> np.ndarray:
        return self.buf[:self.n]

    def with_tail(self, tail: np.ndarray) -> np.ndarray:
        need = self.n + tail.shape[0]
        if need > self.buf.shape[0]:
            grown = np.empty(max(need, self.n + 2 * (self.buf.shape[0] - self.n)), dtype=self.buf.dtype)
            grown[:self.n] = self.buf[:self.n]
            self.buf = grown
        self.buf[self.n:need] = tail
        return self.buf[:need]


class NewItemWalks:
    """Walks from new items over the stored walk graph extended by their engagements."""

    def __init__(self, item_ptr, item_users, user_ptr, user_items, settings: WalkSettings,
                 item_weights: Optional[np.ndarray] = None, user_weights: Optional[np.ndarray] = None):
        self.settings = settings
        self._ip, self._iu = _Tail(np.asarray(item_ptr, dtype=np.int64)), _Tail(np.asarray(item_users))
        self._up, self._ui = _Tail(np.asarray(user_ptr, dtype=np.int64)), _Tail(np.asarray(user_items))
        self.num_items, self.num_users = self._ip.n - 1, self._up.n - 1
        self._lock = threading.Lock()  # one tail at a time (serve's explorer reads while items are added)
        self.weighted = bool(settings.weighted and user_weights is not None and item_weights is not None)
        # (a ``settings`` given per call keeps these weights: they are the stored graph's)
        if self.weighted:
            self.user_weights = np.asarray(user_weights, dtype=np.float64)
            self._it = _Tail(alias_table(self.item_ptr, np.asarray(item_weights, dtype=np.float64)))
            self._ut = _Tail(alias_table(self.user_ptr, self.user_weights))

    # the stored graph (the head of the buffers: held once)
    item_ptr = property(lambda self: self._ip.base)
    item_users = property(lambda self: self._iu.base)
    user_ptr = property(lambda self: self._up.base)
    user_items = property(lambda self: self._ui.base)

    def neighbourhood(self, users: np.ndarray, co_items: np.ndarray, key: int,
                      settings: Optional[WalkSettings] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Top-T items (dense ids) and weights of a new item engaged by the stored ``users`` and
        co-engaged with ``co_items`` (dense ids, stored or inserted); ``settings``: other walks
        than the stored ones."""
        users = np.asarray(users, dtype=np.int64)
        co = np.unique(np.asarray(co_items, dtype=np.int64))
        # a stored item without training users is a dead end the kernels do not expect (only a
        # seed may be isolated there): such co-engaged items are left out of the session
        stored = co[co < self.num_items]
        stored = stored[self.item_ptr[stored + 1] > self.item_ptr[stored]]
        inserted = co[co >= self.num_items]
        if users.size == 0 and stored.size == 0 and inserted.size == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        s = settings or self.settings
        with self._lock:
            graph, weights = self._extended(users, stored, inserted)
            _, items, w = pinsage_neighbors(*graph, np.array([self.num_items], dtype=np.int64), s.num_walks,
                                            s.walk_length, s.restart_prob, s.num_neighbors, s.seed,
                                            int(key) & 0xFFFFFFFF, parallel=False, walk_weights=weights)
        late = items > self.num_items  # inserted co-engaged items: back to their dense ids
        items[late] = inserted[items[late] - self.num_items - 1]
        return items, w

    def _extended(self, users: np.ndarray, stored: np.ndarray, inserted: np.ndarray):
        """The four CSR arrays (and alias tables) with the new item at id ``I`` (the first after the
        stored items, whatever was inserted before: its walks depend on its key only), the inserted
        co-engaged items at ``I + 1 ..``, and a padding item last."""
        I, U = self.num_items, self.num_users
        n = I
        has_session = bool(stored.size or inserted.size)
        # users at the tail: a clone of each engaged user (its items + n), then the session
        segs = [np.append(self.user_items[self.user_ptr[u]:self.user_ptr[u + 1]], n) for u in users]
        session = U + len(segs)
        if has_session:
            segs.append(np.concatenate([stored, I + 1 + np.arange(inserted.size), [n]]))
        user_tail_items = np.concatenate(segs).astype(self.user_items.dtype)
        user_tail_ptr = self.user_ptr[-1] + np.cumsum([len(x) for x in segs], dtype=np.int64)
        # items at the tail: n (its clones and session), the inserted co-engaged items (the session),
        # and a padding item no user holds (both layouts must count the same edges)
        own = np.arange(U, U + len(users) + has_session, dtype=np.int64)  # clones, then the session
        lens = np.concatenate([[own.size], np.ones(inserted.size, np.int64)])
        pad = user_tail_items.shape[0] - int(lens.sum())
        lens = np.append(lens, pad)
        item_tail_users = np.concatenate([own, np.full(inserted.size, session), np.full(pad, U)]
                                         ).astype(self.item_users.dtype)
        item_tail_ptr = self.item_ptr[-1] + np.cumsum(lens, dtype=np.int64)
        graph = (self._ip.with_tail(item_tail_ptr), self._iu.with_tail(item_tail_users),
                 self._up.with_tail(user_tail_ptr), self._ui.with_tail(user_tail_items))
        if not self.weighted:
            return graph, None
        w = []
        for u in users:  # a clone's edge to n: the mean weight of the user's stored edges
            own = self.user_weights[self.user_ptr[u]:self.user_ptr[u + 1]]
            w.append(np.append(own, own.mean() if own.size else 1.0))
        if has_session:
            w.append(np.ones(stored.size + inserted.size + 1))
        user_tab = alias_table(np.concatenate([[0], user_tail_ptr - self.user_ptr[-1]]), np.concatenate(w))
        item_tab = alias_table(np.concatenate([[0], item_tail_ptr - self.item_ptr[-1]]),
                               np.ones(item_tail_users.shape[0]))
        return graph, WalkWeights(self._it.with_tail(item_tab), self._ut.with_tail(user_tab))
