"""Helpers for the app tests that run ``pinsage fit`` in subprocesses (DDP, resume).

:class:`Recorder` is a callback loaded with ``--trainer.callbacks+=tests.app.ddp_script.Recorder``;
it writes ``$PINSAGE_RECORD_DIR/rank<r>[-<tag>].pt`` holding, per training batch, the global
(query, positive) item pairs, the number of hard negatives per query, the LR and global step, plus
the initial and final weights, ``peak_lr()``, ``world_size`` and the datamodule's ``train_pairs``.
"""

from __future__ import annotations

import os

import pytorch_lightning as pl
import torch


def _weights(module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


class Recorder(pl.Callback):
    def __init__(self, tag: str = "") -> None:
        self.tag = tag
        self.rec = {"batches": []}

    def on_train_start(self, trainer, pl_module) -> None:
        self.rec.update(
            rank=trainer.global_rank, world_size=trainer.world_size, start_step=trainer.global_step,
            start_epoch=trainer.current_epoch, peak_lr=pl_module.peak_lr(),
            initial=_weights(pl_module), train_pairs=trainer.datamodule.train_pairs.clone(),
            batch_size=trainer.datamodule.batch_size, seed=trainer.datamodule.seed,
            optimizer_state=bool(trainer.optimizers[0].state),
        )

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        hard = int(batch.hard_neg.shape[1]) if batch.hard_neg.dim() == 2 else 0
        self.rec["batches"].append(dict(
            epoch=trainer.current_epoch, step=trainer.global_step,
            lr=trainer.optimizers[0].param_groups[0]["lr"],
            query=batch.node_ids[batch.query].cpu().clone(), pos=batch.node_ids[batch.pos].cpu().clone(),
            hard=hard,
        ))

    def on_validation_end(self, trainer, pl_module) -> None:
        self.rec.setdefault("val", []).append(
            {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})

    def on_train_end(self, trainer, pl_module) -> None:
        self.rec.update(final=_weights(pl_module), end_step=trainer.global_step)
        out = os.environ["PINSAGE_RECORD_DIR"]
        os.makedirs(out, exist_ok=True)
        suffix = f"-{self.tag}" if self.tag else ""
        torch.save(self.rec, os.path.join(out, f"rank{trainer.global_rank}{suffix}.pt"))
