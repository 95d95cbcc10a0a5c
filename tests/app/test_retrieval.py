"""app.retrieval: exact / HNSW / IVF-PQ indexes, exclusion, atomic save, safe load, k validation."""

from __future__ import annotations

import os

import faiss
import numpy as np
import pytest

from app import retrieval
from app.retrieval import (
    build_index,
    index_kind,
    load_index,
    neighbour_table,
    recall_at_k,
    save_index,
    search,
    set_search_params,
)


def _clustered(n: int, d: int, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((clusters, d)).astype(np.float32)
    x = c[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data():
    x = _clustered(4000, 32, 40, seed=0)
    q = _clustered(200, 32, 40, seed=1)
    return x, q


def _brute(x, q, k):
    s = q @ x.T
    ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, ids, axis=1), ids


@pytest.fixture(scope="module")
def indexes(data):
    x, _ = data
    return {
        "exact": build_index(x, "exact"),
        "hnsw": build_index(x, "hnsw", M=16, efConstruction=100, efSearch=128),
        "ivfpq": build_index(x, "ivfpq", nlist=32, m=8, nbits=6, nprobe=8, k_factor=10),
    }


# ----------------------------------------------------------------------------------- search


def test_exact_search_equals_numpy_brute_force(data, indexes):
    x, q = data
    scores, ids = search(indexes["exact"], q, 10)
    ref_s, ref_ids = _brute(x, q, 10)
    assert ids.shape == (200, 10) and ids.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_allclose(scores, ref_s, rtol=0, atol=1e-5)
    # ids agree except where two scores tie to float precision
    same = ids == ref_ids
    assert same.mean() > 0.99
    np.testing.assert_allclose(np.take_along_axis(q @ x.T, ids, 1), ref_s, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_approximate_recall_is_high(data, indexes, kind):
    x, q = data
    _, exact_ids = _brute(x, q, 10)
    _, ids = search(indexes[kind], q, 10)
    assert index_kind(indexes[kind]) == kind
    assert recall_at_k(ids, exact_ids, 10) >= 0.9


def test_search_knob_changes_recall(data):
    x, q = data
    index = build_index(x, "ivfpq", nlist=64, m=8, nbits=6, nprobe=1, k_factor=1)
    _, exact_ids = _brute(x, q, 10)
    low = recall_at_k(search(index, q, 10)[1], exact_ids, 10)
    set_search_params(index, nprobe=32, k_factor=10)
    high = recall_at_k(search(index, q, 10)[1], exact_ids, 10)
    assert high > low and high >= 0.9


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivfpq"])
def test_query_never_returns_itself_or_excluded_ids(data, indexes, kind):
    x, _ = data
    qi = np.arange(0, 4000, 40)  # database rows as queries: each is its own nearest neighbour
    seen = [set(range(i + 1, i + 6)) | {int(i)} for i in qi]
    _, top = search(indexes[kind], x[qi], 10)
    assert np.mean([i in row for i, row in zip(qi, top)]) > 0.9  # without exclusion the item finds itself
    _, ids = search(indexes[kind], x[qi], 10, exclude=seen)
    for row, ex in zip(ids, seen):
        assert not (set(row.tolist()) & ex)
        assert (row >= 0).all() and len(set(row.tolist())) == 10
    # the CSR form gives the same answer
    indptr = np.concatenate([[0], np.cumsum([len(s) for s in seen])])
    indices = np.concatenate([sorted(s) for s in seen])
    _, ids_csr = search(indexes[kind], x[qi], 10, exclude=(indptr, indices))
    np.testing.assert_array_equal(ids, ids_csr)


def test_exclusion_matches_filtered_brute_force(data, indexes):
    x, q = data
    rng = np.random.default_rng(3)
    _, ref = _brute(x, q[:20], 60)
    excl = [rng.choice(ref[i, :30], size=25, replace=False) for i in range(20)]  # drop most of the top
    _, ids = search(indexes["exact"], q[:20], 10, exclude=excl)
    for i in range(20):
        expect = [j for j in ref[i] if j not in set(excl[i].tolist())][:10]
        assert ids[i].tolist() == expect


# ----------------------------------------------------------------------------------- k / input validation


@pytest.mark.parametrize("k", [0, -1, 4001, 2.5, True])
def test_bad_k_is_a_clear_error(data, indexes, k):
    _, q = data
    with pytest.raises(ValueError, match=r"k=.* is invalid: must be an integer in \[1, 4000\]"):
        search(indexes["exact"], q, k)


def test_k_bound_accounts_for_excluded_ids(data, indexes):
    x, _ = data
    small = build_index(x[:20], "exact")
    _, ids = search(small, x[:2], 18, exclude=[[0, 1], [1]])
    assert set(ids[0].tolist()) == set(range(2, 20))
    with pytest.raises(ValueError, match=r"k=19 is invalid: must be an integer in \[1, 18\].*2 excluded"):
        search(small, x[:2], 19, exclude=[[0, 1], [1]])
    with pytest.raises(ValueError, match="outside the catalogue"):
        search(small, x[:1], 3, exclude=[[20]])
    with pytest.raises(ValueError, match="one list per query"):
        search(small, x[:2], 3, exclude=[[0]])


def test_query_dimension_and_params_are_validated(data, indexes):
    x, _ = data
    with pytest.raises(ValueError, match="queries dimension 16 != index dimension 32"):
        search(indexes["exact"], x[:3, :16], 5)
    with pytest.raises(ValueError, match=r"kind='annoy' is invalid: choose one of exact, hnsw, ivfpq"):
        build_index(x, "annoy")
    with pytest.raises(ValueError, match="unknown parameter.*nprobe.*valid parameters are M, efConstruction, efSearch"):
        build_index(x, "hnsw", nprobe=4)
    with pytest.raises(ValueError, match="m=5 is invalid: the dimension 32 must be divisible by m"):
        build_index(x, "ivfpq", m=5)
    with pytest.raises(ValueError, match="NaN"):
        build_index(np.full((3, 4), np.nan, dtype=np.float32), "exact")


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivfpq"])
def test_neighbour_table_is_the_search_answer_precomputed(data, indexes, kind):
    x, _ = data
    table = neighbour_table(indexes[kind], x, 12, batch=700)
    assert table.shape == (len(x), 12) and table.dtype == np.int32
    rows = np.arange(0, len(x), 37)
    _, ids = search(indexes[kind], x[rows], 12, exclude=[[i] for i in rows])
    np.testing.assert_array_equal(table[rows], ids)
    assert not (table == np.arange(len(x))[:, None]).any()  # never the item itself
    with pytest.raises(ValueError, match="index holds"):
        neighbour_table(indexes[kind], x[:10], 3)


def test_recall_at_k():
    assert recall_at_k(np.array([[1, 2, 3]]), np.array([[3, 2, 1]]), 3) == 1.0
    assert recall_at_k(np.array([[1, 2, -1], [4, 5, 6]]), np.array([[1, 9, 8], [6, 5, 4]]), 3) == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="k=4 is invalid"):
        recall_at_k(np.zeros((1, 3)), np.zeros((1, 3)), 4)


# ----------------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivfpq"])
def test_save_load_roundtrip_keeps_results_and_search_params(data, indexes, kind, tmp_path):
    x, q = data
    path = save_index(indexes[kind], tmp_path / "index.faiss")
    assert sorted(os.listdir(tmp_path)) == ["index.faiss"]
    back = load_index(path, expected_dim=32, expected_count=4000)
    assert index_kind(back) == kind
    np.testing.assert_array_equal(search(back, q, 10)[1], search(indexes[kind], q, 10)[1])


def test_failed_write_leaves_no_file_and_no_temp(data, indexes, tmp_path, monkeypatch):
    def half_then_fail(f, view, chunk=1 << 24):
        f.write(view[: len(view) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(retrieval, "_write_bytes", half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        save_index(indexes["exact"], tmp_path / "index.faiss")
    assert os.listdir(tmp_path) == []


def test_failed_rename_keeps_previous_index(data, indexes, tmp_path, monkeypatch):
    path = tmp_path / "index.faiss"
    save_index(indexes["exact"], path)
    before = path.read_bytes()

    def boom(src, dst):
        raise OSError("rename interrupted")

    monkeypatch.setattr(retrieval.os, "replace", boom)
    with pytest.raises(OSError, match="rename interrupted"):
        save_index(indexes["hnsw"], path)
    assert os.listdir(tmp_path) == ["index.faiss"] and path.read_bytes() == before


def test_interrupt_during_write_cleans_up(data, indexes, tmp_path, monkeypatch):
    def interrupted(f, view, chunk=1 << 24):
        f.write(view[:100])
        raise KeyboardInterrupt

    monkeypatch.setattr(retrieval, "_write_bytes", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_index(indexes["exact"], tmp_path / "index.faiss")
    assert os.listdir(tmp_path) == []


def test_missing_truncated_and_corrupt_files_are_clear_errors(data, indexes, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_index(tmp_path / "nope.faiss")
    with pytest.raises(FileNotFoundError, match="folder .* does not exist"):
        save_index(indexes["exact"], tmp_path / "no_dir" / "index.faiss")
    for kind in ("exact", "hnsw", "ivfpq"):
        full = faiss.serialize_index(indexes[kind]).tobytes()
        for cut in (len(full) // 2, len(full) - 3, 10):
            p = tmp_path / f"{kind}-{cut}.faiss"
            p.write_bytes(full[:cut])
            with pytest.raises(ValueError, match="truncated or corrupt"):
                load_index(p)
    empty = tmp_path / "empty.faiss"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        load_index(empty)
    junk = tmp_path / "junk.faiss"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_index(junk)


def test_dimension_and_count_mismatch_are_clear_errors(data, tmp_path):
    x, _ = data
    path = save_index(build_index(x[:100, :16] * 1.0, "exact"), tmp_path / "index.faiss")
    with pytest.raises(ValueError, match=r"index dimension 16 != embedding dimension 32: rebuild the index"):
        load_index(path, expected_dim=32)
    with pytest.raises(ValueError, match=r"index holds 100 vectors != 4000 embeddings: rebuild the index"):
        load_index(path, expected_dim=16, expected_count=4000)
