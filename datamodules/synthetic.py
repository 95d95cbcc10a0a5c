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
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from .interactions import Interactions, ItemTable


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


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
) -> Tuple[Interactions, np.ndarray, np.ndarray]:
    """Generate a log. Returns ``(interactions, item_features [I, F] float32, item_community [I])``.

    Repeated user-item draws are re-drawn, so the log has exactly ``num_interactions`` distinct
    pairs unless the graph is too dense to hold them (then as many as 8 rounds of draws found).
    """
    for name, v in (("num_users", num_users), ("num_items", num_items), ("num_interactions", num_interactions),
                    ("num_communities", num_communities), ("feature_dim", feature_dim)):
        _check_positive(name, v)
    if num_interactions < max(num_users, num_items):
        raise ValueError(
            f"num_interactions={num_interactions} must be >= max(num_users, num_items)="
            f"{max(num_users, num_items)} so every user and item is engaged at least once"
        )
    if num_communities > num_items:
        raise ValueError(f"num_communities={num_communities} must be <= num_items={num_items}")
    if not 0.0 <= p_in <= 1.0:
        raise ValueError(f"p_in must be in [0, 1], got {p_in}")
    rng = np.random.default_rng(seed)
    item_comm = rng.permutation(np.arange(num_items) % num_communities)
    user_comm = rng.integers(0, num_communities, num_users)
    item_pop = _zipf_weights(num_items, item_exponent, rng)
    user_act = _zipf_weights(num_users, user_exponent, rng)

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
    timestamps = np.arange(all_users.shape[0], dtype=np.int64) + 1_000_000_000

    centroids = rng.normal(size=(num_communities, feature_dim))
    feats = centroids[item_comm] + feature_noise * rng.normal(size=(num_items, feature_dim))
    titles = np.array([f"item {i} (community {c})" for i, c in zip(range(num_items), item_comm)], dtype=object) \
        if num_items <= 200_000 else None
    table = ItemTable(ids=np.arange(num_items), titles=titles)
    inter = Interactions.from_raw(all_users, all_items, timestamps=timestamps, item_table=table, source="synthetic")
    # raw ids are 0..n-1 and every id occurs, so dense index == raw id
    return inter, feats.astype(np.float32), item_comm.astype(np.int64)
