"""The device paths on a CUDA GPU equal the CPU's (run by benchmarks/gpu_check.sh; skipped without CUDA)."""

import numpy as np
import pytest
import torch

from app.inference import layerwise_embeddings, neighbourhoods_for_all
from datamodules.datasets import load_dataset
from datamodules.walks import PinSageSampler
from models.pinsage import PinSage

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    ds = load_dataset("synthetic", cache_dir=str(tmp_path_factory.mktemp("gpu-cache")),
                      reader_args=dict(num_users=300, num_items=200, num_interactions=4000, num_communities=5,
                                       feature_dim=8, seed=0))
    sampler = PinSageSampler(ds.train_graph, num_walks=10, walk_length=2, restart_prob=0.5, top_t=10, seed=0)
    return ds, neighbourhoods_for_all(sampler, ds.num_items)


@pytest.mark.parametrize("conv,kw", [("pinsage", {"skip": True}), ("sage-mean", {}), ("sage-gcn", {}),
                                     ("sage-max_pool", {}), ("sage-lstm", {})])
def test_layerwise_on_gpu_equals_cpu(data, conv, kw):
    ds, nbr = data
    torch.manual_seed(0)
    model = PinSage(ds.item_features.shape[1], 16, 8, num_layers=2, conv=conv, **kw)
    z_cpu, layers_cpu = layerwise_embeddings(model, ds.item_features, nbr, chunk_size=37, return_layers=True)
    z_gpu, layers_gpu = layerwise_embeddings(model, ds.item_features, nbr, chunk_size=37, device="cuda",
                                             return_layers=True)
    assert z_gpu.device.type == "cpu" and all(t.device.type == "cpu" for t in layers_gpu)
    torch.testing.assert_close(z_gpu, z_cpu, atol=1e-4, rtol=1e-4)
    for a, b in zip(layers_gpu, layers_cpu):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def _batch():
    from app.inference import FixedNeighbourhoods
    from datamodules.minibatch import ComputationGraphBuilder

    rng = np.random.default_rng(0)
    deg = rng.integers(0, 12, 300)
    ptr = np.concatenate([[0], np.cumsum(deg)])
    table = FixedNeighbourhoods(ptr, rng.integers(0, 300, ptr[-1]), rng.random(ptr[-1]).astype(np.float32))
    builder = ComputationGraphBuilder(table, rng.standard_normal((300, 7)).astype(np.float32), num_layers=2)
    return builder.train_batch(rng.integers(0, 300, 40), rng.integers(0, 300, 40), rng.integers(0, 300, 30),
                               rng.integers(0, 300, (40, 2)))


@pytest.mark.parametrize("conv", ["pinsage", "sage-mean", "sage-max_pool"])
def test_fused_training_step_on_gpu_equals_cpu(conv):
    batch = _batch()
    torch.manual_seed(0)
    model = PinSage(7, 16, 8, num_layers=2, num_items=300, id_embedding=True, conv=conv)

    def grads(m, b):
        z = m(b.x, b.node_ids, b.blocks)
        loss = (z[b.query] * z[b.pos]).sum() - z[b.easy_neg].square().sum()
        return z.detach().cpu(), [g.cpu() for g in torch.autograd.grad(loss, list(m.parameters()))]

    z_cpu, g_cpu = grads(model, batch)
    z_gpu, g_gpu = grads(model.cuda(), batch.pin_memory().to("cuda", non_blocking=True))
    torch.testing.assert_close(z_gpu, z_cpu, atol=1e-4, rtol=1e-4)
    for a, b in zip(g_gpu, g_cpu):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


def test_bf16_autocast_forward_is_close_to_float32():
    batch = _batch().to("cuda")
    torch.manual_seed(0)
    model = PinSage(7, 16, 8, num_layers=2, num_items=300, id_embedding=True).cuda()
    z32 = model(batch.x, batch.node_ids, batch.blocks)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        z16 = model(batch.x, batch.node_ids, batch.blocks)
    assert torch.isfinite(z16).all()
    cos = torch.nn.functional.cosine_similarity(z16.float(), z32, dim=-1)
    assert cos.min() > 0.98
