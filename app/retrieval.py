"""Nearest-neighbour retrieval over item embeddings with FAISS (inner-product metric).

One responsibility: turn an ``[N, d]`` float32 embedding matrix into a FAISS index, save / load
that index safely, and answer top-k queries with excluded ids filtered out.

Index kinds (``kind=``):

* ``"exact"`` -- ``IndexFlatIP``: brute force, the reference every approximate index is measured
  against.
* ``"hnsw"``  -- ``IndexHNSWFlat`` with ``METRIC_INNER_PRODUCT``; params ``M``, ``efConstruction``,
  ``efSearch``.
* ``"ivfpq"`` -- ``IndexIVFPQ`` (coarse ``IndexFlatIP`` quantiser, ``nlist`` lists, ``m``
  sub-quantisers of ``nbits`` bits, ``nprobe`` lists visited), trained on a random sample and
  wrapped in ``IndexRefineFlat`` (``k_factor``) so that the PQ shortlist is re-ranked with exact
  inner products.

The defaults were chosen with ``benchmarks/ann.py`` (1M x 128 L2-normalised clustered embeddings,
2 threads): see ``benchmarks/ANN.md`` for recall@10 and queries/second against exact search.

Embeddings are used as given (no normalisation here): PinSage outputs are already L2-normalised,
so inner product equals cosine similarity.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import faiss
import numpy as np

KINDS = ("exact", "hnsw", "ivfpq")

#: Build/search defaults per index kind (measured on 1M x 128, see benchmarks/ANN.md).
DEFAULT_PARAMS: Dict[str, Dict[str, Any]] = {
    "exact": {},
    "hnsw": {"M": 32, "efConstruction": 40, "efSearch": 128},
    # nlist=None -> about sqrt(N) lists, clamped so that every list gets >= 39 training points;
    # m=None -> 4-dimensional sub-vectors (d/4 sub-quantisers; the largest divisor of d <= d/4).
    "ivfpq": {"nlist": None, "m": None, "nbits": 8, "nprobe": 4, "k_factor": 10, "train_size": 50_000, "seed": 0},
}

#: Parameters that only change search behaviour (can be changed on a built or loaded index).
SEARCH_PARAMS = {"hnsw": ("efSearch",), "ivfpq": ("nprobe", "k_factor"), "exact": ()}

Exclude = Union[None, Sequence[Iterable[int]], Tuple[np.ndarray, np.ndarray], Any]

#: rows per pass over the embeddings (finiteness check, ``index.add``): bounds the temporaries, and
#: the pages of memory-mapped embeddings are handed back after each pass (:func:`_release`)
_ROWS = 262_144


# --------------------------------------------------------------------------- validation helpers


def _as_matrix(x: Any, name: str, dim: Optional[int] = None) -> np.ndarray:
    """``x`` as a C-contiguous float32 ``[n, d]`` array with finite values, or ValueError."""
    try:
        arr = np.asarray(x)
    except Exception as e:  # pragma: no cover - exotic inputs
        raise ValueError(f"{name} must be a float array of shape [n, d], got {type(x).__name__}: {e}") from e
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n, d], got shape {tuple(arr.shape)}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name} must have at least one row and one column, got shape {tuple(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    for s in range(0, arr.shape[0], _ROWS):  # in chunks: no [n, d] temporary
        if not np.isfinite(arr[s:s + _ROWS]).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        _release(x)  # a memory-mapped x: its pages back to the page cache
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} dimension {arr.shape[1]} != index dimension {dim}")
    return arr


def _int_param(name: str, value: Any, low: int, high: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        rng = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name}={value} is invalid: must be {rng}")
    return value


def _resolve_params(kind: str, params: Dict[str, Any]) -> Dict[str, Any]:
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is invalid: choose one of {', '.join(KINDS)}")
    defaults = DEFAULT_PARAMS[kind]
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        valid = ", ".join(defaults) or "none"
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)} for kind={kind!r}: valid parameters are {valid}")
    out = dict(defaults)
    out.update(params)
    return out


# --------------------------------------------------------------------------- build


def build_index(embeddings: Any, kind: str = "exact", **params: Any) -> faiss.Index:
    """A FAISS inner-product index over ``embeddings`` (float32 ``[N, d]``; row i gets id i).

    ``kind``: ``"exact"`` | ``"hnsw"`` | ``"ivfpq"``; ``params`` override :data:`DEFAULT_PARAMS`
    for that kind (unknown names -> ValueError listing the valid ones).
    """
    p = _resolve_params(kind, params)
    x = _as_matrix(embeddings, "embeddings")
    n, d = x.shape
    if kind == "exact":
        index = faiss.IndexFlatIP(d)
        _add(index, x, embeddings)
        return index
    if kind == "hnsw":
        m = _int_param("M", p["M"], 2, 1024)
        efc = _int_param("efConstruction", p["efConstruction"], 1)
        efs = _int_param("efSearch", p["efSearch"], 1)
        index = faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = efc
        index.hnsw.efSearch = efs
        index.add(x)  # one call: HNSW inserts a batch level by level, so batches would change the graph
        _release(embeddings)
        return index
    # ivfpq
    nbits = _int_param("nbits", p["nbits"], 1, 16)
    if p["m"] is None:
        m = max(k for k in range(1, max(1, d // 4) + 1) if d % k == 0)
    else:
        m = _int_param("m", p["m"], 1, d)
    if d % m:
        divisors = [k for k in range(1, d + 1) if d % k == 0]
        raise ValueError(f"m={m} is invalid: the dimension {d} must be divisible by m (choose one of {divisors})")
    train_size = _int_param("train_size", p["train_size"], 1)
    seed = _int_param("seed", p["seed"], 0)
    n_train = min(n, train_size)
    if p["nlist"] is None:
        nlist = int(max(1, min(round(np.sqrt(n)), n_train // 39)))
    else:
        nlist = _int_param("nlist", p["nlist"], 1, n_train)
    nprobe = _int_param("nprobe", p["nprobe"], 1)
    k_factor = p["k_factor"]
    if isinstance(k_factor, bool) or not isinstance(k_factor, (int, float, np.integer, np.floating)) or not k_factor >= 1:
        raise ValueError(f"k_factor={k_factor!r} is invalid: must be a number >= 1")
    if n_train < 2**nbits:
        raise ValueError(
            f"nbits={nbits} needs at least {2 ** nbits} training vectors, got {n_train} "
            f"(embeddings {n}, train_size {train_size}): lower nbits or use kind='hnsw'/'exact'"
        )
    if n_train < n:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=n_train, replace=False))
        sample = x[rows]
        _release(embeddings)  # the sample's gather touched pages all over a mapped file
    else:
        sample = x
    quantizer = faiss.IndexFlatIP(d)
    ivf = faiss.IndexIVFPQ(quantizer, d, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.seed = seed
    ivf.pq.cp.seed = seed
    index = faiss.IndexRefineFlat(ivf)
    index.own_fields = True
    ivf.this.disown()  # the refine index owns (and frees) the IVF index
    quantizer.this.disown()
    ivf.own_fields = True
    index.train(sample)
    del sample
    _add(index, x, embeddings)
    set_search_params(index, nprobe=nprobe, k_factor=float(k_factor))
    return index


def _add(index: faiss.Index, x: np.ndarray, source: Any) -> None:
    """``index.add(x)`` in batches of :data:`_ROWS` rows (the same index as one call: FAISS adds
    rows in order either way), each batch's pages of a memory-mapped ``source`` handed back after
    it; the flat codes of an exact or refine index are reserved once (no doubling copies)."""
    flat = faiss.downcast_index(index.refine_index if isinstance(index, faiss.IndexRefine) else index)
    if isinstance(flat, faiss.IndexFlatCodes) and flat.ntotal == 0:
        flat.codes.resize(x.shape[0] * flat.code_size)  # capacity for every row, then size 0 again:
        flat.codes.resize(0)  # the batches' resizes stay within it
    for s in range(0, x.shape[0], _ROWS):
        index.add(x[s:s + _ROWS])
        _release(source)


def _release(arr: Any) -> None:
    """Drop this process's resident pages of a memory-mapped array (``np.load(mmap_mode=...)``):
    the page cache keeps them; no-op for other arrays (see :func:`datamodules.chunks.release`)."""
    from datamodules.chunks import release

    release(arr)


def index_kind(index: faiss.Index) -> str:
    """``"exact"``, ``"hnsw"`` or ``"ivfpq"`` for an index made by :func:`build_index` (or read back)."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(index, faiss.IndexRefine) or isinstance(index, faiss.IndexIVF):
        return "ivfpq"
    if isinstance(index, faiss.IndexFlat):
        return "exact"
    raise ValueError(f"unsupported index type {type(index).__name__}: expected one of {', '.join(KINDS)}")


