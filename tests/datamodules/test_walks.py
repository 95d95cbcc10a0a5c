"""Tests of the PinSage random-walk sampler and the uniform (GraphSAGE) sampler."""

from types import SimpleNamespace
from typing import Optional

import numba
import numpy as np
import pytest

from datamodules.walks import (
    PinSageSampler,
    UniformSampler,
    pinsage_neighbors,
    uniform_neighbors,
    visit_ranking,
)
from datamodules.checks import check_int
from datamodules.walks import _arrays_of, _check_graph, _check_seeds


def exact_ppr(graph_or_arrays, source_item, restart_prob: float, walk_length: Optional[int] = None,
              tol: float = 1e-12, max_iter: int = 100_000, weights=None) -> np.ndarray:
    """The test oracle: personalised PageRank of the item -> user -> item chain, by power iteration.

    ``pi = a * sum_{k=0..L} (1-a)^k P^k[s, :]`` with ``a = restart_prob``, ``P`` the one-hop
    item->item transition matrix (uniform user of the item, then uniform item of the user) and
    ``L = walk_length`` (``None``: until the remaining mass ``(1-a)^k`` falls below ``tol``, i.e. the
    usual PPR that sums to 1 up to isolated sources). For ``j != s`` the expected visit counts of
    :func:`pinsage_neighbors`' walks are ``pi[j] / (a * (1-a))`` per walk (see module docstring), so
    both rank items identically.

    ``graph_or_arrays``: an InteractionGraph-like object or ``(item_ptr, item_users, user_ptr,
    user_items)``. ``source_item``: an item id (returns ``float64 [num_items]``) or a 1-d array of
    ids (returns ``[len(source_item), num_items]``). Sparse numpy, memory ``O(E * num_sources)``:
    meant for tests and small catalogues.

    ``weights``: ``None`` (uniform hops) or ``(item_weights, user_weights)``, the raw edge weights
    aligned with ``item_users`` and ``user_items``: hops proportional to weight, as the weighted
    walks make them.
    """
    item_ptr, item_users, user_ptr, user_items = _check_graph(*_arrays_of(graph_or_arrays))
    a = float(restart_prob)
    if not (0.0 < a < 1.0):
        raise ValueError(f"restart_prob must be in (0, 1) for exact_ppr, got {restart_prob!r}")
    if walk_length is not None:
        walk_length = check_int("walk_length", walk_length, 0)
    num_items = item_ptr.shape[0] - 1
    scalar = np.ndim(source_item) == 0
    src = _check_seeds(source_item, num_items)
    S = src.shape[0]
    ui = user_items.astype(np.int64)
    iu = item_users.astype(np.int64)
    if weights is None:
        w_item, w_user = np.ones(iu.size), np.ones(ui.size)
    else:
        w_item, w_user = (np.asarray(a, dtype=np.float64) for a in weights)
    # W_i = sum of item i's edge weights, W_u = sum of user u's
    deg_i = np.bincount(np.repeat(np.arange(num_items), np.diff(item_ptr)), weights=w_item, minlength=num_items)
    deg_u = np.bincount(np.repeat(np.arange(user_ptr.size - 1), np.diff(user_ptr)), weights=w_user,
                        minlength=user_ptr.size - 1)
    inv_i = np.divide(1.0, deg_i, out=np.zeros_like(deg_i), where=deg_i > 0)
    inv_u = np.divide(1.0, deg_u, out=np.zeros_like(deg_u), where=deg_u > 0)

    def segsum(vals, ptr):
        cs = np.zeros((vals.shape[0] + 1, vals.shape[1]))
        np.cumsum(vals, axis=0, out=cs[1:])
        return cs[ptr[1:]] - cs[ptr[:-1]]

    x = np.zeros((num_items, S))
    x[src, np.arange(S)] = 1.0
    pi = a * x
    coef = a
    k = 0
    while True:
        k += 1
        if walk_length is not None and k > walk_length:
            break
        coef *= 1.0 - a
        if walk_length is None and coef < tol:
            break
        if k > max_iter:
            break
        # users: sum over their items of x_i w(u, i) / W_i; items: sum over their users of y_u w(u, i) / W_u
        y = segsum(x[ui] * (inv_i[ui] * w_user)[:, None], user_ptr)
        x = segsum(y[iu] * (inv_u[iu] * w_item)[:, None], item_ptr)
        pi += coef * x
    pi = pi.T
    return pi[0] if scalar else pi


