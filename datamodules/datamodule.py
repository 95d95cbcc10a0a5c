"""``PinSageDataModule``: the Lightning face of the data side (plain arguments, YAML-friendly).

Training batches (:class:`~datamodules.batch.PinSageBatch`) are built in DataLoader workers by
:mod:`datamodules.loaders` from importance neighbourhoods (:mod:`datamodules.walks`), easy and
hard negatives (:mod:`datamodules.negatives`) and the re-indexed K-hop computation graph
(:mod:`datamodules.minibatch`). ``val``/``test``/``predict`` dataloaders yield
:class:`~datamodules.batch.EvalBatch` chunks covering every item in index order (on every rank).

What the model side may read (duck-typed): ``num_items``, ``num_users``, ``num_features``, ``has_content``
(``BoolTensor [I]``), ``item_titles`` (array of str or ``None``), ``train_pairs`` / ``val_pairs`` /
``test_pairs`` (``LongTensor [P, 2]``), ``train_user_items`` (``(ptr [U+1], items [nnz])``
``LongTensor`` CSR of each user's training items), ``dataset`` (the :class:`RecDataset`),
``batch_size``, ``hard_negative_ranks`` (the resolved window).

DDP: the training sampler shards the pairs itself (disjoint per rank, reproducible per
``(seed, epoch, rank)``); it subclasses ``DistributedSampler`` so Lightning does not wrap it, and
``Trainer(use_distributed_sampler=False)`` (the CLI default) is equally fine.
"""

from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional, Union

import numpy as np
import pytorch_lightning as pl
import torch

from . import choices
from .cold import check_cold
from .datasets import DATASET_NAMES, RecDataset, load_dataset
from .graph import InteractionGraph
from .loaders import (EpochBatchSampler, EvalChunkDataset, EvalChunkSampler, HistoryBefore, IdBatchDataset,
                      TrainBatchDataset, make_loader, resolve_rank)
from .minibatch import ComputationGraphBuilder
from .negatives import DEFAULT_HARD_WINDOW, HardNegativeMiner, resolve_hard_window
from .pairs import check_min_weight, check_pairs, make_pair_source
from .splits import SPLITS, check_split_seed
from .walk_settings import WalkSettings
from .walks import PinSageSampler, UniformSampler

SAMPLERS = ("pinsage", "uniform")


