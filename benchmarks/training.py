"""Benchmark: training throughput (positive pairs/s), ours vs DGL's PinSAGE example, MovieLens-100K.

    PINSAGE_CACHE=/tmp/pcache python benchmarks/training.py --dgl-dir /tmp/dgl-pinsage \\
        --dgl-python /tmp/dglvenv/bin/python [--batch-sizes 512 1024] [--workers 2 0] \\
        [--steps 40] [--warmup 5] [--profile] [--out benchmarks/results/training.json]

Ours: :class:`models.module.PinSageModule` + :class:`datamodules.datamodule.PinSageDataModule`
with the settings of ``configs/data/movielens-100k.yaml`` and ``configs/model/pinsage.yaml``
(only ``batch_size`` / ``num_workers`` overridden) on a plain ``pytorch_lightning.Trainer``
(``max_steps = warmup + steps``, no validation, no logger, no checkpoints). A callback stamps
``on_train_batch_start`` / ``on_train_batch_end``; after ``--warmup`` steps:

* pairs/s = positive pairs (``batch.query.numel()``) of the measured steps / their wall time
  (from the end of the last warm-up step to the end of the last step);
* data-wait share = sum over steps of (``on_train_batch_start`` - previous
  ``on_train_batch_end``) / that wall time. Lightning fetches the next batch in that gap, so the
  gap is the time the loop waits for data (plus Lightning's own per-step bookkeeping).

The first epoch of the hard-negative curriculum uses 0 hard negatives per query; rows with
``hard_negatives_per_pair = 6`` start the sampler at epoch 6 (the cap), i.e. the steady state
of a full run (``--hard-epoch``).

DGL: its example (``examples/pytorch/pinsage`` of dmlc/dgl, fetched to ``--dgl-dir`` and never
part of this project) trains through its own ``model.py`` in its own venv, wrapped by
``bench_dgl.py`` (in ``--dgl-dir``) that times its DataLoader's ``next()`` and its training loop
steps without changing them; it is given the same model width, layers, T, walks and batch size.
Ours and DGL runs alternate (ours, DGL, ours, ...) so both see the same machine load; the load
average is recorded. Each measurement is a fresh subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASET = "movielens-100k"


def _yaml(path: Path) -> dict:
    import yaml

    with open(path) as f:
        return yaml.safe_load(f)


def _settings() -> tuple:
    data = _yaml(ROOT / "configs" / "data" / f"{DATASET}.yaml")
    model = _yaml(ROOT / "configs" / "model" / "pinsage.yaml")
    root = data.get("root", "data")
    data["root"] = str((ROOT / root).resolve()) if not os.path.isabs(root) else root
    return data, model


# ----------------------------------------------------------------------------------------------
# ours: one measurement per subprocess (--ours-worker)
# ----------------------------------------------------------------------------------------------


def _build(batch_size: int, num_workers: int, hard_epoch: int):
    from datamodules.datamodule import PinSageDataModule
    from models.module import PinSageModule

    data, model = _settings()
    data.update(batch_size=batch_size, num_workers=num_workers)

    class OffsetEpochDataModule(PinSageDataModule):
        """Starts the training sampler ``hard_epoch`` epochs in (hard-negative curriculum)."""

        def train_dataloader(self):
            dl = super().train_dataloader()
            s = self._train_sampler
            orig = s.set_epoch
            s.set_epoch = lambda e: orig(int(e) + hard_epoch)
            s.set_epoch(0)
            return dl

    dm = OffsetEpochDataModule(**data)
    dm.setup("fit")
    mod = PinSageModule(in_channels=dm.num_features, num_items=dm.num_items, num_layers=dm.num_layers, **model)
    return dm, mod


def ours_worker(batch_size: int, num_workers: int, steps: int, warmup: int, hard_epoch: int,
                profile: str = "") -> dict:
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import pytorch_lightning as pl
    import torch

    dm, mod = _build(batch_size, num_workers, hard_epoch)

    class Timer(pl.Callback):
        def __init__(self):
            self.start, self.end, self.pairs, self.negs = [], [], [], []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.start.append(time.perf_counter())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.end.append(time.perf_counter())
            self.pairs.append(int(batch.query.numel()))
            h = int(batch.hard_neg.shape[1]) if batch.hard_neg.dim() == 2 else 0
            self.negs.append((int(batch.easy_neg.numel()), h))

    timer = Timer()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=warmup + steps, max_epochs=-1,
                         limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         use_distributed_sampler=False, callbacks=[timer])
    trainer.fit(mod, datamodule=dm)
    w = warmup
    t0 = timer.end[w - 1]
    elapsed = timer.end[-1] - t0
    wait = sum(timer.start[i] - timer.end[i - 1] for i in range(w, len(timer.start)))
    n = len(timer.start) - w
    pairs = sum(timer.pairs[w:])
    easy, hard = timer.negs[-1]
    res = {"steps": n, "elapsed_s": elapsed, "pairs": pairs, "pairs_per_s": pairs / elapsed,
           "steps_per_s": n / elapsed, "data_wait_s": wait, "data_wait_share": wait / elapsed,
           "easy_negatives_per_pair": easy, "hard_negatives_per_pair": hard,
           "params": sum(p.numel() for p in mod.parameters()), "torch_threads": torch.get_num_threads(),
           "hidden": mod.hparams.hidden_channels, "out": mod.hparams.out_channels,
           "in_channels": dm.num_features}
    if profile:
        res["profile"] = _profile_step(mod, dm, profile)
    return res


def _profile_step(mod, dm, out_txt: str) -> dict:
    """Per-step split: batch build (in-process, as a worker does it) vs forward/backward/optimiser,
    plus the torch.profiler op table of the model step (written to ``out_txt``)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    data = dm.train_dataset()
    sampler = dm._train_sampler
    idx = next(iter(sampler))
    opt = torch.optim.Adam(mod.parameters(), lr=1e-3)
    mod.train()
    t = {"batch_build_s": [], "forward_s": [], "backward_s": [], "optimizer_s": []}
    for rep in range(4):
        t0 = time.perf_counter()
        batch = data[idx]
        t1 = time.perf_counter()
        z = mod.model(batch.x, batch.node_ids, batch.blocks)
        z_hard = z[batch.hard_neg] if batch.hard_neg.numel() else None
        z_easy = z[batch.easy_neg] if batch.easy_neg.numel() else None
        loss, _ = mod.loss_fn(z[batch.query], z[batch.pos], z_easy, z_hard)
        t2 = time.perf_counter()
        opt.zero_grad()
        loss.backward()
        t3 = time.perf_counter()
        opt.step()
        t4 = time.perf_counter()
        if rep:
            for k, v in zip(t, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                t[k].append(v)
    sizes = {"n_nodes_layer0": int(batch.x.shape[0]), "x_dim": int(batch.x.shape[1]),
             "edges_per_block": [int(b.edge_index.shape[1]) for b in batch.blocks],
             "block_sizes": [list(map(int, b.size)) for b in batch.blocks]}
    reps = 3
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            z = mod.model(batch.x, batch.node_ids, batch.blocks)
            z_hard = z[batch.hard_neg] if batch.hard_neg.numel() else None
            z_easy = z[batch.easy_neg] if batch.easy_neg.numel() else None
            loss, _ = mod.loss_fn(z[batch.query], z[batch.pos], z_easy, z_hard)
            opt.zero_grad()
            loss.backward()
            opt.step()
    ka = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in ka) or 1.0
    top_ops = [{"op": e.key, "self_ms": round(e.self_cpu_time_total / 1e3 / reps, 2), "calls": e.count // reps,
                "share": round(e.self_cpu_time_total / total, 3)} for e in ka[:12]]
    if out_txt:
        Path(out_txt).write_text(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    med = {k: sorted(v)[len(v) // 2] for k, v in t.items()}
    return {**{k: round(v, 4) for k, v in med.items()}, **sizes, "top_ops_one_step": top_ops}


# ----------------------------------------------------------------------------------------------
# parent: alternate ours / DGL subprocesses
# ----------------------------------------------------------------------------------------------


def _run_json(cmd, env, timeout, out_path) -> dict:
    t0 = time.time()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0 or not os.path.exists(out_path):
        raise RuntimeError(f"{cmd[:3]} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    r = json.load(open(out_path))
    r["process_wall_s"] = time.time() - t0
    return r


def run_ours(a, bs, nw, hard_epoch, tmp, profile="") -> dict:
    out = os.path.join(tmp, f"ours-{bs}-{nw}-{hard_epoch}.json")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--ours-worker", out, "--batch-sizes", str(bs),
           "--workers", str(nw), "--steps", str(a.steps), "--warmup", str(a.warmup),
           "--hard-epoch", str(hard_epoch)] + (["--profile-out", profile] if profile else [])
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_WAIT_POLICY="PASSIVE", WANDB_MODE="disabled")
    return _run_json(cmd, env, 600, out)


def run_dgl(a, bs, nw, tmp, data, model) -> dict:
    out = os.path.join(tmp, f"dgl-{bs}-{nw}.json")
    cmd = [a.dgl_python, os.path.join(a.dgl_dir, "bench_dgl.py"), str(a.warmup), out,
           os.path.join(a.dgl_dir, "ml100k"), "--hidden-dims", str(model["hidden_channels"]),
           "--num-layers", str(data["num_layers"]), "--num-neighbors", str(data["num_neighbors"]),
           "--num-random-walks", str(data["num_walks"]), "--random-walk-length", str(data["walk_length"]),
           "--random-walk-restart-prob", str(data["restart_prob"]), "--batch-size", str(bs),
           "--num-workers", str(nw), "--batches-per-epoch", str(a.warmup + a.steps), "--num-epochs", "1"]
    env = dict(os.environ, DGL_SKIP_GRAPHBOLT="1", OMP_WAIT_POLICY="PASSIVE")
    env.pop("PYTHONPATH", None)
    r = _run_json(cmd, env, 600, out)
    r["command"] = " ".join(cmd[1:])
    return r


def _note(o: dict, nw: int) -> str:
    h = o["hard_negatives_per_pair"]
    return (f"ours: {o['easy_negatives_per_pair']} shared easy + {h} hard negatives per pair "
            f"({'curriculum epoch 0' if h == 0 else 'curriculum at its cap'}); DGL: 1 uniform negative per pair; "
            f"{nw} DataLoader workers on both sides; pairs/s = positive pairs / wall time of the measured steps")


def _machine() -> dict:
    import torch

    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "torch": torch.__version__}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dgl-python", default="/tmp/dglvenv/bin/python")
    p.add_argument("--dgl-dir", default="/tmp/dgl-pinsage")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[512, 1024])
    p.add_argument("--workers", type=int, nargs="+", default=[2, 0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--hard-epoch", type=int, default=None,
                   help="(worker) curriculum epoch; parent: also measure ours at this epoch (bs[0], each workers)")
    p.add_argument("--profile", action="store_true", help="profile one of our training steps")
    p.add_argument("--profile-out", default="")
    p.add_argument("--ours-worker", default="")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "training.json"))
    a = p.parse_args(argv)

    if a.ours_worker:
        r = ours_worker(a.batch_sizes[0], a.workers[0], a.steps, a.warmup, a.hard_epoch or 0, a.profile_out)
        json.dump(r, open(a.ours_worker, "w"))
        return 0

    data, model = _settings()
    have_dgl = os.path.exists(a.dgl_python) and os.path.exists(os.path.join(a.dgl_dir, "bench_dgl.py"))
    machine = _machine()
    machine["load_average_at_start"] = list(os.getloadavg())
    rows, t_start = [], time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for bs in a.batch_sizes:
            for nw in a.workers:
                la0 = os.getloadavg()[0]
                ours = run_ours(a, bs, nw, 0, tmp)
                print(f"ours bs={bs} workers={nw}: {ours['pairs_per_s']:.0f} pairs/s, "
                      f"wait {ours['data_wait_share']:.2f}", flush=True)
                dgl = run_dgl(a, bs, nw, tmp, data, model) if have_dgl else None
                if dgl:
                    print(f"dgl  bs={bs} workers={nw}: {dgl['pairs_per_s']:.0f} pairs/s, "
                          f"wait {dgl['data_wait_share']:.2f}", flush=True)
                hard = None
                if a.hard_epoch and bs == a.batch_sizes[0]:
                    hard = run_ours(a, bs, nw, a.hard_epoch, tmp)
                    print(f"ours bs={bs} workers={nw} hard={hard['hard_negatives_per_pair']}: "
                          f"{hard['pairs_per_s']:.0f} pairs/s, wait {hard['data_wait_share']:.2f}", flush=True)
                la1 = os.getloadavg()[0]
                for o in ([ours] + ([hard] if hard else [])):
                    row = {"dataset": DATASET, "batch_size": bs, "num_workers": nw,
                           "ours_pairs_per_s": round(o["pairs_per_s"], 1),
                           "dgl_pairs_per_s": round(dgl["pairs_per_s"], 1) if dgl else None,
                           "speedup": round(o["pairs_per_s"] / dgl["pairs_per_s"], 2) if dgl else None,
                           "data_wait_share": round(o["data_wait_share"], 3),
                           "dgl_data_wait_share": round(dgl["data_wait_share"], 3) if dgl else None,
                           "ours_steps_per_s": round(o["steps_per_s"], 3),
                           "dgl_steps_per_s": round(dgl["steps_per_s"], 3) if dgl else None,
                           "ours_negatives_per_pair": {"easy_shared": o["easy_negatives_per_pair"],
                                                       "hard": o["hard_negatives_per_pair"]},
                           "dgl_negatives_per_pair": {"uniform": 1} if dgl else None,
                           "ours_params": o["params"],
                           "dgl_params": dgl.get("params") if dgl else None,
                           "load_average_1min": [round(la0, 2), round(la1, 2)],
                           "notes": _note(o, nw)}
                    if dgl:
                        row["dgl_mean_pairs_per_batch"] = round(dgl["mean_pairs_per_batch"], 1)
                    rows.append(row)
        profile = None
        if a.profile:
            prof_txt = os.path.join(tempfile.gettempdir(), "pinsage_training_profile.txt")
            pr = run_ours(a, a.batch_sizes[0], 0, a.hard_epoch or 0, tmp, profile=prof_txt)
            profile = {"batch_size": a.batch_sizes[0], "num_workers": 0,
                       "hard_negatives_per_pair": pr["hard_negatives_per_pair"],
                       "op_table": prof_txt, **pr.get("profile", {})}
            print(f"profile table: {prof_txt}", flush=True)
    machine["load_average_at_end"] = list(os.getloadavg())
    machine["wall_s"] = round(time.time() - t_start, 1)
    cmd = "python benchmarks/training.py " + " ".join(argv if argv is not None else sys.argv[1:])
    res = {"benchmark": "training throughput, positive pairs/s (ours vs DGL PinSAGE example)",
           "command": cmd, "machine": machine,
           "settings": {"steps": a.steps, "warmup": a.warmup, "data": data, "model": model},
           "rows": rows}
    if profile:
        res["profile"] = profile
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
