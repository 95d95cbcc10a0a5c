import math

import pytest
import torch
from torch_geometric.metrics import LinkPredNDCG, LinkPredRecall

from models.metrics import hit_rate_at_k, mrr, ndcg_at_k, scaled_mrr, to_csr, topk_items
from tests.models.reference_ranking import candidate_ranks, full_ranking_metrics, sampled_metrics, target_ranks


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def brute_ranks(q, items, target, excluded_sets):
    out = []
    for b in range(q.size(0)):
        s = (items @ q[b]).tolist()
        t = int(target[b])
        others = [j for j in range(len(s)) if j != t and j not in excluded_sets[b]]
        out.append(1 + sum(s[j] >= s[t] for j in others))
    return torch.tensor(out)


def pairs_from_sets(sets):
    rows = [r for r, items in enumerate(sets) for _ in items]
    cols = [i for items in sets for i in items]
    return torch.tensor([rows, cols], dtype=torch.long).view(2, -1)


def test_target_ranks_hand_computed():
    items = torch.tensor([[3.0], [2.0], [1.0], [0.0], [2.0]])
    q = torch.tensor([[1.0], [-1.0]])
    ranks = target_ranks(q, items, torch.tensor([1, 1]))
    # query 0: scores 3,2,1,0,2 -> item 0 above, item 4 ties (counted against) -> rank 3
    # query 1: scores -3,-2,-1,0,-2 -> items 2, 3 above, item 4 ties -> rank 4
    assert ranks.tolist() == [3, 4]
    excl = target_ranks(q, items, torch.tensor([1, 1]), exclude=torch.tensor([[0, 1], [0, 3]]))
    assert excl.tolist() == [2, 3]
    self_excl = target_ranks(q, items, torch.tensor([1, 1]), query_items=torch.tensor([4, 3]))
    assert self_excl.tolist() == [2, 3]


@pytest.mark.parametrize("batch_size", [1, 3, 1024])
def test_target_ranks_match_brute_force(batch_size):
    B, I, d = 7, 40, 5
    q, items = torch.randn(B, d), torch.randn(I, d)
    target = torch.randint(0, I, (B,))
    query_items = torch.randint(0, I, (B,))
    sets = [set(torch.randint(0, I, (5,)).tolist()) for _ in range(B)]
    sets[2] = set()
    sets[4].add(int(target[4]))  # the target is never excluded
    csr = to_csr(pairs_from_sets(sets), B)
    full_sets = [sets[b] | {int(query_items[b])} - {int(target[b])} for b in range(B)]
    expected = brute_ranks(q, items, target, full_sets)
    for exclude in (pairs_from_sets(sets), csr):
        got = target_ranks(q, items, target, exclude=exclude, query_items=query_items,
                           batch_size=batch_size)
        assert got.tolist() == expected.tolist()


def test_degenerate_embeddings_rank_last():
    ranks = target_ranks(torch.zeros(3, 4), torch.zeros(50, 4), torch.tensor([0, 10, 49]))
    assert ranks.tolist() == [50, 50, 50]


def test_rank_metrics_limit_and_hand_cases():
    perfect = torch.ones(5, dtype=torch.long)
    for fn in (lambda r: hit_rate_at_k(r, 1), scaled_mrr, mrr, lambda r: ndcg_at_k(r, 1)):
        assert fn(perfect).item() == pytest.approx(1.0)
    ranks = torch.tensor([1, 100, 101, 250])
    assert scaled_mrr(ranks).item() == pytest.approx((1 + 1 + 1 / 2 + 1 / 3) / 4)
    assert scaled_mrr(ranks, scale=1).item() == pytest.approx(mrr(ranks).item())
    assert hit_rate_at_k(ranks, 100).item() == pytest.approx(0.5)
    assert hit_rate_at_k(ranks, 500).item() == pytest.approx(1.0)
    assert ndcg_at_k(torch.tensor([1, 2, 11]), 10).item() == pytest.approx(
        (1 + 1 / math.log2(3)) / 3)
    worst = torch.full((4,), 5_000_000)  # last of the paper's 5M candidates
    assert scaled_mrr(worst).item() == pytest.approx(1 / 50_000)
    assert hit_rate_at_k(worst, 500).item() == 0.0
    with pytest.raises(ValueError, match="k=0"):
        hit_rate_at_k(ranks, 0)
    with pytest.raises(ValueError, match="scale"):
        scaled_mrr(ranks, scale=0)


def test_sampled_protocol():
    B, I, d = 6, 300, 8
    q, items = torch.randn(B, d), torch.randn(I, d)
    candidates = torch.stack([torch.randperm(I)[:100] for _ in range(B)])
    ranks = candidate_ranks(q, items, candidates)
    for b in range(B):  # same as ranking within the row's own sub-catalogue
        sub = target_ranks(q[b:b + 1], items[candidates[b]], torch.tensor([0]))
        assert int(ranks[b]) == int(sub)
    out = sampled_metrics(q, items, candidates, k=10)
    assert out["hr@10"].item() == pytest.approx((ranks <= 10).float().mean().item())
    expected_ndcg = sum(1 / math.log2(r + 1) for r in ranks.tolist() if r <= 10) / B
    assert out["ndcg@10"].item() == pytest.approx(expected_ndcg)

    # limit cases: target first -> 1.0; target last of 100 -> HR@10 = NDCG@10 = 0, rank 100
    s = items @ q.T  # [I, B]
    best = torch.stack([torch.argsort(s[:, b], descending=True)[:100] for b in range(B)])
    out = sampled_metrics(q, items, best, k=10)
    assert out["hr@10"].item() == 1.0 and out["ndcg@10"].item() == pytest.approx(1.0)
    worst = torch.cat([best[:, -1:], best[:, :-1]], 1)
    assert candidate_ranks(q, items, worst).tolist() == [100] * B
    out = sampled_metrics(q, items, worst, k=10)
    assert out["hr@10"].item() == 0.0 and out["ndcg@10"].item() == 0.0
    with pytest.raises(ValueError, match="candidates"):
        candidate_ranks(q, items, candidates[:2])


