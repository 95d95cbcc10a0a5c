"""Tune the item-item baselines on the validation split, then measure the chosen setting on test.

    nice -n 10 python benchmarks/baselines.py --datasets movielens-100k movielens-latest-small
    nice -n 10 python benchmarks/baselines.py --datasets gowalla --models itemknn rp3beta pixie
    nice -n 10 python benchmarks/baselines.py --datasets gowalla --models ease
    python benchmarks/baselines.py --datasets movielens-100k --models itemknn rp3beta ease \
        --recency-half-lives 2 3 5 10   # rows <model>-recency: the history weighted as PinSage's

For every (dataset, model): each setting of the grid below is scored on the **validation** part
(full ranking, history masked, Recall@20, the leaderboard's metric), the best one is kept, and
only that one is scored on the **test** part with every protocol asked for (``item``, ``ncf``,
``full``; all three by default). Everything runs through :func:`app.evaluation.evaluate`, the
code path of ``pinsage test``/``predict``. The baselines are deterministic given the training
graph (``pixie``: given its walk seed), so one seed each (``seeds: 1``, ``std: 0``).

Writes (merged, temp file + rename, other writers' rows kept):

* ``benchmarks/results/quality.json``: ``{"rows": [{"dataset", "model", "protocol", "metric",
  "mean", "std", "seeds", "train_seconds", "command"}]}``, keyed by (dataset, model, protocol,
  metric); ``train_seconds`` = building the matrix of the chosen setting.
* ``benchmarks/results/baselines_tuned.json``: ``{dataset: {model: {"params", "val_recall@20",
  "grid": [[params, val_recall@20, build_seconds], ...], "selected_on", "machine"}}}``; the app's
  defaults for these baselines come from here (:mod:`app.item_item_baselines`).

EASE keeps one dense ``items x items`` matrix: its grid is scored one lambda at a time; the
test part of a lambda is scored only while it is the best on validation so far (so at most one
matrix is alive), and only the finally chosen one is recorded.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from app.evaluation import evaluate, recency_weights  # noqa: E402
from app.item_item_baselines import pixie_matrix, resolve_params  # noqa: E402
from machine import cpu_model  # noqa: E402
from datamodules.datasets import load_dataset  # noqa: E402
from models.item_item import (ease_weights, item_gram, itemknn_similarity, rp3_walk,  # noqa: E402
                              rp3beta_similarity)

RESULTS = ROOT / "benchmarks" / "results"
QUALITY = RESULTS / "quality.json"
TUNED = RESULTS / "baselines_tuned.json"
SELECT = "recall@20"

GRIDS = {
    "itemknn": {"k": [50, 100, 200, 500], "shrink": [0.0, 10.0, 100.0]},
    "rp3beta": {"alpha": [0.6, 0.8, 1.0], "beta": [0.2, 0.3, 0.4, 0.5], "k": [100, 200, 500]},
    "pixie": {"num_walks": [200, 1000], "top_t": [200, 500], "beta": [0.0, 0.1, 0.2]},
    "ease": {"lam": [30.0, 100.0, 300.0, 1000.0, 3000.0]},
}
# Gowalla (41k items; a full-ranking pass takes 1-10 min on the shared 2 cores): small grids,
# listed as settings (the and the literature's neighbourhoods of the optimum)
GRIDS_LARGE = {
    "itemknn": [{"k": 100, "shrink": 0.0}, {"k": 200, "shrink": 0.0}, {"k": 200, "shrink": 50.0},
                {"k": 100, "shrink": 50.0}, {"k": 200, "shrink": 200.0}, {"k": 500, "shrink": 200.0}],
    "rp3beta": [{"alpha": a, "beta": b, "k": 200} for a in (0.8, 1.0) for b in (0.2, 0.3)],
    "pixie": [{"num_walks": 200, "top_t": 200, "beta": 0.0}, {"num_walks": 1000, "top_t": 500, "beta": 0.1},
              {"num_walks": 1000, "top_t": 500, "beta": 0.2}],
    "ease": [{"lam": 30.0}, {"lam": 100.0}, {"lam": 300.0}],
}
CHEAP = ("popularity", "cooccurrence")


def _grid(spec):
    if isinstance(spec, list):  # explicit settings
        yield from spec
        return
    keys = list(spec)
    for vals in itertools.product(*(spec[k] for k in keys)):
        yield dict(zip(keys, vals))


def _atomic_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def _read(path: Path, default):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def merge_rows(new_rows, path: Path = QUALITY) -> None:
    """Merge ``new_rows`` into ``path`` by (dataset, model, protocol, metric)."""
    data = _read(path, {"rows": []})
    key = lambda r: (r["dataset"], r["model"], r["protocol"], r["metric"])  # noqa: E731
    rows = {key(r): r for r in data.get("rows", [])}
    for r in new_rows:
        rows[key(r)] = r
    data["rows"] = sorted(rows.values(), key=key)
    _atomic_json(path, data)


def merge_tuned(dataset: str, model: str, entry: dict, path: Path = TUNED) -> None:
    data = _read(path, {})
    data.setdefault(dataset, {})[model] = entry
    _atomic_json(path, data)


def load(dataset: str):
    cfg = yaml.safe_load((ROOT / "configs" / "data" / f"{dataset}.yaml").read_text())
    root = cfg.get("root", "../shared/data")
    root = str((ROOT / root).resolve()) if not os.path.isabs(root) else root
    return load_dataset(cfg["dataset"], root=root, split=cfg.get("split", "auto"),
                        features=["log_degree"], reader_args=cfg.get("reader_args"),
                        split_seed=cfg.get("split_seed", 0))


def rows_of(metrics: dict, dataset: str, model: str, protocols, train_seconds: float, command: str):
    out = []
    for k, v in metrics.items():
        parts = k.split("/")
        if len(parts) != 3 or parts[0] != model or parts[1] not in protocols or parts[2] == "seconds":
            continue
        out.append({"dataset": dataset, "model": model, "protocol": parts[1], "metric": parts[2],
                    "mean": float(v), "std": 0.0, "seeds": 1, "train_seconds": round(float(train_seconds), 2),
                    "command": command})
    return out


class Builder:
    """Matrices of one model's grid, sharing the expensive part across settings."""

    def __init__(self, ds, model: str):
        self.ds, self.model, self.g = ds, model, ds.train_graph
        self.cache = {}

    def __call__(self, p: dict):
        g = self.g
        if self.model == "itemknn":
            if "gram" not in self.cache:
                self.cache["gram"] = item_gram(g.user_ptr, g.user_items, g.num_items)
            return itemknn_similarity(g.user_ptr, g.user_items, g.num_items, gram=self.cache["gram"], **p)
        if self.model == "rp3beta":
            if self.cache.get("alpha") != p["alpha"]:
                self.cache = {"alpha": p["alpha"], "walk": rp3_walk(g.user_ptr, g.user_items, g.num_items, p["alpha"])}
            return rp3beta_similarity(g.user_ptr, g.user_items, g.num_items, walk=self.cache["walk"], **p)
        if self.model == "pixie":
            return pixie_matrix(g, **resolve_params(self.ds.name, "pixie", p))
        if self.model == "ease":
            return ease_weights(g.user_ptr, g.user_items, g.num_items, **p)
        raise ValueError(self.model)


