"""Checkpoints and resume: ``pinsage fit ... --ckpt_path <last.ckpt>`` continues where it stopped.

Three tiny fits through the CLI, each with :class:`tests.app.ddp_script.Recorder`:
A) 2 epochs uninterrupted; B) 1 epoch (saves last.ckpt); C) B's last.ckpt resumed to 2 epochs.
C starts at B's global step and epoch 1, with Adam's moments restored, the LR schedule where A has it
at that step, the curriculum's hard negatives of epoch 1, the same batches as A, and ends with A's weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from app.cli import main

PROJECT = Path(__file__).resolve().parents[2]

TINY_READER = {"num_users": 200, "num_items": 120, "num_interactions": 2500, "num_communities": 4,
               "feature_dim": 8, "seed": 0}


def args(tmp: Path, run: str) -> list:
    return [
        "--config", str(PROJECT / "configs" / "synthetic.yaml"), "--seed_everything=0",
        "--data.reader_args", json.dumps(TINY_READER),
        "--data.batch_size=64", "--data.num_neighbors=5", "--data.num_walks=5",
        "--data.num_easy_negatives=30", "--data.max_hard_negatives=1", "--data.num_workers=0",
        "--data.persistent_workers=false", "--data.eval_batch_size=512", f"--data.cache_dir={tmp / 'cache'}",
        "--model.hidden_channels=16", "--model.out_channels=8", "--model.lr=0.01",
        "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={tmp / run}", "--trainer.accelerator=cpu", "--trainer.devices=1",
        "--trainer.callbacks+=tests.app.ddp_script.Recorder",
    ]


def fit(tmp: Path, run: str, monkeypatch, *extra) -> dict:
    monkeypatch.setenv("PINSAGE_RECORD_DIR", str(tmp / run / "rec"))
    assert main(["fit", *args(tmp, run), *extra]) == 0
    return torch.load(tmp / run / "rec" / "rank0.pt", weights_only=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    mp = pytest.MonkeyPatch()
    mp.setenv("PINSAGE_CACHE", str(tmp / "cache"))
    try:
        a = fit(tmp, "a", mp, "--trainer.max_epochs=2")
        b = fit(tmp, "b", mp, "--trainer.max_epochs=1")
        last = tmp / "b" / "checkpoints" / "last.ckpt"
        assert last.is_file()
        c = fit(tmp, "c", mp, "--trainer.max_epochs=2", "--ckpt_path", str(last))
        yield tmp, a, b, c, last
    finally:
        mp.undo()


def test_resume_continues_step_schedule_curriculum_and_matches_uninterrupted_run(runs):
    tmp, a, b, c, last = runs
    steps_per_epoch = len(b["batches"])
    assert steps_per_epoch > 1 and b["end_step"] == steps_per_epoch
    assert len(a["batches"]) == 2 * steps_per_epoch
    # the resumed run starts at the interrupted run's global step, in epoch 1, optimiser state restored
    assert (c["start_step"], c["start_epoch"]) == (steps_per_epoch, 1)
    assert c["optimizer_state"] and not a["optimizer_state"]
    assert len(c["batches"]) == steps_per_epoch and c["end_step"] == a["end_step"] == 2 * steps_per_epoch
    first = c["batches"][0]
    assert (first["step"], first["epoch"]) == (steps_per_epoch, 1)
    # curriculum: epoch index 0 has no hard negatives, epoch index 1 min(1, max_hard_negatives=1)
    assert all(x["hard"] == 0 for x in b["batches"])
    assert first["hard"] == 1
    resumed_a = a["batches"][steps_per_epoch:]
    for xa, xc in zip(resumed_a, c["batches"]):
        # LR schedule: the same LR at the same step as the uninterrupted run (warmup done -> decay)
        assert (xc["step"], xc["epoch"], xc["hard"]) == (xa["step"], xa["epoch"], xa["hard"])
        assert xc["lr"] == pytest.approx(xa["lr"], rel=1e-12)
        assert torch.equal(xc["query"], xa["query"]) and torch.equal(xc["pos"], xa["pos"])
    assert first["lr"] != pytest.approx(b["batches"][0]["lr"])  # not restarted from warmup
    # weights at the interruption point = the uninterrupted run's after epoch 0 (B == A's first half)
    for k in b["final"]:
        assert torch.equal(b["initial"][k], a["initial"][k]), k
        assert torch.equal(c["initial"][k], b["final"][k]), k
    # deterministic pipeline: resuming ends with the uninterrupted run's weights
    for k in a["final"]:
        torch.testing.assert_close(c["final"][k], a["final"][k], rtol=1e-5, atol=1e-6, msg=k)


def test_checkpoints_load_weights_only(runs):
    tmp = runs[0]
    ckpts = sorted(tmp.rglob("*.ckpt"))
    names = {p.name for p in ckpts}
    assert "last.ckpt" in names and any(n.startswith("best") for n in names)
    for p in ckpts:
        ck = torch.load(p, weights_only=True)
        assert "state_dict" in ck and "optimizer_states" in ck and "lr_schedulers" in ck


def test_checkpoint_of_another_model_shape_is_one_clear_error(runs, tmp_path):
    import pytorch_lightning as pl

    from datamodules.datamodule import PinSageDataModule
    from models.module import PinSageModule

    tmp, _, _, _, last = runs
    shape_error = r"another model shape \(hidden_channels: checkpoint 16 vs config 32\)"
    # load_from_checkpoint(..., hidden_channels=32) merges the override into the checkpoint's
    # hyper_parameters before on_load_checkpoint runs, so the hparams check cannot see the
    # difference; torch's size-mismatch error (or the module's ValueError once it also compares
    # state_dict shapes) is what the user gets - either way it names the shapes
    with pytest.raises((ValueError, RuntimeError), match=r"shape"):
        PinSageModule.load_from_checkpoint(str(last), hidden_channels=32, weights_only=True)
    # resuming a fit into a model of another shape: the same single error, before any step
    dm = PinSageDataModule(dataset="synthetic", cache_dir=str(tmp / "cache"), reader_args=TINY_READER, batch_size=64,
                           num_neighbors=5, num_walks=5, num_easy_negatives=30, max_hard_negatives=1,
                           num_workers=0, persistent_workers=False, eval_batch_size=512)
    dm.prepare_data()
    dm.setup("fit")
    model = PinSageModule(in_channels=dm.num_features, num_items=dm.num_items, hidden_channels=32, out_channels=8)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, default_root_dir=str(tmp_path),
                         use_distributed_sampler=False)
    with pytest.raises(ValueError, match=shape_error):
        trainer.fit(model, datamodule=dm, ckpt_path=str(last))
    assert trainer.global_step == 0