def brute_full(u, items, gt_sets, train_sets, k):
    recall, ndcg, n = 0.0, 0.0, 0
    for b in range(u.size(0)):
        if not gt_sets[b]:
            continue
        s = items @ u[b]
        s[list(train_sets[b])] = -float("inf")
        top = torch.argsort(s, descending=True)[:k].tolist()
        hits = [1.0 if i in gt_sets[b] else 0.0 for i in top]
        recall += sum(hits) / len(gt_sets[b])
        dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
        idcg = sum(1 / math.log2(r + 2) for r in range(min(k, len(gt_sets[b]))))
        ndcg += dcg / idcg
        n += 1
    return recall / n, ndcg / n


def test_full_ranking_matches_brute_force_and_pyg():
    U, I, d = 9, 60, 6
    u, items = torch.randn(U, d), torch.randn(I, d)
    train = [set(torch.randperm(I)[:8].tolist()) for _ in range(U)]
    gt = [set(torch.randperm(I)[:n].tolist()) - train[b] for b, n in
          enumerate([3, 1, 12, 0, 5, 25, 2, 7, 4])]
    gt_pairs, train_pairs = pairs_from_sets(gt), pairs_from_sets(train)
    for bs in (2, 1024):
        out = full_ranking_metrics(u, items, gt_pairs, k=[5, 20], exclude=train_pairs,
                                   batch_size=bs)
        for k in (5, 20):
            rec, ndcg = brute_full(u, items, gt, train, k)
            assert out[f"recall@{k}"].item() == pytest.approx(rec, abs=1e-6)
            assert out[f"ndcg@{k}"].item() == pytest.approx(ndcg, abs=1e-6)

    _, top = topk_items(u, items, 20, exclude=to_csr(train_pairs, U))
    for k in (5, 20):
        rec, nd = LinkPredRecall(k), LinkPredNDCG(k)
        rec.update(top[:, :k], gt_pairs)
        nd.update(top[:, :k], gt_pairs)
        out = full_ranking_metrics(u, items, to_csr(gt_pairs, U), k=k, exclude=train_pairs)
        assert out[f"recall@{k}"].item() == pytest.approx(rec.compute().item(), abs=1e-6)
        assert out[f"ndcg@{k}"].item() == pytest.approx(nd.compute().item(), abs=1e-6)
        assert set(out) == {f"recall@{k}", f"ndcg@{k}"}


def test_full_ranking_limit_cases_and_masking():
    # item i scores i for every user: top items are the highest ids
    items = torch.arange(10, dtype=torch.float).view(-1, 1)
    u = torch.ones(2, 1)
    gt = pairs_from_sets([{9, 8}, {0}])
    out = full_ranking_metrics(u, items, gt, k=2)
    # user 0 perfect (1.0); user 1 has its item ranked last (0.0)
    assert out["recall@2"].item() == pytest.approx(0.5)
    assert out["ndcg@2"].item() == pytest.approx(0.5)
    # masking items 1..9 for user 1 brings item 0 to the top; training items never count
    train = pairs_from_sets([set(), set(range(1, 10))])
    out = full_ranking_metrics(u, items, gt, k=2, exclude=train)
    assert out["recall@2"].item() == 1.0 and out["ndcg@2"].item() == pytest.approx(1.0)
    _, top = topk_items(u, items, 3, exclude=pairs_from_sets([{9}, set()]), query_items=torch.tensor([8, 0]))
    assert top.tolist() == [[7, 6, 5], [9, 8, 7]]
    # hand-computed: gt {9, 5} with k=3 -> hits at ranks 1 and (none) -> recall 1/2,
    # ndcg = 1 / (1 + 1/log2(3))
    out = full_ranking_metrics(u[:1], items, pairs_from_sets([{9, 5}]), k=3)
    assert out["recall@3"].item() == pytest.approx(0.5)
    assert out["ndcg@3"].item() == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_bad_args():
    q, items = torch.randn(2, 3), torch.randn(5, 3)
    with pytest.raises(ValueError, match="k=6"):
        topk_items(q, items, 6)
    with pytest.raises(ValueError, match="k="):
        full_ranking_metrics(q, items, torch.tensor([[0], [1]]), k=0)
    with pytest.raises(ValueError, match="item_emb"):
        target_ranks(q, torch.randn(5, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="target"):
        target_ranks(q, items, torch.tensor([0]))
    with pytest.raises(ValueError, match="indptr"):
        target_ranks(q, items, torch.tensor([0, 1]), exclude=(torch.tensor([0, 1]), torch.tensor([2])))
    with pytest.raises(ValueError, match="rows outside"):
        target_ranks(q, items, torch.tensor([0, 1]), exclude=torch.tensor([[2], [0]]))
    with pytest.raises(ValueError, match="batch_size"):
        target_ranks(q, items, torch.tensor([0, 1]), batch_size=0)