def make_graph(users, items, num_users, num_items):
    """CSR in both directions, as datamodules.graph.InteractionGraph holds it."""
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    o = np.lexsort((items, users))
    user_ptr = np.concatenate([[0], np.cumsum(np.bincount(users, minlength=num_users))]).astype(np.int64)
    user_items = items[o].astype(np.int32)
    o = np.lexsort((users, items))
    item_ptr = np.concatenate([[0], np.cumsum(np.bincount(items, minlength=num_items))]).astype(np.int64)
    item_users = users[o].astype(np.int32)
    return SimpleNamespace(num_users=num_users, num_items=num_items, item_ptr=item_ptr, item_users=item_users,
                           user_ptr=user_ptr, user_items=user_items)


def arrays(g):
    return g.item_ptr, g.item_users, g.user_ptr, g.user_items


def random_graph(num_users=120, num_items=80, num_edges=900, communities=4, seed=0, extra_isolated=0):
    """Power-law-ish bipartite graph with communities; every user and item engaged at least once."""
    rng = np.random.default_rng(seed)
    item_comm = np.arange(num_items) % communities
    user_comm = rng.integers(0, communities, num_users)
    pop = 1.0 / np.arange(1, num_items + 1) ** 0.8
    pop = rng.permutation(pop)
    u = rng.integers(0, num_users, num_edges)
    same = rng.random(num_edges) < 0.8
    items = np.empty(num_edges, dtype=np.int64)
    for c in range(communities):
        members = np.flatnonzero(item_comm == c)
        p = pop[members] / pop[members].sum()
        sel = same & (user_comm[u] == c)
        items[sel] = rng.choice(members, sel.sum(), p=p)
    other = ~same
    items[other] = rng.choice(num_items, other.sum(), p=pop / pop.sum())
    u = np.concatenate([u, np.arange(num_users), rng.integers(0, num_users, num_items)])
    items = np.concatenate([items, rng.integers(0, num_items, num_users), np.arange(num_items)])
    pairs = np.unique(np.stack([u, items], 1), axis=0)
    return make_graph(pairs[:, 0], pairs[:, 1], num_users, num_items + extra_isolated)


@pytest.fixture(scope="module")
def graph():
    return random_graph()


def ranks(x):
    """Average ranks (ties share the mean rank), for Spearman's rho."""
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    xs = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        r[order[i:j + 1]] = (i + j) / 2.0
        i = j + 1
    return r


def spearman(a, b):
    ra, rb = ranks(np.asarray(a, float)), ranks(np.asarray(b, float))
    return float(np.corrcoef(ra, rb)[0, 1])


def dense_counts(ptr, items, counts, b, num_items):
    out = np.zeros(num_items)
    out[items[ptr[b]:ptr[b + 1]]] = counts[ptr[b]:ptr[b + 1]]
    return out


