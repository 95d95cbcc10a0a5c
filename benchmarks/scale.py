"""The 100M-edge run: generate / data / fit (bounded steps) / predict, each stage's seconds and peak
RSS, and one stage again under a cgroup memory limit smaller than the cached arrays.

Every stage is a fresh child process (at niceness ``--nice``, 10 by default) running the real command
(``pinsage data|fit|predict --config configs/synthetic-100m.yaml ...``); its peak RSS is the
child's ``ru_maxrss`` from ``wait4`` (resident pages, the touched pages of memory-mapped files
included). The limited stage runs inside a cgroup v1 memory group
(``/sys/fs/cgroup/memory/<name>``, ``memory.limit_in_bytes``; needs root) whose limit is below the
total size of the dataset cache's ``.npy`` files: finishing shows the arrays are memory-mapped
(pages are read on demand and dropped under pressure), not loaded.

    python benchmarks/scale.py                                  # 100M edges, the acceptance run
    python benchmarks/scale.py --num-edges 10000000 --out /tmp/s.json   # a 10x smaller rehearsal

Sizes scale from ``configs/data/synthetic-100m.yaml``: users = edges / 10, items = edges / 20.
Writes ``benchmarks/results/scale.json``: ``{"rows": [{stage, num_edges, num_items, seconds,
peak_rss_gb, memory_limit_gb}], "cache_gb", "machine", "command"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

from machine import cpu_model  # noqa: E402

CONFIG = ROOT / "configs" / "synthetic-100m.yaml"
DATA_CONFIG = ROOT / "configs" / "data" / "synthetic-100m.yaml"
GIB = 1024 ** 3


def reader_args(num_edges: int) -> dict:
    ra = dict(yaml.safe_load(DATA_CONFIG.read_text())["reader_args"])
    base = ra["num_interactions"]
    ra["num_interactions"] = int(num_edges)
    ra["num_users"] = int(ra["num_users"] * num_edges // base)
    ra["num_items"] = int(ra["num_items"] * num_edges // base)
    ra["num_communities"] = max(2, min(ra["num_communities"], ra["num_items"] // 100))
    return ra


NICE = 10  # niceness of every stage (--nice); raised to it, never lowered


def _nice():
    os.nice(max(0, NICE - os.nice(0)))


class MemoryLimit:
    """A cgroup v1 memory group; ``preexec`` moves the child into it before it runs."""

    def __init__(self, limit_bytes: int, name: str):
        self.path = Path("/sys/fs/cgroup/memory") / name
        self.limit = int(limit_bytes)
        self.peak = {}

    def __enter__(self):
        self.path.mkdir()
        (self.path / "memory.limit_in_bytes").write_text(str(self.limit))
        return self

    def preexec(self):
        _nice()
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def stats(self) -> dict:
        read = lambda f: int((self.path / f).read_text())  # noqa: E731
        return {"cgroup_max_usage_gb": round(read("memory.max_usage_in_bytes") / GIB, 3),
                "cgroup_failcnt": read("memory.failcnt"),
                "cgroup_max_anon_gb": round(self.peak.get("total_rss", 0) / GIB, 3),
                "cgroup_max_page_cache_gb": round(self.peak.get("total_cache", 0) / GIB, 3)}

    def watch(self, done: "threading.Event") -> None:
        """Sample ``memory.stat`` every second: the peaks of anonymous memory and page cache."""
        self.peak = {}
        while not done.wait(1.0):
            try:
                for line in (self.path / "memory.stat").read_text().splitlines():
                    k, v = line.split()
                    if k in ("total_rss", "total_cache"):
                        self.peak[k] = max(self.peak.get(k, 0), int(v))
            except OSError:
                pass

    def __exit__(self, *exc):
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.2)


def _evict(path: Path) -> int:
    """Drop ``path``'s clean pages from the page cache (``POSIX_FADV_DONTNEED``; nothing else's)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return 1


