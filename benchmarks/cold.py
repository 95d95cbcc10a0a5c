"""The cold-item protocol over seeds, through the app's own CLI (``app/cold.py`` defines it).

    nice python benchmarks/cold.py --config configs/movielens-latest-small-users.yaml \
        --dataset movielens-latest-small --seeds 0 1 2 --out outputs/cold -- --model.cold_dropout 0.2

For each seed, two runs with the same config, budget and overrides (everything after ``--``):

* ``cold-s<seed>``: ``pinsage fit`` with ``--data.cold_items 0.1`` (10% of the items never seen
  in training), then ``pinsage test`` on its best validation checkpoint: the content-only,
  3-engagement and popularity rows;
* ``retrained-s<seed>``: the same with ``--data.cold_retrain true`` (the early engagements are
  trained on): the retrained row.

A run folder holding ``metrics.json`` is not run again (``--collect`` only reads them). Rows
(mean +- std over seeds; protocol ``cold``, metrics ``hit@10`` and ``hit@100``) are merged into
``benchmarks/results/quality.json``; the ratios the issue asks for are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from baselines import merge_rows  # noqa: E402

VARIANTS = {"cold": [], "retrained": ["--data.cold_retrain", "true"]}
MODELS = {"cold": ["pinsage-content-only", "pinsage-3-engagements", "popularity", "popularity-oracle"],
          "retrained": ["pinsage-retrained"]}


def run(config: str, variant: str, seed: int, out: Path, extra) -> dict:
    folder = out / f"{variant}-s{seed}"
    if (folder / "metrics.json").is_file():
        return json.loads((folder / "metrics.json").read_text())
    folder.mkdir(parents=True, exist_ok=True)
    args = ["--config", config, "--seed_everything", str(seed), "--data.seed", str(seed), "--trainer.logger", "false",
            "--trainer.default_root_dir", str(folder), "--data.cold_items", "0.1", *VARIANTS[variant], *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    t0 = time.time()
    with open(folder / "fit.log", "w") as log:
        subprocess.run([sys.executable, "-m", "app.cli", "fit", *args], cwd=ROOT, env=env, stdout=log,
                       stderr=subprocess.STDOUT, check=True)
    fit_s = time.time() - t0
    ckpt = sorted(folder.rglob("best-*.ckpt"))[0]
    test = subprocess.run([sys.executable, "-m", "app.cli", "test", *args, "--ckpt_path", str(ckpt)], cwd=ROOT,
                          env=env, capture_output=True, text=True, check=True)
    metrics = json.loads(test.stdout.strip().splitlines()[-1])
    (folder / "time.json").write_text(json.dumps({"fit_seconds": fit_s, "ckpt": str(ckpt)}))
    tmp = folder / ".metrics.json.tmp"
    tmp.write_text(json.dumps(metrics))
    os.replace(tmp, folder / "metrics.json")
    return metrics


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--dataset", required=True, help="the quality.json dataset name of the rows")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="outputs/cold")
    p.add_argument("--collect", action="store_true", help="only read the run folders that exist")
    a = p.parse_args(argv)
    out = Path(a.out)
    per = {m: {k: [] for k in ("hit@10", "hit@100")} for ms in MODELS.values() for m in ms}
    secs = {v: [] for v in VARIANTS}
    for seed in a.seeds:
        for variant in VARIANTS:
            if a.collect and not (out / f"{variant}-s{seed}" / "metrics.json").is_file():
                continue
            m = run(a.config, variant, seed, out, extra)
            t = out / f"{variant}-s{seed}" / "time.json"
            secs[variant].append(json.loads(t.read_text())["fit_seconds"] if t.is_file() else 0.0)
            for model in MODELS[variant]:
                for k in per[model]:
                    if f"{model}/cold/{k}" in m:
                        per[model][k].append(m[f"{model}/cold/{k}"])
    command = f"python benchmarks/cold.py --config {a.config} --dataset {a.dataset} --seeds " + \
        " ".join(map(str, a.seeds)) + (" -- " + " ".join(extra) if extra else "")
    rows, summary = [], {}
    for model, ks in per.items():
        for k, vals in ks.items():
            if not vals:
                continue
            variant = "retrained" if model == "pinsage-retrained" else "cold"
            rows.append({"dataset": a.dataset, "model": model, "protocol": "cold", "metric": k,
                         "mean": float(np.mean(vals)), "std": float(np.std(vals)), "seeds": len(vals),
                         "train_seconds": float(np.mean(secs[variant])) if secs[variant] else 0.0, "command": command})
            summary[f"{model}/{k}"] = f"{np.mean(vals):.4f} +- {np.std(vals):.4f} ({len(vals)} seeds)"
    merge_rows(rows)
    h = {m: np.mean(per[m]["hit@100"]) if per[m]["hit@100"] else float("nan") for m in per}
    summary["content-only / popularity"] = h["pinsage-content-only"] / h["popularity"]
    summary["content-only / retrained"] = h["pinsage-content-only"] / h["pinsage-retrained"]
    summary["3-engagements / retrained"] = h["pinsage-3-engagements"] / h["pinsage-retrained"]
    print(json.dumps(summary, indent=1, default=float))


if __name__ == "__main__":
    main()
