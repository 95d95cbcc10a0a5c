"""PinSage's max-margin ranking loss (Ying et al., KDD 2018, Eq. 1)."""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from models.fused import NegativesLSE, fused_ok


PROBE_ROWS = 1024  #: the softmax losses' ``violated`` statistic is estimated on the first 1,024 pairs


def _check(z_q: Tensor, z_pos: Tensor, z_easy: Optional[Tensor], z_hard: Optional[Tensor]) -> None:
    """The shape checks shared by the losses."""
    if z_q.dim() != 2 or z_pos.shape != z_q.shape:
        raise ValueError(
            f"z_q {tuple(z_q.shape)} / z_pos {tuple(z_pos.shape)} are invalid: expected two "
            f"[B, d] tensors of the same shape")
    b, d = z_q.shape
    n = 0
    if z_easy is not None:
        if z_easy.dim() != 2 or z_easy.size(1) != d:
            raise ValueError(f"z_easy has shape {tuple(z_easy.shape)}: expected [N, {d}]")
        n += z_easy.size(0)
    if z_hard is not None:
        if z_hard.dim() != 3 or z_hard.size(0) != b or z_hard.size(2) != d:
            raise ValueError(f"z_hard has shape {tuple(z_hard.shape)}: expected [{b}, H, {d}]")
        n += z_hard.size(1)
    if n == 0:
        raise ValueError("no negatives: z_easy and z_hard are both empty or None; set data.num_easy_negatives "
                         "> 0 (it must be smaller than the catalogue) or enable hard negatives")
    if b == 0:
        raise ValueError("z_q is empty: expected at least one (query, positive) pair")


def _scores(z_q: Tensor, z_pos: Tensor, z_easy: Optional[Tensor], z_hard: Optional[Tensor]
            ) -> Tuple[Tensor, Tensor]:
    """``(pos_score [B], neg_score [B, N + H])`` after :func:`_check`."""
    _check(z_q, z_pos, z_easy, z_hard)
    neg = []
    if z_easy is not None:
        neg.append(z_q @ z_easy.t())  # [B, N]
    if z_hard is not None:
        neg.append(torch.einsum("bd,bhd->bh", z_q, z_hard))  # [B, H]
    return (z_q * z_pos).sum(dim=-1), torch.cat(neg, dim=1) if len(neg) > 1 else neg[0]


def _mean(per_pair: Tensor, weight: Optional[Tensor]) -> Tensor:
    """The mean of ``per_pair [B]``, weighted by ``weight [B]`` when given."""
    if weight is None:
        return per_pair.mean()
    return (per_pair * weight).sum() / weight.sum().clamp(min=1e-12)


def max_margin_loss(
    z_q: Tensor,
    z_pos: Tensor,
    z_easy: Optional[Tensor] = None,
    z_hard: Optional[Tensor] = None,
    margin: float = 0.1,
    weight: Optional[Tensor] = None,
) -> Tuple[Tensor, Dict[str, Tensor]]:
    r"""Max-margin ranking loss

    .. math::
        \mathcal{L} = \frac{1}{B}\sum_{(q,i)} \frac{1}{N + H}\sum_{n}
        \max\left(0,\; \mathbf{z}_q\cdot\mathbf{z}_n - \mathbf{z}_q\cdot\mathbf{z}_i
        + \Delta\right)

    over the ``N`` easy negatives shared by all pairs and each pair's ``H`` hard negatives.

    Args:
        z_q: ``[B, d]`` query embeddings.
        z_pos: ``[B, d]`` positive embeddings (row ``b`` pairs with ``z_q[b]``).
        z_easy: ``[N, d]`` easy negatives shared by every pair, or :obj:`None` (``N = 0``).
        z_hard: ``[B, H, d]`` per-pair hard negatives, or :obj:`None` (``H = 0``).
        margin: :math:`\Delta \ge 0`. (default: :obj:`0.1`)
        weight: ``[B]`` non-negative pair weights (the loss is their weighted mean), or
            :obj:`None` (every pair counts the same).

    Returns:
        ``(loss, stats)``: the scalar loss and detached scalars ``"violated"`` (share of
        (pair, negative) terms with a positive hinge), ``"pos_score"`` (mean
        :math:`\mathbf{z}_q\cdot\mathbf{z}_i`), ``"neg_score"`` (mean
        :math:`\mathbf{z}_q\cdot\mathbf{z}_n`).
    """
    if margin < 0:
        raise ValueError(f"margin={margin!r} is invalid: expected a float >= 0")
    pos_score, neg_score = _scores(z_q, z_pos, z_easy, z_hard)
    hinge = neg_score - pos_score.unsqueeze(1) + margin  # [B, N + H]
    loss = _mean(hinge.clamp(min=0).mean(1), weight)  # same count per pair: mean of means
    with torch.no_grad():
        stats = {
            "violated": (hinge > 0).float().mean(),
            "pos_score": pos_score.mean(),
            "neg_score": neg_score.mean(),
        }
    return loss, stats


