import pytest
import torch

from models.convolve import Convolve


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def dense_reference(x_src, x_dst, edge_index, edge_weight, Q, q, W, w, normalize=True):
    """Algorithm 1 of Ying et al. with plain matrices: A[u, v] = alpha_vu / sum_v alpha_vu."""
    n_dst, n_src = x_dst.size(0), x_src.size(0)
    A = torch.zeros(n_dst, n_src, dtype=x_src.dtype)
    for e in range(edge_index.size(1)):
        A[edge_index[1, e], edge_index[0, e]] += edge_weight[e]
    row = A.sum(1, keepdim=True)
    A = torch.where(row > 0, A / torch.where(row > 0, row, torch.ones_like(row)), A)
    n = A @ torch.relu(x_src @ Q.T + q)
    h = torch.relu(torch.cat([x_dst, n], 1) @ W.T + w)
    if normalize:
        h = h / h.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return h


def tiny_graph():
    # 5 sources, 4 targets (targets = first 4 sources, nested layout); target 3 is isolated.
    edge_index = torch.tensor([[1, 2, 4, 0, 3, 4, 0, 1], [0, 0, 0, 1, 1, 2, 2, 2]])
    edge_weight = torch.tensor([0.5, 0.3, 0.2, 0.9, 0.1, 0.25, 0.25, 0.5], dtype=torch.float64)
    return edge_index, edge_weight


def params(conv):
    return conv.lin_q.weight, conv.lin_q.bias, conv.lin_w.weight, conv.lin_w.bias


@pytest.mark.parametrize("scale", [1.0, 7.0])  # un-normalised weights give the same result
def test_matches_dense_reference_values_and_gradients(scale):
    edge_index, edge_weight = tiny_graph()
    conv = Convolve((3, 3), 4, 5).double()
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    out = conv((x, x[:4]), edge_index, edge_weight * scale)

    x_ref = x.detach().clone().requires_grad_(True)
    ps = [p.detach().clone().requires_grad_(True) for p in params(conv)]
    ref = dense_reference(x_ref, x_ref[:4], edge_index, edge_weight, *ps)
    assert out.shape == (4, 5)
    assert (out[:3] > 0).any(dim=1).all()  # non-degenerate case (ReLU not all zero)
    torch.testing.assert_close(out, ref)

    g = torch.randn_like(out)
    grads = torch.autograd.grad((out * g).sum(), [x, *params(conv)])
    grads_ref = torch.autograd.grad((ref * g).sum(), [x_ref, *ps])
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b)


def test_isolated_target_gets_zero_neighbour_vector():
    edge_index, edge_weight = tiny_graph()
    conv = Convolve(3, 4, 2, normalize=False).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    out = conv((x, x[:4]), edge_index, edge_weight)
    Q, q, W, w = params(conv)
    expected = torch.relu(torch.cat([x[3], torch.zeros(4, dtype=torch.float64)]) @ W.T + w)
    torch.testing.assert_close(out[3], expected)


def test_uniform_mean_when_weights_none_or_disabled():
    edge_index, edge_weight = tiny_graph()
    x = torch.randn(5, 3, dtype=torch.float64)
    conv = Convolve(3, 4, 6).double()
    ref = dense_reference(x, x[:4], edge_index, torch.ones(8, dtype=torch.float64), *params(conv))
    torch.testing.assert_close(conv((x, x[:4]), edge_index, None), ref)
    conv.use_weights = False
    torch.testing.assert_close(conv((x, x[:4]), edge_index, edge_weight), ref)
    # and the weights do matter when enabled
    conv.use_weights = True
    assert not torch.allclose(conv((x, x[:4]), edge_index, edge_weight), ref)


def test_normalisation_and_bipartite_sizes():
    edge_index, edge_weight = tiny_graph()
    conv = Convolve((3, 6), 5, 4)
    out = conv((torch.randn(5, 3), torch.randn(4, 6)), edge_index, edge_weight.float())
    norms = out.norm(dim=1)
    assert out.shape == (4, 4)
    assert torch.all(((norms - 1).abs() < 1e-5) | (norms == 0))
    assert (out >= 0).all()  # ReLU before normalisation
    raw = Convolve((3, 6), 5, 4, normalize=False)
    raw.load_state_dict(conv.state_dict())
    h = raw((torch.randn(5, 3), torch.randn(4, 6)), edge_index, edge_weight.float())
    assert not torch.allclose(h.norm(dim=1), torch.ones(4))


def test_single_tensor_input_and_no_bias():
    edge_index, edge_weight = tiny_graph()
    conv = Convolve(3, 4, 2, bias=False)
    assert conv.lin_q.bias is None and conv.lin_w.bias is None
    x = torch.randn(5, 3)
    assert conv(x, edge_index, edge_weight.float()).shape == (5, 2)


def test_reset_parameters_and_repr():
    conv = Convolve(3, 4, 2)
    before = conv.lin_q.weight.detach().clone()
    conv.reset_parameters()
    assert not torch.equal(before, conv.lin_q.weight)
    assert repr(conv) == "Convolve((3, 3), 2, hidden_channels=4, normalize=True, use_weights=True)"


@pytest.mark.parametrize("kwargs", [
    dict(in_channels=0, hidden_channels=4, out_channels=2),
    dict(in_channels=(3, 0), hidden_channels=4, out_channels=2),
    dict(in_channels=3, hidden_channels=0, out_channels=2),
    dict(in_channels=3, hidden_channels=4, out_channels=-1),
])
def test_bad_constructor_args(kwargs):
    with pytest.raises(ValueError, match="invalid"):
        Convolve(**kwargs)


def test_bad_forward_args():
    conv = Convolve(3, 4, 2)
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match="edge_index"):
        conv(x, torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="edge_weight"):
        conv(x, torch.zeros(2, 4, dtype=torch.long), torch.ones(3))
