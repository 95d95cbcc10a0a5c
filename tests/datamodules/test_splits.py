import numpy as np
import pytest

from datamodules.interactions import Interactions
from datamodules.splits import (consecutive_pairs, fixed_split, heldout_pairs, make_split, random_heldout_pairs,
                                random_leave_one_out, resolve_split, split_and_pairs, temporal_leave_last_out)


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
    ts = np.array([1, 2, 3, 4, 5, 1, 2])
    inter = Interactions.from_raw(users, items, is_test=is_test, timestamps=ts)
    sp = fixed_split(inter)
    assert inter.items[sp.test].tolist() == [4, 1]  # dense ids of raw 5 and 2
    assert inter.items[sp.val].tolist() == [3]  # latest training row of user 0 (raw item 4)
    # without timestamps: the published test rows stay, validation is a random training row
    inter = Interactions.from_raw(users, items, is_test=is_test)
    vals = set()
    for seed in range(20):
        sp = fixed_split(inter, seed=seed)
        assert inter.items[sp.test].tolist() == [4, 1]
        assert sp.val.size == 1 and inter.users[sp.val[0]] == 0 and not inter.is_test[sp.val[0]]
        assert np.array_equal(np.sort(np.concatenate([sp.train, sp.val])), np.flatnonzero(~inter.is_test))
        vals.add(int(inter.items[sp.val[0]]))
    assert vals == {0, 1, 2, 3}  # every training item of user 0 is drawn for some seed
    assert np.array_equal(fixed_split(inter, seed=3).val, fixed_split(inter, seed=3).val)
    with pytest.raises(ValueError, match="split='fixed'"):
        make_split(Interactions.from_raw(users, items), "fixed")
    with pytest.raises(ValueError, match="split='nope'"):
        make_split(inter, "nope")


def _sorted_by_item_log(num_users=300, seed=0):
    """A log without timestamps sorted by item id (as many public logs are), 5-30 items a user."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(num_users):
        its = rng.choice(500, size=int(rng.integers(5, 31)), replace=False)
        users += [u] * its.size
        items += its.tolist()
    users, items = np.array(users), np.array(items)
    order = np.argsort(items, kind="stable")
    return Interactions.from_raw(users[order], items[order])


def _is_user_max(inter, rows):
    top = np.full(inter.num_users, -1)
    np.maximum.at(top, inter.users, inter.items)
    return inter.items[rows] == top[inter.users[rows]]


def test_log_without_timestamps_sorted_by_item_gets_a_random_split():
    inter = _sorted_by_item_log()
    assert resolve_split("auto", inter) == "random"
    sp = make_split(inter, "auto", seed=0)
    # one test and one validation row per user, disjoint, the rest in training
    assert sp.test.size == sp.val.size == inter.num_users
    assert np.array_equal(np.sort(inter.users[sp.test]), np.arange(inter.num_users))
    assert np.array_equal(np.sort(np.concatenate([sp.train, sp.val, sp.test])), np.arange(inter.num_interactions))
    # held-out items are not the users' highest ids (file order would make all of them so)
    assert _is_user_max(inter, sp.test).mean() < 0.2 and _is_user_max(inter, sp.val).mean() < 0.2
    old = temporal_leave_last_out(inter)  # what "last row in file order" gives
    assert _is_user_max(inter, old.test).all()
    # seeded: same seed, same split; another seed, another split
    again = make_split(inter, "random", seed=0)
    assert np.array_equal(sp.test, again.test) and np.array_equal(sp.val, again.val)
    assert not np.array_equal(sp.test, make_split(inter, "random", seed=1).test)


def test_random_split_keeps_short_users_in_training():
    users = np.array([0, 0, 1, 1, 1, 2])
    items = np.array([0, 1, 0, 1, 2, 3])
    inter = Interactions.from_raw(users, items)
    sp = random_leave_one_out(inter, seed=5)
    assert inter.users[sp.test].tolist() == [1] and inter.users[sp.val].tolist() == [1]
    assert set(inter.users[sp.train].tolist()) == {0, 1, 2} and sp.train.size == 4


def test_random_heldout_queries_are_random_context_items_of_the_user():
    inter = _sorted_by_item_log(num_users=200, seed=1)
    sp, _, val_pairs, test_pairs = split_and_pairs(inter, "random", seed=0)
    assert val_pairs.shape == (inter.num_users, 2) and test_pairs.shape == (inter.num_users, 2)
    hist = [set() for _ in range(inter.num_users)]
    for r in sp.train:
        hist[int(inter.users[r])].add(int(inter.items[r]))
    # rows are in sorted row order: one pair per held-out row, q a context item of the same user
    for part, pairs, extra in (("val", val_pairs, None), ("test", test_pairs, sp.val)):
        rows = np.sort(getattr(sp, part))
        ctx = [set(h) for h in hist]
        if extra is not None:
            for r in extra:
                ctx[int(inter.users[r])].add(int(inter.items[r]))
        assert np.array_equal(pairs[:, 1], inter.items[rows])
        assert all(q in ctx[int(u)] for q, u in zip(pairs[:, 0].tolist(), inter.users[rows]))
    # not "the row before in file order" (the highest training id below i): mostly another item
    vrows = np.sort(sp.val)
    before = [max([h for h in hist[int(u)] if h < i], default=-1) for u, i in zip(inter.users[vrows], val_pairs[:, 1])]
    assert (val_pairs[:, 0] != np.array(before)).mean() > 0.5
    # seeded: the same seed gives the same pairs, another seed other ones
    _, _, v2, t2 = split_and_pairs(inter, "random", seed=0)
    assert np.array_equal(v2, val_pairs) and np.array_equal(t2, test_pairs)
    v3 = random_heldout_pairs(inter, sp.train, sp.val, seed=1, salt=1)
    assert np.array_equal(v3[:, 1], val_pairs[:, 1]) and not np.array_equal(v3[:, 0], val_pairs[:, 0])


def test_auto_without_timestamps_is_announced_once(capsys):
    import datamodules.splits as splits

    inter = _sorted_by_item_log(num_users=20, seed=2)
    splits._announced.discard(("hand", 0))
    splits.announce_split("auto", inter, 0, "hand")
    splits.announce_split("auto", inter, 0, "hand")
    err = capsys.readouterr().err
    assert err.count("split='random'") == 1 and "no timestamps" in err
    splits.announce_split("temporal", inter, 0, "hand2")  # explicit choice without time: a warning (issue 20)
    assert "file order is taken as time order" in capsys.readouterr().err


def test_temporal_split_without_timestamps_warns(capsys):
    """issue 20 item 17: split temporal on a log without time took file order silently (a log sorted
    by item id made every test item the user's highest id)."""
    from datamodules.splits import announce_split

    users, items = np.array([0, 0, 0, 1, 1, 1]), np.array([1, 2, 3, 1, 2, 3])
    inter = Interactions.from_raw(users, items)
    announce_split("temporal", inter, 0, "no-time-log")
    err = capsys.readouterr().err
    assert "split='temporal'" in err and "no timestamps" in err and "file order" in err
    announce_split("temporal", Interactions.from_raw(users, items, timestamps=np.arange(6)), 0, "timed")
    assert capsys.readouterr().err == ""


def test_example_table_config_defaults_to_auto():
    from pathlib import Path

    import yaml

    cfg = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs/data/example-table.yaml").read_text())
    assert cfg["split"] == "auto"
