"""A teacher for the set objective: EASE ranks each training query, the model learns its top items.

With ``history_dropout`` a step pools a random part of each user's history into the query and
holds out the rest as positives. The teacher is EASE (Steck, 2019) fitted on the training history:
its item-item matrix :math:`B` scores the same kept items, :math:`t_u = \\sum_{j \\in K_u} B_j`,
and the user's softmax over the shared negatives is pulled toward the teacher's top-``k`` items
(uniform targets, the user's own training items left out of both):

.. math::
    \\mathcal{L}_{teach} = -\\frac{1}{k} \\sum_{c \\in \\mathrm{top}_k(t_u)}
    \\log \\frac{\\exp(z_u \\cdot z_c / \\tau)}{\\sum_{n} \\exp(z_u \\cdot z_n / \\tau)}

The module mixes it in as ``(1 - w) L_set + w L_teach`` (``model.teacher_loss = w``). Only
training uses the teacher: the embeddings the index serves are the model's own.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from .item_item import EASE_MAX_ITEMS, ease_weights


def check_teacher_args(teacher_loss, teacher_top, teacher_lam, history_dropout, loss, num_items) -> None:
    """Refuse the module's teacher arguments that cannot work (each error names the argument, its
    value and what is valid)."""
    if not 0.0 <= float(teacher_loss) < 1.0:
        raise ValueError(f"teacher_loss={teacher_loss!r} is not valid; expected a share in [0, 1)")
    if float(teacher_loss) > 0 and not (float(history_dropout) > 0 and loss == "softmax"):
        raise ValueError(f"teacher_loss={teacher_loss!r} needs history_dropout > 0 and loss='softmax' (got "
                         f"{history_dropout!r}, {loss!r}): the teacher ranks the set objective's queries")
    if int(teacher_top) < 1 or not float(teacher_lam) > 0:
        raise ValueError(f"teacher_top={teacher_top!r} must be >= 1 and teacher_lam={teacher_lam!r} > 0")
    if float(teacher_loss) > 0 and int(num_items) > EASE_MAX_ITEMS:
        raise ValueError(f"teacher_loss={teacher_loss!r} needs EASE's dense [items, items] matrix, and the catalogue "
                         f"has {num_items} items, more than its limit of {EASE_MAX_ITEMS}; set model.teacher_loss 0")


def ease_teacher(ptr: Tensor, col: Tensor, num_items: int, lam: float) -> Tensor:
    """``float32 [I, I]``: EASE's item-item matrix of the history CSR ``(ptr, col)`` (refuses
    catalogues above :data:`models.item_item.EASE_MAX_ITEMS` with a ``ValueError``)."""
    W = ease_weights(np.asarray(ptr.cpu()), np.asarray(col.cpu()), num_items, lam=lam)
    return torch.from_numpy(W)


def kept_scores(W: Tensor, row: Tensor, item: Tensor, num_rows: int) -> Tensor:
    """``[R, I]``: row ``r`` sums ``W``'s rows of the items ``item[row == r]`` (one sparse-dense
    product: no ``[len(item), I]`` copy)."""
    X = torch.sparse_coo_tensor(torch.stack([row, item]), torch.ones(row.numel(), dtype=W.dtype, device=W.device),
                                (num_rows, W.size(0)), check_invariants=False).coalesce()
    return torch.sparse.mm(X, W)


def teacher_cross_entropy(logits: Tensor, teacher: Tensor, top: int, mask: Optional[Tensor] = None) -> Tensor:
    """Mean cross-entropy of ``softmax(logits)`` (``[R, N]``) against the uniform distribution over
    each row's ``top`` highest ``teacher`` scores (``[R, N]``); ``mask`` (bool ``[R, N]``, True =
    left out) removes entries from both. A row with fewer than ``top`` entries left uses those."""
    if mask is not None:
        teacher = teacher.masked_fill(mask, -float("inf"))
        logits = logits.masked_fill(mask, -float("inf"))
    vals, idx = teacher.topk(min(int(top), teacher.size(1)), dim=1)
    ok = torch.isfinite(vals)
    logp = torch.log_softmax(logits, dim=1).gather(1, idx)
    per_row = -(logp.masked_fill(~ok, 0.0)).sum(1) / ok.sum(1).clamp(min=1)
    return per_row.mean()
