import numpy as np
import pytest

from datamodules.interactions import Interactions
from datamodules.splits import consecutive_pairs, fixed_split, heldout_pairs, make_split, temporal_leave_last_out


def _log():
    # user 0: a(t=3) b(t=1) c(t=2) d(t=5)  -> time order b c a d
    # user 1: a(t=1) e(t=2)                -> too short for held-out items
    users = np.array([0, 0, 0, 0, 1, 1])
    items = np.array([10, 11, 12, 13, 10, 14])
    ts = np.array([3, 1, 2, 5, 1, 2])
    return Interactions.from_raw(users, items, timestamps=ts)


def test_temporal_leave_last_out_and_pairs():
    inter = _log()
    sp = temporal_leave_last_out(inter)
    item = lambda rows: inter.item_ids[inter.items[rows]].tolist()  # noqa: E731
    assert item(sp.test) == [13] and item(sp.val) == [10]
    assert sorted(item(sp.train)) == [10, 11, 12, 14]  # user 1 keeps both
    tp = inter.item_ids[consecutive_pairs(inter, sp.train)].tolist()
    assert [11, 12] in tp and [10, 14] in tp and len(tp) == 2  # held-out a, d never paired in train
    vp = inter.item_ids[heldout_pairs(inter, sp.train, sp.val)].tolist()
    assert vp == [[12, 10]]
    tp2 = inter.item_ids[heldout_pairs(inter, np.concatenate([sp.train, sp.val]), sp.test)].tolist()
    assert tp2 == [[10, 13]]


def test_no_leakage_on_synthetic(small_synthetic):
    ds = small_synthetic
    g = ds.train_graph
    train_edges = set(zip(g.edge_users().tolist(), g.user_items.tolist()))
    for part in ("val", "test"):
        u, i = ds.split_user_items(part)
        assert u.size > 0
        assert not (set(zip(u.tolist(), i.tolist())) & train_edges), part
    assert g.num_edges == ds.split.train.size
    # every training pair is an edge pair of the same user in the training graph
    items_of = {u: set(g.items_of(u).tolist()) for u in range(g.num_users)}
    q, i = ds.train_pairs[:200].T
    assert all(any(a in s and b in s for s in items_of.values()) for a, b in zip(q.tolist(), i.tolist()))


def test_fixed_split_keeps_test_and_carves_val():
    users = np.array([0, 0, 0, 0, 0, 1, 1])
    items = np.array([1, 2, 3, 4, 5, 1, 2])
    is_test = np.array([0, 0, 0, 0, 1, 0, 1], dtype=bool)
    inter = Interactions.from_raw(users, items, is_test=is_test)
    sp = fixed_split(inter)
    assert inter.items[sp.test].tolist() == [4, 1]  # dense ids of raw 5 and 2
    assert inter.items[sp.val].tolist() == [3]  # last training row of user 0 (raw item 4)
    with pytest.raises(ValueError, match="split='fixed'"):
        make_split(Interactions.from_raw(users, items), "fixed")
    with pytest.raises(ValueError, match="split='nope'"):
        make_split(inter, "nope")
