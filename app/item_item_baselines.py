"""The item-item baselines' matrices for a dataset, with their tuned settings.

``itemknn``, ``rp3beta`` and ``ease`` are built from the training graph by
:mod:`models.item_item`; ``pixie`` is the project's own random-walk sampler
(:func:`datamodules.walks.visit_ranking`, the walks PinSage's neighbourhoods come from) used
directly as a recommender: the top-``top_t`` visit counts of ``num_walks`` walks from every item,
L1-normalised per item and divided by ``popularity^beta``; a user's score is the sum over their
history (:func:`models.item_item.item_item_user_scorer`).

Settings: ``params`` given by the caller, else the ones tuned on the validation split by
``benchmarks/baselines.py`` for that dataset (``benchmarks/results/baselines_tuned.json``), else
:data:`models.item_item.DEFAULT_PARAMS`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from datamodules.walks import visit_ranking
from models.item_item import DEFAULT_PARAMS, ITEM_ITEM_BASELINES, build_item_item, visit_count_matrix

TUNED_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "baselines_tuned.json"


def tuned_params(dataset: str, name: str, path: Optional[os.PathLike] = None) -> Dict:
    """The recorded validation-tuned setting of baseline ``name`` on ``dataset`` (``{}`` if none)."""
    p = Path(path) if path is not None else TUNED_PATH
    if not p.is_file():
        return {}
    try:
        table = json.loads(p.read_text())
    except (OSError, ValueError):
        return {}
    return dict(table.get(dataset, {}).get(name, {}).get("params", {}))


def resolve_params(dataset: str, name: str, params: Optional[Dict] = None) -> Dict:
    """Full settings of ``name``: defaults, overridden by the tuned ones, overridden by ``params``."""
    if name not in ITEM_ITEM_BASELINES:
        raise ValueError(f"baseline={name!r} is not an item-item baseline; choose one of {list(ITEM_ITEM_BASELINES)}")
    out = {**DEFAULT_PARAMS[name], **tuned_params(dataset, name), **(params or {})}
    unknown = sorted(set(out) - set(DEFAULT_PARAMS[name]))
    if unknown:
        raise ValueError(f"{name} parameters {unknown} are not valid; choose from {sorted(DEFAULT_PARAMS[name])}")
    return out


def pixie_matrix(graph, num_walks: int = 200, top_t: int = 200, beta: float = 0.0, walk_length: int = 2,
                 restart_prob: float = 0.5, seed: int = 0, chunk: int = 2048):
    """``W`` of the ``pixie`` baseline over an ``InteractionGraph`` (see the module docstring)."""
    n = graph.num_items
    ptrs, items, counts = [np.zeros(1, dtype=np.int64)], [], []
    off = 0
    for s in range(0, n, chunk):
        seeds = np.arange(s, min(s + chunk, n), dtype=np.int64)
        p, it, c = visit_ranking(graph.item_ptr, graph.item_users, graph.user_ptr, graph.user_items, seeds,
                                 num_walks=num_walks, walk_length=walk_length, restart_prob=restart_prob,
                                 max_rank=top_t, seed=seed)
        ptrs.append(p[1:] + off)
        off += int(p[-1])
        items.append(it)
        counts.append(c)
    ptr = np.concatenate(ptrs)
    return visit_count_matrix(ptr, np.concatenate(items) if items else np.empty(0, np.int64),
                              np.concatenate(counts) if counts else np.empty(0), np.arange(n), n, beta=beta,
                              item_degree=graph.item_degree())


def build_matrix(name: str, ds, params: Optional[Dict] = None, seed: int = 0):
    """The ``items x items`` matrix of baseline ``name`` from ``ds.train_graph``."""
    p = resolve_params(ds.name, name, params)
    g = ds.train_graph
    if name == "pixie":
        return pixie_matrix(g, seed=seed, **p)
    return build_item_item(name, g.user_ptr, g.user_items, g.num_items, p)