# ----------------------------------------------------------------------------------------------
# agreement with personalised PageRank
# ----------------------------------------------------------------------------------------------
def test_visit_counts_converge_to_ppr(graph):
    # One hop = item -> user -> item (matrix P). A walk survives to hop k with prob (1-p)^(k-1),
    # so E[visits to j] = sum_{k=1..L} (1-p)^(k-1) P^k[s, j] = (pi_L[j] - p*[j==s]) / (p (1-p)),
    # where pi_L = p * sum_{k=0..L} (1-p)^k P^k[s] is PPR (teleport p) truncated at L hops. With
    # long walks (L=30, p=0.3: truncation mass 0.7^30 ~ 2e-5) that is PPR itself, so the visit
    # ranking must approach the PPR ranking as num_walks grows (top-10 overlap ~0.4 -> ~0.7 -> ~0.95,
    # Spearman ~0.4 -> ~0.75 -> ~0.99 for 10 -> 100 -> 10000 walks).
    p, L, T = 0.3, 30, 10
    sources = np.arange(0, graph.num_items, 8)
    pi = exact_ppr(graph, sources, p)
    results = {}
    for nw in (10, 100, 10000):
        ptr, items, counts = visit_ranking(*arrays(graph), sources, num_walks=nw, walk_length=L, restart_prob=p,
                                           max_rank=graph.num_items, seed=1)
        overlap, rho = [], []
        for b, s in enumerate(sources):
            c = dense_counts(ptr, items, counts, b, graph.num_items)
            ref = pi[b].copy()
            ref[s] = -1.0  # the seed is excluded from neighbourhoods
            c[s] = -1.0
            top_ref = set(np.argsort(-ref, kind="stable")[:T])
            top_ours = set(items[ptr[b]:ptr[b] + T])
            overlap.append(len(top_ref & top_ours) / T)
            keep = np.arange(graph.num_items) != s
            rho.append(spearman(c[keep], ref[keep]))
        results[nw] = (np.mean(overlap), np.mean(rho))
    (o10, r10), (o100, r100), (o2k, r2k) = results[10], results[100], results[10000]
    assert o10 < o100 <= o2k, results
    assert r10 < r100 < r2k, results
    assert o2k > 0.9 and r2k > 0.9, results


def test_expected_visits_equal_truncated_ppr(graph):
    p, L, nw = 0.5, 3, 20000
    s = 5
    pi = exact_ppr(graph, s, p, walk_length=L)
    ptr, items, counts = visit_ranking(*arrays(graph), [s], num_walks=nw, walk_length=L, restart_prob=p,
                                       max_rank=graph.num_items, seed=3)
    c = dense_counts(ptr, items, counts, 0, graph.num_items) / nw
    expected = pi / (p * (1 - p))
    expected[s] = 0.0
    top = np.argsort(-expected)[:10]
    np.testing.assert_allclose(c[top], expected[top], rtol=0.15)
    # total visits per walk: sum_k (1-p)^(k-1) * P(not back at s) -- compare the sums loosely
    assert abs(c.sum() - expected.sum()) < 0.05 * expected.sum()


def test_exact_ppr_matches_dense_inverse():
    g = random_graph(num_users=15, num_items=10, num_edges=40, communities=2, seed=4)
    P_iu = np.zeros((g.num_items, g.num_users))
    for i in range(g.num_items):
        us = g.item_users[g.item_ptr[i]:g.item_ptr[i + 1]]
        P_iu[i, us] = 1.0 / len(us)
    P_ui = np.zeros((g.num_users, g.num_items))
    for u in range(g.num_users):
        its = g.user_items[g.user_ptr[u]:g.user_ptr[u + 1]]
        P_ui[u, its] = 1.0 / len(its)
    P = P_iu @ P_ui
    a = 0.25
    dense = a * np.linalg.inv(np.eye(g.num_items) - (1 - a) * P)
    pi = exact_ppr(g, np.arange(g.num_items), a)
    np.testing.assert_allclose(pi, dense, atol=1e-9)
    np.testing.assert_allclose(exact_ppr(arrays(g), 3, a), dense[3], atol=1e-9)
    np.testing.assert_allclose(pi.sum(1), 1.0, atol=1e-9)


