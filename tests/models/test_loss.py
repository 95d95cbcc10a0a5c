import pytest
import torch
import torch.nn.functional as F

from models.loss import MaxMarginLoss, max_margin_loss


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def loop_reference(z_q, z_pos, z_easy, z_hard, margin):
    per_pair = []
    for b in range(z_q.size(0)):
        negs = list(z_easy) + list(z_hard[b])
        terms = [max(0.0, float(z_q[b] @ n - z_q[b] @ z_pos[b] + margin)) for n in negs]
        per_pair.append(sum(terms) / len(terms))
    return sum(per_pair) / len(per_pair)


@pytest.mark.parametrize("n_easy, n_hard", [(7, 3), (5, 0), (0, 2)])
def test_matches_loop_reference(n_easy, n_hard):
    B, d = 4, 6
    z_q, z_pos = F.normalize(torch.randn(B, d), dim=1), F.normalize(torch.randn(B, d), dim=1)
    z_easy = F.normalize(torch.randn(n_easy, d), dim=1)
    z_hard = F.normalize(torch.randn(B, n_hard, d), dim=-1)
    loss, stats = MaxMarginLoss(margin=0.3)(z_q, z_pos, z_easy, z_hard)
    assert loss.item() == pytest.approx(loop_reference(z_q, z_pos, z_easy, z_hard, 0.3), abs=1e-6)
    # None is the same as an empty set
    loss2, _ = max_margin_loss(z_q, z_pos, z_easy if n_easy else None,
                               z_hard if n_hard else None, margin=0.3)
    assert loss2.item() == pytest.approx(loss.item())
    negs = torch.cat([z_q @ z_easy.T, torch.einsum("bd,bhd->bh", z_q, z_hard)], 1)
    assert stats["pos_score"].item() == pytest.approx((z_q * z_pos).sum(1).mean().item(), abs=1e-6)
    assert stats["neg_score"].item() == pytest.approx(negs.mean().item(), abs=1e-6)
    viol = (negs - (z_q * z_pos).sum(1, keepdim=True) + 0.3 > 0).float().mean()
    assert stats["violated"].item() == pytest.approx(viol.item())


def test_limit_cases():
    e = torch.eye(3)
    # positive identical to query, negatives orthogonal: margin satisfied when margin < 1
    z_q, z_pos, z_easy = e[:1], e[:1], e[1:]
    loss, stats = max_margin_loss(z_q, z_pos, z_easy, margin=0.5)
    assert loss.item() == 0.0 and stats["violated"].item() == 0.0
    # margin exactly reached: still zero loss (hinge is max(0, .)) and not counted as violated
    loss, stats = max_margin_loss(z_q, z_pos, z_easy, margin=1.0)
    assert loss.item() == 0.0 and stats["violated"].item() == 0.0
    # swapped roles: every negative scores 1, positive scores 0 -> loss = 1 + margin
    loss, stats = max_margin_loss(z_q, e[1:2], torch.cat([e[:1], e[:1]]), margin=0.1)
    assert loss.item() == pytest.approx(1.1) and stats["violated"].item() == 1.0
    # hand-computed mix: pos score 0.5, negatives 0.9 and 0.0, margin 0.2 -> (0.6 + 0) / 2
    q = torch.tensor([[1.0, 0.0]])
    loss, _ = max_margin_loss(q, torch.tensor([[0.5, 1.0]]), torch.tensor([[0.9, 3.0]]),
                              torch.tensor([[[0.0, 1.0]]]), margin=0.2)
    assert loss.item() == pytest.approx(0.3)


def test_gradients_flow_to_all_inputs():
    z = [torch.randn(2, 3, requires_grad=True), torch.randn(2, 3, requires_grad=True),
         torch.randn(4, 3, requires_grad=True), torch.randn(2, 2, 3, requires_grad=True)]
    loss, stats = max_margin_loss(*z, margin=10.0)  # all hinges active
    loss.backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in z)
    assert not any(v.requires_grad for v in stats.values())
    # d loss / d z_pos = -mean over (pairs, negatives) of z_q -> -z_q / B per row
    torch.testing.assert_close(z[1].grad, -z[0].detach() / 2)


def test_bad_args():
    z = torch.randn(2, 3)
    with pytest.raises(ValueError, match="margin"):
        MaxMarginLoss(margin=-0.1)
    with pytest.raises(ValueError, match="no negatives"):
        max_margin_loss(z, z)
    with pytest.raises(ValueError, match="no negatives"):
        max_margin_loss(z, z, torch.empty(0, 3), torch.empty(2, 0, 3))
    with pytest.raises(ValueError, match="z_easy"):
        max_margin_loss(z, z, torch.randn(4, 2))
    with pytest.raises(ValueError, match="z_hard"):
        max_margin_loss(z, z, None, torch.randn(3, 1, 3))
    with pytest.raises(ValueError, match="z_pos"):
        max_margin_loss(z, torch.randn(3, 3), torch.randn(4, 3))
    assert repr(MaxMarginLoss(0.2)) == "MaxMarginLoss(margin=0.2)"


