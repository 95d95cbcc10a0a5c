"""Training pairs: consecutive / cooccurrence / walk, per-epoch determinism, min_weight, and their
path through the DataModule's workers and DDP shards."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from datamodules.graph import InteractionGraph
from datamodules.interactions import Interactions
from datamodules.loaders import EpochBatchSampler, make_loader
from datamodules.pairs import (SampledPairs, StaticPairs, graph_consecutive_pairs, make_pair_source, positive_graph,
                               resolve_pairs)
from datamodules.splits import consecutive_pairs


def small_graph(seed=0, num_users=60, num_items=40, weights=False):
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(num_users):
        its = rng.choice(num_items, size=int(rng.integers(1, 9)), replace=False)
        users += [u] * its.size
        items += its.tolist()
    users, items = np.array(users), np.array(items)
    w = rng.integers(1, 6, users.size).astype(np.float32) if weights else None
    return InteractionGraph.from_edges(users, items, num_users, num_items, weights=w)


def items_of(g):
    return [set(g.items_of(u).tolist()) for u in range(g.num_users)]


def test_auto_means_consecutive_with_timestamps_else_cooccurrence():
    assert resolve_pairs("auto", True) == "consecutive" and resolve_pairs("auto", False) == "cooccurrence"
    assert resolve_pairs("walk", True) == "walk"
    with pytest.raises(ValueError, match="pairs='next'"):
        resolve_pairs("next", True)


def test_cooccurrence_pairs_are_two_items_of_one_user_fresh_each_epoch():
    g = small_graph()
    src = SampledPairs(g, "cooccurrence", seed=3)
    deg = g.user_degree()
    assert src.num_pairs == int(deg[deg >= 2].sum())  # every edge of a user with >= 2 items is a query once
    own = items_of(g)
    users = np.repeat(np.arange(g.num_users), deg)
    eligible = deg[users] >= 2
    e0 = src.epoch_pairs(0)
    # query j is the j-th eligible edge; its positive another item of the same user
    assert np.array_equal(e0[:, 0], g.user_items[eligible])
    assert all(q != i and i in own[u] for (q, i), u in zip(e0.tolist(), users[eligible]))
    # a pure function of (seed, epoch, index): any subset, any order, gives the same pairs
    idx = np.random.default_rng(0).permutation(src.num_pairs)[:50]
    assert np.array_equal(src.take(idx, 0), e0[idx])
    assert np.array_equal(SampledPairs(g, "cooccurrence", seed=3).epoch_pairs(0), e0)
    assert not np.array_equal(src.epoch_pairs(1)[:, 1], e0[:, 1])
    assert not np.array_equal(SampledPairs(g, "cooccurrence", seed=4).epoch_pairs(0)[:, 1], e0[:, 1])


def test_cooccurrence_positive_is_uniform_over_the_users_other_items():
    g = InteractionGraph.from_edges(np.array([0, 0, 0, 0, 1]), np.array([0, 1, 2, 3, 4]), 2, 5)
    src = SampledPairs(g, "cooccurrence", seed=0)
    assert src.num_pairs == 4  # user 1 has one item: no pair
    counts = np.zeros((4, 4))
    for e in range(3000):
        for q, i in src.epoch_pairs(e).tolist():
            counts[q, i] += 1
    assert np.all(np.diag(counts) == 0)
    off = counts[~np.eye(4, dtype=bool)]
    assert np.abs(off / 1000 - 1).max() < 0.12  # each other item: 1/3 of 3000


def test_walk_pairs_reach_beyond_the_users_items():
    g = small_graph(seed=1)
    own = items_of(g)
    co = SampledPairs(g, "cooccurrence", seed=0).epoch_pairs(0)
    wk = SampledPairs(g, "walk", walk_length=3, restart_prob=0.0, seed=0)
    assert wk.num_pairs == co.shape[0]
    pairs = wk.epoch_pairs(0)
    assert np.array_equal(pairs[:, 0], co[:, 0]) and np.all(pairs[:, 0] != pairs[:, 1])
    deg = g.user_degree()
    users = np.repeat(np.arange(g.num_users), deg)[deg[np.repeat(np.arange(g.num_users), deg)] >= 2]
    outside = np.mean([i not in own[u] for (_, i), u in zip(pairs.tolist(), users)])
    assert outside > 0.3  # 3-hop walks mostly leave the query's own user
    # a 1-hop walk is a co-occurrence pair
    one = SampledPairs(g, "walk", walk_length=1, seed=0).epoch_pairs(0)
    assert all(i in own[u] for (_, i), u in zip(one.tolist(), users))
    # deterministic per (seed, epoch, index)
    assert np.array_equal(wk.take(np.arange(10, 20), 0), pairs[10:20])
    assert not np.array_equal(wk.epoch_pairs(1), pairs)


def test_weighted_walk_pairs_follow_the_weights():
    # user 0: items 0, 1; items 1 and 2 share user 1, which weighs item 2 x9 and item 3 x1
    users = np.array([0, 0, 1, 1, 1])
    items = np.array([0, 1, 1, 2, 3])
    w = np.array([1, 1, 1, 9, 1], dtype=np.float32)
    g = InteractionGraph.from_edges(users, items, 2, 4, weights=w)
    src = SampledPairs(g, "walk", walk_length=2, restart_prob=0.0, seed=0, weighted=True)
    unw = SampledPairs(g, "walk", walk_length=2, restart_prob=0.0, seed=0, weighted=False)
    q0 = 0  # pair index 0 is the edge (user 0, item 0): hop 1 -> item 1, hop 2 via a user of item 1

    def freq(s):
        ends = np.array([s.take([q0], e)[0, 1] for e in range(4000)])
        return np.array([(ends == k).mean() for k in range(4)])

    fw, fu = freq(src), freq(unw)
    # from item 1: user 0 (w 1) -> {0 (not counted: the query, so item 1 stays), 1}, or user 1 (w 1) ->
    # items 1, 2, 3 with weights 1:9:1 (weighted) or 1:1:1 (uniform)
    assert abs(fw[2] - 0.5 * 9 / 11) < 0.04 and abs(fu[2] - 0.5 / 3) < 0.04
    assert fw[0] == fu[0] == 0


def test_min_weight_filters_positives():
    g = small_graph(seed=2, weights=True)
    pg = positive_graph(g, 4.0)
    assert pg.num_edges == int((g.weights >= 4).sum()) and pg.weights.min() >= 4
    strong = set(zip(g.edge_users()[g.weights >= 4].tolist(), g.user_items[g.weights >= 4].tolist()))
    src = SampledPairs(pg, "cooccurrence", seed=0)
    users = pg.edge_users()[np.diff(pg.user_ptr)[pg.edge_users()] >= 2]
    for (q, i), u in zip(src.epoch_pairs(0).tolist(), users):
        assert (u, q) in strong and (u, i) in strong
    with pytest.raises(ValueError, match="min_weight=3.0 needs interaction weights"):
        positive_graph(small_graph(seed=2), 3.0)


def _dataset_of(inter):
    from datamodules.datasets import build_dataset

    return build_dataset("hand", inter, features=[])


def test_consecutive_with_min_weight_equals_consecutive_of_the_kept_rows():
    rng = np.random.default_rng(3)
    n = 400
    users, items = rng.integers(0, 20, n), rng.integers(0, 50, n)
    inter = Interactions.from_raw(users, items, timestamps=rng.integers(0, 10**6, n),
                                  weights=rng.integers(1, 6, n).astype(float))
    ds = _dataset_of(inter)
    src = make_pair_source(ds, "auto", min_weight=3)
    kept = ds.split.train[inter.weights[ds.split.train] >= 3]
    assert src.kind == "consecutive" and np.array_equal(src.pairs, consecutive_pairs(inter, kept))
    assert np.array_equal(make_pair_source(ds, "consecutive").pairs, ds.train_pairs)  # cached pairs
    assert np.array_equal(graph_consecutive_pairs(ds.train_graph), ds.train_pairs)
    with pytest.raises(ValueError, match="min_weight=100.0 leaves no training pairs"):
        make_pair_source(ds, "cooccurrence", min_weight=100)
    with pytest.raises(ValueError, match="min_weight"):
        make_pair_source(ds, "walk", min_weight="high")


def test_auto_pairs_without_timestamps_are_cooccurrence():
    rng = np.random.default_rng(4)
    inter = Interactions.from_raw(rng.integers(0, 30, 500), rng.integers(0, 60, 500))
    src = make_pair_source(_dataset_of(inter), "auto")
    assert src.kind == "cooccurrence" and isinstance(src, SampledPairs)
    assert isinstance(make_pair_source(_dataset_of(inter), "consecutive"), StaticPairs)


# -- through the DataModule: workers, DDP shards -------------------------------------------------
SYNTH = dict(num_users=300, num_items=200, num_interactions=4000, num_communities=5, feature_dim=4, seed=1)


def make_dm(cache_dir, **kw):
    from datamodules.datamodule import PinSageDataModule

    args = dict(dataset="synthetic", cache_dir=str(cache_dir), reader_args=SYNTH, num_neighbors=5, num_walks=10,
                batch_size=128, eval_batch_size=128, num_easy_negatives=20, max_hard_negatives=1,
                hard_negative_window=[0.05, 0.15], num_workers=0)
    args.update(kw)
    return PinSageDataModule(**args)


def _pairs_of(batches):
    return [torch.stack([b.node_ids[b.query], b.node_ids[b.pos]], 1) for b in batches]


@pytest.mark.parametrize("kind", ["cooccurrence", "walk"])
def test_datamodule_pairs_same_with_workers_and_disjoint_across_ranks(cache_dir, kind):
    dm = make_dm(cache_dir, pairs=kind)
    dm.setup("fit")
    src = dm._pairs
    assert src.kind == kind and len(dm.train_dataset()) == src.num_pairs
    data = dm.train_dataset()
    sampler = EpochBatchSampler(len(data), 128, seed=dm.seed)
    res = {}
    for workers in (0, 2):
        loader = make_loader(data, sampler, num_workers=workers, persistent_workers=workers > 0)
        res[workers] = {}
        for e in (0, 1):
            sampler.set_epoch(e)
            res[workers][e] = _pairs_of(list(loader))
    for e in (0, 1):
        assert all(torch.equal(a, b) for a, b in zip(res[0][e], res[2][e]))
    assert not torch.equal(torch.cat(res[0][0]), torch.cat(res[0][1]))
    # DDP: two ranks take disjoint index shares that cover every pair, and agree on what pair j is
    seen = []
    for rank in (0, 1):
        s = EpochBatchSampler(len(data), 64, seed=dm.seed, rank=rank, world_size=2)
        s.set_epoch(3)
        for bi in s:
            b = data[bi]
            assert torch.equal(torch.as_tensor(src.take(bi.pairs, 3)[:, 0]), b.node_ids[b.query])
            seen.append(bi.pairs)
    seen = np.concatenate(seen)
    assert np.array_equal(np.sort(seen), np.arange(src.num_pairs))


def test_datamodule_pair_arguments(cache_dir):
    with pytest.raises(ValueError, match="pairs="):
        make_dm(cache_dir, pairs="next")
    with pytest.raises(ValueError, match="min_weight"):
        make_dm(cache_dir, min_weight="x")
    dm = make_dm(cache_dir, min_weight=1.0)  # synthetic data has no weights
    with pytest.raises(ValueError, match="needs interaction weights"):
        dm.setup()
    dm = make_dm(cache_dir)  # synthetic data has timestamps: auto = consecutive, the cached pairs
    dm.setup()
    assert dm._pairs.kind == "consecutive" and np.array_equal(dm._pairs.pairs, dm.dataset.train_pairs)
