"""Synthetic interaction logs with planted item communities, for tests and benchmarks.

Generative story (all vectorised, deterministic by ``seed``):

* items belong to ``num_communities`` communities (round-robin, then shuffled); item popularity
  inside the catalogue follows a Zipf law (exponent ``item_exponent``), so degrees are power-law;
* users have a home community and a power-law activity (exponent ``user_exponent``);
* each interaction picks a user by activity, then with probability ``p_in`` an item of the user's
  home community (else any item), by popularity; timestamps increase along each user's history;
* every item and every user gets at least one interaction, so the catalogue size is exact;
* item features = community centroid + Gaussian noise (``feature_noise``), so content is
  informative but not a perfect label; the community of each item is returned for evaluation.

A good model recovers the communities: co-engaged items share a community with probability
about ``p_in**2``.

Two generators tell the story (``method``):

* ``rounds`` (the default; the recorded results were measured on it): draw every interaction at
  once, drop repeated pairs with a global ``unique``/``setdiff``, redraw, up to 8 rounds. Fine to
  ~10M interactions (50 s, 1.5 GB), then the global sorts dominate.
* ``per-user`` (for 10^8 interactions): every user's degree is drawn first (1 + a multinomial
  share of the rest by activity, capped near half a community), then each user's distinct
  items are drawn in a parallel numba kernel, chunk by chunk of users (a sort + dedupe + redraw
  inside one user, no global sort); items nobody drew take over an edge of a user of their
  community from an item engaged more than once. The log comes out grouped by user (file order =
  time order inside a user), features are written in float32 chunks. Deterministic by ``seed``
  whatever the number of threads.
"""

from __future__ import annotations

from typing import Tuple

import numba
import numpy as np

from .checks import check_int
from .interactions import Interactions, ItemTable


def _zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
    return rng.permutation(w)


