"""The fused CPU training nodes (models.fused) equal the op-by-op path in values and gradients."""

import pytest
import torch
import torch.nn.functional as F

from models.convolve import Convolve
from models.pinsage import PinSage
from models.sparse import SparseAdjacency


def _adj(n_dst, n_src, seed=0):
    g = torch.Generator().manual_seed(seed)
    deg = torch.randint(0, 6, (n_dst,), generator=g)  # some targets without neighbours
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), deg.cumsum(0)])
    col = torch.randint(0, n_src, (int(deg.sum()),), generator=g)
    return SparseAdjacency(ptr, col, torch.rand(col.numel(), generator=g) + 0.1, num_src=n_src)


def _grads(out, inputs, seed=1):
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    return torch.autograd.grad((out * w).sum() + out.square().sum(), inputs)


@pytest.mark.parametrize("kw", [{}, {"use_weights": False}, {"normalize": False}, {"bias": False}])
def test_convolve_prefix_equals_forward(kw):
    torch.manual_seed(0)
    layer = Convolve(16, 8, 16, **kw)
    adj = _adj(30, 40)
    h = torch.randn(40, 16, requires_grad=True)
    h.data[3] = 0.0  # a zero row: its norm is clamped, as F.normalize's
    params = [h] + list(layer.parameters())
    fused = layer.forward_prefix(h, 30, adj)
    ref = layer((h, h[:30]), adj)  # the op-by-op path (concatenation, F.normalize, autograd)
    assert fused.grad_fn.name().endswith("ConvolveCSRBackward")
    torch.testing.assert_close(fused, ref, atol=1e-6, rtol=1e-5)
    for a, b in zip(_grads(fused, params), _grads(ref, params)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("skip,out", [(False, 8), (True, 16), (True, 8)])
def test_head_equals_op_by_op(skip, out):
    torch.manual_seed(0)
    model = PinSage(5, 16, out, num_layers=1, skip=skip)
    h = torch.randn(20, 16, requires_grad=True)
    h0 = torch.randn(20, 16, requires_grad=True)
    h.data[2] = 0.0
    z = model.head(h, h0 if skip else None)
    assert z.grad_fn.name().endswith("HeadFnBackward")
    ref = model.lin_g2(F.relu(model.lin_g1(h)))
    if skip:
        ref = ref + (h0 if model.lin_skip is None else model.lin_skip(h0))
    ref = F.normalize(ref, dim=-1)
    params = [h] + ([h0] if skip else []) + [p for m in (model.lin_g1, model.lin_g2, model.lin_skip) if m is not None for p in m.parameters()]
    torch.testing.assert_close(z, ref, atol=1e-6, rtol=1e-5)
    ga, gb = _grads(z, params, seed=2), _grads(ref, params, seed=2)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_unfused_paths_off_the_cpu_fast_path():
    """Under CPU autocast to float16 and on float64 the layer keeps the op-by-op path (bf16
    autocast takes the fused node with bf16 GEMMs: tests/models/test_fused_bf16.py)."""
    torch.manual_seed(0)
    layer, adj = Convolve(16, 8, 16), _adj(30, 40)
    h = torch.randn(40, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.float16):
        out = layer.forward_prefix(h, 30, adj)
    assert "ConvolveCSR" not in out.grad_fn.name()
    out = layer.double().forward_prefix(h.double(), 30, adj)
    assert "ConvolveCSR" not in out.grad_fn.name()


@pytest.mark.parametrize("weighted,normalize", [(True, True), (False, True), (True, False), (False, False)])
def test_csr_weights_kernel_equals_the_torch_formula(weighted, normalize):
    adj = _adj(30, 40, seed=3)
    adj.weight[:4] = 0.0  # a row whose weights sum to 0 stays 0 (clamped divisor)
    a, a_t = adj.matrices(weighted, normalize)
    w = adj.weight if weighted else torch.ones_like(adj.weight)
    if normalize:
        w = w / adj.degree(weighted).clamp(min=torch.finfo(w.dtype).tiny)[adj.row]
    dense = torch.zeros(30, 40).index_put_((adj.row, adj.col), w, accumulate=True)
    torch.testing.assert_close(a.to_dense(), dense)
    torch.testing.assert_close(a_t.to_dense(), dense.t())


def test_sorted_block_pointer_and_refusals():
    ei = torch.tensor([[4, 0, 2, 1], [0, 2, 2, 3]])
    adj = SparseAdjacency.from_sorted_edges(ei, None, 5, 4)
    assert adj.ptr.tolist() == [0, 1, 1, 3, 4]
    assert SparseAdjacency.from_sorted_edges(ei, None, 5, 3) is None  # target 3 out of [0, 3)
    assert SparseAdjacency.from_sorted_edges(torch.tensor([[0, 1], [-1, 0]]), None, 2, 2) is None
    assert SparseAdjacency.from_sorted_edges(torch.tensor([[0, 1], [1, 0]]), None, 2, 2) is None


@pytest.mark.parametrize("skip,out", [(True, 16), (True, 8), (False, 8)])
def test_pinsage_fused_nodes_equal_op_by_op(skip, out):
    """The whole model (ID embedding, two CSR blocks in the nested prefix layout, the head), with
    ``fused_nodes`` on and off: same embeddings and parameter gradients."""
    torch.manual_seed(0)
    model = PinSage(7, 16, out, num_layers=2, num_items=60, id_embedding=True, skip=skip)
    blocks = [_adj(45, 60, seed=4), _adj(30, 45, seed=5)]
    x, ids = torch.randn(60, 7), torch.randperm(60)

    def run(flag):
        model.fused_nodes = flag
        z = model(x, ids, blocks)
        return z.detach(), _grads(z, list(model.parameters()), seed=6)

    (z_ref, g_ref), (z, g) = run(False), run(True)
    torch.testing.assert_close(z, z_ref, atol=1e-6, rtol=1e-5)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("learned", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_pool_minus_positive_equals_op_by_op(monkeypatch, learned, threads):
    """The users' leave-one-out pooling of a batch's rows (models.fused.PoolMinusPositive) equals
    pooling every user and taking the batch's rows: values and the item embeddings' gradient
    (duplicate users, a user without history, weighted rows, numba on 1 and 2 threads)."""
    import numba

    from models.fused import PoolMinusPositive
    from models.user_encoder import UserEncoder

    torch.manual_seed(0)
    hist = _adj(9, 30, seed=3)  # 9 users over 30 items, some without history
    users = torch.tensor([0, 3, 3, 8, 1, 0, 5, 2, 7, 4, 6, 3])
    pos, w_pos = torch.randint(0, 30, (12,)), torch.rand(12)
    enc = UserEncoder(20, learned=learned)
    if learned:
        enc.lin.weight.data.add_(0.1 * torch.randn(20, 20))
    z = torch.randn(30, 20, requires_grad=True)
    calls, orig = [], PoolMinusPositive.apply
    monkeypatch.setattr(PoolMinusPositive, "apply", lambda *a: calls.append(1) or orig(*a))
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        out = enc.leave_one_out_rows(z, hist, users, pos, w_pos)
        g = _grads(out, [z] + list(enc.parameters()), seed=4)
    finally:
        numba.set_num_threads(before)
    enc.fused = False
    ref = enc.leave_one_out_rows(z, hist, users, pos, w_pos)
    g_ref = _grads(ref, [z] + list(enc.parameters()), seed=4)
    assert len(calls) == 1
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match=r"users holds ids in \[0, 9\]: expected \[0, 9\)"):
        UserEncoder(20).leave_one_out_rows(z, hist, torch.tensor([0, 9]), pos[:2], w_pos[:2])


@pytest.mark.parametrize("in_channels,bias", [(1, True), (3, True), (2, False)])
def test_encode_node_equals_op_by_op(in_channels, bias):
    """A whole-catalogue step's encoder (ids 0..I-1) as one node (models.fused.EncodeFn): the same
    h0 and gradients (features, A, a, the ID table) as ReLU(Linear) + the table, op by op."""
    torch.manual_seed(0)
    n = 50
    model = PinSage(in_channels, 16, 16, num_layers=1, num_items=n, id_embedding=True)
    if not bias:
        model.lin_in.bias = None
    x, ids = torch.randn(n, in_channels, requires_grad=True), torch.arange(n)
    params = [x] + list(model.lin_in.parameters()) + [model.emb.weight]

    def run(flag):
        model.fused_nodes = flag
        h = model.encode(x, ids)
        return h, _grads(h, params, seed=7)

    (h_ref, g_ref), (h, g) = run(False), run(True)
    assert h.grad_fn.name().endswith("EncodeFnBackward") and not h_ref.grad_fn.name().endswith("EncodeFnBackward")
    assert bool((h_ref - model.emb.weight == 0).any())  # some pre-activations <= 0: the ReLU mask is exercised
    torch.testing.assert_close(h, h_ref, atol=1e-6, rtol=1e-5)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    model.fused_nodes = True
    assert not model.encode(x, ids.flip(0)).grad_fn.name().endswith("EncodeFnBackward")  # a gather: op by op
