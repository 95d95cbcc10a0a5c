"""Item-item baselines: similarity matrices from the training graph and one user scorer for all.

Every baseline here is an ``items x items`` matrix ``W`` (``W[i, j]`` = how much having engaged
with item ``i`` recommends item ``j``); a user's scores are ``h_u @ W`` with ``h_u`` the 0/1
indicator of the user's history, an item query ``q`` scores ``W[q]``
(:func:`item_item_user_scorer`, :func:`item_item_scorer`). The builders take the training graph
as CSR arrays (``user_ptr``, ``user_items``; ``num_items``), so this module does not depend on
the data package; ``X`` below is the binary users x items training matrix.

* ``itemknn`` (Sarwar et al., 2001; tuned as in Dacrema et al., RecSys 2019):
  cosine ``S_ij = x_i . x_j / (|x_i| |x_j| + shrink)`` over item columns, diagonal 0; for every
  candidate ``j`` only its ``k`` most similar items ``i`` are kept (top-``k`` per column).
* ``rp3beta`` (Paudel et al., 2017): the 3-step walk item -> user -> item,
  ``W = P_iu^alpha P_ui^alpha`` with ``P`` the row-stochastic transitions (elementwise power
  ``alpha``), column ``j`` divided by ``popularity_j^beta``, diagonal 0, top-``k`` per row.
* ``ease`` (Steck, WWW 2019): ``P = (X^T X + lambda I)^-1``, ``B = -P / diag(P)`` (column-wise),
  diagonal 0; dense. ``num_items`` above :data:`EASE_MAX_ITEMS` is refused (the dense matrix needs
  ``4 * num_items^2`` bytes, twice at the peak). Computed in float32 with in-place LAPACK
  Cholesky factorisation and inversion (``spotrf``/``spotri``), so the peak is about one
  ``num_items^2`` float32 matrix plus the sparse Gram matrix.
* ``pixie`` (Eksombatchai et al., WWW 2018): random-walk visit counts; the walks live in the data
  package, so the app builds that matrix (:func:`visit_count_matrix` turns its top-``T`` visit
  lists into ``W``).
* ``gfcf`` (GF-CF, Shen et al., CIKM 2021), training-free graph filter: with
  ``R~ = D_U^-1/2 X D_I^-1/2``, ``W = R~^T R~ + alpha D_I^-1/2 V V^T D_I^1/2`` (``V`` the top-``k``
  right singular vectors of ``R~``: the ideal low-pass filter). Kept as a sparse matrix plus
  rank-``k`` factors (:class:`SparsePlusLowRank`), never a dense ``items x items`` matrix. The
  paper scores ``r_u W`` with the raw row ``r_u``; ``r~_u = r_u / sqrt(deg_u)`` ranks a user's
  items the same way.

EASE's dense inverse: scipy's bundled OpenBLAS (0.3.30 here) crashes with SIGSEGV inside its
*multi-threaded* ``spotrf`` from n ~ 27,000 on (n = 26,000 works, 28,000 and 30,000 crash at once;
the same call with one BLAS thread works at 30,000), so :func:`_inverse_spd_inplace` runs
LAPACK single-threaded above :data:`THREADED_LAPACK_MAX_N` (``threadpoolctl``).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

ITEM_ITEM_BASELINES = ("itemknn", "rp3beta", "ease", "pixie", "gfcf")
EASE_MAX_ITEMS = 50_000
#: largest matrix order factorised with a multi-threaded BLAS (see the module docstring)
THREADED_LAPACK_MAX_N = 20_000
#: GF-CF's SVD is exact up to this many users or items, randomized above
EXACT_SVD_MAX = 4096

# generic defaults (used where no tuned setting is recorded for a dataset)
DEFAULT_PARAMS = {
    "itemknn": {"k": 100, "shrink": 10.0},
    "rp3beta": {"alpha": 1.0, "beta": 0.5, "k": 200},
    "ease": {"lam": 500.0},
    "pixie": {"num_walks": 200, "top_t": 200, "beta": 0.0, "walk_length": 2, "restart_prob": 0.5},
    "gfcf": {"alpha": 0.3, "k": 256},  # the paper's setting (Gowalla, Yelp2018)
}


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r} is invalid: expected an int >= 1")
    return int(value)


def _check_nonneg(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} is invalid: expected a number >= 0") from None
    if not np.isfinite(v) or v < 0:
        raise ValueError(f"{name}={value!r} is invalid: expected a number >= 0")
    return v


def interaction_matrix(user_ptr, user_items, num_items: int) -> sp.csr_matrix:
    """Binary ``float32`` users x items CSR matrix of the graph (duplicates counted once)."""
    user_ptr = np.asarray(user_ptr, dtype=np.int64)
    user_items = np.asarray(user_items, dtype=np.int64)
    num_users = user_ptr.shape[0] - 1
    if user_items.size and (user_items.min() < 0 or user_items.max() >= num_items):
        raise ValueError(f"user_items contain item ids outside [0, {num_items})")
    X = sp.csr_matrix((np.ones(user_items.size, dtype=np.float32), user_items, user_ptr),
                      shape=(num_users, num_items))
    X.sum_duplicates()
    X.data[:] = 1.0
    return X


def _zero_diag(W: sp.csr_matrix) -> sp.csr_matrix:
    """``W`` without its diagonal entries (CSR, zeros dropped)."""
    W = W.tocoo()
    off = W.row != W.col
    return sp.csr_matrix((W.data[off], (W.row[off], W.col[off])), shape=W.shape)


def topk_per_row(W: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the ``k`` largest entries of every row (ties: the smaller column id), drop zeros."""
    W = W.tocsr()
    W.eliminate_zeros()
    W.sort_indices()
    counts = np.diff(W.indptr)
    if counts.size == 0 or counts.max() <= k:
        return W
    keep = np.ones(W.nnz, dtype=bool)
    for r in np.flatnonzero(counts > k):
        lo, hi = W.indptr[r], W.indptr[r + 1]
        vals = W.data[lo:hi]
        # stable sort of -value keeps the smaller column (indices are sorted) first among ties
        order = np.argsort(-vals, kind="stable")
        keep[lo + order[k:]] = False
    rows = np.repeat(np.arange(W.shape[0]), counts)[keep]
    return sp.csr_matrix((W.data[keep], (rows, W.indices[keep])), shape=W.shape)


