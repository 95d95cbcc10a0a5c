"""LightGCN reference: the propagation equals PyG's LightGCN, BPR training learns the graph."""

import numpy as np
import pytest
import torch

from models.lightgcn import BPRTriples, LightGCNModule, normalized_adjacency


def _graph(num_users=40, num_items=30, seed=0):
    """Two blocks: users < half like items < half, the others the rest."""
    rng = np.random.default_rng(seed)
    A = np.zeros((num_users, num_items), dtype=bool)
    for u in range(num_users):
        lo, hi = (0, num_items // 2) if u < num_users // 2 else (num_items // 2, num_items)
        A[u, rng.choice(np.arange(lo, hi), size=5, replace=False)] = True
    ptr = np.r_[0, np.cumsum(A.sum(1))].astype(np.int64)
    return A, ptr, np.nonzero(A)[1].astype(np.int64)


def test_propagation_matches_pyg_lightgcn():
    A, ptr, items = _graph()
    U, I = A.shape
    m = LightGCNModule(U, I, embedding_dim=8, num_layers=3)
    m.set_graph(ptr, items)
    users = np.repeat(np.arange(U), np.diff(ptr))
    edge_index = torch.tensor(np.stack([np.r_[users, items + U], np.r_[items + U, users]]))
    ref = m.model.get_embedding(edge_index)  # PyG's own LGConv propagation
    torch.testing.assert_close(m._propagate(), ref, rtol=1e-5, atol=1e-6)
    adj = normalized_adjacency(ptr, items, U, I).to_dense()
    torch.testing.assert_close(adj, adj.t())


def test_bpr_triples_negatives_are_not_positives_and_change_per_epoch():
    A, ptr, items = _graph()
    d = BPRTriples(ptr, items, A.shape[1], seed=1)
    u, p, n = (np.array(x) for x in zip(*[d[i] for i in range(len(d))]))
    assert A[u, p].all() and not A[u, n].any()
    first = d.neg.copy()
    d.set_epoch(1)
    assert (d.neg != first).any()


def test_training_separates_the_blocks():
    import pytorch_lightning as pl

    A, ptr, items = _graph()
    U, I = A.shape
    pl.seed_everything(0)
    m = LightGCNModule(U, I, embedding_dim=16, num_layers=2, lr=0.05)
    m.set_graph(ptr, items)
    dl = torch.utils.data.DataLoader(BPRTriples(ptr, items, I), batch_size=64, shuffle=True)
    trainer = pl.Trainer(max_epochs=15, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(m, dl)
    ue, ie = m.embeddings()
    assert ue.shape == (U, 16) and ie.shape == (I, 16)
    s = (ue @ ie.t()).numpy()
    same = np.zeros_like(A)
    same[: U // 2, : I // 2] = True
    same[U // 2:, I // 2:] = True
    # every user scores the unseen items of their own block above those of the other block
    assert s[same & ~A].mean() > s[~same].mean() + 0.5
    with pytest.raises(RuntimeError, match="set_graph"):
        LightGCNModule(U, I)._propagate()
    with pytest.raises(ValueError, match="embedding_dim=0"):
        LightGCNModule(U, I, embedding_dim=0)