def run_stage(name: str, argv, log: Path, limit: MemoryLimit = None, src: Path = ROOT) -> dict:
    """Run one stage with the code of ``src`` (default: this tree); ``{"seconds", "peak_rss_gb",
    "stdout"}`` (raises when it fails)."""
    print(f"[scale] {name}: {' '.join(argv)}", file=sys.stderr, flush=True)
    env = dict(os.environ, PYTHONPATH=str(src), WANDB_MODE="disabled", PYTHONUNBUFFERED="1")
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    with open(log, "w") as err, open(str(log) + ".out", "w") as out:
        p = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=src,
                             preexec_fn=limit.preexec if limit else _nice)
        done = threading.Event()
        if limit is not None:
            threading.Thread(target=limit.watch, args=(done,), daemon=True).start()
        _, status, ru = os.wait4(p.pid, 0)
        done.set()
    seconds = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    p.returncode = code
    if code != 0:
        raise RuntimeError(f"stage {name} failed with exit code {code}; see {log}:\n"
                           + "\n".join(Path(log).read_text().splitlines()[-15:]))
    row = {"seconds": round(seconds, 1), "cpu_seconds": round(ru.ru_utime + ru.ru_stime, 1),
           "peak_rss_gb": round(ru.ru_maxrss * 1024 / GIB, 3), "stdout": Path(str(log) + ".out").read_text(),
           "load_avg_1min": [round(load0, 1), round(os.getloadavg()[0], 1)]}  # at the stage's start, end
    if limit is not None:
        row.update(limit.stats())
    print(f"[scale] {name}: {row['seconds']} s, peak RSS {row['peak_rss_gb']} GB", file=sys.stderr, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num-edges", type=int, default=100_000_000)
    ap.add_argument("--work", default="/tmp/pinsage-scale", help="run folder (checkpoints, artifacts, logs)")
    ap.add_argument("--cache-dir", default=None, help="dataset cache (default <work>/cache; emptied first)")
    ap.add_argument("--max-steps", type=int, default=200)
    ap.add_argument("--limit-stage", default="fit", choices=["fit", "predict"],
                    help="the stage run again under the memory limit")
    ap.add_argument("--memory-limit-gb", type=float, default=None,
                    help="cgroup limit of the limited stage (default: half the cache's arrays)")
    ap.add_argument("--stages", default="generate,data,fit,predict,limited")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale.json"))
    ap.add_argument("--baseline-src", default=None,
                    help="a source tree of older code (e.g. `git archive <commit>` unpacked): its predict "
                         "runs first, on the same data and checkpoint, as a 'predict (baseline: ...)' row")
    ap.add_argument("--baseline-label", default=None, help="the baseline row's label (default: its path)")
    ap.add_argument("--nice", type=int, default=10, help="niceness of every stage (a shared machine)")
    args = ap.parse_args()
    global NICE
    NICE = args.nice

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache_dir) if args.cache_dir else work / "cache"
    ra = reader_args(args.num_edges)
    stages = args.stages.split(",")
    py, pinsage = sys.executable, [sys.executable, "-m", "app.cli"]
    common = ["--data.reader_args", json.dumps(ra), "--data.cache_dir", str(cache)]
    fit = pinsage + ["fit", "--config", str(CONFIG), *common, "--trainer.max_steps", str(args.max_steps),
                     "--trainer.default_root_dir", str(work / "run")]
    ckpt = work / "run" / "checkpoints" / "last.ckpt"
    predict = pinsage + ["predict", "--config", str(CONFIG), *common, "--ckpt_path", str(ckpt),
                         "--artifacts.output_dir", str(work / "artifacts"), "--artifacts.evaluate", "false",
                         # the serving table (every item's top-50, `pinsage serve`'s similar-items
                         # answers) is a search of every item: a stage of its own, not measured here
                         "--artifacts.similar_items", "0"]
    rows, summary = [], {}
    out_path = Path(args.out)
    old_doc = json.loads(out_path.read_text()) if out_path.is_file() else {}
    rows = old_doc.get("rows", [])  # rows of other sizes / stages from earlier runs stay

    def add(stage, res, limit_gb=None, **extra):
        rows[:] = [r for r in rows if not (r["stage"] == stage and r.get("reader_args", {}).get("num_interactions")
                                           == ra["num_interactions"])]
        rows.append({"stage": stage, "num_edges": summary.get("num_interactions", args.num_edges),
                     "num_items": ra["num_items"], "seconds": res["seconds"], "cpu_seconds": res["cpu_seconds"],
                     "peak_rss_gb": res["peak_rss_gb"],
                     "memory_limit_gb": limit_gb, "reader_args": ra, "load_avg_1min": res["load_avg_1min"], **extra,
                     **{k: v for k, v in res.items() if k.startswith("cgroup")}})
        write()

    def write():
        caches = [c for c in cache.glob("synthetic-*") if (c / "manifest.json").is_file()]
        nbytes = sum(f.stat().st_size for c in caches for f in c.glob("*.npy")) if caches else 0
        caches_gb = dict(old_doc.get("cache_gb", {}) if isinstance(old_doc.get("cache_gb"), dict) else {})
        if nbytes:
            caches_gb[str(ra["num_interactions"])] = round(nbytes / GIB, 3)
        doc = {
            "rows": rows,
            "cache_gb": caches_gb,  # total size of the cache's .npy arrays, by requested num_interactions
            "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                        "note": "2-core VM with 24 GiB shared by other jobs (each row's load_avg_1min: the "
                                "1-minute load average at its start and end): wall seconds are inflated, "
                                "cpu_seconds are the stage's own; "
                                f"every stage under nice -n {NICE}; load average at the end "
                                f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}"},
            "command": "python benchmarks/scale.py " + " ".join(sys.argv[1:]),
        }
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, out_path)

    if "generate" in stages:
        code = "from datamodules.synthetic import make_synthetic; make_synthetic(**%r)" % (ra,)
        add("generate", run_stage("generate", [py, "-c", code], work / "generate.log"))
    if not summary and (work / "data.log.out").is_file():
        summary = json.loads((work / "data.log.out").read_text().strip().splitlines()[-1])
    if "data" in stages:
        for old in cache.glob("synthetic-*"):  # a cold build (only our own cache folders)
            if (old / "manifest.json").is_file():
                shutil.rmtree(old)
        res = run_stage("data", pinsage + ["data", "--config", str(DATA_CONFIG), *common], work / "data.log")
        summary.update(json.loads(res["stdout"].strip().splitlines()[-1]))
        add("data", res, num_train_pairs=summary["num_train_pairs"])
    if "fit" in stages:
        add(f"fit ({args.max_steps} steps)", run_stage("fit", fit, work / "fit.log"))
    if "predict" in stages:
        if args.baseline_src:  # the same stage with older code first: before / after in one run
            base = Path(args.baseline_src).resolve()
            shutil.rmtree(work / "artifacts", ignore_errors=True)
            add(f"predict (baseline: {args.baseline_label or base})",
                run_stage("predict-baseline", predict, work / "predict-baseline.log", src=base))
            shutil.rmtree(work / "artifacts", ignore_errors=True)
        add("predict", run_stage("predict", predict, work / "predict.log"))
    if "limited" in stages:
        caches = [c for c in cache.glob("synthetic-*") if (c / "manifest.json").is_file()]
        cache_bytes = sum(f.stat().st_size for c in caches for f in c.glob("*.npy"))
        limit_gb = args.memory_limit_gb or round(cache_bytes / GIB / 2, 2)
        # a page of the cache already in the page cache stays charged to the cgroup that read it
        # first (the data stage's): evict the cache's files, so every page the limited stage maps
        # is read again and counts against its limit
        evicted = sum(_evict(f) for c in caches for f in c.glob("*.npy"))
        argv = fit if args.limit_stage == "fit" else predict
        name = f"{args.limit_stage} ({args.max_steps} steps)" if args.limit_stage == "fit" else "predict"
        with MemoryLimit(int(limit_gb * GIB), f"pinsage-scale-{os.getpid()}") as lim:
            res = run_stage(f"{name} under {limit_gb} GB", argv, work / "limited.log", limit=lim)
        add(f"{name}, memory-limited", res, limit_gb=limit_gb, cache_gb=round(cache_bytes / GIB, 3),
            page_cache_evicted_files=evicted)
    write()
    print(out_path.read_text())


if __name__ == "__main__":
    main()
