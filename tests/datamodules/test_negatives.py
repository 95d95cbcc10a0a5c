"""Easy / hard negatives: exclusions, the rank window, fallbacks, the curriculum."""

import numpy as np
import pytest

from datamodules.graph import InteractionGraph
from datamodules.negatives import (
    HardNegativeMiner,
    auto_hard_num_walks,
    num_hard_for_epoch,
    resolve_hard_window,
    sample_easy_negatives,
    sample_from_ranges,
)


def dense_graph(num_users=60, num_items=120, per_user=40, seed=0):
    """Every user engages ``per_user`` random items: 2 hops reach most of the catalogue."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(num_users), per_user)
    items = np.concatenate([rng.choice(num_items, per_user, replace=False) for _ in range(num_users)])
    return InteractionGraph.from_edges(users, items, num_users, num_items)


# -- window ------------------------------------------------------------------------------------
def test_window_scales_with_catalogue():
    assert resolve_hard_window([0.01, 0.05], 1682, 10) == (17, 84)  # MovieLens-100K
    assert resolve_hard_window([0.01, 0.05], 1682, 20) == (21, 84)  # floored to T + 1
    assert resolve_hard_window([0.01, 0.05], 40981, 20) == (410, 2049)  # Gowalla
    assert resolve_hard_window([0.01, 0.05], 300, 10) == (11, 15)
    assert resolve_hard_window([0.001, 0.002], 300, 10) == (11, 11)  # hi floored to lo
    assert resolve_hard_window([30, 60], 300, 10) == (30, 60)  # absolute ranks, no floor
    assert resolve_hard_window([2000, 5000], 10**9, 50) == (2000, 5000)  # the paper's


@pytest.mark.parametrize("window", [[0.5, 400], [10, 300], [0.01, 1.5e3]])
def test_window_beyond_catalogue_names_the_argument(window):
    with pytest.raises(ValueError, match="hard_negative_window"):
        resolve_hard_window(window, 300, 10)


@pytest.mark.parametrize("window", [[0.05, 0.01], [0, 0.1], [-1, 5], [0.1], "ab", [float("nan"), 1]])
def test_window_malformed(window):
    with pytest.raises(ValueError, match="hard_negative_window"):
        resolve_hard_window(window, 10000, 10)


def test_auto_walks_cover_the_window():
    assert auto_hard_num_walks(84, 2, 0.5) == 112  # 2 * 84 visits at 1.5 visits per walk
    assert auto_hard_num_walks(10, 2, 0.5) == 100


# -- curriculum ----------------------------------------------------------------------------------
def test_curriculum_counts():
    assert [num_hard_for_epoch(e, 3) for e in range(6)] == [0, 1, 2, 3, 3, 3]
    assert [num_hard_for_epoch(e, 3, enabled=False) for e in range(3)] == [0, 0, 0]
    with pytest.raises(ValueError, match="epoch"):
        num_hard_for_epoch(-1, 3)


# -- easy negatives ------------------------------------------------------------------------------
def test_easy_negatives_exclude_distinct_and_cap():
    rng = np.random.default_rng(0)
    exclude = np.array([0, 5, 5, 7, 99])
    for _ in range(20):
        neg = sample_easy_negatives(100, 50, exclude, rng)
        assert neg.size == 50 and np.unique(neg).size == 50
        assert not np.isin(neg, exclude).any()
        assert neg.min() >= 0 and neg.max() < 100
    # capped to what the catalogue allows
    neg = sample_easy_negatives(100, 500, exclude, rng)
    assert np.array_equal(np.sort(neg), np.setdiff1d(np.arange(100), exclude))
    assert sample_easy_negatives(3, 10, np.arange(3), rng).size == 0


def test_easy_negatives_uniform():
    rng = np.random.default_rng(1)
    counts = np.zeros(20)
    for _ in range(2000):
        counts += np.bincount(sample_easy_negatives(20, 3, np.array([4]), rng), minlength=20)
    assert counts[4] == 0
    others = np.delete(counts, 4)
    assert others.min() > 0.8 * others.mean() and others.max() < 1.2 * others.mean()


def test_sample_from_ranges_distinct_and_skip():
    rng = np.random.default_rng(0)
    starts = np.array([0, 100, 200, 300])
    sizes = np.array([10, 4, 3, 1])
    skip = np.array([3, -1, 0, -1])
    for _ in range(50):
        out = sample_from_ranges(starts, sizes, skip, 3, rng)
        assert out.shape == (4, 3)
        assert len(set(out[0])) == 3 and 3 not in out[0] and ((out[0] >= 0) & (out[0] < 10)).all()
        assert len(set(out[1])) == 3 and ((out[1] >= 100) & (out[1] < 104)).all()
        assert set(out[2]) <= {201, 202}  # only 2 allowed: with replacement
        assert (out[3] == 300).all()


# -- hard negatives ------------------------------------------------------------------------------
def test_hard_negatives_lie_in_window_and_avoid_query_and_positive():
    g = dense_graph()
    miner = HardNegativeMiner(g, [0.1, 0.3], num_neighbors=5, seed=3)
    assert (miner.lo, miner.hi) == (12, 36)
    rng = np.random.default_rng(0)
    q = np.repeat(np.arange(40), 2)
    pos = (q * 7 + np.arange(q.size)) % 120
    pos[pos == q] = (pos[pos == q] + 1) % 120
    epoch = 2
    hard = miner.sample(q, pos, 4, epoch, rng)
    assert hard.shape == (q.size, 4)
    ptr, items, _ = miner.ranking(np.arange(40), epoch)
    for b in range(q.size):
        ranked = items[ptr[q[b]]:ptr[q[b] + 1]]
        assert ranked.size >= miner.hi  # the dense graph reaches the whole window
        window = ranked[miner.lo - 1:miner.hi]
        assert np.isin(hard[b], window).all(), (b, hard[b])
        assert q[b] not in hard[b] and pos[b] not in hard[b]
        assert np.unique(hard[b]).size == 4


def test_positive_inside_window_is_never_drawn():
    g = dense_graph(seed=1)
    miner = HardNegativeMiner(g, [6, 7], num_neighbors=5, num_walks=400, seed=0)
    ptr, items, _ = miner.ranking(np.arange(30), epoch=1)
    q = np.arange(30)
    pos = items[ptr[:-1] + 5]  # rank 6: the first window slot
    hard = miner.sample(q, pos, 1, 1, np.random.default_rng(0))
    assert np.array_equal(hard[:, 0], items[ptr[:-1] + 6])  # the only other window item: rank 7


def test_fallbacks_when_the_window_is_not_reached():
    # item 0: one user who also has items 1..3 -> reaches 3 items; item 4..: a big clique
    users = [0, 0, 0, 0] + list(np.repeat(np.arange(1, 11), 30))
    items = [0, 1, 2, 3] + list(np.tile(np.arange(4, 34), 10))
    g = InteractionGraph.from_edges(np.array(users), np.array(items), 11, 40)
    rng = np.random.default_rng(0)
    # window [20, 25], T = 1: query 0 reaches 3 items -> ranks past T (2..3) = {the two least visited}
    miner = HardNegativeMiner(g, [20, 25], num_neighbors=1, num_walks=200, seed=0)
    hard = miner.sample(np.array([0, 0]), np.array([1, 2]), 5, 0, rng)
    ptr, ranked, _ = miner.ranking(np.array([0]), 0)
    assert ranked.size == 3
    assert np.isin(hard[0], np.setdiff1d(ranked[1:], [1])).all()
    assert np.isin(hard[1], np.setdiff1d(ranked[1:], [2])).all()
    # T = 3: nothing past T -> uniform over the catalogue minus {q, pos}, isolated items too
    miner = HardNegativeMiner(g, [20, 25], num_neighbors=3, num_walks=200, seed=0)
    hard = miner.sample(np.array([0, 34]), np.array([1, 35]), 200, 0, rng)
    assert not np.isin(hard[0], [0, 1]).any() and not np.isin(hard[1], [34, 35]).any()
    assert np.unique(hard[0]).size > 30 and hard.min() >= 0 and hard.max() < 40


def test_hard_negatives_deterministic_per_rng_and_epoch():
    g = dense_graph()
    miner = HardNegativeMiner(g, [0.1, 0.3], num_neighbors=5, seed=3)
    q, pos = np.arange(10), np.arange(10, 20)
    a = miner.sample(q, pos, 3, 1, np.random.default_rng(5))
    b = miner.sample(q, pos, 3, 1, np.random.default_rng(5))
    assert np.array_equal(a, b)
    assert miner.sample(q, pos, 0, 1, np.random.default_rng(5)).shape == (10, 0)


def test_bad_hard_num_walks():
    with pytest.raises(ValueError, match="hard_num_walks"):
        HardNegativeMiner(dense_graph(), [0.1, 0.3], num_neighbors=5, num_walks=0)


def test_ranking_cache_changes_nothing():
    g = dense_graph()
    cached = HardNegativeMiner(g, [0.1, 0.3], num_neighbors=5, seed=3, cache_mb=1)
    plain = HardNegativeMiner(g, [0.1, 0.3], num_neighbors=5, seed=3, cache_mb=0)
    for epoch, q in ((1, np.arange(0, 40)), (1, np.arange(20, 60)), (2, np.arange(0, 40))):
        pos = (q + 1) % 120
        a = cached.sample(q, pos, 3, epoch, np.random.default_rng(epoch))
        b = plain.sample(q, pos, 3, epoch, np.random.default_rng(epoch))
        assert np.array_equal(a, b)
        assert cached._cache_epoch == epoch and set(cached._cache) <= set(range(120))
    assert len(cached._cache) == 40  # emptied when the epoch changed
    cached.clear_cache()
    assert cached._cache == {} and cached._cache_used == 0
    tiny = HardNegativeMiner(g, [0.1, 0.3], num_neighbors=5, seed=3, cache_mb=0.0005)  # ~500 bytes
    tiny.sample(np.arange(40), np.arange(1, 41), 2, 1, np.random.default_rng(0))
    assert 0 < len(tiny._cache) < 40 and tiny._cache_used <= tiny.cache_bytes
    with pytest.raises(ValueError, match="hard_cache_mb"):
        HardNegativeMiner(g, [0.1, 0.3], num_neighbors=5, cache_mb=-1)
