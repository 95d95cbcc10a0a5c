"""User (board) embeddings from history items: the paper's second MapReduce job, as a layer."""

from __future__ import annotations

from typing import Optional

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

    With ``num_users > 0`` (SimpleX-style) each user also has a free vector
    :math:`\mathbf{e}_u` (a row of a learned ``[num_users, d]`` table, initialised to zero, so an
    untrained table gives the vectors above exactly up to rounding):

    .. math::
        \mathbf{p}_u = \frac{\hat{\mathbf{p}}_u + \mathbf{e}_u}{\lVert \cdot \rVert_2},
        \qquad \hat{\mathbf{p}}_u = \frac{\mathbf{W}_u \sum_{j} w_{uj}\,\mathbf{z}_j}{\lVert \cdot \rVert_2}

    and every call then names the rows' users (``users [B]``; :meth:`profiles`: the history's
    rows are the users ``0 .. num_users - 1`` in id order). A user without history gets
    :math:`\mathbf{e}_u` normalised.

    Args:
        channels (int): embedding size ``d``.
        learned (bool, optional): learn :math:`\mathbf{W}_u`. (default: :obj:`True`)
        num_users (int, optional): rows of the user-id table; 0: no table (the vectors depend
            on the history alone). (default: :obj:`0`)

    Shapes:
        - **input:** pooled sums :math:`(B, d)`, user ids :math:`(B)` (with a user-id table)
        - **output:** user vectors :math:`(B, d)`, unit rows (or zero)
    """

    fused = True  #: :meth:`leave_one_out_rows` through the fused node where it applies

    def __init__(self, channels: int, learned: bool = True, num_users: int = 0) -> None:
        super().__init__()
        if int(num_users) < 0:
            raise ValueError(f"num_users={num_users!r} is not valid; expected >= 0 (0: no user-id table)")
        self.channels = int(channels)
        self.learned = bool(learned)
        self.lin = torch.nn.Linear(channels, channels, bias=False) if learned else None
        self.user_emb = torch.nn.Embedding(int(num_users), channels) if int(num_users) > 0 else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            if self.lin is not None:
                self.lin.weight.copy_(torch.eye(self.channels))
            if self.user_emb is not None:
                self.user_emb.weight.zero_()

    @property
    def num_users(self) -> int:
        """Rows of the user-id table (0: none)."""
        return 0 if self.user_emb is None else int(self.user_emb.num_embeddings)

    def forward(self, pooled: Tensor, users: Optional[Tensor] = None) -> Tensor:
        """``pooled [B, d]`` (and, with a user-id table, their users ``users [B]``; ignored
        without one) -> ``[B, d]``."""
        out = self.lin(pooled) if self.lin is not None else pooled
        out = F.normalize(out, p=2.0, dim=-1)
        if self.user_emb is None:
            return out
        return F.normalize(out + self.user_rows(users, out.size(0)), p=2.0, dim=-1)

    def user_rows(self, users: Optional[Tensor], rows: int) -> Tensor:
        """``e_u`` of ``users [rows]`` (``[rows, d]``), with the ids checked against the table."""
        n = self.num_users
        if users is None:
            raise ValueError(f"this UserEncoder has a user-id table (num_users={n}): pass the rows' users [B]")
        if users.shape != (rows,):
            raise ValueError(f"users has shape {tuple(users.shape)}: expected [{rows}] (one user id per row)")
        if users.numel() and (int(users.min()) < 0 or int(users.max()) >= n):
            raise ValueError(f"users holds ids in [{int(users.min())}, {int(users.max())}]: expected [0, {n}) "
                             f"(the user-id table has num_users={n} rows)")
        return self.user_emb(users.long())

    def profiles(self, item_emb: Tensor, history: SparseAdjacency) -> Tensor:
        """Every user of ``history [U, I]`` (weights = ``w``): ``item_emb [I, d]`` -> ``[U, d]``.
        With a user-id table, row ``u`` is user ``u``: ``U`` must be ``num_users``."""
        users = None
        if self.user_emb is not None:
            if history.num_dst != self.num_users:
                raise ValueError(f"history has {history.num_dst} user rows: with a user-id table they must be the "
                                 f"num_users={self.num_users} users in id order")
            users = torch.arange(history.num_dst, device=self.user_emb.weight.device)
        return self(history.matmul(item_emb, normalize=False), users)

    def leave_one_out(self, pooled_sums: Tensor, z_pos: Tensor, w_pos: Tensor,
                      users: Optional[Tensor] = None) -> Tensor:
        """Training queries: a user's vector without the positive it is asked to rank
        (``pooled_sums [B, d]`` of full histories, ``z_pos [B, d]``, ``w_pos [B]``; their
        ``users [B]``, needed with a user-id table)."""
        return self(pooled_sums - w_pos.unsqueeze(-1) * z_pos, users)

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
                                                users.long().contiguous(), pos.long().contiguous(), w_pos), users)
        pooled = history.matmul(item_emb, normalize=False)
        return self.leave_one_out(pooled[users], item_emb[pos], w_pos, users)

    def __repr__(self) -> str:
        extra = f", num_users={self.num_users}" if self.user_emb is not None else ""
        return f"{self.__class__.__name__}({self.channels}, learned={self.learned}{extra})"
