"""Every baseline the evaluator scores, found by name in one registry (:data:`REGISTRY`), with its
settings and their tuning on the validation split of whatever dataset is loaded.

* ``random``, ``popularity``, ``cooccurrence`` (kind ``graph``): scored straight from the training
  graph by :mod:`models.baselines`; nothing to tune.
* ``itemknn``, ``rp3beta``, ``ease``, ``gfcf`` (kind ``matrix``): an items x items model built
  from the training graph by :mod:`models.item_item` and scored by its shared scorers;
  ``pixie`` is the project's own random-walk sampler (:func:`datamodules.walks.visit_ranking`,
  the walks PinSage's neighbourhoods come from) used directly as a recommender: the top-``top_t``
  visit counts of ``num_walks`` walks from every item, L1-normalised per item and divided by
  ``popularity^beta``.

Settings of a ``matrix`` baseline: the ``params`` a caller gives, else the ones
``pinsage baselines`` tuned on the validation split of that very dataset (the *record*, a JSON
file beside the dataset's cache folder under its cache key: ``<cache>/<dataset>-<key>.baselines.json``,
:func:`record_path`), else :data:`models.item_item.DEFAULT_PARAMS` (untuned). Tuning
(:func:`app.baselines_command.tune`) scores each setting of a small grid (:attr:`Baseline.grid`; listed settings on
catalogues above :data:`LARGE_CATALOGUE` items) with the full-ranking protocol's Recall@20 on
the validation split (history masked, the user's history pooled as the model pools it) and keeps
the best.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from datamodules.walks import visit_ranking
from models.baselines import BASELINES as GRAPH_BASELINES
from models.item_item import (DEFAULT_PARAMS, EASE_MAX_ITEMS, ease_weights, gfcf_factors,  # noqa: F401 (re-exported)
                              gfcf_model, item_gram, itemknn_similarity, rp3_walk, rp3beta_similarity,
                              visit_count_matrix)

RECORD_SUFFIX = ".baselines.json"
RECORD_FORMAT = "pinsage-baselines"
SELECT = "recall@20"  # the selection metric (full ranking, validation split)
LARGE_CATALOGUE = 20_000  # above it, each grid is a short list of settings (a full pass takes minutes)

Grid = Union[Dict[str, list], List[dict]]


@dataclass(frozen=True)
class Baseline:
    """One baseline: ``kind`` ``graph`` (scored from the graph) or ``matrix`` (built, tunable)."""

    name: str
    kind: str
    grid: Grid = field(default_factory=dict)
    grid_large: Grid = field(default_factory=list)

    @property
    def defaults(self) -> dict:
        return dict(DEFAULT_PARAMS.get(self.name, {}))


REGISTRY: Dict[str, Baseline] = {
    **{b: Baseline(b, "graph") for b in GRAPH_BASELINES},
    "itemknn": Baseline("itemknn", "matrix", {"k": [50, 100, 200, 500], "shrink": [0.0, 10.0, 100.0]},
                        [{"k": 100, "shrink": 0.0}, {"k": 200, "shrink": 0.0}, {"k": 100, "shrink": 50.0},
                         {"k": 200, "shrink": 50.0}, {"k": 200, "shrink": 200.0}]),
    "rp3beta": Baseline("rp3beta", "matrix", {"alpha": [0.6, 0.8, 1.0], "beta": [0.2, 0.3, 0.4, 0.5], "k": [100, 200, 500]},
                        [{"alpha": a, "beta": b, "k": 200} for a in (0.8, 1.0) for b in (0.2, 0.3)]),
    "ease": Baseline("ease", "matrix", {"lam": [30.0, 100.0, 300.0, 1000.0, 3000.0]},
                     [{"lam": 30.0}, {"lam": 100.0}, {"lam": 300.0}]),
    "pixie": Baseline("pixie", "matrix", {"num_walks": [200, 1000], "top_t": [200, 500], "beta": [0.0, 0.1, 0.2]},
                      [{"num_walks": 200, "top_t": 200, "beta": 0.0}, {"num_walks": 1000, "top_t": 500, "beta": 0.1},
                       {"num_walks": 1000, "top_t": 500, "beta": 0.2}]),
    "gfcf": Baseline("gfcf", "matrix", {"k": [64, 128, 256, 512], "alpha": [0.0, 0.1, 0.3, 1.0]},
                     # a pass scores every user against [k, I] factors: on Gowalla ~1-3 min per setting
                     [{"k": 256, "alpha": 0.3}, {"k": 256, "alpha": 0.1}, {"k": 256, "alpha": 1.0},
                      {"k": 128, "alpha": 0.3}]),
}
ALL_BASELINES = tuple(REGISTRY)
MATRIX_BASELINES = tuple(b for b, s in REGISTRY.items() if s.kind == "matrix")
TUNABLE = MATRIX_BASELINES


def check_names(names, what: str = "baseline") -> List[str]:
    bad = [n for n in names if n not in REGISTRY]
    if bad:
        raise ValueError(f"{what} {bad[0]!r} is not known; choose from {list(REGISTRY)}")
    return list(names)


# ----------------------------------------------------------------------------------------------
# the record: tuned settings beside the dataset cache
# ----------------------------------------------------------------------------------------------
def record_path(ds) -> Optional[Path]:
    """``<cache>/<dataset>-<key>.baselines.json`` of a dataset loaded through the cache (else None)."""
    cache = getattr(ds, "cache_path", None)
    return None if cache is None else Path(str(cache) + RECORD_SUFFIX)


def history_label(half_life: Optional[float]) -> str:
    """How the user's history is pooled (the record keeps one set of settings per pooling)."""
    return "equal weights" if half_life is None else f"recency half-life {float(half_life):g}"