def item_gram(user_ptr, user_items, num_items: int):
    """``(G, item_degree)``: the co-count matrix ``X^T X`` (float32 CSR) and the item degrees."""
    X = interaction_matrix(user_ptr, user_items, num_items)
    return (X.T @ X).tocsr().astype(np.float32), np.asarray(X.sum(axis=0)).ravel()


def itemknn_similarity(user_ptr, user_items, num_items: int, k: int = 100,
                       shrink: float = 10.0, gram=None) -> sp.csr_matrix:
    """ItemKNN cosine: ``W[i, j] = x_i . x_j / (|x_i| |x_j| + shrink)`` (``i != j``), keeping for
    every column ``j`` its ``k`` largest entries. Returns ``float32`` CSR ``[I, I]``.
    ``gram``: :func:`item_gram` of the same graph, to reuse it across settings."""
    k = _check_positive_int("k", k)
    shrink = _check_nonneg("shrink", shrink)
    G, deg = gram if gram is not None else item_gram(user_ptr, user_items, num_items)
    norm = np.sqrt(deg).astype(np.float32)
    G = G.tocoo()
    off = G.row != G.col
    r, c, v = G.row[off], G.col[off], G.data[off]
    v = v / (norm[r] * norm[c] + np.float32(shrink) + np.float32(1e-6))
    S = sp.csr_matrix((v.astype(np.float32), (c, r)), shape=(num_items, num_items))  # S^T: row = column j
    return topk_per_row(S, k).T.tocsr()


def rp3_walk(user_ptr, user_items, num_items: int, alpha: float = 1.0):
    """``(P_iu^alpha @ P_ui^alpha, item_degree)``: the 3-step item -> user -> item walk matrix."""
    alpha = _check_nonneg("alpha", alpha)
    X = interaction_matrix(user_ptr, user_items, num_items)
    user_deg = np.asarray(X.sum(axis=1)).ravel()
    item_deg = np.asarray(X.sum(axis=0)).ravel()
    inv_u = np.divide(1.0, user_deg, out=np.zeros_like(user_deg), where=user_deg > 0)
    inv_i = np.divide(1.0, item_deg, out=np.zeros_like(item_deg), where=item_deg > 0)
    P_ui = (sp.diags(inv_u.astype(np.float32)) @ X).tocsr()  # user -> item
    P_iu = (sp.diags(inv_i.astype(np.float32)) @ X.T.tocsr()).tocsr()  # item -> user
    if alpha != 1.0:
        P_ui = P_ui.power(alpha)
        P_iu = P_iu.power(alpha)
    return (P_iu @ P_ui).tocsr().astype(np.float32), item_deg


