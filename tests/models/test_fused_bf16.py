"""The fused CPU nodes under CPU autocast to bfloat16 (``trainer.precision: bf16-mixed``): the
fused node is taken, its GEMMs run on bf16 operands (the result is not float32's bit for bit)
and values and gradients equal the float32 op-by-op path within bf16 tolerance; outputs and
gradients stay float32. Without autocast nothing changed (tests/models/test_fused.py,
test_loss.py)."""

import pytest
import torch
import torch.nn.functional as F

from models.convolve import Convolve
from models.fused_bf16 import gemm_dtype
from models.pinsage import PinSage
from models.sparse import SparseAdjacency

BF16 = {"device_type": "cpu", "dtype": torch.bfloat16}


def _adj(n_dst, n_src, seed=0):
    g = torch.Generator().manual_seed(seed)
    deg = torch.randint(0, 6, (n_dst,), generator=g)
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), deg.cumsum(0)])
    col = torch.randint(0, n_src, (int(deg.sum()),), generator=g)
    return SparseAdjacency(ptr, col, torch.rand(col.numel(), generator=g) + 0.1, num_src=n_src)


def _grads(out, inputs, seed=1):
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    return torch.autograd.grad((out * w).sum() + out.square().sum(), inputs)


def _err(a, ref):
    return float((a.detach().float() - ref).norm() / ref.norm().clamp(min=1e-30))


def _near(fused, ref, autocast_ref):
    """``fused`` (bf16 GEMMs) is float32 and as near the float32 ``ref`` as the op-by-op path
    under the same autocast (``autocast_ref``) is, in relative Frobenius norm (bf16 rounding
    flips some ReLU masks and cancels in some weight gradients on both paths alike: a few % there)."""
    assert fused.dtype == torch.float32 and fused.shape == ref.shape
    e, e_ac = _err(fused, ref), _err(autocast_ref, ref)
    assert e <= 1.5 * e_ac + 5e-3, f"bf16 GEMMs: |diff| / |ref| = {e:.3g}; op by op under autocast {e_ac:.3g}"
    return e


def _not_all_equal(pairs):
    assert any(not torch.equal(a, b) for a, b in pairs), "bf16 autocast gave float32's exact values"


def test_gemm_dtype_follows_the_cpu_autocast_state():
    assert gemm_dtype() is None
    with torch.autocast(**BF16):
        assert gemm_dtype() is torch.bfloat16
        with torch.autocast("cpu", enabled=False):
            assert gemm_dtype() is None
    with torch.autocast("cpu", dtype=torch.float16):
        assert gemm_dtype() is None
    assert gemm_dtype() is None


def _op_by_op_in_bf16(fn, params, seed):
    """``fn()`` (an op-by-op path) under bf16 autocast, and the gradients of :func:`_grads`."""
    with torch.autocast(**BF16):
        out = fn()
    return out, _grads(out.float(), params, seed=seed)


def test_lightning_bf16_mixed_turns_the_bf16_gemms_on():
    """``trainer.precision: bf16-mixed`` on the CPU is Lightning's MixedPrecision plugin: its
    forward context is where the fused nodes read their GEMM precision."""
    from pytorch_lightning.plugins.precision import MixedPrecision

    with MixedPrecision("bf16-mixed", device="cpu").forward_context():
        assert gemm_dtype() is torch.bfloat16
    with MixedPrecision("16-mixed", device="cpu").forward_context():
        assert gemm_dtype() is None


@pytest.mark.parametrize("kw,n_dst", [({}, 30), ({"use_weights": False}, 30), ({"normalize": False}, 30),
                                      ({"bias": False}, 30), ({}, 40)])
def test_convolve_node_in_bf16_is_near_float32(kw, n_dst):
    torch.manual_seed(0)
    layer = Convolve(16, 24, 16, **kw)  # message width 24 != input width 16
    adj = _adj(n_dst, 40)
    h = torch.randn(40, 16, requires_grad=True)
    params = [h] + list(layer.parameters())
    ref = layer((h, h[:n_dst]), adj)  # float32, op by op
    g_ref = _grads(ref, params)
    ac, g_ac = _op_by_op_in_bf16(lambda: layer((h, h[:n_dst]), adj), params, 1)
    with torch.autocast(**BF16):
        out = layer.forward_prefix(h, n_dst, adj)
    assert out.grad_fn.name().endswith("ConvolveCSRBackward")
    g = _grads(out, params)
    _near(out, ref, ac)
    for a, b, c in zip(g, g_ref, g_ac):
        _near(a, b, c)
    _not_all_equal([(out, ref)] + list(zip(g, g_ref)))


