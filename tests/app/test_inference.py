import numpy as np
import pytest
import torch

from app.inference import (
    FixedNeighbourhoods,
    layerwise_embeddings,
    naive_embeddings,
    neighbourhoods_for_all,
)
from datamodules.datasets import load_dataset
from datamodules.walks import PinSageSampler
from models.pinsage import PinSage


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return load_dataset(
        "synthetic", cache_dir=str(tmp_path_factory.mktemp("inference-cache")),
        reader_args=dict(num_users=300, num_items=200, num_interactions=4000, num_communities=5,
                         feature_dim=8, seed=0))


@pytest.fixture(scope="module")
def sampler(dataset):
    return PinSageSampler(dataset.train_graph, num_walks=10, walk_length=2, restart_prob=0.5, top_t=10, seed=0)


@pytest.fixture(scope="module")
def table(dataset, sampler):
    """The neighbourhood of every item, computed once (fixed for both inference paths)."""
    return neighbourhoods_for_all(sampler, dataset.num_items, chunk_size=64)


def _model(dataset, conv="pinsage", num_layers=2, **kw):
    torch.manual_seed(0)
    return PinSage(dataset.item_features.shape[1], 16, 8, num_layers=num_layers, conv=conv, **kw)


# ----------------------------------------------------------------------------------------------
# neighbourhoods
# ----------------------------------------------------------------------------------------------
def test_neighbourhoods_for_all_equals_one_call_on_every_item(dataset, sampler, table):
    ptr, items, weights = table
    ref = sampler.sample(np.arange(dataset.num_items))
    assert ptr.dtype == np.int64 and items.dtype == np.int64 and weights.dtype == np.float32
    np.testing.assert_array_equal(ptr, ref[0])
    np.testing.assert_array_equal(items, ref[1])
    np.testing.assert_array_equal(weights, ref[2])
    assert ptr.shape == (dataset.num_items + 1,)
    assert np.all(np.diff(ptr) <= 10)  # top-T


def test_neighbourhoods_for_all_rejects_bad_arguments(dataset, sampler):
    with pytest.raises(ValueError, match="chunk_size=0"):
        neighbourhoods_for_all(sampler, dataset.num_items, chunk_size=0)
    with pytest.raises(ValueError, match="num_items=7 does not match"):
        neighbourhoods_for_all(sampler, 7)
    with pytest.raises(ValueError, match="num_items=-1"):
        neighbourhoods_for_all(sampler, -1)


def test_fixed_neighbourhoods_looks_rows_up(table):
    fixed = FixedNeighbourhoods(*table)
    ptr, items, weights = table
    seeds = np.array([5, 0, 5, 199])
    p, it, w = fixed.sample(seeds, epoch=3)
    for j, s in enumerate(seeds):
        np.testing.assert_array_equal(it[p[j]:p[j + 1]], items[ptr[s]:ptr[s + 1]])
        np.testing.assert_array_equal(w[p[j]:p[j + 1]], weights[ptr[s]:ptr[s + 1]])
    with pytest.raises(ValueError, match=r"expected ids in \[0, 200\)"):
        fixed.sample([200])


# ----------------------------------------------------------------------------------------------
# layer-wise == minibatch (issue 5 acceptance)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("conv", ["pinsage", "sage-gcn", "sage-mean"])
def test_layerwise_equals_minibatch_forward(dataset, table, num_layers, conv):
    model = _model(dataset, conv, num_layers)
    z = layerwise_embeddings(model, dataset.item_features, table, chunk_size=37)
    assert z.shape == (dataset.num_items, 8) and z.dtype == torch.float32
    items = np.random.default_rng(num_layers).permutation(dataset.num_items)[:150]
    z_mb = naive_embeddings(model, dataset.item_features, FixedNeighbourhoods(*table), items,
                            batch_size=16, num_layers=num_layers)
    torch.testing.assert_close(z_mb, z[torch.from_numpy(items)], atol=1e-5, rtol=0)


@pytest.mark.parametrize("conv,kw", [("sage-lstm", {}), ("sage-max_pool", {}), ("sage-mean_pool", {}),
                                     ("pinsage", {"importance_pooling": False}), ("pinsage", {"skip": True}),
                                     ("sage-mean", {"skip": True})])
def test_layerwise_equals_minibatch_forward_other_aggregators(dataset, table, conv, kw):
    model = _model(dataset, conv, 2, **kw)
    z = layerwise_embeddings(model, dataset.item_features, table, chunk_size=50)
    z_mb = naive_embeddings(model, dataset.item_features, FixedNeighbourhoods(*table), batch_size=33)
    torch.testing.assert_close(z_mb, z, atol=1e-5, rtol=0)


