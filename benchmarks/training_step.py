"""The model step vs its dense floor (issue 19): ``python benchmarks/training.py --step``.

One training step (forward, loss, backward, Adam; no data loading) on a fixed batch, timed in
process with the code paths interleaved, its FLOPs counted (``torch.utils.flop_counter``) and the
floor ``FLOPs / (GEMM rate x threads)`` from a 4096^3 GEMM rate measured in the same run; rows go
to ``step_rows`` of ``benchmarks/results/training.json`` (its DGL rows kept). MovieLens-100K
minibatch steps (:func:`step_worker`) and Gowalla's whole-catalogue step
(:func:`gowalla_step_worker`). See ``benchmarks/TRAINING.md``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from training import DATASET, ROOT, _build, _train_step, _yaml


def _gemm_rate(repeats: int = 3) -> float:
    """This machine's float32 GEMM rate now: GFLOP per CPU-second of a 4096^3 ``torch.mm`` (best of
    ``repeats``)."""
    import torch

    a = torch.randn(4096, 4096)
    c = torch.empty(4096, 4096)
    torch.mm(a, a, out=c)
    best = 0.0
    for _ in range(repeats):
        t = time.process_time()
        torch.mm(a, a, out=c)
        best = max(best, 2 * 4096 ** 3 / (time.process_time() - t) / 1e9)
    return best


def _count_step(step) -> tuple:
    """``(GFLOP, GB of sparse-product row reads)`` of one ``step()``: the dense FLOPs by
    ``torch.utils.flop_counter`` (forward + backward), the rows each CSR product reads (``nnz x
    d x 4`` bytes, forward and backward products alike) by wrapping ``torch.sparse.mm``. Run it on
    the op-by-op path: the counter has no formula for the in-place ``addmm_`` the fused nodes use
    (the GEMMs are the same)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    read = [0]
    orig = torch.sparse.mm

    def counted(a, b, *args, **kw):
        if a.layout == torch.sparse_csr:
            read[0] += a.values().numel() * b.shape[1] * 4
        return orig(a, b, *args, **kw)

    torch.sparse.mm = counted
    try:
        counter = FlopCounterMode(display=False)
        with counter:
            step()
    finally:
        torch.sparse.mm = orig
    return counter.get_total_flops() / 1e9, read[0] / 1e9


