"""The model step vs its dense floor (issue 19): ``python benchmarks/training.py --step``.

One training step (forward, loss, backward, Adam; no data loading) on a fixed batch, timed in
process with the code paths interleaved, its FLOPs counted (``torch.utils.flop_counter``) and the
floor ``FLOPs / (GEMM rate x threads)`` from a 4096^3 GEMM rate measured in the same run; rows go
to ``step_rows`` of ``benchmarks/results/training.json`` (its DGL rows kept). MovieLens-100K
minibatch steps (:func:`step_worker`) and Gowalla's whole-catalogue step
(:func:`gowalla_step_worker`; ``--precision 32-true bf16-mixed`` adds its step under CPU bf16
autocast in the same interleaving, a second row). Each row names its ``precision``. See
``benchmarks/TRAINING.md``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from training import DATASET, ROOT, _build, _train_step, _yaml


def _gemm_rate(repeats: int = 3, dtype=None) -> float:
    """This machine's float32 (or ``dtype``) GEMM rate now: GFLOP per CPU-second of a 4096^3
    ``torch.mm`` (best of ``repeats``)."""
    import torch

    a = torch.randn(4096, 4096, dtype=dtype)
    c = torch.empty(4096, 4096, dtype=dtype)
    torch.mm(a, a, out=c)
    best = 0.0
    for _ in range(repeats):
        t = time.process_time()
        torch.mm(a, a, out=c)
        best = max(best, 2 * 4096 ** 3 / (time.process_time() - t) / 1e9)
    return best


def _count_step(step) -> float:
    """GFLOP of one ``step()`` (dense, forward + backward) by ``torch.utils.flop_counter``. Run it
    on the op-by-op path: the counter has no formula for the in-place ``addmm_`` the fused nodes
    use (the GEMMs are the same); CSR products are not counted (their rows: :func:`_count_sparse`)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import models.fused as fused
    import models.sparse as sparse

    orig = sparse.csr_mm
    # csr_mm's addmm(beta=0) would be counted as a dense [n, m] x [m, d] product; torch.sparse.mm
    # (the same product) is not counted
    sparse.csr_mm = fused.csr_mm = lambda a, x: torch.sparse.mm(a, x)
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            step()
    finally:
        sparse.csr_mm = fused.csr_mm = orig
    return counter.get_total_flops() / 1e9


def _count_sparse(step) -> float:
    """GB of random row reads of one ``step()`` on the path it takes (run it on the fused path):
    ``nnz x d x 4`` bytes per CSR product (``models.sparse.csr_mm``, forward and backward alike)
    and per leave-one-out pooling of the batch's users (:class:`models.fused.PoolMinusPositive`,
    its history rows and positives, forward and backward)."""
    import models.fused as fused
    import models.sparse as sparse

    read = [0]
    orig_mm, orig_pool = sparse.csr_mm, fused.PoolMinusPositive.apply

    def counted_mm(a, x):
        read[0] += a.values().numel() * x.shape[1] * 4
        return orig_mm(a, x)

    def counted_pool(z, ptr, col, w, users, pos, w_pos):
        rows = int((ptr[users + 1] - ptr[users]).sum()) + pos.numel()
        read[0] += 2 * rows * z.shape[1] * 4  # forward gathers, backward scatters as many rows
        return orig_pool(z, ptr, col, w, users, pos, w_pos)

    sparse.csr_mm = fused.csr_mm = counted_mm
    fused.PoolMinusPositive.apply = counted_pool
    try:
        step()
    finally:
        sparse.csr_mm = fused.csr_mm = orig_mm
        fused.PoolMinusPositive.apply = orig_pool
    return read[0] / 1e9


