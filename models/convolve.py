"""PinSage's CONVOLVE layer (Ying et al., KDD 2018, Algorithm 1)."""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn import MessagePassing
from torch_geometric.nn.dense.linear import Linear
from torch_geometric.utils import scatter

from models.fused import ConvolveCSR, epilogue_rows_, fused_ok
from models.sparse import SparseAdjacency

PairTensor = Tuple[Tensor, Tensor]


def _pair(in_channels: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
    """``int`` or ``(src, dst)`` -> ``(src, dst)``, each validated ``>= 1``."""
    pair = (in_channels, in_channels) if isinstance(in_channels, int) else tuple(in_channels)
    if len(pair) != 2 or any(not isinstance(c, int) or isinstance(c, bool) or c < 1 for c in pair):
        raise ValueError(
            f"in_channels={in_channels!r} is invalid: expected a positive int or a "
            f"(src, dst) pair of positive ints"
        )
    return pair  # type: ignore[return-value]


def _positive(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r} is invalid: expected a positive int")
    return value


def _check_edges(x_src: Tensor, x_dst: Tensor, edge_index: Tensor,
                 edge_weight: Optional[Tensor]) -> None:
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(
            f"edge_index has shape {tuple(edge_index.shape)}: expected [2, num_edges]")
    if edge_weight is not None and edge_weight.shape != (edge_index.size(1),):
        raise ValueError(
            f"edge_weight has shape {tuple(edge_weight.shape)}: expected "
            f"[{edge_index.size(1)}] (one weight per edge)")
    if x_src.dim() != 2 or x_dst.dim() != 2:
        raise ValueError(
            f"x has shapes {tuple(x_src.shape)}, {tuple(x_dst.shape)}: expected 2-D "
            f"[num_nodes, channels] tensors")


def linear_into(lin: torch.nn.Module, x: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """``lin(x)`` (``x @ W^T + b``) written into ``out`` (allocated when ``None``): one GEMM."""
    w, b = lin.weight, lin.bias
    return torch.mm(x, w.t(), out=out) if b is None else torch.addmm(b, x, w.t(), out=out)


def epilogue_(out: Tensor, bias: Optional[Tensor] = None, relu: bool = True, normalize: bool = True) -> Tensor:
    """``out <- out + bias``, ``ReLU``, then each row divided by ``max(||row||_2, 1e-12)`` (as
    ``F.normalize``), in place and in one pass over ``out`` (a numba kernel for contiguous CPU
    float32; torch ops elsewhere). No autograd: inference only."""
    if out.device.type == "cpu" and out.dtype == torch.float32 and out.dim() == 2 and out.is_contiguous():
        return epilogue_rows_(out, bias, relu, normalize)
    if bias is not None:
        out.add_(bias)
    if relu:
        out.relu_()
    if normalize:
        out.div_(torch.linalg.vector_norm(out, dim=-1, keepdim=True).clamp_min_(1e-12))
    return out


def linear_relu_into(lin: torch.nn.Module, x: Tensor, out: Tensor) -> Tensor:
    """``ReLU(lin(x))`` into ``out``: the GEMM, then bias and ReLU in one pass."""
    return epilogue_(torch.mm(x, lin.weight.t(), out=out), lin.bias, relu=True, normalize=False)


class Convolve(MessagePassing):
    r"""PinSage's CONVOLVE operator (Ying et al., 2018, Algorithm 1):

    .. math::
        \mathbf{n}_u &= \gamma\left(\left\{\mathrm{ReLU}(\mathbf{Q}\mathbf{h}_v + \mathbf{q})
        \mid v \in \mathcal{N}(u)\right\}, \boldsymbol{\alpha}\right)
        = \frac{\sum_{v \in \mathcal{N}(u)} \alpha_{vu}\,
          \mathrm{ReLU}(\mathbf{Q}\mathbf{h}_v + \mathbf{q})}
          {\sum_{v \in \mathcal{N}(u)} \alpha_{vu}}

        \mathbf{h}_u^{\mathrm{new}} &= \mathrm{ReLU}\left(\mathbf{W} \cdot
        \mathrm{concat}(\mathbf{h}_u, \mathbf{n}_u) + \mathbf{w}\right)

        \mathbf{h}_u^{\mathrm{new}} &\leftarrow \mathbf{h}_u^{\mathrm{new}} /
        \lVert \mathbf{h}_u^{\mathrm{new}} \rVert_2

    :math:`\gamma` is *importance pooling*: the mean of the transformed neighbours weighted by
    the importance weights :math:`\alpha` (the L1-normalised random-walk visit counts).  The
    weights are re-normalised by their per-target sum, so un-normalised weights work too; with
    ``use_weights=False`` (or ``edge_weight=None``) it is a plain mean over the neighbours.
    A target without neighbours (or whose weights sum to 0) gets a zero neighbour vector.

    ``edge_index`` is either a ``[2, E]`` edge list (PyG's ``propagate``, one message per edge:
    the sampled minibatch graphs) or a :class:`~models.sparse.SparseAdjacency` ``[n_dst, n_src]``
    (fused: the pooling is one CSR product, for whole-catalogue passes); both give the same
    result.

    Args:
        in_channels (int or tuple): Size of each input sample, or ``(src, dst)`` sizes for
            bipartite input (the minibatch layout calls it with ``(h[:n_src], h[:n_dst])``).
        hidden_channels (int): Output size of the neighbour transform :math:`\mathbf{Q}`.
        out_channels (int): Size of each output sample (rows of :math:`\mathbf{W}`).
        normalize (bool, optional): L2-normalise the output rows. (default: :obj:`True`)
        bias (bool, optional): Learn the biases :math:`\mathbf{q}, \mathbf{w}`.
            (default: :obj:`True`)
        use_weights (bool, optional): Importance pooling with the edge weights
            (:obj:`True`) or plain mean pooling ignoring them (:obj:`False`).
            (default: :obj:`True`)

    Shapes:
        - **input:** node features :math:`(|\mathcal{V}|, F_{in})` or
          :math:`((|\mathcal{V_s}|, F_{s}), (|\mathcal{V_t}|, F_{t}))`,
          edge indices :math:`(2, |\mathcal{E}|)` (row 0 source, row 1 target),
          edge weights :math:`(|\mathcal{E}|)` *(optional, non-negative)*
        - **output:** node features :math:`(|\mathcal{V}_t|, F_{out})`
    """

    def __init__(
        self,
        in_channels: Union[int, Tuple[int, int]],
        hidden_channels: int,
        out_channels: int,
        normalize: bool = True,
        bias: bool = True,
        use_weights: bool = True,
    ) -> None:
        super().__init__(aggr="sum")
        self.in_channels = _pair(in_channels)
        self.hidden_channels = _positive("hidden_channels", hidden_channels)
        self.out_channels = _positive("out_channels", out_channels)
        self.normalize = normalize
        self.use_weights = use_weights

        self.lin_q = Linear(self.in_channels[0], hidden_channels, bias=bias)
        self.lin_w = Linear(self.in_channels[1] + hidden_channels, out_channels, bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.lin_q.reset_parameters()
        self.lin_w.reset_parameters()

    def forward(self, x: Union[Tensor, PairTensor], edge_index: Union[Tensor, SparseAdjacency],
                edge_weight: Optional[Tensor] = None) -> Tensor:
        x_src, x_dst = (x, x) if isinstance(x, Tensor) else x
        msg = F.relu(self.lin_q(x_src))  # each source transformed once: [n_src, hidden]
        if isinstance(edge_index, SparseAdjacency):
            n_u = edge_index.matmul(msg, weighted=self.use_weights)
        else:
            n_u = self._pool(msg, x_dst.size(0), edge_index, edge_weight)

        out = F.relu(self.lin_w(torch.cat([x_dst, n_u], dim=-1)))
        return F.normalize(out, p=2.0, dim=-1) if self.normalize else out

    def forward_prefix(self, h: Tensor, n_dst: int, adj: SparseAdjacency) -> Tensor:
        """``forward((h, h[:n_dst]), adj)``: the minibatch layout, whose targets are the first
        ``n_dst`` sources. On contiguous float32 CPU tensors (no autocast, or bf16 autocast: its
        GEMMs in bf16, :func:`models.fused.gemm_dtype`) one fused autograd node
        (:class:`models.fused.ConvolveCSR`: no concatenation, one pass for bias + ReLU + norm and
        one for their gradient, one gradient tensor for ``h``); elsewhere :meth:`forward`."""
        if not fused_ok(h):
            return self((h, h[:n_dst]), adj)
        a, a_t = adj.matrices(weighted=self.use_weights, normalize=True, device=h.device)
        return ConvolveCSR.apply(h, n_dst, a, a_t, self.lin_q.weight, self.lin_q.bias, self.lin_w.weight,
                                 self.lin_w.bias, self.normalize)

    # -- layer-wise inference protocol (see app/inference.py): the same function, in stages ------
    @property
    def source_linear(self) -> torch.nn.Module:
        """The row-wise source transform ``ReLU(Q h + q)`` (applied once to every item)."""
        return self.lin_q

    @property
    def pool(self) -> str:
        """How the transformed sources are pooled (a :data:`models.sparse.POOLS` mode)."""
        return "weighted_mean" if self.use_weights else "mean"

    def combine(self, h_dst: Tensor, pooled: Tensor, out: Optional[Tensor] = None,
                deg: Optional[Tensor] = None) -> Tensor:
        """``norm(ReLU(W_self h_dst + W_nbr pooled + w))`` into ``out`` (``W`` split, no concat)."""
        w, da = self.lin_w.weight, h_dst.size(-1)
        out = torch.mm(h_dst, w[:, :da].t(), out=out).addmm_(pooled, w[:, da:].t())
        return epilogue_(out, self.lin_w.bias, relu=True, normalize=self.normalize)

    def _pool(self, msg: Tensor, n_dst: int, edge_index: Tensor, edge_weight: Optional[Tensor]) -> Tensor:
        """Importance pooling over an edge list: weighted mean of the sources' messages."""
        _check_edges(msg, msg, edge_index, edge_weight)
        if not self.use_weights or edge_weight is None:
            edge_weight = msg.new_ones(edge_index.size(1))
        summed = self.propagate(edge_index, x=(msg, None), edge_weight=edge_weight,
                                size=(msg.size(0), n_dst))
        total = scatter(edge_weight, edge_index[1], dim=0, dim_size=n_dst, reduce="sum")
        return summed / total.clamp(min=torch.finfo(total.dtype).tiny).unsqueeze(-1)

    def message(self, x_j: Tensor, edge_weight: Tensor) -> Tensor:
        return edge_weight.unsqueeze(-1) * x_j

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
                f"hidden_channels={self.hidden_channels}, normalize={self.normalize}, "
                f"use_weights={self.use_weights})")
