"""The PinSage item-embedding network: input encoder, K convolutions, output head."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from models.convolve import Convolve, epilogue_, linear_into, linear_relu_into
from models.fused import ENCODE_MAX_FEATURES, EncodeFn, HeadFn, fused_ok
from models.sage import AGGREGATORS, SAGEConvolve
from models.sparse import SparseAdjacency

CONVS = ("pinsage",) + tuple(f"sage-{a}" for a in AGGREGATORS)


def _int_at_least(name: str, value: int, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name}={value!r} is invalid: expected an int >= {low}")
    return value


def _is_arange(ids: Tensor, n: int) -> bool:
    """``ids`` is ``0, 1, ..., n - 1`` (whole-catalogue steps embed every item in id order)."""
    return (ids.numel() == n and n > 0 and int(ids[0]) == 0 and int(ids[-1]) == n - 1
            and bool((ids[1:] - ids[:-1] == 1).all()))


class PinSage(torch.nn.Module):
    r"""PinSage (Ying et al., KDD 2018): item embeddings from content features and the
    importance-sampled K-hop neighbourhood.

    .. math::
        \mathbf{h}^{(0)}_u &= \mathrm{ReLU}(\mathbf{A}\mathbf{x}_u + \mathbf{a})
        \;[+\; \mathbf{e}_{\mathrm{id}(u)}]

        \mathbf{h}^{(k)}_u &= \mathrm{CONVOLVE}^{(k)}\left(\mathbf{h}^{(k-1)}_u,
        \{\mathbf{h}^{(k-1)}_v \mid v \in \mathcal{N}(u)\}, \boldsymbol{\alpha}\right),
        \quad k = 1, \dots, K

        \mathbf{z}_u &= \frac{\mathbf{G}_2\,\mathrm{ReLU}(\mathbf{G}_1 \mathbf{h}^{(K)}_u +
        \mathbf{g}) \;[+\; \mathbf{h}^{(0)}_u]}{\lVert \cdot \rVert_2}

    The bracketed skip connection (``skip=True``) adds the encoded input to the head's output, so
    an item's own (ID / content) representation reaches the embedding directly, not only through
    K convolutions and the head; with ID embeddings and no content (e.g. Gowalla) it trains ~2x
    faster to the same recall.

    Minibatch layout (nested prefixes, see ``datamodules/batch.py``): ``x``/``node_ids`` hold
    the ``n_0`` nodes of layer 0; ``blocks[k]`` (with ``.edge_index``, ``.edge_weight``,
    ``.size = (n_k, n_{k+1})``) computes layer ``k+1`` for the first ``n_{k+1}`` nodes from the
    first ``n_k`` nodes.  A block may also be a :class:`~models.sparse.SparseAdjacency`
    ``[n_{k+1}, n_k]`` (fused pooling): with the ``[I, I]`` neighbourhood matrix of the whole
    catalogue as every block, ``forward`` embeds every item in one pass (each item computed
    once per layer: the de-duplicated computation graph of a batch that covers the catalogue).
    :meth:`encode`, :meth:`layer` and :meth:`head` expose the stages so
    that full-catalogue inference can run layer by layer without recomputation; in eval mode
    ``forward == head(layer(K-1, ... layer(0, encode(x, ids) ...)))``.

    Args:
        in_channels (int): Number of content features ``F`` per item (may be 0 when
            ``id_embedding=True``).
        hidden_channels (int): Width of every hidden representation ``h``.
        out_channels (int): Size of the output embeddings ``z``.
        num_layers (int, optional): Number of convolutions ``K >= 1``. (default: :obj:`2`)
        num_items (int, optional): Size of the ID-embedding table (global item ids).
            (default: :obj:`0`)
        id_embedding (bool, optional): Add a learnable per-item embedding to the encoded
            features (transductive; required when ``in_channels == 0``).
            (default: :obj:`False`)
        conv (str, optional): ``"pinsage"`` (:class:`~models.convolve.Convolve`) or a
            GraphSAGE aggregator ``"sage-mean"``, ``"sage-gcn"``, ``"sage-max_pool"``,
            ``"sage-mean_pool"``, ``"sage-lstm"`` (:class:`~models.sage.SAGEConvolve`).
            (default: :obj:`"pinsage"`)
        importance_pooling (bool, optional): For ``conv="pinsage"``: pool neighbours weighted
            by their importance (:obj:`True`) or by a plain mean (:obj:`False`).
            (default: :obj:`True`)
        dropout (float, optional): Dropout on the input of every convolution, in ``[0, 1)``.
            (default: :obj:`0.0`)
        skip (bool, optional): Add :math:`\mathbf{h}^{(0)}` (projected when
            ``out_channels != hidden_channels``) to the head's output before normalising.
            (default: :obj:`False`)
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        out_channels: int,
        num_layers: int = 2,
        num_items: int = 0,
        id_embedding: bool = False,
        conv: str = "pinsage",
        importance_pooling: bool = True,
        dropout: float = 0.0,
        skip: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = _int_at_least("in_channels", in_channels, 0)
        self.hidden_channels = _int_at_least("hidden_channels", hidden_channels, 1)
        self.out_channels = _int_at_least("out_channels", out_channels, 1)
        self.num_layers = _int_at_least("num_layers", num_layers, 1)
        self.num_items = _int_at_least("num_items", num_items, 0)
        if conv not in CONVS:
            raise ValueError(f"conv={conv!r} is invalid: expected one of {list(CONVS)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout!r} is invalid: expected a float in [0, 1)")
        if in_channels == 0 and not id_embedding:
            raise ValueError(
                "in_channels=0 needs id_embedding=True: without content features the items "
                "can only be represented by a learnable ID embedding")
        if id_embedding and num_items < 1:
            raise ValueError(
                f"num_items={num_items!r} is invalid with id_embedding=True: expected the "
                f"number of items (>= 1) to size the embedding table")
        self.id_embedding = id_embedding
        self.conv = conv
        self.importance_pooling = importance_pooling
        self.dropout = dropout
        self.skip = bool(skip)
        #: minibatch blocks run as CSR products (see :meth:`_csr_block`); ``False``: PyG's edge list
        self.fused_blocks = True
        #: CPU float32 training runs each CSR-block layer and the head as one autograd node
        #: (``models.fused``); ``False``: op by op (same values and gradients)
        self.fused_nodes = True

        d = hidden_channels
        self.lin_in = torch.nn.Linear(in_channels, d) if in_channels > 0 else None
        self.emb = torch.nn.Embedding(num_items, d) if id_embedding else None
        self.convs = torch.nn.ModuleList()
        for _ in range(num_layers):
            if conv == "pinsage":
                self.convs.append(Convolve(d, d, d, use_weights=importance_pooling))
            else:
                self.convs.append(SAGEConvolve(d, d, d, aggregator=conv[len("sage-"):]))
        self.lin_g1 = torch.nn.Linear(d, d)
        self.lin_g2 = torch.nn.Linear(d, out_channels)
        self.lin_skip = (torch.nn.Linear(d, out_channels, bias=False)
                         if self.skip and out_channels != d else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.lin_in is not None:
            self.lin_in.reset_parameters()
        if self.emb is not None:
            torch.nn.init.normal_(self.emb.weight, std=self.hidden_channels ** -0.5)
        for conv in self.convs:
            conv.reset_parameters()
        self.lin_g1.reset_parameters()
        self.lin_g2.reset_parameters()
        if self.lin_skip is not None:
            self.lin_skip.reset_parameters()

    def encode(self, x: Tensor, node_ids: Optional[Tensor] = None, out: Optional[Tensor] = None) -> Tensor:
        r"""Input encoder :math:`\mathbf{h}^{(0)}`: ``x [n, F]``, ``node_ids [n]`` (global
        item ids; needed with the ID embedding; ``-1``: an item without an ID row, e.g. a new
        item, whose ID term is left out; not with ``out``) -> ``[n, hidden]`` (written into
        ``out`` when given: no allocation, for inference)."""
        if x.dim() != 2 or x.size(1) != self.in_channels:
            raise ValueError(
                f"x has shape {tuple(x.shape)}: expected [num_nodes, {self.in_channels}]")
        if self.emb is not None and (node_ids is None or node_ids.shape != (x.size(0),)):
            raise ValueError(
                f"node_ids={None if node_ids is None else tuple(node_ids.shape)} is "
                f"invalid with id_embedding=True: expected a LongTensor [{x.size(0)}]")
        if out is not None:
            if self.lin_in is not None:
                linear_relu_into(self.lin_in, x, out)
                return out if self.emb is None else out.add_(self.emb.weight[node_ids])
            return torch.index_select(self.emb.weight, 0, node_ids, out=out)
        whole = self.emb is not None and _is_arange(node_ids, self.emb.num_embeddings)
        if (whole and self.lin_in is not None and self.fused_nodes and x.size(1) <= ENCODE_MAX_FEATURES
                and fused_ok(x, self.emb.weight)):  # one autograd node (models.fused.EncodeFn)
            return EncodeFn.apply(x, self.lin_in.weight, self.lin_in.bias, self.emb.weight)
        h = F.relu(self.lin_in(x)) if self.lin_in is not None else None
        if whole:
            e = self.emb.weight  # the whole catalogue in id order: no gather, no scatter backward
            h = e.clone() if h is None else h + e
        elif self.emb is not None:
            e = self.emb(node_ids.clamp(min=0))
            if bool((node_ids < 0).any()):
                e = e * (node_ids >= 0).unsqueeze(-1).to(e.dtype)
            h = e if h is None else h + e
        return h

    def layer(self, k: int, h_src: Tensor, h_dst: Tensor, edge_index,
              edge_weight: Optional[Tensor] = None) -> Tensor:
        """Convolution ``k`` (0-based): ``h_src [n_src, hidden]``, ``h_dst [n_dst, hidden]``,
        ``edge_index [2, E]`` with ``edge_weight [E]``, or a ``SparseAdjacency [n_dst, n_src]``
        -> ``[n_dst, hidden]``."""
        if not isinstance(k, int) or not 0 <= k < self.num_layers:
            raise ValueError(f"k={k!r} is invalid: expected an int in [0, {self.num_layers})")
        return self.convs[k]((h_src, h_dst), edge_index, edge_weight)

    def head(self, h: Tensor, h0: Optional[Tensor] = None, out: Optional[Tensor] = None,
             buf: Optional[Tensor] = None) -> Tensor:
        r"""Output head :math:`\mathbf{z} = \mathrm{norm}(\mathbf{G}_2\,\mathrm{ReLU}(
        \mathbf{G}_1\mathbf{h}) [+ \mathbf{h}^{(0)}])`: ``h [n, hidden]`` (and, with ``skip``,
        the same rows' layer-0 ``h0 [n, hidden]``) -> ``[n, out]``.  With ``out`` (and a
        ``[n, hidden]`` scratch ``buf``) nothing is allocated (inference; no autograd)."""
        if self.skip and (h0 is None or h0.shape != h.shape):
            raise ValueError(f"h0={None if h0 is None else tuple(h0.shape)} is invalid with skip=True: "
                             f"expected the layer-0 rows {tuple(h.shape)}")
        if out is not None:
            linear_into(self.lin_g2, linear_relu_into(self.lin_g1, h, buf), out)
            if self.skip:
                out.add_(h0) if self.lin_skip is None else out.addmm_(h0, self.lin_skip.weight.t())
            return epilogue_(out, relu=False, normalize=True)
        if self.fused_nodes and fused_ok(h, *([h0] if self.skip else [])):  # one autograd node (models.fused.HeadFn)
            skip = 0 if not self.skip else (1 if self.lin_skip is None else 2)
            return HeadFn.apply(h, h0 if self.skip else None, self.lin_g1.weight, self.lin_g1.bias,
                                self.lin_g2.weight, self.lin_g2.bias,
                                self.lin_skip.weight if skip == 2 else None, skip)
        out = self.lin_g2(F.relu(self.lin_g1(h)))
        if self.skip:
            out = out + (h0 if self.lin_skip is None else self.lin_skip(h0))
        return F.normalize(out, p=2.0, dim=-1)

    def forward(self, x: Tensor, node_ids: Optional[Tensor], blocks: Sequence) -> Tensor:
        """``x [n_0, F]``, ``node_ids [n_0]``, ``blocks`` (K objects with ``.edge_index``,
        ``.edge_weight``, ``.size``) -> embeddings of the targets ``[n_K, out]``."""
        if len(blocks) != self.num_layers:
            raise ValueError(
                f"len(blocks)={len(blocks)} is invalid: the model has num_layers="
                f"{self.num_layers} and needs one block per layer")
        h = h0 = self.encode(x, node_ids)
        for k, block in enumerate(blocks):
            n_src, n_dst = block.size
            if n_src > h.size(0) or n_dst > n_src:
                raise ValueError(
                    f"blocks[{k}].size={tuple(block.size)} is invalid: expected n_dst <= "
                    f"n_src <= {h.size(0)} (nested prefix layout)")
            h = F.dropout(h, p=self.dropout, training=self.training)
            adj = block if isinstance(block, SparseAdjacency) else self._csr_block(k, block)
            h_src = h if n_src == h.size(0) else h[:n_src]  # no slice node when it is all of h
            if adj is not None and self.fused_nodes and isinstance(self.convs[k], Convolve):
                h = self.convs[k].forward_prefix(h_src, n_dst, adj)
            elif adj is not None:
                h = self.layer(k, h_src, h[:n_dst], adj)
            else:
                h = self.layer(k, h[:n_src], h[:n_dst], block.edge_index, block.edge_weight)
        return self.head(h, (h0 if h0.size(0) == h.size(0) else h0[:h.size(0)]) if self.skip else None)

    def _csr_block(self, k: int, block) -> Optional[SparseAdjacency]:
        """A minibatch block as a CSR matrix (its edges are grouped by target, as
        ``datamodules.minibatch`` builds them): pooling is then one CSR product forward and one
        with the transpose backward, instead of PyG's per-edge gather / multiply / scatter.
        ``None`` (keep the edge list) when ``fused_blocks`` is off, the aggregator has no CSR
        form (max pooling, LSTM) or the edges are not grouped."""
        if not self.fused_blocks or self.convs[k].pool not in ("weighted_mean", "mean", "sum"):
            return None
        n_src, n_dst = block.size
        return SparseAdjacency.from_sorted_edges(block.edge_index, block.edge_weight, n_src, n_dst)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
                f"hidden_channels={self.hidden_channels}, num_layers={self.num_layers}, "
                f"conv={self.conv!r}, importance_pooling={self.importance_pooling}, "
                f"id_embedding={self.id_embedding}, num_items={self.num_items}"
                f"{', skip=True' if self.skip else ''})")