def read_record(path: Optional[Path]) -> dict:
    if path is None or not Path(path).is_file():
        return {}
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        print(f"pinsage: warning: the baseline record {path} is unreadable ({err}); using untuned defaults",
              file=sys.stderr)
        return {}
    return rec if isinstance(rec, dict) and rec.get("format") == RECORD_FORMAT else {}


def write_record(path: Path, ds, history: str, name: str, entry: dict) -> None:
    """Merge ``entry`` (model ``name``, history pooling ``history``) into the record, atomically."""
    rec = read_record(path) or {"format": RECORD_FORMAT, "version": 1, "tunings": {}}
    rec.update(dataset=ds.name, cache=str(getattr(ds, "cache_path", "")),
               selected_on=f"validation split, full ranking {SELECT} (history masked)",
               updated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    rec.setdefault("tunings", {}).setdefault(history, {})[name] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(rec, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def settings(ds, name: str, params: Optional[dict] = None,
             history: Optional[str] = None) -> Tuple[dict, str]:
    """``(params, source)`` of ``matrix`` baseline ``name`` on ``ds``: defaults, overridden by the
    record's tuned setting for the ``history`` pooling (any pooling when None), overridden by
    ``params``; ``source`` says which won."""
    if name not in MATRIX_BASELINES:
        raise ValueError(f"baseline={name!r} takes no settings; only {list(MATRIX_BASELINES)} do")
    path = record_path(ds)
    tunings = read_record(path).get("tunings", {})
    keys = [history] if history is not None else sorted(tunings)
    tuned, source = {}, "untuned defaults"
    for h in keys:
        if name in tunings.get(h, {}):
            tuned = dict(tunings[h][name].get("params", {}))
            source = f"tuned on validation ({path}, {h})"
            break
    if params:
        source = "given by the caller"
    out = {**DEFAULT_PARAMS[name], **tuned, **(params or {})}
    unknown = sorted(set(out) - set(DEFAULT_PARAMS[name]))
    if unknown:
        raise ValueError(f"{name} parameters {unknown} are not valid; choose from {sorted(DEFAULT_PARAMS[name])}")
    return out, source


def resolve_params(name: str, params: Optional[Dict] = None, ds=None, history: Optional[str] = None) -> Dict:
    """Full settings of ``name`` (see :func:`settings`; without ``ds``: defaults + ``params``)."""
    if name not in MATRIX_BASELINES:
        raise ValueError(f"baseline={name!r} is not an item-item baseline; choose one of {list(MATRIX_BASELINES)}")
    if ds is None:
        out = {**DEFAULT_PARAMS[name], **(params or {})}
        unknown = sorted(set(out) - set(DEFAULT_PARAMS[name]))
        if unknown:
            raise ValueError(f"{name} parameters {unknown} are not valid; choose from {sorted(DEFAULT_PARAMS[name])}")
        return out
    return settings(ds, name, params, history)[0]


# ----------------------------------------------------------------------------------------------
# building the matrices
# ----------------------------------------------------------------------------------------------
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


def build(name: str, graph, params: dict, seed: int = 0, cache: Optional[dict] = None):
    """The model of ``matrix`` baseline ``name`` with the full settings ``params`` from an
    ``InteractionGraph``; ``cache`` (a dict kept across calls on one graph) shares the expensive
    part of a grid: the Gram matrix (itemknn), the walk (rp3beta, per alpha), the SVD (gfcf)."""
    cache = {} if cache is None else cache
    g, p = graph, dict(params)
    if name == "itemknn":
        if "gram" not in cache:
            cache["gram"] = item_gram(g.user_ptr, g.user_items, g.num_items)
        return itemknn_similarity(g.user_ptr, g.user_items, g.num_items, gram=cache["gram"], **p)
    if name == "rp3beta":
        if cache.get("alpha") != p["alpha"]:
            cache.update(alpha=p["alpha"], walk=rp3_walk(g.user_ptr, g.user_items, g.num_items, p["alpha"]))
        return rp3beta_similarity(g.user_ptr, g.user_items, g.num_items, walk=cache["walk"], **p)
    if name == "gfcf":
        k_max = max(int(p["k"]), cache.get("gfcf_k", 0))
        if cache.get("gfcf_k", 0) < int(p["k"]):
            cache.update(gfcf_k=k_max, gfcf=gfcf_factors(g.user_ptr, g.user_items, g.num_items, k_max, seed=seed))
        return gfcf_model(g.user_ptr, g.user_items, g.num_items, factors=cache["gfcf"], **p)
    if name == "ease":
        return ease_weights(g.user_ptr, g.user_items, g.num_items, **p)
    if name == "pixie":
        return pixie_matrix(g, seed=seed, **p)
    raise ValueError(f"baseline={name!r} is not an item-item baseline; choose one of {list(MATRIX_BASELINES)}")


def build_matrix(name: str, ds, params: Optional[Dict] = None, seed: int = 0, history: Optional[str] = None):
    """The ``items x items`` model of baseline ``name`` from ``ds.train_graph`` (settings: :func:`settings`)."""
    return build(name, ds.train_graph, resolve_params(name, params, ds, history), seed=seed)


# ----------------------------------------------------------------------------------------------
# tuning on the validation split
# ----------------------------------------------------------------------------------------------
def grid_settings(spec: Grid) -> List[dict]:
    if isinstance(spec, list):
        return [dict(p) for p in spec]
    keys = list(spec)
    return [dict(zip(keys, vals)) for vals in itertools.product(*(spec[k] for k in keys))]


def default_grid(name: str, num_items: int) -> Grid:
    b = REGISTRY[name]
    return b.grid_large if num_items > LARGE_CATALOGUE and b.grid_large else b.grid


def check_grid(grids: dict) -> Dict[str, Grid]:
    """Validate user grids ``{model: {param: [values]}}`` (or a list of settings): names and keys."""
    if not isinstance(grids, dict):
        raise ValueError(f"--grid must be a mapping {{model: {{param: [values, ...]}}}}, got {type(grids).__name__}")
    for name, spec in grids.items():
        if name not in MATRIX_BASELINES:
            raise ValueError(f"--grid has model {name!r}: only {list(MATRIX_BASELINES)} are tuned")
        allowed = sorted(DEFAULT_PARAMS[name])
        items = spec if isinstance(spec, list) else [spec]
        if not items or not all(isinstance(s, dict) and s for s in items):
            raise ValueError(f"--grid {name}: expected {{param: [values, ...]}} or a list of settings, got {spec!r}")
        for s in items:
            for k, v in s.items():
                if k not in allowed:
                    raise ValueError(f"--grid {name} has parameter {k!r}: choose from {allowed}")
                if not isinstance(spec, list) and (not isinstance(v, list) or not v):
                    raise ValueError(f"--grid {name}.{k}={v!r}: expected a non-empty list of values")
    return grids
