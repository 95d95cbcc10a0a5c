"""PinSageDataModule: YAML instantiation, validation, what the model side reads, and a real
Lightning fit whose epochs reach persistent workers."""

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from datamodules.batch import EvalBatch, PinSageBatch
from datamodules.datamodule import PinSageDataModule

SYNTH = dict(num_users=400, num_items=300, num_interactions=6000, num_communities=6, feature_dim=8, seed=0)


def make(cache_dir, **kw):
    args = dict(dataset="synthetic", cache_dir=str(cache_dir), reader_args=SYNTH, num_neighbors=5, num_walks=10,
                batch_size=256, eval_batch_size=128, num_easy_negatives=50, max_hard_negatives=2,
                hard_negative_window=[0.05, 0.15], num_workers=0)
    args.update(kw)
    return PinSageDataModule(**args)


def test_from_yaml(cache_dir):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(PinSageDataModule, "data")
    cfg = parser.parse_string(f"""
data:
  dataset: synthetic
  cache_dir: {cache_dir}
  reader_args: {{num_users: 400, num_items: 300, num_interactions: 6000, num_communities: 6, feature_dim: 8}}
  num_layers: 2
  num_neighbors: 5
  num_walks: 20
  walk_length: 3
  restart_prob: 0.3
  sampler: uniform
  batch_size: 128
  hard_negative_window: [0.05, 0.1]
  num_workers: 0
""")
    init = parser.instantiate_classes(cfg)
    dm = init.data
    assert isinstance(dm, PinSageDataModule)
    assert (dm.num_neighbors, dm.num_walks, dm.walk_length, dm.restart_prob, dm.sampler) == (5, 20, 3, 0.3, "uniform")
    assert dm.uniform_num_samples == 5 and dm.hard_negative_window == [0.05, 0.1]
    dm.setup("fit")
    assert dm.num_items == 300 and dm.hard_negative_ranks == (15, 30)
    b = next(iter(dm.train_dataloader()))
    assert isinstance(b, PinSageBatch) and b.query.numel() == 128


@pytest.mark.parametrize("kw,name", [
    (dict(num_neighbors=0), "num_neighbors"),
    (dict(restart_prob=1.0), "restart_prob"),
    (dict(restart_prob=-0.1), "restart_prob"),
    (dict(sampler="random"), "sampler"),
    (dict(hard_negative_window=[0.2, 0.1]), "hard_negative_window"),
    (dict(hard_negative_window=[0.1]), "hard_negative_window"),
    (dict(seed=-1), "seed"),
    (dict(num_layers=-1), "num_layers"),
    (dict(batch_size=0), "batch_size"),
    (dict(dataset="nope"), "dataset"),
    (dict(split="shuffled"), "split"),
    (dict(split_seed=-1), "split_seed"),
    (dict(hard_num_walks=0), "hard_num_walks"),
    (dict(hard_cache_mb=-1), "hard_cache_mb"),
])
def test_bad_arguments_name_the_argument(cache_dir, kw, name):
    with pytest.raises(ValueError, match=name):
        make(cache_dir, **kw)


def test_window_beyond_catalogue_at_setup(cache_dir):
    dm = make(cache_dir, hard_negative_window=[100, 400])
    with pytest.raises(ValueError, match="hard_negative_window"):
        dm.setup()
    make(cache_dir, hard_negative_window=[100, 400], hard_negatives=False).setup()  # not needed: fine


def test_what_the_model_side_reads(cache_dir):
    dm = make(cache_dir)
    dm.prepare_data()
    dm.setup("fit")
    ds = dm.dataset
    assert dm.num_items == ds.num_items == 300 and dm.num_features == ds.item_features.shape[1]
    assert dm.has_content.dtype == torch.bool and dm.has_content.shape == (300,)
    for name in ("train_pairs", "val_pairs", "test_pairs"):
        t = getattr(dm, name)
        assert t.dtype == torch.long and t.shape[1] == 2
        assert np.array_equal(t.numpy(), getattr(ds, name))
    ptr, items = dm.train_user_items
    g = ds.train_graph
    assert ptr.shape == (g.num_users + 1,) and items.numel() == g.num_edges
    u = 7
    assert sorted(items[ptr[u]:ptr[u + 1]].tolist()) == sorted(g.items_of(u).tolist())
    assert dm.item_titles is None or len(dm.item_titles) == 300
    for loader in (dm.val_dataloader(), dm.test_dataloader(), dm.predict_dataloader()):
        chunks = list(loader)
        assert all(isinstance(c, EvalBatch) for c in chunks)
        assert torch.equal(torch.cat([c.targets for c in chunks]), torch.arange(300))
        assert all(torch.equal(c.node_ids[:c.targets.numel()], c.targets) for c in chunks)
    assert dm._pin() == torch.cuda.is_available()


def test_ddp_ranks_disjoint_through_the_datamodule(cache_dir):
    dm = make(cache_dir, batch_size=500)
    dm.setup()
    seen = []
    for rank in range(2):
        loader = dm.make_train_dataloader(rank=rank, world_size=2)
        loader.sampler.set_epoch(1)
        pairs = []
        for b in loader:
            ids = b.node_ids
            pairs.append(torch.stack([ids[b.query], ids[b.pos]], 1))
        seen.append(torch.cat(pairs))
    assert seen[0].shape[0] + seen[1].shape[0] == dm.train_pairs.shape[0]
    all_pairs = torch.cat(seen)
    # the multiset of pairs seen equals the training pairs (pairs may repeat in the log)
    key = lambda p: np.sort(p[:, 0].numpy() * 1000 + p[:, 1].numpy())  # noqa: E731
    assert np.array_equal(key(all_pairs), key(dm.train_pairs))


class Recorder(pl.LightningModule):
    """Records what each training batch carries; a tiny linear model so there is something to fit."""

    def __init__(self, num_features):
        super().__init__()
        self.lin = torch.nn.Linear(num_features, 4)
        self.seen = []
        self.eval_targets = []

    def training_step(self, batch, batch_idx):
        assert isinstance(batch, PinSageBatch)
        self.seen.append((self.current_epoch, batch.epoch, tuple(batch.hard_neg.shape), batch.query.numel()))
        z = self.lin(batch.x)
        return (z[batch.query] * z[batch.pos]).sum() * 0 + z.pow(2).mean()

    def validation_step(self, batch, batch_idx):
        assert isinstance(batch, EvalBatch)
        self.eval_targets.append(batch.targets.clone())

    def predict_step(self, batch, batch_idx):
        return batch.targets.clone()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_lightning_fit_curriculum_reaches_workers(cache_dir, num_workers):
    dm = make(cache_dir, num_workers=num_workers, persistent_workers=True, batch_size=512)
    dm.setup()
    model = Recorder(dm.num_features)
    trainer = pl.Trainer(max_epochs=4, limit_train_batches=2, num_sanity_val_steps=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", devices=1, check_val_every_n_epoch=4)
    trainer.fit(model, datamodule=dm)
    assert [(e, be, h[1]) for e, be, h, _ in model.seen] == [(e, e, min(e, 2)) for e in range(4) for _ in range(2)]
    assert torch.equal(torch.cat(model.eval_targets), torch.arange(dm.num_items))
    # predict: Lightning re-instantiates the loader (index tracking); chunks still cover all items in order
    pred = trainer.predict(model, datamodule=dm)
    assert torch.equal(torch.cat(pred), torch.arange(dm.num_items))
