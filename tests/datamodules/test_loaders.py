"""Producer-consumer loaders: DDP shards, epoch reaching (persistent) workers, determinism,
negative exclusions, curriculum."""

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from datamodules.loaders import (
    BatchIndex,
    EpochBatchSampler,
    EvalChunkDataset,
    EvalChunkSampler,
    HistoryBefore,
    IdBatchDataset,
    TrainBatchDataset,
    make_loader,
    resolve_rank,
)
from datamodules.minibatch import ComputationGraphBuilder
from datamodules.negatives import HardNegativeMiner
from datamodules.walks import PinSageSampler


# -- sampler / shards --------------------------------------------------------------------------
@pytest.mark.parametrize("num_pairs,batch_size", [(1003, 100), (1000, 100), (7, 3), (5, 2), (3, 1)])
def test_ddp_shards_disjoint_and_cover_all_pairs(num_pairs, batch_size):
    for epoch in (0, 1):
        shards = []
        for rank in range(2):
            s = EpochBatchSampler(num_pairs, batch_size, seed=7, rank=rank, world_size=2)
            s.set_epoch(epoch)
            batches = list(s)
            assert len(batches) == len(s)
            assert all(b.epoch == epoch and b.rank == rank and b.batch_index == i for i, b in enumerate(batches))
            assert all(0 < b.pairs.size <= batch_size for b in batches)
            shards.append(np.concatenate([b.pairs for b in batches]))
        assert len(EpochBatchSampler(num_pairs, batch_size, rank=0, world_size=2)) == \
            len(EpochBatchSampler(num_pairs, batch_size, rank=1, world_size=2))  # same step count
        if num_pairs >= 2 * 1 and not (batch_size == 1 and num_pairs % 2):
            assert np.intersect1d(shards[0], shards[1]).size == 0  # disjoint
            assert np.array_equal(np.sort(np.concatenate(shards)), np.arange(num_pairs))  # covering
            assert np.unique(shards[0]).size == shards[0].size
        else:
            assert set(np.concatenate(shards).tolist()) == set(range(num_pairs))


def test_shards_reproducible_per_seed_epoch_rank():
    def pairs(seed, epoch, rank):
        s = EpochBatchSampler(1000, 64, seed=seed, rank=rank, world_size=2)
        s.set_epoch(epoch)
        return np.concatenate([b.pairs for b in s])

    assert np.array_equal(pairs(0, 3, 1), pairs(0, 3, 1))
    assert not np.array_equal(pairs(0, 3, 1), pairs(0, 4, 1))
    assert not np.array_equal(pairs(0, 3, 1), pairs(1, 3, 1))


def test_drop_last_and_single_process():
    s = EpochBatchSampler(1003, 100, drop_last=True, rank=0, world_size=2)
    assert len(s) == 5 and all(b.pairs.size == 100 for b in s)
    s = EpochBatchSampler(1003, 100)
    assert s.rank == 0 and s.num_replicas == 1 and len(s) == 11
    assert np.array_equal(np.sort(np.concatenate([b.pairs for b in s])), np.arange(1003))


def test_lightning_does_not_replace_the_samplers():
    assert isinstance(EpochBatchSampler(10, 2), DistributedSampler)
    assert isinstance(EvalChunkSampler(3), DistributedSampler)
    assert list(EvalChunkSampler(3)) == [0, 1, 2]


def test_rank_validation():
    assert resolve_rank() == (0, 1)
    assert resolve_rank(1, 4) == (1, 4)
    with pytest.raises(ValueError, match="rank"):
        resolve_rank(2, 2)
    with pytest.raises(ValueError, match="world_size"):
        resolve_rank(0, 0)
    with pytest.raises(ValueError, match="batch_size"):
        EpochBatchSampler(10, 0)
    with pytest.raises(ValueError, match="seed"):
        EpochBatchSampler(10, 2, seed=-1)
    with pytest.raises(ValueError, match="epoch"):
        EpochBatchSampler(10, 2).set_epoch(-1)


# -- batches --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def train_data(small_synthetic):
    ds = small_synthetic
    g = ds.train_graph
    builder = ComputationGraphBuilder(PinSageSampler(g, num_walks=10, top_t=5, seed=0), ds.item_features, 2)
    miner = HardNegativeMiner(g, [0.05, 0.15], num_neighbors=5, walk_length=2, seed=1)
    return TrainBatchDataset(ds.train_pairs[:480], builder, num_easy_negatives=40, miner=miner,
                             max_hard_negatives=2, seed=11)


