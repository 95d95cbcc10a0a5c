import itertools

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.nn import SAGEConv
from torch_geometric.nn.aggr import LSTMAggregation

from models.sage import AGGREGATORS, SAGEConvolve


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

# 5 sources, 4 targets (nested layout); target 3 has no neighbours. Edges deliberately unsorted.
EDGE_INDEX = torch.tensor([[4, 0, 3, 1, 2, 4, 0, 1], [0, 1, 1, 0, 0, 2, 2, 2]])


def neighbours(u, edge_index=EDGE_INDEX):
    """Sources of target u in edge order."""
    return [int(s) for s, t in edge_index.t() if int(t) == u]


def finish(h):
    return F.normalize(torch.relu(h), dim=-1)


def reference(conv, x_src, x_dst):
    """Per-target loop implementation of Hamilton et al., Alg. 1 (eval order = edge order)."""
    rows = []
    for u in range(x_dst.size(0)):
        nb = neighbours(u)
        a = conv.aggregator
        if a == "gcn":
            stack = torch.stack([x_dst[u]] + [x_src[v] for v in nb])
            rows.append(conv.lin(stack.mean(0)))
            continue
        if a == "mean":
            agg = torch.stack([x_src[v] for v in nb]).mean(0) if nb else x_src.new_zeros(x_src.size(1))
        elif a in ("max_pool", "mean_pool"):
            if nb:
                p = torch.relu(conv.lin_pool(torch.stack([x_src[v] for v in nb])))
                agg = p.max(0).values if a == "max_pool" else p.mean(0)
            else:
                agg = x_src.new_zeros(conv.hidden_channels)
        else:  # lstm
            if nb:
                _, (h_n, _) = conv.lstm(torch.stack([x_src[v] for v in nb]).unsqueeze(0))
                agg = h_n[-1, 0]
            else:
                agg = x_src.new_zeros(conv.hidden_channels)
        rows.append(conv.lin(torch.cat([x_dst[u], agg])))
    return finish(torch.stack(rows))


@pytest.mark.parametrize("aggregator", AGGREGATORS)
def test_matches_loop_reference(aggregator):
    conv = SAGEConvolve(3, 6, 4, aggregator=aggregator).double().eval()
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    out = conv((x, x[:4]), EDGE_INDEX)
    ref = reference(conv, x, x[:4])
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad((out * g).sum(), x)[0],
                               torch.autograd.grad((ref * g).sum(), x)[0])


@pytest.mark.parametrize("aggregator", ["mean", "max_pool", "mean_pool", "lstm"])
def test_isolated_target_gets_zero_neighbour_vector(aggregator):
    conv = SAGEConvolve(3, 6, 4, aggregator=aggregator, normalize=False).eval()
    x = torch.randn(5, 3)
    out = conv((x, x[:4]), EDGE_INDEX)
    width = 3 if aggregator == "mean" else 6
    torch.testing.assert_close(out[3], torch.relu(conv.lin(torch.cat([x[3], torch.zeros(width)]))))


def test_mean_equals_pyg_sageconv():
    ours = SAGEConvolve((3, 5), 8, 4, aggregator="mean")
    pyg = SAGEConv((3, 5), 4, aggr="mean", root_weight=True)
    with torch.no_grad():  # W . concat(h_u, n_u) = W_r h_u + W_l n_u
        pyg.lin_r.weight.copy_(ours.lin.weight[:, :5])
        pyg.lin_l.weight.copy_(ours.lin.weight[:, 5:])
        pyg.lin_l.bias.copy_(ours.lin.bias)
    x_src, x_dst = torch.randn(5, 3), torch.randn(4, 5)
    torch.testing.assert_close(ours((x_src, x_dst), EDGE_INDEX),
                               finish(pyg((x_src, x_dst), EDGE_INDEX)))


def test_lstm_equals_pyg_lstm_aggregation_on_equal_degrees():
    # With equal degrees there is no padding, where PyG's LSTMAggregation is exact.
    conv = SAGEConvolve(3, 6, 4, aggregator="lstm", normalize=False).eval()
    aggr = LSTMAggregation(3, 6)
    aggr.lstm.load_state_dict(conv.lstm.state_dict())
    edge_index = torch.tensor([[1, 2, 3, 0, 4, 0], [0, 0, 1, 1, 2, 2]])
    x = torch.randn(5, 3)
    neigh = aggr(x[edge_index[0]], edge_index[1], dim_size=3)
    expected = torch.relu(conv.lin(torch.cat([x[:3], neigh], -1)))
    torch.testing.assert_close(conv((x, x[:3]), edge_index), expected)


def test_lstm_uses_a_random_neighbour_order_in_training():
    conv = SAGEConvolve(3, 6, 4, aggregator="lstm").double()
    x = torch.randn(5, 3, dtype=torch.float64)
    outs = {tuple(conv((x, x[:4]), EDGE_INDEX)[2].tolist()) for _ in range(20)}
    assert len(outs) > 1  # target 2 has 3 neighbours: 6 orders
    nb = neighbours(2)
    candidates = []
    for order in itertools.permutations(nb):
        _, (h_n, _) = conv.lstm(x[list(order)].unsqueeze(0))
        candidates.append(finish(conv.lin(torch.cat([x[2], h_n[-1, 0]]))))
    out = conv((x, x[:4]), EDGE_INDEX)[2]
    assert any(torch.allclose(out, c) for c in candidates)


@pytest.mark.parametrize("aggregator", AGGREGATORS)
def test_edge_weight_is_ignored_and_shapes(aggregator):
    conv = SAGEConvolve(3, 6, 4, aggregator=aggregator).eval()
    x = torch.randn(5, 3)
    a = conv((x, x[:4]), EDGE_INDEX, torch.rand(EDGE_INDEX.size(1)))
    b = conv((x, x[:4]), EDGE_INDEX)
    assert a.shape == (4, 4)
    torch.testing.assert_close(a, b)
    assert conv(x, EDGE_INDEX).shape == (5, 4)


def test_bad_args():
    with pytest.raises(ValueError, match=r"aggregator='sum'.*'mean', 'gcn', 'max_pool', 'mean_pool', 'lstm'"):
        SAGEConvolve(3, 6, 4, aggregator="sum")
    with pytest.raises(ValueError, match="gcn"):
        SAGEConvolve((3, 5), 6, 4, aggregator="gcn")
    with pytest.raises(ValueError, match="hidden_channels"):
        SAGEConvolve(3, 0, 4)


def test_reset_parameters_and_repr():
    conv = SAGEConvolve(3, 6, 4, aggregator="max_pool")
    w = conv.lin_pool.weight.detach().clone()
    conv.reset_parameters()
    assert not torch.equal(w, conv.lin_pool.weight)
    assert "aggregator='max_pool'" in repr(conv)
