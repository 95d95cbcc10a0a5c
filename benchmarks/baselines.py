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
  "grid": [[params, val_recall@20, build_seconds], ...], "selected_on", "machine"}}}``, a log of
  what was chosen; the app does not read it.
* the dataset's baseline record beside its cache (:func:`app.item_item_baselines.write_record`,
  what ``pinsage baselines`` writes and ``pinsage test`` reads).

The search is :func:`app.item_item_baselines.tune` (the grids of its registry), the code path of
``pinsage baselines``. EASE keeps one dense ``items x items`` matrix: its grid is scored one lambda at a time; the
test part of a lambda is scored only while it is the best on validation so far (so at most one
matrix is alive), and only the finally chosen one is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]

from app import item_item_baselines as bl  # noqa: E402
from app.baselines_command import tune as tune_on_validation  # noqa: E402
from app.data_command import _as_group_config, build_parser  # noqa: E402
from app.evaluation import evaluate, recency_weights  # noqa: E402
from machine import cpu_model  # noqa: E402
from datamodules.datasets import load_dataset  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
QUALITY = RESULTS / "quality.json"
TUNED = RESULTS / "baselines_tuned.json"
SELECT = bl.SELECT
CHEAP = ("popularity", "cooccurrence")


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
    """The dataset of ``configs/data/<dataset>.yaml`` loaded as ``pinsage fit`` / ``pinsage baselines``
    load it (same cache key, so the record written here is the one ``pinsage test`` reads)."""
    cfg = build_parser().parse_args(_as_group_config(["--config", str(ROOT / "configs" / "data" / f"{dataset}.yaml")]))
    data = cfg.data.as_dict()
    root = data["root"]
    if not os.path.isabs(root):  # configs name the data root relative to the repository
        root = str((ROOT / root).resolve())
    args = {k: data[k] for k in ("dataset", "cache_dir", "features", "split", "split_seed", "reader_args")}
    return load_dataset(root=root, **args)


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


def tune(ds, dataset: str, model: str, protocols, command: str, log, half_lives=()) -> None:
    """``half_lives``: also search the user's history weights ``2^(-r / h)`` (``r`` = position from
    the end; :func:`app.evaluation.recency_weights`, the weights a PinSage model with
    ``user_recency_half_life`` pools), recorded as ``<model>-recency``. The search is
    :func:`app.item_item_baselines.tune` (what ``pinsage baselines`` runs), once per half-life."""
    name = model + ("-recency" if half_lives else "")
    hs = [None] if not half_lives else [float(h) for h in half_lives]
    best = None  # (val, params, half-life, build_seconds, test metrics or None)
    tried = []

    def score(part, W, h, protos):
        weights = None if h is None else (lambda pt: recency_weights(ds, pt, h))
        m = evaluate(ds, None, part=part, protocols=protos, baselines=[model], baseline_matrices={model: W},
                     history_weights=weights)
        return {name + k[len(model):] if k.startswith(model + "/") else k: v for k, v in m.items()}

    for h in hs:
        live: dict = {}

        def on_best(W, p, val, h=h, live=live):  # EASE: score test while its dense matrix is alive
            if model == "ease":
                live.update(params=p, test=score("test", W, h, protocols))

        entry = tune_on_validation(ds, model, half_life=h, log=lambda m, h=h: log(f"{dataset} {name} (h={h}) {m}"),
                        on_best=on_best)
        tried += [[{**p, **({} if h is None else {"user_recency_half_life": h})}, v, t] for p, v, t in entry["grid"]]
        val = entry[f"val_{SELECT}"]
        if best is None or val > best[0]:
            test = live.get("test") if live.get("params") == entry["params"] else None
            best = (val, entry["params"], h, entry["build_seconds"], test)
        if ds.cache_path is not None:  # the record pinsage test reads (see pinsage baselines)
            bl.write_record(bl.record_path(ds), ds, bl.history_label(h), model, entry)
    val, p, h, dt, test = best
    if test is None:
        W = bl.build(model, ds.train_graph, p)
        test = score("test", W, h, protocols)
        del W
    ph = {**p, **({} if h is None else {"user_recency_half_life": h})}
    _record(ds, dataset, name, (val, ph, dt, test), tried, protocols, command, log, complete=True)


def _record(ds, dataset, model, best, tried, protocols, command, log, complete: bool) -> None:
    val, p, dt, test = best
    log(f"{dataset} {model} chosen {p}: val {SELECT}={val:.4f} -> test "
        + " ".join(f"{k.split('/', 1)[1]}={v:.4f}" for k, v in test.items() if k.startswith(model + "/")
                   and not k.endswith("seconds")))
    merge_tuned(dataset, model, {"params": p, f"val_{SELECT}": round(val, 5), "grid": tried,
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
                                                    "gfcf", "ease"])
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