# ----------------------------------------------------------------------------------------------
# neighbourhood structure
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("nw,wl,T", [(10, 2, 3), (10, 2, 10), (100, 3, 50), (50, 1, 5)])
def test_neighbourhood_invariants(graph, nw, wl, T):
    seeds = np.arange(graph.num_items)
    ptr, items, w = pinsage_neighbors(*arrays(graph), seeds, num_walks=nw, walk_length=wl, restart_prob=0.5,
                                      top_t=T, seed=0)
    assert ptr.dtype == np.int64 and items.dtype == np.int64 and w.dtype == np.float32
    assert ptr.shape == (len(seeds) + 1,) and ptr[0] == 0 and ptr[-1] == len(items) == len(w)
    sizes = np.diff(ptr)
    assert sizes.max() <= T and sizes.min() >= 1
    # full ranking gives the counts behind the weights; the top-T prefix is the same walks
    rptr, ritems, rcounts = visit_ranking(*arrays(graph), seeds, num_walks=nw, walk_length=wl,
                                          restart_prob=0.5, max_rank=10**6, seed=0)
    item_sets = [set(graph.user_items[graph.user_ptr[u]:graph.user_ptr[u + 1]]) for u in range(graph.num_users)]
    for b, s in enumerate(seeds):
        nb, wb = items[ptr[b]:ptr[b + 1]], w[ptr[b]:ptr[b + 1]]
        assert s not in nb
        assert len(set(nb)) == len(nb)
        assert abs(wb.sum() - 1.0) < 1e-5
        assert np.all(np.diff(wb) <= 1e-7)  # ordered by count, desc
        rc = rcounts[rptr[b]:rptr[b + 1]]
        ri = ritems[rptr[b]:rptr[b + 1]]
        np.testing.assert_array_equal(nb, ri[:T])
        np.testing.assert_allclose(wb, rc[:T] / rc[:T].sum(), rtol=1e-6)
        assert np.all(np.diff(rc) <= 0)
        ties = np.diff(rc) == 0
        assert np.all(np.diff(ri)[ties] > 0)  # ties broken by smaller id
        assert len(ri) == min(len(ri), nw * wl) and rc.sum() <= nw * wl
        if wl == 1:  # one hop: every neighbour shares a user with the seed
            users = graph.item_users[graph.item_ptr[s]:graph.item_ptr[s + 1]]
            two_hop = set().union(*(item_sets[u] for u in users)) - {s}
            assert set(ri) <= two_hop


def test_fewer_than_T_and_isolated_items():
    # users: 0 -> {0, 1, 2}, 1 -> {3}; item 4 isolated (no users)
    g = make_graph([0, 0, 0, 1], [0, 1, 2, 3], 2, 5)
    ptr, items, w = pinsage_neighbors(*arrays(g), [0, 3, 4, 1], num_walks=50, walk_length=2, top_t=10, seed=0)
    assert set(items[ptr[0]:ptr[1]]) == {1, 2}
    np.testing.assert_allclose(w[ptr[0]:ptr[1]].sum(), 1.0, rtol=1e-6)
    assert ptr[2] - ptr[1] == 0  # item 3 only reaches itself
    assert ptr[3] - ptr[2] == 0  # isolated item
    assert set(items[ptr[3]:ptr[4]]) == {0, 2}
    # uniform sampler: the same cases
    ptr, items, w = uniform_neighbors(*arrays(g), [0, 3, 4], num_samples=20, seed=0)
    assert set(items[ptr[0]:ptr[1]]) == {1, 2} and ptr[2] == ptr[1] and ptr[3] == ptr[2]
    np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-6)


def test_restart_prob_zero_and_walk_length(graph):
    # restart 0: every walk makes exactly walk_length hops -> num_walks*walk_length visits minus returns
    s = 7
    _, _, counts = visit_ranking(*arrays(graph), [s], num_walks=40, walk_length=3, restart_prob=0.0, max_rank=10**6)
    assert counts.sum() <= 120 and counts.sum() > 60


