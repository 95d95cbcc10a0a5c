"""Fused sparse aggregation equals PyG's edge-list path, in values and gradients."""

import numpy as np
import pytest
import torch

from models.convolve import Convolve
from models.pinsage import PinSage
from models.sage import SAGEConvolve
from models.sparse import SparseAdjacency


def _graph(n_dst=30, n_src=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    deg = torch.randint(0, 6, (n_dst,), generator=g)  # some targets without neighbours
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), deg.cumsum(0)])
    col = torch.randint(0, n_src, (int(deg.sum()),), generator=g)
    w = torch.rand(col.numel(), generator=g) + 0.1
    edge_index = torch.stack([col, torch.repeat_interleave(torch.arange(n_dst), deg)])
    return SparseAdjacency(ptr, col, w, num_src=n_src), edge_index, w


def _compare(layer, n_src=40, n_dst=30, weighted=True):
    adj, ei, w = _graph(n_dst, n_src)
    xs = torch.randn(n_src, 16, requires_grad=True)
    xd = torch.randn(n_dst, 16, requires_grad=True)
    a = layer((xs, xd), ei, w if weighted else None)
    ga = torch.autograd.grad(a.square().sum(), (xs, xd))
    b = layer((xs, xd), adj)
    gb = torch.autograd.grad(b.square().sum(), (xs, xd))
    assert torch.allclose(a, b, atol=1e-5)
    for x, y in zip(ga, gb):
        assert torch.allclose(x, y, atol=1e-5)


@pytest.mark.parametrize("use_weights", [True, False])
def test_convolve_fused_equals_edge_list(use_weights):
    torch.manual_seed(0)
    _compare(Convolve(16, 8, 12, use_weights=use_weights), weighted=use_weights)


@pytest.mark.parametrize("aggregator", ["mean", "mean_pool"])
def test_sage_fused_equals_edge_list(aggregator):
    torch.manual_seed(0)
    _compare(SAGEConvolve(16, 8, 12, aggregator=aggregator))


def test_sage_gcn_fused_equals_edge_list():
    torch.manual_seed(0)
    _compare(SAGEConvolve(16, 8, 12, aggregator="gcn"), n_src=30, n_dst=30)


def test_sage_lstm_has_no_fused_form():
    adj, _, _ = _graph()
    with pytest.raises(ValueError, match="no fused form"):
        SAGEConvolve(16, 8, 12, aggregator="lstm")((torch.randn(40, 16), torch.randn(30, 16)), adj)


def test_spmm_gradient_matches_dense():
    adj, _, _ = _graph()
    dense = torch.zeros(adj.num_dst, adj.num_src)
    dense.index_put_((adj.row, adj.col), adj.weight, accumulate=True)
    dense = dense / dense.sum(1, keepdim=True).clamp(min=1e-30)
    x = torch.randn(adj.num_src, 5, dtype=torch.float32, requires_grad=True)
    y = adj.matmul(x)
    assert torch.allclose(y, dense @ x, atol=1e-5)
    (g,) = torch.autograd.grad((y * torch.arange(5.0)).sum(), x)
    assert torch.allclose(g, dense.t() @ torch.arange(5.0).expand(adj.num_dst, 5), atol=1e-5)


def test_rows_slice_and_bad_shapes():
    adj, _, _ = _graph()
    x = torch.randn(adj.num_src, 4)
    assert torch.allclose(adj.rows(5, 17).matmul(x), adj.matmul(x)[5:17], atol=1e-6)
    with pytest.raises(ValueError, match="expected \\[40, d\\]"):
        adj.matmul(torch.randn(3, 4))
    with pytest.raises(ValueError, match="CSR"):
        SparseAdjacency([0, 2], [1], [1.0])


@pytest.mark.parametrize("conv,skip", [("pinsage", False), ("pinsage", True), ("sage-mean", False)])
def test_pinsage_full_pass_equals_layerwise_inference(conv, skip):
    from app.inference import layerwise_embeddings

    torch.manual_seed(0)
    num_items = 50
    adj, _, _ = _graph(num_items, num_items, seed=3)
    model = PinSage(6, 16, 8, num_layers=2, num_items=num_items, id_embedding=True, conv=conv, skip=skip).eval()
    x = torch.randn(num_items, 6)
    ids = torch.arange(num_items)
    z_full = model(x, ids, [adj, adj])
    nbr = (adj.ptr.numpy(), adj.col.numpy(), adj.weight.numpy().astype(np.float32))
    z_lw = layerwise_embeddings(model, x, nbr, chunk_size=17)
    assert torch.allclose(z_full, z_lw, atol=1e-5)
