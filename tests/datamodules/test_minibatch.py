"""The K-hop computation graph: layout, exact round trip to the sampled global edges, features."""

import numpy as np
import pytest
import torch

from datamodules.batch import EvalBatch, PinSageBatch
from datamodules.graph import InteractionGraph
from datamodules.minibatch import ComputationGraphBuilder
from datamodules.walks import PinSageSampler, UniformSampler


def graph(num_users=80, num_items=100, num_edges=900, isolated=3, seed=0):
    rng = np.random.default_rng(seed)
    live = num_items - isolated
    users = np.concatenate([np.arange(num_users), rng.integers(0, num_users, num_edges - num_users)])
    items = np.concatenate([np.arange(num_users) % live, rng.integers(0, live, num_edges - num_users)])
    key = np.unique(users * num_items + items)
    return InteractionGraph.from_edges(key // num_items, key % num_items, num_users, num_items)


class TableSampler:
    """A fixed ragged neighbour table: item i -> nbrs[i] (weights 1/len)."""

    def __init__(self, nbrs):
        self.nbrs = nbrs

    def sample(self, seeds, epoch=0):
        lists = [self.nbrs[int(s)] for s in seeds]
        ptr = np.concatenate([[0], np.cumsum([len(x) for x in lists])]).astype(np.int64)
        items = np.array([i for x in lists for i in x], dtype=np.int64)
        w = np.array([1.0 / len(x) for x in lists for _ in x], dtype=np.float32)
        return ptr, items, w


def check_layout(node_ids, blocks, n_targets):
    K = len(blocks)
    assert node_ids.unique().numel() == node_ids.numel()
    if K:
        assert blocks[-1].size[1] == n_targets
        assert blocks[0].size[0] == node_ids.numel()
    for k, b in enumerate(blocks):
        n_src, n_dst = b.size
        assert n_src >= n_dst
        if k + 1 < K:
            assert blocks[k + 1].size[0] == n_dst  # layer k+1 is the next block's source
        ei = b.edge_index
        assert ei.dtype == torch.long and ei.shape[0] == 2 and b.edge_weight.dtype == torch.float32
        assert ei.shape[1] == b.edge_weight.numel()
        if ei.numel():
            assert int(ei[0].max()) < n_src and int(ei[1].max()) < n_dst and int(ei.min()) >= 0
            assert bool((ei[1][1:] >= ei[1][:-1]).all())  # grouped by destination


@pytest.mark.parametrize("kind", ["pinsage", "uniform"])
@pytest.mark.parametrize("K", [1, 2, 3])
def test_subgraph_maps_back_to_the_sampled_global_edges(kind, K):
    g = graph()
    sampler = (PinSageSampler(g, num_walks=20, walk_length=2, top_t=6, seed=1) if kind == "pinsage"
               else UniformSampler(g, num_samples=6, seed=1))
    feats = np.random.default_rng(0).normal(size=(g.num_items, 5)).astype(np.float32)
    builder = ComputationGraphBuilder(sampler, feats, num_layers=K)
    targets = np.array([5, 3, 97, 40, 11])  # 97 is isolated
    node_ids, blocks, x = builder.build(targets, epoch=3)
    node_ids_t = torch.from_numpy(node_ids)
    check_layout(node_ids_t, blocks, targets.size)
    assert np.array_equal(node_ids[:targets.size], targets)
    assert np.array_equal(x.numpy(), feats[node_ids])
    for b in blocks:
        n_src, n_dst = b.size
        dst_global = node_ids[:n_dst]
        ptr, nbr, w = sampler.sample(dst_global, epoch=3)
        # exactly the sampler's (target, neighbour, weight) triples, in its order
        exp_dst = np.repeat(dst_global, np.diff(ptr))
        ei = b.edge_index.numpy()
        assert np.array_equal(node_ids[ei[1]], exp_dst)
        assert np.array_equal(node_ids[ei[0]], nbr)
        assert np.array_equal(b.edge_weight.numpy(), w)
        # every neighbour of a layer-(k+1) node is in layer k
        assert set(nbr.tolist()) <= set(node_ids[:n_src].tolist())
    # no node is missing: layer 0 = targets + everything reached in K hops
    reach = set(targets.tolist())
    frontier = targets
    for _ in range(K):
        ptr, nbr, _ = sampler.sample(frontier, epoch=3)
        new = np.array(sorted(set(nbr.tolist()) - reach), dtype=np.int64)
        reach |= set(new.tolist())
        frontier = new
    assert set(node_ids.tolist()) == reach


def test_hand_built_table_three_hops_and_empty_neighbourhoods():
    nbrs = {0: [1, 2], 1: [3], 2: [], 3: [4, 0], 4: [5], 5: [0], 6: []}
    builder = ComputationGraphBuilder(TableSampler(nbrs), np.arange(7, dtype=np.float32)[:, None], num_layers=3)
    node_ids, blocks, x = builder.build(np.array([0, 6]))
    assert node_ids.tolist() == [0, 6, 1, 2, 3, 4]
    assert [b.size for b in blocks] == [(6, 5), (5, 4), (4, 2)]
    assert blocks[2].edge_index.tolist() == [[2, 3], [0, 0]]
    assert blocks[1].edge_index.tolist() == [[2, 3, 4], [0, 0, 2]]
    assert blocks[0].edge_index.tolist() == [[2, 3, 4, 5, 0], [0, 0, 2, 4, 4]]
    assert torch.allclose(blocks[0].edge_weight, torch.tensor([0.5, 0.5, 1.0, 0.5, 0.5]))
    assert x[:, 0].tolist() == [0, 6, 1, 2, 3, 4]
    # K = 0: targets only
    node_ids, blocks, x = ComputationGraphBuilder(TableSampler(nbrs), np.zeros((7, 0), np.float32), 0).build(
        np.array([2, 4]))
    assert node_ids.tolist() == [2, 4] and blocks == [] and x.shape == (2, 0)


def test_map_is_reset_between_batches_and_after_errors():
    g = graph()
    builder = ComputationGraphBuilder(PinSageSampler(g, top_t=5), np.zeros((g.num_items, 2), np.float32), 2)
    a = builder.build(np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="distinct"):
        builder.build(np.array([4, 4]))
    with pytest.raises(ValueError, match="targets"):
        builder.build(np.array([1, g.num_items]))
    b = builder.build(np.array([1, 2, 3]))
    assert np.array_equal(a[0], b[0])
    assert (builder._g2l == -1).all()
    import pickle

    assert pickle.loads(pickle.dumps(builder))._g2l is None  # never shipped to workers


def test_train_batch_positions():
    g = graph()
    feats = np.random.default_rng(1).normal(size=(g.num_items, 3)).astype(np.float32)
    builder = ComputationGraphBuilder(PinSageSampler(g, top_t=5), feats, 2)
    q = np.array([1, 2, 1, 50])
    pos = np.array([7, 1, 8, 51])
    easy = np.array([60, 61, 2, 99])
    hard = np.array([[30, 31], [32, 33], [30, 34], [35, 7]])
    b = builder.train_batch(q, pos, easy, hard, epoch=4)
    assert isinstance(b, PinSageBatch) and b.epoch == 4
    n_k = b.num_targets
    assert n_k == np.unique(np.concatenate([q, pos, easy, hard.ravel()])).size
    for local, glob in ((b.query, q), (b.pos, pos), (b.easy_neg, easy), (b.hard_neg, hard)):
        assert local.shape == torch.Size(glob.shape) and int(local.max()) < n_k
        assert np.array_equal(b.node_ids[local].numpy(), glob)
    assert torch.equal(b.x, torch.from_numpy(feats)[b.node_ids])
    nb = builder.train_batch(q, pos, easy, np.empty((4, 0), np.int64))
    assert nb.hard_neg.shape == (4, 0)
    with pytest.raises(ValueError, match="hard_neg"):
        builder.train_batch(q, pos, easy, np.zeros((3, 2), np.int64))
    with pytest.raises(ValueError, match="pos"):
        builder.train_batch(q, pos[:3], easy, np.empty((4, 0), np.int64))


def test_eval_batch():
    g = graph()
    builder = ComputationGraphBuilder(PinSageSampler(g, top_t=5), np.zeros((g.num_items, 1), np.float32), 2)
    e = builder.eval_batch(np.arange(20, 40))
    assert isinstance(e, EvalBatch)
    assert e.targets.tolist() == list(range(20, 40))
    assert e.node_ids[:20].tolist() == list(range(20, 40))
    check_layout(e.node_ids, e.blocks, 20)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_layers"):
        ComputationGraphBuilder(None, np.zeros((3, 1)), -1)
    with pytest.raises(ValueError, match="item_features"):
        ComputationGraphBuilder(None, np.zeros(3), 1)
