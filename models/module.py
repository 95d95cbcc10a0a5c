"""The LightningModule: PinSage + max-margin loss + the paper's large-batch LR schedule + eval.

It consumes the data side's batches by attribute name only (``x``, ``node_ids``, ``blocks``,
``query``, ``pos``, ``easy_neg``, ``hard_neg``; evaluation batches ``x``, ``node_ids``,
``blocks``, ``targets``) and reads from ``trainer.datamodule`` (duck-typed): ``batch_size``,
``val_pairs`` / ``test_pairs`` (``[P, 2]`` item pairs), ``num_items``, ``item_titles`` and, for
the baselines at test time, ``dataset.train_graph``.
"""

from __future__ import annotations

import json
import math
from typing import Any, Dict, List, Optional

import pytorch_lightning as pl
import torch
from torch import Tensor

from .baselines import baseline_scorer, item_to_item_metrics, ranks_from_scorer
from .loss import MaxMarginLoss
from .metrics import target_ranks, topk_items
from .pinsage import PinSage

OPTIMIZERS = ("adam", "adamw", "sgd")
SHAPE_KEYS = ("in_channels", "hidden_channels", "out_channels", "num_layers", "num_items", "id_embedding", "conv")


class WarmupExponential:
    """LR multiplier: linear warmup over the first ``warmup_steps`` optimiser steps from
    ``1/warmup_steps`` to 1, then ``decay ** epochs_done`` where an "epoch" is
    ``steps_per_epoch`` steps. A picklable object (its state goes into checkpoints)."""

    def __init__(self, warmup_steps: int, steps_per_epoch: int, decay: float):
        self.warmup_steps = max(int(warmup_steps), 0)
        self.steps_per_epoch = max(int(steps_per_epoch), 1)
        self.decay = float(decay)

    def __call__(self, step: int) -> float:
        if self.warmup_steps and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        return self.decay ** (step // self.steps_per_epoch)


class PinSageModule(pl.LightningModule):
    """Train PinSage (or a GraphSAGE variant) with the max-margin loss.

    Args:
        in_channels: item feature dimension (linked from the DataModule by the CLI).
        num_items: catalogue size (linked from the DataModule; sizes the ID embedding).
        hidden_channels, out_channels, num_layers, conv, importance_pooling, dropout: see
            :class:`models.pinsage.PinSage`.
        id_embedding: learnable per-item embedding ("auto": only when there are no content
            features).
        margin: hinge margin of the loss.
        optimizer: ``adam`` | ``adamw`` | ``sgd``; ``lr`` the base rate for
            ``reference_batch_size``; ``weight_decay``.
        reference_batch_size: the peak LR is ``lr * global_batch / reference_batch_size``
            (linear scaling rule; global batch = per-device batch x devices x accumulation).
        warmup_epochs: linear warmup length in epochs (the paper: 1); ``lr_decay`` the
            per-epoch exponential decay after warmup.
        eval_ks: hit-rate cut-offs reported at validation/test.
        rank_batch_size: queries ranked at once.
        baselines: baselines evaluated by ``test`` with the same code.
        num_examples: how many sample recommendation lists go to the logger's table.
    """

    def __init__(
        self,
        in_channels: int = 0,
        num_items: int = 0,
        hidden_channels: int = 128,
        out_channels: int = 64,
        num_layers: int = 2,
        conv: str = "pinsage",
        importance_pooling: bool = True,
        dropout: float = 0.0,
        id_embedding: str = "auto",
        margin: float = 0.1,
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        reference_batch_size: int = 512,
        warmup_epochs: float = 1.0,
        lr_decay: float = 0.95,
        eval_ks: List[int] = [10, 100, 500],  # noqa: B006 - plain list for the CLI
        rank_batch_size: int = 1024,
        baselines: List[str] = ["popularity", "cooccurrence"],  # noqa: B006
        num_examples: int = 8,
    ) -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={optimizer!r} is not valid; choose one of {list(OPTIMIZERS)}")
        if id_embedding not in ("auto", "true", "false", True, False):
            raise ValueError(f"id_embedding={id_embedding!r} is not valid; choose auto, true or false")
        if lr <= 0:
            raise ValueError(f"lr={lr} must be > 0")
        if reference_batch_size < 1:
            raise ValueError(f"reference_batch_size={reference_batch_size} must be >= 1")
        if warmup_epochs < 0 or not 0 < lr_decay <= 1:
            raise ValueError(f"warmup_epochs={warmup_epochs} must be >= 0 and lr_decay={lr_decay} in (0, 1]")
        self.save_hyperparameters()
        use_id = (in_channels == 0) if id_embedding == "auto" else id_embedding in (True, "true")
        self.model = PinSage(
            in_channels=in_channels, hidden_channels=hidden_channels, out_channels=out_channels,
            num_layers=num_layers, num_items=num_items, id_embedding=use_id, conv=conv,
            importance_pooling=importance_pooling, dropout=dropout,
        )
        self.loss_fn = MaxMarginLoss(margin)
        self._eval_chunks: List[Tensor] = []
        self.last_metrics: Dict[str, float] = {}

    # -- steps -----------------------------------------------------------------------------------
    def forward(self, batch) -> Tensor:
        return self.model(batch.x, batch.node_ids, batch.blocks)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        z = self(batch)
        z_hard = z[batch.hard_neg] if batch.hard_neg.numel() else None
        z_easy = z[batch.easy_neg] if batch.easy_neg.numel() else None
        loss, stats = self.loss_fn(z[batch.query], z[batch.pos], z_easy, z_hard)
        bs = int(batch.query.numel())
        self.log("train/loss", loss, prog_bar=True, batch_size=bs, sync_dist=False)
        self.log("train/violated", stats["violated"], batch_size=bs)
        self.log("train/pos_score", stats["pos_score"], batch_size=bs)
        self.log("train/neg_score", stats["neg_score"], batch_size=bs)
        self.log("train/hard_negatives", float(batch.hard_neg.shape[1]) if batch.hard_neg.dim() == 2 else 0.0,
                 batch_size=bs)
        self.log("lr", self.optimizers().param_groups[0]["lr"] if self._trainer is not None else self.hparams.lr,
                 prog_bar=True, batch_size=bs)
        return loss

    def _embed_step(self, batch) -> None:
        z = self(batch)
        self._eval_chunks.append(z.detach().float().cpu())

    def validation_step(self, batch, batch_idx: int) -> None:
        self._embed_step(batch)

    def test_step(self, batch, batch_idx: int) -> None:
        self._embed_step(batch)

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        return self(batch).detach().float().cpu()

    def on_validation_epoch_start(self) -> None:
        self._eval_chunks = []

    def on_test_epoch_start(self) -> None:
        self._eval_chunks = []

    def on_validation_epoch_end(self) -> None:
        # `pinsage validate` also scores the baselines; validation inside `fit` does not (cost)
        self._evaluate("val", with_baselines=self.trainer.state.fn == "validate")

    def on_test_epoch_end(self) -> None:
        self._evaluate("test", with_baselines=True)

    # -- evaluation ------------------------------------------------------------------------------
    def _all_embeddings(self) -> Optional[Tensor]:
        if not self._eval_chunks:
            return None
        emb = torch.cat(self._eval_chunks)
        self._eval_chunks = []
        return emb

    def _evaluate(self, stage: str, with_baselines: bool = False) -> None:
        emb = self._all_embeddings()
        dm = getattr(self.trainer, "datamodule", None)
        pairs = getattr(dm, f"{stage}_pairs", None)
        if emb is None or pairs is None or len(pairs) == 0 or (self.trainer.sanity_checking):
            return
        pairs = torch.as_tensor(pairs, dtype=torch.long)
        q, i = pairs[:, 0], pairs[:, 1]
        ranks = target_ranks(emb[q], emb, i, query_items=q, batch_size=self.hparams.rank_batch_size)
        metrics = item_to_item_metrics(ranks, self.hparams.eval_ks, num_items=emb.shape[0])
        out = {f"{stage}/{k}": v for k, v in metrics.items()}
        if with_baselines:
            g = dm.dataset.train_graph
            for name in self.hparams.baselines:
                scorer = baseline_scorer(name, g.user_ptr, g.user_items, g.item_ptr, g.item_users, g.num_items)
                br = ranks_from_scorer(scorer, q, i)
                for k, v in item_to_item_metrics(br, self.hparams.eval_ks, num_items=emb.shape[0]).items():
                    out[f"{stage}/{name}/{k}"] = v
        for k, v in out.items():
            self.log(k, v, prog_bar=k.endswith("hit_rate@10") or k.endswith("/mrr"), rank_zero_only=True)
        self.last_metrics = out
        self._log_examples(stage, emb, q)

    def _log_examples(self, stage: str, emb: Tensor, q: Tensor) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        titles = getattr(dm, "item_titles", None)
        logger = self.logger
        if titles is None or logger is None or not hasattr(logger, "log_table") or self.hparams.num_examples < 1:
            return
        qs = torch.unique(q)[: self.hparams.num_examples]
        k = min(10, emb.shape[0] - 1)
        _, top = topk_items(emb[qs], emb, k, query_items=qs)
        rows = [[str(titles[int(a)]), " | ".join(str(titles[int(b)]) for b in t)] for a, t in zip(qs, top)]
        logger.log_table(key=f"{stage}/recommendations", columns=["query", "top-10"], data=rows)

    # -- optimisation ----------------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        params = self.parameters()
        if hp.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=self.peak_lr(), weight_decay=hp.weight_decay)
        elif hp.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=self.peak_lr(), weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.SGD(params, lr=self.peak_lr(), momentum=0.9, weight_decay=hp.weight_decay)
        spe = self.steps_per_epoch()
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, WarmupExponential(math.ceil(hp.warmup_epochs * spe), spe, hp.lr_decay))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def global_batch_size(self) -> int:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        per_device = int(getattr(dm, "batch_size", self.hparams.reference_batch_size))
        if self._trainer is None:
            return per_device
        return per_device * self.trainer.world_size * self.trainer.accumulate_grad_batches

    def peak_lr(self) -> float:
        """Linear scaling rule: ``lr * global_batch / reference_batch``."""
        return self.hparams.lr * self.global_batch_size() / self.hparams.reference_batch_size

    def steps_per_epoch(self) -> int:
        if self._trainer is None:
            return 1
        total = self.trainer.estimated_stepping_batches  # also loads the train dataloader
        batches = self.trainer.num_training_batches
        if math.isfinite(batches) and batches > 0:
            return max(math.ceil(batches / self.trainer.accumulate_grad_batches), 1)
        epochs = max(self.trainer.max_epochs or 1, 1)
        return max(int(total // epochs), 1) if math.isfinite(total) else 1

    # -- checkpoints -----------------------------------------------------------------------------
    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        saved = checkpoint.get("hyper_parameters", {})
        diff = {k: (saved.get(k), self.hparams.get(k)) for k in SHAPE_KEYS
                if k in saved and saved.get(k) != self.hparams.get(k)}
        if diff:
            desc = ", ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"checkpoint was trained with another model shape ({desc}); "
                             "use the config it was trained with or retrain")
        # hyperparameters can be overridden at load time: compare the tensors too
        own = self.state_dict()
        bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
               for k, v in checkpoint.get("state_dict", {}).items()
               if k in own and hasattr(v, "shape") and v.shape != own[k].shape]
        if bad:
            raise ValueError("checkpoint was trained with another model shape (" + "; ".join(bad[:3])
                             + (" ..." if len(bad) > 3 else "") + "); use the config it was trained with or retrain")

    def metrics_json(self) -> str:
        return json.dumps(self.last_metrics, sort_keys=True)
