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


# ----------------------------------------------------------------------------------------------
# pool_rows: CSR row-slice pooling into a caller's buffer (layer-wise inference)
# ----------------------------------------------------------------------------------------------
def _pool_reference(ptr, col, w, table, start, n, mode):
    out = torch.zeros(n, table.size(1))
    for r in range(n):
        a, b = int(ptr[start + r]), int(ptr[start + r + 1])
        if b == a:
            continue
        rows = table[col[a:b]]
        if mode == "max":
            out[r] = rows.max(0).values.clamp(min=0)
        elif mode == "sum":
            out[r] = rows.sum(0)
        elif mode == "mean":
            out[r] = rows.mean(0)
        else:
            out[r] = (w[a:b, None] * rows).sum(0) / w[a:b].sum()
    return out


@pytest.mark.parametrize("mode", ["weighted_mean", "mean", "sum", "max"])
@pytest.mark.parametrize("path", ["numba", "torch"])
def test_pool_rows_equals_the_per_row_definition(mode, path):
    from models.sparse import _torch_pool_rows, pool_rows

    adj, _, _ = _graph(n_dst=50, n_src=40, seed=3)
    ptr, col, w = adj.ptr, adj.col, adj.weight
    table = torch.rand(40, 16)  # >= 0 (ReLU outputs), as "max" requires
    start, n = 7, 30
    out = torch.full((n, 16), float("nan"))  # every row must be written, empty ones with zeros
    if path == "numba":
        got = pool_rows(ptr, col, w, table, out, start, mode)
        assert got is out
    else:
        got = _torch_pool_rows(ptr, col, w, table, out, start, mode)
    assert (ptr[start + 1:start + n + 1] == ptr[start:start + n]).any()  # some rows are empty
    torch.testing.assert_close(got, _pool_reference(ptr, col, w, table, start, n, mode), atol=1e-6, rtol=1e-6)


def test_pool_rows_rejects_bad_arguments():
    from models.sparse import pool_rows

    adj, _, _ = _graph()
    with pytest.raises(ValueError, match="mode='median' is invalid"):
        pool_rows(adj.ptr, adj.col, adj.weight, torch.rand(40, 4), torch.empty(3, 4), 0, "median")
    with pytest.raises(ValueError, match=r"rows \[28, 33\) are out of the table's 30 rows"):
        pool_rows(adj.ptr, adj.col, adj.weight, torch.rand(40, 4), torch.empty(5, 4), 28, "sum")
    with pytest.raises(ValueError, match="must be"):
        pool_rows(adj.ptr, adj.col, adj.weight, torch.rand(40, 4), torch.empty(5, 3), 0, "sum")


@pytest.mark.parametrize("conv", ["pinsage", "pinsage-mean", "sage-mean", "sage-gcn", "sage-mean_pool",
                                  "sage-max_pool"])
def test_staged_layer_equals_forward(conv):
    """source_linear -> pool_rows -> combine (W split, in place) == the layer's forward."""
    from models.convolve import linear_into
    from models.sparse import pool_rows

    torch.manual_seed(0)
    layer = (Convolve(16, 8, 12, use_weights=conv == "pinsage") if conv.startswith("pinsage")
             else SAGEConvolve(16, 8, 12, aggregator=conv[5:]))
    adj, ei, w = _graph(n_dst=30, n_src=40)
    xs, xd = torch.randn(40, 16), torch.randn(30, 16)
    with torch.no_grad():
        ref = layer((xs, xd), ei, w)
        table = xs if layer.source_linear is None else linear_into(layer.source_linear, xs).relu_()
        pooled = pool_rows(adj.ptr, adj.col, adj.weight, table, torch.empty(30, table.size(1)), 0, layer.pool)
        out = layer.combine(xd, pooled, out=torch.empty(30, 12), deg=adj.ptr[1:] - adj.ptr[:-1])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# minibatch blocks as CSR products (training): same forward and gradients as PyG's edge list
# ----------------------------------------------------------------------------------------------
def _minibatch(num_items=300, seed=0):
    from app.inference import FixedNeighbourhoods
    from datamodules.minibatch import ComputationGraphBuilder

    rng = np.random.default_rng(seed)
    deg = rng.integers(0, 12, num_items)
    ptr = np.concatenate([[0], np.cumsum(deg)])
    items = rng.integers(0, num_items, ptr[-1])
    weights = rng.random(ptr[-1]).astype(np.float32)
    builder = ComputationGraphBuilder(FixedNeighbourhoods(ptr, items, weights),
                                      rng.standard_normal((num_items, 7)).astype(np.float32), num_layers=2)
    return builder.train_batch(rng.integers(0, num_items, 40), rng.integers(0, num_items, 40),
                               rng.integers(0, num_items, 30), rng.integers(0, num_items, (40, 2)))


@pytest.mark.parametrize("conv,kw", [("pinsage", {}), ("pinsage", {"importance_pooling": False}),
                                     ("sage-mean", {}), ("sage-gcn", {}), ("sage-mean_pool", {}),
                                     ("sage-max_pool", {})])
