"""The chunked cold build (datamodules.chunks; splits, graph, features, the streaming cache writer)
gives exactly the arrays of the previous whole-log build, here re-implemented as a compact oracle
(the code of commit 15638ff: global lexsorts, the struct searchsorted, np.mean/np.std of the whole
feature matrix). Chunks are shrunk to a few rows so every pass crosses many chunk boundaries."""

from __future__ import annotations

import numpy as np
import pytest

from datamodules import chunks, features
from datamodules.datasets import build_dataset, load_dataset
from datamodules.interactions import Interactions
from datamodules.synthetic import make_synthetic


# -- the oracle: the previous build, whole-log --------------------------------------------------
def _rng(seed, salt):
    return np.random.default_rng(np.random.SeedSequence([int(seed), salt]))


def _order(inter, rows=None):
    rows = np.arange(inter.num_interactions) if rows is None else np.asarray(rows, dtype=np.int64)
    keys = [rows, inter.users[rows]] if inter.timestamps is None else [rows, inter.timestamps[rows], inter.users[rows]]
    return rows[np.lexsort(keys)]


def _from_end(u):
    n = u.shape[0]
    is_end = np.ones(n, dtype=bool)
    is_end[:-1] = u[1:] != u[:-1]
    end_idx = np.flatnonzero(is_end)
    return np.repeat(end_idx, np.diff(np.concatenate([[-1], end_idx]))) - np.arange(n) + 1


def _run_length(u):
    _, counts = np.unique(u, return_counts=True)
    return np.repeat(counts, counts)


def _last_two(inter, order, m=3):
    u = inter.users[order]
    fe, el = _from_end(u), _run_length(u) >= m
    return np.sort(order[~(el & (fe <= 2))]), np.sort(order[el & (fe == 2)]), np.sort(order[el & (fe == 1)])


def _split(inter, kind, seed):
    if kind == "temporal":
        return _last_two(inter, _order(inter))
    if kind == "random":
        key = _rng(seed, 0x5B117).random(inter.num_interactions)
        return _last_two(inter, np.lexsort((key, inter.users)))
    test = np.flatnonzero(inter.is_test)
    train_rows = np.flatnonzero(~inter.is_test)
    if inter.timestamps is not None:
        order = _order(inter, train_rows)
    else:
        key = _rng(seed, 0x7A1).random(inter.num_interactions)[train_rows]
        order = train_rows[np.lexsort((key, inter.users[train_rows]))]
    u = inter.users[order]
    val_mask = (_run_length(u) >= 3) & (_from_end(u) == 1)
    return np.sort(order[~val_mask]), np.sort(order[val_mask]), test


def _consecutive(inter, rows):
    o = _order(inter, rows)
    u, it = inter.users[o], inter.items[o]
    same = u[1:] == u[:-1]
    p = np.stack([it[:-1][same], it[1:][same]], axis=1)
    return p[p[:, 0] != p[:, 1]]


def _heldout(inter, ctx_rows, held):
    if held.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    ctx, t = _order(inter, ctx_rows), inter.timestamps
    key = lambda r: r.astype(np.int64) if t is None else t[r] * np.int64(inter.num_interactions + 1) + r  # noqa: E731
    cu, ck, hu, hk = inter.users[ctx], key(ctx), inter.users[held], key(held)
    oh = np.lexsort((hk, hu))
    hu, hk, hrows = hu[oh], hk[oh], held[oh]
    c = np.empty(ctx.size, dtype=[("u", np.int64), ("k", np.int64)])
    c["u"], c["k"] = cu, ck
    h = np.empty(hrows.size, dtype=[("u", np.int64), ("k", np.int64)])
    h["u"], h["k"] = hu, hk
    pos = np.searchsorted(c, h, side="left") - 1
    ok = (pos >= 0) & (cu[np.clip(pos, 0, None)] == hu)
    p = np.stack([inter.items[ctx[pos[ok]]], inter.items[hrows[ok]]], axis=1)
    return p[p[:, 0] != p[:, 1]]


def _random_heldout(inter, ctx, held, seed, salt):
    if held.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    ctx = ctx[np.lexsort((ctx, inter.users[ctx]))]
    ptr = np.zeros(inter.num_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(inter.users[ctx], minlength=inter.num_users), out=ptr[1:])
    hrows = np.sort(held)
    hu = inter.users[hrows]
    count = ptr[hu + 1] - ptr[hu]
    ok = count > 0
    r = _rng(seed, 0x9E7 + salt).random(hrows.size)
    pick = np.minimum((r * count).astype(np.int64), np.maximum(count - 1, 0))
    p = np.stack([inter.items[ctx[(ptr[hu] + pick)[ok]]], inter.items[hrows[ok]]], axis=1)
    return p[p[:, 0] != p[:, 1]]


def _graph(users, items, nu, ni, ts=None, w=None):
    perm = np.argsort(users, kind="stable") if ts is None else np.lexsort((ts, users))
    uptr = np.zeros(nu + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=nu), out=uptr[1:])
    ui = items[perm]
    us = users[perm]
    iperm = np.lexsort((us, ui))
    iptr = np.zeros(ni + 1, dtype=np.int64)
    np.cumsum(np.bincount(ui, minlength=ni), out=iptr[1:])
    out = {"graph_user_ptr": uptr, "graph_user_items": ui.astype(np.int32), "graph_item_ptr": iptr,
           "graph_item_users": us[iperm].astype(np.int32), "graph_item_to_user_edge": iperm.astype(np.int64)}
    if ts is not None:
        out["graph_timestamps"] = ts[perm].astype(np.int64)
    if w is not None:
        out["graph_weights"] = w[perm].astype(np.float32)
    return out


