"""Fused sparse aggregation: ``A @ X`` over a fixed weighted graph without one message per edge.

PyG's default ``propagate`` gathers one ``[E, d]`` message per edge and scatters them back; on a
whole catalogue (e.g. 1M items x T = 10 neighbours x d = 128) that costs ~8x a CSR sparse-dense
matmul with the same weights. :class:`SparseAdjacency` holds a fixed graph as a CSR matrix
``[n_dst, n_src]`` *and its transpose*, so that both the forward product ``A @ X`` and its
gradient ``A^T @ dL/dY`` are single CSR products (``torch.sparse.mm``'s own backward transposes
the matrix on every call, which costs more than the product itself).

Used by :class:`models.convolve.Convolve` (importance pooling of the neighbours of every item in
one product) and by the user encoder (pooling of every user's history), i.e. wherever a layer
runs over the full catalogue rather than a sampled minibatch graph.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from numba import njit, prange
from torch import Tensor


def csr_mm(a: Tensor, x: Tensor) -> Tensor:
    """``a @ x`` for a CSR ``a [n, m]`` and a dense ``x [m, d]``. On the CPU as ``addmm`` with
    ``beta = 0`` into a fresh buffer: ``torch.sparse.mm`` zero-fills its output and copies it
    once more before the product (~2.7 of 13 ms at Gowalla's 0.8M-entry neighbourhood, d = 64);
    with ``beta = 0`` the buffer's content is ignored (documented: no NaN / inf propagated)."""
    if a.device.type != "cpu":
        return torch.sparse.mm(a, x)
    out = x.new_empty(a.size(0), x.size(1))
    return torch.addmm(out, a, x, beta=0, out=out)


class _SpMM(torch.autograd.Function):
    """``Y = A @ X`` with ``dX = A^T @ dY`` from a precomputed transpose (no gradient for A)."""

    # float32 always, also under bf16 / fp16 autocast: a sum of weighted rows is where low
    # precision loses most, and the CPU's CSR kernel has no bfloat16 form

    @staticmethod
    def forward(ctx, a: Tensor, a_t: Tensor, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.a_t = a_t
        with torch.autocast(x.device.type, enabled=False):
            return csr_mm(a, x.float())

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        with torch.autocast(grad.device.type, enabled=False):
            return None, None, csr_mm(ctx.a_t, grad.float().contiguous())


@njit(nogil=True, cache=True)
def _csr_transpose(ptr, col, w, num_src):  # pragma: no cover - numba
    """CSR ``[n_dst, n_src]`` -> CSR of its transpose ``[n_src, n_dst]`` (stable counting sort)."""
    n_dst = ptr.shape[0] - 1
    t_ptr = np.zeros(num_src + 1, dtype=np.int64)
    for e in range(col.shape[0]):
        t_ptr[col[e] + 1] += 1
    for i in range(num_src):
        t_ptr[i + 1] += t_ptr[i]
    fill = t_ptr[:-1].copy()
    t_col = np.empty(col.shape[0], dtype=np.int64)
    t_w = np.empty(col.shape[0], dtype=w.dtype)
    for r in range(n_dst):
        for e in range(ptr[r], ptr[r + 1]):
            c = col[e]
            t_col[fill[c]] = r
            t_w[fill[c]] = w[e]
            fill[c] += 1
    return t_ptr, t_col, t_w


@njit(nogil=True, cache=True)
def _row_weights(ptr, w, weighted, normalize):  # pragma: no cover - numba
    """The product's weights: ``w`` or ones (``weighted``), divided by their row sum
    (``normalize``; float32 sums in edge order and ``max(sum, tiny)``, as ``degree`` / ``clamp``)."""
    out = np.empty(w.shape[0], dtype=np.float32)
    tiny = np.float32(np.finfo(np.float32).tiny)
    one = np.float32(1.0)
    for r in range(ptr.shape[0] - 1):
        total = np.float32(0.0)
        for e in range(ptr[r], ptr[r + 1]):
            out[e] = w[e] if weighted else one
            total += out[e]
        if normalize:
            total = max(total, tiny)
            for e in range(ptr[r], ptr[r + 1]):
                out[e] = out[e] / total
    return out


@njit(nogil=True, cache=True)
def _sorted_ptr(dst, num_dst):  # pragma: no cover - numba
    """``(ptr [num_dst + 1], True)`` for targets in ascending order within ``[0, num_dst)``,
    ``(_, False)`` otherwise: one pass, no sort."""
    ptr = np.zeros(num_dst + 1, dtype=np.int64)
    prev = 0
    for e in range(dst.shape[0]):
        d = dst[e]
        if d < prev or d >= num_dst:
            return ptr, False
        ptr[d + 1] += 1
        prev = d
    for i in range(num_dst):
        ptr[i + 1] += ptr[i]
    return ptr, True


_INT32_MAX = 2 ** 31 - 1


def _csr(ptr: Tensor, col: Tensor, val: Tensor, shape) -> Tensor:
    """A CSR tensor; on the CPU with int32 indices where they fit: MKL's product takes int32, and
    given int64 ATen converts both index arrays on every call (~0.5 of 6.9 ms a product at Gowalla's
    0.8M entries, d = 64)."""
    if ptr.device.type == "cpu" and max(col.numel(), *shape) <= _INT32_MAX:
        ptr, col = ptr.to(torch.int32), col.to(torch.int32)
    return torch.sparse_csr_tensor(ptr, col, val, size=shape, check_invariants=False)


class SparseAdjacency:
    r"""A fixed weighted bipartite graph ``[n_dst, n_src]`` for fused aggregation.

    Row ``u`` holds the sources ``v`` of target ``u`` with weights :math:`\alpha_{vu}`;
    :meth:`matmul` computes :math:`\mathbf{Y}_u = \sum_v \tilde\alpha_{vu} \mathbf{X}_v` where
    :math:`\tilde\alpha` are the weights re-normalised per row (``normalize=True``: a weighted
    mean, rows without sources give zero) or the raw weights (``normalize=False``: a weighted
    sum). ``weighted=False`` in :meth:`matmul` uses unit weights instead (plain mean / sum).

    Args:
        ptr: ``int64 [n_dst + 1]`` CSR row pointer.
        col: ``int64 [nnz]`` source ids in ``[0, n_src)``.
        weight: ``float [nnz]`` non-negative weights (``None``: all ones).
        num_src: number of source nodes ``n_src``.
    """

    def __init__(self, ptr, col, weight=None, num_src: Optional[int] = None) -> None:
        ptr = torch.as_tensor(np.asarray(ptr), dtype=torch.int64)
        col = torch.as_tensor(np.asarray(col), dtype=torch.int64)
        w = (torch.ones(col.numel()) if weight is None
             else torch.as_tensor(np.asarray(weight), dtype=torch.float32))
        if ptr.dim() != 1 or ptr.numel() < 1 or col.shape != w.shape or int(ptr[-1]) != col.numel():
            raise ValueError(f"SparseAdjacency: ptr [{ptr.numel()}], col {tuple(col.shape)} and weight "
                             f"{tuple(w.shape)} do not form a CSR matrix (ptr[-1] must equal nnz)")
        self.num_dst = ptr.numel() - 1
        self.num_src = int(num_src) if num_src is not None else (int(col.max()) + 1 if col.numel() else 0)
        self.ptr, self.col, self.weight = ptr, col, w
        self.row = torch.repeat_interleave(torch.arange(self.num_dst), ptr[1:] - ptr[:-1])
        self._mats: dict = {}

    @classmethod
    def from_sorted_edges(cls, edge_index: Tensor, edge_weight: Optional[Tensor], num_src: int,
                          num_dst: int) -> Optional["SparseAdjacency"]:
        """The CSR form of a minibatch block whose edges are grouped by target in ascending order
        (``datamodules.minibatch`` builds them so), on the edges' device; ``None`` when they are
        not (the caller keeps the edge list)."""
        src, dst = edge_index[0], edge_index[1]
        if dst.device.type == "cpu" and dst.dtype == torch.int64:  # one numba pass
            ptr, ok = _sorted_ptr(dst.contiguous().numpy(), int(num_dst))
            if not ok:
                return None
            ptr = torch.from_numpy(ptr)
        else:
            if dst.numel() and (bool((dst[1:] < dst[:-1]).any()) or int(dst[-1]) >= num_dst):
                return None
            counts = torch.bincount(dst, minlength=num_dst)
            ptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        self = cls.__new__(cls)
        self.ptr = ptr
        self.col = src
        self.weight = (torch.ones(src.numel(), device=src.device) if edge_weight is None
                       else edge_weight.to(torch.float32))
        self.num_dst, self.num_src = int(num_dst), int(num_src)
        self.row = dst
        self._mats = {}
        return self

    @property
    def size(self) -> tuple:
        """``(n_src, n_dst)``, as the minibatch blocks' ``size``."""
        return (self.num_src, self.num_dst)

    @property
    def nnz(self) -> int:
        return int(self.col.numel())

    def degree(self, weighted: bool = True) -> Tensor:
        """``[n_dst]`` row sums of the (weighted or unit) matrix."""
        w = self.weight if weighted else torch.ones_like(self.weight)
        return torch.zeros(self.num_dst, dtype=w.dtype, device=w.device).index_add_(0, self.row, w)

    def matrices(self, weighted: bool = True, normalize: bool = True, device=None) -> tuple:
        """``(A, A^T)`` as CSR tensors on ``device`` (default: where the graph is), ``A`` with the
        weights of :meth:`matmul` (``weighted`` / ``normalize``); built once per setting."""
        device = self.ptr.device if device is None else device
        key = (weighted, normalize, str(device))
        if key not in self._mats:
            if self.ptr.device.type == "cpu" and self.weight.dtype == torch.float32:
                w = torch.from_numpy(_row_weights(self.ptr.numpy(), self.weight.contiguous().numpy(),
                                                  weighted, normalize))
            else:
                w = self.weight if weighted else torch.ones_like(self.weight)
                if normalize:
                    deg = self.degree(weighted)
                    w = w / deg.clamp(min=torch.finfo(w.dtype).tiny)[self.row]
            a = _csr(self.ptr, self.col, w, (self.num_dst, self.num_src))
            if self.ptr.device.type == "cpu":  # counting sort, O(nnz + n): no comparison sort
                t_ptr, t_col, t_w = _csr_transpose(self.ptr.numpy(), self.col.numpy(), w.numpy(), self.num_src)
                a_t = _csr(torch.from_numpy(t_ptr), torch.from_numpy(t_col), torch.from_numpy(t_w),
                           (self.num_src, self.num_dst))
            else:
                a_t = a.t().to_sparse_csr()
            self._mats[key] = (a.to(device), a_t.to(device))
        return self._mats[key]

    def matmul(self, x: Tensor, weighted: bool = True, normalize: bool = True) -> Tensor:
        """``x [n_src, d]`` -> ``[n_dst, d]`` (differentiable in ``x``)."""
        if x.dim() != 2 or x.size(0) != self.num_src:
            raise ValueError(f"x has shape {tuple(x.shape)}: expected [{self.num_src}, d] (one row per source)")
        a, a_t = self.matrices(weighted, normalize, x.device)
        if x.dtype != a.dtype:
            x = x.to(a.dtype)
        return _SpMM.apply(a, a_t, x)

    def rows(self, start: int, end: int) -> "SparseAdjacency":
        """The targets ``[start, end)`` as their own adjacency (same sources)."""
        ps, pe = int(self.ptr[start]), int(self.ptr[end])
        return SparseAdjacency(self.ptr[start:end + 1] - ps, self.col[ps:pe], self.weight[ps:pe], self.num_src)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_dst={self.num_dst}, num_src={self.num_src}, nnz={self.nnz})"


# ----------------------------------------------------------------------------------------------
# row-slice pooling over a fixed CSR table, into a caller's buffer (whole-catalogue inference)
# ----------------------------------------------------------------------------------------------
POOLS = ("weighted_mean", "mean", "sum", "max")


@njit(parallel=True, nogil=True, fastmath=True, cache=True)
def _csr_pool_rows(ptr, col, weight, table, out, start, mode):  # pragma: no cover - numba
    """``out[r] = pool_{e in row start+r} weight[e] * table[col[e]]``; modes: 0 weighted mean
    (weights re-normalised per row), 1 mean, 2 sum, 3 max (initial 0: inputs are >= 0)."""
    n, d = out.shape
    for r in prange(n):
        a, b = ptr[start + r], ptr[start + r + 1]
        o = out[r]
        o[:] = 0.0
        total = 0.0
        for e in range(a, b):
            src = table[col[e]]
            if mode == 0:
                w = weight[e]
                total += w
                for j in range(d):
                    o[j] += w * src[j]
            elif mode == 3:
                for j in range(d):
                    if src[j] > o[j]:
                        o[j] = src[j]
            else:
                for j in range(d):
                    o[j] += src[j]
        if mode == 1 and b > a:
            total = b - a
        if (mode == 0 or mode == 1) and total > 0.0:
            for j in range(d):
                o[j] /= total


def _torch_pool_rows(ptr: Tensor, col: Tensor, weight: Tensor, table: Tensor, out: Tensor, start: int,
                     mode: str) -> Tensor:
    """The same pooling with torch ops on ``table.device`` (e.g. CUDA: cuSPARSE CSR product)."""
    n = out.size(0)
    p = ptr[start:start + n + 1]
    ps, pe = int(p[0]), int(p[-1])
    crow = (p - ps).to(table.device, non_blocking=True)
    c = col[ps:pe].to(table.device, non_blocking=True)
    deg = (crow[1:] - crow[:-1]).to(table.dtype)
    if mode == "max":
        rows = table.index_select(0, c)
        out.copy_(torch.segment_reduce(rows, "max", offsets=crow, axis=0, initial=0.0))
        return out
    w = weight[ps:pe].to(table.device, non_blocking=True) if mode == "weighted_mean" else \
        torch.ones(pe - ps, dtype=table.dtype, device=table.device)
    row = torch.repeat_interleave(torch.arange(n, device=table.device), crow[1:] - crow[:-1])
    if mode in ("weighted_mean", "mean"):
        total = deg if mode == "mean" else torch.zeros(n, dtype=w.dtype, device=w.device).index_add_(0, row, w)
        w = w / total.clamp(min=torch.finfo(w.dtype).tiny)[row]
    a = torch.sparse_csr_tensor(crow, c, w.to(table.dtype), size=(n, table.size(0)), check_invariants=False)
    return torch.mm(a, table, out=out)


def pool_rows(ptr: Tensor, col: Tensor, weight: Optional[Tensor], table: Tensor, out: Tensor, start: int,
              mode: str) -> Tensor:
    r"""Pool the rows ``start .. start + len(out)`` of a CSR neighbourhood table into ``out``.

    ``out[r] = pool_{e \in [ptr[start+r], ptr[start+r+1])} weight[e] * table[col[e]]`` with
    ``mode`` one of :data:`POOLS`: ``"weighted_mean"`` (the weights re-normalised per row, as
    :class:`~models.convolve.Convolve`'s importance pooling), ``"mean"`` / ``"sum"`` (unit
    weights), ``"max"`` (elementwise, with 0 as the initial value: the table must be ``>= 0``, as
    ReLU outputs are). Rows without neighbours give zeros.  No per-edge message is materialised:
    on the CPU a parallel numba kernel reads each neighbour row once and accumulates in ``out``;
    elsewhere a CSR product on ``table``'s device.

    Args:
        ptr: ``int64 [n_rows + 1]`` CSR offsets (host).
        col: ``int64 [nnz]`` row ids of ``table`` (host).
        weight: ``float32 [nnz]`` (host; only read by ``"weighted_mean"``).
        table: ``float32 [n_src, d]`` (contiguous).
        out: ``float32 [n, d]`` written in place (same device as ``table``) and returned.
    """
    if mode not in POOLS:
        raise ValueError(f"mode={mode!r} is invalid: expected one of {list(POOLS)}")
    if out.dim() != 2 or table.dim() != 2 or out.size(1) != table.size(1):
        raise ValueError(f"out {tuple(out.shape)} and table {tuple(table.shape)} must be [n, d] and [n_src, d]")
    if start < 0 or start + out.size(0) + 1 > ptr.numel():
        raise ValueError(f"rows [{start}, {start + out.size(0)}) are out of the table's {ptr.numel() - 1} rows")
    if table.device.type == "cpu" and table.dtype == torch.float32 and out.is_contiguous() and table.is_contiguous():
        w = weight if weight is not None else col.new_empty(0, dtype=torch.float32)
        _csr_pool_rows(ptr.numpy(), col.numpy(), w.numpy(), table.numpy(), out.numpy(), int(start),
                       POOLS.index(mode))
        return out
    return _torch_pool_rows(ptr, col, weight, table, out, int(start), mode)
