"""The evaluator: limit cases (perfect embeddings -> 1.0), hand-computed popularity numbers,
masking, NCF negatives, determinism and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from app.evaluation import evaluate, history_csr, ncf_cases, sample_negatives
from datamodules.datasets import build_dataset, load_dataset
from datamodules.interactions import Interactions


def _dataset(sequences, extra_pairs=(), **kw):
    """A temporal-split dataset from per-user item sequences (time order) plus 2-interaction
    users (``extra_pairs``) that stay entirely in training."""
    users, items, times = [], [], []
    for u, seq in enumerate(list(sequences) + [list(p) for p in extra_pairs]):
        for t, i in enumerate(seq):
            users.append(u)
            items.append(i)
            times.append(t)
    inter = Interactions.from_raw(np.array(users), np.array(items), timestamps=np.array(times))
    return build_dataset("hand", inter, split="temporal", features=[], **kw)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return load_dataset("synthetic", cache_dir=str(tmp_path_factory.mktemp("cache")),
                        reader_args=dict(num_users=300, num_items=200, num_interactions=4000,
                                         num_communities=5, feature_dim=8, seed=0))


def _no_seconds(d):
    return {k: v for k, v in d.items() if not k.endswith("/seconds")}


def test_perfect_embeddings_score_one():
    # user u: a_u (train) -> b_u (val) -> c_u (test), items of different users disjoint
    n = 12
    ds = _dataset([[3 * u, 3 * u + 1, 3 * u + 2] for u in range(n)])
    assert ds.num_items == 3 * n
    emb = torch.zeros(3 * n, 2 * n)
    for u in range(n):
        emb[3 * u, u], emb[3 * u, n + u] = 0.9, math.sqrt(1 - 0.81)  # a_u: close to, not equal to e_u
        emb[3 * u + 1, u] = 1.0  # b_u = e_u
        emb[3 * u + 2, u] = 1.0  # c_u = e_u
    res = evaluate(ds, emb, part="test", ks=(1, 10), baselines=(), num_sampled_negatives=20, full_ks=(1, 20))
    metrics = {k: v for k, v in res.items() if k.startswith("pinsage/") and not k.endswith("seconds")}
    assert set(metrics) == {"pinsage/item/hit_rate@1", "pinsage/item/hit_rate@10", "pinsage/item/mrr",
                            "pinsage/item/hr@10", "pinsage/item/ndcg@10", "pinsage/ncf/hr@10",
                            "pinsage/ncf/ndcg@10", "pinsage/full/recall@1", "pinsage/full/ndcg@1",
                            "pinsage/full/recall@20", "pinsage/full/ndcg@20"}
    assert all(v == pytest.approx(1.0) for v in metrics.values()), metrics
    assert res["item/num_queries"] == n and res["ncf/num_cases"] == n and res["full/num_users"] == n
    # validation part: pairs (a_u, b_u), history {a_u}; b_u ties with c_u (ties count against it)
    val = evaluate(ds, emb, part="val", ks=(1, 2), baselines=(), protocols=("item", "full"), full_ks=(2,))
    assert val["pinsage/item/hit_rate@1"] == 0.0 and val["pinsage/item/hit_rate@2"] == 1.0
    assert val["pinsage/full/recall@2"] == pytest.approx(1.0)


def test_history_items_are_masked_in_full_ranking():
    # a_u = b_u = e_u score above the test item c_u: only the masks let c_u reach rank 1
    n = 10
    ds = _dataset([[3 * u, 3 * u + 1, 3 * u + 2] for u in range(n)])
    emb = torch.zeros(3 * n, 2 * n)
    for u in range(n):
        emb[3 * u, u] = emb[3 * u + 1, u] = 1.0
        emb[3 * u + 2, u], emb[3 * u + 2, n + u] = 0.9, math.sqrt(1 - 0.81)
    res = evaluate(ds, emb, ks=(1,), baselines=(), num_sampled_negatives=20, full_ks=(1,))
    assert res["pinsage/full/recall@1"] == 1.0  # a_u (train) and b_u (val) masked
    assert res["pinsage/ncf/hr@10"] == 1.0 and res["pinsage/ncf/ndcg@10"] == 1.0
    assert res["pinsage/item/hit_rate@1"] == 0.0  # item-to-item: q = b_u excluded, a_u still ranks first
    assert res["pinsage/item/hr@10"] == 1.0
    assert history_csr(ds, "test")[1].tolist() == sorted(i for u in range(n) for i in (3 * u, 3 * u + 1))


def test_popularity_on_a_hand_made_log():
    # training degrees: item 0: 5, 1: 4, 2: 2, 3: 1, 4: 1, 5: 0 (only held out), 6: 1
    extra = [(0, 1)] * 3 + [(0, 2)] * 2 + [(1, 3)]
    ds = _dataset([[4, 5, 2], [6, 5, 3]], extra_pairs=extra)
    assert ds.num_items == 7
    np.testing.assert_array_equal(ds.train_graph.item_degree(), [5, 4, 2, 1, 1, 0, 1])
    # `val_pairs`/`test_pairs`: (4, 5), (6, 5) / (5, 2), (5, 3)
    res = evaluate(ds, None, part="test", ks=(1, 3, 5), baselines=("popularity",),
                   num_sampled_negatives=4, full_ks=(2, 3))
    # item: target 2 (deg 2) is beaten by 0, 1 -> rank 3; target 3 (deg 1) by 0, 1, 2 and ties 4, 6 -> rank 6
    assert res["popularity/item/hit_rate@1"] == 0.0
    assert res["popularity/item/hit_rate@3"] == 0.5
    assert res["popularity/item/hit_rate@5"] == 0.5
    assert res["popularity/item/mrr"] == 1.0  # both ranks <= 100
    assert res["popularity/item/hr@10"] == 1.0
    assert res["popularity/item/ndcg@10"] == pytest.approx((1 / math.log2(4) + 1 / math.log2(7)) / 2, abs=1e-6)
    # ncf: each user has exactly 4 items never touched, all sampled; user 0: {0,1,3,6} -> rank 3;
    # user 1: {0,1,2,4} -> rank 5 (the tie with item 4 counts against the target)
    assert res["popularity/ncf/hr@10"] == 1.0
    assert res["popularity/ncf/ndcg@10"] == pytest.approx((1 / math.log2(4) + 1 / math.log2(6)) / 2, abs=1e-6)
    # full: user 0 masks {4, 5}: 0, 1, 2 -> hit at position 3; user 1 masks {6, 5}: 0, 1, 2 -> no hit in top 3
    assert res["popularity/full/recall@2"] == 0.0 and res["popularity/full/ndcg@2"] == 0.0
    assert res["popularity/full/recall@3"] == 0.5
    assert res["popularity/full/ndcg@3"] == pytest.approx(0.5 / math.log2(4))


def test_ncf_negatives_avoid_the_users_items_and_are_seeded(synthetic):
    ds = synthetic
    a = ncf_cases(ds, "test", 99, seed=0)
    cand = a["candidates"]
    assert cand.shape == (ds.split.test.size, 100) and int(a["from_file"]) == 0
    u_test, i_test = ds.split_user_items("test")
    assert np.array_equal(cand[:, 0], i_test) and np.array_equal(a["users"], u_test)
    seen = set(zip(ds.interactions.users.tolist(), ds.interactions.items.tolist()))
    for u, row in zip(a["users"].tolist(), cand[:, 1:].tolist()):
        assert len(set(row)) == 99
        assert not any((u, j) in seen for j in row)
    assert np.array_equal(ncf_cases(ds, "test", 99, seed=0)["candidates"], cand)
    assert not np.array_equal(ncf_cases(ds, "test", 99, seed=1)["candidates"], cand)


def test_sample_negatives_limits():
    ptr, items = np.array([0, 3, 3]), np.array([0, 1, 2])
    out = sample_negatives(np.array([0, 0, 1]), 2, ptr, items, 5, seed=0)
    assert sorted(out[0].tolist()) == [3, 4] and sorted(out[1].tolist()) == [3, 4]
    with pytest.raises(ValueError, match="num_sampled_negatives=3.*user 0 has only 2"):
        sample_negatives(np.array([0]), 3, ptr, items, 5)


def test_ncf_uses_the_datasets_own_negatives():
    # fixed split: rows flagged is_test are the test part; negatives given per test row
    users = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    items = np.array([0, 1, 2, 2, 3, 4, 5, 6])
    is_test = np.array([0, 0, 0, 0, 0, 0, 1, 1], dtype=bool)
    inter = Interactions.from_raw(users, items, timestamps=np.arange(8), is_test=is_test)
    negs = np.array([[3, 4], [0, 1]])
    ds = build_dataset("ncf", inter, split="fixed", features=[], extras={"test_negatives": negs})
    c = ncf_cases(ds, "test", 99)
    assert int(c["from_file"]) == 1
    np.testing.assert_array_equal(c["candidates"], [[5, 3, 4], [6, 0, 1]])
    res = evaluate(ds, None, protocols=("ncf",), baselines=("popularity",))
    assert res["ncf/from_file"] == 1.0 and res["ncf/num_candidates"] == 3.0


def test_baselines_are_deterministic_and_ordered(synthetic):
    a = evaluate(synthetic, None, part="test", seed=3)
    b = evaluate(synthetic, None, part="test", seed=3)
    c = evaluate(synthetic, None, part="test", seed=4)
    assert _no_seconds(a) == _no_seconds(b)
    assert a["random/ncf/hr@10"] != c["random/ncf/hr@10"] or a["random/item/mrr"] != c["random/item/mrr"]
    assert a["popularity/full/recall@20"] == c["popularity/full/recall@20"]
    # on community-structured data co-occurrence beats popularity beats random
    for p, m in (("item", "hit_rate@10"), ("ncf", "hr@10"), ("full", "recall@20")):
        assert a[f"cooccurrence/{p}/{m}"] > a[f"popularity/{p}/{m}"] > a[f"random/{p}/{m}"], (p, m)
    # random sits near chance: NCF HR@10 among 100 candidates ~ 0.1
    assert 0.03 < a["random/ncf/hr@10"] < 0.2
    assert "random/item/hit_rate@500" not in a  # K >= catalogue size is skipped


def test_bad_input(synthetic):
    ds = synthetic
    emb = torch.randn(ds.num_items, 4)
    with pytest.raises(ValueError, match="part='train'"):
        evaluate(ds, emb, part="train")
    with pytest.raises(ValueError, match="protocol='loo'"):
        evaluate(ds, emb, protocols=("loo",))
    with pytest.raises(ValueError, match="baseline='knn'"):
        evaluate(ds, emb, baselines=("knn",))
    with pytest.raises(ValueError, match=r"item_emb has shape \(5, 4\)"):
        evaluate(ds, emb[:5])
    with pytest.raises(ValueError, match="NaN"):
        evaluate(ds, emb * float("nan"))
    with pytest.raises(ValueError, match="model_name='popularity'"):
        evaluate(ds, emb, model_name="popularity")
    with pytest.raises(ValueError, match="full_ks"):
        evaluate(ds, emb, full_ks=(ds.num_items + 1,))
    with pytest.raises(ValueError, match="ks=\\(0,\\)"):
        evaluate(ds, emb, ks=(0,))


def test_recency_weights_follow_time_not_item_ids():
    # one user, items in time order 5, 2, 7, 1, 9 (temporal split: train 5 2 7, val 1, test 9)
    from app.evaluation import recency_weights

    ds = _dataset([[5, 2, 7, 1, 9], [0, 3, 4, 6, 8]])  # every id 0..9 present: ids map to themselves
    assert ds.num_items == 10
    ptr, items = history_csr(ds, "val")
    w = recency_weights(ds, "val", half_life=1.0)
    got = dict(zip(items[ptr[0]:ptr[1]].tolist(), w[ptr[0]:ptr[1]].tolist()))
    assert got == {7: 1.0, 2: 0.5, 5: 0.25}  # the latest training item weighs 1, one step older half
    ptr, items = history_csr(ds, "test")
    w = recency_weights(ds, "test", half_life=2.0)
    got = dict(zip(items[ptr[0]:ptr[1]].tolist(), w[ptr[0]:ptr[1]].tolist()))
    assert got == pytest.approx({1: 1.0, 7: 2 ** -0.5, 2: 0.5, 5: 2 ** -1.5})
    assert recency_weights(ds, "val", half_life=None) is None


def test_item_item_baselines_pool_the_models_history_weights():
    # user 0's history 5 2 7 (test part: 5 2 7 1), held-out 9; an itemknn-like matrix where only
    # item 1 points at 9: with recency the latest item (1) dominates, so 9 ranks first
    from app.evaluation import recency_weights

    ds = _dataset([[5, 2, 7, 1, 9], [0, 3, 4, 6, 8]])
    W = np.zeros((10, 10), dtype=np.float32)
    W[1, 9] = 1.0
    W[5, 3] = W[2, 3] = W[7, 3] = 0.6  # older items all point at 3
    kw = dict(part="test", protocols=["full"], baselines=["itemknn"], baseline_matrices={"itemknn": W},
              full_ks=(1,))
    plain = evaluate(ds, None, **kw)
    weighted = evaluate(ds, None, history_weights=lambda part: recency_weights(ds, part, 1.0), **kw)
    assert plain["itemknn/full/recall@1"] < weighted["itemknn/full/recall@1"]


def test_training_and_evaluation_pool_a_history_with_the_same_recency_weights(tmp_path):
    # the data side (user queries in training) and the evaluator weigh each (user, item) alike
    from app.evaluation import recency_weights
    from datamodules.datamodule import PinSageDataModule

    dm = PinSageDataModule(dataset="synthetic", cache_dir=str(tmp_path), num_neighbors=5, num_walks=10,
                           reader_args=dict(num_users=120, num_items=80, num_interactions=1500, num_communities=4,
                                            feature_dim=4, seed=0),
                           batch_size=64, num_easy_negatives=20, num_workers=0, queries="users",
                           user_recency_half_life=3.0, recency_in_training=True)
    dm.setup("fit")
    ptr, items, w = dm.full_graph_data()["history"]
    hp, hi = history_csr(dm.dataset, "val")
    ew = recency_weights(dm.dataset, "val", 3.0)
    np.testing.assert_array_equal(ptr, hp)
    for u in range(ptr.size - 1):
        a = sorted(zip(items[ptr[u]:ptr[u + 1]].tolist(), np.round(w[ptr[u]:ptr[u + 1]], 6).tolist()))
        b = sorted(zip(hi[hp[u]:hp[u + 1]].tolist(), np.round(ew[hp[u]:hp[u + 1]], 6).tolist()))
        assert a == b, u
    assert float(w.max()) == 1.0 and float(w.min()) < 0.5  # recency actually varies
    # by default the training queries pool equally weighted histories (evaluation still weighs)
    dm2 = PinSageDataModule(dataset="synthetic", cache_dir=str(tmp_path), num_neighbors=5, num_walks=10,
                            reader_args=dict(num_users=120, num_items=80, num_interactions=1500, num_communities=4,
                                             feature_dim=4, seed=0),
                            batch_size=64, num_easy_negatives=20, num_workers=0, queries="users",
                            user_recency_half_life=3.0)
    dm2.setup("fit")
    np.testing.assert_array_equal(dm2.full_graph_data()["history"][2], 1.0)
