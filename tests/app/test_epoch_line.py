"""issue 20 item 19: with output to a file there was no per-epoch line (a user tailing a log saw nothing)."""

from types import SimpleNamespace

import torch

from app.callbacks import EpochMetricsLog


def _trainer(epoch):
    return SimpleNamespace(sanity_checking=False, is_global_zero=True, current_epoch=epoch, global_step=10 * (epoch + 1),
                           max_epochs=3, callback_metrics={"val/pinsage/item/mrr": torch.tensor(0.25),
                                                           "train/loss": torch.tensor(1.5)})


def test_one_stderr_line_per_epoch_when_not_a_terminal(capsys, monkeypatch):
    monkeypatch.delenv("PINSAGE_QUIET", raising=False)
    monkeypatch.delenv("PINSAGE_PROGRESS", raising=False)
    cb = EpochMetricsLog()  # no --metrics_log.path: the line still comes
    for e in range(3):
        cb.on_validation_end(_trainer(e), None)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("pinsage: epoch")]
    assert len(lines) == 3 and lines[0] == "pinsage: epoch 1/3 step 10: train/loss=1.5000 val/item/mrr=0.2500"


def test_no_epoch_line_with_quiet(capsys, monkeypatch):
    monkeypatch.setenv("PINSAGE_QUIET", "1")
    EpochMetricsLog().on_validation_end(_trainer(0), None)
    assert capsys.readouterr().err == ""
