"""`pinsage fit` then `pinsage test` end to end on a tiny synthetic graph."""

import json

import pytest

from app.cli import main


def test_fit_writes_best_and_last_then_test_prints_metrics_json(tiny_run, capsys):
    run, last, args = tiny_run
    names = {p.name for p in run.rglob("*.ckpt")}
    assert "last.ckpt" in names and any(n.startswith("best") for n in names)
    capsys.readouterr()
    assert main(["test", *args, "--ckpt_path", str(last)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("pinsage/item/hit_rate@10", "pinsage/item/hit_rate@100", "pinsage/item/mrr", "pinsage/item/hr@10",
                "pinsage/item/ndcg@10", "pinsage/full/recall@20", "pinsage/ncf/hr@10",
                "popularity/item/hit_rate@10", "cooccurrence/item/mrr", "cooccurrence/full/recall@20"):
        assert key in out, key
    assert "pinsage/item/hit_rate@500" not in out  # catalogue of 400 items
    # planted communities: the trained model ranks held-out items far above chance (100/400) and
    # above the popularity list on the paper's scaled MRR
    assert out["pinsage/item/hit_rate@100"] > 0.5
    assert out["pinsage/item/mrr"] > out["popularity/item/mrr"]


def test_test_and_predict_report_the_same_keys(tiny_run, tmp_path, capsys):
    """One evaluation code path: `pinsage test`'s JSON and predict's metrics.json agree."""
    run, last, args = tiny_run
    capsys.readouterr()
    assert main(["test", *args, "--ckpt_path", str(last)]) == 0
    tested = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    out = tmp_path / "art"
    assert main(["predict", *args, "--ckpt_path", str(last), "--artifacts.output_dir", str(out)]) == 0
    predicted = json.loads((out / "metrics.json").read_text())
    metric_keys = {k for k in predicted if not k.endswith("/seconds")}
    assert metric_keys == {k for k in tested if not k.endswith("/seconds")}
    for k in metric_keys:
        assert abs(predicted[k] - tested[k]) < 1e-4, k


def test_user_queries_train_the_user_tower_end_to_end(tiny_run, tmp_path, capsys):
    """queries=users: whole-catalogue steps, a learned user encoder, and the full-ranking protocol
    scoring it above popularity; recommend --user answers with the same encoder."""
    _, _, args = tiny_run
    root = tmp_path / "users-run"
    user_args = [*args, "--data.queries=users", "--data.batch_size=256", "--model.loss=softmax",
                 "--model.user_encoder=linear", "--model.skip=true", "--model.val_protocols=[item,full]", "--model.lr=0.02",
                 "--trainer.default_root_dir", str(root)]
    assert main(["fit", *user_args, "--trainer.max_epochs=4"]) == 0
    last = next(p for p in root.rglob("last.ckpt"))
    capsys.readouterr()
    assert main(["test", *user_args, "--ckpt_path", str(last)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["pinsage/full/recall@20"] > out["popularity/full/recall@20"]
    import torch

    state = torch.load(last, weights_only=True)["state_dict"]
    assert not torch.allclose(state["user_encoder.lin.weight"], torch.eye(16))  # the encoder learned


def test_checkpoint_of_another_shape_is_refused_by_the_cli(tiny_run, capsys):
    run, last, args = tiny_run
    assert main(["test", *args, "--model.hidden_channels=64", "--ckpt_path", str(last)]) == 2
    assert "another model shape (hidden_channels: checkpoint 32 vs config 64)" in capsys.readouterr().err


def test_missing_dataset_is_one_clear_error(tiny_run, tmp_path, capsys):
    _, _, args = tiny_run
    assert main(["fit", *args, "--data.dataset=movielens-100k", f"--data.root={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "pinsage fit: error:" in err and "missing file 'u.data'" in err


@pytest.mark.slow  # a wandb offline run: ~40 s
def test_test_json_is_the_last_stdout_line_with_the_configured_wandb_logger(tiny_run, tmp_path):
    """The shipped configs log to wandb offline, which prints "You can sync this run" lines when
    the run ends; `pinsage test`'s JSON must still be the last stdout line (a real process, so
    that wandb's exit hooks run)."""
    import os
    import subprocess
    import sys

    from tests.app.conftest import PROJECT, TINY

    _, last, _ = tiny_run
    args = [a for a in TINY if a != "--trainer.logger=false"]
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(PROJECT), "PINSAGE_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli", "test", *args, "--data.cache_dir", str(tmp_path / "cache"),
         "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path / "wb"),
         "--ckpt_path", str(last)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "wb" / "wandb").is_dir()  # the wandb logger did run
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "pinsage/item/mrr" in out


def test_teacher_trains_through_the_cli(tiny_run, tmp_path, capsys, monkeypatch):
    """model.teacher_loss: the set objective's steps add EASE's cross-entropy (each step calls it)
    and the fitted model still ranks users above popularity; without history_dropout it is one
    clear error at the edge."""
    import models.module as module

    calls = []

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    real = module.teacher_cross_entropy
    monkeypatch.setattr(module, "teacher_cross_entropy", counted)
    _, _, args = tiny_run
    root = tmp_path / "teacher-run"
    user_args = [*args, "--data.queries=users", "--data.user_queries=leave_one_out", "--data.batch_size=256",
                 "--model.loss=softmax", "--model.skip=true", "--model.val_protocols=[item,full]", "--model.lr=0.02",
                 "--model.history_dropout=0.5", "--model.mask_own_negatives=true", "--model.teacher_loss=0.5",
                 "--model.teacher_top=5", "--model.teacher_lam=10", "--trainer.default_root_dir", str(root)]
    assert main(["fit", *user_args, "--trainer.max_epochs=4"]) == 0
    assert len(calls) >= 4
    last = next(p for p in root.rglob("last.ckpt"))
    capsys.readouterr()
    assert main(["test", *user_args, "--ckpt_path", str(last)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["pinsage/full/recall@20"] > out["popularity/full/recall@20"]
    bad = [*args, "--data.queries=users", "--model.loss=softmax", "--model.teacher_loss=0.5",
           "--trainer.default_root_dir", str(tmp_path / "bad")]
    assert main(["fit", *bad, "--trainer.max_epochs=1"]) == 2
    assert "teacher_loss=0.5 needs history_dropout > 0" in capsys.readouterr().err