def _gather_rate(table_rows: int, d: int, ptr, col, repeats: int = 3) -> dict:
    """This machine's random-row rates now, GB of rows read per CPU-second (best of ``repeats``),
    on the step's own sparse shape (its largest CSR product, ``ptr`` / ``col`` over a
    ``[table_rows, d]`` float32 table): ``index_select`` of the rows ``col`` into a preallocated
    ``[nnz, d]`` buffer (``gather``), and the CSR product itself (``csr``, ``csr_mm``: reads the
    same rows, writes only ``[n, d]``)."""
    import torch

    from models.sparse import SparseAdjacency, csr_mm

    table = torch.randn(table_rows, d)
    out = torch.empty(col.numel(), d)
    n = col.numel()
    a, _ = SparseAdjacency(ptr, col, torch.rand(n), num_src=table_rows).matrices(normalize=False)  # the step's CSR
    rates = {}
    for name, fn in (("gather", lambda: torch.index_select(table, 0, col, out=out)),
                     ("csr", lambda: csr_mm(a, table))):
        fn()
        best = 0.0
        for _ in range(repeats):
            t = time.process_time()
            fn()
            best = max(best, n * d * 4 / (time.process_time() - t) / 1e9)
        rates[name] = best
    return rates


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


def _floor_fields(gflop: float, read_gb: float, rate: float, rates: dict, threads: int, wall_ms: float,
                 cpu_ms: float) -> dict:
    """The dense floor (FLOPs at the GEMM rate) and the roofline (that floor plus the step's random
    row reads at the measured gather rate), per thread, and the step's ratios to both."""
    floor_ms = gflop / (rate * threads) * 1e3
    roofline_ms = floor_ms + read_gb / (max(rates.values()) * threads) * 1e3  # the faster way to read rows
    return {"step_gflop": round(gflop, 3), "gemm_gflop_per_cpu_s": round(rate, 1), "threads": threads,
            "floor_ms": round(floor_ms, 2), "ratio_to_floor": round(wall_ms / floor_ms, 2),
            "ratio_to_floor_cpu": round(cpu_ms / (floor_ms * threads), 2), "sparse_read_gb": round(read_gb, 4),
            "gather_gb_per_cpu_s": round(rates["gather"], 2), "csr_product_gb_per_cpu_s": round(rates["csr"], 2),
            "roofline_ms": round(roofline_ms, 2), "ratio_to_roofline_cpu": round(cpu_ms / (roofline_ms * threads), 2)}


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
    opt = mod.configure_optimizers()["optimizer"]  # the app's optimiser (fused Adam on CPU)
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
    gflop = _count_step(step)
    path(True, True)()
    read_gb = _count_sparse(step)
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
    b0 = batch.blocks[0]
    counts = torch.bincount(b0.edge_index[1], minlength=int(b0.size[1]))
    rates = _gather_rate(int(batch.x.shape[0]), m.hidden_channels,
                         torch.cat([counts.new_zeros(1), counts.cumsum(0)]), b0.edge_index[0].contiguous())
    threads = torch.get_num_threads()
    (wall, cpu), (wall_o, cpu_o), (wall_e, cpu_e) = res["fused"], res["op_by_op"], res["edge_list"]
    return {"dataset": DATASET, "precision": "32-true", "batch_size": batch_size,
            "hard_negatives_per_pair": int(batch.hard_neg.shape[1]),
            "n_nodes_layer0": int(batch.x.shape[0]), "x_dim": int(batch.x.shape[1]),
            "edges_per_block": [int(b.edge_index.shape[1]) for b in batch.blocks],
            "step_ms": wall, "step_cpu_ms": cpu,
            "step_ms_op_by_op": wall_o, "step_cpu_ms_op_by_op": cpu_o,
            "step_ms_edge_list": wall_e, "step_cpu_ms_edge_list": cpu_e,
            **_floor_fields(gflop, read_gb, rate, rates, threads, wall, cpu), "parts_cpu_ms": parts,
            "load_1min": round(os.getloadavg()[0], 2), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "note": "model step only (forward, loss, backward, Adam; no data loading); medians of "
                    f"{reps} steps per path, interleaved in blocks of 4 (the first of each not counted); "
                    "floor = FLOPs at the measured 4096^3 GEMM rate on "
                    "every thread; roofline = floor + sparse_read_gb at the faster of the two row rates "
                    "measured here on block 0's CSR shape (index_select gather, the CSR product); op_by_op = the same CSR blocks without "
                    "the fused autograd nodes; Adam as configure_optimizers (fused) on every path"}


