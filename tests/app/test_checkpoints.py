"""Checkpoints through the real CLI: last.ckpt is the last completed epoch; a bad --ckpt_path is
one error line naming the file; --model.* evaluation/optimisation keys win over the checkpoint's."""

import json
from pathlib import Path

import pytest
import torch

from app.cli import main

PROJECT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # 6 epochs: ~15 s
def test_last_ckpt_is_the_last_completed_epoch_even_when_val_stops_improving(tiny_args, tmp_path):
    # a learning rate of ~0 keeps val/mrr flat, so the monitored checkpoint saves only epoch 0;
    # last.ckpt must still be epoch 2 (Lightning's save_last alone would leave it at epoch 0)
    root = tmp_path / "run"
    assert main(["fit", *tiny_args(root), "--trainer.max_epochs=3", "--model.lr=1e-12"]) == 0
    last = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)
    best = [p for p in (root / "checkpoints").iterdir() if p.name.startswith("best")]
    assert len(best) == 1 and torch.load(best[0], weights_only=True)["epoch"] == 0
    assert last["epoch"] == 2
    assert last["global_step"] == 3 * torch.load(best[0], weights_only=True)["global_step"]


def test_last_ckpt_is_written_every_epoch_when_validation_is_not(tiny_args, tmp_path):
    # with validation every 1000th epoch (an ablation run) Lightning defers every ModelCheckpoint
    # save to a validation end that never comes: without save_on_train_epoch_end there is no
    # last.ckpt at all
    root = tmp_path / "run"
    assert main(["fit", *tiny_args(root), "--trainer.max_epochs=2", "--trainer.check_val_every_n_epoch=1000"]) == 0
    last = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 1


@pytest.mark.parametrize("content,what", [
    (b"", "is empty"),
    (b"garbage, not a checkpoint" * 10, "cannot be read as a checkpoint"),
    ("truncated", "cannot be read as a checkpoint"),
    ("no-state-dict", "is not a PinSage Lightning checkpoint"),
])
@pytest.mark.parametrize("command", ["fit", "test", "predict"])
def test_bad_checkpoint_is_one_error_line_naming_the_file(tiny_run, tmp_path, capsys, command, content, what):
    _, last, args = tiny_run
    bad = tmp_path / "bad.ckpt"
    if content == "truncated":
        data = last.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif content == "no-state-dict":
        torch.save({"epoch": 1}, bad)
    else:
        bad.write_bytes(content)
    extra = ["--artifacts.output_dir", str(tmp_path / "art")] if command == "predict" else []
    assert main([command, *args, "--ckpt_path", str(bad), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"pinsage {command}: error: --ckpt_path '{bad}'") and what in err[0]
    assert "Traceback" not in "\n".join(err)


def test_model_eval_overrides_apply_with_ckpt_path(tiny_run, capsys):
    _, last, args = tiny_run
    capsys.readouterr()
    assert main(["test", *args, "--ckpt_path", str(last), "--model.eval_ks", "[7]",
                 "--model.baselines", "[popularity]"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "pinsage/item/hit_rate@7" in out and "popularity/item/hit_rate@7" in out
    assert "pinsage/item/hit_rate@10" not in out and not any(k.startswith("cooccurrence/") for k in out)


def test_model_architecture_still_comes_from_the_checkpoint(tiny_run, capsys):
    _, last, args = tiny_run
    capsys.readouterr()
    assert main(["test", *args, "--ckpt_path", str(last)]) == 0
    plain = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # importance_pooling changes what the saved weights compute: the checkpoint's value is used
    assert main(["test", *args, "--ckpt_path", str(last), "--model.importance_pooling=false"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {k: v for k, v in again.items() if not k.endswith("seconds")} == \
        {k: v for k, v in plain.items() if not k.endswith("seconds")}


def test_second_fit_into_the_same_folder_is_refused_not_mixed(tiny_args, tmp_path, capsys):
    """issue 20: two `pinsage fit` runs into one folder mixed their best-*/last checkpoints."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root = tmp_path / "run"
    args = tiny_args(root)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "WANDB_MODE": "disabled"}
    first = subprocess.Popen([sys.executable, "-m", "app.cli", "fit", *args, "--trainer.max_epochs=200"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(1200):  # the first run is training (it wrote a checkpoint)
            if (root / "checkpoints" / "last.ckpt").is_file() or first.poll() is not None:
                break
            time.sleep(0.1)
        assert first.poll() is None, first.stderr.read().decode()[-2000:]
        capsys.readouterr()
        assert main(["fit", *args, "--trainer.max_epochs=1"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "another `pinsage fit`" in err[0] and str(first.pid) in err[0], err
        # a run in another folder is not affected
        assert main(["fit", *tiny_args(tmp_path / "other"), "--trainer.max_epochs=1"]) == 0
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    # kill -9 released the lock: the folder can be trained into (resumed) again
    assert main(["fit", *args, "--trainer.max_epochs=1"]) == 0


def _fsize_limited(limit):
    """preexec_fn: writes past ``limit`` bytes in one file fail with EFBIG (a disk that fills up)."""
    def apply():
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_full_disk_during_fit_is_one_line_and_leaves_no_truncated_checkpoint(tiny_run, tmp_path):
    """issue 20 item 13: a checkpoint that does not fit left a truncated best-*.ckpt and a traceback."""
    import os
    import subprocess
    import sys

    run, last, args = tiny_run
    root = tmp_path / "full"
    args = [a if a != str(run) else str(root) for a in args]  # the run's cache (built) is reused
    assert str(root) in args
    size = last.stat().st_size
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "WANDB_MODE": "disabled"}
    p = subprocess.run([sys.executable, "-m", "app.cli", "fit", *args, "--trainer.max_epochs=1"], env=env,
                       capture_output=True, text=True, timeout=600, preexec_fn=_fsize_limited(size // 2))
    err = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert err[-1].startswith("pinsage fit: error: cannot write") and ".ckpt" in err[-1], err
    assert [f.name for f in (root / "checkpoints").iterdir() if f.name.endswith(".ckpt") or ".tmp-" in f.name] == []


def test_full_disk_during_predict_is_one_line_and_keeps_the_old_artifacts(tiny_run, tmp_path):
    """issue 20 item 13: a full disk during predict was a traceback."""
    import os
    import subprocess
    import sys

    run, last, args = tiny_run
    out = tmp_path / "art"
    assert main(["predict", *args, "--ckpt_path", str(last), "--artifacts.output_dir", str(out),
                 "--artifacts.evaluate", "false"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "WANDB_MODE": "disabled"}
    p = subprocess.run([sys.executable, "-m", "app.cli", "predict", *args, "--ckpt_path", str(last),
                        "--artifacts.output_dir", str(out), "--artifacts.evaluate", "false"], env=env,
                       capture_output=True, text=True, timeout=600, preexec_fn=_fsize_limited(8000))
    err = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert err[-1].startswith("pinsage predict: error: cannot write"), err[-3:]
    assert {q.name: q.read_bytes() for q in out.iterdir()} == before  # the old set is whole
    assert not [q for q in tmp_path.iterdir() if q.name.startswith(".art")]  # no temp folder left