def set_search_params(index: faiss.Index, **params: Any) -> faiss.Index:
    """Change search-time knobs in place (``efSearch`` for HNSW; ``nprobe``, ``k_factor`` for IVF-PQ)."""
    index = faiss.downcast_index(index)
    kind = index_kind(index)
    unknown = sorted(set(params) - set(SEARCH_PARAMS[kind]))
    if unknown:
        valid = ", ".join(SEARCH_PARAMS[kind]) or "none"
        raise ValueError(f"unknown search parameter(s) {', '.join(unknown)} for kind={kind!r}: valid are {valid}")
    if "efSearch" in params:
        index.hnsw.efSearch = _int_param("efSearch", params["efSearch"], 1)
    if "nprobe" in params:
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = _int_param("nprobe", params["nprobe"], 1, ivf.nlist)
    if "k_factor" in params:
        kf = params["k_factor"]
        if isinstance(kf, bool) or not isinstance(kf, (int, float, np.integer, np.floating)) or not kf >= 1:
            raise ValueError(f"k_factor={kf!r} is invalid: must be a number >= 1")
        if not isinstance(index, faiss.IndexRefine):
            raise ValueError("k_factor only applies to an IVF-PQ index with a refine stage")
        index.k_factor = float(kf)
    return index


# --------------------------------------------------------------------------- save / load