# ----------------------------------------------------------------------------------------------
# determinism
# ----------------------------------------------------------------------------------------------
def test_determinism_epochs_threads_batches(graph):
    seeds = np.arange(graph.num_items)
    kw = dict(num_walks=20, walk_length=2, restart_prob=0.5, top_t=10)
    a = pinsage_neighbors(*arrays(graph), seeds, seed=3, epoch=0, **kw)
    b = pinsage_neighbors(*arrays(graph), seeds, seed=3, epoch=0, **kw)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    c = pinsage_neighbors(*arrays(graph), seeds, seed=3, epoch=1, **kw)
    d = pinsage_neighbors(*arrays(graph), seeds, seed=4, epoch=0, **kw)
    assert not (np.array_equal(a[1], c[1]) and np.array_equal(a[2], c[2]))
    assert not (np.array_equal(a[1], d[1]) and np.array_equal(a[2], d[2]))
    # independent of the thread count
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        e = pinsage_neighbors(*arrays(graph), seeds, seed=3, epoch=0, **kw)
        eu = uniform_neighbors(*arrays(graph), seeds, num_samples=7, seed=3)
    finally:
        numba.set_num_threads(old)
    for x, y in zip(a, e):
        np.testing.assert_array_equal(x, y)
    # serial and parallel drivers agree
    for par in (True, False):
        f = pinsage_neighbors(*arrays(graph), seeds, seed=3, epoch=0, parallel=par, **kw)
        for x, y in zip(a, f):
            np.testing.assert_array_equal(x, y)
        fu = uniform_neighbors(*arrays(graph), seeds, num_samples=7, seed=3, parallel=par)
        for x, y in zip(eu, fu):
            np.testing.assert_array_equal(x, y)
    for x, y in zip(uniform_neighbors(*arrays(graph), seeds, num_samples=7, seed=3), eu):
        np.testing.assert_array_equal(x, y)
    # independent of batch composition/order: a seed's neighbourhood depends on (seed, epoch, item)
    sub = np.array([17, 3, 17])
    p, i, w = pinsage_neighbors(*arrays(graph), sub, seed=3, epoch=0, **kw)
    for b, s in enumerate(sub):
        np.testing.assert_array_equal(i[p[b]:p[b + 1]], a[1][a[0][s]:a[0][s + 1]])
        np.testing.assert_array_equal(w[p[b]:p[b + 1]], a[2][a[0][s]:a[0][s + 1]])


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,name", [
    (dict(top_t=0), "top_t"),
    (dict(num_walks=0), "num_walks"),
    (dict(walk_length=0), "walk_length"),
    (dict(restart_prob=1.0), "restart_prob"),
    (dict(restart_prob=-0.1), "restart_prob"),
    (dict(num_walks=2.5), "num_walks"),
    (dict(seed=-1), "seed"),
])
def test_bad_arguments_raise(graph, kw, name):
    with pytest.raises(ValueError, match=name):
        pinsage_neighbors(*arrays(graph), [0, 1], **kw)
    with pytest.raises(ValueError, match=name):
        PinSageSampler(graph, **kw).sample([0])


@pytest.mark.parametrize("seeds", [[-1], [80], [0, 1000], [0.5, 1.0], np.array([[0, 1]])])
def test_bad_seeds_raise(graph, seeds):
    with pytest.raises(ValueError, match="seeds"):
        pinsage_neighbors(*arrays(graph), seeds)
    with pytest.raises(ValueError, match="seeds"):
        UniformSampler(graph).sample(seeds)
    with pytest.raises(ValueError, match=r"\[0, 80\)"):
        PinSageSampler(graph).sample(seeds if np.ndim(seeds) == 1 and np.asarray(seeds).dtype.kind == "i" else [80])


def test_uniform_bad_arguments(graph):
    with pytest.raises(ValueError, match="num_samples"):
        UniformSampler(graph, num_samples=0)
    with pytest.raises(ValueError, match="graph"):
        PinSageSampler(object())


# ----------------------------------------------------------------------------------------------
# uniform sampler, classes, inputs
# ----------------------------------------------------------------------------------------------
def test_uniform_sampler_basics(graph):
    S = 25
    sampler = UniformSampler(graph, num_samples=S, seed=1)
    seeds = np.arange(graph.num_items)
    ptr, items, w = sampler.sample(seeds)
    item_sets = [set(graph.user_items[graph.user_ptr[u]:graph.user_ptr[u + 1]]) for u in range(graph.num_users)]
    for b, s in enumerate(seeds):
        nb, wb = items[ptr[b]:ptr[b + 1]], w[ptr[b]:ptr[b + 1]]
        users = graph.item_users[graph.item_ptr[s]:graph.item_ptr[s + 1]]
        two_hop = set().union(*(item_sets[u] for u in users)) - {s}
        assert set(nb) <= two_hop and s not in nb and len(set(nb)) == len(nb)
        if two_hop:
            np.testing.assert_allclose(wb.sum(), 1.0, rtol=1e-6)
            counts = np.rint(wb * S)
            np.testing.assert_allclose(counts, wb * S, atol=1e-4)  # weights are count / S
            assert counts.sum() == S
    p2 = sampler.sample(seeds, epoch=1)
    assert not np.array_equal(p2[1], items) or not np.array_equal(p2[2], w)
    # uniformity: a hub item's 2-hop distribution matches the exact one-hop transition probabilities
    s = int(np.argmax(np.diff(graph.item_ptr)))
    ptr, items, w = uniform_neighbors(*arrays(graph), [s], num_samples=40000, seed=0)
    exp = np.zeros(graph.num_items)
    users = graph.item_users[graph.item_ptr[s]:graph.item_ptr[s + 1]]
    eligible = [u for u in users if graph.user_ptr[u + 1] - graph.user_ptr[u] >= 2]
    for u in eligible:
        its = [j for j in item_sets[u] if j != s]
        exp[its] += 1.0 / len(eligible) / len(its)
    got = np.zeros(graph.num_items)
    got[items] = w
    assert np.abs(got - exp).max() < 0.01