def _path_equality(mod, batch, fused, op_by_op, forward=None) -> dict:
    """The step's loss and every parameter gradient on two paths (``fused()`` / ``op_by_op()``
    select them; ``forward()`` runs the step's forward, default ``mod.training_step(batch, 0)``):
    both losses, their difference and the largest ``max|diff| / max|g|`` over the parameters."""
    out = []
    for switch in (fused, op_by_op):
        switch()
        mod.zero_grad()
        loss = forward() if forward is not None else mod.training_step(batch, 0)
        loss.backward()
        out.append((float(loss), {k: p.grad.clone() for k, p in mod.named_parameters() if p.grad is not None}))
    (a, ga), (b, gb) = out
    rel = max(float((ga[k] - gb[k]).abs().max() / gb[k].abs().max().clamp(min=1e-30)) for k in gb)
    mod.zero_grad()
    return {"loss": a, "loss_op_by_op": b, "loss_abs_diff": abs(a - b), "max_grad_rel_diff": rel,
            "parameters": len(gb), "when": "before the timed steps (the model as initialised)"}


def _gowalla_module() -> tuple:
    """``configs/gowalla.yaml``'s data module and model, one training batch and the app's
    optimiser (fused Adam on CPU): ``(dm, module, batch, optimiser)``, the module in train mode."""
    os.environ.setdefault("WANDB_MODE", "disabled")
    import warnings

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
    mod = PinSageModule(in_channels=dm.num_features, num_items=dm.num_items, num_users=dm.num_users,
                        num_layers=dm.num_layers, **model)
    mod._trainer = type("_Stub", (), {"datamodule": dm})()  # _full_graph reads trainer.datamodule once
    mod._full_graph()
    mod._trainer = None  # self.log then warns and returns: no Trainer in this loop
    batch = next(iter(dm.train_dataloader()))
    opt = mod.configure_optimizers()["optimizer"]
    mod.train()
    return dm, mod, batch, opt


