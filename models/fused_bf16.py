"""The GEMM precision of the fused CPU nodes (:mod:`models.fused`) and their bf16 passes.

Under CPU autocast to bfloat16 (``trainer.precision: bf16-mixed``) the fused nodes keep their
float32 tensors, numba passes, outputs and gradients, and run each GEMM on bfloat16 operands
(AMX / AVX-512 bf16: 3-10x float32's GEMM rate at the whole-catalogue step's shapes,
:func:`gemm_dtype` decides, for every node). At those shapes (``[40981, 64]``) a GEMM reads and
writes as many bytes as a cast, so a cast is not left as a pass of its own where a numba pass
already touches the rows: the passes here read a bf16 GEMM product and write float32
(:func:`epilogue_lo`: bias, ReLU, the L2 norm, and a bf16 copy of the result for the next GEMM),
and the backward passes write their result as the next GEMMs' bf16 operand
(:func:`normalize_backward_lo`, :func:`relu_mask_lo`). bf16 <-> float32 as torch converts
(float32 -> bf16 rounds to nearest even; finite values), bit patterns through ``uint16`` /
``uint32`` views (numba has no bf16 type).
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

_CHUNKS = 16  #: row chunks of the passes (fixed: the same column sums on any threads)
_EMPTY = torch.empty(0)
_EMPTY_U16 = np.empty((0, 0), dtype=np.uint16)


def cpu_autocast() -> bool:
    """CPU autocast is on."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def gemm_dtype() -> Optional[torch.dtype]:
    """The fused nodes' GEMM precision, from the CPU autocast state where a node's forward is
    called: :obj:`torch.bfloat16` under CPU autocast to bfloat16, :obj:`None` (float32 operands
    as given) otherwise."""
    if cpu_autocast() and torch.get_autocast_dtype("cpu") == torch.bfloat16:
        return torch.bfloat16
    return None


def gemm_precision(fn):
    """A fused node's ``forward`` (``ctx`` first): ``ctx.dt = gemm_dtype()`` as called, the body
    with autocast off (its GEMMs cast by hand, :func:`mm`); ``backward`` reads ``ctx.dt``."""
    @functools.wraps(fn)
    def forward(ctx, *args):
        ctx.dt = gemm_dtype()
        if not cpu_autocast():
            return fn(ctx, *args)
        with torch.autocast("cpu", enabled=False):
            return fn(ctx, *args)
    return forward


def lo(x: Tensor, dt: Optional[torch.dtype]) -> Tensor:
    """``x`` as a GEMM operand in precision ``dt`` (:obj:`None`: as is). Cast an operand used by
    several GEMMs once, here, and pass the result to each."""
    return x if dt is None or x.dtype == dt else x.to(dt)


def mm(a: Tensor, b: Tensor, dt: Optional[torch.dtype], out: Optional[Tensor] = None) -> Tensor:
    """``a @ b`` in float32 (into ``out`` when given): ``torch.mm`` as is when ``dt`` is
    :obj:`None`; else on ``dt`` operands (:func:`lo`) and the product cast to float32 (torch's
    CPU GEMMs have no bf16 x bf16 -> float32 form)."""
    if dt is None:
        return torch.mm(a, b, out=out)
    p = torch.mm(lo(a, dt), lo(b, dt))
    return p.float() if out is None else out.copy_(p)