def test_pair_weights_give_a_weighted_mean():
    """weight 2 on a pair = that pair twice; no weight = every pair the same."""
    import torch

    from models.loss import max_margin_loss, sampled_softmax_loss

    torch.manual_seed(0)
    q, p, n = torch.randn(3, 8), torch.randn(3, 8), torch.randn(5, 8)
    for fn in (max_margin_loss, sampled_softmax_loss):
        twice = fn(q[[0, 0, 1, 2]], p[[0, 0, 1, 2]], n)[0]
        assert torch.allclose(fn(q, p, n, weight=torch.tensor([2.0, 1.0, 1.0]))[0], twice)
        assert torch.allclose(fn(q, p, n, weight=torch.ones(3))[0], fn(q, p, n)[0])


def test_grouped_softmax_equals_the_expanded_pairs():
    """Pairs sharing queries: the negatives scored once per query give the same loss, stats and
    gradients as one row per pair."""
    import torch

    from models.loss import SampledSoftmaxLoss

    torch.manual_seed(1)
    fn = SampledSoftmaxLoss(temperature=0.2)
    q = torch.randn(4, 8, requires_grad=True)
    p, n = torch.randn(9, 8, requires_grad=True), torch.randn(6, 8, requires_grad=True)
    row, w = torch.tensor([0, 0, 1, 2, 2, 2, 3, 3, 1]), torch.rand(9)
    a, sa = fn.grouped(q, row, p, n, weight=w)
    ga = torch.autograd.grad(a, (q, p, n))
    b, sb = fn(q[row], p, n, weight=w)
    gb = torch.autograd.grad(b, (q, p, n))
    assert torch.allclose(a, b, atol=1e-6)
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(ga, gb))
    assert all(torch.allclose(sa[k], sb[k], atol=1e-6) for k in ("violated", "pos_score", "neg_score"))


# -- the fused sampled softmax (models.fused.NegativesLSE) equals the op-by-op path ---------------


def _count_fused(monkeypatch):
    """Wrap NegativesLSE.apply and count the calls (the fused path was taken)."""
    from models.fused import NegativesLSE

    calls, orig = [], NegativesLSE.apply
    monkeypatch.setattr(NegativesLSE, "apply", lambda *a: calls.append(1) or orig(*a))
    return calls


def _loss_and_grads(fn, inputs):
    loss, stats = fn()
    return loss, stats, torch.autograd.grad(loss, [t for t in inputs if t.requires_grad])


def _tiny_blocks(monkeypatch, tiny):
    """Row blocks of 16 rows (the minimum) instead of ~1 MB: several blocks at the tests' sizes."""
    import models.fused

    if tiny:
        monkeypatch.setattr(models.fused, "_BLOCK_BYTES", 1)


@pytest.mark.parametrize("scale", [1.0, 40.0])  # logits within +-60 (exp unshifted) / beyond (row max)
@pytest.mark.parametrize("temperature", [0.1, 0.7])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("tiny", [False, True])
def test_fused_softmax_equals_op_by_op(monkeypatch, scale, temperature, weighted, tiny):
    from models.loss import sampled_softmax_loss

    _tiny_blocks(monkeypatch, tiny)
    calls = _count_fused(monkeypatch)
    q = F.normalize(torch.randn(37, 16), dim=1).mul(scale).requires_grad_()
    p, n = torch.randn(37, 16, requires_grad=True), torch.randn(23, 16, requires_grad=True)
    w = torch.rand(37, requires_grad=True) if weighted else None
    inputs = [q, p, n] + ([w] if weighted else [])
    a, sa, ga = _loss_and_grads(lambda: sampled_softmax_loss(q, p, n, None, temperature, w), inputs)
    assert len(calls) == 1
    b, sb, gb = _loss_and_grads(lambda: sampled_softmax_loss(q, p, n, None, temperature, w, fused=False), inputs)
    assert len(calls) == 1
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)
    for k in ("violated", "pos_score", "neg_score"):
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("rows", ["shared", "one_per_pair"])
@pytest.mark.parametrize("scale", [1.0, 40.0])
def test_fused_grouped_softmax_equals_op_by_op(monkeypatch, masked, weighted, rows, scale):
    from models.loss import SampledSoftmaxLoss

    _tiny_blocks(monkeypatch, True)  # 40 queries: blocks of 16, 16, 8
    calls = _count_fused(monkeypatch)
    fn = SampledSoftmaxLoss(temperature=0.3)
    q = (scale * torch.randn(40, 8)).requires_grad_()
    row = torch.randint(0, 40, (70,)) if rows == "shared" else torch.arange(40)
    p = torch.randn(row.numel(), 8, requires_grad=True)
    n = torch.randn(7, 8, requires_grad=True)
    w = torch.rand(row.numel(), requires_grad=True) if weighted else None
    mask = None
    if masked:
        mask = torch.rand(40, 7) < 0.4
        mask[4] = True  # a query with every negative left out: its pairs' loss is 0, no NaN
    inputs = [q, p, n] + ([w] if weighted else [])
    a, sa, ga = _loss_and_grads(lambda: fn.grouped(q, row, p, n, weight=w, neg_mask=mask), inputs)
    fn.fused = False
    b, sb, gb = _loss_and_grads(lambda: fn.grouped(q, row, p, n, weight=w, neg_mask=mask), inputs)
    assert len(calls) == 1
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for x, y in zip(ga, gb):
        assert torch.isfinite(x).all()
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)
    for k in ("violated", "pos_score", "neg_score"):
        assert torch.isfinite(sa[k])
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bound", [1.0, 100.0])
@pytest.mark.parametrize("masked", [False, True])
def test_negatives_lse_gradcheck(monkeypatch, bound, masked):
    """float64 gradcheck of the node (both exp branches, several row blocks)."""
    from models.fused import NegativesLSE

    _tiny_blocks(monkeypatch, True)
    q = torch.randn(20, 3, dtype=torch.float64, requires_grad=True)
    n = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    mask = (torch.rand(20, 6) < 0.3) if masked else None
    if masked:
        mask[:, 0] = False  # every row keeps a negative (an all -inf row has no finite derivative)
    probe = torch.zeros(2, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: NegativesLSE.apply(a, b, 0.5, mask, bound, probe, None)[0], (q, n))


