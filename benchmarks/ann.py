"""ANN benchmark: recall@10 and queries/second of HNSW and IVF-PQ against exact inner-product search.

    PYTHONPATH=. python benchmarks/ann.py                      # 1M x 128, 2 threads, ~8 min on 2 cores
    PYTHONPATH=. python benchmarks/ann.py --n 100000 --out /tmp/ann.json   # quick look

Data: ``--n`` L2-normalised float32 vectors of dimension ``--d`` drawn from a mixture of
``--clusters`` Gaussian clusters with Zipf-distributed sizes (a few big "topics", a long tail of
small ones). Each cluster has a random unit centre plus a random ``--local-dim``-dimensional local
subspace (the within-cluster variation) and a small isotropic noise. Learned item embeddings look
like that: co-engaged items gather around topics and vary along few directions. Uniform random
vectors in 128-d are the pathological worst case of ANN search (every point is almost equidistant
from every other, so a "top-10" barely exists) and say little about serving real embeddings.
Queries are fresh draws from the same mixture (not database rows).

For each index kind the default parameters of ``app.retrieval`` are measured (``"default": true``)
plus a small sweep of the search-time knob (efSearch / nprobe) on the same built index, so the
recall-vs-speed curve is visible. QPS: one batched ``search`` call over all queries with
``--threads`` FAISS/OpenMP threads, best of ``--repeats``; the exact baseline is ``IndexFlatIP``
under the same conditions (BLAS matrix products). Output: ``benchmarks/results/ann.json``,
``{"machine": {...}, "config": {...}, "rows": [{index, recall_at_10, qps, exact_qps,
speedup, build_s, params, default}, ...]}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import faiss
import numpy as np

from app.retrieval import DEFAULT_PARAMS, build_index, recall_at_k, set_search_params

from machine import cpu_model


def clustered_embeddings(n: int, d: int, clusters: int, local_dim: int, seed: int, centres=None):
    """``n`` unit vectors from a Zipf-sized Gaussian mixture; returns (x, model) where model re-draws."""
    rng = np.random.default_rng(seed)
    if centres is None:
        c = rng.standard_normal((clusters, d)).astype(np.float32)
        c /= np.linalg.norm(c, axis=1, keepdims=True)
        bases = rng.standard_normal((clusters, d, local_dim)).astype(np.float32) / np.sqrt(d)
        w = 1.0 / np.arange(1, clusters + 1) ** 0.7
        centres = (c, bases, w / w.sum())
    c, bases, p = centres
    labels = rng.choice(len(c), size=n, p=p)
    x = np.empty((n, d), dtype=np.float32)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(len(c) + 1))
    for j in range(len(c)):
        rows = order[bounds[j] : bounds[j + 1]]
        if rows.size == 0:
            continue
        z = rng.standard_normal((rows.size, local_dim)).astype(np.float32)
        # offsets of norm ~0.55 inside the cluster's subspace, isotropic noise of norm ~0.25
        x[rows] = c[j] + (0.55 / np.sqrt(local_dim)) * (z @ bases[j].T) + (0.25 / np.sqrt(d)) * rng.standard_normal(
            (rows.size, d)
        ).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, centres


def timed_search(index, q, k, repeats):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = index.search(q, k)
        best = min(best, time.perf_counter() - t)
    return out, q.shape[0] / best


def machine(threads):
    cpu = cpu_model()
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": cpu,
        "cores_visible": os.cpu_count(),
        "faiss_threads": threads,
        "memory_gib": mem,
        "gpu": None,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "faiss": faiss.__version__,
        "platform": platform.platform(),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--local-dim", type=int, default=16)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--kinds", default="hnsw,ivfpq")
    ap.add_argument("--ef-sweep", default="64,128,192,256")
    ap.add_argument("--nprobe-sweep", default="4,8,16,32")
    ap.add_argument("--hnsw-params", default="{}", help='JSON overrides of the HNSW defaults, e.g. \'{"M": 32}\'')
    ap.add_argument("--ivfpq-params", default="{}", help="JSON overrides of the IVF-PQ defaults")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "ann.json"))
    args = ap.parse_args(argv)

    faiss.omp_set_num_threads(args.threads)
    t0 = time.perf_counter()
    x, model = clustered_embeddings(args.n, args.d, args.clusters, args.local_dim, args.seed)
    q, _ = clustered_embeddings(args.queries, args.d, args.clusters, args.local_dim, args.seed + 1, centres=model)
    print(f"data {x.shape} + queries {q.shape} in {time.perf_counter() - t0:.1f}s", flush=True)

    t = time.perf_counter()
    exact = build_index(x, "exact")
    exact_build = time.perf_counter() - t
    (_, exact_ids), exact_qps = timed_search(exact, q, args.k, args.repeats)  # best of, like the others
    print(f"exact: build {exact_build:.1f}s, {exact_qps:.0f} QPS", flush=True)
    rows = [
        {"index": "exact", "recall_at_10": 1.0, "qps": round(exact_qps, 1), "exact_qps": round(exact_qps, 1),
         "speedup": 1.0, "build_s": round(exact_build, 2), "params": {}, "default": True}
    ]
    del exact

    sweeps = {"hnsw": ("efSearch", args.ef_sweep), "ivfpq": ("nprobe", args.nprobe_sweep)}
    for kind in [s for s in args.kinds.split(",") if s]:
        overrides = json.loads(getattr(args, f"{kind}_params"))
        params = {**DEFAULT_PARAMS[kind], **overrides}
        t = time.perf_counter()
        index = build_index(x, kind, **overrides)
        build_s = time.perf_counter() - t
        if kind == "ivfpq":
            ivf = faiss.extract_index_ivf(index)
            params["nlist"], params["m"] = ivf.nlist, faiss.downcast_index(ivf).pq.M
        print(f"{kind}: build {build_s:.1f}s {params}", flush=True)
        knob, values = sweeps[kind]
        values = sorted({int(v) for v in values.split(",")} | {int(params[knob])})
        for v in values:
            set_search_params(index, **{knob: v})
            (_, ids), qps = timed_search(index, q, args.k, args.repeats)
            rec = recall_at_k(ids, exact_ids, args.k)
            row = {"index": kind, "recall_at_10": round(rec, 4), "qps": round(qps, 1), "exact_qps": round(exact_qps, 1),
                   "speedup": round(qps / exact_qps, 1), "build_s": round(build_s, 2), "params": {**params, knob: v},
                   "default": not overrides and v == params[knob]}
            rows.append(row)
            print(f"  {knob}={v}: recall@10 {rec:.4f}, {qps:.0f} QPS ({qps / exact_qps:.1f}x exact)", flush=True)
        del index

    result = {
        "machine": machine(args.threads),
        "config": {"n": args.n, "d": args.d, "clusters": args.clusters, "local_dim": args.local_dim,
                   "queries": args.queries, "k": args.k, "metric": "inner_product", "seed": args.seed,
                   "data": "Zipf-sized Gaussian mixture, per-cluster low-rank subspace + isotropic noise, L2-normalised",
                   "total_s": round(time.perf_counter() - t0, 1)},
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out} in {result['config']['total_s']}s total")
    return 0


if __name__ == "__main__":
    sys.exit(main())
