"""Baseline and embedding scorers, and the scorer-based ranking functions, against dense
references and against the plain embedding rankers of ``reference_ranking.py`` (the same numbers
by two code paths)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.baselines import (
    baseline_scorer,
    candidate_ranks_from_scorer,
    cooccurrence_scores,
    embedding_item_scorer,
    embedding_user_scorer,
    full_ranking_from_scorer,
    grouped_target_ranks,
    hash_uniform,
    user_profiles,
    user_scorer,
)
from tests.models.reference_ranking import candidate_ranks, full_ranking_metrics, ranks_from_scorer, target_ranks


def _graph(dense: np.ndarray):
    """CSR arrays (user_ptr, user_items, item_ptr, item_users) of a 0/1 users x items matrix."""
    u, i = np.nonzero(dense)
    user_ptr = np.concatenate([[0], np.cumsum(dense.sum(1))]).astype(np.int64)
    order = np.lexsort((u, i))
    item_ptr = np.concatenate([[0], np.cumsum(dense.sum(0))]).astype(np.int64)
    return user_ptr, i.astype(np.int32), item_ptr, u[order].astype(np.int32)


@pytest.fixture(scope="module")
def log():
    rng = np.random.default_rng(3)
    dense = (rng.random((40, 25)) < 0.2).astype(np.int64)
    dense[0] = 0  # a user without history
    dense[:, 7] = 0  # an item nobody engaged with
    return dense


def test_cooccurrence_scores_equal_dense_AtAh(log):
    g = _graph(log)
    ref = (log @ log.T @ log).astype(np.float32)  # row u: h_u^T A^T A = (A^T A h_u)^T
    got = cooccurrence_scores(g[0], g[1], np.arange(40), *g)
    np.testing.assert_array_equal(got, ref)
    # single-item sets {q}: the co-engagement counts A^T A e_q
    single = cooccurrence_scores(np.arange(26), np.arange(25), [3, 7, 3], *g)
    np.testing.assert_array_equal(single, (log.T @ log)[[3, 7, 3]].astype(np.float32))


def test_hand_made_cooccurrence():
    # users 0:{0,1}, 1:{1}, 2:{0,2}
    dense = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 1]])
    g = _graph(dense)
    got = cooccurrence_scores(g[0], g[1], [0, 1, 2], *g)
    # user 0: cooc(0,.) = [2,1,1] + cooc(1,.) = [1,2,0]
    np.testing.assert_array_equal(got, [[3, 3, 1], [1, 2, 0], [3, 1, 2]])


def test_item_cooccurrence_scorer_keeps_its_definition(log):
    g = _graph(log)
    deg = log.sum(0).astype(np.float32)
    tie = deg / (deg.max() + 1.0)
    q = torch.tensor([0, 3, 7, 24])
    got = baseline_scorer("cooccurrence", *g, 25)(q)
    ref = (log.T @ log)[q.numpy()].astype(np.float32) + tie
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-6)


def test_user_scorers(log):
    g = _graph(log)
    deg = log.sum(0).astype(np.float32)
    users = torch.tensor([5, 0, 12])
    pop = user_scorer("popularity", *g, 25)(users)
    assert torch.equal(pop, torch.from_numpy(deg).expand(3, -1))
    co = user_scorer("cooccurrence", *g, 25)(users).numpy()
    ref = (log @ log.T @ log)[users.numpy()] + deg / (deg.max() + 1.0)
    np.testing.assert_allclose(co, ref, rtol=0, atol=1e-4)
    np.testing.assert_allclose(co[1], deg / (deg.max() + 1.0), atol=1e-6)  # no history: popularity tie-break only
    # a different history: user 5 seen as having engaged only item 3
    hist_ptr = np.zeros(41, dtype=np.int64)
    hist_ptr[6:] = 1
    h = user_scorer("cooccurrence", *g, 25, history=(hist_ptr, np.array([3])))(torch.tensor([5]))
    np.testing.assert_allclose(h[0].numpy(), (log.T @ log)[3] + deg / (deg.max() + 1.0), atol=1e-4)


def test_random_user_scorer_is_seeded_and_batch_independent(log):
    g = _graph(log)
    a = user_scorer("random", *g, 25, seed=1)(torch.arange(40))
    b = torch.cat([user_scorer("random", *g, 25, seed=1)(torch.tensor([u])) for u in range(40)])
    c = user_scorer("random", *g, 25, seed=2)(torch.arange(40))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.min() >= 0 and a.max() < 1 and 0.4 < a.mean() < 0.6
    # 10^6 draws into 2^24 levels: ~970,200 distinct values are expected from a uniform source
    assert hash_uniform(torch.arange(1000), 1000, 0).unique().numel() > 0.96 * 10**6


def test_unknown_names_and_bad_ids(log):
    g = _graph(log)
    with pytest.raises(ValueError, match="baseline='knn'"):
        user_scorer("knn", *g, 25)
    with pytest.raises(ValueError, match="outside"):
        user_scorer("popularity", *g, 25)(torch.tensor([40]))
    with pytest.raises(ValueError, match="history ptr"):
        user_scorer("cooccurrence", *g, 25, history=(np.zeros(3, dtype=np.int64), np.zeros(0)))
    with pytest.raises(ValueError, match="num_items"):
        user_scorer("popularity", *g, 24)
    with pytest.raises(ValueError, match="batch_size"):
        grouped_target_ranks(lambda q: torch.zeros(q.numel(), 5), torch.tensor([0]), torch.tensor([1]), batch_size=0)


def test_user_profiles():
    emb = torch.tensor([[3.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    ptr, items = np.array([0, 2, 2, 3]), np.array([0, 1, 2])
    p = user_profiles(emb, ptr, items)
    assert torch.allclose(p[0], torch.tensor([3.0, 1.0]) / 10 ** 0.5)
    assert torch.equal(p[1], torch.zeros(2))  # no history -> zero profile
    assert torch.allclose(p[2], torch.tensor([1.0, 1.0]) / 2 ** 0.5)
    s = embedding_user_scorer(emb, ptr, items)(torch.tensor([0, 1]))
    assert torch.allclose(s, p[[0, 1]] @ emb.t())


def test_scorer_ranks_equal_metrics_module():
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(60, 8, generator=gen)
    emb[5] = emb[4]  # an exact tie
    q = torch.randint(0, 60, (200,), generator=gen)
    t = (q + torch.randint(1, 60, (200,), generator=gen)) % 60
    ref = target_ranks(emb[q], emb, t, query_items=q)
    scorer = embedding_item_scorer(emb)
    assert torch.equal(grouped_target_ranks(scorer, q, t, batch_size=7), ref)
    assert torch.equal(ranks_from_scorer(scorer, q, t), ref)
    # candidates (NCF)
    cand = torch.randint(0, 60, (200, 11), generator=gen)
    cand[:, 0] = t
    users = torch.randint(0, 30, (200,), generator=gen)
    uemb = torch.randn(30, 8, generator=gen)
    got = candidate_ranks_from_scorer(lambda u: uemb[u] @ emb.t(), users, cand, batch_size=4)
    assert torch.equal(got, candidate_ranks(uemb[users], emb, cand))


def test_full_ranking_equals_metrics_module():
    gen = torch.Generator().manual_seed(1)
    U, I = 30, 50
    uemb, emb = torch.randn(U, 6, generator=gen), torch.randn(I, 6, generator=gen)
    gt = torch.randint(0, 2, (U, I), generator=gen).bool() & (torch.rand(U, I, generator=gen) < 0.1)
    gt[3] = False  # a user without ground truth is skipped
    ex = (torch.rand(U, I, generator=gen) < 0.2) & ~gt
    to_csr = lambda m: (np.concatenate([[0], m.sum(1).cumsum(0).numpy()]), m.nonzero()[:, 1].numpy())  # noqa: E731
    ref = full_ranking_metrics(uemb, emb, to_csr(gt), k=[5, 20], exclude=to_csr(ex))
    got = full_ranking_from_scorer(lambda u: uemb[u] @ emb.t(), *to_csr(gt), ks=(5, 20),
                                   exclude_ptr=to_csr(ex)[0], exclude_items=to_csr(ex)[1], batch_size=7)
    for k, v in ref.items():
        assert got[k] == pytest.approx(float(v), abs=1e-6), k


def test_perfect_scorer_and_masking():
    # users 0..3, ground truth {u + 10}, history {u + 20}; the scorer ranks history first, then truth
    I = 30
    def scorer(u):
        s = torch.zeros(u.numel(), I)
        s[torch.arange(u.numel()), u + 20] = 2.0
        s[torch.arange(u.numel()), u + 10] = 1.0
        return s
    gt = (np.arange(5), np.arange(10, 14))
    hist = (np.arange(5), np.arange(20, 24))
    masked = full_ranking_from_scorer(scorer, *gt, ks=(1, 20), exclude_ptr=hist[0], exclude_items=hist[1])
    assert masked == {"recall@1": 1.0, "ndcg@1": 1.0, "recall@20": 1.0, "ndcg@20": 1.0}
    unmasked = full_ranking_from_scorer(scorer, *gt, ks=(1,))
    assert unmasked["recall@1"] == 0.0
    r = grouped_target_ranks(scorer, torch.arange(4), torch.arange(10, 14), exclude_query=False)
    assert r.tolist() == [2, 2, 2, 2]
    cand = torch.stack([torch.arange(10, 14), torch.arange(0, 4), torch.arange(4, 8)], 1)
    assert candidate_ranks_from_scorer(scorer, torch.arange(4), cand).tolist() == [1, 1, 1, 1]
