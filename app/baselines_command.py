"""``pinsage baselines --config C``: tune the item-item baselines on the validation split of the
dataset of config ``C`` (loaded exactly as ``pinsage fit`` loads it) and record the chosen settings
beside the dataset's cache, where ``pinsage test`` and predict's ``metrics.json`` find them.

Each setting of a small grid per model (:mod:`app.item_item_baselines`, or ``--grid``) is scored
with the full-ranking protocol's Recall@20 on the validation split, the user's history pooled as
the config's model pools it (``data.user_recency_half_life``); the best is kept. Progress lines go
to stderr; the last stdout line is one JSON object: per model its chosen settings and validation
score, and the record's path.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Callable, List, Optional

import yaml

from datamodules.choices import resolve_half_life
from datamodules.datasets import load_dataset
from datamodules.interactions import DataError
from models.item_item import gfcf_factors

from . import item_item_baselines as bl
from .data_command import _as_group_config, build_parser
from .evaluation import evaluate, recency_weights


def _parser():
    parser = build_parser()
    parser.prog = "pinsage baselines"
    parser.description = ("Tune the item-item baselines on the validation split of a config's dataset and "
                          "record the chosen settings beside the dataset cache (pinsage test uses them).")
    parser.add_argument("--models", type=Optional[List[str]], default=None,
                        help=f"models to tune (default: all of {list(bl.TUNABLE)}; ease is skipped above "
                             f"{bl.EASE_MAX_ITEMS} items unless named)")
    parser.add_argument("--grid", type=Optional[str], default=None,
                        help='grids replacing the defaults, JSON/YAML: {"ease": {"lam": [100, 300]}, '
                             '"gfcf": [{"k": 256, "alpha": 0.3}]}')
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(argv or [])
    cfg = _parser().parse_args(_as_group_config(argv))
    data = cfg.data.as_dict()
    say = lambda msg: print(f"[pinsage baselines] {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr,  # noqa: E731
                            flush=True)
    try:
        explicit = cfg.models is not None
        models = bl.check_names(cfg.models if explicit else bl.TUNABLE, "--models has")
        untunable = [m for m in models if m not in bl.TUNABLE]
        if untunable:
            raise ValueError(f"--models has {untunable[0]!r}, which has nothing to tune; choose from {list(bl.TUNABLE)}")
        grids = {}
        if cfg.grid:
            try:
                grids = yaml.safe_load(cfg.grid)
            except yaml.YAMLError as err:
                raise ValueError(f"--grid is not valid JSON/YAML ({err})") from None
            bl.check_grid(grids)
            extra = sorted(set(grids) - set(models))
            if extra:
                raise ValueError(f"--grid has {extra[0]!r}, which is not among --models {models}")
        args = {k: data[k] for k in ("dataset", "root", "cache_dir", "features", "split", "split_seed", "reader_args")}
        ds = load_dataset(**args, progress=True)
    except (DataError, ValueError, FileNotFoundError) as e:
        print(f"pinsage baselines: error: {e}", file=sys.stderr)
        return 2
    path = bl.record_path(ds)
    half = resolve_half_life(data.get("user_recency_half_life"), ds.interactions.timestamps is not None)  # 'auto'
    history = bl.history_label(half)
    if "ease" in models and ds.num_items > bl.EASE_MAX_ITEMS:
        msg = (f"ease: the catalogue has {ds.num_items} items, more than the limit of {bl.EASE_MAX_ITEMS} "
               "(EASE keeps a dense items x items matrix)")
        if explicit:
            print(f"pinsage baselines: error: {msg}; leave ease out of --models", file=sys.stderr)
            return 2
        say(f"skipping {msg}")
        models = [m for m in models if m != "ease"]
    say(f"{ds.name}: {ds.num_users} users, {ds.num_items} items, {ds.train_graph.num_edges} training edges; "
        f"history pooled with {history}; record {path}")
    result = {"dataset": ds.name, "record": None if path is None else str(path), "history": history,
              "selected_on": f"validation split, full ranking {bl.SELECT}", "models": {}}
    for name in models:
        t0 = time.perf_counter()
        try:
            entry = tune(ds, name, grids.get(name), half_life=half, seed=data.get("seed", 0) or 0,
                            log=lambda m: say(m))
        except ValueError as e:
            print(f"pinsage baselines: error: {e}", file=sys.stderr)
            return 2
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        say(f"{name}: chosen {entry['params']} (val {bl.SELECT}={entry[f'val_{bl.SELECT}']:.4f}) in {entry['seconds']}s")
        if path is not None:
            bl.write_record(path, ds, history, name, entry)
        result["models"][name] = {"params": entry["params"], f"val_{bl.SELECT}": entry[f"val_{bl.SELECT}"],
                                  "settings_tried": len(entry["grid"]), "seconds": entry["seconds"]}
    if path is None:
        say("the dataset was not loaded through the cache: nothing recorded")
    print(json.dumps(result, sort_keys=True))
    return 0


def tune(ds, name: str, grid: Optional["bl.Grid"] = None, half_life: Optional[float] = None, seed: int = 0,
         log: Callable[[str], None] = lambda m: None, on_best: Optional[Callable] = None) -> dict:
    """Score every setting of ``grid`` (default :func:`bl.default_grid`) of ``matrix`` baseline
    ``name`` on the validation split (full ranking, :data:`bl.SELECT`), the history pooled with
    recency ``half_life`` (None: equal weights, as the model pools it); return the record entry
    ``{"params", "val_recall@20", "grid": [[params, val, build_seconds], ...], "build_seconds"}``.
    ``on_best(W, params, val)`` sees each new best matrix while it is alive (EASE keeps one)."""
    if name not in bl.MATRIX_BASELINES:
        raise ValueError(f"baseline {name!r} has nothing to tune; choose from {list(bl.MATRIX_BASELINES)}")
    if name == "ease" and ds.num_items > bl.EASE_MAX_ITEMS:
        raise ValueError(f"ease: the catalogue has {ds.num_items} items, more than the limit of {bl.EASE_MAX_ITEMS} "
                         f"(EASE keeps a dense items x items matrix); leave ease out")
    weights = None if half_life is None else (lambda part: recency_weights(ds, part, half_life))
    cache: dict = {}
    best, tried = None, []
    settings_list = bl.grid_settings(grid if grid is not None else bl.default_grid(name, ds.num_items))
    if name == "gfcf" and settings_list:  # one SVD with the most vectors any setting asks for
        k_max = max(int(bl.resolve_params(name, p)["k"]) for p in settings_list)
        t0 = time.perf_counter()
        g = ds.train_graph
        cache.update(gfcf_k=k_max, gfcf=gfcf_factors(g.user_ptr, g.user_items, g.num_items, k_max, seed=seed))
        log(f"gfcf: Gram matrix and top-{k_max} singular vectors in {time.perf_counter() - t0:.1f}s")
    for p in settings_list:
        full = bl.resolve_params(name, p)
        t0 = time.perf_counter()
        W = bl.build(name, ds.train_graph, full, seed=seed, cache=cache)
        dt = time.perf_counter() - t0
        m = evaluate(ds, None, part="val", protocols=("full",), baselines=[name], baseline_matrices={name: W},
                     history_weights=weights, seed=seed)
        val = float(m[f"{name}/full/{bl.SELECT}"])
        tried.append([full, round(val, 5), round(dt, 2)])
        log(f"{name} {p}: val {bl.SELECT}={val:.4f} (build {dt:.1f}s, scoring {m[f'{name}/full/seconds']:.1f}s)")
        if best is None or val > best[0]:
            best = (val, full, dt)
            if on_best is not None:
                on_best(W, full, val)
        del W
    if best is None:
        raise ValueError(f"--grid {name}: no setting to try")
    return {"params": best[1], f"val_{bl.SELECT}": round(best[0], 5), "grid": tried, "build_seconds": round(best[2], 2),
            "history": bl.history_label(half_life)}
