"""PinSage training pairs (q, i), fixed or sampled fresh every epoch.

``pairs`` (a data argument) says what a positive pair is:

* ``consecutive``: i engaged right after q by the same user (timestamp, then file order), inside
  the training part (``datamodules.splits.consecutive_pairs``); the same pairs every epoch. Only
  meaningful when the log has timestamps (or its file order is its time order).
* ``cooccurrence``: two distinct items of the same user. Every epoch, every training
  interaction ``(u, q)`` of a user with at least two (positive) training items is the query of
  one pair, whose positive i is a uniformly random *other* training item of ``u``, drawn afresh
  each epoch.
* ``walk``: as ``cooccurrence``, then the walk goes on from that item like the importance
  neighbourhoods' walks (item -> user -> item hops, ending with probability ``restart_prob``
  after each hop, at most ``walk_length`` hops in all, transitions proportional to the
  interaction weight when ``weighted``); i is the last item the walk visited other than q.
* ``auto``: ``consecutive`` when the log has timestamps, else ``cooccurrence``.

``min_weight`` (``None``: off): only interactions with weight ``>= min_weight`` (e.g. ratings >= 4)
are positives: both q and i of every pair are such interactions of the user, and the ``walk``
pairs walk on those interactions only. The training graph the neighbourhoods are sampled from
keeps every training interaction. Validation/test pairs are not filtered.

Sampled pairs are a pure function of ``(seed, epoch, pair index)`` (a counter-based hash, no
state), so a batch is the same whatever the number of workers or ranks, and
``EpochBatchSampler``'s per-epoch sharding of the pair *indices* ``0 .. num_pairs-1`` stays
disjoint across DDP ranks. ``num_pairs`` is the same every epoch.

Every pair source has ``kind``, ``num_pairs`` and ``take(indices, epoch) -> int64 [n, 2]``.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from numba import njit

from .graph import InteractionGraph
from .walks import _GOLDEN, _LO32, _below, _mix, _pick_weighted, _stream_key, walk_weights

PAIRS = ("auto", "consecutive", "cooccurrence", "walk")
_SALT = {"cooccurrence": 3, "walk": 4}


def check_pairs(pairs: str) -> str:
    if pairs not in PAIRS:
        raise ValueError(f"pairs={pairs!r} is not valid; choose one of {list(PAIRS)}")
    return pairs


def check_min_weight(min_weight) -> Optional[float]:
    if min_weight is None:
        return None
    try:
        v = float(min_weight)
    except (TypeError, ValueError):
        v = float("nan")
    if isinstance(min_weight, bool) or not np.isfinite(v):
        raise ValueError(f"min_weight must be a number or null (no filter), got {min_weight!r}")
    return v


def resolve_pairs(pairs: str, has_timestamps: bool) -> str:
    """The pair kind ``pairs`` means (``auto``: consecutive with timestamps, else cooccurrence)."""
    check_pairs(pairs)
    if pairs != "auto":
        return pairs
    return "consecutive" if has_timestamps else "cooccurrence"


def positive_graph(graph: InteractionGraph, min_weight: Optional[float]) -> InteractionGraph:
    """``graph`` restricted to the edges with weight ``>= min_weight`` (``None``: ``graph`` itself)."""
    if min_weight is None:
        return graph
    if graph.weights is None:
        raise ValueError(f"min_weight={min_weight} needs interaction weights (ratings, play counts), "
                         "but this dataset has none; leave min_weight unset (null)")
    keep = graph.weights >= min_weight
    users = graph.edge_users()[keep]
    return InteractionGraph.from_edges(
        users, graph.user_items[keep].astype(np.int64), graph.num_users, graph.num_items,
        timestamps=None if graph.timestamps is None else graph.timestamps[keep], weights=graph.weights[keep])


def graph_consecutive_pairs(graph: InteractionGraph) -> np.ndarray:
    """Consecutive pairs of a graph's user-major layout (within a user: timestamp, then file order),
    i.e. ``consecutive_pairs`` of the rows the graph was built from."""
    u = graph.edge_users()
    it = graph.user_items.astype(np.int64)
    same = u[1:] == u[:-1]
    pairs = np.stack([it[:-1][same], it[1:][same]], axis=1)
    return pairs[pairs[:, 0] != pairs[:, 1]]


class StaticPairs:
    """The same pairs every epoch (``consecutive``, or pairs given as an array)."""

    kind = "consecutive"

    def __init__(self, pairs: np.ndarray):
        self.pairs = np.ascontiguousarray(pairs, dtype=np.int64)
        if self.pairs.ndim != 2 or self.pairs.shape[1] != 2:
            raise ValueError(f"pairs must have shape [P, 2], got {self.pairs.shape}")

    @property
    def num_pairs(self) -> int:
        return int(self.pairs.shape[0])

    def take(self, indices, epoch: int = 0) -> np.ndarray:
        return self.pairs[np.asarray(indices, dtype=np.int64)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_pairs={self.num_pairs})"


@njit(nogil=True, cache=True)
def _sample_pairs(idx, tgt_pos, tgt_user, user_ptr, user_items, item_ptr, item_users, item_tab, user_tab, weighted,
                  hops, thr, key):
    """Pairs of the target edges ``idx`` (see the module docstring); serial (fork-safe)."""
    n = idx.shape[0]
    out = np.empty((n, 2), dtype=np.int64)
    for b in range(n):
        j = idx[b]
        p = tgt_pos[j]
        u = tgt_user[j]
        q = np.int64(user_items[p])
        st = _mix(key ^ (np.uint64(j) * _GOLDEN))
        lo = user_ptr[u]
        st += _GOLDEN
        r = _mix(st)
        k = lo + _below(r, user_ptr[u + 1] - lo - 1)  # one of the user's other slots
        if k >= p:
            k += 1
        cur = np.int64(user_items[k])
        last = cur
        for h in range(1, hops):
            if (r & _LO32) < thr:
                break
            st += _GOLDEN
            r = _mix(st)
            us = item_ptr[cur]
            if weighted:
                e = _pick_weighted(item_tab, us, item_ptr[cur + 1], r)
            else:
                e = us + _below(r, item_ptr[cur + 1] - us)
            v = item_users[e]
            st += _GOLDEN
            r = _mix(st)
            is_ = user_ptr[v]
            if weighted:
                e = _pick_weighted(user_tab, is_, user_ptr[v + 1], r)
            else:
                e = is_ + _below(r, user_ptr[v + 1] - is_)
            cur = np.int64(user_items[e])
            if cur != q:
                last = cur
        out[b, 0] = q
        out[b, 1] = last
    return out


class SampledPairs:
    """``cooccurrence`` / ``walk`` pairs, drawn afresh every epoch (see the module docstring).

    Args:
        graph: the graph of the positive training interactions (:func:`positive_graph`).
        kind: ``cooccurrence`` or ``walk``.
        walk_length, restart_prob: the ``walk`` pairs' walk (hops in all, stop probability).
        seed: with the epoch and the pair index, determines every pair.
        weighted: ``walk`` transitions proportional to the graph's weights.
    """

    def __init__(self, graph: InteractionGraph, kind: str = "cooccurrence", walk_length: int = 2,
                 restart_prob: float = 0.5, seed: int = 0, weighted: bool = False):
        if kind not in _SALT:
            raise ValueError(f"pairs={kind!r} is not a sampled kind; choose one of {list(_SALT)}")
        self.kind = kind
        self.seed = int(seed)
        self.hops = 1 if kind == "cooccurrence" else int(walk_length)
        self.restart_prob = float(restart_prob)
        self.user_ptr = np.ascontiguousarray(graph.user_ptr, dtype=np.int64)
        self.user_items = np.ascontiguousarray(graph.user_items)
        self.item_ptr = np.ascontiguousarray(graph.item_ptr, dtype=np.int64)
        self.item_users = np.ascontiguousarray(graph.item_users)
        ww = walk_weights(graph) if (weighted and kind == "walk") else None
        self.weighted = ww is not None
        self.item_tab, self.user_tab = (ww if ww is not None else (np.zeros(1, np.uint64), np.zeros(1, np.uint64)))
        deg = np.diff(self.user_ptr)
        users = np.repeat(np.arange(graph.num_users, dtype=np.int64), deg)
        eligible = deg[users] >= 2
        self.tgt_pos = np.ascontiguousarray(np.flatnonzero(eligible), dtype=np.int64)
        self.tgt_user = np.ascontiguousarray(users[eligible], dtype=np.int64)

    @property
    def num_pairs(self) -> int:
        return int(self.tgt_pos.shape[0])

    def take(self, indices, epoch: int = 0) -> np.ndarray:
        idx = np.ascontiguousarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_pairs):
            raise IndexError(f"pair indices must be in [0, {self.num_pairs})")
        thr = min(int(self.restart_prob * 2**32), 2**32 - 1)
        return _sample_pairs(idx, self.tgt_pos, self.tgt_user, self.user_ptr, self.user_items, self.item_ptr,
                             self.item_users, self.item_tab, self.user_tab, self.weighted, np.int64(self.hops),
                             np.uint64(thr), _stream_key(self.seed, int(epoch), _SALT[self.kind]))

    def epoch_pairs(self, epoch: int = 0) -> np.ndarray:
        """All pairs of ``epoch`` (index order)."""
        return self.take(np.arange(self.num_pairs), epoch)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(kind={self.kind!r}, num_pairs={self.num_pairs}, hops={self.hops}, "
                f"weighted={self.weighted})")


def make_pair_source(dataset, pairs: str = "auto", min_weight: Optional[float] = None, walk_length: int = 2,
                     restart_prob: float = 0.5, seed: int = 0, weighted: bool = True):
    """The training pair source of a :class:`~datamodules.datasets.RecDataset`.

    ``consecutive`` without ``min_weight`` reuses the dataset's (cached) ``train_pairs``.
    Raises ``ValueError`` (one line naming the argument) for a bad ``pairs``/``min_weight`` or
    when no training pair is left.
    """
    kind = resolve_pairs(pairs, dataset.interactions.timestamps is not None)
    min_weight = check_min_weight(min_weight)
    g = positive_graph(dataset.train_graph, min_weight)
    if kind == "consecutive":
        src = StaticPairs(dataset.train_pairs if min_weight is None else graph_consecutive_pairs(g))
    else:
        src = SampledPairs(g, kind, walk_length, restart_prob, seed, weighted)
    if src.num_pairs == 0:
        why = f" with min_weight={min_weight}" if min_weight is not None else ""
        raise ValueError(f"pairs={kind!r}{why} leaves no training pairs (no user has two positive training "
                         "interactions); lower min_weight or choose another pairs kind")
    return src
