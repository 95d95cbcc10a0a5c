"""A growable ``[n, d]`` float32 table: a fixed (possibly memory-mapped) base plus appended rows.

Used for the catalogue's embeddings (:class:`app.recommend.Recommender`) and the inductive
embedder's layer tables (:class:`app.inductive.InductiveEmbedder`), both of which grow as new items
are inserted by ``pinsage serve``.
"""

from __future__ import annotations

import numpy as np


class Rows:
    """``[n, d]`` float32 rows: a fixed base table (may be memory-mapped) plus appended rows, so
    that adding a row never copies the base."""

    def __init__(self, base: np.ndarray):
        self.base = base
        self.extra = np.zeros((0, base.shape[1]), dtype=np.float32)
        self.n_extra = 0

    def __len__(self) -> int:
        return self.base.shape[0] + self.n_extra

    def append(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.float32).reshape(-1, self.base.shape[1])
        need = self.n_extra + rows.shape[0]
        if need > self.extra.shape[0]:
            grown = np.zeros((max(need, 2 * self.extra.shape[0], 1024), self.base.shape[1]), dtype=np.float32)
            grown[:self.n_extra] = self.extra[:self.n_extra]
            self.extra = grown
        self.extra[self.n_extra:need] = rows
        self.n_extra = need

    def rows(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        nb = self.base.shape[0]
        if ids.size == 0 or ids.max() < nb:
            return np.ascontiguousarray(self.base[ids], dtype=np.float32)
        out = np.empty((ids.shape[0], self.base.shape[1]), dtype=np.float32)
        old = ids < nb
        out[old] = self.base[ids[old]]
        out[~old] = self.extra[ids[~old] - nb]
        return out
