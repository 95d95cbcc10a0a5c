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
