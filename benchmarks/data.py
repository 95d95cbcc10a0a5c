"""Parse + build time, peak memory and load-from-cache time of `load_dataset`.

    python benchmarks/data.py [--root ../shared/data] [--out benchmarks/results/data.json]

Each measurement runs in a fresh subprocess (peak RSS = that process's max resident set, which
includes ~0.3 GB of interpreter + numpy/torch imports, reported separately as `baseline_rss_mb`).
Cases: the largest real dataset present (Gowalla, 1M interactions) and a 10M-interaction
synthetic graph; for each, a cold parse+split+graph+features build (cache off), then a build that
writes the cache, then a load from that cache.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

CASES = {
    "gowalla": dict(dataset="gowalla", features=["log_degree"]),
    "synthetic-10M": dict(dataset="synthetic", reader_args=dict(num_users=500_000, num_items=200_000,
                                                              num_interactions=10_000_000, num_communities=200,
                                                              feature_dim=16, seed=0)),
}

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import numpy, torch  # the imports every real run pays anyway
from datamodules.datasets import load_dataset
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
args = json.loads(sys.argv[1])
t = time.perf_counter()
ds = load_dataset(**args)
dt = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": dt, "peak_rss_mb": peak, "baseline_rss_mb": base, "summary": ds.summary()}))
"""


def run(args: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default="../shared/data")
    p.add_argument("--out", default="benchmarks/results/data.json")
    p.add_argument("--cases", nargs="*", default=list(CASES))
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for name in a.cases:
            args = dict(CASES[name], root=a.root, cache_dir=cache)
            if name == "gowalla" and not (Path(a.root) / "gowalla").is_dir():
                print(f"skip {name}: {Path(a.root) / 'gowalla'} is absent", file=sys.stderr)
                continue
            cold = run({**args, "use_cache": False})
            run(args)  # writes the cache
            warm = run(args)
            s = cold["summary"]
            row = {"dataset": name, "num_users": s["num_users"], "num_items": s["num_items"],
                   "num_interactions": s["num_interactions"], "parse_build_s": round(cold["seconds"], 2),
                   "peak_rss_mb": round(cold["peak_rss_mb"]), "baseline_rss_mb": round(cold["baseline_rss_mb"]),
                   "load_from_cache_s": round(warm["seconds"], 3), "cache_peak_rss_mb": round(warm["peak_rss_mb"])}
            print(json.dumps(row), flush=True)
            rows.append(row)
    from machine import cpu_model

    machine = {"cpu": cpu_model(), "cores": os.cpu_count(),
               "python": platform.python_version(), "loadavg": os.getloadavg()}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
