"""User (board) embeddings from history items: the paper's second MapReduce job, as a layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from models.fused import PoolMinusPositive, fused_ok
from models.sparse import SparseAdjacency


class UserEncoder(torch.nn.Module):
    r"""A user's query vector from the embeddings of their history items:

    .. math::
        \mathbf{p}_u = \frac{\mathbf{W}_u \sum_{j \in \mathcal{H}(u)} w_{uj}\,\mathbf{z}_j}
        {\lVert \cdot \rVert_2}

    importance-weighted pooling (``w``: 1, or recency weights given by the data side)
    through a learned square layer :math:`\mathbf{W}_u` initialised to the identity (so an
    untrained encoder is the normalised mean of the history). ``learned=False`` keeps
    :math:`\mathbf{W}_u = \mathbf{I}`. No bias: the vector does not depend on the history's
    length, only on its direction. A user without history gets the zero vector.

    Args:
        channels (int): embedding size ``d``.
        learned (bool, optional): learn :math:`\mathbf{W}_u`. (default: :obj:`True`)

    Shapes:
        - **input:** pooled sums :math:`(B, d)`
        - **output:** user vectors :math:`(B, d)`, unit rows (or zero)
    """

    fused = True  #: :meth:`leave_one_out_rows` through the fused node where it applies

    def __init__(self, channels: int, learned: bool = True) -> None:
        super().__init__()
        self.channels = int(channels)
        self.learned = bool(learned)
        self.lin = torch.nn.Linear(channels, channels, bias=False) if learned else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.lin is not None:
            with torch.no_grad():
                self.lin.weight.copy_(torch.eye(self.channels))

    def forward(self, pooled: Tensor) -> Tensor:
        out = self.lin(pooled) if self.lin is not None else pooled
        return F.normalize(out, p=2.0, dim=-1)

    def profiles(self, item_emb: Tensor, history: SparseAdjacency) -> Tensor:
        """Every user of ``history [U, I]`` (weights = ``w``): ``item_emb [I, d]`` -> ``[U, d]``."""
        return self(history.matmul(item_emb, normalize=False))

    def leave_one_out(self, pooled_sums: Tensor, z_pos: Tensor, w_pos: Tensor) -> Tensor:
        """Training queries: a user's vector without the positive it is asked to rank
        (``pooled_sums [B, d]`` of full histories, ``z_pos [B, d]``, ``w_pos [B]``)."""
        return self(pooled_sums - w_pos.unsqueeze(-1) * z_pos)

    def leave_one_out_rows(self, item_emb: Tensor, history: SparseAdjacency, users: Tensor, pos: Tensor,
                           w_pos: Tensor) -> Tensor:
        """:meth:`leave_one_out` of the pooled sums of ``users [B]``'s rows of ``history [U, I]``
        (weights ``w``) and the positives ``pos [B]`` (weights ``w_pos [B]``) from
        ``item_emb [I, d]``: ``leave_one_out(history.matmul(item_emb)[users], item_emb[pos], w_pos)``.
        On contiguous float32 CPU tensors outside autocast or under bf16 autocast (and ``w_pos``
        without gradient) only
        the batch's rows are pooled, the positive subtracted in the same pass
        (:class:`models.fused.PoolMinusPositive`); elsewhere (or ``fused = False``) as written."""
        if (self.fused and fused_ok(item_emb, history.weight, w_pos) and not w_pos.requires_grad
                and history.ptr.device.type == "cpu"):
            for name, idx, n in (("users", users, history.num_dst), ("pos", pos, item_emb.size(0))):
                if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
                    raise ValueError(f"{name} holds ids in [{int(idx.min())}, {int(idx.max())}]: expected [0, {n})")
            return self(PoolMinusPositive.apply(item_emb, history.ptr, history.col, history.weight,
                                                users.long().contiguous(), pos.long().contiguous(), w_pos))
        pooled = history.matmul(item_emb, normalize=False)
        return self.leave_one_out(pooled[users], item_emb[pos], w_pos)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.channels}, learned={self.learned})"