class MaxMarginLoss(torch.nn.Module):
    r"""Module form of :func:`max_margin_loss`.

    Args:
        margin (float, optional): The margin :math:`\Delta \ge 0`. (default: :obj:`0.1`)
    """

    def __init__(self, margin: float = 0.1) -> None:
        super().__init__()
        if not isinstance(margin, (int, float)) or isinstance(margin, bool) or margin < 0:
            raise ValueError(f"margin={margin!r} is invalid: expected a float >= 0")
        self.margin = float(margin)

    def forward(self, z_q: Tensor, z_pos: Tensor, z_easy: Optional[Tensor] = None,
                z_hard: Optional[Tensor] = None, weight: Optional[Tensor] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
        return max_margin_loss(z_q, z_pos, z_easy, z_hard, margin=self.margin, weight=weight)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(margin={self.margin})"


def sampled_softmax_loss(
    z_q: Tensor,
    z_pos: Tensor,
    z_easy: Optional[Tensor] = None,
    z_hard: Optional[Tensor] = None,
    temperature: float = 0.1,
    weight: Optional[Tensor] = None,
    fused: bool = True,
) -> Tuple[Tensor, Dict[str, Tensor]]:
    r"""Sampled-softmax (InfoNCE) loss over the same negatives as :func:`max_margin_loss`:

    .. math::
        \mathcal{L} = -\frac{1}{B}\sum_{(q,i)} \log
        \frac{e^{\mathbf{z}_q\cdot\mathbf{z}_i/\tau}}{e^{\mathbf{z}_q\cdot\mathbf{z}_i/\tau}
        + \sum_n e^{\mathbf{z}_q\cdot\mathbf{z}_n/\tau}}

    Same arguments, shapes and ``stats`` as :func:`max_margin_loss` (``violated`` counts
    negatives scoring at least the positive, estimated on the first 1,024 pairs; ``weight`` as
    there); ``temperature`` :math:`\tau > 0`. ``fused``: with easy negatives only, on contiguous
    float32 CPU tensors outside autocast or under bf16 autocast (:func:`models.fused.fused_ok`;
    its GEMMs then in bf16), the negatives' log-sum-exp is one autograd node
    (:class:`models.fused.NegativesLSE`: the ``[B, N]`` logits in cache-sized row blocks, never
    held whole);
    :obj:`False` (or hard negatives, another device or dtype) takes the op-by-op path, equal to
    float tolerance.
    """
    if not temperature > 0:
        raise ValueError(f"temperature={temperature!r} is invalid: expected a float > 0")
    if fused and z_hard is None and z_easy is not None and fused_ok(z_q, z_pos, z_easy):
        _check(z_q, z_pos, z_easy, z_hard)
        return _fused_softmax(z_q, None, z_pos, z_easy, temperature, weight, None)
    pos_score, neg_score = _scores(z_q, z_pos, z_easy, z_hard)
    logits = torch.cat([pos_score.unsqueeze(1), neg_score], dim=1) / temperature
    loss = _mean(torch.logsumexp(logits, dim=1) - logits[:, 0], weight)
    with torch.no_grad():
        k = min(z_q.size(0), PROBE_ROWS)
        stats = {
            "violated": (neg_score[:k] >= pos_score[:k].unsqueeze(1)).float().mean(),
            "pos_score": pos_score.mean(),
            "neg_score": neg_score.mean(),
        }
    return loss, stats


def _fused_softmax(z_q: Tensor, row: Optional[Tensor], z_pos: Tensor, z_easy: Tensor, tau: float,
                   weight: Optional[Tensor], neg_mask: Optional[Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
    """The sampled softmax through :class:`~models.fused.NegativesLSE`, per pair (``row`` None) or
    grouped (pair ``t`` = query ``row[t]``): ``logaddexp(pos, lse_q) - pos`` as
    ``softplus(lse_q - pos)`` (accurate also for a loss near 0, where the difference of two
    logits of ~1/tau cancels)."""
    zq_rows = z_q if row is None else z_q[row]
    pos = (zq_rows * z_pos).sum(-1) / tau
    k = min(pos.numel(), PROBE_ROWS)
    with torch.no_grad():  # |logit| <= max ||z_q|| max ||z_n|| / tau (Cauchy-Schwarz)
        bound = float(z_q.norm(dim=1).max() * z_easy.norm(dim=1).max()) / tau
    probe_rows = None if row is None or bool((row[:k] == torch.arange(k)).all()) else row[:k]  # None: z_q[:k]
    lse, count = NegativesLSE.apply(z_q, z_easy, tau, neg_mask, bound, pos.detach()[:k], probe_rows)
    # log(e^pos + e^lse) - pos = softplus(lse - pos): no cancellation when the positive dominates
    loss = _mean(torch.nn.functional.softplus((lse if row is None else lse[row]) - pos), weight)
    with torch.no_grad():  # mean over (pair, negative) of z_q . z_n = mean_t z_q[row_t] . mean_n z_n
        neg = zq_rows.detach().mean(0) @ z_easy.detach().mean(0)
        stats = {"violated": count.float() / (k * z_easy.size(0)), "pos_score": pos.detach().mean() * tau,
                 "neg_score": neg}
    return loss, stats


class SampledSoftmaxLoss(torch.nn.Module):
    r"""Module form of :func:`sampled_softmax_loss`.

    Args:
        temperature (float, optional): :math:`\tau > 0`. (default: :obj:`0.1`)
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature > 0:
            raise ValueError(f"temperature={temperature!r} is invalid: expected a float > 0")
        self.temperature = float(temperature)

    fused = True  #: the fused log-sum-exp node where it applies (:func:`sampled_softmax_loss`)

    def forward(self, z_q: Tensor, z_pos: Tensor, z_easy: Optional[Tensor] = None,
                z_hard: Optional[Tensor] = None, weight: Optional[Tensor] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
        return sampled_softmax_loss(z_q, z_pos, z_easy, z_hard, temperature=self.temperature, weight=weight,
                                    fused=self.fused)

    def grouped(self, z_q: Tensor, row: Tensor, z_pos: Tensor, z_easy: Optional[Tensor] = None,
                weight: Optional[Tensor] = None, neg_mask: Optional[Tensor] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
        r"""The same loss for pairs that share queries: ``z_q [Q, d]`` queries, pair ``t`` =
        (``z_q[row[t]]``, ``z_pos[t]``) against the shared easy negatives ``z_easy [N, d]``.
        Equals ``self(z_q[row], z_pos, z_easy, weight=weight)`` with the ``[Q, N]`` negative
        scores computed once per query instead of ``[T, N]`` once per pair:
        :math:`\log(e^{s_{t}} + \sum_n e^{s_{qn}}) = \operatorname{logaddexp}(s_t, \operatorname{LSE}_n s_{qn})`.
        ``stats["violated"]`` is estimated on the first 1,024 pairs (a ``[T, N]`` count would cost
        more than the loss), ``stats["neg_score"]`` is the mean score of every shared negative
        (masked or not). ``neg_mask [Q, N]`` (bool): negatives left out of a query's sum (e.g.
        the user's own training items). The fused node and its conditions as
        :func:`sampled_softmax_loss`'s (``self.fused``)."""
        if z_easy is None or z_easy.numel() == 0:
            pos = (z_q[row] * z_pos).sum(-1) / self.temperature
            return _mean(torch.zeros_like(pos), weight), {"violated": pos.new_zeros(()), "pos_score": pos.mean().detach()
                                                          * self.temperature, "neg_score": pos.new_zeros(())}
        if self.fused and fused_ok(z_q, z_pos, z_easy) and (neg_mask is None or neg_mask.is_contiguous()):
            return _fused_softmax(z_q, row, z_pos, z_easy, self.temperature, weight, neg_mask)
        pos = (z_q[row] * z_pos).sum(-1) / self.temperature
        neg = z_q @ z_easy.t() / self.temperature  # [Q, N]
        with torch.no_grad():
            neg_score = neg.mean(1)[row].mean() * self.temperature  # every shared negative, masked or not
        if neg_mask is not None:
            neg = neg.masked_fill(neg_mask, float("-inf"))
        loss = _mean(torch.logaddexp(pos, torch.logsumexp(neg, dim=1)[row]) - pos, weight)
        with torch.no_grad():
            k = min(row.numel(), PROBE_ROWS)  # a logged statistic: estimated on the first 1,024 pairs
            stats = {"violated": (neg[row[:k]] >= pos[:k, None]).float().mean(),
                     "pos_score": pos.mean() * self.temperature, "neg_score": neg_score}
        return loss, stats

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(temperature={self.temperature})"
