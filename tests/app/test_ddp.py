"""``pinsage fit --trainer.accelerator=cpu --trainer.devices=2 --trainer.strategy=ddp`` (gloo).

Runs the real CLI in a subprocess (Lightning's DDP launcher re-executes it for rank 1) with the
:class:`tests.app.ddp_script.Recorder` callback, then checks from the per-rank records that
(a) the ranks' pair shards are disjoint, cover the pairs, and each rank trained on exactly its shard;
(b) after the steps the weights are identical on both ranks (and moved from the initial ones);
(c) a large global batch (2 x 256 = 512) runs with the linear-scaling peak LR.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.loaders import EpochBatchSampler

PROJECT = Path(__file__).resolve().parents[2]

TINY_READER = {"num_users": 200, "num_items": 120, "num_interactions": 2500, "num_communities": 4,
               "feature_dim": 8, "seed": 0}


def tiny_args(tmp: Path, batch_size: int = 64) -> list:
    return [
        "--config", str(PROJECT / "configs" / "synthetic.yaml"),
        "--data.reader_args", json.dumps(TINY_READER),
        f"--data.batch_size={batch_size}", "--data.num_neighbors=5", "--data.num_walks=5",
        "--data.num_easy_negatives=30", "--data.max_hard_negatives=1", "--data.num_workers=0",
        "--data.persistent_workers=false", "--data.eval_batch_size=512", f"--data.cache_dir={tmp / 'cache'}",
        "--model.hidden_channels=16", "--model.out_channels=8",
        "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={tmp / 'run'}", "--trainer.accelerator=cpu",
    ]


def run_ddp(tmp: Path, extra: list, timeout: int = 120) -> dict:
    rec = tmp / "rec"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT), os.environ.get("PYTHONPATH")])),
               PINSAGE_CACHE=str(tmp / "cache"), PINSAGE_RECORD_DIR=str(rec), WANDB_MODE="disabled",
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "app.cli", "fit", *tiny_args(tmp, *extra[:1]),
           "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.max_epochs=1",
           "--trainer.limit_val_batches=0", "--trainer.enable_checkpointing=false",
           "--trainer.callbacks=tests.app.ddp_script.Recorder", *extra[1:]]
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "distributed_backend=gloo" in proc.stdout + proc.stderr
    return {r: torch.load(rec / f"rank{r}.pt", weights_only=False) for r in (0, 1)}


def _pairs(q: torch.Tensor, p: torch.Tensor) -> Counter:
    return Counter(zip(q.tolist(), p.tolist()))


@pytest.mark.slow  # 2 gloo ranks: ~25 s
def test_ddp_ranks_train_on_disjoint_shards_and_hold_identical_weights(tmp_path):
    recs = run_ddp(tmp_path, [64])
    r0, r1 = recs[0], recs[1]
    assert (r0["rank"], r1["rank"]) == (0, 1) and r0["world_size"] == r1["world_size"] == 2
    pairs = r0["train_pairs"]
    assert torch.equal(pairs, r1["train_pairs"])

    # (a) disjoint shards covering every pair once; each rank trained on exactly its shard
    sampler = EpochBatchSampler(len(pairs), 64, seed=r0["seed"], shuffle=True)
    shards = {r: sampler.shard(0, r, 2) for r in (0, 1)}
    idx = {r: torch.as_tensor(np.concatenate(shards[r])) for r in (0, 1)}
    assert not set(idx[0].tolist()) & set(idx[1].tolist())
    assert sorted(idx[0].tolist() + idx[1].tolist()) == list(range(len(pairs)))
    for r, rec in recs.items():
        assert len(rec["batches"]) == len(shards[r]) > 1
        assert all(b["epoch"] == 0 for b in rec["batches"])
        trained = _pairs(torch.cat([b["query"] for b in rec["batches"]]), torch.cat([b["pos"] for b in rec["batches"]]))
        expected = _pairs(pairs[idx[r], 0], pairs[idx[r], 1])
        assert trained == expected, f"rank {r} did not train on its shard"
        # batch by batch, too
        for b, s in zip(rec["batches"], shards[r]):
            assert _pairs(b["query"], b["pos"]) == _pairs(pairs[s, 0], pairs[s, 1])

    # (b) same start, optimiser steps taken, identical weights on both ranks afterwards
    assert r0["end_step"] == r1["end_step"] == len(shards[0])
    for k in r0["initial"]:
        assert torch.equal(r0["initial"][k], r1["initial"][k]), k
        assert torch.equal(r0["final"][k], r1["final"][k]), k
    assert any(not torch.equal(r0["final"][k], r0["initial"][k]) for k in r0["final"])

    # linear scaling rule with the global batch (64 x 2 ranks) against the reference batch 512
    assert r0["peak_lr"] == pytest.approx(1e-3 * 128 / 512)


@pytest.mark.slow  # 2 gloo ranks: ~30 s
def test_ddp_large_global_batch_uses_linear_scaling_peak_lr(tmp_path):
    # global batch 512 = 2 ranks x 256; reference batch 256 -> peak LR = lr * 512 / 256
    recs = run_ddp(tmp_path, [256, "--model.lr=0.002", "--model.reference_batch_size=256"])
    for r, rec in recs.items():
        assert rec["world_size"] == 2
        assert rec["peak_lr"] == pytest.approx(0.002 * 512 / 256)
        steps = len(rec["batches"])
        assert steps == -(-len(rec["train_pairs"]) // 512) and steps >= 2
        assert all(b["query"].numel() <= 256 for b in rec["batches"]) and rec["batches"][0]["query"].numel() == 256
        # warmup over the (only) epoch climbs linearly to the peak
        lrs = [b["lr"] for b in rec["batches"]]
        assert lrs == pytest.approx([rec["peak_lr"] * (i + 1) / steps for i in range(steps)])
    for k in recs[0]["final"]:
        assert torch.equal(recs[0]["final"][k], recs[1]["final"][k]), k


@pytest.mark.slow  # 2 gloo ranks, 2 epochs with validation: ~40 s
def test_ddp_validation_metrics_reach_a_monitoring_checkpoint_on_every_rank(tmp_path):
    # validation on, a ModelCheckpoint monitoring val/pinsage/item/mrr: every rank must see the
    # metric (logged rank_zero_only, rank 1's checkpoint callback fails to find it)
    recs = run_ddp(tmp_path, [64, "--trainer.max_epochs=2", "--trainer.limit_val_batches=1.0",
                              "--trainer.enable_checkpointing=true",
                              "--trainer.callbacks+=pytorch_lightning.callbacks.ModelCheckpoint",
                              "--trainer.callbacks.monitor=val/pinsage/item/mrr", "--trainer.callbacks.mode=max",
                              "--trainer.callbacks.filename=best"])
    v0, v1 = recs[0]["val"], recs[1]["val"]
    assert len(v0) == len(v1) == 2
    assert all("val/pinsage/item/mrr" in v for v in v0 + v1)
    assert v0 == v1  # one evaluation, the same numbers on both ranks
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").is_file()