def gowalla_step_worker(threads: int = 0, reps: int = 7, precisions=("32-true",)) -> list:
    """Gowalla's whole-catalogue training step (``configs/gowalla.yaml``'s data and model: every
    item embedded once through the full neighbourhood matrix, users pooled from their histories,
    sampled softmax over the shared negatives) as ``PinSageModule.training_step`` runs it, plus
    backward and Adam; three paths interleaved (every fused node, the layers' only, none); the
    dense floor as the minibatch step's and the roofline (the floor plus the step's random row
    reads at the gather rate measured here). ``precisions`` with ``"bf16-mixed"``: two paths more
    in the same interleaving, ``training_step`` under CPU autocast to bf16 as Lightning's
    ``bf16-mixed`` runs it (every fused node, their GEMMs in bf16; none, the op-by-op path that
    ``bf16-mixed`` took before), and a second row (:func:`_bf16_row`). Rows: a list, a
    ``precision`` field on each."""
    import torch

    dm, mod, batch, opt = _gowalla_module()
    m = mod.model
    _set_threads(threads)

    bf16 = [False]  # the step's autocast (Lightning's bf16-mixed: training_step under CPU autocast)

    def forward():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16[0]):
            return mod.training_step(batch, 0)

    def step():
        loss = forward()
        opt.zero_grad()
        loss.backward()
        opt.step()

    def path(nodes, loss_and_users, in_bf16=False):
        def switch():
            m.fused_nodes = nodes
            mod.loss_fn.fused = mod.user_encoder.fused = loss_and_users
            bf16[0] = in_bf16
        return switch

    equality = _path_equality(mod, batch, path(True, True), path(False, False))  # the model as built
    with_bf16 = "bf16-mixed" in precisions
    equality_bf16 = _path_equality(mod, batch, path(True, True, True), path(True, True), forward) if with_bf16 else None
    path(False, False)()
    gflop = _count_step(step)
    path(True, True)()
    read_gb = _count_sparse(step)
    paths = {"fused": path(True, True), "fused_layers_only": path(True, False), "op_by_op": path(False, False)}
    if with_bf16:
        paths.update(fused_bf16=path(True, True, True), op_by_op_bf16=path(False, False, True))
    res = _time_paths(step, paths, reps)
    path(True, True)()
    zl = mod.embed_all().detach().requires_grad_()
    w = torch.randn_like(zl)

    def model_part():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16[0]):
            out = mod.embed_all()
        (out * w).sum().backward()

    def loss_part():  # training_step on fixed item embeddings: user pooling + loss
        mod.embed_all = lambda: zl
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16[0]):
                loss = mod.training_step(batch, 0)
            loss.backward()
        finally:
            del mod.embed_all

    def loss_part_before():  # the same, users' pooling and softmax op by op
        mod.loss_fn.fused = mod.user_encoder.fused = False
        try:
            loss_part()
        finally:
            mod.loss_fn.fused = mod.user_encoder.fused = True

    single = torch.optim.Adam(mod.parameters(), lr=opt.defaults["lr"], foreach=False)  # parts last: may move
    parts = _parts({"model_fwd_bwd": model_part, "users_and_loss_fwd_bwd": loss_part,
                    "users_and_loss_fwd_bwd_op_by_op": loss_part_before, "adam": opt.step,
                    "adam_single_tensor": single.step}, reps)
    parts_bf16 = None
    if with_bf16:
        bf16[0] = True
        parts_bf16 = _parts({"model_fwd_bwd": model_part, "users_and_loss_fwd_bwd": loss_part}, reps)
        bf16[0] = False
    rate = _gemm_rate()
    nbr = mod._full["nbr"]
    rates = _gather_rate(dm.num_items, m.hidden_channels, nbr.ptr, nbr.col.contiguous())
    threads = torch.get_num_threads()
    (wall, cpu), (wall_l, cpu_l), (wall_o, cpu_o) = res["fused"], res["fused_layers_only"], res["op_by_op"]
    row = {"dataset": "gowalla", "precision": "32-true", "batch_size": int(batch.pos.numel()), "num_items": dm.num_items,
            "neighbour_edges": nbr.nnz, "hidden": m.hidden_channels, "num_layers": m.num_layers,
            "num_easy_negatives": int(batch.easy_neg.numel()),
            "step_ms": wall, "step_cpu_ms": cpu, "step_ms_fused_layers_only": wall_l,
            "step_cpu_ms_fused_layers_only": cpu_l, "step_ms_op_by_op": wall_o, "step_cpu_ms_op_by_op": cpu_o,
            **_floor_fields(gflop, read_gb, rate, rates, threads, wall, cpu), "parts_cpu_ms": parts,
            "fused_vs_op_by_op": equality,
            "load_1min": round(os.getloadavg()[0], 2), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "note": "whole-catalogue step (training_step + backward + Adam, no data loading), medians of "
                    f"{reps} steps per path, interleaved in blocks of 4 (the first of each not counted); "
                    "floor_ms = dense FLOPs at the 4096^3 GEMM rate; roofline_ms = floor_ms + sparse_read_gb "
                    "(CSR products and the batch users' history rows, forward and backward) at the faster of "
                    "the two row rates measured here on the neighbourhood matrix's shape (index_select "
                    "gather, the CSR product); fused = every "
                    "fused node (layers, users' pooling, softmax), fused_layers_only = the layers' nodes "
                    "with the users' pooling and softmax op by op (main before issue 19's loss work), "
                    "op_by_op = none; Adam as configure_optimizers (fused) on every path; parts_cpu_ms "
                    "measured separately"}
    if not with_bf16:
        return [row]
    return [row, _bf16_row(row, res, parts_bf16, equality_bf16, _gemm_rate(dtype=torch.bfloat16))]