def _sample_grouped(group_of: np.ndarray, weights: np.ndarray, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each entry of ``groups``, sample a member of that group proportionally to ``weights``."""
    order = np.argsort(group_of, kind="stable")
    g_sorted = group_of[order]
    w_sorted = weights[order]
    starts = np.searchsorted(g_sorted, np.arange(g_sorted.max() + 1), side="left")
    ends = np.searchsorted(g_sorted, np.arange(g_sorted.max() + 1), side="right")
    cum = np.cumsum(w_sorted)
    base = np.where(starts > 0, cum[np.maximum(starts - 1, 0)], 0.0)
    total = cum[ends - 1] - base
    r = base[groups] + rng.random(groups.shape[0]) * total[groups]
    idx = np.searchsorted(cum, r, side="right")
    idx = np.minimum(idx, ends[groups] - 1)
    return order[idx]


METHODS = ("rounds", "per-user")
_USER_CHUNK = 4096  # users per seeded chunk of the per-user kernel


@numba.njit(cache=True, nogil=True)
def _draw_one(u, user_comm, comm_ptr, comm_items, comm_cum, p_in, num_comm):
    c = user_comm[u] if np.random.random() < p_in else np.random.randint(0, num_comm)
    lo, hi = comm_ptr[c], comm_ptr[c + 1]
    base = comm_cum[lo - 1] if lo > 0 else 0.0
    r = base + np.random.random() * (comm_cum[hi - 1] - base)
    k = np.searchsorted(comm_cum[lo:hi], r, side="right")
    if k >= hi - lo:
        k = hi - lo - 1
    return comm_items[lo + k]


@numba.njit(parallel=True, cache=True)
def _per_user_items(deg, ptr, user_comm, comm_ptr, comm_items, comm_cum, p_in, num_comm, seed, out):
    """Fill ``out[ptr[u]:ptr[u]+deg[u]]`` with distinct items of user ``u`` (``-1`` where 8 rounds
    of redraws found no more); returns the number found per user."""
    num_users = deg.shape[0]
    found = np.zeros(num_users, dtype=np.int64)
    num_chunks = (num_users + _USER_CHUNK - 1) // _USER_CHUNK
    for ch in numba.prange(num_chunks):
        np.random.seed(seed * 1000003 + ch)  # per chunk: independent of the thread that runs it
        for u in range(ch * _USER_CHUNK, min(num_users, (ch + 1) * _USER_CHUNK)):
            d = deg[u]
            s = ptr[u]
            buf = out[s:s + d]
            filled = 0
            for _ in range(8):
                for j in range(filled, d):
                    buf[j] = _draw_one(u, user_comm, comm_ptr, comm_items, comm_cum, p_in, num_comm)
                buf.sort()
                filled = 1
                for j in range(1, d):
                    if buf[j] != buf[filled - 1]:
                        buf[filled] = buf[j]
                        filled += 1
                if filled == d:
                    break
            for j in range(filled, d):
                buf[j] = -1
            for j in range(filled - 1, 0, -1):  # the user's history in random order
                k = np.random.randint(0, j + 1)
                t = buf[j]
                buf[j] = buf[k]
                buf[k] = t
            found[u] = filled
    return found


@numba.njit(cache=True)
def _cover_items(items, edge_user, user_comm, item_comm, num_items, seed):
    """Give every item nobody drew one edge, taken over from an item engaged more than once
    (preferably an edge of a user of the item's community). In place; returns how many moved."""
    np.random.seed(seed)
    deg = np.zeros(num_items, dtype=np.int64)
    for e in range(items.shape[0]):
        deg[items[e]] += 1
    n_edges = items.shape[0]
    moved = 0
    for i in range(num_items):
        if deg[i] > 0:
            continue
        e = -1
        for t in range(2000):
            cand = np.random.randint(0, n_edges)
            if deg[items[cand]] > 1 and (t >= 1000 or user_comm[edge_user[cand]] == item_comm[i]):
                e = cand
                break
        if e < 0:  # linear scan (only on tiny, saturated graphs)
            for cand in range(n_edges):
                if deg[items[cand]] > 1:
                    e = cand
                    break
        if e < 0:
            break
        deg[items[e]] -= 1
        items[e] = i
        deg[i] += 1
        moved += 1
    return moved


def _user_degrees(num_users: int, num_interactions: int, act: np.ndarray, cap: int, rng) -> np.ndarray:
    deg = np.ones(num_users, dtype=np.int64)
    rest = num_interactions - num_users
    p = act / act.sum()
    for _ in range(8):
        if rest <= 0:
            break
        deg += rng.multinomial(rest, p)
        over = np.maximum(deg - cap, 0)
        rest = int(over.sum())
        deg -= over
        open_ = deg < cap
        if not open_.any():
            break
        p = np.where(open_, act, 0.0)
        p = p / p.sum()
    return deg


def _make_per_user(num_users, num_items, num_interactions, num_communities, rng, seed, p_in,
                   item_comm, user_comm, item_pop, user_act):
    # a user cannot hold more distinct items than about half of its community (p_in of its draws
    # land there), nor more than half the catalogue; power-law activity stays below the cap
    cap = min(max(num_items // (2 * num_communities), -(-4 * num_interactions // num_users)), max(1, num_items // 2))
    deg = _user_degrees(num_users, num_interactions, user_act, cap, rng)
    ptr = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(deg, out=ptr[1:])
    order = np.argsort(item_comm, kind="stable")
    comm_ptr = np.searchsorted(item_comm[order], np.arange(num_communities + 1)).astype(np.int64)
    comm_cum = np.cumsum(item_pop[order])
    out = np.empty(int(ptr[-1]), dtype=np.int32)
    found = _per_user_items(deg, ptr, user_comm.astype(np.int64), comm_ptr, order.astype(np.int32), comm_cum,
                            float(p_in), int(num_communities), int(seed), out)
    users = np.repeat(np.arange(num_users, dtype=np.int64), deg)
    if (found < deg).any():  # users whose distinct items ran out: drop the unfilled slots
        keep = out >= 0
        out, users = out[keep], users[keep]
    del found
    _cover_items(out, users, user_comm.astype(np.int64), item_comm.astype(np.int64), int(num_items), int(seed) + 1)
    return users, out.astype(np.int64)


def _features(item_comm: np.ndarray, num_communities: int, feature_dim: int, noise: float, rng, chunk: int = 1 << 18):
    centroids = rng.normal(size=(num_communities, feature_dim)).astype(np.float32)
    feats = np.empty((item_comm.shape[0], feature_dim), dtype=np.float32)
    for s in range(0, item_comm.shape[0], chunk):
        e = min(s + chunk, item_comm.shape[0])
        feats[s:e] = centroids[item_comm[s:e]] + np.float32(noise) * rng.standard_normal((e - s, feature_dim),
                                                                                          dtype=np.float32)
    return feats


def make_synthetic(
    num_users: int = 1000,
    num_items: int = 500,
    num_interactions: int = 20000,
    num_communities: int = 10,
    feature_dim: int = 16,
    p_in: float = 0.8,
    item_exponent: float = 0.8,
    user_exponent: float = 0.8,
    feature_noise: float = 1.0,
    seed: int = 0,
    method: str = "rounds",
    timestamps: bool = True,
) -> Tuple[Interactions, np.ndarray, np.ndarray]:
    """Generate a log. Returns ``(interactions, item_features [I, F] float32, item_community [I])``.

    Repeated user-item draws are re-drawn, so the log has exactly ``num_interactions`` distinct
    pairs unless the graph is too dense to hold them (then as many as 8 rounds of draws found).
    ``method``: ``rounds`` | ``per-user`` (see the module docstring). ``timestamps=False`` leaves
    them out (file order is then the time order: the same splits and pairs, 8 bytes less per row
    in every stage).
    """
    _check_args(method, num_users, num_items, num_interactions, num_communities, feature_dim, p_in)
    rng = np.random.default_rng(seed)
    item_comm = rng.permutation(np.arange(num_items) % num_communities)
    user_comm = rng.integers(0, num_communities, num_users)
    item_pop = _zipf_weights(num_items, item_exponent, rng)
    user_act = _zipf_weights(num_users, user_exponent, rng)

    if method == "per-user":
        all_users, all_items = _make_per_user(num_users, num_items, num_interactions, num_communities, rng, seed,
                                              p_in, item_comm, user_comm, item_pop, user_act)
        return _finish(all_users, all_items, item_comm, num_communities, feature_dim, feature_noise, rng, timestamps,
                       dense=True)

    rest = num_interactions - num_items - num_users
    # coverage rows: every item once (random user of its community), every user once
    cov_items = np.arange(num_items)
    cov_item_users = _sample_grouped(user_comm, np.ones(num_users), item_comm, rng) if np.isin(
        item_comm, user_comm).all() else rng.integers(0, num_users, num_items)
    cov_users = np.arange(num_users)
    cov_user_items = _sample_grouped(item_comm, item_pop, user_comm, rng)

    user_cum = np.cumsum(user_act)
    # oversample until `num_interactions` distinct (user, item) pairs exist (heavy users repeat)
    cu = np.concatenate([cov_item_users, cov_users])
    ci = np.concatenate([cov_items, cov_user_items])
    key = np.unique(cu * np.int64(num_items) + ci)
    draws = max(rest, 0)
    for _ in range(8):
        if key.shape[0] >= num_interactions or draws == 0:
            break
        users = np.searchsorted(user_cum, rng.random(draws) * user_cum[-1], side="right")
        inside = rng.random(draws) < p_in
        comm = np.where(inside, user_comm[users], rng.integers(0, num_communities, draws))
        items = _sample_grouped(item_comm, item_pop, comm, rng)
        new = np.setdiff1d(np.unique(users * np.int64(num_items) + items), key, assume_unique=True)
        need = num_interactions - key.shape[0]
        if new.shape[0] > need:
            new = rng.choice(new, need, replace=False)
        key = np.concatenate([key, new])
        draws = int(1.5 * (num_interactions - key.shape[0])) + 1
    all_users, all_items = key // num_items, key % num_items
    perm = rng.permutation(all_users.shape[0])
    all_users, all_items = all_users[perm], all_items[perm]
    centroids = rng.normal(size=(num_communities, feature_dim))
    feats = (centroids[item_comm] + feature_noise * rng.normal(size=(num_items, feature_dim))).astype(np.float32)
    return _finish(all_users, all_items, item_comm, num_communities, feature_dim, feature_noise, rng, timestamps,
                   feats)


def _check_args(method, num_users, num_items, num_interactions, num_communities, feature_dim, p_in) -> None:
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not valid; choose one of {list(METHODS)}")
    for name, v in (("num_users", num_users), ("num_items", num_items), ("num_interactions", num_interactions),
                    ("num_communities", num_communities), ("feature_dim", feature_dim)):
        check_int(name, v, 1)
    if num_interactions < max(num_users, num_items):
        raise ValueError(
            f"num_interactions={num_interactions} must be >= max(num_users, num_items)="
            f"{max(num_users, num_items)} so every user and item is engaged at least once"
        )
    if num_communities > num_items:
        raise ValueError(f"num_communities={num_communities} must be <= num_items={num_items}")
    if not 0.0 <= p_in <= 1.0:
        raise ValueError(f"p_in must be in [0, 1], got {p_in}")


def _finish(all_users, all_items, item_comm, num_communities, feature_dim, feature_noise, rng, timestamps,
            feats=None, dense=False):
    num_items = item_comm.shape[0]
    ts = np.arange(all_users.shape[0], dtype=np.int64) + 1_000_000_000 if timestamps else None
    if feats is None:
        feats = _features(item_comm, num_communities, feature_dim, feature_noise, rng)
    titles = np.array([f"item {i} (community {c})" for i, c in zip(range(num_items), item_comm)], dtype=object) \
        if num_items <= 200_000 else None
    table = ItemTable(ids=np.arange(num_items), titles=titles)
    if dense:
        # per-user rows are distinct pairs over every user and item by construction, ids 0..n-1:
        # Interactions.from_raw's densify + global dedupe (a few copies of the log) would be a no-op
        num_users = int(all_users[-1]) + 1
        inter = Interactions(users=all_users, items=all_items, user_ids=np.arange(num_users),
                             item_ids=np.arange(num_items), timestamps=ts, item_table=table)
        return inter, feats, item_comm.astype(np.int64)
    inter = Interactions.from_raw(all_users, all_items, timestamps=ts, item_table=table, source="synthetic")
    # raw ids are 0..n-1 and every id occurs, so dense index == raw id
    return inter, feats, item_comm.astype(np.int64)