def _time_paths(step, paths: dict, reps: int, block: int = 4) -> dict:
    """Median wall and CPU ms of ``step()`` per path (``{name: switch}``, ``switch()`` selects it).
    The paths take turns in blocks of ``block`` consecutive steps, the first of each block not
    counted: all paths see the same load drift, and no step is timed right after another path's
    (the edge-list path's large per-step allocations and page faults would be billed to the next
    path's step in a strict alternation; that inflated the fused step by ~15-25%)."""
    times = {k: [] for k in paths}
    cpu = {k: [] for k in paths}
    rounds = -(-reps // (block - 1))
    for _ in range(rounds):
        for name, switch in paths.items():
            switch()
            for i in range(block):
                t, c = time.perf_counter(), time.process_time()
                step()
                if i:
                    times[name].append(time.perf_counter() - t)
                    cpu[name].append(time.process_time() - c)
    med = lambda v: round(sorted(v)[len(v) // 2] * 1e3, 2)  # noqa: E731
    return {k: (med(times[k]), med(cpu[k])) for k in paths}


def _floor_fields(gflop: float, read_gb: float, rate: float, threads: int, wall_ms: float, cpu_ms: float) -> dict:
    floor_ms = gflop / (rate * threads) * 1e3
    return {"step_gflop": round(gflop, 3), "gemm_gflop_per_cpu_s": round(rate, 1), "threads": threads,
            "floor_ms": round(floor_ms, 2), "ratio_to_floor": round(wall_ms / floor_ms, 2),
            "ratio_to_floor_cpu": round(cpu_ms / (floor_ms * threads), 2), "sparse_read_gb": round(read_gb, 4)}


def _parts(fns: dict, reps: int) -> dict:
    """Median CPU ms of each part of the step (``{name: fn}``), measured separately."""
    out = {}
    for name, fn in fns.items():
        fn()
        v = []
        for _ in range(reps):
            c = time.process_time()
            fn()
            v.append(time.process_time() - c)
        out[name] = round(sorted(v)[len(v) // 2] * 1e3, 2)
    return out


def _set_threads(threads: int) -> int:
    """torch's and numba's threads for the step (0: as configured); returns torch's."""
    import numba
    import torch

    if threads:
        torch.set_num_threads(threads)
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    return torch.get_num_threads()


def step_worker(batch_size: int, hard_epoch: int, threads: int = 0, reps: int = 15) -> dict:
    """One training step of the model (forward, loss, backward, Adam) on a fixed MovieLens-100K
    batch, three ways interleaved: the CSR blocks with the fused layer and head nodes
    (``models.fused``, the default), the same op by op (``fused_nodes = False``), and PyG's edge
    lists (``fused_blocks = False``): median wall ms and CPU ms, the step's FLOPs
    (``torch.utils.flop_counter``, forward + backward) and the dense floor
    ``step_gflop / (GEMM rate x threads)`` from a GEMM rate measured here. ``threads``: torch's
    intra-op threads for the step (0: as configured)."""
    os.environ.setdefault("WANDB_MODE", "disabled")
    import torch

    dm, mod = _build(batch_size, 0, hard_epoch)
    dm.train_dataloader()  # creates the sampler, at the curriculum epoch
    data = dm.train_dataset()
    idx = next(iter(dm._train_sampler))
    batch = data[idx]
    opt = torch.optim.Adam(mod.parameters(), lr=1e-3)
    mod.train()
    m = mod.model
    _set_threads(threads)

    def step():
        _train_step(mod, batch, opt)

    def path(blocks, nodes):
        def switch():
            m.fused_blocks, m.fused_nodes = blocks, nodes
        return switch

    path(True, False)()
    gflop, read_gb = _count_step(step)
    res = _time_paths(step, {"fused": path(True, True), "op_by_op": path(True, False),
                             "edge_list": path(False, False)}, reps)
    m.fused_blocks = m.fused_nodes = True
    zl = m(batch.x, batch.node_ids, batch.blocks).detach().requires_grad_()
    w = torch.randn_like(zl)

    def model_part():
        (m(batch.x, batch.node_ids, batch.blocks) * w).sum().backward()

    def loss_part():
        z_hard = zl[batch.hard_neg] if batch.hard_neg.numel() else None
        mod.loss_fn(zl[batch.query], zl[batch.pos], zl[batch.easy_neg], z_hard)[0].backward()

    parts = _parts({"model_fwd_bwd": model_part, "loss_fwd_bwd": loss_part, "adam": opt.step}, reps)
    rate = _gemm_rate()
    threads = torch.get_num_threads()
    (wall, cpu), (wall_o, cpu_o), (wall_e, cpu_e) = res["fused"], res["op_by_op"], res["edge_list"]
    return {"dataset": DATASET, "batch_size": batch_size, "hard_negatives_per_pair": int(batch.hard_neg.shape[1]),
            "n_nodes_layer0": int(batch.x.shape[0]), "x_dim": int(batch.x.shape[1]),
            "edges_per_block": [int(b.edge_index.shape[1]) for b in batch.blocks],
            "step_ms": wall, "step_cpu_ms": cpu,
            "step_ms_op_by_op": wall_o, "step_cpu_ms_op_by_op": cpu_o,
            "step_ms_edge_list": wall_e, "step_cpu_ms_edge_list": cpu_e,
            **_floor_fields(gflop, read_gb, rate, threads, wall, cpu), "parts_cpu_ms": parts,
            "load_1min": round(os.getloadavg()[0], 2), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "note": "model step only (forward, loss, backward, Adam; no data loading); medians of "
                    f"{reps} steps per path, interleaved in blocks of 4 (the first of each not counted); "
                    "floor = FLOPs at the measured 4096^3 GEMM rate on "
                    "every thread; op_by_op = the same CSR blocks without the fused autograd nodes"}


def gowalla_step_worker(threads: int = 0, reps: int = 7) -> dict:
    """Gowalla's whole-catalogue training step (``configs/gowalla.yaml``'s data and model: every
    item embedded once through the full neighbourhood matrix, users pooled from their histories,
    sampled softmax over the shared negatives) as ``PinSageModule.training_step`` runs it, plus
    backward and Adam; the fused nodes and op by op interleaved; the floor as the minibatch step's
    (dense FLOPs only; the CSR products' row reads are reported beside it)."""
    os.environ.setdefault("WANDB_MODE", "disabled")
    import warnings

    import torch

    from datamodules.datamodule import PinSageDataModule
    from models.module import PinSageModule

    warnings.filterwarnings("ignore", message=".*self.log.*")
    data = _yaml(ROOT / "configs" / "data" / "gowalla.yaml")
    model = _yaml(ROOT / "configs" / "model" / "pinsage-gowalla.yaml")
    root = data.get("root", "data")
    data["root"] = str((ROOT / root).resolve()) if not os.path.isabs(root) else root
    data.update(num_workers=0, persistent_workers=False)
    dm = PinSageDataModule(**data)
    dm.setup("fit")
    mod = PinSageModule(in_channels=dm.num_features, num_items=dm.num_items, num_layers=dm.num_layers, **model)
    mod._trainer = type("_Stub", (), {"datamodule": dm})()  # _full_graph reads trainer.datamodule once
    mod._full_graph()
    mod._trainer = None  # self.log then warns and returns: no Trainer in this loop
    batch = next(iter(dm.train_dataloader()))
    opt = torch.optim.Adam(mod.parameters(), lr=float(model.get("lr", 1e-3)))
    mod.train()
    m = mod.model
    _set_threads(threads)

    def step():
        loss = mod.training_step(batch, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def path(nodes):
        def switch():
            m.fused_nodes = nodes
        return switch

    path(False)()
    gflop, read_gb = _count_step(step)
    res = _time_paths(step, {"fused": path(True), "op_by_op": path(False)}, reps)
    m.fused_nodes = True
    zl = mod.embed_all().detach().requires_grad_()
    w = torch.randn_like(zl)

    def model_part():
        (mod.embed_all() * w).sum().backward()

    def loss_part():  # training_step on fixed item embeddings: user pooling + loss
        mod.embed_all = lambda: zl
        try:
            mod.training_step(batch, 0).backward()
        finally:
            del mod.embed_all

    parts = _parts({"model_fwd_bwd": model_part, "users_and_loss_fwd_bwd": loss_part, "adam": opt.step}, reps)
    rate = _gemm_rate()
    threads = torch.get_num_threads()
    (wall, cpu), (wall_o, cpu_o) = res["fused"], res["op_by_op"]
    nbr = mod._full["nbr"]
    return {"dataset": "gowalla", "batch_size": int(batch.pos.numel()), "num_items": dm.num_items,
            "neighbour_edges": nbr.nnz, "hidden": m.hidden_channels, "num_layers": m.num_layers,
            "num_easy_negatives": int(batch.easy_neg.numel()),
            "step_ms": wall, "step_cpu_ms": cpu, "step_ms_op_by_op": wall_o, "step_cpu_ms_op_by_op": cpu_o,
            **_floor_fields(gflop, read_gb, rate, threads, wall, cpu), "parts_cpu_ms": parts,
            "load_1min": round(os.getloadavg()[0], 2), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "note": "whole-catalogue step (training_step + backward + Adam, no data loading), medians of "
                    f"{reps} steps per path, interleaved in blocks of 4 (the first of each not counted); "
                    "floor_ms = dense FLOPs at the 4096^3 GEMM rate "
                    "(the CSR products' row reads, sparse_read_gb, are not in it); parts_cpu_ms measured "
                    "separately"}


def write_step_rows(out: str, rows: list, command: str) -> None:
    """Put ``rows`` under ``step_rows`` of the results file (its other keys kept), atomically."""
    path = Path(out)
    res = json.loads(path.read_text()) if path.exists() else {}
    res["step_rows"] = rows
    res["step_command"] = command
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(res, indent=2) + "\n")
    os.replace(tmp, path)