@pytest.mark.parametrize("skip,out", [(False, 8), (True, 16), (True, 8)])
def test_head_node_in_bf16_is_near_float32(skip, out):
    torch.manual_seed(0)
    model = PinSage(5, 16, out, num_layers=1, skip=skip)
    h = torch.randn(50, 16, requires_grad=True)
    h0 = torch.randn(50, 16, requires_grad=True)
    params = [h] + ([h0] if skip else []) + [p for m in (model.lin_g1, model.lin_g2, model.lin_skip)
                                              if m is not None for p in m.parameters()]
    model.fused_nodes = False
    ref = model.head(h, h0 if skip else None)
    g_ref = _grads(ref, params, seed=2)
    ac, g_ac = _op_by_op_in_bf16(lambda: model.head(h, h0 if skip else None), params, 2)
    model.fused_nodes = True
    with torch.autocast(**BF16):
        z = model.head(h, h0 if skip else None)
    assert z.grad_fn.name().endswith("HeadFnBackward")
    g = _grads(z, params, seed=2)
    _near(z, ref, ac)
    for a, b, c in zip(g, g_ref, g_ac):
        _near(a, b, c)
    _not_all_equal([(z, ref)] + list(zip(g, g_ref)))


def test_whole_model_in_bf16_is_near_float32():
    """Encoder, two CSR layers and the head under bf16 autocast: every fused node, embeddings and
    parameter gradients as near the float32 op-by-op path's as that path under autocast."""
    torch.manual_seed(0)
    model = PinSage(3, 16, 16, num_layers=2, num_items=60, id_embedding=True, skip=True)
    blocks = [_adj(45, 60, seed=4), _adj(30, 45, seed=5)]
    x, ids = torch.randn(60, 3), torch.arange(60)
    params = list(model.parameters())
    model.fused_nodes = False
    ref = model(x, ids, blocks)
    g_ref = _grads(ref, params, seed=6)
    ac, g_ac = _op_by_op_in_bf16(lambda: model(x, ids, blocks), params, 6)
    model.fused_nodes = True
    with torch.autocast(**BF16):
        z = model(x, ids, blocks)
    assert z.grad_fn.name().endswith("HeadFnBackward")
    g = _grads(z, params, seed=6)
    _near(z, ref, ac)
    for a, b, c in zip(g, g_ref, g_ac):
        _near(a, b, c)
    _not_all_equal([(z, ref)] + list(zip(g, g_ref)))


def _softmax_case(seed, q_rows=40, n_neg=23, d=16):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(q_rows, d, generator=g), dim=1).requires_grad_()
    p = F.normalize(torch.randn(q_rows, d, generator=g), dim=1).requires_grad_()
    n = F.normalize(torch.randn(n_neg, d, generator=g), dim=1).requires_grad_()
    return q, p, n


def _three_ways(fn, inputs):
    """``fn(fused)`` float32 op by op, op by op under bf16 autocast, fused under bf16 autocast:
    ``(loss, gradients)`` each."""
    out = []
    for fused, ac in ((False, False), (False, True), (True, True)):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=ac):
            loss = fn(fused)
        out.append((loss, torch.autograd.grad(loss, inputs)))
    return out


@pytest.mark.parametrize("temperature", [0.1, 0.015])  # |logit| <= 10 (exp unshifted) / 67 (row max)
@pytest.mark.parametrize("tiny", [False, True])
def test_fused_softmax_in_bf16_is_near_float32(monkeypatch, temperature, tiny):
    import models.fused
    from models.fused import NegativesLSE
    from models.loss import sampled_softmax_loss

    if tiny:
        monkeypatch.setattr(models.fused, "_BLOCK_BYTES", 1)  # blocks of 16 rows
    calls, orig = [], NegativesLSE.apply
    monkeypatch.setattr(NegativesLSE, "apply", lambda *a: calls.append(1) or orig(*a))
    q, p, n = _softmax_case(0)
    (ref, g_ref), (ac, g_ac), (loss, g) = _three_ways(
        lambda fused: sampled_softmax_loss(q, p, n, None, temperature, fused=fused)[0], [q, p, n])
    assert len(calls) == 1 and loss.dtype == torch.float32
    _near(loss, ref, ac)
    for a, b, c in zip(g, g_ref, g_ac):
        _near(a, b, c)
    _not_all_equal([(loss, ref)] + list(zip(g, g_ref)))


