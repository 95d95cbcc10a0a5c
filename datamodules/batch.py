"""The minibatch that crosses from the data side to the model side.

A PinSage minibatch is a *computation graph*: for the ``n_K`` target items a step needs (queries,
positives, negatives), the K-hop importance neighbourhoods, sampled outward layer by layer and
re-indexed to local ids.

Local node layout (the PyG/GraphSAGE "nested prefix" convention)::

    node_ids[:n_K]      targets (layer K)
    node_ids[:n_{K-1}]  targets + their sampled neighbours (layer K-1)
    ...
    node_ids[:n_0]      every node the step touches (layer 0); ``x`` holds their feature rows

``blocks[k]`` (k = 0 .. K-1) is the bipartite message graph that computes layer ``k+1`` from
layer ``k``: ``edge_index[0]`` are source positions ``< size[0] = n_k``, ``edge_index[1]`` are
target positions ``< size[1] = n_{k+1}``, ``edge_weight`` are the L1-normalised visit counts
(the importance-pooling weights alpha; they sum to 1 over each target that has neighbours).
A model therefore runs::

    h = encode(x, node_ids)                      # [n_0, d]
    for k, conv in enumerate(convs):
        n_src, n_dst = blocks[k].size
        h = conv((h[:n_src], h[:n_dst]), blocks[k].edge_index, blocks[k].edge_weight)
    z = head(h)                                  # [n_K, d_out]

For whole-catalogue computation (``full_graph``: the K-hop graph of a batch would cover most of
the catalogue anyway) a training batch is an :class:`IdBatch`: ids only; the model embeds every
item once per step over the ``[I, I]`` neighbourhood matrix
(:meth:`~datamodules.datamodule.PinSageDataModule.full_graph_data`) and reads the rows it needs.

The models package never imports this module (data flows ``app -> datamodules, models``); it
relies only on these attribute names.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import List, Optional, Tuple

import torch
from torch import Tensor


@dataclass
class Block:
    """One layer's message graph.

    Attributes:
        edge_index: ``LongTensor [2, E]``, row 0 source (local, ``< size[0]``), row 1 target
            (local, ``< size[1]``).
        edge_weight: ``FloatTensor [E]`` importance weights (L1-normalised per target).
        size: ``(n_src, n_dst)``.
    """

    edge_index: Tensor
    edge_weight: Tensor
    size: Tuple[int, int]

    def to(self, device, non_blocking: bool = False) -> "Block":
        return Block(
            self.edge_index.to(device, non_blocking=non_blocking),
            self.edge_weight.to(device, non_blocking=non_blocking),
            self.size,
        )

    def pin_memory(self) -> "Block":
        return Block(self.edge_index.pin_memory(), self.edge_weight.pin_memory(), self.size)


@dataclass
class PinSageBatch:
    """A training / evaluation minibatch (see the module docstring for the layout).

    Attributes:
        node_ids: ``LongTensor [n_0]`` global item index of every local node.
        x: ``FloatTensor [n_0, F]`` item feature rows of the local nodes (``F`` may be 0).
        blocks: K :class:`Block` s, ``blocks[0]`` computes layer 1 from layer 0.
        query: ``LongTensor [B]`` target positions (``< n_K``) of the query items q.
        pos: ``LongTensor [B]`` target positions of the positives i.
        easy_neg: ``LongTensor [N]`` target positions of the easy negatives shared by the batch.
        hard_neg: ``LongTensor [B, H]`` target positions of each query's hard negatives (H >= 0).
        epoch: the epoch the batch was built for (drives the hard-negative curriculum).
    """

    node_ids: Tensor
    x: Tensor
    blocks: List[Block]
    query: Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    pos: Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    easy_neg: Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    hard_neg: Tensor = field(default_factory=lambda: torch.empty(0, 0, dtype=torch.long))
    epoch: int = 0

    @property
    def num_targets(self) -> int:
        return self.blocks[-1].size[1] if self.blocks else int(self.node_ids.numel())

    def _map(self, fn) -> "PinSageBatch":
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                v = fn(v)
            elif f.name == "blocks":
                v = [fn(b) for b in v]
            out[f.name] = v
        return PinSageBatch(**out)

    def to(self, device, non_blocking: bool = False) -> "PinSageBatch":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "PinSageBatch":
        return self._map(lambda t: t.pin_memory())


@dataclass
class EvalBatch:
    """Targets only (for embedding items): same layout, no pairs.

    Attributes:
        node_ids, x, blocks: as in :class:`PinSageBatch`.
        targets: ``LongTensor [n_K]`` global ids of the targets (``node_ids[:n_K]``).
    """

    node_ids: Tensor
    x: Tensor
    blocks: List[Block]
    targets: Optional[Tensor] = None

    def to(self, device, non_blocking: bool = False) -> "EvalBatch":
        return EvalBatch(
            self.node_ids.to(device, non_blocking=non_blocking),
            self.x.to(device, non_blocking=non_blocking),
            [b.to(device, non_blocking) for b in self.blocks],
            None if self.targets is None else self.targets.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> "EvalBatch":
        return EvalBatch(
            self.node_ids.pin_memory(),
            self.x.pin_memory(),
            [b.pin_memory() for b in self.blocks],
            None if self.targets is None else self.targets.pin_memory(),
        )


@dataclass
class IdBatch:
    """A training batch for whole-catalogue computation: global ids only.

    Attributes:
        query: ``LongTensor [B]`` query item ids (``queries="items"``) or user ids
            (``queries="users"``: the query is the user's training history without ``pos``).
        pos: ``LongTensor [B]`` positive item ids.
        easy_neg: ``LongTensor [N]`` easy negative item ids shared by the batch.
        hard_neg: ``LongTensor [B, H]`` hard negative item ids per query (H >= 0).
        pos_weight: ``FloatTensor [B]`` the positive's weight in its user's history (what the
            user query leaves out; ``queries="users"`` only, else empty).
        history: ``LongTensor [B, W]`` causal user queries only (else empty): the items the
            user engaged with just before ``pos``, latest first, ``-1`` padding.
        history_weight: ``FloatTensor [B, W]`` their pooling weights (0 on padding).
        queries: ``"items"`` or ``"users"``.
        epoch: the epoch the batch was built for.
    """

    query: Tensor
    pos: Tensor
    easy_neg: Tensor
    hard_neg: Tensor
    pos_weight: Tensor = field(default_factory=lambda: torch.empty(0))
    history: Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    history_weight: Tensor = field(default_factory=lambda: torch.empty(0))
    queries: str = "items"
    epoch: int = 0

    def _map(self, fn) -> "IdBatch":
        return IdBatch(*(fn(getattr(self, f.name)) for f in fields(self)[:7]), queries=self.queries,
                       epoch=self.epoch)

    def to(self, device, non_blocking: bool = False) -> "IdBatch":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "IdBatch":
        return self._map(lambda t: t.pin_memory())