def rp3beta_similarity(user_ptr, user_items, num_items: int, alpha: float = 1.0, beta: float = 0.5,
                       k: int = 200, walk=None) -> sp.csr_matrix:
    """RP3beta: ``W = (P_iu^alpha @ P_ui^alpha) / popularity^beta`` (column-wise), diagonal 0,
    top-``k`` per row. Returns ``float32`` CSR ``[I, I]``. ``walk``: :func:`rp3_walk` of the same
    graph and ``alpha``, to reuse it across ``beta`` and ``k``."""
    k = _check_positive_int("k", k)
    beta = _check_nonneg("beta", beta)
    W, item_deg = walk if walk is not None else rp3_walk(user_ptr, user_items, num_items, alpha)
    disc = np.divide(1.0, np.power(item_deg, beta), out=np.zeros_like(item_deg), where=item_deg > 0)
    W = _zero_diag((W @ sp.diags(disc.astype(np.float32))).tocsr())
    return topk_per_row(W.astype(np.float32), k)


def ease_weights(user_ptr, user_items, num_items: int, lam: float = 500.0,
                 max_items: int = EASE_MAX_ITEMS) -> np.ndarray:
    """EASE (Steck, 2019): ``B = -P / diag(P)`` with ``P = (X^T X + lam I)^-1``, ``diag(B) = 0``.

    Returns a dense ``float32 [I, I]`` array (C order, ``4 * I^2`` bytes). Catalogues larger than
    ``max_items`` are refused with a ``ValueError`` naming both sizes.
    """
    lam = _check_nonneg("lam", lam)
    if lam <= 0:
        raise ValueError(f"lam={lam!r} is invalid: expected a number > 0 (the L2 penalty of EASE)")
    if num_items > max_items:
        gib = 4 * num_items ** 2 / 2 ** 30
        raise ValueError(
            f"ease: the catalogue has {num_items} items, more than the limit of {max_items}: EASE keeps a "
            f"dense {num_items} x {num_items} float32 matrix ({gib:.1f} GiB); use itemknn or rp3beta instead")
    X = interaction_matrix(user_ptr, user_items, num_items)
    if X.shape[0] < num_items:
        G = _ease_inverse_dual(X, lam)
    else:
        G = np.zeros((num_items, num_items), dtype=np.float32)
        gram = (X.T @ X).tocsr().astype(np.float32)
        gram.toarray(out=G)
        del gram
        G[np.diag_indices(num_items)] += np.float32(lam)
        _inverse_spd_inplace(G, f"X^T X + lam I (lam={lam})")
    d = np.diag(G).copy()
    G /= -d[None, :]  # B[i, j] = -P[i, j] / P[j, j]
    G[np.diag_indices(num_items)] = 0.0
    return G


def _inverse_spd_inplace(A: np.ndarray, what: str) -> None:
    """``A <- A^-1`` for a symmetric positive definite float32 C-ordered ``A``, in place
    (LAPACK ``spotrf`` + ``spotri`` on the Fortran-ordered transpose view, then mirrored); one
    BLAS thread above :data:`THREADED_LAPACK_MAX_N` (the threaded ``spotrf`` crashes there)."""
    from scipy.linalg import lapack
    from threadpoolctl import threadpool_limits

    F = A.T  # A is symmetric: its transpose view is Fortran-ordered, so LAPACK works in place
    with threadpool_limits(limits=1 if A.shape[0] > THREADED_LAPACK_MAX_N else None, user_api="blas"):
        c, info = lapack.spotrf(F, lower=1, overwrite_a=1, clean=0)
        if info != 0:
            raise ValueError(f"ease: {what} is not positive definite (spotrf info={info}); use a larger lam")
        if not np.shares_memory(c, A):  # pragma: no cover - LAPACK wrappers copy non-contiguous input
            F[...] = c
        c, info = lapack.spotri(F, lower=1, overwrite_c=1)
    if info != 0:
        raise ValueError(f"ease: inverting {what} failed (spotri info={info})")
    if not np.shares_memory(c, A):  # pragma: no cover
        F[...] = c
    # F's lower triangle = A's upper triangle holds the inverse; mirror it into the lower one
    _symmetrize_from_upper(A)