def batch_equal(a, b):
    if not (torch.equal(a.node_ids, b.node_ids) and torch.equal(a.x, b.x) and a.epoch == b.epoch):
        return False
    for f in ("query", "pos", "easy_neg", "hard_neg"):
        if not torch.equal(getattr(a, f), getattr(b, f)):
            return False
    return all(torch.equal(x.edge_index, y.edge_index) and torch.equal(x.edge_weight, y.edge_weight)
               and x.size == y.size for x, y in zip(a.blocks, b.blocks))


def test_no_positive_or_query_among_its_negatives(train_data):
    miner = train_data.miner
    for epoch in (0, 2, 5):
        s = EpochBatchSampler(len(train_data), 96, seed=3)
        s.set_epoch(epoch)
        for idx in s:
            b = train_data[idx]
            ids = b.node_ids
            q, pos = ids[b.query], ids[b.pos]
            easy = ids[b.easy_neg]
            assert b.easy_neg.numel() == 40 and easy.unique().numel() == 40
            assert not torch.isin(easy, torch.cat([q, pos])).any()  # none of the batch's q / i
            hard = ids[b.hard_neg]
            assert hard.shape == (q.numel(), min(epoch, 2))
            if hard.numel():
                assert not (hard == q[:, None]).any() and not (hard == pos[:, None]).any()
                # in the window of visit-count ranks (or the documented fallback past T)
                ptr, ranked, _ = miner.ranking(q.numpy(), epoch)
                for r in range(q.numel()):
                    items = ranked[ptr[r]:ptr[r + 1]]
                    cand = items[miner.lo - 1:miner.hi] if items.size >= miner.lo else items[miner.num_neighbors:]
                    if cand.size:
                        assert np.isin(hard[r].numpy(), cand).all()


def test_same_batch_twice(train_data):
    idx = BatchIndex(2, 1, 4, np.arange(100, 196))
    a, b = train_data[idx], train_data[idx]
    assert batch_equal(a, b)
    c = train_data[BatchIndex(2, 1, 5, np.arange(100, 196))]  # other batch index: other negatives
    assert not torch.equal(a.node_ids[a.easy_neg], c.node_ids[c.easy_neg])
    with pytest.raises(TypeError, match="BatchIndex"):
        train_data[3]


def run_epochs(data, num_workers, epochs, persistent=True, batch_size=96):
    sampler = EpochBatchSampler(len(data), batch_size, seed=5)
    loader = make_loader(data, sampler, num_workers=num_workers, prefetch_factor=2, persistent_workers=persistent)
    out = {}
    for e in epochs:
        sampler.set_epoch(e)  # what Lightning's _set_sampler_epoch does
        out[e] = list(loader)
    return out


def test_curriculum_and_determinism_with_workers(train_data):
    """The epoch reaches (persistent) workers; 0 and 2 workers give identical batches."""
    epochs = (0, 1, 2, 3)
    ref = run_epochs(train_data, 0, epochs)
    for workers, persistent in ((2, True), (2, False)):
        got = run_epochs(train_data, workers, epochs, persistent)
        for e in epochs:
            assert len(got[e]) == len(ref[e]) == 5
            assert all(b.epoch == e and b.hard_neg.shape[1] == min(e, 2) for b in got[e])
            assert all(batch_equal(a, b) for a, b in zip(ref[e], got[e]))


def test_one_big_batch_same_in_main_process_and_worker(train_data):
    """Big enough that the main process walks on numba's thread pool while workers walk serially."""
    ref = run_epochs(train_data, 0, (3,), batch_size=480)
    got = run_epochs(train_data, 1, (3,), persistent=False, batch_size=480)
    assert len(ref[3]) == 1 and batch_equal(ref[3][0], got[3][0])
    assert ref[3][0].hard_neg.shape == (480, 2)


def test_eval_chunks_cover_catalogue_in_order(small_synthetic):
    g = small_synthetic.train_graph
    builder = ComputationGraphBuilder(PinSageSampler(g, top_t=5), small_synthetic.item_features, 2)
    data = EvalChunkDataset(builder, 128)
    assert len(data) == 3
    loader = make_loader(data, EvalChunkSampler(len(data)))
    targets = torch.cat([b.targets for b in loader])
    assert torch.equal(targets, torch.arange(g.num_items))
    with pytest.raises(ValueError, match="eval_batch_size"):
        EvalChunkDataset(builder, 0)


