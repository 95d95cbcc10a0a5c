"""Issue 20 item 13: a log too large for memory, the seconds to its error with and without the check.

Generates a CSV log of ``--gb`` GB (``user,item,rating,ts`` integer rows: one 64 MiB block of
random rows written again and again), then runs ``pinsage data`` on it twice inside a cgroup v1
memory group of ``--limit-gb`` (``benchmarks.scale.MemoryLimit``; needs root), at niceness 10:
once with ``PINSAGE_MEMORY_CHECK=0`` (the read as it was before the check: it runs until the
allocator or the kernel's OOM killer stops it) and once as shipped (refused before the read).
Records wall and CPU seconds (user + sys of the child), the 1-minute load before each run, exit
code, the last stderr line and the cgroup's peak, and the seconds of the check's estimate alone
(the rest of the checked run is the CLI's start: imports); deletes the log after.

    python benchmarks/big_log.py --gb 5 --limit-gb 8 --folder /tmp/big-log
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from scale import GIB, MemoryLimit  # noqa: E402


def write_log(path: Path, size: int) -> None:
    rng = np.random.default_rng(0)
    n = 2_600_000  # ~64 MiB of rows
    cols = (rng.integers(0, 10**6, n), rng.integers(0, 10**5, n), rng.integers(1, 6, n),
            1_400_000_000 + rng.integers(0, 10**8, n))
    block = "".join(f"{a},{b},{c},{d}\n" for a, b, c, d in zip(*cols)).encode()
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        f.write(b"user,item,rating,ts\n")
        while f.tell() + len(block) <= size:
            f.write(block)
    os.replace(tmp, path)


def run(folder: Path, limit: int, check: bool) -> dict:
    load = round(os.getloadavg()[0], 1)
    args = json.dumps({"path": "big.csv", "time_col": "ts", "weight_col": "rating"})
    cmd = [sys.executable, "-m", "app.cli", "data", "--data.dataset", "table", "--data.root", str(folder),
           "--data.cache_dir", str(folder / "cache"), "--data.reader_args", args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PINSAGE_MEMORY_CHECK": "1" if check else "0"}
    with MemoryLimit(limit, f"pinsage-big-log-{os.getpid()}") as cg:
        done = threading.Event()
        threading.Thread(target=cg.watch, args=(done,), daemon=True).start()
        t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, preexec_fn=cg.preexec)
        seconds, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
        done.set()
        stats = cg.stats()
    err = [ln for ln in p.stderr.splitlines() if ln.strip()]
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {"memory_check": check, "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
            "load_before": load, "returncode": p.returncode,
            "last_stderr_line": err[-1] if err else "", "stderr_lines": len(err), **stats}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gb", type=float, default=5.0, help="size of the generated log")
    ap.add_argument("--limit-gb", type=float, default=8.0, help="the cgroup memory limit of both runs")
    ap.add_argument("--folder", type=Path, default=Path("/tmp/pinsage-big-log"))
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    a = ap.parse_args()
    a.folder.mkdir(parents=True, exist_ok=True)
    log = a.folder / "big.csv"
    try:
        t0 = time.perf_counter()
        write_log(log, int(a.gb * GIB))
        from datamodules.memory import estimate_text_read

        gen = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        est = estimate_text_read(log, sep=",", header=True, names=None, encoding="utf-8")
        res = {"command": " ".join(sys.argv), "log_bytes": log.stat().st_size, "limit_gb": a.limit_gb,
               "generate_seconds": gen, "estimate_seconds": round(time.perf_counter() - t0, 3),
               "estimate_gb": round(est["need"] / GIB, 2),
               "runs": [run(a.folder, int(a.limit_gb * GIB), check) for check in (False, True)]}
    finally:
        for p in (log, log.with_name(log.name + ".part")):
            p.unlink(missing_ok=True)
        shutil.rmtree(a.folder / "cache", ignore_errors=True)  # what a killed build left
    text = json.dumps(res, indent=1)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
