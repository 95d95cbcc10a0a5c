"""The steps of ``benchmarks/gpu_check.sh`` (see there); every step is a child process with a
time limit, its exit status, seconds and figures recorded; a failed step does not stop the others
(the script exits non-zero at the end)."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY_FIT = [  # the tiny synthetic run of the app tests (tests/app/conftest.py)
    "--config", str(ROOT / "configs" / "synthetic.yaml"),
    "--data.reader_args", '{"num_users": 300, "num_items": 400, "num_interactions": 5000, "num_communities": 5, '
                          '"feature_dim": 8, "seed": 0}',
    "--data.batch_size=64", "--data.num_neighbors=5", "--data.num_walks=10", "--data.num_easy_negatives=40",
    "--data.max_hard_negatives=1", "--data.num_workers=0", "--model.hidden_channels=32", "--model.out_channels=16",
]


def run(name: str, argv, timeout: int, log_dir: Path, env=None) -> dict:
    print(f"[gpu_check] {name}: {' '.join(argv)}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    log = log_dir / f"{name}.log"
    with open(log, "w") as f:
        try:
            rc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, timeout=timeout,
                                env=dict(os.environ, **(env or {}))).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    res = {"rc": rc, "seconds": round(time.perf_counter() - t0, 1), "log": str(log)}
    print(f"[gpu_check] {name}: rc={rc} in {res['seconds']} s", file=sys.stderr, flush=True)
    return res


def _pytest_counts(log: str) -> dict:
    text = Path(log).read_text()
    return {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)", text)}


def _fit_figures(run_dir: Path) -> dict:
    import torch

    ckpt = next(iter(sorted(run_dir.rglob("last.ckpt"))), None)
    if ckpt is None:
        return {}
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    best = {k: float(v["best_model_score"]) for k, v in state.get("callbacks", {}).items()
            if isinstance(v, dict) and v.get("best_model_score") is not None}
    return {"epochs_done": int(state.get("epoch", -1)) + 1, "global_step": int(state.get("global_step", 0)),
            "precision": str(state.get("hyper_parameters", {}).get("precision", "")) or None,
            "best_monitored_scores": best}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dry-run", action="store_true", default=os.environ.get("DRY_RUN", "") not in ("", "0"),
                   help="tiny sizes on the CPU (also DRY_RUN=1); writes <work>/gpu-dry-run.json")
    p.add_argument("--work", default=os.environ.get("GPU_CHECK_WORK") or tempfile.mkdtemp(prefix="gpu_check."))
    p.add_argument("--data-root", default=os.environ.get("DATA_ROOT", str(ROOT.parent / "shared" / "data")))
    p.add_argument("--out", default=None, help="default: benchmarks/results/gpu.json (dry run: <work>/gpu-dry-run.json)")
    a = p.parse_args(argv)
    import torch

    dry = a.dry_run
    if not dry and not torch.cuda.is_available():
        print("[gpu_check] no CUDA device: run with --dry-run (or DRY_RUN=1) for the CPU rehearsal", file=sys.stderr)
        return 2
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(a.out) if a.out else (work / "gpu-dry-run.json" if dry else ROOT / "benchmarks" / "results" / "gpu.json")
    py = sys.executable
    t0 = time.perf_counter()
    steps = {}

    tests = os.environ.get("GPU_CHECK_TESTS", "tests").split()  # where to collect the `gpu` tests
    steps["tests"] = run("tests", [py, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *tests],
                         240, work)
    steps["tests"].update(_pytest_counts(steps["tests"]["log"]))

    fit_dir = work / "fit"
    if dry:
        fit = [py, "-m", "app.cli", "fit", *TINY_FIT, "--data.cache_dir", str(work / "cache"),
               "--trainer.accelerator", "cpu", "--trainer.max_epochs", "2"]
    else:
        fit = [py, "-m", "app.cli", "fit", "--config", str(ROOT / "configs" / "gowalla.yaml"),
               "--data.root", a.data_root, "--data.num_workers", "4", "--trainer.accelerator", "gpu",
               "--trainer.max_epochs", "2"]
    fit += ["--trainer.precision", "bf16-mixed", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(fit_dir)]
    steps["fit"] = run("fit", fit, 300, work, env={"PINSAGE_CACHE": str(work / "cache")} if dry else None)
    steps["fit"].update(_fit_figures(fit_dir))
    steps["fit"]["dataset"] = "synthetic-tiny" if dry else "gowalla"

    inf_json = work / "inference.json"
    inf = [py, str(ROOT / "benchmarks" / "inference.py"), "--datasets", "synthetic", "--out", str(inf_json),
           "--device", "cpu" if dry else "cuda", "--repeats", "1" if dry else "2"]
    inf += ["--synthetic-items", "2000", "--naive-items", "500"] if dry else ["--naive-items", "20000"]
    steps["inference"] = run("inference", inf, 300, work)
    if inf_json.is_file():
        row = json.loads(inf_json.read_text())["rows"][0]
        keep = ("dataset", "device", "items", "num_neighbourhood_edges", "layerwise_items_per_s",
                "layerwise_model_items_per_s", "layerwise_wall_s", "layerwise_cpu_s", "naive_items_per_s",
                "ratio", "max_abs_diff", "layerwise_seconds", "layerwise_neighbourhood_seconds")
        steps["inference"].update({k: row[k] for k in keep if k in row})

    ok = all(s["rc"] == 0 for s in steps.values())
    doc = {"dry_run": dry, "ok": ok,
           "device": "cpu (dry run)" if dry else torch.cuda.get_device_name(0),
           "torch": torch.__version__, "cuda": torch.version.cuda,
           "total_seconds": round(time.perf_counter() - t0, 1), "steps": steps,
           "command": "benchmarks/gpu_check.sh" + (" --dry-run" if dry else ""),
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, out)
    print(json.dumps({k: v for k, v in doc.items() if k != "steps"}), flush=True)
    print(f"[gpu_check] wrote {out}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