def mm_lo(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` on bf16 operands (cast here unless already), the product left in bf16 for a pass
    that reads it (:func:`epilogue_lo`, :func:`relu_mask_lo`)."""
    return torch.mm(lo(a, torch.bfloat16), lo(b, torch.bfloat16))


def bits(x: Tensor) -> np.ndarray:
    """A bf16 (``uint16``) or float32 (``uint32``) tensor's bit patterns as a numpy view (no copy)."""
    return x.view(torch.uint16 if x.dtype == torch.bfloat16 else torch.uint32).numpy()


@njit(inline="always")
def _to_bf16(u):  # pragma: no cover - numba
    """float32 bits -> bf16 bits, rounded to nearest even (as torch, for finite values)."""
    w = np.uint64(u)
    return np.uint16((w + np.uint64(0x7FFF) + ((w >> np.uint64(16)) & np.uint64(1))) >> np.uint64(16))


@njit(parallel=True, nogil=True, fastmath=True, cache=True)
def _epilogue_lo(src, add, bias, relu, normalize, scale, out, out_bits, out_lo):  # pragma: no cover - numba
    """``out = f(src + add + bias)`` row by row from the bf16 product ``src`` (``uint16``): ``f``
    = ReLU (``relu``) then ``/ max(||row||, EPS)`` (``normalize``; ``scale[r]`` its factor when
    ``scale`` has a slot per row); ``add`` / ``bias`` / ``out_lo`` used when sized (rows /
    columns / rows): ``out_lo`` gets ``out`` in bf16."""
    n, d = out.shape
    has_add, has_bias = add.shape[0] == n, bias.shape[0] == d
    keep, want_lo = scale.shape[0] == n, out_lo.shape[0] == n
    for c in prange(_CHUNKS):
        tmp = np.empty(d, dtype=np.uint32)
        v = tmp.view(np.float32)
        for r in range(c * n // _CHUNKS, (c + 1) * n // _CHUNKS):
            s, o = src[r], out[r]
            for j in range(d):
                tmp[j] = np.uint32(s[j]) << np.uint32(16)
            ss = 0.0
            for j in range(d):
                x = v[j]
                if has_add:
                    x += add[r, j]
                if has_bias:
                    x += bias[j]
                if relu and x < 0.0:
                    x = 0.0
                o[j] = x
                ss += x * x
            if normalize:
                f = 1.0 / max(math.sqrt(ss), 1e-12)
                if keep:
                    scale[r] = f
                for j in range(d):
                    o[j] *= f
            if want_lo:
                ob, ol = out_bits[r], out_lo[r]
                for j in range(d):
                    ol[j] = _to_bf16(ob[j])


def epilogue_lo(src: Tensor, bias: Optional[Tensor], relu: bool, normalize: bool,
                scale: Optional[Tensor] = None, add: Optional[Tensor] = None,
                want_lo: bool = False) -> tuple:
    """:func:`_epilogue_lo` on a contiguous bf16 GEMM product ``src [n, d]`` -> ``(out float32,
    out in bf16 or None)`` (``add [n, d]`` float32 added before the bias; no autograd)."""
    n, d = src.shape
    out = torch.empty(n, d)
    out_lo = torch.empty(n, d, dtype=torch.bfloat16) if want_lo else None
    b = bias.detach() if bias is not None else _EMPTY
    _epilogue_lo(bits(src), (add if add is not None else _EMPTY.view(0, 0)).numpy(), b.numpy(), relu, normalize,
                 (scale if scale is not None else _EMPTY).numpy(), out.numpy(), bits(out),
                 bits(out_lo) if want_lo else _EMPTY_U16)
    return out, out_lo


@njit(parallel=True, nogil=True, fastmath=True, cache=True)
def _normalize_backward_lo(grad, y, scale, relu, out, out_lo, colsum):  # pragma: no cover - numba
    """:func:`models.fused._normalize_backward`'s gradient written as bf16 into ``out_lo`` (any
    row stride) and, when ``out`` has rows, as float32 too; ``colsum [C, d]`` each row chunk's
    column sums of the float32 values."""
    n, d = grad.shape
    nc, want_f32 = colsum.shape[0], out.shape[0] == n
    for c in prange(nc):
        tmp = np.empty(d, dtype=np.float32)
        tb = tmp.view(np.uint32)
        for r in range(c * n // nc, (c + 1) * n // nc):
            g, yr, ol = grad[r], y[r], out_lo[r]
            s = scale[r]
            dot = 0.0
            if s < 1e12:  # 1 / EPS: the norm was clamped, the denominator is a constant
                for j in range(d):
                    dot += g[j] * yr[j]
            for j in range(d):
                if relu and yr[j] <= 0.0:
                    tmp[j] = 0.0
                else:
                    tmp[j] = s * (g[j] - yr[j] * dot)
                colsum[c, j] += tmp[j]
            for j in range(d):
                ol[j] = _to_bf16(tb[j])
            if want_f32:
                o = out[r]
                for j in range(d):
                    o[j] = tmp[j]


def normalize_backward_lo(grad: Tensor, y: Tensor, scale: Tensor, relu: bool, out_lo: Tensor,
                          want_f32: bool = False) -> tuple:
    """The normalisation (and ReLU) gradient of ``y`` into the bf16 ``out_lo [n, d]`` (a view of
    a wider buffer is fine) -> ``(its column sums, the float32 gradient or None)``."""
    grad = grad.contiguous()
    out = torch.empty_like(y) if want_f32 else _EMPTY.view(0, 0)
    cs = torch.zeros(_CHUNKS, y.size(1))
    _normalize_backward_lo(grad.numpy(), y.numpy(), scale.numpy(), relu, out.numpy(), bits(out_lo), cs.numpy())
    return cs.sum(0), (out if want_f32 else None)


@njit(parallel=True, nogil=True, fastmath=True, cache=True)
def _relu_mask_lo(grad, grad_lo, act, out_lo, colsum):  # pragma: no cover - numba
    """``grad * [act > 0]`` as bf16 into ``out_lo`` (any row stride) and its column sums per row
    chunk into ``colsum [C, d]``; the gradient read from float32 ``grad`` when it has rows, else
    from the bf16 ``grad_lo`` (``uint16``), which may be ``out_lo`` itself (in place)."""
    n, d = act.shape
    nc, from_f32 = colsum.shape[0], grad.shape[0] == n
    for c in prange(nc):
        tmp = np.empty(d, dtype=np.uint32)
        v = tmp.view(np.float32)
        for r in range(c * n // nc, (c + 1) * n // nc):
            a, ol = act[r], out_lo[r]
            if from_f32:
                g = grad[r]
                for j in range(d):
                    v[j] = g[j] if a[j] > 0.0 else 0.0
            else:
                gl = grad_lo[r]
                for j in range(d):
                    tmp[j] = (np.uint32(gl[j]) << np.uint32(16)) if a[j] > 0.0 else np.uint32(0)
            for j in range(d):
                colsum[c, j] += v[j]
                ol[j] = _to_bf16(tmp[j])


def relu_mask_lo(grad: Tensor, act: Tensor, out_lo: Tensor) -> Tensor:
    """ReLU's backward (from its output ``act``) of a float32 or bf16 ``grad [n, d]`` into the
    bf16 ``out_lo`` (may be ``grad`` itself, or a view of a wider buffer) -> the column sums."""
    cs = torch.zeros(_CHUNKS, act.size(1))
    f32 = grad.dtype == torch.float32
    _relu_mask_lo(grad.numpy() if f32 else _EMPTY.view(0, 0).numpy(), _EMPTY_U16 if f32 else bits(grad),
                  act.numpy(), bits(out_lo), cs.numpy())
    return cs.sum(0)
