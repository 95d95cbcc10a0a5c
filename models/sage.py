"""GraphSAGE aggregator layers (Hamilton et al., NeurIPS 2017) for the PinSage ablation."""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn import MessagePassing
from torch_geometric.nn.dense.linear import Linear
from torch_geometric.utils import scatter, to_dense_batch

from models.convolve import PairTensor, _check_edges, _pair, _positive, epilogue_
from models.sparse import SparseAdjacency

AGGREGATORS = ("mean", "gcn", "max_pool", "mean_pool", "lstm")


class SAGEConvolve(MessagePassing):
    r"""One GraphSAGE layer (Hamilton et al., 2017, Algorithm 1, lines 4-5) with a choice of
    aggregator:

    .. math::
        \mathbf{h}_{\mathcal{N}(u)} &= \mathrm{AGGREGATE}(\{\mathbf{h}_v \mid v \in
        \mathcal{N}(u)\})

        \mathbf{h}_u^{\mathrm{new}} &= \mathrm{ReLU}\left(\mathbf{W} \cdot
        \mathrm{concat}(\mathbf{h}_u, \mathbf{h}_{\mathcal{N}(u)}) + \mathbf{b}\right),
        \qquad \mathbf{h}_u^{\mathrm{new}} \leftarrow \mathbf{h}_u^{\mathrm{new}} /
        \lVert \mathbf{h}_u^{\mathrm{new}} \rVert_2

    Aggregators:

    - ``"mean"``: :math:`\mathrm{mean}_{v}\,\mathbf{h}_v`.
    - ``"gcn"``: no concat, :math:`\mathbf{h}_u^{\mathrm{new}} = \mathrm{ReLU}(\mathbf{W}\,
      \mathrm{mean}(\{\mathbf{h}_u\} \cup \{\mathbf{h}_v\}) + \mathbf{b})`
      (needs equal source and target sizes).
    - ``"max_pool"`` / ``"mean_pool"``: :math:`\max_v / \mathrm{mean}_v\,
      \mathrm{ReLU}(\mathbf{W}_{pool}\mathbf{h}_v + \mathbf{b}_{pool})` (elementwise).
    - ``"lstm"``: final hidden state of an LSTM run over the neighbours in a random order
      (random in training mode; in eval mode the edge order, sorted by target, is kept so that
      embeddings are deterministic).  Unlike
      :class:`torch_geometric.nn.aggr.LSTMAggregation`, sequences are packed by their true
      length, so a short neighbourhood's state is not run through zero padding.

    Targets without neighbours get a zero neighbour vector (``"gcn"``: the mean of the target
    alone).  ``edge_weight`` is accepted for call compatibility with
    :class:`~models.convolve.Convolve` and ignored: GraphSAGE samples uniformly.

    Args:
        in_channels (int or tuple): Size of each input sample, or ``(src, dst)`` sizes.
        hidden_channels (int): Output size of the pooling dense layer / the LSTM (unused by
            ``"mean"`` and ``"gcn"``).
        out_channels (int): Size of each output sample.
        aggregator (str, optional): One of ``"mean"``, ``"gcn"``, ``"max_pool"``,
            ``"mean_pool"``, ``"lstm"``. (default: :obj:`"mean"`)
        normalize (bool, optional): L2-normalise the output rows. (default: :obj:`True`)
        bias (bool, optional): Learn additive biases. (default: :obj:`True`)

    Shapes:
        - **input:** node features :math:`(|\mathcal{V}|, F_{in})` or
          :math:`((|\mathcal{V_s}|, F_{s}), (|\mathcal{V_t}|, F_{t}))`,
          edge indices :math:`(2, |\mathcal{E}|)`, edge weights :math:`(|\mathcal{E}|)`
          *(optional, ignored)*
        - **output:** node features :math:`(|\mathcal{V}_t|, F_{out})`
    """

    def __init__(
        self,
        in_channels: Union[int, Tuple[int, int]],
        hidden_channels: int,
        out_channels: int,
        aggregator: str = "mean",
        normalize: bool = True,
        bias: bool = True,
    ) -> None:
        if aggregator not in AGGREGATORS:
            raise ValueError(
                f"aggregator={aggregator!r} is invalid: expected one of {list(AGGREGATORS)}")
        aggr = {"mean": "mean", "gcn": "sum", "max_pool": "max", "mean_pool": "mean",
                "lstm": None}[aggregator]
        super().__init__(aggr=aggr)
        self.in_channels = _pair(in_channels)
        self.hidden_channels = _positive("hidden_channels", hidden_channels)
        self.out_channels = _positive("out_channels", out_channels)
        self.aggregator = aggregator
        self.normalize = normalize
        in_src, in_dst = self.in_channels

        self.lin_pool = self.lstm = None
        if aggregator == "gcn":
            if in_src != in_dst:
                raise ValueError(
                    f"in_channels={in_channels!r} is invalid for aggregator='gcn': source "
                    f"and target sizes must be equal (self and neighbours are averaged)")
            self.lin = Linear(in_dst, out_channels, bias=bias)
        else:
            if aggregator in ("max_pool", "mean_pool"):
                self.lin_pool = Linear(in_src, hidden_channels, bias=bias)
            elif aggregator == "lstm":
                self.lstm = torch.nn.LSTM(in_src, hidden_channels, batch_first=True, bias=bias)
            neigh = in_src if aggregator == "mean" else hidden_channels
            self.lin = Linear(in_dst + neigh, out_channels, bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.lin.reset_parameters()
        if self.lin_pool is not None:
            self.lin_pool.reset_parameters()
        if self.lstm is not None:
            self.lstm.reset_parameters()

    def forward(self, x: Union[Tensor, PairTensor], edge_index: Tensor,
                edge_weight: Optional[Tensor] = None) -> Tensor:
        x_src, x_dst = (x, x) if isinstance(x, Tensor) else x
        if isinstance(edge_index, SparseAdjacency):
            return self._fused(x_src, x_dst, edge_index)
        _check_edges(x_src, x_dst, edge_index, edge_weight)
        size = (x_src.size(0), x_dst.size(0))

        if self.aggregator == "gcn":
            summed = self.propagate(edge_index, x=(x_src, None), size=size)
            deg = scatter(torch.ones_like(edge_index[1], dtype=x_dst.dtype), edge_index[1],
                          dim=0, dim_size=size[1], reduce="sum")
            out = self.lin((summed + x_dst) / (deg + 1).unsqueeze(-1))
        else:
            if self.lin_pool is not None:
                x_src = F.relu(self.lin_pool(x_src))
            elif self.lstm is not None:
                edge_index = self._lstm_order(edge_index)
            neigh = self.propagate(edge_index, x=(x_src, None), size=size)
            out = self.lin(torch.cat([x_dst, neigh], dim=-1))

        out = F.relu(out)
        return F.normalize(out, p=2.0, dim=-1) if self.normalize else out

    def _fused(self, x_src: Tensor, x_dst: Tensor, adj: SparseAdjacency) -> Tensor:
        """The same layer over a :class:`~models.sparse.SparseAdjacency` (one CSR product;
        unweighted, as GraphSAGE samples uniformly). ``max_pool`` and ``lstm`` need the edge list."""
        if self.aggregator in ("max_pool", "lstm"):
            raise ValueError(f"aggregator={self.aggregator!r} has no fused form: use the edge-list "
                             "(minibatch) computation")
        if self.aggregator == "gcn":
            summed = adj.matmul(x_src, weighted=False, normalize=False)
            deg = adj.degree(weighted=False).to(x_dst.device, x_dst.dtype)
            out = self.lin((summed + x_dst) / (deg + 1).unsqueeze(-1))
        else:
            if self.lin_pool is not None:
                x_src = F.relu(self.lin_pool(x_src))
            out = self.lin(torch.cat([x_dst, adj.matmul(x_src, weighted=False)], dim=-1))
        out = F.relu(out)
        return F.normalize(out, p=2.0, dim=-1) if self.normalize else out

    # -- layer-wise inference protocol (see app/inference.py) -------------------------------------
    @property
    def source_linear(self) -> Optional[torch.nn.Module]:
        """The row-wise source transform ``ReLU(W_pool h + b)`` (pooling aggregators), else ``None``."""
        return self.lin_pool

    @property
    def pool(self) -> Optional[str]:
        """The :data:`models.sparse.POOLS` mode of the aggregator; ``None`` (LSTM): no CSR form."""
        return {"mean": "mean", "mean_pool": "mean", "max_pool": "max", "gcn": "sum", "lstm": None}[self.aggregator]

    def combine(self, h_dst: Tensor, pooled: Tensor, out: Optional[Tensor] = None,
                deg: Optional[Tensor] = None) -> Tensor:
        """The layer's output from the targets' rows and their pooled neighbours, into ``out``.
        ``"gcn"``: ``pooled`` holds the neighbour *sums* and is overwritten; ``deg`` is needed."""
        if self.aggregator == "gcn":
            if deg is None:
                raise ValueError("deg is needed by aggregator='gcn' (self and neighbours are averaged)")
            pooled = pooled.add_(h_dst).div_(deg.to(pooled.dtype).add(1).unsqueeze(-1))
            out = torch.mm(pooled, self.lin.weight.t(), out=out)
        else:
            w, da = self.lin.weight, h_dst.size(-1)
            out = torch.mm(h_dst, w[:, :da].t(), out=out).addmm_(pooled, w[:, da:].t())
        return epilogue_(out, self.lin.bias, relu=True, normalize=self.normalize)

    def _lstm_order(self, edge_index: Tensor) -> Tensor:
        """Edges grouped by target (stable), in a random neighbour order when training."""
        if self.training:
            edge_index = edge_index[:, torch.randperm(edge_index.size(1),
                                                      device=edge_index.device)]
        perm = torch.sort(edge_index[1], stable=True)[1]
        return edge_index[:, perm]

    def aggregate(self, inputs: Tensor, index: Tensor, ptr: Optional[Tensor] = None,
                  dim_size: Optional[int] = None) -> Tensor:
        if self.aggregator != "lstm":
            return super().aggregate(inputs, index, ptr, dim_size)
        # inputs are sorted by target (see _lstm_order): pack each target's run of neighbours.
        out = inputs.new_zeros(dim_size, self.hidden_channels)
        if inputs.size(0) == 0:
            return out
        dense, _ = to_dense_batch(inputs, index, batch_size=dim_size)  # [n_dst, max_deg, C]
        lengths = torch.bincount(index, minlength=dim_size)
        has = (lengths > 0).nonzero().view(-1)
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            dense[has], lengths[has].cpu(), batch_first=True, enforce_sorted=False)
        _, (h_n, _) = self.lstm(packed)
        return out.index_copy(0, has, h_n[-1])

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
                f"aggregator={self.aggregator!r}, hidden_channels={self.hidden_channels}, "
                f"normalize={self.normalize})")