def test_classes_accept_graph_objects_and_tensors(graph):
    torch = pytest.importorskip("torch")
    sampler = PinSageSampler(graph, num_walks=10, walk_length=2, restart_prob=0.5, top_t=5, seed=2)
    a = sampler.sample(torch.tensor([1, 2, 3]))
    b = pinsage_neighbors(*arrays(graph), np.array([1, 2, 3], dtype=np.int32), 10, 2, 0.5, 5, 2)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    ptr, items, counts = sampler.ranking([1], max_rank=1000, num_walks=500)
    assert counts.dtype == np.int32 and np.all(np.diff(counts) <= 0)
    e = sampler.sample(np.array([], dtype=np.int64))
    assert e[0].tolist() == [0] and len(e[1]) == 0 and len(e[2]) == 0
    assert "top_t=5" in repr(sampler)
    # the project's InteractionGraph
    graph_mod = pytest.importorskip("datamodules.graph")
    users = np.repeat(np.arange(graph.num_users), np.diff(graph.user_ptr))
    ig = graph_mod.InteractionGraph.from_edges(users, graph.user_items, graph.num_users, graph.num_items)
    c = PinSageSampler(ig, num_walks=10, walk_length=2, restart_prob=0.5, top_t=5, seed=2).sample([1, 2, 3])
    for x, y in zip(a, c):
        np.testing.assert_array_equal(x, y)


class _WorkerDataset:
    """Map-style dataset sampling neighbourhoods inside DataLoader workers."""

    def __init__(self, sampler, chunks):
        self.sampler, self.chunks = sampler, chunks

    def __len__(self):
        return len(self.chunks)

    def __getitem__(self, i):
        return self.sampler.sample(self.chunks[i])


def test_auto_mode_is_safe_in_forked_dataloader_workers(graph):
    # GNU OpenMP (numba's usual threading layer) aborts a forked child that enters a parallel
    # region after the parent used one; in auto mode DataLoader workers run the serial driver.
    torch = pytest.importorskip("torch")
    import multiprocessing as mp

    if "fork" not in mp.get_all_start_methods():
        pytest.skip("needs fork")
    sampler = PinSageSampler(graph, num_walks=1000, walk_length=2, top_t=10, seed=5)  # 40k hops per chunk
    seeds = np.arange(graph.num_items)
    ref = pinsage_neighbors(*arrays(graph), seeds, 1000, 2, 0.5, 10, 5, parallel=True)  # parent uses the pool
    chunks = np.array_split(seeds, 4)
    dl = torch.utils.data.DataLoader(_WorkerDataset(sampler, chunks), batch_size=None, num_workers=2,
                                     multiprocessing_context="fork", collate_fn=lambda x: x)
    got = list(dl)
    for (p, i, w), c in zip(got, chunks):
        rp = ref[0][c[0]:c[-1] + 2]
        np.testing.assert_array_equal(p, rp - rp[0])
        np.testing.assert_array_equal(i, ref[1][rp[0]:rp[-1]])
        np.testing.assert_array_equal(w, ref[2][rp[0]:rp[-1]])


