"""Producer-consumer minibatches: samplers, datasets and DataLoaders whose *items are whole batches*.

The main process only decides *which* pairs form a batch; everything expensive (walks, negatives,
re-indexing, feature slicing) runs in ``DataLoader`` workers (``num_workers``, ``prefetch_factor``,
``persistent_workers``), so the accelerator only runs the model.

* :class:`EpochBatchSampler` (main process) yields one :class:`BatchIndex` ``(epoch, rank,
  batch_index, pair_indices)`` per minibatch. The epoch travels *inside the index*, so it reaches
  the workers even when they are persistent (a worker-side epoch counter would not). Lightning
  calls ``set_epoch(current_epoch)`` on it before every training epoch (``_set_sampler_epoch``).
* Sharding (DDP): every epoch the positive pairs are shuffled with a generator seeded by
  ``(seed, epoch)`` (the same permutation on every rank) and rank ``r`` takes ``perm[r::world]``:
  disjoint shares that together cover every pair. Every rank then makes the *same* number of
  batches (``ceil(ceil(P / world) / batch_size)``: full batches of ``batch_size``, the last one
  smaller; a rank whose share is one pair short moves one pair out of its second-last batch), so
  no rank waits for another at the end of an epoch. ``drop_last=True`` instead keeps only full batches of
  exactly ``batch_size``.
* Rank and world size come from ``torch.distributed`` when it is initialised at iteration time,
  else from the ``rank``/``world_size`` arguments (default ``0``/``1``).
* :class:`TrainBatchDataset` turns a ``BatchIndex`` into a :class:`~datamodules.batch.PinSageBatch`.
  Its random generator is seeded by ``(seed, epoch, rank, batch_index)`` and the walks by
  ``(seed, epoch, item)``, so a batch is identical whatever ``num_workers`` is.
  Pairs drawn per epoch (``pairs: cooccurrence | walk``, :mod:`datamodules.pairs`) are a pure
  function of ``(seed, epoch, pair index)`` and are drawn in the worker for its batch only.
* The samplers subclass ``torch.utils.data.DistributedSampler`` (without its constructor) so that
  Lightning's ``use_distributed_sampler=True`` leaves them alone instead of wrapping them; running
  the trainer with ``use_distributed_sampler=False`` (as ``app/cli.py`` does) is equivalent.
* Evaluation (:class:`EvalChunkDataset`): chunks of ``eval_batch_size`` items in index order,
  covering the whole catalogue on *every* rank (each rank embeds all items, no gather needed);
  neighbourhoods use a fixed walk epoch (0) so validation scores are comparable across epochs.
"""

from __future__ import annotations

import math
from typing import Iterator, NamedTuple, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .batch import EvalBatch, IdBatch, PinSageBatch
from .checks import check_int
from .minibatch import ComputationGraphBuilder
from .negatives import HardNegativeMiner, num_hard_for_epoch, sample_easy_negatives
from .pairs import StaticPairs


class BatchIndex(NamedTuple):
    """What the main process sends to a worker for one training minibatch."""

    epoch: int
    rank: int
    batch_index: int
    pairs: np.ndarray  # int64 indices into the training pairs


def resolve_rank(rank: Optional[int] = None, world_size: Optional[int] = None) -> Tuple[int, int]:
    """``(rank, world_size)``: explicit arguments win, then ``torch.distributed``, then ``(0, 1)``."""
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank = torch.distributed.get_rank() if rank is None else rank
            world_size = torch.distributed.get_world_size() if world_size is None else world_size
    rank = 0 if rank is None else rank
    world_size = 1 if world_size is None else world_size
    world_size = check_int("world_size", world_size, 1)
    return check_int("rank", rank, 0, world_size, hint=f" (world_size={world_size})"), world_size


