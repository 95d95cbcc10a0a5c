"""Minibatches per second of the full PinSage training DataLoader with 0, 1 and 2 workers.

Each minibatch is built end to end as in training: importance neighbourhoods of the K-hop
computation graph (walks), easy negatives, PPR-ranked hard negatives (the curriculum is on:
the loader runs Lightning epoch 1 = the paper's epoch 2, one hard negative per query),
re-indexing, feature slicing. Settings (the issue's): batch_size 512, T 10, K 2, 10 walks of
length 2, restart 0.5, 500 easy negatives, default hard-negative window [0.01, 0.05].

Usage (from the project root)::

    python benchmarks/datamodule.py [--root ../shared/data] [--datasets movielens-100k synthetic]
        [--workers 0 1 2] [--batches 40] [--out benchmarks/results/datamodule.json]

``batches_per_s`` counts ``--batches`` minibatches after the first one (so worker start-up is
excluded; it is reported separately as ``first_batch_s``); every run starts with an empty
hard-negative ranking cache, so the figures are those of the start of an epoch (the cache hit
rate, and the speed, grow as the epoch goes on). The machine description includes the
load average, since a shared machine skews the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_model

ROOT = Path(__file__).resolve().parents[1]

SYNTHETIC = dict(num_users=50_000, num_items=20_000, num_interactions=1_000_000, num_communities=50,
                 feature_dim=64, seed=0)


def machine() -> dict:
    import numba
    import numpy
    import torch

    cpu = cpu_model()
    return {"cpu": cpu, "cores": os.cpu_count(), "numba_threads": numba.get_num_threads(),
            "python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
            "numpy": numpy.__version__, "numba": numba.__version__, "load_average_at_start": list(os.getloadavg())}


def bench(dm, workers: int, batches: int) -> dict:
    if dm._miner is not None:
        dm._miner.clear_cache()  # forked workers would inherit rankings a previous run computed
    loader = dm.make_train_dataloader(num_workers=workers)
    loader.sampler.set_epoch(1)  # Lightning epoch 1 = paper epoch 2: hard negatives on
    t0 = time.perf_counter()
    it = iter(loader)
    first = next(it)
    t1 = time.perf_counter()
    n = 0
    nodes = edges = 0
    for b in it:
        n += 1
        nodes += b.node_ids.numel()
        edges += sum(blk.edge_index.shape[1] for blk in b.blocks)
        if n == batches:
            break
    t2 = time.perf_counter()
    del it, loader
    return {"workers": workers, "batches": n, "first_batch_s": round(t1 - t0, 3),
            "batches_per_s": round(n / (t2 - t1), 3), "pairs_per_s": round(n * dm.batch_size / (t2 - t1), 1),
            "mean_nodes": round(nodes / max(n, 1), 1), "mean_edges": round(edges / max(n, 1), 1),
            "hard_negatives_per_query": int(first.hard_neg.shape[1]), "targets": int(first.num_targets)}


def main(argv=None) -> int:
    from datamodules.datamodule import PinSageDataModule

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "pinsage-bench-cache"))
    ap.add_argument("--datasets", nargs="+", default=["movielens-100k", "synthetic"])
    ap.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "datamodule.json"))
    args = ap.parse_args(argv)

    info = machine()
    settings = dict(batch_size=512, num_neighbors=10, num_layers=2, num_walks=10, walk_length=2, restart_prob=0.5,
                    num_easy_negatives=500, hard_negatives=True, max_hard_negatives=6, hard_cache_mb=64.0,
                    sampler="pinsage", prefetch_factor=2, persistent_workers=False, pin_memory=False, seed=0)
    rows = []
    for name in args.datasets:
        reader_args = SYNTHETIC if name == "synthetic" else None
        dm = PinSageDataModule(dataset=name, root=args.root, cache_dir=args.cache_dir, reader_args=reader_args,
                               **settings)
        dm.prepare_data()
        dm.setup("fit")
        # warm the numba cache / JIT in this process before timing
        dm.train_dataset().make_batch(list(range(8)), 1, 0, 0)
        for w in args.workers:
            r = bench(dm, w, args.batches)
            r.update(dataset=name, num_items=dm.num_items, num_train_pairs=int(dm.dataset.train_pairs.shape[0]),
                     hard_negative_ranks=list(dm.hard_negative_ranks), hard_num_walks=dm._miner.num_walks)
            rows.append(r)
            print(json.dumps(r), flush=True)
    info["load_average_at_end"] = list(os.getloadavg())
    out = {"benchmark": "datamodule train loader minibatches/s", "settings": settings,
           "synthetic": SYNTHETIC, "command": "python benchmarks/datamodule.py " + " ".join(argv or sys.argv[1:]),
           "machine": info, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
