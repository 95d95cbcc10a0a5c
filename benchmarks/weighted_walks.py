"""Benchmark: weighted vs uniform random-walk neighbourhoods, and per-epoch pair sampling.

    python benchmarks/weighted_walks.py [--data-root ../shared/data] [--out benchmarks/results/weighted_walks.json]

For each dataset, the PinSage neighbourhoods of a fixed batch of seeds (all items up to
``--num-seeds``) are computed with the uniform kernel (the fast path, ``walk_weights=None``) and
with the weighted kernel (per-segment alias tables), interleaved call by call so both
see the same machine load; the anchor is the uniform kernel, the figure the ratio of medians.
MovieLens-100K walks its ratings (1-5); Gowalla has no weights, so it gets seeded random integer
weights 1-5 (stated in the output). Serial driver (``parallel=False``: what DataLoader workers run).
Pair sampling: pairs per second of ``SampledPairs.take`` on batches of 4096 indices
(``cooccurrence``, ``walk`` uniform / weighted), the same interleaving, against the cost of the
uniform neighbourhoods of the same 4096 query items (the anchor a batch pays anyway).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
from machine import cpu_model  # noqa: E402

from datamodules.datasets import load_dataset  # noqa: E402
from datamodules.graph import InteractionGraph  # noqa: E402
from datamodules.pairs import SampledPairs  # noqa: E402
from datamodules.walks import pinsage_neighbors, walk_weights  # noqa: E402


def interleaved(fns: dict, repeats: int) -> dict:
    times = {k: [] for k in fns}
    for f in fns.values():
        f()  # warm-up / compile
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--datasets", nargs="+", default=["movielens-100k", "gowalla"])
    ap.add_argument("--num-seeds", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "weighted_walks.json"))
    args = ap.parse_args(argv)
    rows = []
    for name in args.datasets:
        ds = load_dataset(name, root=args.data_root, features=["log_degree"])
        g = ds.train_graph
        weights_note = "ratings"
        if g.weights is None or walk_weights(g) is None:
            w = np.random.default_rng(0).integers(1, 6, g.num_edges).astype(np.float32)
            g = InteractionGraph.from_edges(g.edge_users(), g.user_items.astype(np.int64), g.num_users, g.num_items,
                                            weights=w)
            weights_note = "seeded random integers 1-5 (the dataset has none)"
        ww = walk_weights(g)
        arrays = (g.item_ptr, g.item_users, g.user_ptr, g.user_items)
        rng = np.random.default_rng(1)
        seeds = np.sort(rng.choice(g.num_items, min(args.num_seeds, g.num_items), replace=False))
        for nw, wl, t in ((10, 2, 10), (50, 2, 20), (100, 3, 50)):
            kw = dict(num_walks=nw, walk_length=wl, restart_prob=0.5, top_t=t, seed=0, epoch=1, parallel=False)
            med = interleaved({
                "uniform": lambda: pinsage_neighbors(*arrays, seeds, **kw),
                "weighted": lambda: pinsage_neighbors(*arrays, seeds, walk_weights=ww, **kw),
            }, args.repeats)
            rows.append(dict(dataset=name, kind="neighbourhoods", num_walks=nw, walk_length=wl, T=t,
                             seeds=int(seeds.size), weights=weights_note,
                             uniform_seeds_per_s=seeds.size / med["uniform"],
                             weighted_seeds_per_s=seeds.size / med["weighted"],
                             weighted_over_uniform_time=med["weighted"] / med["uniform"]))
            print(json.dumps(rows[-1]), flush=True)
        co = SampledPairs(g, "cooccurrence", seed=0)
        wu = SampledPairs(g, "walk", walk_length=2, restart_prob=0.5, seed=0)
        wwk = SampledPairs(g, "walk", walk_length=2, restart_prob=0.5, seed=0, weighted=True)
        idx = np.sort(rng.choice(co.num_pairs, 4096, replace=False))
        q = co.take(idx, 0)[:, 0]
        med = interleaved({
            "neighbourhoods of the 4096 queries (anchor)": lambda: pinsage_neighbors(
                *arrays, q, num_walks=50, walk_length=2, restart_prob=0.5, top_t=20, parallel=False),
            "cooccurrence": lambda: co.take(idx, 1),
            "walk": lambda: wu.take(idx, 1),
            "walk weighted": lambda: wwk.take(idx, 1),
        }, args.repeats * 3)
        anchor = med["neighbourhoods of the 4096 queries (anchor)"]
        for k in ("cooccurrence", "walk", "walk weighted"):
            rows.append(dict(dataset=name, kind=f"pairs {k}", batch=4096, pairs_per_s=4096 / med[k],
                             time_over_anchor=med[k] / anchor,
                             anchor="uniform neighbourhoods (50 walks, length 2, T 20) of the batch's queries"))
            print(json.dumps(rows[-1]), flush=True)
    out = dict(
        machine=dict(cpu=cpu_model(), python=platform.python_version(), cores=os.cpu_count(),
                     load_average_at_end=list(os.getloadavg()),
                     note="2-core VM shared with other jobs during the run; ratios come from interleaved calls"),
        method=__doc__.strip().splitlines()[0] + "; medians of interleaved repeats, serial driver",
        command="python benchmarks/weighted_walks.py " + " ".join(argv or sys.argv[1:]),
        rows=rows,
    )
    tmp = args.out + ".tmp"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w") as f:
        json.dump(out, f, indent=1)
    os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
