"""Run the evaluation matrix behind RESULTS.md through the CLI and collect the metrics.

    python benchmarks/results.py --runs ml100k-pinsage ml100k-sage --seeds 0 1 2
    python benchmarks/results.py --baselines movielens-100k gowalla movielens-latest-small
    python benchmarks/results.py --render            # RESULTS-table.md from benchmarks/results/results.json

Each model run is ``pinsage fit`` (seeded), then ``pinsage predict`` (layer-wise embeddings,
index, every protocol + baselines on the test split into ``metrics.json``); rows accumulate in
``benchmarks/results/results.json`` keyed by (run, seed), so runs can be added one at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "results.json"

# ablation runs: only the leaderboard protocol, no baselines (they are measured once, separately)
_ABL = ["--model.test_protocols=[full]", "--model.baselines=[]", "--trainer.check_val_every_n_epoch=1000"]

# name -> (config, extra CLI overrides)
RUNS = {
    "ml100k-pinsage": ("configs/movielens-100k.yaml", []),
    "ml100k-sage": ("configs/movielens-100k.yaml",
                    ["--model", "configs/model/sage-mean.yaml", "--data.sampler=uniform",
                     "--data.hard_negatives=false"]),
    "ml100k-meanpool": ("configs/movielens-100k.yaml", ["--model.importance_pooling=false"]),
    "ml100k-nohard": ("configs/movielens-100k.yaml", ["--data.hard_negatives=false"]),
    "ml100k-T10": ("configs/movielens-100k.yaml", ["--data.num_neighbors=10"]),
    "ml100k-T50": ("configs/movielens-100k.yaml", ["--data.num_neighbors=50"]),
    "latest-small-pinsage": ("configs/movielens-latest-small.yaml", []),
    "gowalla-pinsage": ("configs/gowalla.yaml", []),
    # the Gowalla ablation (shorter budget, the same for every variant: --epochs 2); base = the
    # headline config with the paper's hard-negative curriculum switched on
    "gowalla-abl-pinsage": ("configs/gowalla.yaml", ["--data.hard_negatives=true"] + _ABL),
    "gowalla-abl-pinsage-nohard": ("configs/gowalla.yaml", _ABL),
    "gowalla-abl-pinsage-meanpool": ("configs/gowalla.yaml", ["--data.hard_negatives=true",
                                                              "--model.importance_pooling=false"] + _ABL),
    "gowalla-abl-pinsage-T10": ("configs/gowalla.yaml", ["--data.hard_negatives=true",
                                                         "--data.num_neighbors=10"] + _ABL),
    "gowalla-abl-pinsage-T50": ("configs/gowalla.yaml", ["--data.hard_negatives=true",
                                                         "--data.num_neighbors=50"] + _ABL),
    "gowalla-abl-sage-mean-uniform": ("configs/gowalla.yaml", ["--data.hard_negatives=true", "--model.conv=sage-mean",
                                                               "--data.sampler=uniform"] + _ABL),
}


def _load() -> dict:
    return json.loads(OUT.read_text()) if OUT.is_file() else {"rows": []}


def _save(db: dict) -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(json.dumps(db, indent=1, sort_keys=True))
    os.replace(tmp, OUT)


def _pinsage(*args: str) -> None:
    cmd = [sys.executable, "-m", "app.cli", *args]
    print("$ pinsage " + " ".join(args), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def run_model(name: str, seed: int, epochs: int | None) -> dict:
    config, extra = RUNS[name]
    work = ROOT / "outputs" / "results" / f"{name}-s{seed}"
    common = ["--config", config, *extra, f"--seed_everything={seed}", f"--data.seed={seed}",
              "--trainer.default_root_dir", str(work), "--trainer.logger=false",
              "--trainer.enable_progress_bar=false"]
    if epochs:
        common.append(f"--trainer.max_epochs={epochs}")
    common += EXTRA
    if work.exists():  # a stale last.ckpt would make Lightning write last-v1.ckpt beside it
        import shutil

        shutil.rmtree(work)
    t0 = time.perf_counter()
    _pinsage("fit", *common)
    fit_s = time.perf_counter() - t0
    _pinsage("predict", *common, "--ckpt_path", str(work / "checkpoints" / "last.ckpt"),
             "--artifacts.output_dir", str(work / "artifacts"), "--artifacts.index=exact")
    metrics = json.loads((work / "artifacts" / "metrics.json").read_text())
    cmd = "pinsage fit " + " ".join(common) + "  &&  pinsage predict ... --ckpt_path <last.ckpt>"
    return {"run": name, "seed": seed, "fit_seconds": round(fit_s, 1), "command": cmd, "metrics": metrics}


def run_baselines(dataset: str, seed: int) -> dict:
    from app.evaluation import evaluate
    from datamodules.datasets import load_dataset

    import yaml

    cfg = yaml.safe_load((ROOT / "configs" / "data" / f"{dataset}.yaml").read_text())
    ds = load_dataset(cfg["dataset"], root=cfg.get("root", "../shared/data"), features=["log_degree"],
                      split=cfg.get("split", "auto"), reader_args=cfg.get("reader_args"))
    t0 = time.perf_counter()
    m = evaluate(ds, None, part="test", seed=seed)
    return {"run": f"{dataset}-baselines", "seed": seed, "fit_seconds": 0.0,
            "command": f"python benchmarks/results.py --baselines {dataset} --seeds {seed}",
            "eval_seconds": round(time.perf_counter() - t0, 1), "metrics": m}


METRICS = [("item", "hit_rate@10"), ("item", "hit_rate@100"), ("item", "hit_rate@500"), ("item", "mrr"),
           ("ncf", "hr@10"), ("ncf", "ndcg@10"), ("full", "recall@20"), ("full", "ndcg@20")]


def render(db: dict) -> str:
    """Markdown tables: mean +- std over seeds of every (run/baseline, protocol metric)."""
    import numpy as np

    groups: dict = {}
    for r in db["rows"]:
        if r["run"].endswith("-baselines"):
            dataset = r["run"][: -len("-baselines")]
            for b in ("random", "popularity", "cooccurrence"):
                groups.setdefault((dataset, b), []).append({k.split("/", 1)[1]: v for k, v in r["metrics"].items()
                                                          if k.startswith(b + "/")})
        else:
            dataset = _quality_model(r["run"])[0]
            groups.setdefault((dataset, r["run"]), []).append(
                {k.split("/", 1)[1]: v for k, v in r["metrics"].items() if k.startswith("pinsage/")})
    out = []
    for dataset in sorted({d for d, _ in groups}):
        out.append(f"\n### {dataset}\n")
        out.append("| model | seeds | " + " | ".join(f"{p} {m}" for p, m in METRICS) + " |")
        out.append("|---|---:|" + "---:|" * len(METRICS))
        for (d, name), runs in sorted(groups.items()):
            if d != dataset:
                continue
            cells = []
            for p_, m in METRICS:
                vals = [x[f"{p_}/{m}"] for x in runs if f"{p_}/{m}" in x]
                cells.append("-" if not vals else f"{np.mean(vals):.4f} ± {np.std(vals):.4f}" if len(vals) > 1
                             else f"{vals[0]:.4f}")
            out.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


EXTRA: list = []  # --extra overrides for every run of this invocation
QUALITY = ROOT / "benchmarks" / "results" / "quality.json"


def _quality_model(run: str) -> tuple:
    """``results.json`` run name -> ``(dataset, quality.json model name)``."""
    prefix, rest = run.split("-", 1) if not run.startswith("latest-small") else ("latest-small", run[13:])
    dataset = {"ml100k": "movielens-100k", "latest-small": "movielens-latest-small", "gowalla": "gowalla"}[prefix]
    if rest.startswith("abl-"):
        rest = rest[4:]
        return dataset, rest if rest != "pinsage" else "pinsage-ablation-base"
    return dataset, {"sage": "sage-mean-uniform", "meanpool": "pinsage-meanpool", "nohard": "pinsage-nohard",
                     "T10": "pinsage-T10", "T50": "pinsage-T50"}.get(rest, rest)


def export_quality(db: dict) -> dict:
    """Rows ``{dataset, model, protocol, metric, mean, std, seeds, train_seconds, command}`` for
    every model run of ``results.json`` (mean +- std over its seeds), merged into quality.json
    by ``(dataset, model, protocol, metric)`` so rows written by other scripts survive."""
    import numpy as np

    groups: dict = {}
    for r in db["rows"]:
        if r["run"].endswith("-baselines"):
            continue
        groups.setdefault(r["run"], []).append(r)
    new = []
    for run, rows in groups.items():
        dataset, model = _quality_model(run)
        keys = sorted({k for r in rows for k in r["metrics"] if k.startswith("pinsage/") and not k.endswith("seconds")})
        for k in keys:
            _, protocol, metric = k.split("/", 2)
            vals = [r["metrics"][k] for r in rows if k in r["metrics"]]
            new.append({"dataset": dataset, "model": model, "protocol": protocol, "metric": metric,
                        "mean": float(np.mean(vals)), "std": float(np.std(vals)), "seeds": len(vals),
                        "train_seconds": float(np.mean([r["fit_seconds"] for r in rows])),
                        "command": rows[0]["command"]})
    old = json.loads(QUALITY.read_text()) if QUALITY.is_file() else {"rows": []}
    key = lambda r: (r["dataset"], r["model"], r["protocol"], r["metric"])  # noqa: E731
    fresh = {key(r) for r in new}
    merged = {"rows": [r for r in old["rows"] if key(r) not in fresh] + new}
    tmp = QUALITY.with_suffix(".tmp")
    tmp.write_text(json.dumps(merged, indent=1, sort_keys=True))
    os.replace(tmp, QUALITY)
    return merged


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="*", default=[], choices=list(RUNS))
    p.add_argument("--baselines", nargs="*", default=[])
    p.add_argument("--seeds", nargs="*", type=int, default=[0])
    p.add_argument("--epochs", type=int, default=None, help="override trainer.max_epochs")
    p.add_argument("--render", action="store_true", help="print the markdown tables of results.json")
    p.add_argument("--extra", nargs="*", default=[], help="extra CLI overrides for every run (e.g. "
                   "--trainer.deterministic=false)")
    p.add_argument("--quality", action="store_true", help="merge the model rows into benchmarks/results/quality.json")
    a = p.parse_args()
    if a.render:
        print(render(_load()))
        return
    if a.quality:
        export_quality(_load())
        return
    EXTRA[:] = a.extra
    for seed in a.seeds:
        for name in a.runs:
            row = run_model(name, seed, a.epochs)
            db = _load()
            db["rows"] = [r for r in db["rows"] if (r["run"], r["seed"]) != (name, seed)] + [row]
            _save(db)
        for ds in a.baselines:
            row = run_baselines(ds, seed)
            db = _load()
            db["rows"] = [r for r in db["rows"] if (r["run"], r["seed"]) != (row["run"], seed)] + [row]
            _save(db)


if __name__ == "__main__":
    main()
