from types import SimpleNamespace

import pytest
import torch

from models.convolve import Convolve
from models.pinsage import CONVS, PinSage
from models.sage import SAGEConvolve


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

# Full item graph (global ids 0..9): directed edges src -> dst with importance weights.
NUM_ITEMS = 10
FULL_EDGES = torch.tensor([
    [1, 2, 0, 3, 4, 5, 6, 7, 8, 9, 0, 5, 1, 6, 2, 9],
    [0, 0, 1, 1, 2, 2, 3, 4, 5, 6, 7, 7, 8, 8, 9, 9],
])
FULL_WEIGHTS = torch.tensor([0.7, 0.3, 0.6, 0.4, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0,
                             0.2, 0.8, 0.5, 0.5, 0.9, 0.1])


def build_blocks(targets, num_layers):
    """Exact K-hop computation graph in the nested-prefix layout of datamodules/batch.py."""
    layers = [list(targets)]  # layers[0] = layer K
    for _ in range(num_layers):
        nodes = list(layers[-1])
        for u in layers[-1]:
            for s in FULL_EDGES[0][FULL_EDGES[1] == u].tolist():
                if s not in nodes:
                    nodes.append(s)
        layers.append(nodes)
    layers = layers[::-1]  # layers[k] = layer k, nested prefixes
    node_ids = torch.tensor(layers[0])
    local = {g: i for i, g in enumerate(layers[0])}
    blocks = []
    for k in range(num_layers):
        dst_nodes = layers[k + 1]
        mask = torch.isin(FULL_EDGES[1], torch.tensor(dst_nodes))
        ei = FULL_EDGES[:, mask].clone().apply_(lambda g: local[g])
        blocks.append(SimpleNamespace(edge_index=ei, edge_weight=FULL_WEIGHTS[mask],
                                      size=(len(layers[k]), len(dst_nodes))))
    return node_ids, blocks


def full_catalogue(model, x_all):
    """Layer-wise inference over the whole catalogue with the public stage methods."""
    ids = torch.arange(NUM_ITEMS)
    h = model.encode(x_all, ids)
    for k in range(model.num_layers):
        h = model.layer(k, h, h, FULL_EDGES, FULL_WEIGHTS)
    return model.head(h)


@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("conv", ["pinsage", "sage-mean", "sage-lstm"])
def test_minibatch_forward_equals_full_catalogue_inference(num_layers, conv):
    model = PinSage(5, 8, 6, num_layers=num_layers, num_items=NUM_ITEMS, id_embedding=True,
                    conv=conv, dropout=0.5).eval()
    x_all = torch.randn(NUM_ITEMS, 5)
    targets = [7, 0, 9]
    node_ids, blocks = build_blocks(targets, num_layers)
    assert blocks[-1].size[1] == 3 and node_ids.numel() > 3
    z = model(x_all[node_ids], node_ids, blocks)
    assert z.shape == (3, 6)
    torch.testing.assert_close(z, full_catalogue(model, x_all)[targets])
    torch.testing.assert_close(z.norm(dim=1), torch.ones(3))


def test_forward_matches_hand_computation():
    """1 layer, hand-built block: every stage spelled out with plain tensor algebra."""
    torch.manual_seed(3)
    model = PinSage(2, 6, 2, num_layers=1).double()
    x = torch.randn(4, 2, dtype=torch.float64)
    # targets: local 0, 1; neighbours: 0 <- {2, 3} weights (1, 3); 1 <- {0}.
    block = SimpleNamespace(edge_index=torch.tensor([[2, 3, 0], [0, 0, 1]]),
                            edge_weight=torch.tensor([1.0, 3.0, 5.0], dtype=torch.float64),
                            size=(4, 2))
    z = model(x, torch.arange(4), [block])
    h0 = torch.relu(x @ model.lin_in.weight.T + model.lin_in.bias)
    c = model.convs[0]
    m = torch.relu(h0 @ c.lin_q.weight.T + c.lin_q.bias)
    n = torch.stack([0.25 * m[2] + 0.75 * m[3], m[0]])
    h1 = torch.relu(torch.cat([h0[:2], n], 1) @ c.lin_w.weight.T + c.lin_w.bias)
    assert (h1.norm(dim=1) > 0).all()  # the seed gives a non-degenerate case
    h1 = h1 / h1.norm(dim=1, keepdim=True)
    g = torch.relu(h1 @ model.lin_g1.weight.T + model.lin_g1.bias)
    expected = g @ model.lin_g2.weight.T + model.lin_g2.bias
    torch.testing.assert_close(z, expected / expected.norm(dim=1, keepdim=True))


