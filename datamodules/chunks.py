"""Chunked passes over edge-sized arrays, so the cold dataset build holds one chunk of
temporaries at a time instead of several full-size copies of the log (benchmarks/SCALE.md).

``ROWS`` is the chunk length of every such pass (read at call time, so a test can shrink it to
exercise the chunk boundaries); results do not depend on it.
"""

from __future__ import annotations

import mmap
from typing import Iterator, Optional, Tuple

import numpy as np

#: rows per chunk of the build's passes over the log (4M rows: ~32 MB per int64 temporary)
ROWS = 1 << 22


def spans(n: int, size: Optional[int] = None) -> Iterator[Tuple[int, int]]:
    """``(start, stop)`` of consecutive chunks covering ``range(n)``."""
    size = int(size or ROWS)
    for a in range(0, int(n), size):
        yield a, min(a + size, int(n))


def take(order: Optional[np.ndarray], a: int, b: int) -> np.ndarray:
    """Positions ``a:b`` of ``order``; ``order=None`` stands for the identity ``arange(n)``."""
    return np.arange(a, b, dtype=np.int64) if order is None else order[a:b]


def bincount(values: np.ndarray, minlength: int, rows: Optional[np.ndarray] = None) -> np.ndarray:
    """``np.bincount(values[rows], minlength=minlength)`` (all of ``values`` when ``rows`` is None),
    one chunk at a time."""
    n = values.shape[0] if rows is None else rows.shape[0]
    out = np.zeros(int(minlength), dtype=np.int64)
    for a, b in spans(n):
        out += np.bincount(values[a:b] if rows is None else values[rows[a:b]], minlength=int(minlength))
    return out


def in_group_order(groups: np.ndarray, keys: Optional[np.ndarray] = None, rows: Optional[np.ndarray] = None) -> bool:
    """Whether ``rows`` (all rows when None) are already sorted by ``(groups, keys, row)``, i.e.
    whether ``rows[np.lexsort((rows, keys[rows], groups[rows]))]`` would be ``rows`` unchanged.

    Checked chunk by chunk (one-row overlap), so an already grouped log (the synthetic generator's,
    a log sorted by user) skips its sort without a full-size temporary."""
    n = groups.shape[0] if rows is None else rows.shape[0]
    for a, b in spans(max(n - 1, 0)):
        sl = slice(a, b + 1)
        if rows is None:
            g = groups[sl]
            k = None if keys is None else keys[sl]
        else:
            r = rows[sl]
            if (r[1:] <= r[:-1]).any():
                return False
            g = groups[r]
            k = None if keys is None else keys[r]
        dg = g[1:] - g[:-1] if g.dtype.kind != "u" else g[1:].astype(np.int64) - g[:-1]
        if (dg < 0).any():
            return False
        if k is not None and ((dg == 0) & (k[1:] < k[:-1])).any():
            return False
    return True


def release(*arrays) -> None:
    """Drop the resident pages of read-only memory-mapped arrays from this process (``madvise
    MADV_DONTNEED``; the page cache keeps them, a later read maps them again): after a pass over a
    cached array its pages stop counting in the build's RSS. No-op for other arrays."""
    for arr in arrays:
        m = getattr(arr, "_mmap", None)
        if m is None or not hasattr(m, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
            continue
        try:
            m.madvise(mmap.MADV_DONTNEED)
        except (ValueError, OSError):
            pass
