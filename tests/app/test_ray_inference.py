"""Layer-wise inference on Ray Data equals the single-process layer-wise path (same neighbourhoods).

Needs Ray (the ``.[ray]`` extra, also in ``.[dev]``, so CI runs it); skipped with the reason when
Ray is not installed. Marked ``ray`` (deselect with ``-m "not ray"``) and ``slow`` (a local cluster
takes ~30 s to start on 2 cores).
"""

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install -e '.[ray]'")
pytest.importorskip("ray.data", reason="Ray Data is an optional extra: pip install -e '.[ray]'")

from app.inference import FixedNeighbourhoods, layerwise_embeddings, neighbourhoods_for_all  # noqa: E402
from app.ray_inference import ray_layerwise_embeddings  # noqa: E402
from datamodules.datasets import load_dataset  # noqa: E402
from datamodules.walks import PinSageSampler  # noqa: E402
from models.pinsage import PinSage  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def two_node_cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return load_dataset(
        "synthetic", cache_dir=str(tmp_path_factory.mktemp("ray-cache")),
        reader_args=dict(num_users=600, num_items=500, num_interactions=8000, num_communities=5,
                         feature_dim=8, seed=0))


@pytest.mark.parametrize("conv,id_embedding", [("pinsage", False), ("sage-mean", True)])
def test_ray_equals_local_layerwise_on_two_nodes(two_node_cluster, dataset, conv, id_embedding):
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    torch.manual_seed(0)
    model = PinSage(dataset.item_features.shape[1], 16, 8, num_layers=2, num_items=dataset.num_items,
                    id_embedding=id_embedding, conv=conv)
    sampler = PinSageSampler(dataset.train_graph, num_walks=10, walk_length=2, restart_prob=0.5, top_t=10, seed=0)
    nbr = neighbourhoods_for_all(sampler, dataset.num_items, chunk_size=128)
    local = layerwise_embeddings(model, dataset.item_features, nbr, chunk_size=128).numpy()
    # neighbourhoods sampled on the workers, partitions of another size than the local chunks
    z = ray_layerwise_embeddings(model, dataset.item_features, sampler, partition_size=97)
    assert z.shape == local.shape and np.isfinite(z).all()
    np.testing.assert_allclose(z, local, atol=1e-5, rtol=0)
    # the same from a fixed neighbourhood table
    z2 = ray_layerwise_embeddings(model, dataset.item_features, FixedNeighbourhoods(*nbr), partition_size=250)
    np.testing.assert_allclose(z2, local, atol=1e-5, rtol=0)
    assert not np.allclose(local[0], local[1])  # the comparison is not between constants


def test_ray_writes_parquet_from_the_workers(two_node_cluster, dataset, tmp_path):
    torch.manual_seed(0)
    model = PinSage(dataset.item_features.shape[1], 16, 8, num_layers=1)
    sampler = PinSageSampler(dataset.train_graph, num_walks=10, walk_length=2, restart_prob=0.5, top_t=5, seed=1)
    local = layerwise_embeddings(model, dataset.item_features, neighbourhoods_for_all(sampler, dataset.num_items))
    assert ray_layerwise_embeddings(model, dataset.item_features, sampler, partition_size=128,
                                    output_parquet=str(tmp_path / "z")) is None
    b = ray.data.read_parquet(str(tmp_path / "z")).take_batch(dataset.num_items + 1, batch_format="numpy")
    order = np.argsort(b["id"])
    assert b["id"][order].tolist() == list(range(dataset.num_items))
    np.testing.assert_allclose(np.asarray(b["z"])[order], local.numpy(), atol=1e-5, rtol=0)


def test_pinsage_predict_engine_ray_equals_local(two_node_cluster, tiny_run, tmp_path):
    """The CLI end to end: the same artifacts' embeddings from --engine ray and --engine local."""
    from app.cli import main

    _, last, args = tiny_run
    outs = {}
    for engine in ("local", "ray"):
        outs[engine] = tmp_path / engine
        assert main(["predict", *args, "--ckpt_path", str(last), "--artifacts.output_dir", str(outs[engine]),
                     "--artifacts.evaluate", "false", "--artifacts.chunk_size", "150", "--engine", engine]) == 0
    a, b = (np.load(outs[e] / "embeddings.npy") for e in ("local", "ray"))
    np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)