def test_stage_composition_equals_forward_and_dropout_only_in_training():
    model = PinSage(5, 8, 6, num_layers=2, dropout=0.5)
    x_all = torch.randn(NUM_ITEMS, 5)
    node_ids, blocks = build_blocks([3, 4], 2)
    x = x_all[node_ids]

    def staged():
        h = model.encode(x, node_ids)
        for k, b in enumerate(blocks):
            h = model.layer(k, h[:b.size[0]], h[:b.size[1]], b.edge_index, b.edge_weight)
        return model.head(h)

    model.eval()
    torch.testing.assert_close(model(x, node_ids, blocks), staged())
    model.train()
    torch.manual_seed(1)
    assert not torch.allclose(model(x, node_ids, blocks), staged())


def test_id_embedding_only():
    model = PinSage(0, 4, 3, num_layers=1, num_items=NUM_ITEMS, id_embedding=True)
    assert model.lin_in is None
    node_ids, blocks = build_blocks([1, 2], 1)
    z = model(torch.empty(node_ids.numel(), 0), node_ids, blocks)
    assert z.shape == (2, 3)
    torch.testing.assert_close(model.encode(torch.empty(3, 0), torch.tensor([4, 0, 4])),
                               model.emb.weight[[4, 0, 4]])
    z.sum().backward()
    assert model.emb.weight.grad[node_ids].abs().sum() > 0
    unused = torch.ones(NUM_ITEMS, dtype=torch.bool)
    unused[node_ids] = False
    assert model.emb.weight.grad[unused].abs().sum() == 0


def test_id_embedding_is_added_to_content_encoding():
    model = PinSage(5, 4, 3, num_items=NUM_ITEMS, id_embedding=True)
    x, ids = torch.randn(3, 5), torch.tensor([9, 2, 2])
    expected = torch.relu(model.lin_in(x)) + model.emb.weight[ids]
    torch.testing.assert_close(model.encode(x, ids), expected)
    with pytest.raises(ValueError, match="node_ids"):
        model.encode(x, None)


@pytest.mark.parametrize("conv", CONVS)
def test_every_conv_trains(conv):
    model = PinSage(5, 8, 6, num_layers=2, conv=conv)
    expected = Convolve if conv == "pinsage" else SAGEConvolve
    assert all(isinstance(c, expected) for c in model.convs)
    node_ids, blocks = build_blocks([0, 9], 2)
    z = model(torch.randn(node_ids.numel(), 5), node_ids, blocks)
    (z[0] @ z[1]).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_importance_pooling_switch():
    on = PinSage(5, 8, 6, importance_pooling=True).eval()
    off = PinSage(5, 8, 6, importance_pooling=False).eval()
    off.load_state_dict(on.state_dict())
    assert all(c.use_weights for c in on.convs) and not any(c.use_weights for c in off.convs)
    node_ids, blocks = build_blocks([0, 2], 2)
    x = torch.randn(node_ids.numel(), 5)
    assert not torch.allclose(on(x, node_ids, blocks), off(x, node_ids, blocks))
    uniform = [SimpleNamespace(edge_index=b.edge_index, edge_weight=None, size=b.size)
               for b in blocks]
    torch.testing.assert_close(off(x, node_ids, blocks), on(x, node_ids, uniform))


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_layers=0), "num_layers"),
    (dict(hidden_channels=0), "hidden_channels"),
    (dict(out_channels=0), "out_channels"),
    (dict(in_channels=-1), "in_channels"),
    (dict(in_channels=0), "id_embedding"),
    (dict(id_embedding=True), "num_items"),
    (dict(conv="gat"), r"conv='gat'.*sage-lstm"),
    (dict(dropout=1.0), "dropout"),
])
def test_bad_constructor_args(kwargs, match):
    args = dict(in_channels=5, hidden_channels=8, out_channels=6)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        PinSage(**args)


