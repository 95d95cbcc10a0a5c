"""The cold-item holdout: which items, which rows are early engagements and which are cases, and
that training never sees a cold item interact."""

import numpy as np
import pytest

from datamodules.cold import check_cold, cold_holdout
from datamodules.datasets import build_dataset
from datamodules.interactions import Interactions


def _log(seed=0, users=60, items=40, n=900, timestamps=True):
    rng = np.random.default_rng(seed)
    u = rng.integers(0, users, n)
    i = np.minimum(rng.zipf(1.6, n) - 1, items - 1)
    ts = rng.permutation(n) if timestamps else None
    return Interactions.from_raw(u, i, timestamps=ts)


def test_holdout_picks_items_with_cases_and_splits_their_rows_in_time_order():
    inter = _log()
    cold, early, cases = cold_holdout(inter, 0.1, engagements=3, seed=0)
    count = np.bincount(inter.items, minlength=inter.num_items)
    assert cold.size == min(round(0.1 * inter.num_items), int((count > 3).sum())) and (count[cold] > 3).all()
    assert np.intersect1d(early, cases).size == 0
    rows = np.union1d(early, cases)
    np.testing.assert_array_equal(rows, np.flatnonzero(np.isin(inter.items, cold)))
    for c in cold:
        e = early[inter.items[early] == c]
        later = cases[inter.items[cases] == c]
        assert e.size == 3 and inter.timestamps[e].max() <= inter.timestamps[later].min()
    again = cold_holdout(inter, 0.1, engagements=3, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip((cold, early, cases), again))
    assert not np.array_equal(cold_holdout(inter, 0.1, engagements=3, seed=1)[0], cold)


def test_no_timestamps_orders_a_cold_item_rows_by_a_seeded_shuffle():
    inter = _log(timestamps=False)
    cold, early, cases = cold_holdout(inter, 0.1, engagements=2, seed=0)
    firsts = [early[inter.items[early] == c] for c in cold]
    assert all(f.size == 2 for f in firsts)
    # not simply the first rows in file order for every item
    in_file_order = [np.flatnonzero(inter.items == c)[:2] for c in cold]
    assert any(not np.array_equal(f, g) for f, g in zip(firsts, in_file_order))


@pytest.mark.parametrize("retrain", [False, True])
def test_training_never_sees_cold_rows_but_retraining_sees_the_early_ones(retrain):
    inter = _log()
    ds = build_dataset("synthetic", inter, split="temporal", features=["log_degree"], cold=(0.1, 3, retrain))
    cold, early = ds.extras["cold_items"], ds.extras["cold_early_rows"]
    for part in ("val", "test"):
        assert not np.isin(inter.items[getattr(ds.split, part)], cold).any()
    train_cold = np.asarray(ds.split.train)[np.isin(inter.items[ds.split.train], cold)]
    np.testing.assert_array_equal(np.sort(train_cold), early if retrain else np.zeros(0, dtype=np.int64))
    deg = ds.train_graph.item_degree()
    assert (deg[cold] == (3 if retrain else 0)).all()
    pairs = np.concatenate([ds.train_pairs, ds.val_pairs, ds.test_pairs])
    if not retrain:
        assert not np.isin(pairs, cold).any()
    else:  # held-out pairs never take a cold item as the target
        assert not np.isin(np.concatenate([ds.val_pairs, ds.test_pairs])[:, 1], cold).any()


def test_check_cold_names_the_argument():
    assert check_cold(0.1, 3) == (0.1, 3)
    with pytest.raises(ValueError, match=r"cold_items=1\.5 is invalid.*\[0, 1\)"):
        check_cold(1.5, 3)
    with pytest.raises(ValueError, match=r"cold_engagements=-1 is invalid"):
        check_cold(0.1, -1)


def test_new_item_degree_mean_or_predicted_from_content():
    """A new item's log-degree input: the mean (rows unchanged), or predicted from its other
    features (ridge over the engaged items), which the items without engagements then take."""
    from types import SimpleNamespace

    from datamodules.datamodule import PinSageDataModule

    rng = np.random.default_rng(0)
    other = rng.normal(size=(200, 3)).astype(np.float32)
    deg = np.where(np.arange(200) < 180, 5, 0)
    x = np.concatenate([(2 * other[:, :1]).clip(-3, 3), other], axis=1)  # log_degree follows column 1
    x[deg == 0, 0] = x[deg > 0, 0].mean()  # as the feature builder gives new items
    ds = SimpleNamespace(item_features=x, feature_names=["log_degree", "a", "b", "c"],
                         train_graph=SimpleNamespace(item_degree=lambda: deg))
    dm = PinSageDataModule(dataset="synthetic")
    got, (d, pred) = dm._new_item_inputs(ds)
    assert d == 0 and got is x and np.allclose(pred, x[deg > 0, 0].mean())
    dm = PinSageDataModule(dataset="synthetic", new_item_degree="content")
    got, (_, pred) = dm._new_item_inputs(ds)
    truth = 2 * other[:, 0]
    assert np.corrcoef(pred[deg == 0], truth[deg == 0])[0, 1] > 0.95
    np.testing.assert_allclose(got[deg == 0, 0], pred[deg == 0])
    np.testing.assert_array_equal(got[deg > 0], x[deg > 0])
    with pytest.raises(ValueError, match="new_item_degree='median' is not valid"):
        PinSageDataModule(dataset="synthetic", new_item_degree="median")
