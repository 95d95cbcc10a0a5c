"""Fused CPU training kernels: a CONVOLVE layer on a CSR block and the output head as single
autograd nodes with hand-written backward passes.

PyTorch's autograd runs :class:`~models.convolve.Convolve` on a minibatch block as ~25 small ops
(two ``Linear``, ReLU, the CSR product, a concatenation, ``F.normalize``'s norm / clamp / divide,
their backward nodes, and the zero-filled gradient buffers of the ``h[:n_src]`` / ``h[:n_dst]``
slices). On a 2-core CPU at batch 512 those memory-bound passes cost about as much as the GEMMs
themselves. Here each layer is: 3 GEMMs and one CSR product forward, 6 GEMMs and one CSR product
backward, plus one numba pass per elementwise stage:

* forward: ``msg = ReLU(Q h + q)`` (GEMM, ReLU in place), ``n = A msg`` (CSR), ``W`` applied as
  its self and neighbour halves (two GEMMs into one buffer, no concatenation), then bias, ReLU
  and the L2 norm in one pass (:func:`_epilogue_rows`, which also keeps each row's ``1 / norm``);
* backward: the normalisation and ReLU gradients in one pass (:func:`_normalize_backward`, the
  bias gradient's column sums in the same pass), the weight gradients, ``A^T`` (the precomputed
  transpose) on the neighbour half, the ReLU mask of the messages in place with their column sums
  (:func:`_relu_mask_`), and the target rows' gradient added into the
  sources' (targets are a prefix of the sources in the minibatch layout), so ``h`` gets one
  gradient tensor and no slice buffers.

The head (``norm(G2 ReLU(G1 h + g) [+ skip])``) is fused the same way, and a whole-catalogue
step's input encoder (``ReLU(A x + a) + E``, :class:`EncodeFn`) is one numba pass each way. Values
and gradients equal the unfused path (``tests/models/test_fused.py``).

For the whole-catalogue user-query step (issue 19): :class:`NegativesLSE`, the sampled softmax's
log-sum-exp over the shared negatives in cache-sized row blocks (``models.loss``), and
:class:`PoolMinusPositive`, the leave-one-out pooling of only a batch's users' histories
(``models.user_encoder``); equal to their op-by-op forms in ``tests/models/test_loss.py`` /
``test_fused.py``. Used only for contiguous float32 CPU tensors
outside autocast or under CPU autocast to bfloat16 (:func:`fused_ok`); everything else takes the
op-by-op path. Under bf16 autocast (``trainer.precision: bf16-mixed``) the nodes' GEMMs take
bfloat16 operands, cast once (in the numba passes where one touches the rows) and kept for
backward where it uses them (:mod:`models.fused_bf16`); their tensors, numba passes, outputs and
gradients stay float32, and without autocast nothing is cast.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from numba import njit, prange
from torch import Tensor
from torch.autograd.function import once_differentiable

from models.fused_bf16 import (
    cpu_autocast,
    epilogue_lo,
    gemm_dtype,
    gemm_precision,
    lo,
    mm,
    mm_lo,
    normalize_backward_lo,
    relu_mask_lo,
)
from models.sparse import csr_mm

EPS = 1e-12  #: as ``F.normalize``: rows are divided by ``max(||row||_2, EPS)``

_EMPTY = torch.empty(0)


@njit(parallel=True, nogil=True, fastmath=True, cache=True)
def _epilogue_rows(out, bias, has_bias, relu, normalize, scale):  # pragma: no cover - numba
    """In place per row: ``+ bias``, ReLU, ``/ max(||row||, EPS)``; ``scale[r] = 1 / max(...)``
    when ``scale`` has a slot per row (the backward pass reads it)."""
    n, d = out.shape
    keep = scale.shape[0] == n
    for r in prange(n):
        o = out[r]
        ss = 0.0
        for j in range(d):
            v = o[j] + bias[j] if has_bias else o[j]
            if relu and v < 0.0:
                v = 0.0
            o[j] = v
            ss += v * v
        if normalize:
            s = 1.0 / max(math.sqrt(ss), 1e-12)
            if keep:
                scale[r] = s
            for j in range(d):
                o[j] *= s


_SUM_CHUNKS = 16  #: row chunks of the backward passes' column sums (fixed: the same sums on any threads)


@njit(parallel=True, nogil=True, fastmath=True, cache=True)
def _normalize_backward(grad, y, scale, relu, out, colsum):  # pragma: no cover - numba
    """Gradient of ``y = f(p) / max(||f(p)||, EPS)`` w.r.t. ``p`` (``f`` = ReLU or identity), from
    the output ``y`` and ``scale = 1 / max(||f(p)||, EPS)``: ``scale * (g - y (g . y))`` (no
    projection on a row whose norm was clamped), zero where the ReLU was off (``y <= 0``); with
    ``colsum [C, d]`` (``C > 0``) each row chunk's column sums of ``out`` in the same pass (the bias
    gradient, ``colsum.sum(0)``)."""
    n, d = grad.shape
    sums = colsum.shape[0] > 0
    nc = colsum.shape[0] if sums else _SUM_CHUNKS
    for c in prange(nc):
        for r in range(c * n // nc, (c + 1) * n // nc):
            g, yr, o = grad[r], y[r], out[r]
            s = scale[r]
            dot = 0.0
            if s < 1e12:  # 1 / EPS: the norm was clamped, the denominator is a constant
                for j in range(d):
                    dot += g[j] * yr[j]
            for j in range(d):
                if relu and yr[j] <= 0.0:
                    o[j] = 0.0
                else:
                    o[j] = s * (g[j] - yr[j] * dot)
            if sums:
                for j in range(d):
                    colsum[c, j] += o[j]


@njit(parallel=True, nogil=True, fastmath=True, cache=True)
def _relu_mask_(grad, act, colsum):  # pragma: no cover - numba
    """``grad[act <= 0] = 0`` in place (ReLU's backward, from its output ``act``); with ``colsum
    [C, d]`` (``C > 0``) each row chunk's column sums of the result in the same pass."""
    n, d = grad.shape
    sums = colsum.shape[0] > 0
    nc = colsum.shape[0] if sums else _SUM_CHUNKS
    for c in prange(nc):
        for r in range(c * n // nc, (c + 1) * n // nc):
            g, a = grad[r], act[r]
            for j in range(d):
                if a[j] <= 0.0:
                    g[j] = 0.0
            if sums:
                for j in range(d):
                    colsum[c, j] += g[j]


def _colsum(d: int, want: bool) -> Tensor:
    """Per-chunk column sums for :func:`_normalize_backward` / :func:`_relu_mask_`, or none."""
    return torch.zeros(_SUM_CHUNKS if want else 0, d)


def relu_mask_(grad: Tensor, act: Tensor, want_sum: bool = False) -> Optional[Tensor]:
    """:func:`_relu_mask_` on contiguous ``grad`` (in place) and ``act``; the column sums of the
    masked ``grad`` when ``want_sum`` (else :obj:`None`)."""
    cs = _colsum(grad.size(1), want_sum)
    _relu_mask_(grad.numpy(), act.numpy(), cs.numpy())
    return cs.sum(0) if want_sum else None


def fused_ok(*tensors: Tensor) -> bool:
    """The fused kernels apply: contiguous float32 CPU tensors, autocast off or to bfloat16 (then
    their GEMMs on bfloat16 operands, :func:`gemm_dtype`)."""
    return ((not cpu_autocast() or gemm_dtype() is not None)
            and all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors))


def _linear_relu(x: Tensor, w: Tensor, b: Optional[Tensor]) -> Tensor:
    """``ReLU(x W^T + b)``: the GEMM, then bias and ReLU in one pass (``addmm`` would first copy
    the broadcast bias into the whole output)."""
    return epilogue_rows_(torch.mm(x, w.t()), b, relu=True, normalize=False)


def _norm_grad(g: Tensor, y: Tensor, scale: Tensor, relu: bool, normalize: bool, want_sum: bool) -> tuple:
    """The gradient before the epilogue (norm / ReLU) and, with ``want_sum``, its column sums."""
    g = g.contiguous()
    if normalize:
        out, cs = torch.empty_like(y), _colsum(y.size(1), want_sum)
        _normalize_backward(g.numpy(), y.numpy(), scale.numpy(), relu, out.numpy(), cs.numpy())
        return out, (cs.sum(0) if want_sum else None)
    if relu:
        g = g.clone()
        return g, relu_mask_(g, y, want_sum)
    return g, (g.sum(0) if want_sum else None)


def epilogue_rows_(out: Tensor, bias: Optional[Tensor], relu: bool, normalize: bool,
                   scale: Optional[Tensor] = None) -> Tensor:
    """:func:`_epilogue_rows` on contiguous CPU float32 ``out`` (no autograd)."""
    b = bias.detach() if bias is not None else _EMPTY
    _epilogue_rows(out.numpy(), b.numpy(), bias is not None, relu, normalize,
                   (scale if scale is not None else _EMPTY).numpy())
    return out


class ConvolveCSR(torch.autograd.Function):
    """``norm(ReLU(W [h[:n_dst] ; A ReLU(Q h + q)] + w))`` for ``h [n_src, d]`` and a CSR
    ``A [n_dst, n_src]`` with its transpose ``A_t``; one gradient for ``h`` (both uses). With
    bf16 GEMMs (:func:`gemm_dtype`): ``h`` and ``A msg`` cast once into the two parts of one bf16
    buffer (``W`` one GEMM and its gradient one, no concatenation; what backward keeps of them),
    the passes after each GEMM reading its bf16 product (:func:`epilogue_lo`), and backward's
    passes writing ``[A^T-side message gradient ; target gradient]`` as one bf16 buffer
    (:func:`normalize_backward_lo`, :func:`relu_mask_lo`): ``h``'s gradient is one GEMM on it."""

    @staticmethod
    @gemm_precision
    def forward(ctx, h, n_dst, a, a_t, q_w, q_b, w_w, w_b, normalize):  # type: ignore[override]
        dt, d = ctx.dt, h.size(1)
        scale = torch.empty(n_dst) if normalize else None
        if dt is None:
            msg = _linear_relu(h, q_w, q_b)
            nbr = csr_mm(a, msg)
            out = torch.mm(h[:n_dst], w_w[:, :d].t()).addmm_(nbr, w_w[:, d:].t())
            epilogue_rows_(out, w_b, relu=True, normalize=normalize, scale=scale)
            kept = (h, nbr)
        else:
            hn = h.new_empty(h.size(0), d + q_w.size(0), dtype=dt)
            hn[:, :d].copy_(h)
            msg = epilogue_lo(mm_lo(hn[:, :d], q_w.t()), q_b, relu=True, normalize=False)[0]
            hn[:n_dst, d:].copy_(csr_mm(a, msg))
            out = epilogue_lo(mm_lo(hn[:n_dst], w_w.t()), w_b, relu=True, normalize=normalize, scale=scale)[0]
            kept = (hn, _EMPTY)
        ctx.save_for_backward(*kept, msg, out, scale if normalize else _EMPTY, q_w, w_w)
        ctx.a_t, ctx.n_dst, ctx.d, ctx.normalize = a_t, n_dst, d, normalize
        ctx.has_q_b, ctx.has_w_b = q_b is not None, w_b is not None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        h, nbr, msg, y, scale, q_w, w_w = ctx.saved_tensors  # bf16 GEMMs: h = [h ; A msg], nbr empty
        if ctx.dt is not None:
            return ConvolveCSR._backward_lo(ctx, grad, h, msg, y, scale, q_w, w_w)
        n_dst, d = ctx.n_dst, ctx.d
        gp, d_wb = _norm_grad(grad, y, scale, relu=True, normalize=ctx.normalize, want_sum=ctx.has_w_b)
        gpt = gp.t()
        d_w = torch.cat([torch.mm(gpt, h[:n_dst]), torch.mm(gpt, nbr)], dim=1)
        d_msg = csr_mm(ctx.a_t, torch.mm(gp, w_w[:, d:]))
        d_qb = relu_mask_(d_msg, msg, want_sum=ctx.has_q_b)
        d_q = torch.mm(d_msg.t(), h)
        d_h = None
        if ctx.needs_input_grad[0]:
            d_h = torch.mm(d_msg, q_w)
            d_h[:n_dst].addmm_(gp, w_w[:, :d])
        return d_h, None, None, None, d_q, d_qb, d_w, d_wb, None

    @staticmethod
    def _backward_lo(ctx, grad, hn, msg, y, scale, q_w, w_w):
        """backward with bf16 GEMMs: ``gm = [message gradient | target gradient]`` in bf16."""
        n_dst, d, dt = ctx.n_dst, ctx.d, ctx.dt
        m, n_src = q_w.size(0), hn.size(0)
        gm = hn.new_empty(n_src, m + w_w.size(0))
        gp = gm[:n_dst, m:]
        if ctx.normalize:
            d_wb = normalize_backward_lo(grad, y, scale, relu=True, out_lo=gp)[0]
        else:
            d_wb = relu_mask_lo(grad.contiguous(), y, gp)
        if n_src > n_dst:
            gm[n_dst:, m:].zero_()
        d_w = mm(gp.t(), hn[:n_dst], dt)
        d_qb = relu_mask_lo(csr_mm(ctx.a_t, mm(gp, w_w[:, d:], dt)), msg, gm[:, :m])
        d_q = mm(gm[:, :m].t(), hn[:, :d], dt)
        d_h = mm(gm, torch.cat([q_w, w_w[:, :d]]), dt) if ctx.needs_input_grad[0] else None
        return (d_h, None, None, None, d_q, d_qb if ctx.has_q_b else None, d_w, d_wb if ctx.has_w_b else None,
                None)


class HeadFn(torch.autograd.Function):
    """``norm(G2 ReLU(G1 h + g1) + g2 [+ h0 | + S h0])`` (``skip``: 0 none, 1 identity, 2 ``S``);
    with bf16 GEMMs (:func:`gemm_dtype`) the passes read each bf16 product and write the next
    GEMM's bf16 operand (:func:`epilogue_lo`, :func:`normalize_backward_lo`,
    :func:`relu_mask_lo`); backward keeps ``h``, ``h0`` and the activation as bf16 operands."""

    @staticmethod
    @gemm_precision
    def forward(ctx, h, h0, g1_w, g1_b, g2_w, g2_b, s_w, skip):  # type: ignore[override]
        dt = ctx.dt
        scale = torch.empty(h.size(0))
        if dt is None:
            act = _linear_relu(h, g1_w, g1_b)
            out = torch.mm(act, g2_w.t())
            if skip == 1:
                out.add_(h0)
            elif skip == 2:
                out.addmm_(h0, s_w.t())
            epilogue_rows_(out, g2_b, relu=False, normalize=True, scale=scale)  # + bias in the same pass
            kept = (h, act, _EMPTY, h0)
        else:
            h_lo, h0_lo = lo(h, dt), (lo(h0, dt) if skip == 2 else h0)
            act, act_lo = epilogue_lo(mm_lo(h_lo, g1_w.t()), g1_b, relu=True, normalize=False, want_lo=True)
            add = h0 if skip == 1 else (mm(h0_lo, s_w.t(), dt) if skip == 2 else None)
            out = epilogue_lo(mm_lo(act_lo, g2_w.t()), g2_b, relu=False, normalize=True, scale=scale, add=add)[0]
            kept = (h_lo, act, act_lo, h0_lo)
        h, act, act_lo, h0 = kept
        ctx.save_for_backward(h, act, act_lo, out, scale, g1_w, g2_w, h0 if skip else _EMPTY,
                              s_w if skip == 2 else _EMPTY)
        ctx.skip, ctx.has_b = skip, (g1_b is not None, g2_b is not None)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        h, act, act_lo, y, scale, g1_w, g2_w, h0, s_w = ctx.saved_tensors
        dt = ctx.dt
        if dt is None:
            go, d_g2b = _norm_grad(grad, y, scale, relu=False, normalize=True, want_sum=ctx.has_b[1])
            go_lo = go
            d_g2 = torch.mm(go.t(), act)
            d_act = torch.mm(go, g2_w)
            d_g1b = relu_mask_(d_act, act, want_sum=ctx.has_b[0])
        else:
            go_lo = y.new_empty(y.shape, dtype=dt)
            d_g2b, go = normalize_backward_lo(grad, y, scale, relu=False, out_lo=go_lo, want_f32=ctx.skip == 1)
            d_g2 = mm(go_lo.t(), act_lo, dt)
            d_act = mm_lo(go_lo, g2_w)
            d_g1b = relu_mask_lo(d_act, act, d_act)  # in place, in bf16
            d_g2b, d_g1b = (d_g2b if ctx.has_b[1] else None), (d_g1b if ctx.has_b[0] else None)
        d_g1 = mm(d_act.t(), h, dt)
        d_h = mm(d_act, g1_w, dt) if ctx.needs_input_grad[0] else None
        d_h0 = d_s = None
        if ctx.skip == 1:
            d_h0 = go
        elif ctx.skip == 2:
            d_h0 = mm(go_lo, s_w, dt) if ctx.needs_input_grad[1] else None
            d_s = mm(go_lo.t(), h0, dt)
        return d_h, d_h0, d_g1, d_g1b, d_g2, d_g2b, d_s, None


# -- the input encoder of a whole-catalogue step: ReLU(A x + a) + the ID table, one pass each way --

ENCODE_MAX_FEATURES = 16  #: :class:`EncodeFn` loops over the features per element (no GEMM): few only
_ENCODE_CHUNKS = 16  #: row chunks of the backward's weight-gradient sums (fixed: the same sums on any threads)


@njit(inline="always")
def _encode_pre(xr, wt, b, has_b, v):  # pragma: no cover - numba
    """Row ``xr``'s pre-activations into ``v [d]``: ``a + A x`` (``wt = A^T [F, d]``; the same code
    both ways, so the backward's ReLU mask is the forward's)."""
    for j in range(v.shape[0]):
        v[j] = b[j] if has_b else 0.0
    for k in range(xr.shape[0]):
        xk, wk = xr[k], wt[k]
        for j in range(v.shape[0]):
            v[j] += wk[j] * xk


@njit(parallel=True, nogil=True, cache=True)
def _encode_rows(x, wt, b, has_b, e, out, chunks):  # pragma: no cover - numba
    """``out = ReLU(x A^T + a) + e`` row by row."""
    n, d = out.shape
    for c in prange(chunks):
        v = np.empty(d, dtype=out.dtype)
        for r in range(c * n // chunks, (c + 1) * n // chunks):
            _encode_pre(x[r], wt, b, has_b, v)
            er, o = e[r], out[r]
            for j in range(d):
                o[j] = max(v[j], 0.0) + er[j]


@njit(parallel=True, nogil=True, cache=True)
def _encode_backward(grad, x, wt, b, has_b, d_wt, d_b):  # pragma: no cover - numba
    """Per row chunk ``c``: ``d_wt[c] = sum_r x_r (g_r * [pre_r > 0])^T``, ``d_b[c]`` the masked
    rows' sum (one read of ``grad``; the masked gradient is never stored)."""
    n, d = grad.shape
    f, nc = x.shape[1], d_wt.shape[0]
    for c in prange(nc):
        v = np.empty(d, dtype=grad.dtype)
        for r in range(c * n // nc, (c + 1) * n // nc):
            xr, g = x[r], grad[r]
            _encode_pre(xr, wt, b, has_b, v)
            for j in range(d):
                v[j] = g[j] if v[j] > 0.0 else 0.0
                d_b[c, j] += v[j]
            for k in range(f):
                xk, dk = xr[k], d_wt[c, k]
                for j in range(d):
                    dk[j] += v[j] * xk


class EncodeFn(torch.autograd.Function):
    r""":math:`\mathbf{h}^{(0)} = \mathrm{ReLU}(\mathbf{x}\mathbf{A}^\top + \mathbf{a}) + \mathbf{E}`
    for ``x [I, F]`` (``F <=`` :data:`ENCODE_MAX_FEATURES`), ``A [d, F]``, ``a [d]`` and the whole ID
    table ``E [I, d]`` (a whole-catalogue step, items in id order) -> ``[I, d]``.

    Op by op this is four ``[I, d]`` passes forward (``addmm``'s bias copy and GEMM, ReLU, the add)
    and two backward (ReLU's mask, the bias sum) besides a ``K = I`` GEMM; here one each way: the
    forward writes ``h`` once, the backward reads the gradient once (the pre-activations are
    recomputed from the ``F`` features, the masked gradient is never stored) and hands it to ``E``
    as is."""

    @staticmethod
    def forward(ctx, x, a_w, a_b, e):  # type: ignore[override]
        out = torch.empty_like(e)
        b = a_b.detach() if a_b is not None else _EMPTY
        wt = a_w.detach().t().contiguous()
        _encode_rows(x.detach().numpy(), wt.numpy(), b.numpy(), a_b is not None, e.detach().numpy(), out.numpy(),
                     _ENCODE_CHUNKS)
        ctx.save_for_backward(x, a_w, wt, b)
        ctx.has_b = a_b is not None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        x, a_w, wt, b = ctx.saved_tensors
        grad = grad.contiguous()
        d, f = a_w.shape
        d_wt, d_b = torch.zeros(_ENCODE_CHUNKS, f, d), torch.zeros(_ENCODE_CHUNKS, d)
        _encode_backward(grad.numpy(), x.detach().numpy(), wt.numpy(), b.numpy(), ctx.has_b, d_wt.numpy(), d_b.numpy())
        d_x = None
        if ctx.needs_input_grad[0]:  # features that learn (not the app's): the masked gradient, op by op
            pre = torch.addmm(b, x, a_w.t()) if ctx.has_b else torch.mm(x, a_w.t())
            d_x = torch.mm(grad.masked_fill(pre <= 0, 0.0), a_w)
        d_b = d_b.sum(0) if ctx.has_b else None
        return d_x, d_wt.sum(0).t().contiguous(), d_b, grad if ctx.needs_input_grad[3] else None


# -- sampled softmax: the negatives' log-sum-exp as one node ----------------------------------------

_NO_SHIFT = 60.0  #: ``|logit| <= 60`` everywhere: ``exp`` neither overflows nor underflows unshifted
_BLOCK_BYTES = 1 << 20  #: a row block of logits stays in cache between its GEMM, exp and sum


def _block_rows(n: int) -> int:
    return max(16, min(1024, _BLOCK_BYTES // (4 * max(n, 1))))


def _exp_block(zs: Tensor, z_easy: Tensor, mask: Optional[Tensor], out: Tensor, shift: Optional[Tensor] = None,
               find_shift: bool = False, probe: Optional[Tensor] = None,
               dt: Optional[torch.dtype] = None) -> Optional[Tensor]:
    """One row block in ``out``: the logits ``zs z_easy^T`` (a GEMM in precision ``dt``, operands
    cast by the caller; ``-inf`` where ``mask``), then
    ``exp(logit - shift)`` in place. ``shift`` (per row) :obj:`None`: none; ``find_shift``: write
    the row maxima into it first (0 on an all ``-inf`` row). Returns the count of
    ``logit >= probe`` on the block's first ``probe.numel()`` rows when ``probe`` is given."""
    mm(zs, z_easy.t(), dt, out=out)
    if mask is not None:
        out.masked_fill_(mask, float("-inf"))
    count = None
    if probe is not None and probe.numel():
        count = torch.count_nonzero(out[:probe.numel()] >= probe.unsqueeze(1))  # the logits, before exp
    if shift is not None:
        if find_shift:
            m = out.amax(1)
            shift.copy_(torch.where(torch.isfinite(m), m, torch.zeros_like(m)))
        out.sub_(shift.unsqueeze(1))
    out.exp_()
    return count


class NegativesLSE(torch.autograd.Function):
    r"""Each query's log-sum-exp over the shared negatives,
    :math:`\mathrm{lse}_q = \log \sum_n e^{\mathbf{z}_q\cdot\mathbf{z}_n/\tau}` (``-inf`` where
    ``neg_mask [Q, N]`` leaves a negative out), for ``z_q [Q, d]``, ``z_easy [N, d]`` -> ``[Q]``;
    also returns the detached count of ``logit[probe_rows[k], n] >= probe_pos[k]`` (the logged
    ``violated`` statistic, on the rows it is estimated from; ``probe_rows`` :obj:`None`: the
    first ``probe_pos.numel()`` rows).

    The ``[Q, N]`` logits are never held whole: row blocks of ~1 MB (128 rows at N = 2,000) go
    through their GEMM (``1/tau`` folded into ``z_q``), the mask, ``exp`` (shifted by the row
    maximum only when ``bound``, an upper bound of ``|logit|``, exceeds 60) and the row sum while
    in cache; backward recomputes each block the same way (bitwise the same values) and feeds it
    to the two gradient GEMMs, :math:`d\mathbf{z}_q = \mathrm{diag}(f) E \mathbf{Z}_n` and
    :math:`d\mathbf{Z}_n \mathrel{+}= E^\top \mathrm{diag}(f) \mathbf{z}_q` with
    :math:`f = g / (\tau \sum_n E)`. 4 GEMMs in all instead of 3, and no ``[Q, N]`` buffer in
    memory (measured at Gowalla's shape on one thread, interleaved: 37 -> 31 ms forward + backward).
    With bf16 GEMMs (:func:`gemm_dtype`) the GEMMs take bf16 operands (``exp``, the sums and the
    log stay float32 on a float32 copy of each block's logits) and forward keeps each block's
    ``exp`` as the bf16 operand backward needs (``[Q, N]`` in bf16, 16 MB at Gowalla's shape):
    backward is then the two gradient GEMMs over all rows at once, nothing recomputed.
    """

    @staticmethod
    @gemm_precision
    def forward(ctx, z_q, z_easy, tau, neg_mask, bound, probe_pos, probe_rows):  # type: ignore[override]
        q, n, dt = z_q.size(0), z_easy.size(0), ctx.dt
        zs, ze = lo(z_q * (1.0 / tau), dt), lo(z_easy, dt)
        rows = _block_rows(n)
        buf = z_q.new_empty(min(rows, q), n)
        total, shift = z_q.new_empty(q), z_q.new_zeros(q)
        k = probe_pos.numel()
        count = torch.zeros((), dtype=torch.int64)
        if probe_rows is not None and k:  # the probe's rows are elsewhere: their logits apart
            pl = mm(zs.index_select(0, probe_rows), ze.t(), dt)
            if neg_mask is not None:
                pl.masked_fill_(neg_mask.index_select(0, probe_rows), float("-inf"))
            count = torch.count_nonzero(pl >= probe_pos.unsqueeze(1))
        shifted = bound > _NO_SHIFT
        e_lo = z_q.new_empty(q, n, dtype=dt) if dt is not None else _EMPTY  # the blocks' exp, for backward
        for i in range(0, q, rows):
            j = min(i + rows, q)
            c = _exp_block(zs[i:j], ze, neg_mask[i:j] if neg_mask is not None else None, buf[:j - i],
                           shift[i:j] if shifted else None, find_shift=True,
                           probe=probe_pos[i:min(j, k)] if probe_rows is None and i < k else None, dt=dt)
            if c is not None:
                count += c
            torch.sum(buf[:j - i], 1, out=total[i:j])
            if dt is not None:
                e_lo[i:j].copy_(buf[:j - i])
        ctx.save_for_backward(z_q, z_easy, total, shift, neg_mask if neg_mask is not None else _EMPTY, e_lo)
        ctx.tau, ctx.shifted, ctx.has_mask = tau, shifted, neg_mask is not None
        ctx.mark_non_differentiable(count)
        return shift + total.log(), count

    @staticmethod
    @once_differentiable
    def backward(ctx, grad, _grad_count):  # type: ignore[override]
        z_q, z_easy, total, shift, mask, e_lo = ctx.saved_tensors
        q, n, dt = z_q.size(0), z_easy.size(0), ctx.dt
        f = torch.where(total > 0, grad / (total * ctx.tau), torch.zeros_like(total))  # all masked: 0
        if dt is not None:  # the forward's exp in bf16: two GEMMs over every row
            d_q = mm(e_lo, z_easy, dt).mul_(f.unsqueeze(1)) if ctx.needs_input_grad[0] else None
            d_e = mm(e_lo.t(), z_q * f.unsqueeze(1), dt) if ctx.needs_input_grad[1] else None
            return d_q, d_e, None, None, None, None, None
        zs, zf = z_q * (1.0 / ctx.tau), z_q * f.unsqueeze(1)
        d_q = z_q.new_empty(z_q.shape) if ctx.needs_input_grad[0] else None
        d_e = z_easy.new_zeros(z_easy.shape) if ctx.needs_input_grad[1] else None
        rows = _block_rows(n)
        buf = z_q.new_empty(min(rows, q), n)
        for i in range(0, q, rows):
            j = min(i + rows, q)
            blk = buf[:j - i]
            _exp_block(zs[i:j], z_easy, mask[i:j] if ctx.has_mask else None, blk,
                       shift[i:j] if ctx.shifted else None)
            if d_q is not None:
                torch.mm(blk, z_easy, out=d_q[i:j]).mul_(f[i:j].unsqueeze(1))
            if d_e is not None:
                d_e.addmm_(blk.t(), zf[i:j])
        return d_q, d_e, None, None, None, None, None


# -- the users' leave-one-out history pooling, only for a batch's users --------------------------


@njit(parallel=True, nogil=True, fastmath=True, cache=True)
def _pool_minus(ptr, col, w, table, users, pos, w_pos, out):  # pragma: no cover - numba
    """``out[b] = sum_{e in row users[b]} w[e] table[col[e]] - w_pos[b] table[pos[b]]``."""
    n, d = out.shape
    for b in prange(n):
        o = out[b]
        o[:] = 0.0
        u = users[b]
        for e in range(ptr[u], ptr[u + 1]):
            we, src = w[e], table[col[e]]
            for j in range(d):
                o[j] += we * src[j]
        wp, src = w_pos[b], table[pos[b]]
        for j in range(d):
            o[j] -= wp * src[j]


@njit(nogil=True, fastmath=True, cache=True)
def _pool_minus_backward(ptr, col, w, grad, users, pos, w_pos, out):  # pragma: no cover - numba
    """The transpose of :func:`_pool_minus` added into ``out [I, d]``, the batch's rows in order.
    One thread: rows of ``out`` are shared between users (a parallel scatter would race), and
    column blocks per thread defeat the inner loop's vectorisation (3.5x slower, measured)."""
    n, d = grad.shape
    for b in range(n):
        g, u = grad[b], users[b]
        for e in range(ptr[u], ptr[u + 1]):
            we, o = w[e], out[col[e]]
            for j in range(d):
                o[j] += we * g[j]
        wp, o = w_pos[b], out[pos[b]]
        for j in range(d):
            o[j] -= wp * g[j]


class PoolMinusPositive(torch.autograd.Function):
    r""":math:`\mathbf{s}_b = \sum_{j \in \mathcal{H}(u_b)} w_{u_b j}\,\mathbf{z}_j - w^+_b\,\mathbf{z}_{p_b}`
    for ``z [I, d]``, a CSR history table (``ptr [U + 1]``, ``col [nnz]``, ``w [nnz]``) and a
    batch's ``users [B]``, positives ``pos [B]`` and their weights ``w_pos [B]`` -> ``[B, d]``:
    only the batch's rows are pooled (not every user's), one numba pass each way (the backward's
    scatter into one ``[I, d]`` buffer on one thread)."""

    @staticmethod
    def forward(ctx, z, ptr, col, w, users, pos, w_pos):  # type: ignore[override]
        out = z.new_empty(users.numel(), z.size(1))
        _pool_minus(ptr.numpy(), col.numpy(), w.numpy(), z.numpy(), users.numpy(), pos.numpy(),
                    w_pos.numpy(), out.numpy())
        ctx.save_for_backward(ptr, col, w, users, pos, w_pos)
        ctx.shape = z.shape
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        ptr, col, w, users, pos, w_pos = ctx.saved_tensors
        out = torch.zeros(ctx.shape)
        _pool_minus_backward(ptr.numpy(), col.numpy(), w.numpy(), grad.contiguous().numpy(), users.numpy(),
                             pos.numpy(), w_pos.numpy(), out.numpy())
        return out, None, None, None, None, None, None