def _ease_inverse_dual(X: sp.csr_matrix, lam: float, block: int = 2048) -> np.ndarray:
    """``(X^T X + lam I)^-1`` through the users x users system when there are fewer users than
    items (Woodbury): ``(I - X^T (lam I + X X^T)^-1 X) / lam``; the dense work is a
    ``num_users^2`` factorisation instead of ``num_items^2``. Returns float32 ``[I, I]``."""
    num_users, num_items = X.shape
    K = np.zeros((num_users, num_users), dtype=np.float32)
    (X @ X.T).tocsr().astype(np.float32).toarray(out=K)
    K[np.diag_indices(num_users)] += np.float32(lam)
    _inverse_spd_inplace(K, f"lam I + X X^T (lam={lam})")  # K = M = (lam I + X X^T)^-1
    Xc = X.tocsc()
    Xt = X.T.tocsr()
    P = np.empty((num_items, num_items), dtype=np.float32)
    for s in range(0, num_items, block):
        e = min(s + block, num_items)
        Zb = Xc[:, s:e].T.tocsr() @ K  # [b, U] = X[:, s:e]^T M
        P[:, s:e] = Xt @ np.ascontiguousarray(Zb.T)  # X^T M X[:, s:e]
        del Zb
    del K
    P *= np.float32(-1.0 / lam)
    P[np.diag_indices(num_items)] += np.float32(1.0 / lam)
    return P


def _symmetrize_from_upper(A: np.ndarray, block: int = 2048) -> None:
    """In place: ``A[i, j] = A[j, i]`` for ``i > j`` (copy the upper triangle down), by blocks."""
    n = A.shape[0]
    for s in range(0, n, block):
        e = min(s + block, n)
        A[s:e, :s] = A[:s, s:e].T  # rows s..e, columns left of the diagonal block
        tri = np.triu(A[s:e, s:e])
        A[s:e, s:e] = tri + np.triu(tri, 1).T