class EpochBatchSampler(DistributedSampler):
    """Yields a :class:`BatchIndex` per minibatch of this rank's share of the pairs (module docstring).

    Args:
        num_pairs: number of training pairs ``P``.
        batch_size: pairs per minibatch (per rank).
        seed: shuffling seed (``>= 0``).
        shuffle: shuffle per epoch (else pair order).
        drop_last: keep only full batches.
        rank, world_size: ``None`` = from ``torch.distributed`` at iteration time, else ``0``/``1``.
    """

    def __init__(self, num_pairs: int, batch_size: int, seed: int = 0, shuffle: bool = True, drop_last: bool = False,
                 rank: Optional[int] = None, world_size: Optional[int] = None):
        # deliberately not calling DistributedSampler.__init__ (it requires an initialised group)
        self.num_pairs = check_int("num_pairs", num_pairs, 0)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.seed = check_int("seed", seed, 0)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self._rank, self._world_size = rank, world_size
        self.epoch = 0
        self.dataset = None

    # DistributedSampler-like attributes (read by some tooling)
    @property
    def rank(self) -> int:
        return resolve_rank(self._rank, self._world_size)[0]

    @property
    def num_replicas(self) -> int:
        return resolve_rank(self._rank, self._world_size)[1]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = check_int("epoch", epoch, 0)

    def num_batches(self, world_size: Optional[int] = None) -> int:
        w = resolve_rank(self._rank, self._world_size)[1] if world_size is None else world_size
        if self.drop_last:
            return (self.num_pairs // w) // self.batch_size
        return math.ceil(math.ceil(self.num_pairs / w) / self.batch_size) if self.num_pairs else 0

    def __len__(self) -> int:
        return self.num_batches()

    def shard(self, epoch: int, rank: int, world_size: int) -> list:
        """The list of pair-index arrays (one per batch) of ``rank`` at ``epoch``."""
        if self.shuffle:
            perm = np.random.default_rng(np.random.SeedSequence([self.seed, int(epoch), 0x5A17])).permutation(
                self.num_pairs)
        else:
            perm = np.arange(self.num_pairs, dtype=np.int64)
        mine = perm[rank::world_size].astype(np.int64)
        nb = self.num_batches(world_size)
        if nb == 0:
            return []
        if self.drop_last:
            return [mine[i * self.batch_size:(i + 1) * self.batch_size] for i in range(nb)]
        if mine.size < nb:  # tiny shard: wrap around so no batch is empty (only when batch_size == 1)
            mine = np.resize(mine, nb) if mine.size else np.resize(perm, nb)
        # full batches first; a rank whose share is one pair short takes it off its second-last batch
        cuts = np.minimum(np.arange(nb + 1, dtype=np.int64) * self.batch_size, mine.size)
        cuts[-1] = mine.size
        for i in range(nb - 1, 0, -1):
            cuts[i] = min(cuts[i], cuts[i + 1] - 1)
        return [mine[cuts[i]:cuts[i + 1]] for i in range(nb)]

    def __iter__(self) -> Iterator[BatchIndex]:
        rank, world = resolve_rank(self._rank, self._world_size)
        epoch = self.epoch
        for b, idx in enumerate(self.shard(epoch, rank, world)):
            yield BatchIndex(epoch, rank, b, idx)


class EvalChunkSampler(DistributedSampler):
    """Chunk indices ``0 .. num_chunks-1`` in order, on every rank (see module docstring)."""

    def __init__(self, num_chunks: int):
        self.num_chunks = int(num_chunks)
        self.epoch = 0
        self.shuffle = False
        self.dataset = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_chunks

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.num_chunks))


