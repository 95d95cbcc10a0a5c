"""Cold items: a share of the catalogue held out of training entirely (the cold-start protocol).

``cold_holdout(inter, fraction, engagements, seed)`` picks ``round(fraction * I)`` items (seeded,
among items with more than ``engagements`` interactions, so each has a case to score) and splits
each picked item's interactions, in time order (timestamps, else a seeded random order: file order
is not time order), into

* its **early engagements**: the first ``engagements`` rows -- what a new item has soon after it
  appears; the evaluator embeds it from them without retraining, and the *retrained* reference
  (``retrain=True`` in :func:`datamodules.datasets.load_dataset`) trains with them;
* its **cases**: every later row ``(u, c)``: ``c`` should rank high for ``u``.

Neither part enters the training, validation or test parts of the split, the training graph or
the training pairs: the item exists in the catalogue (with its content features) but training
never sees it interact.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from .checks import check_int
from .interactions import Interactions


def check_cold(fraction, engagements) -> Tuple[float, int]:
    """``(fraction, engagements)`` validated (``ValueError`` naming the argument)."""
    try:
        f = float(fraction)
    except (TypeError, ValueError):
        f = float("nan")
    if not 0.0 <= f < 1.0:
        raise ValueError(f"cold_items={fraction!r} is invalid: expected a fraction of the catalogue in [0, 1)")
    return f, check_int("cold_engagements", engagements, 0)


def cold_holdout(inter: Interactions, fraction: float, engagements: int = 3,
                 seed: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(cold_items, early_rows, case_rows)``: sorted ``int64`` item ids and row indices."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xC01D]))
    count = np.bincount(inter.items, minlength=inter.num_items)
    eligible = np.flatnonzero(count > engagements)
    n = min(int(round(fraction * inter.num_items)), eligible.size)
    cold = np.sort(rng.choice(eligible, size=n, replace=False)) if n else np.zeros(0, dtype=np.int64)
    rows = np.flatnonzero(np.isin(inter.items, cold))
    # per cold item, its rows in time order (timestamps; else a seeded random order)
    when = (inter.timestamps[rows] if inter.timestamps is not None
            else rng.permutation(rows.size))
    rows = rows[np.lexsort((rows, when, inter.items[rows]))]
    items = inter.items[rows]
    start = np.ones(rows.size, dtype=bool)
    start[1:] = items[1:] != items[:-1]
    first = np.maximum.accumulate(np.where(start, np.arange(rows.size), 0))
    early = (np.arange(rows.size) - first) < engagements
    return cold.astype(np.int64), np.sort(rows[early]), np.sort(rows[~early])