def _ddp_worker(rank, world_size, init_file, out_dir):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                         world_size=world_size)
    try:
        s = EpochBatchSampler(1001, 64, seed=9)  # rank / world size from torch.distributed
        s.set_epoch(3)
        batches = list(s)
        assert s.rank == rank and s.num_replicas == world_size
        np.save(f"{out_dir}/rank{rank}.npy", np.concatenate([b.pairs for b in batches]))
        np.save(f"{out_dir}/len{rank}.npy", np.array([len(batches), len(s)]))
    finally:
        torch.distributed.destroy_process_group()


def test_real_process_group_shards(tmp_path):
    """Two real gloo ranks: the sampler reads rank/world size from torch.distributed."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    a, b = np.load(tmp_path / "rank0.npy"), np.load(tmp_path / "rank1.npy")
    assert np.intersect1d(a, b).size == 0
    assert np.array_equal(np.sort(np.concatenate([a, b])), np.arange(1001))
    assert np.array_equal(np.load(tmp_path / "len0.npy"), np.load(tmp_path / "len1.npy"))
    ref = EpochBatchSampler(1001, 64, seed=9, rank=1, world_size=2)  # simulated rank = real rank
    ref.set_epoch(3)
    assert np.array_equal(np.concatenate([x.pairs for x in ref]), b)


def test_causal_user_queries_pool_only_the_items_before_the_positive():
    # user 0: items 5, 6, 7, 8 in time order; user 1: item 9 only; user 2: items 1, 2
    ptr, items = np.array([0, 4, 5, 7]), np.array([5, 6, 7, 8, 9, 1, 2])
    position = np.array([1, 3, 6])  # positives 6 (user 0), 8 (user 0), 2 (user 2)
    h = HistoryBefore(ptr, items, position, window=2, half_life=1.0)
    got, w = h.take(np.arange(3))
    np.testing.assert_array_equal(got, [[5, -1], [7, 6], [1, -1]])  # latest first, never the future
    np.testing.assert_allclose(w, [[1.0, 0.0], [1.0, 0.5], [1.0, 0.0]])
    ds = IdBatchDataset(np.stack([np.array([0, 0, 2]), items[position]], 1), 10, num_easy_negatives=3,
                        queries="users", before=h)
    b = ds[BatchIndex(0, 0, 0, np.array([2, 0]))]
    np.testing.assert_array_equal(b.history, [[1, -1], [5, -1]])
    assert b.history_weight.shape == (2, 2) and b.to("cpu").history.shape == (2, 2)


def test_datamodule_causal_queries_leave_out_each_users_first_item(tmp_path):
    from datamodules.datamodule import PinSageDataModule

    kw = dict(dataset="synthetic", cache_dir=str(tmp_path), num_neighbors=5, num_walks=10, batch_size=64,
              num_easy_negatives=20, num_workers=0, queries="users",
              reader_args=dict(num_users=60, num_items=50, num_interactions=700, num_communities=3,
                               feature_dim=4, seed=0))
    dm = PinSageDataModule(user_queries="before", user_query_window=4, **kw)
    dm.setup("fit")
    ptr, items, _ = dm.full_graph_data()["history"]
    data = dm.train_dataset()
    nonempty = int((np.diff(ptr) > 0).sum())
    assert len(data) == items.size - nonempty
    b = data[BatchIndex(0, 0, 0, np.arange(len(data)))]
    for n in range(len(data)):  # each query's items are exactly the user's items just before pos
        u, e = int(b.query[n]), int(data.before.position[n])
        want = items[max(ptr[u], e - 4):e][::-1]
        got = b.history[n][b.history[n] >= 0].numpy()
        np.testing.assert_array_equal(got, want)
        assert int(b.pos[n]) == items[e]
    with pytest.raises(ValueError, match="user_queries='next' is not valid"):
        PinSageDataModule(user_queries="next", **kw)
    with pytest.raises(ValueError, match="user_queries='before' needs queries='users'"):
        PinSageDataModule(user_queries="before", **{**kw, "queries": "items"})
    untimed = PinSageDataModule(user_queries="before", cache_dir=str(tmp_path / "untimed"),
                                **{k: v for k, v in kw.items() if k not in ("cache_dir", "reader_args")},
                                reader_args={**kw["reader_args"], "timestamps": False})
    with pytest.raises(ValueError, match="needs a log with timestamps"):
        untimed.setup("fit")