def test_fused_softmax_second_backward_and_stats_estimate():
    """retain_graph: a second backward pass gives the same gradients; ``violated`` is the share on
    the first 1,024 pairs, on both paths."""
    from models.loss import PROBE_ROWS, sampled_softmax_loss

    q, p = torch.randn(1100, 8, requires_grad=True), torch.randn(1100, 8)
    n = torch.randn(30, 8)
    loss, stats = sampled_softmax_loss(q, p, n, temperature=0.5)
    g1 = torch.autograd.grad(loss, q, retain_graph=True)[0]
    g2 = torch.autograd.grad(loss, q)[0]
    torch.testing.assert_close(g1, g2)
    with torch.no_grad():
        k = PROBE_ROWS
        want = ((q[:k] @ n.T) >= (q[:k] * p[:k]).sum(1, keepdim=True)).float().mean()
    torch.testing.assert_close(stats["violated"], want)
    torch.testing.assert_close(sampled_softmax_loss(q, p, n, temperature=0.5, fused=False)[1]["violated"], want)


def test_fused_softmax_only_on_the_cpu_float32_fast_path(monkeypatch):
    """Hard negatives, float64 and float16 autocast keep the op-by-op path; bf16 autocast takes
    the fused node (its GEMMs in bf16: tests/models/test_fused_bf16.py)."""
    from models.loss import sampled_softmax_loss

    calls = _count_fused(monkeypatch)
    q, p, n, h = torch.randn(3, 4), torch.randn(3, 4), torch.randn(5, 4), torch.randn(3, 2, 4)
    sampled_softmax_loss(q, p, n, h)
    sampled_softmax_loss(q.double(), p.double(), n.double())
    with torch.autocast("cpu", dtype=torch.float16):
        sampled_softmax_loss(q, p, n)
    assert not calls
    sampled_softmax_loss(q, p, n)
    assert len(calls) == 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sampled_softmax_loss(q, p, n)
    assert len(calls) == 2


def test_fused_softmax_is_accurate_when_the_positive_dominates():
    """A loss near 0 (positive logit 20 above every negative): softplus(lse - pos) keeps it and
    its gradient to float32 precision (logaddexp(pos, lse) - pos cancels to 0 there)."""
    from models.loss import sampled_softmax_loss

    e = torch.eye(4)
    q = e[:1].repeat(3, 1).requires_grad_()
    n = -e[:1].repeat(20, 1) + 0.01 * torch.randn(20, 4)
    loss, _ = sampled_softmax_loss(q, q.detach(), n, temperature=0.1)
    (g,) = torch.autograd.grad(loss, q)
    q64 = q.detach().double().requires_grad_()
    ref, _ = sampled_softmax_loss(q64, q64.detach(), n.double(), temperature=0.1)
    (g64,) = torch.autograd.grad(ref, q64)
    assert 0 < ref.item() < 1e-6
    torch.testing.assert_close(loss.double(), ref, rtol=1e-4, atol=0)
    torch.testing.assert_close(g.double(), g64, rtol=1e-4, atol=1e-12)
