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
    sys.path.insert(0, str(ROOT))
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
            dataset = {"ml100k": "movielens-100k", "latest-small": "movielens-latest-small",
                       "gowalla": "gowalla"}[r["run"].rsplit("-", 1)[0]]
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="*", default=[], choices=list(RUNS))
    p.add_argument("--baselines", nargs="*", default=[])
    p.add_argument("--seeds", nargs="*", type=int, default=[0])
    p.add_argument("--epochs", type=int, default=None, help="override trainer.max_epochs")
    p.add_argument("--render", action="store_true", help="print the markdown tables of results.json")
    a = p.parse_args()
    if a.render:
        print(render(_load()))
        return
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
