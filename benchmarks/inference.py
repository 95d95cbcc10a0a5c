"""Benchmark: layer-wise full-catalogue inference vs naive per-item minibatch inference.

    PYTHONPATH=. python benchmarks/inference.py [--data-root ../shared/data] [--out benchmarks/results/inference.json]

Both paths embed items with the same untrained PinSage (``conv="pinsage"``, in_channels = feature
width, hidden 128, out 64, K = 2) and the same importance neighbourhoods (``PinSageSampler``:
T = 10, 10 walks of length 2, restart 0.5; a neighbourhood is a function of (seed, epoch, item),
so both paths see the same one).  Throughput = items per second, end to end:

- **layer-wise** (:func:`app.inference.layerwise_embeddings`): sample the neighbourhood of every
  item once (:func:`app.inference.neighbourhoods_for_all`), then layer 1 for every item, then
  layer 2, then the head; timed on *all* items (sampling included).
- **naive** (:func:`app.inference.naive_embeddings`): per batch of ``--batch-size`` targets, sample
  the K-hop computation graph hop by hop as training does and run ``model.forward``; timed on a
  random sample of ``--naive-items`` items (it scales linearly in the number of targets).

The two results are compared on the sampled items (``max_abs_diff``; they must agree to ~1e-6).
Each measurement is repeated ``--repeats`` times, alternating the two paths, and the fastest run
is kept (the machine may be shared); the process CPU time of every run is recorded too
(``ratio_cpu_time``: the same ratio in items per CPU-second, less sensitive to other load).

Datasets: Gowalla (LightGCN split, train graph; features: log degree) from ``--data-root`` and a
synthetic graph of 1M items (500k users, 5M interactions, 1000 communities, 16-d features + log
degree; generated once, ~1 min, then cached by ``load_dataset``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

# Idle OpenMP threads sleep rather than spin: torch's and numba's thread pools alternate here (GEMMs,
# then the CSR pooling kernel), and on a shared machine a spinning idle pool burns CPU the other
# needs (~20% of the layer-wise CPU time measured on 2 loaded cores). Read when the libraries
# load, hence before the imports; set OMP_WAIT_POLICY yourself to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]

import numba  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from app.inference import layerwise_embeddings, naive_embeddings, neighbourhoods_for_all  # noqa: E402
from datamodules.datasets import load_dataset  # noqa: E402
from datamodules.walks import PinSageSampler  # noqa: E402
from models.pinsage import PinSage  # noqa: E402

from machine import cpu_model  # noqa: E402

SYNTHETIC_1M = dict(num_users=500_000, num_items=1_000_000, num_interactions=5_000_000,
                    num_communities=1000, feature_dim=16, seed=0)


def machine_info() -> dict:
    import torch_geometric

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "numba_threads": numba.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_geometric": torch_geometric.__version__,
        "numba": numba.__version__,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "numba_threading_layer": numba.config.THREADING_LAYER,
    }


def measured_rates(num_rows: int = 1_000_000, dim: int = 128, repeats: int = 3) -> dict:
    """This machine's rates, measured now (best of ``repeats``, process CPU time): a 4096^3
    float32 GEMM (GFLOP per CPU-second) and a random row gather ``index_select`` of ``dim``
    float32 rows from a ``[num_rows, dim]`` table into a reused buffer (GB per CPU-second)."""
    a = torch.randn(4096, 4096)
    c = torch.empty(4096, 4096)
    torch.mm(a, a, out=c)
    gemm = []
    for _ in range(repeats):
        t = time.process_time()
        torch.mm(a, a, out=c)
        gemm.append(2 * 4096 ** 3 / (time.process_time() - t) / 1e9)
    del a, c
    table = torch.randn(num_rows, dim)
    idx = torch.randint(0, num_rows, (655_360,))
    buf = torch.empty(idx.numel(), dim)
    torch.index_select(table, 0, idx, out=buf)
    gather = []
    for _ in range(repeats):
        t = time.process_time()
        for _ in range(8):
            torch.index_select(table, 0, idx, out=buf)
        gather.append(8 * buf.numel() * 4 / (time.process_time() - t) / 1e9)
    return {"gemm_gflop_per_cpu_s": round(max(gemm), 1), "gather_gb_per_cpu_s": round(max(gather), 2)}


def roofline(num_items: int, num_edges: int, in_channels: int, hidden: int, out: int, num_layers: int,
             rates: dict) -> dict:
    """The dense-work + gather floor of layer-wise inference with ``conv="pinsage"``: encoder
    ``2 I F d``, per layer ``Q`` (``2 I d^2``) and ``W`` (``2 I 2d d``), the head (``2 I d^2 + 2 I d
    out``) FLOPs at the measured GEMM rate, plus one ``d``-float row read per neighbour per layer
    at the measured gather rate (the issue's model; table streaming and pooling adds are not
    counted)."""
    flop = 2 * num_items * (in_channels * hidden + num_layers * 3 * hidden * hidden + hidden * hidden + hidden * out)
    gather_bytes = num_layers * num_edges * hidden * 4
    cpu_s = flop / 1e9 / rates["gemm_gflop_per_cpu_s"] + gather_bytes / 1e9 / rates["gather_gb_per_cpu_s"]
    return {"dense_gflop": round(flop / 1e9, 1), "gather_gb": round(gather_bytes / 1e9, 2),
            "roofline_cpu_s": round(cpu_s, 2), "roofline_wall_s_all_cores": round(cpu_s / os.cpu_count(), 2)}


def synthetic_args(num_items: int) -> dict:
    """The synthetic catalogue's generator arguments, scaled from the 1M-item setting."""
    f = num_items / SYNTHETIC_1M["num_items"]
    return dict(SYNTHETIC_1M, num_items=num_items, num_users=max(10, int(SYNTHETIC_1M["num_users"] * f)),
                num_interactions=max(100, int(SYNTHETIC_1M["num_interactions"] * f)),
                num_communities=max(2, min(SYNTHETIC_1M["num_communities"], num_items // 100)))


def _load(name: str, args):
    if name == "gowalla":
        return load_dataset("gowalla", root=args.data_root, features=["log_degree"], progress=True)
    return load_dataset("synthetic", reader_args=synthetic_args(args.synthetic_items), progress=True)


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def bench_dataset(name: str, args, rates: dict) -> dict:
    t0 = time.perf_counter()
    ds = _load(name, args)
    print(f"[{name}] loaded {ds.num_items} items, {ds.train_graph.num_edges} train edges, "
          f"features {ds.item_features.shape} in {time.perf_counter() - t0:.1f}s", flush=True)
    x = torch.from_numpy(ds.item_features)
    sampler = PinSageSampler(ds.train_graph, num_walks=args.num_walks, walk_length=args.walk_length,
                             restart_prob=0.5, top_t=args.top_t, seed=0)
    torch.manual_seed(0)
    model = PinSage(x.size(1), args.hidden, args.out_dim, num_layers=args.num_layers, conv="pinsage").eval()
    rng = np.random.default_rng(0)
    n_naive = min(args.naive_items, ds.num_items)
    items = np.sort(rng.choice(ds.num_items, n_naive, replace=False)) if n_naive < ds.num_items \
        else np.arange(ds.num_items)
    items = rng.permutation(items)

    # warm-up: numba kernels, PyG's generated propagate, allocator
    naive_embeddings(model, x, sampler, items[:256], batch_size=args.batch_size, device=args.device)
    _sync(args.device)

    lw_times, nbr_times, naive_times, lw_cpu, naive_cpu = [], [], [], [], []
    model_cpu, model_wall, nbr_cpu = [], [], []
    z_lw = z_naive = None
    for r in range(args.repeats):
        t, c = time.perf_counter(), time.process_time()
        nbr = neighbourhoods_for_all(sampler, ds.num_items, chunk_size=args.chunk_size)
        t_nbr = time.perf_counter() - t
        c_nbr = time.process_time() - c
        z_lw = layerwise_embeddings(model, x, nbr, chunk_size=args.chunk_size, progress=args.progress,
                                    device=args.device)
        _sync(args.device)
        lw_times.append(time.perf_counter() - t)
        lw_cpu.append(time.process_time() - c)
        nbr_cpu.append(c_nbr)
        model_cpu.append(lw_cpu[-1] - c_nbr)
        model_wall.append(lw_times[-1] - t_nbr)
        num_edges = int(nbr[1].shape[0])
        nbr_times.append(t_nbr)
        del nbr
        print(f"[{name}] run {r}: layer-wise model {model_cpu[-1]:.2f} CPU-s, {model_wall[-1]:.2f}s wall "
              f"(load {os.getloadavg()[0]:.2f}); ", flush=True)
        print(f"[{name}] run {r}: layer-wise {lw_times[-1]:.2f}s ({t_nbr:.2f}s neighbourhoods) "
              f"= {ds.num_items / lw_times[-1]:.0f} items/s", flush=True)
        t, c = time.perf_counter(), time.process_time()
        z_naive = naive_embeddings(model, x, sampler, items, batch_size=args.batch_size, progress=args.progress,
                                   device=args.device)
        _sync(args.device)
        naive_times.append(time.perf_counter() - t)
        naive_cpu.append(time.process_time() - c)
        print(f"[{name}] run {r}: naive {naive_times[-1]:.2f}s on {n_naive} items "
              f"= {n_naive / naive_times[-1]:.0f} items/s", flush=True)
    diff = float((z_lw[torch.from_numpy(items)] - z_naive).abs().max())
    best_lw, best_naive = min(lw_times), min(naive_times)
    lw_ips, naive_ips = ds.num_items / best_lw, n_naive / best_naive
    roof = roofline(ds.num_items, num_edges, int(x.size(1)), args.hidden, args.out_dim, args.num_layers, rates)
    row = {
        "dataset": name if name == "gowalla" else (
            "synthetic-1M" if args.synthetic_items == 1_000_000 else f"synthetic-{args.synthetic_items}"),
        "device": str(args.device),
        "items": int(ds.num_items),
        "num_items": int(ds.num_items),
        "num_neighbourhood_edges": num_edges,
        # the model part of layer-wise inference (layerwise_embeddings, neighbourhoods excluded):
        # process CPU time (all threads) of the best run, and its wall time
        "layerwise_cpu_s": round(min(model_cpu), 2),
        "layerwise_wall_s": round(model_wall[model_cpu.index(min(model_cpu))], 2),
        "layerwise_cpu_s_runs": [round(v, 2) for v in model_cpu],
        "neighbourhoods_cpu_s": round(min(nbr_cpu), 2),
        **roof,
        "ratio_to_roofline_cpu": round(min(model_cpu) / roof["roofline_cpu_s"], 2),
        "rates": rates,
        "num_train_edges": int(ds.train_graph.num_edges),
        "layerwise_items_per_s": round(lw_ips, 1),
        "naive_items_per_s": round(naive_ips, 1),
        "ratio": round(lw_ips / naive_ips, 2),
        "layerwise_seconds": [round(v, 3) for v in lw_times],
        "layerwise_neighbourhood_seconds": [round(v, 3) for v in nbr_times],
        "layerwise_model_items_per_s": round(ds.num_items / (best_lw - nbr_times[lw_times.index(best_lw)]), 1),
        "naive_items_timed": int(n_naive),
        "naive_seconds": [round(v, 3) for v in naive_times],
        # CPU seconds of this process (all threads): less sensitive to other load on a shared machine
        "layerwise_cpu_seconds": [round(v, 3) for v in lw_cpu],
        "naive_cpu_seconds": [round(v, 3) for v in naive_cpu],
        "ratio_cpu_time": round((ds.num_items / min(lw_cpu)) / (n_naive / min(naive_cpu)), 2),
        "max_abs_diff": diff,
        "settings": {"conv": "pinsage", "num_layers": args.num_layers, "top_t": args.top_t,
                     "num_walks": args.num_walks, "walk_length": args.walk_length, "restart_prob": 0.5,
                     "hidden": args.hidden, "out": args.out_dim, "in_channels": int(x.size(1)),
                     "batch_size": args.batch_size, "chunk_size": args.chunk_size, "repeats": args.repeats},
    }
    print(f"[{name}] layer-wise {lw_ips:.0f} items/s, naive {naive_ips:.0f} items/s, "
          f"ratio {row['ratio']:.1f}x (CPU time: {row['ratio_cpu_time']:.1f}x), max |diff| {diff:.2e}", flush=True)
    return row


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "inference.json"))
    p.add_argument("--datasets", nargs="+", default=["gowalla", "synthetic"], choices=["gowalla", "synthetic"])
    p.add_argument("--naive-items", type=int, default=20_000,
                   help="items timed on the naive path (a random sample; all items if fewer)")
    p.add_argument("--batch-size", type=int, default=512, help="targets per naive minibatch")
    p.add_argument("--chunk-size", type=int, default=65536, help="targets per layer-wise chunk")
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--top-t", type=int, default=10)
    p.add_argument("--num-walks", type=int, default=10)
    p.add_argument("--walk-length", type=int, default=2)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--out-dim", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch and numba threads (0: all cores)")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--device", default="cpu", help="where the model runs (e.g. cuda)")
    p.add_argument("--synthetic-items", type=int, default=1_000_000,
                   help="catalogue size of the synthetic dataset (users and interactions scale with it)")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
        numba.set_num_threads(args.threads)

    t0 = time.perf_counter()
    machine = machine_info()
    machine["device"] = args.device if not args.device.startswith("cuda") else torch.cuda.get_device_name(args.device)
    machine["loadavg_start"] = [round(v, 2) for v in os.getloadavg()]
    rates = measured_rates()
    print(f"rates: {rates} (load {os.getloadavg()[0]:.2f})", flush=True)
    rows = [bench_dataset(name, args, rates) for name in args.datasets]
    machine["rates_end"] = measured_rates()
    machine["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    result = {"machine": machine, "rows": rows, "total_seconds": round(time.perf_counter() - t0, 1),
              "command": "PYTHONPATH=. python benchmarks/inference.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    print("\n| dataset | items | layer-wise items/s | naive items/s | ratio | ratio (CPU time) | "
          "layer-wise CPU-s | wall s | roofline CPU-s |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['dataset']} | {r['num_items']:,} | {r['layerwise_items_per_s']:,.0f} | "
              f"{r['naive_items_per_s']:,.0f} | {r['ratio']:.1f}x | {r['ratio_cpu_time']:.1f}x | "
              f"{r['layerwise_cpu_s']} | {r['layerwise_wall_s']} | {r['roofline_cpu_s']} |")
    print(f"\nwrote {out} in {result['total_seconds']:.0f}s")


if __name__ == "__main__":
    main()