def batch_rng(seed: int, epoch: int, rank: int, batch_index: int) -> np.random.Generator:
    """The generator of one training batch (independent of worker count and batch order)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), int(rank), int(batch_index)]))


class TrainBatchDataset(Dataset):
    """Map-style dataset: ``dataset[BatchIndex] -> PinSageBatch`` (built in the worker).

    Args:
        pairs: ``int64 [P, 2]`` training pairs ``(q, i)``, or a pair source of
            :mod:`datamodules.pairs` (pairs drawn per epoch: ``take(indices, epoch)``).
        builder: the :class:`ComputationGraphBuilder` (neighbour sampler, features, K).
        num_easy_negatives: easy negatives per batch (capped by the catalogue).
        miner: a :class:`HardNegativeMiner` or ``None`` (no hard negatives).
        max_hard_negatives: curriculum cap.
        seed: seeds every batch's generator with ``(seed, epoch, rank, batch_index)``.
    """

    def __init__(self, pairs, builder: ComputationGraphBuilder, num_easy_negatives: int = 500,
                 miner: Optional[HardNegativeMiner] = None, max_hard_negatives: int = 6, seed: int = 0):
        if not hasattr(pairs, "take") or not hasattr(pairs, "num_pairs"):
            pairs = np.asarray(pairs, dtype=np.int64)
            if pairs.ndim != 2 or pairs.shape[1] != 2:
                raise ValueError(f"pairs must have shape [P, 2], got {pairs.shape}")
            if pairs.size and (pairs.min() < 0 or pairs.max() >= builder.num_items):
                raise ValueError(f"pairs must hold item ids in [0, {builder.num_items})")
            pairs = StaticPairs(pairs)
        self.pairs = pairs
        self.builder = builder
        self.num_easy_negatives = int(num_easy_negatives)
        self.miner = miner
        self.max_hard_negatives = int(max_hard_negatives)
        self.seed = int(seed)

    def num_hard(self, epoch: int) -> int:
        return num_hard_for_epoch(epoch, self.max_hard_negatives, self.miner is not None)

    def make_batch(self, pair_idx: np.ndarray, epoch: int = 0, rank: int = 0, batch_index: int = 0) -> PinSageBatch:
        rng = batch_rng(self.seed, epoch, rank, batch_index)
        p = self.pairs.take(np.asarray(pair_idx, dtype=np.int64), epoch)
        q, pos = p[:, 0], p[:, 1]
        easy = sample_easy_negatives(self.builder.num_items, self.num_easy_negatives, np.concatenate([q, pos]), rng)
        h = self.num_hard(epoch)
        if h > 0:
            hard = self.miner.sample(q, pos, h, epoch, rng)
        else:
            hard = np.empty((q.size, 0), dtype=np.int64)
            if easy.size == 0:
                seen = np.unique(np.concatenate([q, pos])).size
                why = ("num_easy_negatives=0" if self.num_easy_negatives == 0 else
                       f"its {q.size} pairs hold {seen} of the catalogue's {self.builder.num_items} items, leaving "
                       "no other item to sample")
                raise ValueError(f"batch {batch_index} of epoch {epoch} has no negatives ({why}; epoch {epoch} has no "
                                 "hard negatives): set data.num_easy_negatives >= 1 and a data.batch_size well below "
                                 f"half the catalogue (< {max(self.builder.num_items // 4, 1)} here)")
        return self.builder.train_batch(q, pos, easy, hard, epoch)

    def __getitem__(self, index) -> PinSageBatch:
        if isinstance(index, BatchIndex) or (isinstance(index, tuple) and len(index) == 4):
            epoch, rank, b, idx = index
            return self.make_batch(idx, epoch, rank, b)
        raise TypeError("TrainBatchDataset is indexed by BatchIndex(epoch, rank, batch_index, pairs) "
                        "from EpochBatchSampler, got " + type(index).__name__)

    def __len__(self) -> int:
        return int(self.pairs.num_pairs)


class HistoryBefore:
    """Causal user queries: for each training example, the (at most ``window``) items its user
    engaged with just before the positive, latest first, weighted ``2^(-r / half_life)`` (``r`` =
    0 for the latest; equal weights without a half-life).

    Args:
        ptr, items: each user's training items in time order (CSR ``[U + 1]``, ``[nnz]``).
        position: ``int64 [P]`` CSR position of each example's positive.
        window: how many earlier items a query pools (>= 1).
        half_life: recency half-life in interactions, or ``None``.
    """

    def __init__(self, ptr, items, position, window: int, half_life: Optional[float] = None):
        ptr = np.asarray(ptr, dtype=np.int64)
        self.items = np.asarray(items, dtype=np.int64)
        self.position = np.asarray(position, dtype=np.int64)
        self.start = np.repeat(ptr[:-1], np.diff(ptr))  # CSR position -> its user's first position
        r = np.arange(int(window), dtype=np.int64)
        self.offsets = r
        self.weights = (np.ones(r.size, np.float32) if half_life is None
                        else np.exp2(-r / float(half_life)).astype(np.float32))

    def take(self, idx: np.ndarray):
        """``(items int64 [B, W] (-1 padding), weights float32 [B, W])`` of examples ``idx``."""
        e = self.position[idx]
        j = e[:, None] - 1 - self.offsets[None, :]
        ok = j >= self.start[e][:, None]
        items = np.where(ok, self.items[np.maximum(j, 0)], -1)
        return items, np.where(ok, self.weights[None, :], np.float32(0)).astype(np.float32)


class IdBatchDataset(Dataset):
    """Map-style dataset: ``dataset[BatchIndex] -> IdBatch`` for whole-catalogue computation.

    Args:
        examples: ``int64 [P, 2]`` training examples ``(query, positive)``: item pairs
            (``queries="items"``; or a pair source of :mod:`datamodules.pairs`) or training
            interactions ``(user, item)`` (``queries="users"``).
        num_items: catalogue size.
        num_easy_negatives, miner, max_hard_negatives, seed: as :class:`TrainBatchDataset`; the
            hard negatives of a user query come from its positive's visit ranking.
        queries: ``"items"`` | ``"users"``.
        pos_weight: ``float32 [P]`` history weight of each example's positive (users only).
        before: causal user queries (:class:`HistoryBefore`): a query pools the items before its
            positive instead of the whole history without it (users only).
    """

    def __init__(self, examples: np.ndarray, num_items: int, num_easy_negatives: int = 500,
                 miner: Optional[HardNegativeMiner] = None, max_hard_negatives: int = 6, seed: int = 0,
                 queries: str = "items", pos_weight: Optional[np.ndarray] = None,
                 before: Optional[HistoryBefore] = None):
        if not hasattr(examples, "num_pairs"):
            examples = np.asarray(examples, dtype=np.int64)
            if examples.ndim != 2 or examples.shape[1] != 2:
                raise ValueError(f"examples must have shape [P, 2], got {examples.shape}")
            examples = StaticPairs(examples)
        self.examples = examples
        self.num_items = int(num_items)
        self.num_easy_negatives = int(num_easy_negatives)
        self.miner = miner
        self.max_hard_negatives = int(max_hard_negatives)
        self.seed = int(seed)
        self.queries = queries
        self.pos_weight = (np.ones(examples.num_pairs, dtype=np.float32) if pos_weight is None
                           else np.asarray(pos_weight, dtype=np.float32))
        self.before = before

    def num_hard(self, epoch: int) -> int:
        return num_hard_for_epoch(epoch, self.max_hard_negatives, self.miner is not None)

    def make_batch(self, idx: np.ndarray, epoch: int = 0, rank: int = 0, batch_index: int = 0) -> IdBatch:
        rng = batch_rng(self.seed, epoch, rank, batch_index)
        idx = np.asarray(idx, dtype=np.int64)
        ex = self.examples.take(idx, epoch)
        q, pos = ex[:, 0], ex[:, 1]
        users = self.queries == "users"
        exclude = pos if users else np.concatenate([q, pos])
        easy = sample_easy_negatives(self.num_items, self.num_easy_negatives, exclude, rng)
        h = self.num_hard(epoch)
        src = pos if users else q
        hard = self.miner.sample(src, pos, h, epoch, rng) if h > 0 else np.empty((q.size, 0), dtype=np.int64)
        t = torch.from_numpy
        hist, hw = ((t(a) for a in self.before.take(idx)) if users and self.before is not None
                    else (torch.empty(0, dtype=torch.long), torch.empty(0)))
        return IdBatch(t(q), t(pos), t(easy), t(np.ascontiguousarray(hard)),
                       t(self.pos_weight[idx]) if users else torch.empty(0), hist, hw, self.queries, int(epoch))

    def __getitem__(self, index) -> IdBatch:
        if isinstance(index, BatchIndex) or (isinstance(index, tuple) and len(index) == 4):
            epoch, rank, b, idx = index
            return self.make_batch(idx, epoch, rank, b)
        raise TypeError("IdBatchDataset is indexed by BatchIndex(epoch, rank, batch_index, examples) "
                        "from EpochBatchSampler, got " + type(index).__name__)

    def __len__(self) -> int:
        return int(self.examples.num_pairs)


class EvalChunkDataset(Dataset):
    """``dataset[c] -> EvalBatch`` of items ``[c * chunk_size, (c+1) * chunk_size)`` (index order)."""

    def __init__(self, builder: ComputationGraphBuilder, chunk_size: int, epoch: int = 0,
                 items: Optional[np.ndarray] = None):
        self.builder = builder
        self.chunk_size = check_int("eval_batch_size", chunk_size, 1)
        self.epoch = int(epoch)
        self.items = np.arange(builder.num_items, dtype=np.int64) if items is None else np.asarray(items, np.int64)

    def __len__(self) -> int:
        return math.ceil(self.items.size / self.chunk_size)

    def __getitem__(self, c: int) -> EvalBatch:
        c = int(c)
        if not 0 <= c < len(self):
            raise IndexError(f"chunk {c} out of range [0, {len(self)})")
        return self.builder.eval_batch(self.items[c * self.chunk_size:(c + 1) * self.chunk_size], self.epoch)


def _identity(batch):
    return batch


def worker_init_fn(worker_id: int) -> None:
    """One torch thread per worker (the workers are the parallelism). The walk kernels notice that
    they run in a DataLoader worker and use their serial driver, so forked workers never touch
    numba's threading layer (GNU OpenMP is not fork-safe)."""
    torch.set_num_threads(1)


def make_loader(dataset: Dataset, sampler, num_workers: int = 0, prefetch_factor: Optional[int] = 2,
                persistent_workers: bool = False, pin_memory: bool = False,
                multiprocessing_context: Optional[str] = None) -> DataLoader:
    """A DataLoader over batch-valued ``dataset`` items (``batch_size=None``, identity collate)."""
    kw = {}
    if num_workers > 0:
        kw.update(prefetch_factor=prefetch_factor, persistent_workers=bool(persistent_workers),
                  worker_init_fn=worker_init_fn)
    if num_workers > 0 and multiprocessing_context is not None:
        kw["multiprocessing_context"] = multiprocessing_context
    return DataLoader(dataset, batch_size=None, sampler=sampler, num_workers=int(num_workers),
                      collate_fn=_identity, pin_memory=bool(pin_memory), **kw)
