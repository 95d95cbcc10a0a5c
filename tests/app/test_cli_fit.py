"""`pinsage fit` then `pinsage test` end to end on a tiny synthetic graph."""

import json

from app.cli import main


def test_fit_writes_best_and_last_then_test_prints_metrics_json(tiny_run, capsys):
    run, last, args = tiny_run
    names = {p.name for p in run.rglob("*.ckpt")}
    assert "last.ckpt" in names and any(n.startswith("best") for n in names)
    capsys.readouterr()
    assert main(["test", *args, "--ckpt_path", str(last)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("test/hit_rate@10", "test/hit_rate@100", "test/mrr", "test/hr@10", "test/ndcg@10",
                "test/popularity/hit_rate@10", "test/cooccurrence/mrr"):
        assert key in out, key
    assert "test/hit_rate@500" not in out  # catalogue of 400 items
    # planted communities: the trained model ranks held-out items far above chance (100/400) and
    # above the popularity list on the paper's scaled MRR
    assert out["test/hit_rate@100"] > 0.5
    assert out["test/mrr"] > out["test/popularity/mrr"]


def test_checkpoint_of_another_shape_is_refused_by_the_cli(tiny_run, capsys):
    run, last, args = tiny_run
    assert main(["test", *args, "--model.hidden_channels=64", "--ckpt_path", str(last)]) == 2
    assert "another model shape (hidden_channels: checkpoint 32 vs config 64)" in capsys.readouterr().err


def test_missing_dataset_is_one_clear_error(tiny_run, tmp_path, capsys):
    _, _, args = tiny_run
    assert main(["fit", *args, "--data.dataset=movielens-100k", f"--data.root={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "pinsage fit: error:" in err and "missing file 'u.data'" in err


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
    assert "test/mrr" in out
