"""Lightning callbacks the CLI adds to every ``pinsage fit`` (each is a config section):

* ``metrics_log`` (:class:`EpochMetricsLog`): with ``--metrics_log.path FILE``, one JSON line per
  validation epoch holding every scalar metric logged so far (``val/*``, the last ``train/*``,
  ``lr``) plus ``epoch`` and ``step``. ``pinsage sweep`` reads it while a trial runs (pruning)
  and after (trials.csv); ``pinsage report`` reads it as training curves when no logger files
  are there. Off (no file) by default.
* ``figures`` (:class:`WandbFigures`): at the end of fit, the report's figures (training curves,
  embedding map, neighbourhood gallery, metric-vs-baseline bars on the validation split) logged
  to wandb as images (``report/<figure>``). Only with a logger that has ``log_image``
  (``WandbLogger``) and matplotlib installed (``pip install -e ".[tools]"``); on rank 0 only.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Dict, List, Optional

import pytorch_lightning as pl


def _scalars(metrics) -> Dict[str, float]:
    out = {}
    for k, v in metrics.items():
        try:
            f = float(v)
        except (TypeError, ValueError, RuntimeError):  # non-scalar tensors
            continue
        if math.isfinite(f):
            out[str(k)] = f
    return out


def _log_lines() -> bool:
    """One line per epoch on stderr: when it is not a terminal (a log file, CI) and not ``--quiet``."""
    from datamodules.progress import progress_enabled

    return os.environ.get("PINSAGE_QUIET", "") in ("", "0") and not progress_enabled()


#: the metrics of the per-epoch line (those present)
EPOCH_LINE_KEYS = ("train/loss", "val/pinsage/item/mrr", "val/pinsage/item/hit_rate@100",
                   "val/pinsage/full/recall@20", "val/pinsage/ncf/hr@10")


def epoch_line(rec: Dict[str, float], max_epochs: Optional[int] = None) -> str:
    of = f"/{max_epochs}" if max_epochs and max_epochs > 0 else ""
    vals = " ".join(f"{k.replace('val/pinsage/', 'val/')}={rec[k]:.4f}" for k in EPOCH_LINE_KEYS if k in rec)
    return f"pinsage: epoch {rec['epoch'] + 1}{of} step {rec['step']}: {vals}".rstrip()


class EpochMetricsLog(pl.Callback):
    """Append one JSON line per validation epoch to ``path`` (nothing when ``path`` is None).

    Args:
        path: the JSON-lines file (its folder is created).
    """

    def __init__(self, path: Optional[str] = None):
        super().__init__()
        self.path = path

    def on_validation_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        rec = {"epoch": int(trainer.current_epoch), "step": int(trainer.global_step)}
        rec.update(_scalars(trainer.callback_metrics))
        if _log_lines():  # no progress bar to watch (output to a file): one line per epoch
            print(epoch_line(rec, trainer.max_epochs), file=sys.stderr, flush=True)
        if not self.path:
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "a") as f:  # one whole line per write: a reader never sees half a record
            f.write(json.dumps(rec, sort_keys=True) + "\n")
            f.flush()


class WandbFigures(pl.Callback):
    """Log the report's figures to wandb as images at the end of fit.

    Args:
        enabled: switch it off with ``--figures.enabled false``.
        max_items: items on the embedding map (a seeded sample of larger catalogues).
        num_queries: query items in the neighbourhood gallery.
        metrics: also score the model and the baselines on the validation split for the bars
            (the ``item`` protocol: one ranking pass per model).
    """

    def __init__(self, enabled: bool = True, max_items: int = 3000, num_queries: int = 4, metrics: bool = True):
        super().__init__()
        self.enabled = bool(enabled)
        self.max_items = int(max_items)
        self.num_queries = int(num_queries)
        self.metrics = bool(metrics)
        self._history: List[Dict[str, float]] = []

    def _active(self, trainer) -> bool:
        return self.enabled and trainer.is_global_zero and trainer.logger is not None \
            and hasattr(trainer.logger, "log_image")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._active(trainer):
            return
        every = max(int(getattr(trainer, "log_every_n_steps", 50) or 50), 1)
        if trainer.global_step % every == 0:
            rec = {k: v for k, v in _scalars(trainer.callback_metrics).items() if not k.startswith("val/")}
            rec.update(step=float(trainer.global_step), epoch=float(trainer.current_epoch))
            self._history.append(rec)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not self._active(trainer) or trainer.sanity_checking:
            return
        rec = {k: v for k, v in _scalars(trainer.callback_metrics).items() if k.startswith("val/")}
        rec.update(step=float(trainer.global_step), epoch=float(trainer.current_epoch))
        self._history.append(rec)

    def on_fit_end(self, trainer, pl_module) -> None:
        if not self._active(trainer):
            return
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            from pytorch_lightning.utilities import rank_zero_warn

            rank_zero_warn("figures: matplotlib is not installed (pip install -e '.[tools]'); no figures logged")
            return
        import pandas as pd

        from datamodules.progress import progress_enabled

        from .report_figures import make_figures
        from .report_inputs import fit_report_inputs

        if _log_lines() or progress_enabled():
            print("pinsage: drawing the end-of-fit figures for wandb (embedding map, neighbourhood gallery, "
                  "validation bars; --figures.enabled false skips them)", file=sys.stderr, flush=True)
        dm = trainer.datamodule
        inputs = fit_report_inputs(pl_module.model, dm, pd.DataFrame(self._history), evaluate=self.metrics)
        figs = make_figures(inputs, max_items=self.max_items, num_queries=self.num_queries)
        for name, fig in figs.items():
            trainer.logger.log_image(key=f"report/{name}", images=[_rgb(fig)])
        import matplotlib.pyplot as plt

        for fig in figs.values():
            plt.close(fig)


def _rgb(fig):
    import numpy as np

    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
