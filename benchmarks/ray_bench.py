"""Layer-wise inference: the local single-process path vs Ray Data on 1 and 2 local nodes.

One synthetic graph (default 1M items), one untrained PinSage (K=2, T=10, hidden 128, out 64),
the same PinSageSampler; each engine embeds every item (neighbourhoods included) and the Ray
results are checked against the local ones (max |diff|). Ray runs on a ``ray.cluster_utils.Cluster``
on this machine: 1 node with all CPUs, then 2 nodes sharing them (what a second machine would add
is the nodes' own cores and object store; here they share 2 cores, so the 2-node row measures the
overhead of the distributed layout, not a speed-up).

    pip install -e ".[ray]"
    python benchmarks/ray_bench.py                       # -> benchmarks/results/ray.json
    python benchmarks/ray_bench.py --num-items 100000 --out /tmp/ray.json   # quick

Writes ``{"rows": [{"engine": "local" | "ray", "nodes", "num_items", "items_per_s", "seconds",
"max_abs_diff"}], "settings", "machine", "command"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from app.inference import layerwise_embeddings, neighbourhoods_for_all  # noqa: E402
from machine import cpu_model  # noqa: E402
from datamodules.datasets import load_dataset  # noqa: E402
from datamodules.walks import PinSageSampler  # noqa: E402
from models.pinsage import PinSage  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num-items", type=int, default=1_000_000)
    ap.add_argument("--edges-per-item", type=int, default=5)
    ap.add_argument("--partition-size", type=int, default=65536)
    ap.add_argument("--cpus", type=int, default=os.cpu_count())
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ray.json"))
    args = ap.parse_args()
    import ray
    from ray.cluster_utils import Cluster

    from app.ray_inference import ray_layerwise_embeddings

    n = args.num_items
    ra = dict(num_users=n // 2, num_items=n, num_interactions=n * args.edges_per_item, num_communities=1000,
              feature_dim=16, method="per-user", timestamps=False, seed=0)
    ds = load_dataset("synthetic", reader_args=ra, features=["external"])
    sampler = PinSageSampler(ds.train_graph, num_walks=10, walk_length=2, restart_prob=0.5, top_t=10, seed=0)
    torch.manual_seed(0)
    model = PinSage(ds.item_features.shape[1], 128, 64, num_layers=2)
    rows = []

    t0 = time.perf_counter()
    nbr = neighbourhoods_for_all(sampler, n, chunk_size=args.partition_size)
    local = layerwise_embeddings(model, ds.item_features, nbr, chunk_size=args.partition_size).numpy()
    sec = time.perf_counter() - t0
    rows.append({"engine": "local", "nodes": 1, "num_items": n, "seconds": round(sec, 2),
                 "items_per_s": round(n / sec, 1), "max_abs_diff": 0.0})
    print(rows[-1], file=sys.stderr, flush=True)
    for nodes in (1, 2):
        per = max(1, args.cpus // nodes)
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": per, "include_dashboard": False})
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=per)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        try:
            ray_layerwise_embeddings(model, ds.item_features[:1], _Tiny(sampler), num_items=1)  # warm the workers
        except Exception:
            pass
        t0 = time.perf_counter()
        z = ray_layerwise_embeddings(model, ds.item_features, sampler, partition_size=args.partition_size)
        sec = time.perf_counter() - t0
        ray.shutdown()
        cluster.shutdown()
        rows.append({"engine": "ray", "nodes": nodes, "cpus_per_node": per, "num_items": n, "seconds": round(sec, 2),
                     "items_per_s": round(n / sec, 1), "max_abs_diff": float(np.abs(z - local).max())})
        print(rows[-1], file=sys.stderr, flush=True)
    doc = {"rows": rows,
           "settings": {"num_layers": 2, "top_t": 10, "num_walks": 10, "hidden": 128, "out": 64,
                        "partition_size": args.partition_size, "num_edges": int(ds.train_graph.num_edges)},
           "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                       "note": "2-core VM shared with other jobs; the Ray nodes share its cores"},
           "command": "python benchmarks/ray_bench.py " + " ".join(sys.argv[1:])}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1))
    print(json.dumps(doc, indent=1))


class _Tiny:
    """A one-item sampler for the warm-up run (starts the workers and imports torch there)."""

    def __init__(self, sampler):
        self.top_t = sampler.top_t

    def sample(self, seeds, epoch=0):
        return np.array([0, 0], dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)


if __name__ == "__main__":
    main()
