import numpy as np
import pytest

from datamodules.graph import InteractionGraph


def _random_edges(seed=0, U=50, I=40, E=400):
    rng = np.random.default_rng(seed)
    key = np.unique(rng.integers(0, U, E) * I + rng.integers(0, I, E))
    users, items = key // I, key % I
    perm = rng.permutation(users.size)
    return users[perm], items[perm], rng.integers(0, 1000, users.size)


def test_csr_both_directions_hold_exactly_the_edges():
    users, items, ts = _random_edges()
    g = InteractionGraph.from_edges(users, items, 50, 40, timestamps=ts)
    assert g.num_edges == users.size
    got = set(zip(g.edge_users().tolist(), g.user_items.tolist()))
    assert got == set(zip(users.tolist(), items.tolist()))
    item_of_edge = np.repeat(np.arange(40), g.item_degree())
    assert set(zip(g.item_users.tolist(), item_of_edge.tolist())) == got
    # transpose map is consistent
    assert (g.user_items[g.item_to_user_edge] == item_of_edge).all()
    assert (g.edge_users()[g.item_to_user_edge] == g.item_users).all()
    assert g.user_items.dtype == np.int32 and g.item_users.dtype == np.int32
    assert g.user_items.flags.c_contiguous and g.item_ptr[-1] == g.num_edges


def test_user_edges_are_time_ordered_and_timestamps_aligned():
    users, items, ts = _random_edges(1)
    g = InteractionGraph.from_edges(users, items, 50, 40, timestamps=ts)
    lookup = {(u, i): t for u, i, t in zip(users.tolist(), items.tolist(), ts.tolist())}
    eu = g.edge_users()
    assert all(lookup[(u, i)] == t for u, i, t in zip(eu.tolist(), g.user_items.tolist(), g.timestamps.tolist()))
    for u in range(50):
        t = g.timestamps[g.user_ptr[u]:g.user_ptr[u + 1]]
        assert (np.diff(t) >= 0).all()


def test_roundtrip_arrays_and_bad_indices():
    users, items, ts = _random_edges(2)
    g = InteractionGraph.from_edges(users, items, 50, 40, weights=np.ones(users.size))
    h = InteractionGraph.from_arrays(g.to_arrays("g_"), "g_")
    assert h.num_items == 40 and (h.user_items == g.user_items).all() and h.weights is not None
    with pytest.raises(ValueError, match="item index out of range"):
        InteractionGraph.from_edges(np.array([0]), np.array([40]), 50, 40)