def _write_bytes(f, data: memoryview, chunk: int = 1 << 24) -> None:
    """Write ``data`` to the open file ``f`` in chunks (a seam the tests use to fail mid-write)."""
    for start in range(0, len(data), chunk):
        f.write(data[start : start + chunk])


def _stream_index(index: faiss.Index, f) -> None:
    """The bytes of ``faiss.write_index(index)`` (those of ``faiss.serialize_index``) into the open
    file ``f`` as FAISS produces them, through :func:`_write_bytes`: no serialised copy of the
    whole index in memory (at 5M items that copy and its growth were ~3 GB above the index)."""
    failure: List[BaseException] = []

    def write(block: bytes) -> None:
        if not failure:  # after a failure FAISS may still call: write nothing more
            try:
                _write_bytes(f, memoryview(block))
            except BaseException as e:  # noqa: B036 - re-raised below, after FAISS returns
                failure.append(e)
                raise

    writer = faiss.PyCallbackIOWriter(write, 1 << 24)
    try:
        faiss.write_index(index, writer)
    except BaseException:
        if failure:
            raise failure[0] from None
        raise
    finally:
        del writer
    if failure:
        raise failure[0]


def save_index(index: faiss.Index, path: Union[str, os.PathLike]) -> Path:
    """Write ``index`` to ``path`` atomically.

    The bytes go to a temporary file in the same folder, are flushed and fsync'ed, then renamed over
    ``path`` with ``os.replace``. On any failure the temporary file is removed and ``path`` is left as
    it was (absent, or the previous complete index): a half-written index never exists at ``path``.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot save the index to {path}: folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600; an index is not a secret
            _stream_index(index, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable; not possible on every platform
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def load_index(
    path: Union[str, os.PathLike], expected_dim: Optional[int] = None, expected_count: Optional[int] = None
) -> faiss.Index:
    """Read an index written by :func:`save_index` (or ``faiss.write_index``).

    Raises FileNotFoundError for a missing file, ValueError for an empty / truncated / corrupt file,
    and ValueError when the index does not match the embeddings it should serve
    (``expected_dim``: embedding dimension; ``expected_count``: number of embeddings).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"index file {path} does not exist: build it first (app.retrieval.build_index + save_index)")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"index file {path} is empty (truncated or corrupt): rebuild the index")
    try:
        index = faiss.read_index(str(path))
    except (RuntimeError, MemoryError, OverflowError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"index file {path} ({size} bytes) is truncated or corrupt and cannot be read: rebuild the index "
            f"(faiss: {first[:200]})"
        ) from None
    try:
        index_kind(index)
    except ValueError as e:
        raise ValueError(f"index file {path}: {e}") from None
    if expected_dim is not None and index.d != int(expected_dim):
        raise ValueError(f"index dimension {index.d} != embedding dimension {int(expected_dim)}: rebuild the index")
    if expected_count is not None and index.ntotal != int(expected_count):
        raise ValueError(
            f"index holds {index.ntotal} vectors != {int(expected_count)} embeddings: rebuild the index"
        )
    return index


