"""The item-item baselines in the evaluator: registered names, tuned settings, pixie from the walks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from app.evaluation import ALL_BASELINES, evaluate, heldout_csr, history_csr
from app import item_item_baselines as bl
from app.item_item_baselines import build_matrix, pixie_matrix, resolve_params
from datamodules.datasets import load_dataset
from datamodules.walks import visit_ranking
from models.baselines import full_ranking_from_scorer


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return load_dataset("synthetic", cache_dir=str(tmp_path_factory.mktemp("cache")),
                        reader_args=dict(num_users=300, num_items=200, num_interactions=4000,
                                         num_communities=5, feature_dim=8, seed=0))


def test_every_item_item_baseline_beats_popularity(synthetic):
    names = ["popularity", "itemknn", "rp3beta", "ease", "pixie", "gfcf"]
    assert set(names) <= set(ALL_BASELINES)
    res = evaluate(synthetic, None, part="test", baselines=names, baseline_params={"ease": {"lam": 50.0}})
    for b in names[1:]:
        assert res[f"{b}/full/recall@20"] > res["popularity/full/recall@20"], b
        assert res[f"{b}/item/hit_rate@10"] > res["popularity/item/hit_rate@10"], b
        assert res[f"{b}/build_seconds"] >= 0.0


def test_full_ranking_equals_brute_force(synthetic):
    """Recall@20 of rp3beta from the evaluator = a dense numpy computation of H W, masked, top-20."""
    ds = synthetic
    W = build_matrix("rp3beta", ds, {"k": 30})
    res = evaluate(ds, None, part="val", protocols=("full",), baselines=["rp3beta"], baseline_matrices={"rp3beta": W})
    h_ptr, h_items = history_csr(ds, "val")
    g_ptr, g_items = heldout_csr(ds, "val")
    H = np.zeros((ds.num_users, ds.num_items))
    for u in range(ds.num_users):
        H[u, h_items[h_ptr[u]:h_ptr[u + 1]]] = 1
    S = H @ W.toarray()
    S[H > 0] = -np.inf
    recalls = []
    for u in range(ds.num_users):
        gt = set(g_items[g_ptr[u]:g_ptr[u + 1]].tolist())
        if not gt:
            continue
        top = np.argsort(-S[u], kind="stable")[:20]
        recalls.append(len(gt & set(top.tolist())) / len(gt))
    assert res["rp3beta/full/recall@20"] == pytest.approx(np.mean(recalls), abs=0.02)  # ties may differ
    # and exactly, through the one ranking function both the model and the baselines use
    exact = full_ranking_from_scorer(lambda u: torch.from_numpy(S[u.numpy()].astype(np.float32)).clone(),
                                     g_ptr, g_items, ks=(20,), exclude_ptr=h_ptr, exclude_items=h_items)
    assert res["rp3beta/full/recall@20"] == pytest.approx(exact["recall@20"], abs=1e-6)


def test_pixie_is_the_walk_sampler_visit_counts(synthetic):
    g = synthetic.train_graph
    W = pixie_matrix(g, num_walks=50, top_t=7, seed=3)
    assert sp.issparse(W) and W.shape == (g.num_items, g.num_items)
    ptr, items, counts = visit_ranking(g.item_ptr, g.item_users, g.user_ptr, g.user_items, np.array([5]),
                                       num_walks=50, walk_length=2, restart_prob=0.5, max_rank=7, seed=3)
    row = W[5].toarray()[0]
    np.testing.assert_allclose(row[items], counts / counts.sum(), rtol=1e-6)
    assert (row > 0).sum() == items.size <= 7
    # the popularity discount divides column j by degree_j^beta
    Wb = pixie_matrix(g, num_walks=50, top_t=7, seed=3, beta=0.5)
    deg = np.maximum(g.item_degree(), 1).astype(float)
    np.testing.assert_allclose(Wb[5].toarray()[0][items], row[items] / deg[items] ** 0.5, rtol=1e-5)


def test_the_record_beside_the_cache_gives_the_settings(synthetic, tmp_path, capsys):
    ds = synthetic
    path = bl.record_path(ds)
    assert path is not None and path.name == ds.cache_path.name + ".baselines.json"
    assert path.parent == ds.cache_path.parent
    if path.exists():
        path.unlink()
    assert bl.settings(ds, "rp3beta") == ({"alpha": 1.0, "beta": 0.5, "k": 200}, "untuned defaults")
    res = evaluate(ds, None, part="val", protocols=("full",), baselines=["rp3beta"])
    assert res["baseline_settings"]["rp3beta"]["source"] == "untuned defaults"
    assert "rp3beta" in capsys.readouterr().err.split("untuned defaults")[1]
    from app.baselines_command import tune

    entry = tune(ds, "rp3beta", grid={"alpha": [0.7], "beta": [0.25], "k": [50]})
    assert entry["params"] == {"alpha": 0.7, "beta": 0.25, "k": 50} and len(entry["grid"]) == 1
    bl.write_record(path, ds, bl.history_label(None), "rp3beta", entry)
    assert not list(path.parent.glob(f".{path.name}*"))  # no temp file left
    params, source = bl.settings(ds, "rp3beta", history=bl.history_label(None))
    assert params == {"alpha": 0.7, "beta": 0.25, "k": 50} and source.startswith(f"tuned on validation ({path}")
    assert resolve_params("rp3beta", {"k": 10}, ds)["k"] == 10  # the caller wins
    # a recency-pooled evaluation finds no setting tuned for that pooling: untuned, and says so
    assert bl.settings(ds, "rp3beta", history=bl.history_label(3.0))[1] == "untuned defaults"
    res = evaluate(ds, None, part="val", protocols=("full",), baselines=["rp3beta", "itemknn"])
    assert res["baseline_settings"]["rp3beta"] == {"params": params, "source": source}
    assert res["baseline_settings"]["itemknn"]["source"] == "untuned defaults"
    assert res["rp3beta/full/recall@20"] == pytest.approx(entry["val_recall@20"], abs=1e-5)
    err = capsys.readouterr().err
    assert f"tuned on validation ({path}" in err and "untuned defaults: itemknn" in err
    path.unlink()


def test_grids_and_names_are_checked_at_the_edge():
    with pytest.raises(ValueError, match="model 'knn'"):
        bl.check_grid({"knn": {"k": [1]}})
    with pytest.raises(ValueError, match=r"parameter 'lambda': choose from \['lam'\]"):
        bl.check_grid({"ease": {"lambda": [1.0]}})
    with pytest.raises(ValueError, match="non-empty list"):
        bl.check_grid({"ease": {"lam": 3.0}})
    with pytest.raises(ValueError, match="'foo' is not known"):
        bl.check_names(["itemknn", "foo"])
    assert set(bl.MATRIX_BASELINES) == {"itemknn", "rp3beta", "ease", "pixie", "gfcf"}
    assert set(bl.ALL_BASELINES) == set(bl.MATRIX_BASELINES) | {"random", "popularity", "cooccurrence"}


def test_bad_baseline_input(synthetic):
    with pytest.raises(ValueError, match=r"\['lambda'\] are not valid"):
        evaluate(synthetic, None, baselines=["ease"], baseline_params={"ease": {"lambda": 3.0}})
    with pytest.raises(ValueError, match="baseline_params has 'popularity'"):
        evaluate(synthetic, None, baselines=["popularity"], baseline_params={"popularity": {}})
    with pytest.raises(ValueError, match="k=-1 is invalid"):
        evaluate(synthetic, None, protocols=("item",), baselines=["itemknn"], baseline_params={"itemknn": {"k": -1}})
    emb = torch.randn(synthetic.num_items, 4)
    with pytest.raises(ValueError, match="user_emb has shape"):
        evaluate(synthetic, emb, user_emb=torch.randn(3, 4))


def test_user_embeddings_replace_the_history_profile(synthetic):
    ds = synthetic
    torch.manual_seed(0)
    item = torch.randn(ds.num_items, 8)
    user = torch.randn(ds.num_users, 8)
    a = evaluate(ds, item, part="test", protocols=("full",), baselines=[], model_name="m", user_emb=user)
    g_ptr, g_items = heldout_csr(ds, "test")
    h_ptr, h_items = history_csr(ds, "test")
    exact = full_ranking_from_scorer(lambda u: user[u] @ item.t(), g_ptr, g_items, ks=(20,),
                                     exclude_ptr=h_ptr, exclude_items=h_items)
    assert a["m/full/recall@20"] == pytest.approx(exact["recall@20"])
    b = evaluate(ds, item, part="test", protocols=("full",), baselines=[], model_name="m")
    assert a["m/full/recall@20"] != b["m/full/recall@20"]