def _bf16_row(row: dict, res: dict, parts: dict, equality: dict, rate_bf16: float) -> dict:
    """The Gowalla step row of ``bf16-mixed`` from the same interleaved run as the float32 ``row``:
    ``step_*`` every fused node with bf16 GEMMs, ``*_op_by_op`` the op-by-op path under the same
    autocast (what ``bf16-mixed`` ran before the fused nodes took it); the float32 row's floor
    and roofline (the same FLOPs at the float32 GEMM rate) and the floor at the bf16 4096^3 GEMM
    rate measured here (``floor_ms_bf16``)."""
    (wall, cpu), (wall_o, cpu_o) = res["fused_bf16"], res["op_by_op_bf16"]
    threads = row["threads"]
    floor_bf16 = row["step_gflop"] / (rate_bf16 * threads) * 1e3
    keep = ("dataset", "batch_size", "num_items", "neighbour_edges", "hidden", "num_layers", "num_easy_negatives",
            "step_gflop", "gemm_gflop_per_cpu_s", "threads", "floor_ms", "sparse_read_gb", "gather_gb_per_cpu_s",
            "csr_product_gb_per_cpu_s", "roofline_ms", "load_1min", "omp_wait_policy")
    return {**{k: row[k] for k in keep}, "precision": "bf16-mixed",
            "step_ms": wall, "step_cpu_ms": cpu, "step_ms_op_by_op": wall_o, "step_cpu_ms_op_by_op": cpu_o,
            "step_cpu_ms_float32_same_run": row["step_cpu_ms"],
            "speedup_cpu_vs_float32": round(row["step_cpu_ms"] / cpu, 2),
            "ratio_to_floor_cpu": round(cpu / (row["floor_ms"] * threads), 2),
            "ratio_to_roofline_cpu": round(cpu / (row["roofline_ms"] * threads), 2),
            "gemm_gflop_per_cpu_s_bf16": round(rate_bf16, 1), "floor_ms_bf16": round(floor_bf16, 2),
            "ratio_to_floor_bf16_cpu": round(cpu / (floor_bf16 * threads), 2),
            "parts_cpu_ms": parts, "bf16_vs_float32": equality,
            "note": "the float32 row's run and paths, interleaved with two more: training_step under "
                    "torch.autocast('cpu', bfloat16) (as Lightning's bf16-mixed), backward and Adam outside; "
                    "step_* = every fused node, their GEMMs on bf16 operands (models.fused.gemm_dtype); "
                    "*_op_by_op = no fused node under the same autocast (bf16-mixed before the fused nodes "
                    "took it); floor_ms / roofline_ms as the float32 row's (float32 GEMM rate), "
                    "floor_ms_bf16 = the same FLOPs at the bf16 4096^3 GEMM rate measured here; "
                    "bf16_vs_float32 = loss and parameter gradients of one step, fused bf16 vs fused "
                    "float32 (before the timed steps)"}


def write_step_rows(out: str, rows: list, command: str, previous_as: str = "") -> None:
    """Put ``rows`` under ``step_rows`` of the results file (its other keys kept), atomically;
    ``previous_as``: keep the rows there before (and their command) under that key."""
    path = Path(out)
    res = json.loads(path.read_text()) if path.exists() else {}
    if previous_as and "step_rows" in res:
        res[previous_as] = {"step_command": res.get("step_command"), "step_rows": res["step_rows"]}
    res["step_rows"] = rows
    res["step_command"] = command
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(res, indent=2) + "\n")
    os.replace(tmp, path)