def test_layerwise_equals_minibatch_with_id_embedding_and_live_sampler(dataset, sampler, table):
    # the walk sampler is a function of (seed, epoch, item): sampling again gives the same table
    model = _model(dataset, "pinsage", 2, id_embedding=True, num_items=dataset.num_items, dropout=0.3)
    model.train()
    z = layerwise_embeddings(model, dataset.item_features, table)
    assert model.training  # training flag restored
    z_mb = naive_embeddings(model, dataset.item_features, sampler, batch_size=64)
    torch.testing.assert_close(z_mb, z, atol=1e-5, rtol=0)


def test_chunk_size_does_not_change_the_result(dataset, table):
    model = _model(dataset, "pinsage", 2)
    ref = layerwise_embeddings(model, dataset.item_features, table, chunk_size=10 ** 6)
    for cs in (1, 7, 199):
        torch.testing.assert_close(layerwise_embeddings(model, dataset.item_features, table, chunk_size=cs),
                                   ref, atol=1e-6, rtol=0)


def test_return_layers_are_the_naive_lower_layers(dataset, table):
    """The returned per-layer tables are distinct and are the layer-k vectors."""
    model = _model(dataset, "pinsage", 2)
    z, layers = layerwise_embeddings(model, dataset.item_features, table, chunk_size=37, return_layers=True)
    assert len(layers) == 2 and layers[0].data_ptr() != layers[1].data_ptr()
    torch.testing.assert_close(layers[0], model.encode(torch.as_tensor(dataset.item_features)).detach())
    from models.sparse import SparseAdjacency

    with torch.no_grad():  # layer 1 by the whole-catalogue CSR product (an independent code path)
        h1 = model.layer(0, layers[0], layers[0], SparseAdjacency(*table, num_src=dataset.num_items))
    torch.testing.assert_close(layers[1], h1, atol=1e-6, rtol=0)
    torch.testing.assert_close(layerwise_embeddings(model, dataset.item_features, table), z)


def test_neighbourhoods_matter(dataset, sampler, table):
    model = _model(dataset, "pinsage", 2)
    other = neighbourhoods_for_all(sampler, dataset.num_items, epoch=1)
    a = layerwise_embeddings(model, dataset.item_features, table)
    b = layerwise_embeddings(model, dataset.item_features, other)
    assert (a - b).abs().max() > 1e-3


def test_hand_built_table_with_isolated_item():
    # 4 items; item 3 has no neighbours; layer 1 by hand for conv="pinsage"
    ptr = np.array([0, 2, 3, 4, 4])
    items = np.array([1, 2, 0, 1])
    weights = np.array([0.75, 0.25, 1.0, 1.0], dtype=np.float32)
    torch.manual_seed(0)
    model = PinSage(3, 4, 2, num_layers=1)
    x = torch.randn(4, 3)
    z = layerwise_embeddings(model, x, (ptr, items, weights), chunk_size=3)
    with torch.no_grad():
        h0 = model.encode(x)
        c = model.convs[0]
        msg = torch.relu(c.lin_q(h0))
        pooled = torch.stack([0.75 * msg[1] + 0.25 * msg[2], msg[0], msg[1], torch.zeros(4)])
        h1 = torch.nn.functional.normalize(torch.relu(c.lin_w(torch.cat([h0, pooled], -1))), dim=-1)
        ref = model.head(h1)
    torch.testing.assert_close(z, ref, atol=1e-6, rtol=0)
    z_mb = naive_embeddings(model, x, FixedNeighbourhoods(ptr, items, weights), batch_size=2)
    torch.testing.assert_close(z_mb, ref, atol=1e-6, rtol=0)


