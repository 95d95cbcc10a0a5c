"""The LightningModule: PinSage + max-margin loss + the paper's large-batch LR schedule + eval.

It consumes the data side's batches by attribute name only: minibatch computation graphs
(``x``, ``node_ids``, ``blocks``, ``query``, ``pos``, ``easy_neg``, ``hard_neg``; evaluation
batches ``x``, ``node_ids``, ``blocks``) or, for whole-catalogue computation, id batches
(``query``, ``pos``, ``easy_neg``, ``hard_neg``, ``pos_weight``, ``queries``) with the graph
from ``trainer.datamodule.full_graph_data()``. It also reads ``batch_size``, ``item_titles``
and ``val_pairs`` from the datamodule (duck-typed). Metrics come from :attr:`evaluator`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Literal, Optional

import pytorch_lightning as pl
import torch
from torch import Tensor

from .loss import MaxMarginLoss, SampledSoftmaxLoss
from .metrics import topk_items
from .pinsage import PinSage
from .sparse import SparseAdjacency
from .teacher import check_teacher_args, ease_teacher, kept_scores, teacher_cross_entropy
from .user_encoder import UserEncoder

OPTIMIZERS = ("adam", "adamw", "sgd")
SHAPE_KEYS = ("in_channels", "hidden_channels", "out_channels", "num_layers", "num_items", "id_embedding", "conv",
              "user_encoder", "skip", "user_id_embedding")
#: ``evaluator(stage, item_emb [I, d], user_fn, with_baselines) -> {"<model>/<protocol>/<metric>": float}``
#: with ``user_fn(item_emb, history_ptr, history_items, history_weights) -> [U, d]``; set by the app
#: (``app/evaluation.py``), so ``validate``/``test`` and ``predict``'s metrics.json share one code path.
Evaluator = Callable[[str, Tensor, Callable, bool], Dict[str, float]]


def _history_rows(ptr: Tensor, users: Tensor):
    """The CSR rows ``users`` of ``ptr``, flattened: ``(seg [E], idx [E], start [U], deg [U])``,
    entry ``e`` is slot ``idx[e]`` of user position ``seg[e]``, whose entries begin at ``start``."""
    deg = ptr[users + 1] - ptr[users]
    seg = torch.repeat_interleave(torch.arange(users.numel(), device=ptr.device), deg)
    start = torch.cumsum(deg, 0) - deg
    idx = ptr[users][seg] + torch.arange(seg.numel(), device=ptr.device) - start[seg]
    return seg, idx, start, deg


def _check_hparams(*, user_id_embedding, num_users, cold_dropout, history_dropout, mask_own_negatives, loss,
                   history_dropout_weight, item_loss, cold_loss, user_encoder, optimizer, id_embedding,
                   lr, reference_batch_size, warmup_epochs, lr_decay, teacher_loss=0.0, teacher_top=50,
                   teacher_lam=100.0, num_items=0, **_) -> None:
    """Refuse invalid :class:`PinSageModule` arguments (each error names the argument, its value and
    what is valid)."""
    if user_id_embedding not in (True, False):
        raise ValueError(f"user_id_embedding={user_id_embedding!r} is not valid; choose true or false")
    if user_id_embedding and not int(num_users) >= 1:
        raise ValueError(f"user_id_embedding=True needs num_users >= 1 (got num_users={num_users!r}): the "
                         "user-id table has one row per user; the CLI links it from data.num_users, "
                         "elsewhere pass the log's user count")
    if not 0.0 <= float(cold_dropout) < 1.0:
        raise ValueError(f"cold_dropout={cold_dropout!r} is not valid; expected a share in [0, 1)")
    if not 0.0 <= float(history_dropout) < 1.0:
        raise ValueError(f"history_dropout={history_dropout!r} is not valid; expected a share in [0, 1)")
    if mask_own_negatives and loss != "softmax":
        raise ValueError(f"mask_own_negatives=True needs loss='softmax' (got loss={loss!r}): the mask acts on "
                         "the softmax's shared negatives; set model.loss softmax or mask_own_negatives false")
    check_teacher_args(teacher_loss, teacher_top, teacher_lam, history_dropout, loss, num_items)
    if history_dropout_weight not in ("user", "interaction"):
        raise ValueError(f"history_dropout_weight={history_dropout_weight!r} is not valid; choose user or interaction")
    if not float(item_loss) >= 0.0:
        raise ValueError(f"item_loss={item_loss!r} is not valid; expected a weight >= 0")
    if not float(cold_loss) >= 0.0:
        raise ValueError(f"cold_loss={cold_loss!r} is not valid; expected a weight >= 0")
    if loss not in ("max_margin", "softmax"):
        raise ValueError(f"loss={loss!r} is not valid; choose max_margin or softmax")
    if user_encoder not in ("linear", "mean"):
        raise ValueError(f"user_encoder={user_encoder!r} is not valid; choose linear or mean")
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
        baselines: baselines evaluated by ``test`` (and ``validate``) with the same code.
        num_examples: how many sample recommendation lists go to the logger's table.
        loss: ``max_margin`` (the paper) or ``softmax`` (sampled softmax over the same
            negatives, temperature ``temperature``).
        user_encoder: ``linear`` (a learned layer over the weighted history pool, identity at
            start; trained by ``data.queries=users``) or ``mean`` (the normalised mean of the
            history embeddings, no parameters: the item-query default, whose training never
            reaches a user layer).
        val_protocols: evaluation protocols during ``fit``'s validation (``item``, ``ncf``,
            ``full``); ``test``/``validate`` run ``test_protocols``.
        skip: the head's skip connection from the encoded input (see :class:`PinSage`).
        cold_dropout: share of items that, at each whole-catalogue training step, are embedded
            as a new item would be (no ID term, no neighbourhood: content alone), so the content
            path learns to stand alone and new items land among the items they resemble
            (DropoutNet-style; 0 = off).
        cold_loss: weight of a second loss term in whole-catalogue steps: the same queries (held
            fixed) rank the *content-only* embeddings of the same positives and negatives (no
            neighbourhood, no ID term: a new item), so the content path learns to land a new item
            where the users who will engage it look, without changing the warm objective (0 = off).
        item_loss: with user queries, weight of an item-to-item term: each positive is also ranked
            by one random other training item of the same user (a co-engagement pair, as the
            ``item`` protocol and "similar items" ask), against the same negatives (0 = off).
        history_dropout: with whole-history user queries (``data.user_queries=leave_one_out``,
            no time order), hold out this share of each batch user's history at random: the
            kept items pool into the query, every held-out item is a positive of it (each user's
            positives weigh 1 in all; a denoising, Mult-DAE-style set objective: a random
            split's held-out item is any item of the set). 0 = leave one out (one positive per
            row of the batch, the query the rest of the history). Per-pair hard negatives are
            not used with it.
        history_dropout_weight: with ``history_dropout``, ``user``: each user weighs the same
            over an epoch (``count / degree`` a step, as the evaluator counts users);
            ``interaction``: each user weighs its degree, as leave-one-out's one row per
            interaction does (heavy users' items get their share of the gradient).
        num_users: users of the log (linked from the DataModule; sizes the user-id table).
        user_id_embedding: SimpleX-style (the Gowalla and MovieLens-100K user configs use it): each
            user also has a learned free vector ``e_u`` (a ``[num_users, out_channels]`` table
            initialised to zero, so the untrained model is the one without it): ``p_u = normalise(normalise(W_u pooled) + e_u)``
            (:class:`models.user_encoder.UserEncoder`). Needs ``num_users`` and whole-catalogue
            user queries (``data.queries=users``); predict writes the table into users.npz.
        mask_own_negatives: with user queries and the softmax loss, leave each user's own
            training items out of its shared negatives (positives of the set, or items the
            evaluator masks anyway, not negatives); with one query per pair (leave one out,
            ``before``) only when the batch has no per-pair hard negatives.
        teacher_loss, teacher_top, teacher_lam: with ``history_dropout`` and the softmax loss,
            ``teacher_loss`` of the loss pulls each query's softmax over the shared negatives toward
            the ``teacher_top`` items that EASE (``lam = teacher_lam``, fitted on the training
            history at the first step) ranks highest for the same kept items
            (:mod:`models.teacher`; 0 = off). Training only.
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
        loss: Literal["max_margin", "softmax"] = "max_margin",
        temperature: float = 0.1,
        user_encoder: Literal["linear", "mean"] = "mean",
        val_protocols: List[str] = ["item"],  # noqa: B006
        test_protocols: List[str] = ["item", "ncf", "full"],  # noqa: B006
        skip: bool = False,
        cold_dropout: float = 0.0,
        cold_loss: float = 0.0,
        item_loss: float = 0.0,
        history_dropout: float = 0.0,
        mask_own_negatives: bool = False,
        history_dropout_weight: str = "user",
        num_users: int = 0,
        user_id_embedding: bool = False,
        teacher_loss: float = 0.0,
        teacher_top: int = 50,
        teacher_lam: float = 100.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        _check_hparams(**self.hparams)
        use_id = (in_channels == 0) if id_embedding == "auto" else id_embedding in (True, "true")
        self.model = PinSage(
            in_channels=in_channels, hidden_channels=hidden_channels, out_channels=out_channels,
            num_layers=num_layers, num_items=num_items, id_embedding=use_id, conv=conv,
            importance_pooling=importance_pooling, dropout=dropout, skip=skip,
        )
        self.user_encoder = UserEncoder(out_channels, learned=user_encoder == "linear",
                                        num_users=int(num_users) if user_id_embedding else 0)
        self.loss_fn = MaxMarginLoss(margin) if loss == "max_margin" else SampledSoftmaxLoss(temperature)
        self._eval_chunks: List[Tensor] = []
        self._full: Optional[Dict[str, Any]] = None
        self._teacher: Optional[Tensor] = None  # models.teacher.ease_teacher, built at the first step
        self.evaluator: Optional[Evaluator] = None
        self.last_metrics: Dict[str, float] = {}

    # -- steps -----------------------------------------------------------------------------------
    def forward(self, batch) -> Tensor:
        return self.model(batch.x, batch.node_ids, batch.blocks)

    def _full_graph(self) -> Dict[str, Any]:
        """The whole-catalogue graph from the datamodule, as tensors on this module's device."""
        if self._full is None or self._full["device"] != self.device:
            data = self.trainer.datamodule.full_graph_data()
            num_items = int(data["x"].shape[0])
            nbr = SparseAdjacency(*data["nbr"], num_src=num_items)
            hist = SparseAdjacency(*data["history"], num_src=num_items)
            self._full = {"x": torch.as_tensor(data["x"]).to(self.device),
                          "new_degree": data.get("new_degree"),
                          "ids": torch.arange(num_items,
                          device=self.device), "nbr": nbr, "history": hist, "device": self.device}
        return self._full

    def embed_all(self) -> Tensor:
        """``[I, out]``: every item in one pass over the neighbourhood matrix (differentiable);
        in training, ``cold_dropout`` of the items are embedded from their content alone."""
        g = self._full_graph()
        x, ids, nbr = g["x"], g["ids"], g["nbr"]
        p = float(self.hparams.get("cold_dropout", 0.0))
        if self.training and p > 0:
            cold = torch.rand(ids.numel(), device=ids.device) < p
            ids = torch.where(cold, torch.full_like(ids, -1), ids)
            x = torch.where(cold.unsqueeze(-1), self._x_new(), x)
            keep = (~cold).cpu().to(nbr.weight.dtype)[nbr.row]
            nbr = SparseAdjacency(nbr.ptr, nbr.col, nbr.weight * keep, num_src=nbr.num_src)
        return self.model(x, ids, [nbr] * self.model.num_layers)

    @torch.no_grad()
    def embed_with(self, nbr=None, no_id=None) -> Tensor:
        """``[I, out]`` in eval mode with another neighbourhood ``nbr = (ptr, items, weights)``
        (default: the datamodule's) and without the ID term of the items ``no_id`` (new items):
        the cold-item protocol's embeddings."""
        g = self._full_graph()
        adj = g["nbr"] if nbr is None else SparseAdjacency(*nbr, num_src=g["ids"].numel())
        ids = g["ids"].clone()
        if no_id is not None:
            ids[torch.as_tensor(no_id, dtype=torch.long, device=ids.device)] = -1
        was = self.training
        self.eval()
        try:
            return self.model(g["x"], ids, [adj] * self.model.num_layers).float().cpu()
        finally:
            self.train(was)

    def user_vectors(self, item_emb: Tensor, history_ptr, history_items, history_weights=None) -> Tensor:
        """``[U, d]``: each user's query vector from their history (``UserEncoder``); with
        ``user_id_embedding`` the rows are the users ``0 .. num_users - 1`` in id order."""
        hist = SparseAdjacency(history_ptr, history_items, history_weights, num_src=item_emb.size(0))
        return self.user_encoder.profiles(item_emb, hist)

    def _training_embeddings(self, batch):
        """``(z_query [B, d], z_pos [B, d], z_easy [N, d] | None, z_hard [B, H, d] | None, z)``
        (``z``: the embeddings the rows were taken from)."""
        if self.hparams.get("user_id_embedding") and (hasattr(batch, "blocks") or batch.queries != "users"):
            raise ValueError("user_id_embedding=True needs data.queries users with full_graph (whole-catalogue "
                             "user queries train the user-id table); this batch has item queries: set "
                             "data.queries users or model.user_id_embedding false")
        if hasattr(batch, "blocks"):  # sampled minibatch computation graph: local positions
            z = self(batch)
            zq = z[batch.query]
        else:  # id batch: the whole catalogue once, rows by global id
            z = self.embed_all()
            if batch.queries == "users" and batch.history.numel():  # causal: the items before pos
                w = batch.history_weight.unsqueeze(-1).to(z.dtype)
                zq = self.user_encoder((z[batch.history.clamp(min=0)] * w).sum(1), batch.query)
            elif batch.queries == "users" and self.hparams.get("history_dropout", 0.0) > 0:
                zq = None  # one query per held-out item: _held_out_queries
            elif batch.queries == "users":
                zq = self.user_encoder.leave_one_out_rows(z, self._full_graph()["history"], batch.query,
                                                          batch.pos, batch.pos_weight)
            else:
                zq = z[batch.query]
        z_hard = z[batch.hard_neg] if batch.hard_neg.numel() else None
        if batch.easy_neg.numel() and batch.pos.dim() == 1 and batch.easy_neg.dim() == 1:
            # one gather: its backward is one [I, d] buffer (index_add), not one per use and their sum
            b = batch.pos.numel()
            rows = z.index_select(0, torch.cat([batch.pos, batch.easy_neg]))
            return zq, rows[:b], rows[b:], z_hard, z
        z_easy = z[batch.easy_neg] if batch.easy_neg.numel() else None
        return zq, z[batch.pos], z_easy, z_hard, z

    def _held_out_queries(self, users: Tensor, z: Tensor):
        """``(z_query [U, d], pos [T], weight [T], row [T], users [U])``: the batch's users
        (``history_dropout``), each with a query pooling its kept items (history weights as the
        evaluator's), and one row per held-out item (``row``: its user's position). A user
        weighs ``count / degree`` in all (``count``: its rows in the batch; ``count`` with
        ``history_dropout_weight='interaction'``), spread evenly over
        its held-out items: every user weighs the same in expectation over an epoch, as the
        evaluator counts users. Users with fewer than 2 training items are skipped; each user
        keeps >= 1 item and holds out >= 1."""
        hist = self._full_graph()["history"]
        ptr, col, dev = hist.ptr.to(z.device), hist.col.to(z.device), z.device
        users, count = users.unique(return_counts=True)
        ok = (ptr[users + 1] - ptr[users]) >= 2
        users, count = users[ok], count[ok]
        seg, idx, start, deg = _history_rows(ptr, users)
        held = torch.rand(seg.numel(), device=dev) < float(self.hparams.history_dropout)
        n_held = torch.zeros(users.numel(), dtype=torch.long, device=dev).index_add_(0, seg, held.long())
        pick = start + (torch.rand(users.numel(), device=dev) * deg).long().clamp(max=deg - 1)
        held[pick[n_held == 0]] = True  # at least one positive each
        all_held = n_held == deg
        held[pick[all_held]] = False  # at least one kept item (deg >= 2: one stays held)
        n_held = n_held.clamp(min=1) - all_held.long()
        w = hist.weight.to(dev)[idx].to(z.dtype) if hist.weight is not None else torch.ones_like(idx, dtype=z.dtype)
        keep = ~held
        pooled = torch.zeros(users.numel(), z.size(1), dtype=z.dtype, device=dev).index_add_(
            0, seg[keep], z[col[idx[keep]]] * w[keep].unsqueeze(-1))
        row = seg[held]
        w_user = count.to(z.dtype)
        if self.hparams.get("history_dropout_weight", "user") == "user":
            w_user = w_user / deg.to(z.dtype)
        return (self.user_encoder(pooled, users), col[idx[held]], (w_user / n_held.to(z.dtype))[row], row, users,
                (seg[keep], col[idx[keep]]))

    def _teacher_loss(self, zu: Tensor, z_easy: Tensor, negatives: Tensor, kept, users: Tensor,
                      mask: Optional[Tensor]) -> Tensor:
        """:func:`models.teacher.teacher_cross_entropy` of the users' softmax over the shared
        negatives, EASE scoring each user's kept items (``kept``: (user position, item)); the
        users' own items (``mask``, built here when the set loss does not mask them) are left out."""
        if self._teacher is None:
            hist = self._full_graph()["history"]
            self._teacher = ease_teacher(hist.ptr, hist.col, int(hist.num_src),
                                         float(self.hparams.teacher_lam)).to(zu.device)
        t = kept_scores(self._teacher, kept[0], kept[1], zu.size(0))[:, negatives]
        logits = zu @ z_easy.T / self.loss_fn.temperature
        own = mask if mask is not None else self._own_items(users, negatives)
        return teacher_cross_entropy(logits, t, int(self.hparams.teacher_top), own)

    def _own_items(self, users: Tensor, negatives: Tensor) -> Tensor:
        """``[U, N]`` bool: whether ``negatives[n]`` is among ``users[u]``'s training items."""
        hist = self._full_graph()["history"]
        ptr, col = hist.ptr.to(users.device), hist.col.to(users.device)
        where = torch.full((int(hist.num_src),), -1, dtype=torch.long, device=users.device)
        where[negatives] = torch.arange(negatives.numel(), device=users.device)
        seg, idx, _, _ = _history_rows(ptr, users)
        at = where[col[idx]]
        mask = torch.zeros(users.numel(), negatives.numel(), dtype=torch.bool, device=users.device)
        mask[seg[at >= 0], at[at >= 0]] = True
        return mask

    def _mask_pairs(self, batch, z_easy: Optional[Tensor], z_hard: Optional[Tensor]) -> bool:
        """Whether a user-query batch with one query per pair leaves each user's own items out
        of its negatives (``mask_own_negatives``, softmax loss, shared negatives only)."""
        return (bool(self.hparams.get("mask_own_negatives")) and not hasattr(batch, "blocks")
                and getattr(batch, "queries", None) == "users"
                and isinstance(self.loss_fn, SampledSoftmaxLoss) and z_easy is not None and z_hard is None)

    def _coengaged(self, users: Tensor) -> Tensor:
        """One random training item of each user (``[B]``): an item-query partner of the positive."""
        hist = self._full_graph()["history"]
        ptr = hist.ptr.to(users.device)
        lo, deg = ptr[users], (ptr[users + 1] - ptr[users]).clamp(min=1)
        pick = lo + (torch.rand(users.numel(), device=users.device) * deg).long().clamp(max=deg - 1)
        return hist.col.to(users.device)[pick]

    def content_only(self) -> Tensor:
        """``[I, out]``: every item as a new item (content alone: no neighbourhood, no ID term)."""
        g = self._full_graph()
        n = g["ids"].numel()
        empty = SparseAdjacency(torch.zeros(n + 1, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                                num_src=n)
        return self.model(self._x_new(), torch.full_like(g["ids"], -1), [empty] * self.model.num_layers)

    def _x_new(self) -> Tensor:
        """``[I, F]``: every item's input row as a new item's (its log degree unknown); built on
        first use (only the cold-item options need it)."""
        g = self._full_graph()
        if "x_new" not in g:
            g["x_new"] = g["x"]
            if g["new_degree"] is not None:
                d, pred = g["new_degree"]
                g["x_new"] = g["x"].clone()
                g["x_new"][:, d] = torch.as_tensor(pred, device=g["x"].device)
        return g["x_new"]

    def training_step(self, batch, batch_idx: int) -> Tensor:
        zq, zp, z_easy, z_hard, z = self._training_embeddings(batch)
        pos, users, row_w = batch.pos, getattr(batch, "query", None), None
        if zq is None:  # history_dropout: one row per held-out item, one query per user
            zu, pos, row_w, row, users, kept = self._held_out_queries(batch.query, z)
            zp, z_hard = z[pos], None
            if isinstance(self.loss_fn, SampledSoftmaxLoss):  # the negatives scored once per user
                mask = self._own_items(users, batch.easy_neg) if self.hparams.get("mask_own_negatives") else None
                loss, stats = self.loss_fn.grouped(zu, row, zp, z_easy, weight=row_w, neg_mask=mask)
                wt = float(self.hparams.get("teacher_loss", 0.0))
                if wt > 0:
                    teach = self._teacher_loss(zu, z_easy, batch.easy_neg, kept, users, mask)
                    self.log("train/teacher_loss", teach, batch_size=int(zu.size(0)))
                    loss = (1 - wt) * loss + wt * teach
            else:
                loss, stats = self.loss_fn(zu[row], zp, z_easy, None, weight=row_w)
            zq, users = zu[row], users[row]
        elif self._mask_pairs(batch, z_easy, z_hard):  # one query per pair, its user's own items masked
            mask = self._own_items(batch.query, batch.easy_neg)
            row = torch.arange(zq.size(0), device=zq.device)
            loss, stats = self.loss_fn.grouped(zq, row, zp, z_easy, neg_mask=mask)
        else:
            loss, stats = self.loss_fn(zq, zp, z_easy, z_hard)
        wi = float(self.hparams.get("item_loss", 0.0))
        if wi > 0 and getattr(batch, "queries", None) == "users":
            item, _ = self.loss_fn(z[self._coengaged(users)], zp, z_easy, z_hard, weight=row_w)
            self.log("train/item_loss", item, batch_size=int(batch.query.numel()))
            loss = loss + wi * item
        w = float(self.hparams.get("cold_loss", 0.0))
        if w > 0 and not hasattr(batch, "blocks"):
            zc = self.content_only()
            cold, _ = self.loss_fn(zq.detach(), zc[pos], zc[batch.easy_neg] if z_easy is not None else None,
                                   zc[batch.hard_neg] if z_hard is not None else None, weight=row_w)
            self.log("train/cold_loss", cold, batch_size=int(batch.query.numel()))
            loss = loss + w * cold
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
        if not hasattr(batch, "blocks"):  # whole-catalogue model: embeds everything at epoch end
            return
        z = self(batch)
        self._eval_chunks.append(z.detach().float().cpu())

    def validation_step(self, batch, batch_idx: int) -> None:
        self._embed_step(batch)

    def test_step(self, batch, batch_idx: int) -> None:
        self._embed_step(batch)

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
        dm = getattr(self.trainer, "datamodule", None)
        if getattr(dm, "full_graph", False):
            with torch.no_grad():
                return self.embed_all().detach().float().cpu()
        if not self._eval_chunks:
            return None
        emb = torch.cat(self._eval_chunks)
        self._eval_chunks = []
        return emb

    def _evaluate(self, stage: str, with_baselines: bool = False) -> None:
        if self.trainer.sanity_checking:
            self._eval_chunks = []
            return
        emb = self._all_embeddings()
        if emb is None or self.evaluator is None:
            return
        ue = self.user_encoder

        def user_fn(item_emb, ptr, items, weights=None):
            with torch.no_grad():
                was = ue.training
                ue.eval()
                try:
                    return self.user_vectors(item_emb.to(self.device), ptr, items, weights).float().cpu()
                finally:
                    ue.train(was)

        # one evaluation (rank 0), the same numbers logged on every rank: a ModelCheckpoint or
        # EarlyStopping that monitors them finds them on each rank (rank_zero_only would not)
        ddp = self._trainer is not None and self.trainer.world_size > 1
        out = self.evaluator(stage, emb, user_fn, with_baselines) if not ddp or self.trainer.is_global_zero else None
        if ddp:
            out = self.trainer.strategy.broadcast(out, src=0)
        for k, v in out.items():
            if "/" in k and not k.endswith("/seconds"):
                self.log(f"{stage}/{k}", float(v), sync_dist=False,
                         prog_bar=k.endswith("item/mrr") or k.endswith("full/recall@20"))
        self.last_metrics = dict(out)
        dm = getattr(self.trainer, "datamodule", None)
        pairs = getattr(dm, f"{stage}_pairs", None)
        if pairs is not None and len(pairs):
            self._log_examples(stage, emb, torch.as_tensor(pairs, dtype=torch.long)[:, 0])

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
        params = list(self.parameters())
        # fused=True: one kernel per parameter instead of ~10 ops (CPU and CUDA float tensors;
        # the same update to float tolerance, tests/models/test_module.py), e.g. 6.0 -> 1.7 ms a
        # Gowalla step on one CPU thread
        fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
        if hp.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=self.peak_lr(), weight_decay=hp.weight_decay, fused=fused or None)
        elif hp.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=self.peak_lr(), weight_decay=hp.weight_decay, fused=fused or None)
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