def _features(inter, deg, external):
    x = np.concatenate([np.log1p(deg.astype(np.float64))[:, None], np.asarray(external, dtype=np.float64)], axis=1)
    is_bin = np.zeros(x.shape[1], dtype=bool) | ((x == 0) | (x == 1)).all(axis=0)
    sub = x[:, ~is_bin]
    mean, std = sub.mean(axis=0), sub.std(axis=0)
    const = std < 1e-12
    z = (sub - mean) / np.where(const, 1.0, std)
    z[:, const] = 0.0
    x[:, ~is_bin] = z
    return x.astype(np.float32)


def oracle(inter, kind, seed, external):
    train, val, test = _split(inter, kind, seed)
    ordered = kind == "temporal" or (kind == "fixed" and inter.timestamps is not None)
    ctx = np.concatenate([train, val])
    if ordered:
        vp, tp = _heldout(inter, train, val), _heldout(inter, ctx, test)
    else:
        vp, tp = _random_heldout(inter, train, val, seed, 1), _random_heldout(inter, ctx, test, seed, 2)
    g = _graph(inter.users[train], inter.items[train], inter.num_users, inter.num_items,
               None if inter.timestamps is None else inter.timestamps[train],
               None if inter.weights is None else inter.weights[train])
    out = {"split_train": train, "split_val": val, "split_test": test, "train_pairs": _consecutive(inter, train),
           "val_pairs": vp, "test_pairs": tp, **g}
    out["item_features"] = _features(inter, np.diff(g["graph_item_ptr"]), external)
    return out


# -- the comparison -----------------------------------------------------------------------------
SIZES = dict(num_users=300, num_items=200, num_interactions=5000, num_communities=5, feature_dim=4)


def _logs():
    """(name, interactions, external features, split kind): the scale run's grouped log without
    timestamps, a shuffled log with timestamps (the sorting path), weights and a fixed split."""
    grouped, gx, _ = make_synthetic(**SIZES, seed=3, method="per-user", timestamps=False)
    shuffled, sx, _ = make_synthetic(**SIZES, seed=4)
    rng = np.random.default_rng(0)
    n = shuffled.num_interactions
    ts = rng.integers(0, 50, n)  # ties in time: file order breaks them
    weighted = Interactions(users=shuffled.users, items=shuffled.items, user_ids=shuffled.user_ids,
                            item_ids=shuffled.item_ids, timestamps=ts, weights=rng.random(n).astype(np.float32),
                            is_test=rng.random(n) < 0.1)
    no_ts = Interactions(users=weighted.users, items=weighted.items, user_ids=weighted.user_ids,
                         item_ids=weighted.item_ids, is_test=weighted.is_test)
    # the first log takes the no-sort paths (already in user-time order), the others the sorts
    assert chunks.in_group_order(grouped.users, grouped.timestamps)
    assert not chunks.in_group_order(shuffled.users, shuffled.timestamps)
    return [("grouped-temporal", grouped, gx, "temporal"), ("grouped-random", grouped, gx, "random"),
            ("shuffled-temporal", shuffled, sx, "temporal"), ("weighted-fixed", weighted, sx, "fixed"),
            ("fixed-without-timestamps", no_ts, sx, "fixed"), ("shuffled-random", no_ts, sx, "random")]


@pytest.mark.parametrize("rows", [7, 1000, chunks.ROWS])
def test_chunked_build_equals_the_whole_log_build(monkeypatch, rows):
    monkeypatch.setattr(chunks, "ROWS", rows)
    for name, inter, x, kind in _logs():
        want = oracle(inter, kind, 5, x)
        got = build_dataset(name, inter, split=kind, split_seed=5, features=["log_degree", "external"],
                            external=x).to_arrays()
        for k, v in want.items():
            assert got[k].dtype == v.dtype and got[k].shape == v.shape, (name, k, got[k].shape, v.shape)
            assert np.array_equal(got[k], v), (name, rows, k)


def test_feature_chunks_change_only_rounding(monkeypatch):
    inter, x, _ = make_synthetic(**SIZES, seed=3, method="per-user", timestamps=False)
    want = oracle(inter, "temporal", 0, x)["item_features"]
    monkeypatch.setattr(features, "FEATURE_ROWS", 17)
    got = build_dataset("f", inter, split="temporal", features=["log_degree", "external"], external=x).item_features
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_streamed_cache_equals_the_oracle(tmp_path, monkeypatch):
    """The cold build through the cache (arrays streamed into the temp folder, then published)
    and its memory-mapped reload give the oracle's arrays."""
    monkeypatch.setattr(chunks, "ROWS", 101)
    ra = dict(**SIZES, seed=3, method="per-user", timestamps=False)
    ds = load_dataset("synthetic", cache_dir=str(tmp_path), reader_args=ra, split="temporal")
    inter, x, _ = make_synthetic(**ra)
    want = oracle(inter, "temporal", 0, x)
    got = ds.to_arrays()
    assert isinstance(got["graph_item_users"], np.memmap)
    for k, v in want.items():
        assert np.array_equal(got[k], v), k
    assert np.array_equal(got["users"], inter.users) and np.array_equal(got["items"], inter.items)
    assert not list(tmp_path.glob(".*tmp*"))