def tune(ds, dataset: str, model: str, protocols, command: str, log, half_lives=()) -> None:
    """``half_lives``: also search the user's history weights ``2^(-r / h)`` (``r`` = position from
    the end; :func:`app.evaluation.recency_weights`, the weights a PinSage model with
    ``user_recency_half_life`` pools), recorded as ``<model>-recency``."""
    grid = list(_grid((GRIDS_LARGE if ds.num_items > 20_000 else GRIDS)[model]))
    build = Builder(ds, model)
    hs = [None] if not half_lives else [float(h) for h in half_lives]
    name = model + ("-recency" if half_lives else "")
    best = None  # (val, params, build_seconds, test metrics)
    tried = []

    def score(part, W, h, protos):
        weights = None if h is None else (lambda pt: recency_weights(ds, pt, h))
        m = evaluate(ds, None, part=part, protocols=protos, baselines=[model], baseline_matrices={model: W},
                     history_weights=weights)
        return {name + k[len(model):] if k.startswith(model + "/") else k: v for k, v in m.items()}

    for p in grid:
        t0 = time.perf_counter()
        W = build(p)
        dt = time.perf_counter() - t0
        for h in hs:
            ph = dict(p) if h is None else {**p, "user_recency_half_life": h}
            val = score("val", W, h, ["full"])[f"{name}/full/{SELECT}"]
            tried.append([ph, round(val, 5), round(dt, 2)])
            log(f"{dataset} {name} {ph}: val {SELECT}={val:.4f} (build {dt:.1f}s)")
            if best is None or val > best[0]:
                test = None
                if model == "ease":  # score test now: this matrix will not be kept
                    test = score("test", W, h, protocols)
                best = (val, ph, dt, test)
        del W
        if model == "ease":  # record as it goes: a long grid may be cut short
            _record(ds, dataset, name, best, tried, protocols, command, log, complete=False)
    val, ph, dt, test = best
    if test is None:
        p = {k: v for k, v in ph.items() if k != "user_recency_half_life"}
        W = build(p)
        test = score("test", W, ph.get("user_recency_half_life"), protocols)
        del W
        best = (val, ph, dt, test)
    _record(ds, dataset, name, best, tried, protocols, command, log, complete=True)


