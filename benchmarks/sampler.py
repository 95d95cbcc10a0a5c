"""Benchmark: PinSage random-walk neighbourhoods, ours (numba) vs DGL's ``PinSAGESampler``.

    python benchmarks/sampler.py [--dgl-python /tmp/dglvenv/bin/python] [--out benchmarks/results/sampler.json]

Throughput = seeds (neighbourhoods) per second, one call on a batch of seeds (all items, or a fixed
random batch of ``--num-seeds`` items on large catalogues), after a warm-up call; best and median
of several repeats. Both samplers get the same CSR graph (written to a temp ``.npz``), the same
seeds and the same parameters (``num_traversals=walk_length``, ``termination_prob=restart``,
``num_random_walks=num_walks``, ``num_neighbors=T``), and the same number of threads (all cores
unless ``--threads``). DGL is never a project dependency: it runs in a subprocess of its own
Python (``--dgl-python``, a throwaway venv with ``dgl``); without one the ``dgl_*`` fields are
null and the reason is printed and recorded.

Datasets: MovieLens-100K and Gowalla (train split) through ``datamodules.datasets.load_dataset``
(root ``--data-root``), and a synthetic power-law graph of ``--synthetic-edges`` interactions from
``datamodules.synthetic.make_synthetic``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_model

ROOT = Path(__file__).resolve().parents[1]

SETTINGS = [dict(num_walks=nw, walk_length=wl, restart=0.5, T=t)
            for nw, wl, t in itertools.product((10, 100), (2, 3), (10, 50))]

# ----------------------------------------------------------------------------------------------
# the DGL side: this file runs itself under the DGL venv's python with --dgl-worker
# ----------------------------------------------------------------------------------------------


def dgl_worker(npz: str, threads: int) -> None:
    """Serve timed DGL PinSAGESampler calls over stdin/stdout (one JSON request per line), so the
    parent can interleave DGL and our calls: on a shared machine both then see the same load."""
    os.environ.setdefault("DGL_SKIP_GRAPHBOLT", "1")
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    import dgl

    z = np.load(npz)
    item_ptr, item_users, user_ptr, user_items = z["item_ptr"], z["item_users"], z["user_ptr"], z["user_items"]
    num_items, num_users = len(item_ptr) - 1, len(user_ptr) - 1
    seeds = torch.from_numpy(z["seeds"].astype(np.int64))
    e_item = np.repeat(np.arange(num_items), np.diff(item_ptr))
    e_user = np.repeat(np.arange(num_users), np.diff(user_ptr))
    G = dgl.heterograph(
        {("item", "iu", "user"): (torch.from_numpy(e_item), torch.from_numpy(item_users.astype(np.int64))),
         ("user", "ui", "item"): (torch.from_numpy(e_user), torch.from_numpy(user_items.astype(np.int64)))},
        num_nodes_dict={"item": num_items, "user": num_users})
    print("READY " + json.dumps({"dgl_version": dgl.__version__, "torch_version": torch.__version__}), flush=True)
    sampler, current = None, None
    for line in sys.stdin:
        s = json.loads(line)
        if s != current:
            sampler = dgl.sampling.PinSAGESampler(G, "item", "user", s["walk_length"], s["restart"],
                                                  s["num_walks"], s["T"])
            current = s
        t0 = time.perf_counter()
        sampler(seeds)
        print(json.dumps(time.perf_counter() - t0), flush=True)


class _DGL:
    """Parent side of :func:`dgl_worker`."""

    def __init__(self, python: str, npz: str, threads: int, timeout: float):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), DGL_SKIP_GRAPHBOLT="1")
        self.p = subprocess.Popen([python, str(Path(__file__).resolve()), "--dgl-worker", npz, str(threads)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=env)
        self.info = None
        line = self._readline(timeout)
        if not line.startswith("READY "):
            raise RuntimeError(self._failure(line))
        self.info = json.loads(line[len("READY "):])

    def _readline(self, timeout: float) -> str:
        import select

        r, _, _ = select.select([self.p.stdout], [], [], timeout)
        if not r:
            self.close()
            raise RuntimeError(f"DGL worker gave no answer within {timeout:.0f} s")
        return self.p.stdout.readline()

    def _failure(self, line: str) -> str:
        self.close()
        err = (self.p.stderr.read() or line or "").strip().splitlines()
        return f"DGL worker failed (rc={self.p.returncode}): {' | '.join(err[-3:])}"

    def call(self, setting: dict, timeout: float) -> float:
        self.p.stdin.write(json.dumps(setting) + "\n")
        self.p.stdin.flush()
        line = self._readline(timeout)
        try:
            return float(json.loads(line))
        except ValueError:
            raise RuntimeError(self._failure(line)) from None

    def close(self) -> None:
        if self.p.poll() is None:
            try:
                self.p.stdin.close()
            except OSError:
                pass
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


# ----------------------------------------------------------------------------------------------
# our side
# ----------------------------------------------------------------------------------------------


def _load_graphs(args):
    from datamodules.graph import InteractionGraph

    graphs = []
    for name in args.datasets:
        t0 = time.perf_counter()
        if name == "synthetic":
            from datamodules.synthetic import make_synthetic

            n = args.synthetic_edges
            inter, _, _ = make_synthetic(num_users=n // 20, num_items=n // 50, num_interactions=n,
                                         num_communities=100, feature_dim=1, seed=0)
            g = InteractionGraph.from_edges(inter.users, inter.items, inter.num_users, inter.num_items)
            label = f"synthetic-{n // 1_000_000}M" if n >= 1_000_000 else f"synthetic-{n}"
        else:
            from datamodules.datasets import load_dataset

            g = load_dataset(dataset=name, root=args.data_root).train_graph
            label = name
        print(f"[data] {label}: {g.num_users} users, {g.num_items} items, {g.num_edges} edges "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
        graphs.append((label, g))
    return graphs


def _machine(threads: int):
    import numba
    import numpy as np

    cpu = cpu_model()
    info = {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "python": platform.python_version(),
            "numpy": np.__version__, "numba": numba.__version__, "numba_threading_layer": None}
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = None
    return info


def _key(s):
    return (s["num_walks"], s["walk_length"], s["restart"], s["T"])


def _measure(label, g, seeds, args, dgl_python):
    """Rows for one graph: per setting a warm-up of each, then interleaved timed calls
    (ours, DGL, ours, DGL, ...) until ``min_reps`` and ``min_time`` are reached (<= ``max_reps``)."""
    import numpy as np

    from datamodules.walks import pinsage_neighbors

    arrays = (g.item_ptr, g.item_users, g.user_ptr, g.user_items)
    dgl, reason = None, None
    if dgl_python:
        npz = os.path.join(args.tmp, f"{label}.npz")
        np.savez(npz, item_ptr=g.item_ptr, item_users=g.item_users, user_ptr=g.user_ptr,
                 user_items=g.user_items, seeds=seeds)
        try:
            dgl = _DGL(dgl_python, npz, args.threads, args.dgl_timeout)
        except (RuntimeError, OSError) as e:
            reason = str(e)
            print(f"[dgl] {label}: not measured: {reason}", flush=True)
    rows = []
    try:
        for s in SETTINGS:
            def ours_call():
                t0 = time.perf_counter()
                pinsage_neighbors(*arrays, seeds, s["num_walks"], s["walk_length"], s["restart"], s["T"], seed=0)
                return time.perf_counter() - t0

            ours_call()
            if dgl is not None:
                try:
                    dgl.call(s, args.dgl_timeout)
                except RuntimeError as e:
                    reason = str(e)
                    print(f"[dgl] {label}: stopped: {reason}", flush=True)
                    dgl = None
            t_ours, t_dgl = [], []
            t_start = time.perf_counter()
            while len(t_ours) < args.max_reps and (
                    len(t_ours) < args.min_reps or time.perf_counter() - t_start < args.min_time):
                t_ours.append(ours_call())
                if dgl is not None:
                    try:
                        t_dgl.append(dgl.call(s, args.dgl_timeout))
                    except RuntimeError as e:
                        reason = str(e)
                        print(f"[dgl] {label}: stopped: {reason}", flush=True)
                        dgl, t_dgl = None, []
            n = len(seeds)
            row = {"dataset": label, "num_items": int(g.num_items), "num_edges": int(g.num_edges), "num_seeds": n,
                   "num_walks": s["num_walks"], "walk_length": s["walk_length"], "restart": s["restart"], "T": s["T"],
                   "ours_per_s": n / min(t_ours), "ours_per_s_median": n / float(np.median(t_ours)),
                   "dgl_per_s": None, "dgl_per_s_median": None, "speedup": None, "speedup_median": None,
                   "reps": len(t_ours)}
            if t_dgl and dgl is not None:
                row.update(dgl_per_s=n / min(t_dgl), dgl_per_s_median=n / float(np.median(t_dgl)),
                           speedup=min(t_dgl) / min(t_ours), speedup_median=float(np.median(t_dgl) / np.median(t_ours)))
            rows.append(row)
            sp = f"{row['speedup']:5.1f}x" if row["speedup"] else "    -"
            dg = f"{row['dgl_per_s']:>11,.0f}" if row["dgl_per_s"] else f"{'-':>11}"
            print(f"{label:>16} nw={s['num_walks']:>3} wl={s['walk_length']} T={s['T']:>2}  "
                  f"ours {row['ours_per_s']:>11,.0f}/s  dgl {dg}/s  speedup {sp}", flush=True)
    finally:
        info = dgl.info if dgl is not None else None
        if dgl is not None:
            dgl.close()
    return rows, info, reason


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dgl-python", default=None, help="python of a venv with dgl installed (optional)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sampler.json"))
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--datasets", nargs="+", default=["movielens-100k", "gowalla", "synthetic"])
    ap.add_argument("--synthetic-edges", type=int, default=10_000_000)
    ap.add_argument("--num-seeds", type=int, default=20000, help="seeds per call (all items if fewer)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both samplers")
    ap.add_argument("--min-reps", type=int, default=3)
    ap.add_argument("--max-reps", type=int, default=10)
    ap.add_argument("--min-time", type=float, default=2.0, help="repeat until this many seconds (<= max-reps)")
    ap.add_argument("--dgl-timeout", type=float, default=300, help="seconds one DGL call may take")
    ap.add_argument("--omp-wait-policy", default="PASSIVE",
                    help="OMP_WAIT_POLICY for both samplers (both use GNU OpenMP thread pools; PASSIVE keeps idle "
                         "threads from spinning, which matters on a loaded machine); '' leaves it unset")
    ap.add_argument("--dgl-worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.dgl_worker:
        dgl_worker(args.dgl_worker[0], int(args.dgl_worker[1]))
        return 0

    if args.omp_wait_policy:  # before numba/torch load libgomp; inherited by the DGL worker
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy
    import numpy as np

    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
    import numba

    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    machine = _machine(args.threads)
    machine["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")
    try:
        machine["load_average_at_start"] = list(os.getloadavg())
    except OSError:
        pass
    dgl_python = args.dgl_python
    reasons = []
    if not dgl_python:
        reasons.append("no --dgl-python given")
    elif not Path(dgl_python).exists():
        reasons.append(f"--dgl-python {dgl_python} does not exist")
        dgl_python = None
    for r in reasons:
        print(f"[dgl] not measured: {r}", flush=True)
    t_all = time.perf_counter()
    graphs = _load_graphs(args)
    rows, dgl_info = [], None
    with tempfile.TemporaryDirectory() as tmp:
        args.tmp = tmp
        for label, g in graphs:
            rng = np.random.default_rng(0)
            if g.num_items <= args.num_seeds:
                seeds = np.arange(g.num_items, dtype=np.int64)
            else:
                seeds = np.sort(rng.choice(g.num_items, args.num_seeds, replace=False)).astype(np.int64)
            r, info, reason = _measure(label, g, seeds, args, dgl_python)
            rows += r
            dgl_info = dgl_info or info
            if reason:
                reasons.append(f"{label}: {reason}")
    machine["numba_threading_layer"] = numba.threading_layer()
    machine["dgl"] = dgl_info["dgl_version"] if dgl_info else None
    machine["dgl_torch"] = dgl_info["torch_version"] if dgl_info else None
    try:
        machine["load_average_at_end"] = list(os.getloadavg())
    except OSError:
        pass
    speedups = [r["speedup"] for r in rows if r["speedup"]]
    result = {"machine": machine,
              "method": {"throughput": "seeds (neighbourhoods) per second of one call on num_seeds seeds, after a "
                                       "warm-up call; ours and DGL calls interleaved; *_per_s = best repeat, "
                                       "*_median = median repeat",
                         "speedup": "DGL best time / ours best time (speedup_median: ratio of medians)",
                         "command": "python benchmarks/sampler.py " + " ".join(sys.argv[1:] if argv is None else argv),
                         "total_seconds": round(time.perf_counter() - t_all, 1),
                         "dgl_not_measured": reasons or None},
              "summary": {"min_speedup": min(speedups) if speedups else None,
                          "max_speedup": max(speedups) if speedups else None},
              "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out} ({result['method']['total_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