def test_progress_bar_on_stderr(dataset, table, capsys):
    model = _model(dataset, "pinsage", 1)
    layerwise_embeddings(model, dataset.item_features, table, chunk_size=64, progress=True)
    err = capsys.readouterr().err
    assert "layer-wise inference" in err and "400/400" in err  # (K + 1) * I steps


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------
def test_layerwise_rejects_bad_input(dataset, table):
    model = _model(dataset, "pinsage", 2)
    x = dataset.item_features
    with pytest.raises(ValueError, match=r"x has 199 rows: expected one row per item, num_items=200"):
        layerwise_embeddings(model, x[:199], table)
    with pytest.raises(ValueError, match=r"x has 5 columns: the model expects in_channels=9"):
        layerwise_embeddings(model, x[:, :5], table)
    with pytest.raises(ValueError, match="x has shape"):
        layerwise_embeddings(model, x[:, 0], table)
    with pytest.raises(ValueError, match="chunk_size=0 is invalid"):
        layerwise_embeddings(model, x, table, chunk_size=0)
    with pytest.raises(ValueError, match="chunk_size=2.5 is invalid"):
        layerwise_embeddings(model, x, table, chunk_size=2.5)
    ptr, items, weights = table
    with pytest.raises(ValueError, match=r"items\) holds ids in"):
        layerwise_embeddings(model, x, (ptr, items + 200, weights))
    with pytest.raises(ValueError, match="triple"):
        layerwise_embeddings(model, x, (ptr, items))
    with pytest.raises(ValueError, match="expected a models.pinsage.PinSage"):
        layerwise_embeddings(torch.nn.Linear(2, 2), x, table)
    small = PinSage(x.shape[1], 8, 4, num_items=10, id_embedding=True)
    with pytest.raises(ValueError, match="num_items=10"):
        layerwise_embeddings(small, x, table)


def test_naive_rejects_bad_input(dataset, sampler):
    model = _model(dataset, "pinsage", 2)
    x = dataset.item_features
    with pytest.raises(ValueError, match="x has 199 rows"):
        naive_embeddings(model, x[:199], sampler)
    with pytest.raises(ValueError, match="batch_size=0 is invalid"):
        naive_embeddings(model, x, sampler, batch_size=0)
    with pytest.raises(ValueError, match="num_layers=3 is invalid"):
        naive_embeddings(model, x, sampler, num_layers=3)
    with pytest.raises(ValueError, match=r"items hold ids in \[0, 200\]"):
        naive_embeddings(model, x, sampler, items=[0, 200])


@pytest.mark.parametrize("conv,kw", [("pinsage", {"skip": True}), ("sage-mean", {}), ("sage-lstm", {})])
def test_layers_and_embeddings_streamed_into_memmaps(dataset, table, tmp_path, conv, kw):
    """layers_out / out (open_memmap files) receive exactly what return_layers gives."""
    model = _model(dataset, conv, 2, **kw)
    z, layers = layerwise_embeddings(model, dataset.item_features, table, chunk_size=37, return_layers=True)
    files = [np.lib.format.open_memmap(tmp_path / f"layer_{k}.npy", mode="w+", dtype=np.float32, shape=(200, 16))
             for k in range(2)]
    zf = np.lib.format.open_memmap(tmp_path / "z.npy", mode="w+", dtype=np.float32, shape=(200, 8))
    z2 = layerwise_embeddings(model, dataset.item_features, table, chunk_size=37, layers_out=files, out=zf)
    del files, zf
    torch.testing.assert_close(z2, z)
    np.testing.assert_array_equal(np.load(tmp_path / "z.npy"), z.numpy())
    for k in range(2):
        np.testing.assert_array_equal(np.load(tmp_path / f"layer_{k}.npy"), layers[k].numpy())


def test_layers_out_rejects_bad_arrays(dataset, table):
    model = _model(dataset, "pinsage", 2)
    with pytest.raises(ValueError, match="layers_out has 1 arrays: expected num_layers=2"):
        layerwise_embeddings(model, dataset.item_features, table, layers_out=[np.zeros((200, 16), np.float32)])
    with pytest.raises(ValueError, match=r"layers_out\[1\] is invalid"):
        layerwise_embeddings(model, dataset.item_features, table,
                             layers_out=[np.zeros((200, 16), np.float32), np.zeros((200, 16))])
    with pytest.raises(ValueError, match="out is invalid"):
        layerwise_embeddings(model, dataset.item_features, table, out=np.zeros((200, 7), np.float32))


def _rss_file_kb():
    for line in open("/proc/self/status"):
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    return None


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_release_hands_memmap_rows_back(tmp_path):
    """Rows of an open_memmap table stop counting in the process's resident memory once released,
    and keep their values (they are in the file / page cache)."""
    from app.inference import _release

    a = np.lib.format.open_memmap(tmp_path / "t.npy", mode="w+", dtype=np.float32, shape=(65536, 128))  # 32 MB
    a[:] = 1.5
    before = _rss_file_kb()
    if before is None:
        pytest.skip("no RssFile in /proc/self/status")
    _release(a, 0, a.shape[0])
    assert before - _rss_file_kb() > 24 * 1024
    assert float(a[12345, 7]) == 1.5 and float(a[-1, -1]) == 1.5
    _release(np.zeros((4, 4), np.float32), 0, 4)  # not a memmap: nothing to do