def visit_count_matrix(ptr, items, counts, seeds, num_items: int, beta: float = 0.0,
                       item_degree: Optional[np.ndarray] = None) -> sp.csr_matrix:
    """``W[seeds[b], items[e]] = counts[e]`` for ``ptr[b] <= e < ptr[b+1]`` (a walk sampler's
    top-``T`` visit lists, e.g. ``visit_ranking``), each row L1-normalised, column ``j`` divided by
    ``item_degree[j]^beta`` (``beta > 0`` needs ``item_degree``). Returns ``float32`` CSR ``[I, I]``."""
    beta = _check_nonneg("beta", beta)
    ptr = np.asarray(ptr, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    seeds = np.asarray(seeds, dtype=np.int64)
    vals = np.asarray(counts, dtype=np.float64)
    if ptr.shape != (seeds.size + 1,) or items.shape != vals.shape or ptr[-1] != items.size:
        raise ValueError(f"visit lists are inconsistent: ptr {ptr.shape}, items {items.shape}, counts "
                         f"{vals.shape} for {seeds.size} seeds")
    rows = np.repeat(seeds, np.diff(ptr))
    tot = np.bincount(rows, weights=vals, minlength=num_items)
    vals = vals / np.maximum(tot[rows], 1e-12)
    if beta > 0:
        if item_degree is None:
            raise ValueError("visit_count_matrix: beta > 0 needs item_degree (the popularity to discount)")
        deg = np.asarray(item_degree, dtype=np.float64)
        vals = vals / np.maximum(deg[items], 1.0) ** beta
    W = sp.csr_matrix((vals.astype(np.float32), (rows, items)), shape=(num_items, num_items))
    return _zero_diag(W)


class SparsePlusLowRank:
    """``W = sparse + left @ right`` (``left [I, r]``, ``right [r, I]``): an items x items model
    scored without ever forming it densely (GF-CF's Gram matrix plus its low-pass filter)."""

    ndim = 2

    def __init__(self, sparse, left: np.ndarray, right: np.ndarray):
        n = sparse.shape[0]
        left = np.ascontiguousarray(left, dtype=np.float32)
        right = np.ascontiguousarray(right, dtype=np.float32)
        if sparse.shape != (n, n) or left.shape[0] != n or right.shape != (left.shape[1], n):
            raise ValueError(f"SparsePlusLowRank: sparse {sparse.shape}, left {left.shape}, right {right.shape} "
                             "do not make a square items x items matrix")
        self.sparse, self.left, self.right = sp.csr_matrix(sparse, dtype=np.float32), left, right
        self.shape = (n, n)

    def toarray(self) -> np.ndarray:
        return self.sparse.toarray() + self.left @ self.right


def gfcf_normalized(user_ptr, user_items, num_items: int):
    """``(R~, item_degree)``: ``R~ = D_U^-1/2 X D_I^-1/2`` (float32 CSR; empty rows/columns stay 0)."""
    X = interaction_matrix(user_ptr, user_items, num_items)
    du = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
    di = np.asarray(X.sum(axis=0), dtype=np.float64).ravel()
    inv = lambda d: np.divide(1.0, np.sqrt(d), out=np.zeros_like(d), where=d > 0)  # noqa: E731
    R = (sp.diags(inv(du).astype(np.float32)) @ X @ sp.diags(inv(di).astype(np.float32))).tocsr()
    return R.astype(np.float32), di


def top_right_singular_vectors(R: sp.csr_matrix, k: int, seed: int = 0, n_iter: int = 8,
                               oversample: int = 64) -> np.ndarray:
    """``V^T [k, I]``: the top-``k`` right singular vectors of ``R`` (largest singular value first).
    Exact (dense eigen-decomposition of the smaller Gram matrix) when ``min(R.shape) <=``
    :data:`EXACT_SVD_MAX`, else a seeded randomized SVD (Halko et al., 2011) with ``n_iter``
    power iterations (near-equal singular values may swap vectors; the energy ``|R V|_F^2`` it
    keeps is within a fraction of a percent of the exact top-``k``'s, tested)."""
    k = _check_positive_int("k", k)
    m, n = R.shape
    k = min(k, min(m, n))
    if min(m, n) <= EXACT_SVD_MAX:
        if m <= n:  # R R^T = U S^2 U^T, V = R^T U / S
            vals, U = np.linalg.eigh((R @ R.T).toarray().astype(np.float64))
            top = np.argsort(-vals, kind="stable")[:k]
            s = np.sqrt(np.maximum(vals[top], 0.0))
            Vt = (R.T @ U[:, top]).T / np.where(s > 1e-12, s, 1.0)[:, None]
        else:
            vals, V = np.linalg.eigh((R.T @ R).toarray().astype(np.float64))
            top = np.argsort(-vals, kind="stable")[:k]
            Vt = V[:, top].T
        return np.ascontiguousarray(Vt, dtype=np.float32)
    rng = np.random.default_rng(seed)
    p = min(k + oversample, min(m, n))
    Rt = R.T.tocsr()
    Q, _ = np.linalg.qr(R @ rng.standard_normal((n, p)).astype(np.float32))
    for _ in range(n_iter):  # power iterations, re-orthonormalised each half step
        Z, _ = np.linalg.qr(Rt @ Q)
        Q, _ = np.linalg.qr(R @ Z)
    B = (Rt @ Q).T  # [p, n] = Q^T R
    _, _, Vt = np.linalg.svd(B, full_matrices=False)
    return np.ascontiguousarray(Vt[:k], dtype=np.float32)


def gfcf_model(user_ptr, user_items, num_items: int, alpha: float = 0.3, k: int = 256,
               factors=None) -> SparsePlusLowRank:
    """GF-CF (see the module docstring): ``R~^T R~ + alpha D_I^-1/2 V V^T D_I^1/2``.
    ``factors``: :func:`gfcf_factors` of the same graph, to reuse the Gram matrix and the SVD
    across settings (its SVD must have at least ``k`` vectors)."""
    alpha = _check_nonneg("alpha", alpha)
    k = _check_positive_int("k", k)
    gram, Vt, di = factors if factors is not None else gfcf_factors(user_ptr, user_items, num_items, k)
    V = Vt[:k]  # k above the rank bound min(users, items) keeps every vector there is
    sq = np.sqrt(di).astype(np.float32)
    isq = np.divide(1.0, sq, out=np.zeros_like(sq), where=sq > 0)
    return SparsePlusLowRank(gram, (V * isq[None, :]).T * np.float32(alpha), V * sq[None, :])


def gfcf_factors(user_ptr, user_items, num_items: int, k: int, seed: int = 0):
    """``(R~^T R~ [I, I] CSR, V^T [k', I], item_degree)`` with ``k' = min(k, rank bound)``."""
    R, di = gfcf_normalized(user_ptr, user_items, num_items)
    gram = (R.T @ R).tocsr().astype(np.float32)
    return gram, top_right_singular_vectors(R, k, seed=seed), di


# ----------------------------------------------------------------------------------------------
# scorers (shared by every item-item baseline)
# ----------------------------------------------------------------------------------------------
def _check_matrix(W, num_items: Optional[int] = None):
    if isinstance(W, SparsePlusLowRank):
        if num_items is not None and W.shape[0] != num_items:
            raise ValueError(f"W has shape {W.shape}: expected [{num_items}, {num_items}]")
        return W
    if not (sp.issparse(W) or isinstance(W, np.ndarray)) or W.ndim != 2 or W.shape[0] != W.shape[1]:
        raise ValueError(f"W must be a square items x items scipy.sparse matrix or numpy array, got "
                         f"{getattr(W, 'shape', type(W).__name__)}")
    if num_items is not None and W.shape[0] != num_items:
        raise ValueError(f"W has shape {W.shape}: expected [{num_items}, {num_items}]")
    return W.tocsr() if sp.issparse(W) else W


def _ids(ids, bound: int, what: str) -> np.ndarray:
    a = ids.detach().cpu().numpy() if isinstance(ids, Tensor) else np.asarray(ids)
    a = a.reshape(-1).astype(np.int64, copy=False)
    if a.size and (a.min() < 0 or a.max() >= bound):
        raise ValueError(f"{what} contain ids outside [0, {bound}): min {a.min()}, max {a.max()}")
    return a


def _dense(m) -> np.ndarray:
    return np.ascontiguousarray(m.toarray() if sp.issparse(m) else m, dtype=np.float32)


def item_item_scorer(W) -> Callable[[Tensor], Tensor]:
    """Item-to-item: ``f(q [B]) = W[q]`` as ``float32 [B, I]``."""
    W = _check_matrix(W)
    n = W.shape[0]
    if isinstance(W, SparsePlusLowRank):
        def score(q):
            q = _ids(q, n, "query items")
            return torch.from_numpy(_dense(W.sparse[q]) + W.left[q] @ W.right)

        return score
    return lambda q: torch.from_numpy(_dense(W[_ids(q, n, "query items")]))


_KERNELS: dict = {}


def _kernels():
    """numba kernels (compiled on first use, cached on disk): ``out[r] += W[i]`` over the
    history items ``i`` of row ``r`` (times the history weight), for a CSR and for a dense ``W``."""
    if not _KERNELS:
        from numba import njit, prange

        @njit(parallel=True, nogil=True, cache=True)
        def sparse_rows(h_ptr, h_items, h_val, rows, w_ptr, w_idx, w_val, out):
            for r in prange(rows.shape[0]):
                u = rows[r]
                for e in range(h_ptr[u], h_ptr[u + 1]):
                    i = h_items[e]
                    a = h_val[e]
                    for f in range(w_ptr[i], w_ptr[i + 1]):
                        out[r, w_idx[f]] += a * w_val[f]

        @njit(parallel=True, nogil=True, cache=True)
        def dense_rows(h_ptr, h_items, h_val, rows, W, out):
            n = W.shape[1]
            for r in prange(rows.shape[0]):
                u = rows[r]
                for e in range(h_ptr[u], h_ptr[u + 1]):
                    i = h_items[e]
                    a = h_val[e]
                    for j in range(n):
                        out[r, j] += a * W[i, j]

        _KERNELS.update(sparse_rows=sparse_rows, dense_rows=dense_rows)
    return _KERNELS


def item_item_user_scorer(W, history_ptr, history_items, history_weights=None) -> Callable[[Tensor], Tensor]:
    """User -> items: ``f(u [B]) = H[u] @ W`` (``H`` the users x items history matrix from the
    CSR ``(history_ptr, history_items)``: 0/1, or the ``history_weights`` aligned with
    ``history_items`` (e.g. recency), a repeated item keeping its largest weight) as
    ``float32 [B, I]``. A numba kernel adds the rows of ``W`` of each history item, so the cost is
    the history size times the row length of ``W``, with no sparse product."""
    W = _check_matrix(W)
    n = W.shape[0]
    H = interaction_matrix(history_ptr, history_items, n)
    if history_weights is not None:
        w = np.asarray(history_weights, dtype=np.float32).ravel()
        if w.size != np.asarray(history_items).size:
            raise ValueError(f"history_weights has {w.size} entries for {np.asarray(history_items).size} history items")
        Hw = sp.csr_matrix((w, np.asarray(history_items, dtype=np.int64), np.asarray(history_ptr, dtype=np.int64)),
                           shape=H.shape)
        Hw = Hw.tocoo()  # a repeated item keeps its largest weight
        order = np.lexsort((-Hw.data, Hw.col, Hw.row))
        r, c, d = Hw.row[order], Hw.col[order], Hw.data[order]
        first = np.ones(r.size, dtype=bool)
        first[1:] = (r[1:] != r[:-1]) | (c[1:] != c[:-1])
        H = sp.csr_matrix((d[first], (r[first], c[first])), shape=H.shape)
        H.sort_indices()
    h_ptr = H.indptr.astype(np.int64)
    h_items = H.indices.astype(np.int64)
    h_val = np.ascontiguousarray(H.data, dtype=np.float32)
    low = None
    if isinstance(W, SparsePlusLowRank):  # the sparse part through the kernel, + (H[u] left) right
        low, W = W, W.sparse
    if sp.issparse(W):
        W.sort_indices()
        parts = (W.indptr.astype(np.int64), W.indices.astype(np.int64), np.asarray(W.data, dtype=np.float32))
    else:
        dense = np.ascontiguousarray(W, dtype=np.float32)

    def score(u: Tensor) -> Tensor:
        rows = _ids(u, H.shape[0], "users")
        out = np.zeros((rows.size, n), dtype=np.float32)
        if rows.size:
            if sp.issparse(W):
                _kernels()["sparse_rows"](h_ptr, h_items, h_val, rows, *parts, out)
            else:
                _kernels()["dense_rows"](h_ptr, h_items, h_val, rows, dense, out)
            if low is not None:
                out += (H[rows] @ low.left) @ low.right
        return torch.from_numpy(out)

    return score


def build_item_item(name: str, user_ptr, user_items, num_items: int, params: Optional[dict] = None):
    """``W`` of ``itemknn``, ``rp3beta``, ``ease`` or ``gfcf`` with ``params`` (missing keys: defaults)."""
    builders = {"itemknn": itemknn_similarity, "rp3beta": rp3beta_similarity, "ease": ease_weights,
                "gfcf": gfcf_model}
    if name not in builders:
        raise ValueError(f"baseline={name!r} has no graph-only builder; choose one of {sorted(builders)}")
    p = {**DEFAULT_PARAMS[name], **(params or {})}
    allowed = set(DEFAULT_PARAMS[name])
    unknown = sorted(set(p) - allowed)
    if unknown:
        raise ValueError(f"{name} parameters {unknown} are not valid; choose from {sorted(allowed)}")
    return builders[name](user_ptr, user_items, num_items, **p)


def matrix_nbytes(W) -> int:
    """Bytes held by ``W`` (sparse: data + indices + indptr)."""
    if isinstance(W, SparsePlusLowRank):
        return matrix_nbytes(W.sparse) + int(W.left.nbytes + W.right.nbytes)
    if sp.issparse(W):
        return int(W.data.nbytes + W.indices.nbytes + W.indptr.nbytes)
    return int(W.nbytes)


__all__: Sequence[str] = (
    "ITEM_ITEM_BASELINES", "EASE_MAX_ITEMS", "DEFAULT_PARAMS", "interaction_matrix", "topk_per_row", "item_gram",
    "rp3_walk",
    "itemknn_similarity", "rp3beta_similarity", "ease_weights", "visit_count_matrix", "item_item_scorer",
    "item_item_user_scorer", "build_item_item", "matrix_nbytes", "SparsePlusLowRank", "gfcf_model", "gfcf_factors",
    "top_right_singular_vectors", "THREADED_LAPACK_MAX_N",
)