# --------------------------------------------------------------------------- search


def _exclusion_lists(exclude: Exclude, batch: int, n: int) -> List[np.ndarray]:
    """Per-query sorted unique arrays of excluded ids, validated to lie in [0, n)."""
    if exclude is None:
        return [np.empty(0, dtype=np.int64)] * batch
    if isinstance(exclude, tuple) and len(exclude) == 2 and not isinstance(exclude[0], (list, tuple, set)):
        indptr, indices = exclude
    elif hasattr(exclude, "indptr") and hasattr(exclude, "indices"):  # scipy.sparse CSR
        indptr, indices = exclude.indptr, exclude.indices
    else:
        indptr = indices = None
    if indptr is not None:
        indptr = np.asarray(indptr, dtype=np.int64)
        indices = np.asarray(indices, dtype=np.int64)
        if indptr.ndim != 1 or len(indptr) != batch + 1 or indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] > len(indices):
            raise ValueError(
                f"exclude CSR indptr must be non-decreasing, start at 0 and have batch+1={batch + 1} entries, "
                f"got {len(indptr)} entries"
            )
        rows = [indices[indptr[i] : indptr[i + 1]] for i in range(batch)]
    else:
        try:
            rows = list(exclude)
        except TypeError:
            raise ValueError(
                f"exclude must be None, a list of id lists (one per query) or a CSR (indptr, indices), "
                f"got {type(exclude).__name__}"
            ) from None
        if len(rows) != batch:
            raise ValueError(f"exclude has {len(rows)} id lists but there are {batch} queries: give one list per query")
    out = []
    for i, r in enumerate(rows):
        a = np.unique(np.asarray(list(r) if not isinstance(r, np.ndarray) else r, dtype=np.int64).ravel())
        if a.size and (a[0] < 0 or a[-1] >= n):
            bad = a[0] if a[0] < 0 else a[-1]
            raise ValueError(f"exclude[{i}] holds id {int(bad)} outside the catalogue [0, {n})")
        out.append(a)
    return out