def test_bad_call_args():
    model = PinSage(5, 8, 6, num_layers=2)
    node_ids, blocks = build_blocks([0], 2)
    x = torch.randn(node_ids.numel(), 5)
    with pytest.raises(ValueError, match="blocks"):
        model(x, node_ids, blocks[:1])
    with pytest.raises(ValueError, match="x has shape"):
        model(x[:, :4], node_ids, blocks)
    with pytest.raises(ValueError, match="k=2"):
        model.layer(2, x, x, blocks[0].edge_index)
    bad = [SimpleNamespace(edge_index=blocks[0].edge_index, edge_weight=None,
                           size=(node_ids.numel() + 1, 1)), blocks[1]]
    with pytest.raises(ValueError, match="size"):
        model(x, node_ids, bad)


def test_repr():
    assert repr(PinSage(5, 8, 6)) == ("PinSage(5, 6, hidden_channels=8, num_layers=2, "
                                      "conv='pinsage', importance_pooling=True, "
                                      "id_embedding=False, num_items=0)")


def test_consumes_the_datamodules_batch_contract():
    batch_mod = pytest.importorskip("datamodules.batch")
    node_ids, blocks = build_blocks([5, 6], 2)
    batch = batch_mod.PinSageBatch(
        node_ids=node_ids, x=torch.randn(node_ids.numel(), 5),
        blocks=[batch_mod.Block(b.edge_index, b.edge_weight, b.size) for b in blocks])
    model = PinSage(5, 8, 6).eval()
    z = model(batch.x, batch.node_ids, batch.blocks)
    assert z.shape == (batch.num_targets, 6)
    torch.testing.assert_close(z, model(batch.x, node_ids, blocks))


def test_negative_node_id_leaves_the_id_term_out():
    """``-1``: an item without an ID row (a new item) is encoded from its content alone."""
    torch.manual_seed(0)
    m = PinSage(4, 8, 8, num_layers=1, num_items=5, id_embedding=True)
    x = torch.randn(3, 4)
    h = m.encode(x, torch.tensor([0, -1, 2]))
    content = torch.relu(m.lin_in(x))
    torch.testing.assert_close(h[1], content[1])
    torch.testing.assert_close(h[0], content[0] + m.emb.weight[0])


@pytest.mark.parametrize("in_channels", [0, 3])
def test_whole_catalogue_ids_take_the_embedding_table_as_is(monkeypatch, in_channels):
    """node_ids = 0..I-1 (whole-catalogue steps): the ID term is the embedding table itself (no
    gather, no scatter in backward), same values and gradients as the gather."""
    import models.pinsage as pinsage

    torch.manual_seed(0)
    n = 12
    model = PinSage(in_channels, 8, 8, num_layers=1, id_embedding=True, num_items=n)
    model.fused_nodes = False  # the op-by-op encoder (its fused node: test_fused.py's test_encode_node_*)
    x, ids = torch.randn(n, in_channels), torch.arange(n)
    out = []
    for fast in (True, False):
        monkeypatch.setattr(pinsage, "_is_arange", (lambda ids, n: True) if fast else (lambda ids, n: False))
        model.zero_grad()
        h = model.encode(x, ids)
        (h * torch.linspace(-1, 1, h.numel()).view_as(h)).sum().backward()
        out.append((h.detach(), model.emb.weight.grad.clone()))
    torch.testing.assert_close(out[0][0], out[1][0], rtol=0, atol=0)
    torch.testing.assert_close(out[0][1], out[1][1])
    monkeypatch.undo()
    assert pinsage._is_arange(ids, n) and not pinsage._is_arange(ids.flip(0), n)
    assert not pinsage._is_arange(ids[:-1], n) and not pinsage._is_arange(torch.tensor([0, 2, 2]), 3)