@pytest.mark.parametrize("masked", [False, True])
def test_fused_grouped_softmax_in_bf16_is_near_float32(monkeypatch, masked):
    """The grouped form (shared queries, a negatives mask, the probe's rows elsewhere)."""
    import models.fused
    from models.loss import SampledSoftmaxLoss

    monkeypatch.setattr(models.fused, "_BLOCK_BYTES", 1)
    loss_fn = SampledSoftmaxLoss(temperature=0.1)
    q, _, n = _softmax_case(1, n_neg=31)
    row = torch.randint(0, 40, (70,), generator=torch.Generator().manual_seed(2))
    p = F.normalize(torch.randn(70, 16), dim=1).requires_grad_()
    mask = None
    if masked:
        mask = torch.rand(40, 31, generator=torch.Generator().manual_seed(3)) < 0.4
        mask[4] = True  # every negative left out: that query's pairs have loss 0, no NaN

    def run(fused):
        loss_fn.fused = fused
        return loss_fn.grouped(q, row, p, n, neg_mask=mask)[0]

    (ref, g_ref), (ac, g_ac), (loss, g) = _three_ways(run, [q, p, n])
    _near(loss, ref, ac)
    for a, b, c in zip(g, g_ref, g_ac):
        assert torch.isfinite(a).all()
        _near(a, b, c)
    _not_all_equal([(loss, ref)] + list(zip(g, g_ref)))


@pytest.mark.parametrize("relu,normalize,add", [(True, False, False), (False, True, True), (True, True, False)])
def test_bf16_passes_equal_the_float32_passes_on_bf16_values(relu, normalize, add):
    """models.fused_bf16's passes: the bf16 product read as torch converts it, the bf16 copies
    written as torch rounds (to nearest even, bit for bit), into strided views too; the float32
    values as the float32 passes' on the same inputs."""
    from models.fused import _normalize_backward, epilogue_rows_, relu_mask_
    from models.fused_bf16 import epilogue_lo, normalize_backward_lo, relu_mask_lo

    g = torch.Generator().manual_seed(0)
    src = torch.randn(70, 12, generator=g).bfloat16()
    src[3] = 0.0  # a zero row: norm clamped
    bias, addend = torch.randn(12, generator=g), torch.randn(70, 12, generator=g)
    scale = torch.empty(70)
    out, out_lo = epilogue_lo(src, bias, relu, normalize, scale=scale, add=addend if add else None, want_lo=True)
    ref_scale = torch.empty(70)
    ref = epilogue_rows_(src.float() + (addend if add else 0.0), bias, relu, normalize, scale=ref_scale)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    assert torch.equal(out_lo, out.bfloat16())
    if normalize:
        torch.testing.assert_close(scale, ref_scale)

    grad, y = torch.randn(70, 12, generator=g), torch.relu(torch.randn(70, 12, generator=g))
    wide = torch.zeros(70, 20, dtype=torch.bfloat16)  # the gradient into columns 5..16 of a wider buffer
    if normalize:
        cs, f32 = normalize_backward_lo(grad, y, ref_scale, relu, wide[:, 5:17], want_f32=True)
        want, want_cs = torch.empty_like(y), torch.zeros(16, 12)
        _normalize_backward(grad.numpy(), y.numpy(), ref_scale.numpy(), relu, want.numpy(), want_cs.numpy())
        want_cs = want_cs.sum(0)
        torch.testing.assert_close(f32, want, atol=1e-6, rtol=1e-5)
    else:
        cs = relu_mask_lo(grad, y, wide[:, 5:17])
        want = grad.clone()
        want_cs = relu_mask_(want, y, want_sum=True)
    torch.testing.assert_close(wide[:, 5:17].float(), want.bfloat16().float(), atol=1e-6, rtol=1e-2)
    torch.testing.assert_close(cs, want_cs, atol=1e-5, rtol=1e-5)
    assert not wide[:, :5].any() and not wide[:, 17:].any()  # nothing written outside the view
    p = grad.bfloat16()
    cs = relu_mask_lo(p, y, p)  # a bf16 product masked in place
    assert torch.equal(p, grad.bfloat16().masked_fill(y <= 0, 0.0))
    torch.testing.assert_close(cs, p.float().sum(0), atol=1e-5, rtol=1e-5)