def search(
    index: faiss.Index, queries: Any, k: int, exclude: Exclude = None
) -> Tuple[np.ndarray, np.ndarray]:
    """Top-``k`` ids by inner product for each query row, with excluded ids filtered out.

    ``queries``: ``[B, d]`` (a single ``[d]`` vector is treated as ``B = 1``).
    ``exclude``: None, a list of ``B`` id collections, or a CSR ``(indptr, indices)`` /
    ``scipy.sparse.csr_matrix``-like object with one row per query (e.g. the query item itself, a
    user's seen items). The index is asked for ``k + |excluded|`` neighbours (doubled until enough
    survive the filter).
    ``1 <= k <= N - |exclude[i]|`` for every query, else ValueError.

    Returns ``(scores [B, k] float32, ids [B, k] int64)``, best first. An approximate index can
    occasionally find fewer than ``k`` candidates (e.g. IVF with a small ``nprobe`` on tiny data); such
    slots hold id ``-1`` and score ``-inf``.
    """
    n = int(index.ntotal)
    if n == 0:
        raise ValueError("the index is empty: build it from at least one embedding")
    q = np.asarray(queries)
    if q.ndim == 1:
        q = q[None, :]
    q = _as_matrix(q, "queries", dim=index.d)
    b = q.shape[0]
    excl = _exclusion_lists(exclude, b, n)
    n_excl = np.array([len(e) for e in excl], dtype=np.int64)
    max_k = int(n - n_excl.max())
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= max_k:
        detail = f" (catalogue {n} minus up to {int(n_excl.max())} excluded ids)" if n_excl.max() else f" (catalogue size {n})"
        raise ValueError(f"k={k!r} is invalid: must be an integer in [1, {max_k}]{detail}")
    k = int(k)

    scores = np.full((b, k), -np.inf, dtype=np.float32)
    ids = np.full((b, k), -1, dtype=np.int64)
    todo = np.arange(b)
    fetch = np.minimum(k + n_excl, n)
    while todo.size:
        kk = int(fetch[todo].max())
        d_, i_ = index.search(q[todo], kk)
        again = []
        for row, qi in enumerate(todo):
            cand, sc = i_[row], d_[row]
            keep = cand >= 0
            if n_excl[qi]:
                keep &= ~np.isin(cand, excl[qi], assume_unique=False)
            cand, sc = cand[keep], sc[keep]
            if cand.size >= k or kk >= n:
                m = min(k, cand.size)
                ids[qi, :m] = cand[:m]
                scores[qi, :m] = sc[:m]
            else:
                again.append(qi)
        todo = np.asarray(again, dtype=np.int64)
        if todo.size:
            fetch[todo] = np.minimum(np.maximum(fetch[todo] * 2, kk * 2), n)
    return scores, ids


def neighbour_table(index: faiss.Index, embeddings: Any, k: int, batch: int = 4096, progress=None) -> np.ndarray:
    """``int32 [N, k]``: the top-``k`` ids of every indexed item by ``index`` (row ``i`` of
    ``embeddings`` is the vector the index holds as id ``i``), the item itself excluded, best first:
    the same answer :func:`search` gives for ``(embeddings[i], k, exclude=[[i]])``, precomputed
    once (PinSage serves related items from such lists) so that a query on a catalogue item is a
    row lookup.  Slots an approximate index could not fill hold ``-1``."""
    x = _as_matrix(embeddings, "embeddings", dim=index.d)
    n = x.shape[0]
    if n != index.ntotal:
        raise ValueError(f"embeddings has {n} rows, the index holds {index.ntotal}: give the vectors it was built from")
    k = _int_param("k", k, 1, max(1, n - 1))
    batch = _int_param("batch", batch, 1)
    out = np.empty((n, k), dtype=np.int32)
    for s in range(0, n, batch):
        e = min(n, s + batch)
        _, ids = index.search(x[s:e], min(k + 1, n))
        if ids.shape[1] < k + 1:  # n == k: every other item
            ids = np.concatenate([ids, np.full((e - s, k + 1 - ids.shape[1]), -1, np.int64)], axis=1)
        own = ids == np.arange(s, e)[:, None]
        # the query itself out where found, else the last candidate (stable: the order is kept)
        order = np.argsort(own, axis=1, kind="stable")[:, :k]
        out[s:e] = np.take_along_axis(ids, order, axis=1)
        _release(embeddings)
        if progress is not None:
            progress(e, n)
    return out


def recall_at_k(approx_ids: Any, exact_ids: Any, k: int = 10) -> float:
    """Mean over queries of |top-k approx ∩ top-k exact| / k (ids ``-1`` never count)."""
    a = np.asarray(approx_ids)
    e = np.asarray(exact_ids)
    if a.ndim != 2 or e.ndim != 2 or a.shape[0] != e.shape[0]:
        raise ValueError(f"approx_ids and exact_ids must be [B, >=k] with the same B, got {a.shape} and {e.shape}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= min(a.shape[1], e.shape[1]):
        raise ValueError(f"k={k!r} is invalid: must be an integer in [1, {min(a.shape[1], e.shape[1])}]")
    if a.shape[0] == 0:
        raise ValueError("approx_ids and exact_ids hold no queries")
    hits = 0
    for ra, re in zip(a[:, :k], e[:, :k]):
        hits += np.intersect1d(ra[ra >= 0], re[re >= 0]).size
    return float(hits) / (a.shape[0] * k)
