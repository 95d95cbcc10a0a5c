import numpy as np
import pytest

from datamodules.synthetic import make_synthetic


def test_sizes_determinism_and_communities():
    a, fa, ca = make_synthetic(300, 200, 5000, 5, feature_dim=4, seed=3)
    b, fb, cb = make_synthetic(300, 200, 5000, 5, feature_dim=4, seed=3)
    c, _, _ = make_synthetic(300, 200, 5000, 5, feature_dim=4, seed=4)
    assert a.num_users == 300 and a.num_items == 200
    assert a.num_interactions >= 4900 and a.num_duplicates_dropped == 0
    assert (a.users == b.users).all() and (fa == fb).all() and (ca == cb).all()
    assert not np.array_equal(a.items, c.items)
    # power-law-ish: the most popular item is far above the median
    deg = np.bincount(a.items, minlength=200)
    assert deg.max() > 5 * np.median(deg)
    # planted structure: a user's items mostly share one community (p_in = 0.8)
    same = []
    for u in range(50):
        cs = ca[a.items[a.users == u]]
        same.append(np.bincount(cs).max() / cs.size)
    assert np.mean(same) > 0.6
    # features are informative about communities
    cent = np.stack([fa[ca == k].mean(0) for k in range(5)])
    pred = np.argmin(((fa[:, None, :] - cent[None]) ** 2).sum(-1), axis=1)
    assert (pred == ca).mean() > 0.6


@pytest.mark.parametrize("kw,match", [
    (dict(num_users=0), "num_users"),
    (dict(num_interactions=10), "num_interactions"),
    (dict(num_communities=1000), "num_communities"),
    (dict(p_in=1.5), "p_in"),
])
def test_bad_arguments(kw, match):
    args = dict(num_users=100, num_items=50, num_interactions=1000, num_communities=5)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        make_synthetic(**args)


def test_per_user_generator_sizes_determinism_and_structure():
    kw = dict(num_users=400, num_items=300, num_interactions=6000, num_communities=6, feature_dim=4, seed=3,
              method="per-user")
    a, fa, ca = make_synthetic(**kw)
    b, fb, cb = make_synthetic(**kw)
    c, _, _ = make_synthetic(**{**kw, "seed": 4})
    assert a.num_users == 400 and a.num_items == 300  # every user and every item engaged
    assert a.num_interactions >= 5900 and a.num_duplicates_dropped == 0
    assert np.unique(a.users * 300 + a.items).size == a.num_interactions  # distinct pairs
    assert set(np.unique(a.users)) == set(range(400)) and set(np.unique(a.items)) == set(range(300))
    assert (a.users == b.users).all() and (a.items == b.items).all() and (fa == fb).all() and (ca == cb).all()
    assert not np.array_equal(a.items, c.items)
    assert fa.dtype == np.float32 and fa.shape == (300, 4)
    deg = np.bincount(a.items, minlength=300)
    assert deg.min() >= 1 and deg.max() > 5 * np.median(deg)
    udeg = np.bincount(a.users, minlength=400)
    assert udeg.max() > 4 * np.median(udeg)  # power-law users too
    same = [np.bincount(ca[a.items[a.users == u]]).max() / udeg[u] for u in range(60)]
    assert np.mean(same) > 0.6
    cent = np.stack([fa[ca == k].mean(0) for k in range(6)])
    pred = np.argmin(((fa[:, None, :] - cent[None]) ** 2).sum(-1), axis=1)
    assert (pred == ca).mean() > 0.6
    # without timestamps the file order is the time order: same rows, nothing else differs
    d, _, _ = make_synthetic(**kw, timestamps=False)
    assert d.timestamps is None and (d.users == a.users).all() and (d.items == a.items).all()


def test_unknown_method():
    with pytest.raises(ValueError, match="method='nope'"):
        make_synthetic(100, 50, 1000, 5, method="nope")