def test_fused_minibatch_blocks_equal_edge_list_forward_and_gradients(conv, kw):
    batch = _minibatch()
    torch.manual_seed(0)
    model = PinSage(7, 16, 8, num_layers=2, num_items=300, id_embedding=True, conv=conv, skip=True, **kw)
    fused = [model._csr_block(k, b) for k, b in enumerate(batch.blocks)]
    # the builder's blocks are grouped by target, so every aggregator with a CSR form takes it
    assert all((a is not None) == (conv != "sage-max_pool") for a in fused)

    def run(flag):
        model.fused_blocks = flag
        z = model(batch.x, batch.node_ids, batch.blocks)
        loss = (z[batch.query] * z[batch.pos]).sum() - z[batch.easy_neg].square().sum()
        return z.detach(), torch.autograd.grad(loss, list(model.parameters()))

    z_ref, g_ref = run(False)
    z, g = run(True)
    torch.testing.assert_close(z, z_ref, atol=1e-6, rtol=1e-5)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_unsorted_block_keeps_the_edge_list():
    ei = torch.tensor([[0, 1, 2], [1, 0, 1]])
    assert SparseAdjacency.from_sorted_edges(ei, None, 3, 2) is None
    adj = SparseAdjacency.from_sorted_edges(ei[:, [1, 0, 2]], torch.tensor([1.0, 2.0, 3.0]), 3, 2)
    assert adj.ptr.tolist() == [0, 1, 3] and adj.col.tolist() == [1, 0, 2]


def test_csr_transpose_counting_sort():
    from models.sparse import _csr_transpose

    adj, _, _ = _graph(n_dst=30, n_src=40, seed=5)
    t_ptr, t_col, t_w = _csr_transpose(adj.ptr.numpy(), adj.col.numpy(), adj.weight.numpy(), 40)
    dense = torch.zeros(30, 40).index_put_((adj.row, adj.col), adj.weight, accumulate=True)
    rows = torch.repeat_interleave(torch.arange(40), torch.from_numpy(np.diff(t_ptr)))
    dense_t = torch.zeros(40, 30).index_put_((rows, torch.from_numpy(t_col)), torch.from_numpy(t_w), accumulate=True)
    torch.testing.assert_close(dense_t, dense.t())


def test_csr_product_runs_in_float32_under_bf16_autocast():
    """bf16-mixed training: the fused pooling stays float32 (the CPU CSR kernel has no bf16 form)."""
    adj, ei, w = _graph()
    layer = Convolve(16, 8, 12)
    xs = torch.randn(40, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer((xs, torch.randn(30, 16)), adj)
    out.float().sum().backward()
    assert torch.isfinite(out.float()).all() and xs.grad is not None and torch.isfinite(xs.grad).all()


@pytest.mark.parametrize("shape", [(50, 30), (6, 0), (0, 4)])
def test_csr_mm_equals_torch_sparse_mm(shape):
    """models.sparse.csr_mm (addmm with beta = 0 into an uninitialised buffer) gives
    torch.sparse.mm's product, zeros on rows without entries (no garbage, no NaN)."""
    import torch

    from models.sparse import csr_mm

    n, m = shape
    g = torch.Generator().manual_seed(0)
    deg = torch.randint(0, 4, (n,), generator=g) if m else torch.zeros(n, dtype=torch.long)
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), deg.cumsum(0)])
    col = torch.randint(0, max(m, 1), (int(ptr[-1]),), generator=g)
    a = torch.sparse_csr_tensor(ptr, col, torch.rand(col.numel(), generator=g), size=(n, m))
    x = torch.randn(m, 8, generator=g)
    torch.full((n, 8), float("nan"))  # leave NaN in freed memory the new buffer may reuse
    out = csr_mm(a, x)
    assert torch.equal(out, torch.sparse.mm(a, x))
    assert not torch.isnan(out).any() and (out[deg == 0] == 0).all()


def test_cpu_matrices_take_int32_indices_with_the_same_product():
    """matrices() on the CPU: int32 CSR indices (MKL's own; int64 ones are converted on every
    product), the same A and A^T products as with the graph's int64 indices."""
    from models.sparse import csr_mm

    adj, _, _ = _graph(seed=6)
    a, a_t = adj.matrices(weighted=True, normalize=True)
    assert {a.crow_indices().dtype, a.col_indices().dtype, a_t.crow_indices().dtype,
            a_t.col_indices().dtype} == {torch.int32}
    x, y = torch.randn(40, 8), torch.randn(30, 8)
    for m, v in ((a, x), (a_t, y)):
        ref = torch.sparse_csr_tensor(m.crow_indices().long(), m.col_indices().long(), m.values(), size=m.shape)
        assert torch.equal(csr_mm(m, v), csr_mm(ref, v))
    dense = torch.zeros(30, 40).index_put_((adj.row, adj.col), adj.weight, accumulate=True)
    torch.testing.assert_close(a.to_dense(), dense / dense.sum(1, keepdim=True).clamp(min=1e-30))
