"""Predict's memory-bounded writers give the artifacts the whole-array code gave (issue 19 item 3):
``users.npz`` streamed without a second whole-log graph, the FAISS index added in batches and
saved without a serialised copy, and no hard-negative miner for ``setup('predict')``."""

from __future__ import annotations

import io
import zipfile
from types import SimpleNamespace

import faiss
import numpy as np
import pytest
import torch

from app import retrieval
from app.artifacts import _write_users
from datamodules import chunks
from datamodules.graph import InteractionGraph


def _reference_users(path, inter, encoder):
    """``users.npz`` as predict wrote it before: a graph of the whole log, then ``np.savez``."""
    full = InteractionGraph.from_edges(inter.users, inter.items, inter.num_users, inter.num_items,
                                       timestamps=inter.timestamps)
    np.savez(path, user_ids=np.asarray(inter.user_ids).astype(str), ptr=full.user_ptr,
             items=full.user_items.astype(np.int64), encoder=encoder)


def _log(grouped: bool, timestamps: bool, ids: str, seed: int = 0, n: int = 5000, users: int = 300):
    rng = np.random.default_rng(seed)
    u = rng.integers(0, users, n)
    u[:users] = np.arange(users)  # every user present
    if grouped:
        u = np.sort(u)
    ts = rng.integers(0, 50, n) if timestamps else None  # many ties: the log position decides them
    if grouped and ts is not None:
        ts = ts[np.lexsort((ts, u))]
    raw = np.arange(users, dtype=np.int64) * 7 + 100 if ids == "int" else np.array([f"u{i}" for i in range(users)], dtype=object)
    return SimpleNamespace(users=u, items=rng.integers(0, 200, n), timestamps=ts, num_users=users, num_items=200,
                           user_ids=raw)


@pytest.mark.parametrize("grouped,timestamps,ids", [(True, False, "int"), (False, True, "int"),
                                                    (False, False, "str"), (True, True, "str")])
def test_users_npz_holds_the_bytes_of_the_whole_log_graph(tmp_path, monkeypatch, grouped, timestamps, ids):
    monkeypatch.setattr(chunks, "ROWS", 777)  # many chunks, boundaries inside users
    inter = _log(grouped, timestamps, ids)
    lin = torch.nn.Linear(4, 4, bias=False)
    module = SimpleNamespace(user_encoder=SimpleNamespace(lin=lin))
    ref = tmp_path / "ref.npz"
    _reference_users(ref, inter, lin.weight.detach().numpy().astype(np.float32))

    def no_graph(*a, **k):
        raise AssertionError("users.npz must not build a second graph of the whole log")

    monkeypatch.setattr(InteractionGraph, "from_edges", no_graph)
    _write_users(tmp_path, SimpleNamespace(interactions=inter), module, 4)
    with zipfile.ZipFile(tmp_path / "users.npz") as new, zipfile.ZipFile(ref) as old:
        assert new.namelist() == old.namelist() == ["user_ids.npy", "ptr.npy", "items.npy", "encoder.npy"]
        for name in old.namelist():  # each member byte for byte: header, dtype, order
            assert new.read(name) == old.read(name), name
    got = np.load(tmp_path / "users.npz")
    assert got["items"].dtype == np.int64 and got["items"].shape == (5000,)


def test_users_npz_order_is_time_then_log_position(tmp_path):
    inter = SimpleNamespace(users=np.array([1, 0, 1, 1, 0]), items=np.array([10, 11, 12, 13, 14]),
                            timestamps=np.array([5, 3, 1, 5, 3]), num_users=2, num_items=20,
                            user_ids=np.array([7, 8]))
    _write_users(tmp_path, SimpleNamespace(interactions=inter), SimpleNamespace(user_encoder=SimpleNamespace(lin=None)), 3)
    got = np.load(tmp_path / "users.npz")
    assert got["ptr"].tolist() == [0, 2, 5] and got["items"].tolist() == [11, 14, 12, 10, 13]
    assert got["user_ids"].tolist() == ["7", "8"] and np.array_equal(got["encoder"], np.eye(3, dtype=np.float32))


def _vectors(n=3000, d=16, seed=1):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["exact", "ivfpq"])
def test_batched_add_builds_the_one_call_index(tmp_path, monkeypatch, kind):
    x = _vectors()
    np.save(tmp_path / "e.npy", x)
    params = {"train_size": 2000} if kind == "ivfpq" else {}
    one = faiss.serialize_index(retrieval.build_index(x, kind, **params))
    monkeypatch.setattr(retrieval, "_ROWS", 250)  # 12 batches
    mapped = np.load(tmp_path / "e.npy", mmap_mode="r")
    batched = retrieval.build_index(mapped, kind, **params)
    assert batched.ntotal == 3000
    assert faiss.serialize_index(batched).tobytes() == one.tobytes()


def test_streamed_save_writes_the_serialised_bytes(tmp_path, monkeypatch):
    index = retrieval.build_index(_vectors(), "ivfpq", train_size=2000)
    want = faiss.serialize_index(index).tobytes()

    def no_copy(*a, **k):
        raise AssertionError("save_index must not hold a serialised copy of the whole index")

    monkeypatch.setattr(faiss, "serialize_index", no_copy)
    path = retrieval.save_index(index, tmp_path / "index.faiss")
    assert path.read_bytes() == want
    blocks = []
    retrieval._stream_index(index, SimpleNamespace(write=lambda b: blocks.append(len(b))))
    assert len(blocks) > 1  # streamed in pieces, not one serialised copy


def test_stream_failure_surfaces_the_callers_error(tmp_path, monkeypatch):
    def fail(f, view):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(retrieval, "_write_bytes", fail)
    with pytest.raises(OSError, match="No space left"):
        retrieval._stream_index(retrieval.build_index(_vectors(), "exact"), io.BytesIO())


def test_nonfinite_rows_found_in_any_chunk(monkeypatch):
    monkeypatch.setattr(retrieval, "_ROWS", 100)
    x = _vectors()
    x[2999, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        retrieval.build_index(x, "exact")


def test_predict_setup_builds_no_miner_nor_pairs_and_fit_setup_then_does(small_synthetic, cache_dir):
    from datamodules.datamodule import PinSageDataModule

    dm = PinSageDataModule(dataset="synthetic", cache_dir=str(cache_dir), num_workers=0, max_hard_negatives=2,
                           reader_args=dict(num_users=400, num_items=300, num_interactions=6000, num_communities=6,
                                            feature_dim=8, seed=0))
    dm.setup("predict")
    assert dm._miner is None and dm._pairs is None and dm.dataset is not None
    dm.setup("fit")
    assert dm._miner is not None and dm._pairs is not None and dm.hard_negative_ranks is not None
