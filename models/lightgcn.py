"""LightGCN (He et al., SIGIR 2020) as the GNN reference: PyG's model trained with BPR by Lightning.

:class:`LightGCNModule` wraps :class:`torch_geometric.nn.models.LightGCN` over the users + items
training graph (users are nodes ``0 .. U-1``, items ``U .. U+I-1``, both edge directions, the
symmetric normalisation of :class:`torch_geometric.nn.conv.LGConv` precomputed once into a sparse
adjacency). Every training step propagates the whole graph and takes PyG's BPR loss
(``recommendation_loss``, L2 on the batch's layer-0 embeddings) on a batch of ``(user, positive
item, negative item)`` triples; :class:`BPRTriples` draws one uniform negative per training edge
each epoch. ``embeddings()`` returns the final ``(user_emb [U, d], item_emb [I, d])``; a user's
score for item ``j`` is their dot product (the LightGCN paper's protocol).

The paper's setting is the default (d = 64, 3 layers, Adam lr 1e-3, lambda 1e-4, batch 2048).
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torch_geometric.nn.models import LightGCN


def normalized_adjacency(user_ptr, user_items, num_users: int, num_items: int) -> Tensor:
    """``D^-1/2 A D^-1/2`` of the symmetric users + items graph as a sparse CSR tensor."""
    user_ptr = np.asarray(user_ptr, dtype=np.int64)
    items = np.asarray(user_items, dtype=np.int64)
    users = np.repeat(np.arange(num_users, dtype=np.int64), np.diff(user_ptr))
    n = num_users + num_items
    row = np.concatenate([users, items + num_users])
    col = np.concatenate([items + num_users, users])
    deg = np.bincount(row, minlength=n).astype(np.float32)
    inv = np.divide(1.0, np.sqrt(deg), out=np.zeros_like(deg), where=deg > 0)
    val = inv[row] * inv[col]
    coo = torch.sparse_coo_tensor(torch.from_numpy(np.stack([row, col])), torch.from_numpy(val), (n, n))
    return coo.coalesce().to_sparse_csr()


class BPRTriples(Dataset):
    """One ``(user, positive item, negative item)`` per training edge; the negatives are drawn
    uniformly (a draw that is one of the user's items is redrawn, up to 10 times) and change with
    :meth:`set_epoch` (seeded by ``(seed, epoch)``)."""

    def __init__(self, user_ptr, user_items, num_items: int, seed: int = 0):
        self.ptr = np.asarray(user_ptr, dtype=np.int64)
        self.items = np.asarray(user_items, dtype=np.int64)
        self.users = np.repeat(np.arange(self.ptr.size - 1, dtype=np.int64), np.diff(self.ptr))
        self.num_items, self.seed = int(num_items), int(seed)
        self._keys = np.sort(self.users * self.num_items + self.items)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        rng = np.random.default_rng([self.seed, int(epoch)])
        neg = rng.integers(0, self.num_items, self.users.size)
        for _ in range(10):
            k = self.users * self.num_items + neg
            pos = np.clip(np.searchsorted(self._keys, k), 0, max(self._keys.size - 1, 0))
            bad = self._keys[pos] == k
            if not bad.any():
                break
            neg[bad] = rng.integers(0, self.num_items, int(bad.sum()))
        self.neg = neg

    def __len__(self) -> int:
        return self.users.size

    def __getitem__(self, i):
        return self.users[i], self.items[i], self.neg[i]


class LightGCNModule(pl.LightningModule):
    """PyG LightGCN + BPR over a fixed training graph (see the module docstring)."""

    def __init__(self, num_users: int, num_items: int, embedding_dim: int = 64, num_layers: int = 3,
                 lr: float = 1e-3, lambda_reg: float = 1e-4):
        super().__init__()
        for name, v in (("num_users", num_users), ("num_items", num_items), ("embedding_dim", embedding_dim),
                        ("num_layers", num_layers)):
            if int(v) < 1:
                raise ValueError(f"{name}={v!r} is invalid: expected an int >= 1")
        self.save_hyperparameters()
        self.model = LightGCN(num_users + num_items, embedding_dim, num_layers)
        self.adj: Tensor | None = None

    def set_graph(self, user_ptr, user_items) -> None:
        self.adj = normalized_adjacency(user_ptr, user_items, self.hparams.num_users, self.hparams.num_items)

    def _propagate(self) -> Tensor:
        if self.adj is None:
            raise RuntimeError("LightGCNModule.set_graph(user_ptr, user_items) must be called before training")
        x = self.model.embedding.weight
        out = x * self.model.alpha[0]
        for i in range(self.model.num_layers):
            x = torch.sparse.mm(self.adj, x)  # LGConv with the precomputed normalisation
            out = out + x * self.model.alpha[i + 1]
        return out

    def training_step(self, batch, batch_idx: int) -> Tensor:
        u, p, n = (t.long() for t in batch)
        U = self.hparams.num_users
        emb = self._propagate()
        zu, zp, zn = emb[u], emb[p + U], emb[n + U]
        pos, neg = (zu * zp).sum(-1), (zu * zn).sum(-1)
        node_id = torch.cat([u, p + U, n + U])
        loss = self.model.recommendation_loss(pos, neg, node_id=node_id, lambda_reg=self.hparams.lambda_reg)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_train_epoch_start(self) -> None:
        dl = self.trainer.train_dataloader
        ds = getattr(dl, "dataset", None)
        if hasattr(ds, "set_epoch"):
            ds.set_epoch(self.current_epoch)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    @torch.no_grad()
    def embeddings(self) -> Tuple[Tensor, Tensor]:
        """``(user_emb [U, d], item_emb [I, d])`` after propagation."""
        emb = self._propagate().detach()
        U = self.hparams.num_users
        return emb[:U], emb[U:]