# ----------------------------------------------------------------------------------------------
# weighted transitions
# ----------------------------------------------------------------------------------------------
def weighted_graph(seed=0, low=1, high=6, **kw):
    """``random_graph`` as an ``InteractionGraph`` with integer weights in ``[low, high)``."""
    from datamodules.graph import InteractionGraph

    g = random_graph(seed=seed, **kw)
    users = np.repeat(np.arange(g.num_users), np.diff(g.user_ptr))
    w = np.random.default_rng(seed + 100).integers(low, high, users.size).astype(np.float32)
    return InteractionGraph.from_edges(users, g.user_items.astype(np.int64), g.num_users, g.num_items, weights=w)


def raw_weights(g):
    """(item-major, user-major) raw edge weights of an InteractionGraph."""
    w = g.weights.astype(np.float64)
    return w[g.item_to_user_edge], w


@pytest.mark.parametrize("parallel", [False, True])
def test_unit_weights_give_exactly_the_uniform_walks(graph, parallel):
    from datamodules.walks import WalkWeights, alias_table

    ones = WalkWeights(alias_table(graph.item_ptr, np.ones(graph.item_users.size)),
                       alias_table(graph.user_ptr, np.ones(graph.user_items.size)))
    seeds = np.arange(graph.num_items)
    kw = dict(num_walks=30, walk_length=3, restart_prob=0.3, top_t=15, seed=2, epoch=1, parallel=parallel)
    a = pinsage_neighbors(*arrays(graph), seeds, **kw)
    b = pinsage_neighbors(*arrays(graph), seeds, walk_weights=ones, **kw)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    kw.pop("top_t")
    a = visit_ranking(*arrays(graph), seeds[:10], max_rank=500, **kw)
    b = visit_ranking(*arrays(graph), seeds[:10], max_rank=500, walk_weights=ones, **kw)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_unweighted_graphs_stay_on_the_fast_path():
    from datamodules.graph import InteractionGraph
    from datamodules.walks import walk_weights

    g = weighted_graph()
    plain = InteractionGraph.from_edges(np.repeat(np.arange(g.num_users), np.diff(g.user_ptr)),
                                        g.user_items.astype(np.int64), g.num_users, g.num_items)
    const = InteractionGraph.from_edges(np.repeat(np.arange(g.num_users), np.diff(g.user_ptr)),
                                        g.user_items.astype(np.int64), g.num_users, g.num_items,
                                        weights=np.full(g.num_edges, 4.0))
    assert walk_weights(plain) is None and walk_weights(const) is None and walk_weights(g) is not None
    seeds = np.arange(g.num_items)
    ref = PinSageSampler(plain, num_walks=20, top_t=10, seed=1).sample(seeds, 3)
    for graph_ in (plain, const):  # weighted=True on a graph without (distinct) weights: the same walks
        out = PinSageSampler(graph_, num_walks=20, top_t=10, seed=1, weighted=True).sample(seeds, 3)
        for x, y in zip(ref, out):
            np.testing.assert_array_equal(x, y)
    out = PinSageSampler(g, num_walks=20, top_t=10, seed=1).sample(seeds, 3)  # weighted=False: ignores them
    for x, y in zip(ref, out):
        np.testing.assert_array_equal(x, y)
    w = PinSageSampler(g, num_walks=20, top_t=10, seed=1, weighted=True).sample(seeds, 3)
    assert not np.array_equal(w[1], ref[1])


def test_exact_weighted_ppr_matches_dense_inverse():
    g = weighted_graph(seed=4, num_users=15, num_items=10, num_edges=40, communities=2)
    wi, wu = raw_weights(g)
    P_iu = np.zeros((g.num_items, g.num_users))
    for i in range(g.num_items):
        sl = slice(g.item_ptr[i], g.item_ptr[i + 1])
        P_iu[i, g.item_users[sl]] = wi[sl] / wi[sl].sum()
    P_ui = np.zeros((g.num_users, g.num_items))
    for u in range(g.num_users):
        sl = slice(g.user_ptr[u], g.user_ptr[u + 1])
        P_ui[u, g.user_items[sl]] = wu[sl] / wu[sl].sum()
    a = 0.25
    dense = a * np.linalg.inv(np.eye(g.num_items) - (1 - a) * (P_iu @ P_ui))
    np.testing.assert_allclose(exact_ppr(g, np.arange(g.num_items), a, weights=(wi, wu)), dense, atol=1e-9)