class _OneStep(torch.utils.data.Dataset):
    """A single placeholder evaluation step (whole-catalogue models embed every item at epoch end)."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i):
        return torch.zeros(1)


def _int(name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    return int(v)


class PinSageDataModule(pl.LightningDataModule):
    """PinSage minibatches from a named dataset.

    Args:
        dataset: dataset name (``datamodules.datasets.DATASET_NAMES``).
        root: data root (e.g. ``../shared/data``); see :func:`~datamodules.datasets.load_dataset`.
        cache_dir: parsed-dataset cache (default ``$PINSAGE_CACHE`` or ``~/.cache/pinsage``).
        cache_shared: the cache folder is on storage every node sees (NFS, Lustre...): only global
            rank 0 builds it (``prepare_data``), the others wait at Lightning's barrier, then every
            rank memory-maps the same files. ``False`` (default): local rank 0 of each node builds
            its node's copy. Either way a rank that finds no cache builds one itself, and
            concurrent builders are safe (atomic folder rename; one copy stays).
        features: item features to build (``None`` = the dataset's defaults).
        split: ``auto`` | ``temporal`` | ``random`` | ``fixed`` (``datamodules.splits``).
        split_seed: seed of the random split (and of held-out queries of unordered splits).
        pairs: training pairs ``auto`` | ``consecutive`` | ``cooccurrence`` | ``walk``
            (:mod:`datamodules.pairs`; ``auto``: consecutive with timestamps, else cooccurrence).
        min_weight: only interactions with weight ``>= min_weight`` make training pairs (``None``: all).
        weighted_walks: walks (neighbourhoods, ``walk`` pairs) move proportionally to the
            interaction weights when the log has them.
        reader_args: format options passed to the reader / synthetic generator.
        num_layers: ``K``, convolution layers = hops of the computation graph (GraphSAGE/PinSage: 2).
        num_neighbors: ``T``, neighbourhood size (top-T visited items). Default 20: the paper's 50
            costs ~4x the training time of 10 for +7 points hit-rate on billions of pins; on public
            catalogues of 10^3-10^5 items 20 keeps most of the gain at a fraction of the cost.
        num_walks: walks per item for the neighbourhoods (default 50, so the top 20 come from ~75
            visits; DGL's example uses 10).
        walk_length: hops per walk (item -> user -> item = 1 hop).
        restart_prob: probability of ending a walk after each hop, in ``[0, 1)``.
        sampler: ``pinsage`` (importance neighbourhoods) | ``uniform`` (GraphSAGE ablation).
        uniform_num_samples: draws per item for ``sampler=uniform`` (``None`` = ``num_neighbors``).
        batch_size: pairs per minibatch per device.
        eval_batch_size: items per evaluation chunk.
        num_easy_negatives: uniform negatives shared by a batch (capped by the catalogue).
        hard_negatives: switch the hard-negative curriculum on/off.
        max_hard_negatives: cap of the curriculum (epoch ``n`` uses ``min(n-1, cap)`` per query).
        hard_negative_window: ``[lo, hi]`` visit-count ranks of hard negatives: fractions of the
            catalogue when < 1 (``lo`` floored to ``T + 1``), absolute 1-based ranks when >= 1.
            Default ``[0.01, 0.05]``: ranks 17-84 on MovieLens-100K, 410-2049 on Gowalla.
        hard_num_walks: walks per query for the hard-negative ranking (``None``: about ``2 * hi``
            visits, at least 100 walks).
        hard_cache_mb: memory per worker (MiB) for hard-negative rankings already computed this
            epoch (queries recur in many pairs; 0 disables; batches are identical either way).
        num_workers, prefetch_factor, persistent_workers: DataLoader workers (``prefetch_factor``
            and ``persistent_workers`` only apply when ``num_workers > 0``).
        pin_memory: ``None`` = pin when CUDA is available.
        drop_last: training keeps only full batches.
        seed: seeds walks, shuffling and negatives.
        queries: what a training query is: ``items`` (the paper's pin -> pin pairs ``(q, i)``)
            or ``users`` (a user's training history without the positive ``i``, pooled by the
            model's user encoder; positives = every training interaction, each epoch). Users
            need ``full_graph``.
        full_graph: compute every item once per step over the ``[I, I]`` neighbourhood matrix
            (an :class:`~datamodules.batch.IdBatch` per step) instead of sampling a K-hop
            minibatch graph; right when a batch's K-hop graph covers most of the catalogue
            anyway (Gowalla: 41k items). ``None``: on for ``queries=users``, else off.
        user_recency_half_life: weight a user's history items by ``2^(-r / h)`` (``r`` = position
            from the latest, in interactions) when pooling them into the user's query vector
            (evaluation, ``recommend --user``, serving; the item-item baselines of the evaluator
            pool the same weights); ``None``: equal weights. Only meaningful with timestamps;
            ``auto``: 3 with timestamps, ``None`` without (:mod:`datamodules.choices`).
        recency_in_training: also pool the training queries (``queries=users``) with those
            weights. Off by default: on MovieLens-100K, training on equally weighted histories
            and ranking with recency-weighted ones scored higher on validation (RESULTS.md).
        user_queries: what a training user query pools (``queries=users``): ``leave_one_out``
            (the whole training history without the positive) or ``before`` (a next-item
            objective for time-ordered logs: the ``user_query_window`` items just before the
            positive, weighted by ``user_recency_half_life`` counted from the positive; a
            user's first item is then never a positive); ``auto``: ``before`` when the log has
            timestamps, else ``leave_one_out``. Whatever is ``auto`` (here, ``split``, ``pairs``)
            is resolved at :meth:`setup` and said in one stderr line (:mod:`datamodules.choices`).
        user_query_window: how many earlier items a ``before`` query pools.
        cold_items, cold_engagements, cold_retrain: the cold-item protocol
            (:mod:`datamodules.cold`): hold this share of the items out of training entirely,
            keeping ``cold_engagements`` early engagements of each for the evaluator (which then
            embeds them from content alone and from those engagements); ``cold_retrain`` trains
            on the early engagements instead (the retrained reference).
        new_item_degree: the log-degree input of an item without training engagements (a new
            item): ``mean`` or ``content`` (predicted from its other features).
    """

    def __init__(
        self,
        dataset: str = "movielens-100k",
        root: str = "data",
        cache_dir: Optional[str] = None,
        features: Optional[List[str]] = None,
        split: str = "auto",
        split_seed: int = 0,
        pairs: str = "auto",
        min_weight: Optional[float] = None,
        weighted_walks: bool = True,
        reader_args: Optional[Dict[str, Any]] = None,
        cache_shared: bool = False,
        num_layers: int = 2,
        num_neighbors: int = 20,
        num_walks: int = 50,
        walk_length: int = 2,
        restart_prob: float = 0.5,
        sampler: str = "pinsage",
        uniform_num_samples: Optional[int] = None,
        batch_size: int = 512,
        eval_batch_size: int = 2048,
        num_easy_negatives: int = 500,
        hard_negatives: bool = True,
        max_hard_negatives: int = 6,
        hard_negative_window: List[float] = list(DEFAULT_HARD_WINDOW),
        hard_num_walks: Optional[int] = None,
        hard_cache_mb: float = 64.0,
        num_workers: int = 2,
        prefetch_factor: int = 2,
        persistent_workers: bool = True,
        pin_memory: Optional[bool] = None,
        drop_last: bool = False,
        seed: int = 0,
        queries: Literal["items", "users"] = "items",
        full_graph: Optional[bool] = None,
        user_recency_half_life: Optional[Union[float, Literal["auto"]]] = None,
        recency_in_training: bool = False,
        user_queries: Literal["leave_one_out", "before", "auto"] = "leave_one_out",
        user_query_window: int = 50,
        cold_items: float = 0.0,
        cold_engagements: int = 3,
        cold_retrain: bool = False,
        new_item_degree: Literal["mean", "content"] = "mean",
    ):
        super().__init__()
        self._set_query_options(queries, full_graph, user_recency_half_life, recency_in_training, user_queries,
                                user_query_window, cold_items, cold_engagements, cold_retrain, new_item_degree)
        self._set_data(dataset, root, cache_dir, features, split, split_seed, pairs, min_weight, weighted_walks,
                       reader_args, cache_shared, sampler)
        self._set_sampling(num_layers, num_neighbors, num_walks, walk_length, restart_prob, sampler,
                           uniform_num_samples, batch_size, eval_batch_size, num_easy_negatives, hard_negatives,
                           max_hard_negatives, hard_negative_window, hard_num_walks, hard_cache_mb)
        self.num_workers = _int("num_workers", num_workers, 0)
        self.prefetch_factor = _int("prefetch_factor", prefetch_factor, 1)
        self.persistent_workers = bool(persistent_workers)
        self.pin_memory = pin_memory
        self.drop_last = bool(drop_last)
        self.seed = _int("seed", seed, 0)
        self.dataset: Optional[RecDataset] = None
        self.hard_negative_ranks: Optional[tuple] = None
        self._builder: Optional[ComputationGraphBuilder] = None
        self._miner: Optional[HardNegativeMiner] = None
        self._train_sampler: Optional[EpochBatchSampler] = None
        self.save_hyperparameters()

    def _set_data(self, dataset, root, cache_dir, features, split, split_seed, pairs, min_weight, weighted_walks,
                  reader_args, cache_shared, sampler) -> None:
        """Which dataset, its split, pairs and cache (checked here)."""
        if dataset not in DATASET_NAMES:
            raise ValueError(f"dataset={dataset!r} is not known; choose one of {list(DATASET_NAMES)}")
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is not valid; choose one of {list(SPLITS)}")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler={sampler!r} is not valid; choose one of {list(SAMPLERS)}")
        self.dataset_name = dataset
        self.root = root
        self.cache_dir = cache_dir
        self.features = None if features is None else list(features)
        self.split = split
        self.split_seed = check_split_seed(split_seed)
        self.pairs = check_pairs(pairs)
        self.min_weight = check_min_weight(min_weight)
        self.weighted_walks = bool(weighted_walks)
        self._pairs = None
        self.reader_args = dict(reader_args or {})
        self.cache_shared = bool(cache_shared)
        self.prepare_data_per_node = not self.cache_shared  # Lightning: who runs prepare_data

    def _set_sampling(self, num_layers, num_neighbors, num_walks, walk_length, restart_prob, sampler,
                      uniform_num_samples, batch_size, eval_batch_size, num_easy_negatives, hard_negatives,
                      max_hard_negatives, hard_negative_window, hard_num_walks, hard_cache_mb) -> None:
        """K, the walks and T of the neighbourhoods, batch sizes, the negatives (checked here)."""
        self.num_layers = _int("num_layers", num_layers, 0)
        self.num_neighbors = _int("num_neighbors", num_neighbors, 1)
        self.num_walks = _int("num_walks", num_walks, 1)
        self.walk_length = _int("walk_length", walk_length, 1)
        try:
            rp = float(restart_prob)
        except (TypeError, ValueError):
            rp = float("nan")
        if not 0.0 <= rp < 1.0:
            raise ValueError(f"restart_prob must be in [0, 1), got {restart_prob!r}")
        self.restart_prob = rp
        self.sampler = sampler
        self.uniform_num_samples = (self.num_neighbors if uniform_num_samples is None
                                    else _int("uniform_num_samples", uniform_num_samples, 1))
        self.batch_size = _int("batch_size", batch_size, 1)
        self.eval_batch_size = _int("eval_batch_size", eval_batch_size, 1)
        self.num_easy_negatives = _int("num_easy_negatives", num_easy_negatives, 0)
        self.hard_negatives = bool(hard_negatives)
        self.max_hard_negatives = _int("max_hard_negatives", max_hard_negatives, 0)
        self.hard_negative_window = list(hard_negative_window)
        resolve_hard_window(self.hard_negative_window, 10**12, self.num_neighbors)  # shape/sign check now
        self.hard_num_walks = None if hard_num_walks is None else _int("hard_num_walks", hard_num_walks, 1)
        try:
            self.hard_cache_mb = float(hard_cache_mb)
        except (TypeError, ValueError):
            self.hard_cache_mb = float("nan")
        if not self.hard_cache_mb >= 0:
            raise ValueError(f"hard_cache_mb must be a number >= 0, got {hard_cache_mb!r}")

    def _set_query_options(self, queries, full_graph, user_recency_half_life, recency_in_training, user_queries,
                           user_query_window, cold_items, cold_engagements, cold_retrain, new_item_degree) -> None:
        """What a training query is, how a user's history is pooled, the cold-item protocol."""
        if new_item_degree not in ("mean", "content"):
            raise ValueError(f"new_item_degree={new_item_degree!r} is not valid; choose mean or content")
        self.new_item_degree = new_item_degree
        self.cold = check_cold(cold_items, cold_engagements) + (bool(cold_retrain),)
        if queries not in ("items", "users"):
            raise ValueError(f"queries={queries!r} is not valid; choose items or users")
        if queries == "users" and full_graph is False:
            raise ValueError("queries=users needs full_graph (a user's history spans the catalogue); "
                             "set full_graph: true or leave it unset")
        self.queries = queries
        self.full_graph = (queries == "users") if full_graph is None else bool(full_graph)
        # 'auto' settings are resolved from the log at setup (the properties below)
        self._half_life_setting = choices.check_half_life(user_recency_half_life)
        self.recency_in_training = bool(recency_in_training)
        if choices.check_user_queries(user_queries) == "before" and queries != "users":
            raise ValueError("user_queries='before' needs queries='users' (it says what a user query pools); "
                             f"got queries={queries!r}")
        self._user_queries_setting = user_queries
        self._chosen: Optional[Dict[str, Any]] = None
        self.user_query_window = _int("user_query_window", user_query_window, 1)

    # -- data ----------------------------------------------------------------------------------
    def _load(self) -> RecDataset:
        # what split 'auto' chose is said in setup's line (datamodules.choices), with the rest
        return load_dataset(self.dataset_name, root=self.root, cache_dir=self.cache_dir, features=self.features,
                            split=self.split, reader_args=self.reader_args, split_seed=self.split_seed,
                            cold_items=self.cold[0], cold_engagements=self.cold[1], cold_retrain=self.cold[2],
                            announce=False)

    @property
    def chosen(self) -> Dict[str, Any]:
        """What ``split``, ``pairs``, ``user_queries``, ``user_recency_half_life`` mean for this
        log (``auto`` resolved; loads the dataset on first use)."""
        if self._chosen is None:
            self._require()
        return self._chosen

    @property
    def user_queries(self) -> str:
        """``before`` | ``leave_one_out`` (an explicit setting as given, ``auto`` from the log)."""
        if self._user_queries_setting != choices.AUTO:
            return self._user_queries_setting
        return self.chosen["user_queries"]

    @property
    def user_recency_half_life(self) -> Optional[float]:
        """The recency half-life (an explicit setting as given, ``auto`` from the log)."""
        if self._half_life_setting != choices.AUTO:
            return self._half_life_setting
        return self.chosen["user_recency_half_life"]

    def prepare_data(self) -> None:
        """Parse and cache the dataset (Lightning runs this on local rank 0 of every node, or only on
        global rank 0 with ``cache_shared``; the other ranks wait at a barrier)."""
        self._load()

    def setup(self, stage: Optional[str] = None) -> None:
        """Load the dataset (from the cache ``prepare_data`` wrote) and build samplers; idempotent.

        ``stage='predict'`` builds neither the training pair source nor the hard-negative miner
        (predict draws no training examples; at 100M edges the pairs' target arrays alone are
        1.3 GB): a later ``fit`` / ``validate`` / ``test`` setup builds them then."""
        if self.dataset is not None:
            if stage != "predict" and self._pairs is None:
                self._build_training_parts(self.dataset)
            return
        ds = self._load()
        if self._user_queries_setting == "before" and ds.interactions.timestamps is None:
            raise ValueError(f"user_queries='before' needs a log with timestamps (the items before a positive "
                             f"must be earlier in time); dataset {self.dataset_name!r} has none: use "
                             "user_queries='leave_one_out' or 'auto'")
        settings = {"split": self.split, "split_seed": self.split_seed, "pairs": self.pairs,
                    "queries": self.queries, "user_queries": self._user_queries_setting,
                    "user_query_window": self.user_query_window, "user_recency_half_life": self._half_life_setting,
                    "weighted_walks": self.weighted_walks}
        self._chosen = choices.resolve_all(ds, settings)
        choices.announce(ds, settings, self._chosen)
        g = ds.train_graph
        if self.sampler == "pinsage":
            nbr = PinSageSampler(g, num_walks=self.num_walks, walk_length=self.walk_length,
                                 restart_prob=self.restart_prob, top_t=self.num_neighbors, seed=self.seed,
                                 weighted=self.weighted_walks)
        else:
            nbr = UniformSampler(g, num_samples=self.uniform_num_samples, seed=self.seed)
        builder = ComputationGraphBuilder(nbr, ds.item_features, self.num_layers)
        if stage != "predict":
            self._build_training_parts(ds)
        self._builder, self.dataset = builder, ds

    def _build_training_parts(self, ds) -> None:
        """The hard-negative miner of the training graph (``None`` when hard negatives are off) and
        the training pair source (:func:`make_pair_source`, which refuses a setting with no pairs)."""
        self._miner = None
        if self.hard_negatives and self.max_hard_negatives > 0:
            self._miner = HardNegativeMiner(ds.train_graph, self.hard_negative_window, self.num_neighbors,
                                            self.hard_num_walks, self.walk_length, self.restart_prob,
                                            seed=self.seed + 7919, cache_mb=self.hard_cache_mb)
            self.hard_negative_ranks = (self._miner.lo, self._miner.hi)
        self._pairs = make_pair_source(ds, self.pairs, self.min_weight, self.walk_length, self.restart_prob,
                                       self.seed, self.weighted_walks)

    def walk_settings(self) -> WalkSettings:
        """The walks of the importance neighbourhoods (what predict records for new items)."""
        return WalkSettings(num_walks=self.num_walks, walk_length=self.walk_length, restart_prob=self.restart_prob,
                            num_neighbors=self.num_neighbors, seed=self.seed, weighted=self.weighted_walks)

    def neighbour_sampler(self):
        """The importance (or uniform) neighbourhood sampler the model trains with."""
        self._require()
        return self._builder.sampler

    def _require(self) -> RecDataset:
        if self.dataset is None:
            self.setup()
        return self.dataset

    # -- what the model side reads ---------------------------------------------------------------
    @property
    def num_items(self) -> int:
        return self._require().num_items

    @property
    def num_users(self) -> int:
        """Users of the log (ids ``0 .. num_users - 1``: the rows of every history CSR)."""
        return self._require().num_users

    @property
    def num_features(self) -> int:
        return int(self._require().item_features.shape[1])

    @property
    def has_content(self) -> torch.Tensor:
        return torch.as_tensor(np.asarray(self._require().has_content, dtype=bool))

    @property
    def item_titles(self):
        return self._require().item_titles()

    @property
    def train_pairs(self) -> torch.Tensor:
        return torch.as_tensor(np.asarray(self._require().train_pairs, dtype=np.int64))

    @property
    def val_pairs(self) -> torch.Tensor:
        return torch.as_tensor(np.asarray(self._require().val_pairs, dtype=np.int64))

    @property
    def test_pairs(self) -> torch.Tensor:
        return torch.as_tensor(np.asarray(self._require().test_pairs, dtype=np.int64))

    @property
    def train_user_items(self):
        """``(ptr LongTensor [U+1], items LongTensor [nnz])``: training items of each user."""
        g = self._require().train_graph
        return (torch.as_tensor(np.asarray(g.user_ptr, dtype=np.int64)),
                torch.as_tensor(np.asarray(g.user_items, dtype=np.int64)))

    # -- loaders ---------------------------------------------------------------------------------
    def _pin(self) -> bool:
        return torch.cuda.is_available() if self.pin_memory is None else bool(self.pin_memory)

    def history_weights(self, ptr) -> np.ndarray:
        """Pooling weights of the training queries' time-ordered history CSR (see
        ``user_recency_half_life`` and ``recency_in_training``)."""
        ptr = np.asarray(ptr, dtype=np.int64)
        if self.user_recency_half_life is None or not self.recency_in_training:
            return np.ones(int(ptr[-1]), dtype=np.float32)
        end = np.repeat(ptr[1:], np.diff(ptr))
        return np.exp2(-(end - 1 - np.arange(int(ptr[-1]))) / self.user_recency_half_life).astype(np.float32)

    def full_graph_data(self) -> Dict[str, Any]:
        """What whole-catalogue computation needs (plain arrays; computed once, cached):
        ``x`` (``float32 [I, F]``), ``nbr`` (``(ptr [I+1], items, weights)``: every item's
        neighbourhood, walk epoch 0 as in evaluation and predict), ``history`` (``(ptr [U+1],
        items, weights)``: each user's training items in time order with their pooling
        weights), ``num_users``."""
        if getattr(self, "_full_data", None) is None:
            ds = self._require()
            g = ds.train_graph
            items = np.arange(ds.num_items, dtype=np.int64)
            nbr = self._builder.sampler.sample(items, epoch=0)
            uptr = np.asarray(g.user_ptr, dtype=np.int64)
            x, new_degree = self._new_item_inputs(ds)
            self._full_data = {
                "x": x, "new_degree": new_degree,
                "nbr": tuple(np.asarray(a) for a in nbr),
                "history": (uptr, np.asarray(g.user_items, dtype=np.int64), self.history_weights(uptr)),
                "num_users": int(uptr.size - 1),
            }
        return self._full_data

    def _new_item_inputs(self, ds):
        """``(x, new_degree)``: the input rows, and ``(column, values)``: every item's log-degree
        input as a new item would have it (unknown: ``new_item_degree='mean'``, the mean the
        feature builder gives items without training engagements; ``'content'``, predicted from
        the item's other features by ridge regression over the engaged items, also used for the
        items without any), or ``None`` without a log-degree column."""
        x = np.asarray(ds.item_features, dtype=np.float32)
        names = list(ds.feature_names)
        if "log_degree" not in names:
            return x, None
        d = names.index("log_degree")
        warm = np.asarray(ds.train_graph.item_degree()) > 0
        pred = np.full(x.shape[0], x[warm, d].mean() if warm.any() else 0.0, dtype=np.float32)
        if self.new_item_degree == "content" and x.shape[1] > 1 and warm.sum() > 1:
            other = np.delete(x, d, axis=1).astype(np.float64)
            mu, ybar = other[warm].mean(0), x[warm, d].mean()
            a = other[warm] - mu
            w = np.linalg.solve(a.T @ a + 10.0 * np.eye(a.shape[1]), a.T @ (x[warm, d] - ybar))
            pred = (ybar + (other - mu) @ w).astype(np.float32)
            x = x.copy()  # the items without training engagements take the prediction too
            x[~warm, d] = pred[~warm]
        return x, (d, pred)

    def cold_data(self) -> Optional[Dict[str, Any]]:
        """The cold-item protocol's inputs (``None`` without ``cold_items``): ``items`` (the cold
        ids), ``cases`` (``int64 [C, 2]`` user, item), ``retrained`` (whether training saw the
        early engagements), ``engaged_nbr``: every item's neighbourhood as in
        :meth:`full_graph_data`, but the cold items' from walks over the training graph plus
        their early engagements (what a new item has after its first engagements)."""
        ds = self._require()
        if "cold_items" not in ds.extras:
            return None
        inter, cold = ds.interactions, np.asarray(ds.extras["cold_items"], dtype=np.int64)
        case_rows = np.asarray(ds.extras["cold_case_rows"], dtype=np.int64)
        rows = np.union1d(np.asarray(ds.split.train), np.asarray(ds.extras["cold_early_rows"]))
        g = InteractionGraph.from_edges(inter.users, inter.items, inter.num_users, inter.num_items,
                                        timestamps=inter.timestamps, weights=inter.weights, rows=rows)
        walks = PinSageSampler(g, num_walks=self.num_walks, walk_length=self.walk_length,
                               restart_prob=self.restart_prob, top_t=self.num_neighbors, seed=self.seed,
                               weighted=self.weighted_walks)
        cptr, citems, cw = walks.sample(cold, epoch=0)
        ptr, items, w = self.full_graph_data()["nbr"]
        lens = np.diff(ptr)
        lens[cold] = np.diff(cptr)
        rows_of = [(items[ptr[i]:ptr[i + 1]], w[ptr[i]:ptr[i + 1]]) for i in range(ds.num_items)]
        for j, c in enumerate(cold):
            rows_of[c] = (citems[cptr[j]:cptr[j + 1]], cw[cptr[j]:cptr[j + 1]])
        new_ptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        return {"items": cold, "retrained": self.cold[2],
                "cases": np.stack([inter.users[case_rows], inter.items[case_rows]], axis=1).astype(np.int64),
                "engaged_nbr": (new_ptr, np.concatenate([r[0] for r in rows_of]).astype(np.int64),
                                np.concatenate([r[1] for r in rows_of]).astype(np.float32))}

    def train_dataset(self):
        ds = self._require()
        if not self.full_graph:
            return TrainBatchDataset(self._pairs, self._builder, self.num_easy_negatives, self._miner,
                                     self.max_hard_negatives, self.seed)
        if self.queries == "items":
            return IdBatchDataset(self._pairs, ds.num_items, self.num_easy_negatives, self._miner,
                                  self.max_hard_negatives, self.seed)
        ptr, items, weights = self.full_graph_data()["history"]
        users = np.repeat(np.arange(ptr.size - 1, dtype=np.int64), np.diff(ptr))
        before = None
        if self.user_queries == "before":  # every position but each user's first
            keep = np.ones(items.size, dtype=bool)
            keep[ptr[:-1][np.diff(ptr) > 0]] = False
            before = HistoryBefore(ptr, items, np.flatnonzero(keep), self.user_query_window,
                                   self.user_recency_half_life)
            users, items, weights = users[keep], items[keep], weights[keep]
        return IdBatchDataset(np.stack([users, items], axis=1), ds.num_items, self.num_easy_negatives,
                              self._miner, self.max_hard_negatives, self.seed, queries="users",
                              pos_weight=weights, before=before)

    def make_train_dataloader(self, rank: Optional[int] = None, world_size: Optional[int] = None,
                              num_workers: Optional[int] = None):
        """The training DataLoader; ``rank``/``world_size`` default to ``torch.distributed``."""
        data = self.train_dataset()
        if rank is not None or world_size is not None:
            resolve_rank(rank, world_size)  # validate early
        sampler = EpochBatchSampler(len(data), self.batch_size, seed=self.seed, shuffle=True,
                                    drop_last=self.drop_last, rank=rank, world_size=world_size)
        self._train_sampler = sampler
        return make_loader(data, sampler, self.num_workers if num_workers is None else num_workers,
                           self.prefetch_factor, self.persistent_workers, self._pin())

    def train_dataloader(self):
        return self.make_train_dataloader()

    def _eval_loader(self):
        self._require()
        if self.full_graph:  # the model embeds the catalogue itself (one pass): one empty step
            return make_loader(_OneStep(), None, 0)
        data = EvalChunkDataset(self._builder, self.eval_batch_size, epoch=0)
        # evaluation is short: no persistent workers (they would idle through training)
        return make_loader(data, EvalChunkSampler(len(data)), self.num_workers, self.prefetch_factor, False,
                           self._pin())

    def val_dataloader(self):
        return self._eval_loader()

    def test_dataloader(self):
        return self._eval_loader()

    def predict_dataloader(self):
        return self._eval_loader()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(dataset={self.dataset_name!r}, K={self.num_layers}, T={self.num_neighbors}, "
                f"sampler={self.sampler!r}, batch_size={self.batch_size}, num_workers={self.num_workers})")