def _record(ds, dataset, model, best, tried, protocols, command, log, complete: bool) -> None:
    val, p, dt, test = best
    log(f"{dataset} {model} chosen {p}: val {SELECT}={val:.4f} -> test "
        + " ".join(f"{k.split('/', 1)[1]}={v:.4f}" for k, v in test.items() if k.startswith(model + "/")
                   and not k.endswith("seconds")))
    full_p = ({**resolve_params(ds.name, "pixie", {k: v for k, v in p.items() if k != "user_recency_half_life"}),
               **p} if model.startswith("pixie") else p)
    merge_tuned(dataset, model, {"params": full_p, f"val_{SELECT}": round(val, 5), "grid": tried,
                                 "grid_complete": complete,
                                 "selected_on": f"validation split, full ranking {SELECT} (history masked)",
                                 "build_seconds": round(dt, 2), "machine": cpu_model(), "command": command})
    merge_rows(rows_of(test, dataset, model, protocols, dt, command))


def cheap(ds, dataset: str, protocols, command: str, log) -> None:
    m = evaluate(ds, None, part="test", protocols=protocols, baselines=list(CHEAP), log=log)
    for b in CHEAP:
        merge_rows(rows_of(m, dataset, b, protocols, 0.0, command))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["movielens-100k", "movielens-latest-small", "gowalla"])
    ap.add_argument("--models", nargs="+", default=["popularity", "cooccurrence", "itemknn", "rp3beta", "pixie",
                                                    "ease"])
    ap.add_argument("--protocols", nargs="+", default=["item", "ncf", "full"])
    ap.add_argument("--recency-half-lives", nargs="+", type=float, default=[],
                    help="also tune the history's recency weights over these half-lives (items); the rows "
                         "are then named <model>-recency")
    a = ap.parse_args(argv)
    if any(h <= 0 for h in a.recency_half_lives):
        ap.error(f"--recency-half-lives must be > 0, got {a.recency_half_lives}")
    command = "python benchmarks/baselines.py " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))

    def log(msg):
        print(time.strftime("%H:%M:%S"), msg, flush=True)

    for dataset in a.datasets:
        ds = load(dataset)
        log(f"{dataset}: {ds.num_users} users, {ds.num_items} items, {ds.train_graph.num_edges} training edges")
        if any(m in CHEAP for m in a.models):
            cheap(ds, dataset, a.protocols, command, log)
        for model in a.models:
            if model not in CHEAP:
                tune(ds, dataset, model, a.protocols, command, log, a.recency_half_lives)


if __name__ == "__main__":
    main()