def test_weighted_visits_equal_weighted_truncated_ppr():
    # weights 1..20: transitions far from uniform; expected visits per walk = weighted PPR / (p(1-p))
    g = weighted_graph(seed=5, low=1, high=21)
    p, L, nw, s = 0.5, 3, 40000, 5
    wi, wu = raw_weights(g)
    sampler = PinSageSampler(g, num_walks=nw, walk_length=L, restart_prob=p, top_t=g.num_items, seed=3,
                             weighted=True)
    ptr, items, counts = sampler.ranking([s], max_rank=g.num_items)
    c = dense_counts(ptr, items, counts, 0, g.num_items) / nw
    expected = exact_ppr(g, s, p, walk_length=L, weights=(wi, wu)) / (p * (1 - p))
    uniform = exact_ppr(g, s, p, walk_length=L) / (p * (1 - p))
    expected[s] = uniform[s] = 0.0
    top = np.argsort(-expected)[:10]
    np.testing.assert_allclose(c[top], expected[top], rtol=0.1)
    # and the walks follow the weights, not the uniform chain
    assert np.abs(c - expected).sum() < 0.5 * np.abs(c - uniform).sum()


def test_zero_weight_edges_are_never_walked():
    from datamodules.graph import InteractionGraph

    g = random_graph(seed=6)
    users = np.repeat(np.arange(g.num_users), np.diff(g.user_ptr))
    items = g.user_items.astype(np.int64)
    w = np.where(items == 7, 0.0, 1.0 + np.arange(items.size) % 2)  # item 7 unreachable, others 1 or 2
    wg = InteractionGraph.from_edges(users, items, g.num_users, g.num_items, weights=w)
    seeds = np.setdiff1d(np.arange(g.num_items), [7])
    ptr, nbr, _ = PinSageSampler(wg, num_walks=50, walk_length=3, top_t=g.num_items, seed=0,
                                 weighted=True).sample(seeds)
    assert nbr.size > 0 and 7 not in set(nbr.tolist())


def test_bad_weights_raise():
    from datamodules.graph import InteractionGraph

    g = random_graph(seed=7)
    users = np.repeat(np.arange(g.num_users), np.diff(g.user_ptr))
    w = np.ones(users.size)
    w[3] = -1.0
    bad = InteractionGraph.from_edges(users, g.user_items.astype(np.int64), g.num_users, g.num_items, weights=w)
    with pytest.raises(ValueError, match="weights >= 0"):
        PinSageSampler(bad, weighted=True)
    PinSageSampler(bad)  # unweighted: the weights are not used
    with pytest.raises(ValueError, match="walk_weights"):
        pinsage_neighbors(*arrays(g), [0], walk_weights=(np.ones(3), np.ones(3)))


def test_alias_tables_encode_the_weights_exactly():
    from datamodules.walks import alias_table

    rng = np.random.default_rng(8)
    deg = np.array([1, 2, 5, 0, 17, 3, 40])
    ptr = np.concatenate([[0], np.cumsum(deg)])
    w = rng.random(ptr[-1]) * rng.integers(0, 4, ptr[-1])  # some zero weights
    w[ptr[5]:ptr[6]] = 0.0  # a segment of total weight 0: uniform
    tab = alias_table(ptr, w)
    for s, d in enumerate(deg):
        if d == 0:
            continue
        t = tab[ptr[s]:ptr[s + 1]]
        keep = (t >> np.uint64(32)).astype(np.float64) / 2**32
        alias = (t & np.uint64(0xFFFFFFFF)).astype(np.int64)
        assert alias.max() < d
        p = keep / d
        np.add.at(p, alias, (1 - keep) / d)
        ws = w[ptr[s]:ptr[s + 1]]
        expected = ws / ws.sum() if ws.sum() > 0 else np.full(d, 1 / d)
        np.testing.assert_allclose(p, expected, atol=1e-8)
