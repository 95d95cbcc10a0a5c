"""Offline evaluation of item embeddings and the non-learned baselines, by one code path.

``evaluate(ds, item_emb, part="test")`` returns one flat, JSON-able ``{"<model>/<protocol>/<metric>":
float}`` dict (plus ``"<protocol>/num_..."`` counts and ``"<model>/<protocol>/seconds"`` timings).
Every model -- the embeddings (``model_name``, default ``"pinsage"``) and each baseline
(``random``, ``popularity``, ``cooccurrence``, see :mod:`models.baselines`; the item-item
``itemknn``, ``rp3beta``, ``ease``, ``pixie``, see :mod:`models.item_item` and
:mod:`app.item_item_baselines`) -- is a *scorer*
``f(queries) -> scores [B, num_items]`` ranked by the same functions, so the numbers are
comparable.

Protocols (``part`` is ``"val"`` or ``"test"``; the *history* of a user is what precedes
``part``: the training items for ``val``, training + validation items for ``test``):

* ``item`` -- PinSage (Ying et al., 2018): each held-out pair ``(q, i)`` of ``part``
  (``ds.val_pairs`` / ``ds.test_pairs``) ranks ``i`` against the whole catalogue with ``q``
  itself left out; ``hit_rate@K`` for ``K`` in ``ks`` below the catalogue size, ``mrr`` = the
  paper's *scaled* MRR ``mean 1 / ceil(rank / 100)``, ``hr@10``, ``ndcg@10``. Item-to-item
  scores: dot products of embeddings; baselines by :func:`models.baselines.baseline_scorer`.
* ``ncf`` -- NCF (He et al., 2017) leave-one-out: every held-out interaction ``(u, i)`` of
  ``part`` ranks ``i`` among ``num_sampled_negatives`` (99) items sampled uniformly without
  replacement (seeded) from the items ``u`` never interacted with anywhere in the log; for
  ``part="test"`` the dataset's own negatives (``ds.extras["test_negatives"]``, the NCF
  ``.test.negative`` file) are used when present. ``hr@10``, ``ndcg@10``. Splits with several
  test items per user (Gowalla) give one case per held-out interaction.
* ``full`` -- LightGCN (He et al., 2020): all held-out items of ``part`` of a user are the ground
  truth, every item is ranked, the user's history items are masked; ``recall@K`` / ``ndcg@K``
  for ``K`` in ``full_ks`` (20).

User -> items scores for the embeddings (``ncf``, ``full``): ``z_j . p_u`` with the profile
``p_u`` = the L2-normalised mean of the embeddings of ``u``'s history items
(:func:`models.baselines.user_profiles`). PinSage itself is item-to-item; this is the
"user -> items from history" recommendation the app serves. A user without history gets the
zero profile (all-equal scores, i.e. the worst ranks: ties count against the target).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from datamodules.datasets import RecDataset
from models.baselines import (
    baseline_scorer,
    candidate_ranks_from_scorer,
    embedding_item_scorer,
    embedding_user_scorer,
    full_ranking_from_scorer,
    grouped_target_ranks,
    item_to_item_metrics,
    user_scorer,
)
from models.item_item import item_item_scorer, item_item_user_scorer
from models.metrics import hit_rate_at_k, ndcg_at_k

from .cold import cold_metrics, cold_variants
from .item_item_baselines import ALL_BASELINES, MATRIX_BASELINES, REGISTRY, build, history_label, settings

PROTOCOLS = ("item", "ncf", "full")
#: the default ``baselines``: the cheap ones, scored straight from the graph (every name: ``ALL_BASELINES``)
BASELINES = tuple(b for b, spec in REGISTRY.items() if spec.kind == "graph")
ITEM_ITEM_BASELINES = MATRIX_BASELINES
PARTS = ("val", "test")

CSR = Tuple[np.ndarray, np.ndarray]


# ----------------------------------------------------------------------------------------------
# what is held out, what is history
# ----------------------------------------------------------------------------------------------
def _csr(users: np.ndarray, items: np.ndarray, num_users: int) -> CSR:
    order = np.lexsort((items, users))
    ptr = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=num_users), out=ptr[1:])
    return ptr, np.ascontiguousarray(items[order], dtype=np.int64)


def _check_part(part: str) -> None:
    if part not in PARTS:
        raise ValueError(f"part={part!r} is not valid; choose one of {list(PARTS)}")


def history_rows(ds: RecDataset, part: str) -> np.ndarray:
    """Interaction rows that precede ``part``: train (``val``), train + val (``test``)."""
    _check_part(part)
    return ds.split.train if part == "val" else np.concatenate([ds.split.train, ds.split.val])


def history_csr(ds: RecDataset, part: str) -> CSR:
    """Each user's history items before ``part`` as CSR ``(ptr [U + 1], items)``."""
    rows = history_rows(ds, part)
    it = ds.interactions
    return _csr(it.users[rows], it.items[rows], ds.num_users)


def heldout_csr(ds: RecDataset, part: str) -> CSR:
    """Each user's held-out items of ``part`` as CSR ``(ptr [U + 1], items)``."""
    _check_part(part)
    u, i = ds.split_user_items(part)
    return _csr(np.asarray(u, dtype=np.int64), np.asarray(i, dtype=np.int64), ds.num_users)


def sample_negatives(users: np.ndarray, num_negatives: int, all_ptr: np.ndarray, all_items: np.ndarray,
                     num_items: int, seed: int = 0) -> np.ndarray:
    """``int64 [N, num_negatives]``: for each case ``users[n]``, distinct items drawn uniformly
    from those the user never interacted with (``all_ptr``/``all_items``: the whole log as CSR,
    items sorted within a user). Deterministic for a given ``seed``."""
    if num_negatives < 1:
        raise ValueError(f"num_sampled_negatives={num_negatives!r} is invalid: expected an int >= 1")
    users = np.asarray(users, dtype=np.int64)
    free = num_items - (all_ptr[users + 1] - all_ptr[users])
    if users.size and free.min() < num_negatives:
        k = int(np.argmin(free))
        raise ValueError(
            f"num_sampled_negatives={num_negatives} is invalid: user {int(users[k])} has only {int(free[k])} "
            f"items they never interacted with (catalogue of {num_items}); use at most {int(free.min())}")
    rng = np.random.default_rng(seed)
    # sorted keys user * I + item of the whole log, to test "interacted" by binary search
    owner = np.repeat(np.arange(all_ptr.size - 1, dtype=np.int64), np.diff(all_ptr))
    keys = owner * num_items + all_items
    keys.sort()
    out = rng.integers(0, num_items, size=(users.size, num_negatives), dtype=np.int64)
    while True:
        k = users[:, None] * num_items + out
        pos = np.clip(np.searchsorted(keys, k), 0, max(keys.size - 1, 0))
        bad = keys[pos] == k if keys.size else np.zeros_like(out, dtype=bool)
        # duplicates inside a row: every repeat after the first occurrence is redrawn
        srt = np.argsort(out, axis=1, kind="stable")
        s = np.take_along_axis(out, srt, axis=1)
        dup_sorted = np.zeros_like(bad)
        dup_sorted[:, 1:] = s[:, 1:] == s[:, :-1]
        dup = np.zeros_like(bad)
        np.put_along_axis(dup, srt, dup_sorted, axis=1)
        bad |= dup
        n_bad = int(bad.sum())
        if n_bad == 0:
            return out
        out[bad] = rng.integers(0, num_items, size=n_bad, dtype=np.int64)


def _fewer_negatives(users: np.ndarray, num_negatives: int, all_ptr: np.ndarray, num_items: int) -> int:
    """A catalogue too small for ``num_negatives`` distinct unseen items per case (the published 99
    need > 99 + a history): sample as many as every case has, with a warning, instead of failing
    after all the work."""
    free = num_items - (all_ptr[users + 1] - all_ptr[users]) if users.size else np.array([num_negatives])
    most = int(free.min())
    if most >= num_negatives or most < 1:
        return num_negatives
    print(f"pinsage: warning: NCF protocol: a user has only {most} items they never interacted with "
          f"(catalogue of {num_items}), fewer than the protocol's {num_negatives} sampled negatives; sampling "
          f"{most} per case (ncf/num_candidates says so; not comparable with published 99-negative figures)",
          file=sys.stderr, flush=True)
    return most


def ncf_cases(ds: RecDataset, part: str = "test", num_negatives: int = 99, seed: int = 0) -> Dict[str, np.ndarray]:
    """The NCF cases of ``part``: ``users [N]`` and ``candidates [N, 1 + num_negatives]`` (held-out
    item in column 0), plus ``from_file`` (1 when the dataset's own test negatives were used)."""
    _check_part(part)
    users, items = (np.asarray(a, dtype=np.int64) for a in ds.split_user_items(part))
    tn = ds.extras.get("test_negatives")
    is_test = ds.interactions.is_test
    if part == "test" and tn is not None and is_test is not None:
        file_rows = np.flatnonzero(is_test)
        pos = np.clip(np.searchsorted(file_rows, ds.split.test), 0, max(file_rows.size - 1, 0))
        if file_rows.size and tn.shape[0] == file_rows.size and np.array_equal(file_rows[pos], ds.split.test):
            negs = np.asarray(tn, dtype=np.int64)[pos]
            return {"users": users, "candidates": np.concatenate([items[:, None], negs], axis=1),
                    "from_file": np.array(1)}
    it = ds.interactions
    all_ptr, all_items = _csr(it.users, it.items, ds.num_users)
    num_negatives = _fewer_negatives(users, num_negatives, all_ptr, ds.num_items)
    negs = sample_negatives(users, num_negatives, all_ptr, all_items, ds.num_items, seed)
    return {"users": users, "candidates": np.concatenate([items[:, None], negs], axis=1),
            "from_file": np.array(0)}


# ----------------------------------------------------------------------------------------------
# the evaluator
# ----------------------------------------------------------------------------------------------
def _check_args(ds, item_emb, part, protocols, ks, baselines, num_sampled_negatives, model_name, full_ks,
                batch_size, baseline_params=None) -> Optional[Tensor]:
    _check_part(part)
    for p in protocols:
        if p not in PROTOCOLS:
            raise ValueError(f"protocol={p!r} is not valid; choose from {list(PROTOCOLS)}")
    for b in baselines:
        if b not in ALL_BASELINES:
            raise ValueError(f"baseline={b!r} is not valid; choose from {list(ALL_BASELINES)}")
    for b, p in (baseline_params or {}).items():
        if b not in ITEM_ITEM_BASELINES:
            raise ValueError(f"baseline_params has {b!r}: only {list(ITEM_ITEM_BASELINES)} take parameters")
        settings(ds, b, p)  # names the parameter that is not valid
    for name, vals in (("ks", ks), ("full_ks", full_ks)):
        if not vals or any(not isinstance(k, (int, np.integer)) or k < 1 for k in vals):
            raise ValueError(f"{name}={vals!r} is invalid: expected a non-empty list of ints >= 1")
    if "full" in protocols and any(k > ds.num_items for k in full_ks):
        raise ValueError(f"full_ks={full_ks!r} is invalid: expected cut-offs <= num_items={ds.num_items}")
    if int(num_sampled_negatives) < 1:
        raise ValueError(f"num_sampled_negatives={num_sampled_negatives!r} is invalid: expected an int >= 1")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is invalid: expected an int >= 1")
    if item_emb is None:
        return None
    if not isinstance(model_name, str) or not model_name or "/" in model_name or model_name in ALL_BASELINES:
        raise ValueError(f"model_name={model_name!r} is invalid: expected a non-empty name without '/' "
                         f"that is not a baseline ({list(ALL_BASELINES)})")
    emb = torch.as_tensor(item_emb)
    if emb.dim() != 2 or emb.size(0) != ds.num_items or emb.size(1) < 1:
        raise ValueError(f"item_emb has shape {tuple(emb.shape)}: expected [num_items={ds.num_items}, d]")
    if not torch.isfinite(emb).all():
        raise ValueError("item_emb contains NaN or infinite values; expected finite embeddings")
    return emb.float()


def evaluate(
    ds: RecDataset,
    item_emb: Optional[Tensor] = None,
    part: str = "test",
    protocols: Sequence[str] = PROTOCOLS,
    ks: Sequence[int] = (10, 100, 500),
    baselines: Sequence[str] = BASELINES,
    num_sampled_negatives: int = 99,
    seed: int = 0,
    model_name: str = "pinsage",
    full_ks: Sequence[int] = (20,),
    batch_size: int = 512,
    log: Optional[Callable[[str], None]] = None,
    user_fn: Optional[Callable[..., Tensor]] = None,
    history_weights: Optional[Callable[[str], np.ndarray]] = None,
    baseline_params: Optional[Dict[str, dict]] = None,
    baseline_matrices: Optional[Dict[str, object]] = None,
    user_emb: Optional[Tensor] = None,
    history_half_life: Optional[float] = None,
) -> Dict[str, float]:
    """Evaluate ``item_emb`` (``[num_items, d]``, or ``None`` for baselines only) and the
    ``baselines`` on ``part`` of ``ds`` with each of ``protocols`` (see the module docstring).

    Args:
        ds: the dataset (its training graph feeds the baselines and the masks).
        item_emb: item embeddings in the dataset's item index order.
        part: ``"val"`` or ``"test"``.
        protocols: any of ``"item"``, ``"ncf"``, ``"full"``.
        ks: hit-rate cut-offs of the item protocol (those >= the catalogue size are skipped).
        baselines: any of ``random``, ``popularity``, ``cooccurrence`` (numba kernels over the
            graph) and the item-item baselines ``itemknn``, ``rp3beta``, ``ease``, ``pixie``
            (:mod:`app.item_item_baselines`; their matrix is built once per call from the
            training graph, ``<name>/build_seconds`` records how long it took).
        num_sampled_negatives: NCF negatives per case when they are sampled.
        seed: seeds the NCF negatives and the random baseline.
        model_name: key prefix of the embeddings' metrics.
        full_ks: cut-offs of the full-ranking protocol.
        batch_size: distinct queries scored at once (bounds memory at ``batch_size x num_items``).
        log: optional callback receiving one progress line per model and protocol.
        user_fn: the model's user representation ``user_fn(item_emb, history_ptr, history_items,
            history_weights) -> [U, d]`` (e.g. ``PinSageModule.user_vectors``); ``None``: the
            L2-normalised mean of the history embeddings.
        history_weights: ``f(part) -> float32 [nnz]`` pooling weights aligned with
            :func:`history_csr` (e.g. recency); ``None``: equal weights. The item-item baselines
            weight their history rows by the same weights, so they see the user the model sees.
        baseline_params: per item-item baseline, settings overriding the tuned ones (e.g.
            ``{"ease": {"lam": 200.0}}``; see :func:`app.item_item_baselines.settings`). Without
            them an item-item baseline takes the settings ``pinsage baselines`` tuned on this
            dataset's validation split (the record beside its cache) for ``history_half_life``,
            else its untuned defaults; which one is said on stderr and in ``"baseline_settings"``.
        baseline_matrices: per item-item baseline, an already built matrix to use as is (so one
            EASE matrix serves the validation and the test part).
        user_emb: optional ``[num_users, d]`` user embeddings of a model that learns them
            (LightGCN): the user protocols then score ``user_emb[u] . item_emb[j]`` instead of
            the mean-of-history profile.

    Returns:
        ``{"<model>/<protocol>/<metric>": float, "<model>/<protocol>/seconds": float,
        "item/num_queries", "ncf/num_cases", "ncf/num_candidates", "ncf/from_file",
        "full/num_users", "num_items"}``, plus ``"baseline_settings": {name: {"params",
        "source"}}`` when item-item baselines were built here.
    """
    emb = _check_args(ds, item_emb, part, protocols, ks, baselines, num_sampled_negatives, model_name,
                      full_ks, batch_size, baseline_params)
    uemb = _check_user_emb(ds, emb, user_emb)
    out: Dict[str, float] = {"num_items": float(ds.num_items)}
    matrices: Dict[str, object] = dict(baseline_matrices or {})
    chosen = _choose_settings(ds, baselines, baseline_params, matrices, history_half_life, out)
    run = _Run(ds, part, emb, uemb, model_name, ([model_name] if emb is not None else []) + list(baselines),
               seed, batch_size, log or (lambda msg: None), user_fn, history_weights, chosen, matrices, out)
    if "item" in protocols:
        run.item_protocol(ks)
    if "ncf" in protocols:
        run.ncf_protocol(int(num_sampled_negatives))
    if "full" in protocols:
        run.full_protocol(full_ks)
    return out


def _choose_settings(ds, baselines, baseline_params, matrices, history_half_life, out) -> Dict[str, Tuple[dict, str]]:
    """The settings of each item-item baseline built here (tuned record, given or default), said
    on stderr and recorded in ``out["baseline_settings"]``."""
    chosen = {b: settings(ds, b, (baseline_params or {}).get(b), history_label(history_half_life))
              for b in baselines if b in ITEM_ITEM_BASELINES and b not in matrices}
    if chosen:
        out["baseline_settings"] = {b: {"params": p, "source": src} for b, (p, src) in chosen.items()}
        _announce_settings(chosen, ds)
    return chosen


def _check_user_emb(ds, emb: Optional[Tensor], user_emb) -> Optional[Tensor]:
    if user_emb is None:
        return None
    uemb = torch.as_tensor(user_emb).float()
    if emb is None or uemb.dim() != 2 or uemb.shape != (ds.num_users, emb.size(1)):
        raise ValueError(f"user_emb has shape {tuple(uemb.shape)}: expected [num_users={ds.num_users}, d] "
                         "beside item_emb [num_items, d]")
    return uemb


@dataclass
class _Run:
    """One :func:`evaluate` call: its models, the item-item matrices (built on first use) and the
    output dict every protocol writes into."""

    ds: RecDataset
    part: str
    emb: Optional[Tensor]
    uemb: Optional[Tensor]
    model_name: str
    models: List[str]
    seed: int
    batch_size: int
    say: Callable[[str], None]
    user_fn: Optional[Callable[..., Tensor]]
    history_weights: Optional[Callable[[str], np.ndarray]]
    chosen: Dict[str, Tuple[dict, str]]
    matrices: Dict[str, object]
    out: Dict[str, float]
    _hist: Optional[CSR] = None

    @property
    def graph(self):
        g = self.ds.train_graph
        return g.user_ptr, g.user_items, g.item_ptr, g.item_users

    @property
    def hist(self) -> CSR:
        if self._hist is None:
            self._hist = history_csr(self.ds, self.part)
        return self._hist

    def matrix(self, name: str):
        if name not in self.matrices:
            t0 = time.perf_counter()
            self.matrices[name] = build(name, self.ds.train_graph, self.chosen[name][0], seed=self.seed)
            self.out[f"{name}/build_seconds"] = time.perf_counter() - t0
            self.say(f"{name}: matrix built in {self.out[f'{name}/build_seconds']:.1f}s")
        return self.matrices[name]

    def timed(self, name: str, protocol: str, fn: Callable[[], Dict[str, float]]) -> None:
        t0 = time.perf_counter()
        metrics = fn()
        dt = time.perf_counter() - t0
        for k, v in metrics.items():
            self.out[f"{name}/{protocol}/{k}"] = float(v)
        self.out[f"{name}/{protocol}/seconds"] = dt
        self.say(f"{name}/{protocol}: {dt:.1f}s " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))

    def item_protocol(self, ks: Sequence[int]) -> None:
        ds = self.ds
        pairs = torch.as_tensor(np.asarray(getattr(ds, f"{self.part}_pairs"), dtype=np.int64)).view(-1, 2)
        q, t = pairs[:, 0], pairs[:, 1]
        self.out["item/num_queries"] = float(q.numel())
        for name in self.models:
            if name == self.model_name and self.emb is not None:
                scorer = embedding_item_scorer(self.emb)
            elif name in ITEM_ITEM_BASELINES:
                scorer = item_item_scorer(self.matrix(name))
            else:
                scorer = baseline_scorer(name, *self.graph, ds.num_items, seed=self.seed)
            self.timed(name, "item", lambda s=scorer: item_to_item_metrics(
                grouped_target_ranks(s, q, t, exclude_query=True, batch_size=self.batch_size), ks,
                num_items=ds.num_items) if q.numel() else {})

    def user_scorer(self, name: str):
        emb, hist, weights = self.emb, self.hist, self.history_weights
        if name == self.model_name and emb is not None and self.user_fn is not None:
            prof = self.user_fn(emb, hist[0], hist[1], None if weights is None else weights(self.part)).float()
            return lambda u, prof=prof: prof[torch.as_tensor(u, dtype=torch.long)] @ emb.t()
        if name == self.model_name and emb is not None:
            if self.uemb is not None:
                return lambda u: self.uemb[torch.as_tensor(u, dtype=torch.long)] @ emb.t()
            return embedding_user_scorer(emb, *hist)
        if name in ITEM_ITEM_BASELINES:  # the model's history weights (recency), if any
            return item_item_user_scorer(self.matrix(name), *hist, None if weights is None else weights(self.part))
        return user_scorer(name, *self.graph, self.ds.num_items, seed=self.seed, history=hist)

    def ncf_protocol(self, num_negatives: int) -> None:
        cases = ncf_cases(self.ds, self.part, num_negatives, self.seed)
        users = torch.as_tensor(cases["users"])
        cand = torch.as_tensor(cases["candidates"])
        self.out["ncf/num_cases"] = float(users.numel())
        self.out["ncf/num_candidates"] = float(cand.size(1))
        self.out["ncf/from_file"] = float(cases["from_file"])
        for name in self.models:
            s = self.user_scorer(name)

            def ncf(s=s):
                if users.numel() == 0:
                    return {}
                r = candidate_ranks_from_scorer(s, users, cand, batch_size=self.batch_size)
                return {"hr@10": float(hit_rate_at_k(r, 10)), "ndcg@10": float(ndcg_at_k(r, 10))}

            self.timed(name, "ncf", ncf)

    def full_protocol(self, full_ks: Sequence[int]) -> None:
        gt = heldout_csr(self.ds, self.part)
        hist = self.hist
        self.out["full/num_users"] = float(int((np.diff(gt[0]) > 0).sum()))
        for name in self.models:
            s = self.user_scorer(name)
            self.timed(name, "full", lambda s=s: full_ranking_from_scorer(
                s, *gt, ks=full_ks, exclude_ptr=hist[0], exclude_items=hist[1], batch_size=self.batch_size))


def _announce_settings(chosen: Dict[str, Tuple[dict, str]], ds: RecDataset) -> None:
    """One stderr line per source: which baselines run tuned (and from which record), which untuned."""
    import os
    import sys

    if os.environ.get("PINSAGE_QUIET") == "1":
        return
    by_source: Dict[str, list] = {}
    for b, (p, src) in chosen.items():
        by_source.setdefault(src, []).append(f"{b} {p}")
    for src, items in by_source.items():
        hint = ("; `pinsage baselines --config <your config>` tunes them on the validation split"
                if src == "untuned defaults" else "")
        print(f"pinsage: baselines on {ds.name}, {src}: {', '.join(items)}{hint}", file=sys.stderr, flush=True)


def recency_from_end(ds: RecDataset, part: str) -> np.ndarray:
    """For every entry of :func:`history_csr` ``(ds, part)``: its position from the end of the
    user's history in time order (0 = the latest; file order breaks ties and stands in for time
    when there are no timestamps)."""
    from datamodules.splits import user_time_order

    rows = history_rows(ds, part)
    it = ds.interactions
    timed = user_time_order(it, rows)  # (user, time, file position)
    u_sorted = it.users[timed]
    counts = np.bincount(u_sorted, minlength=ds.num_users)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    from_end = np.empty(rows.size, dtype=np.int64)
    pos = np.arange(rows.size) - start[u_sorted]
    from_end_timed = counts[u_sorted] - 1 - pos
    # align with history_csr's (user, item) order
    order = np.lexsort((it.items[timed], u_sorted))
    from_end[:] = from_end_timed[order]
    return from_end


def recency_weights(ds: RecDataset, part: str, half_life: Optional[float]) -> Optional[np.ndarray]:
    """Pooling weights ``2^(-r / half_life)`` aligned with :func:`history_csr` (``r`` from
    :func:`recency_from_end`), the data side's training weights; ``None`` without a half-life."""
    if half_life is None:
        return None
    return np.exp2(-recency_from_end(ds, part) / float(half_life)).astype(np.float32)


def evaluate_module(module, datamodule, item_emb: Tensor, part: str = "test",
                    baselines: Optional[Sequence[str]] = None, log: Optional[Callable[[str], None]] = None
                    ) -> Dict[str, float]:
    """Score a trained :class:`models.module.PinSageModule`'s item embeddings as ``pinsage test``
    does: the module's ``eval_ks`` (below the catalogue size), ``test_protocols``, ``baselines``
    (``baselines`` overrides them) and user representation; the DataModule's seed and recency
    weights.  Predict's ``metrics.json`` and ``pinsage report`` both call this, so their numbers
    are the same."""
    ds, hp = datamodule.dataset, module.hparams
    half = getattr(datamodule, "user_recency_half_life", None)
    return evaluate(
        ds, item_emb, part=part, log=log, ks=[k for k in hp.eval_ks if k < ds.num_items],
        protocols=hp.test_protocols, baselines=hp.baselines if baselines is None else list(baselines),
        seed=getattr(datamodule, "seed", 0),
        user_fn=module.user_vectors, history_weights=None if half is None else (
            lambda p: recency_weights(ds, p, half)), history_half_life=half)


def module_evaluator(dm, protocols_by_stage: Dict[str, Sequence[str]], ks: Sequence[int] = (10, 100, 500),
                     full_ks: Sequence[int] = (20,), baselines: Sequence[str] = ("popularity", "cooccurrence"),
                     batch_size: int = 512, seed: int = 0, embed_with: Optional[Callable] = None):
    """The evaluator a :class:`models.module.PinSageModule` calls at validation / test: this
    module's :func:`evaluate` over ``dm.dataset`` (the one code path predict's metrics.json
    uses too), with the module's user representation and the datamodule's history weights.
    At test, a dataset with cold items (``data.cold_items``) adds the cold-item protocol
    (:mod:`app.cold`; ``embed_with(nbr, no_id)`` re-embeds the catalogue, as
    ``PinSageModule.embed_with``)."""

    half = getattr(dm, "user_recency_half_life", None)

    def weights(part: str) -> Optional[np.ndarray]:
        return recency_weights(dm.dataset, part, half)

    def run(stage: str, item_emb: Tensor, user_fn, with_baselines: bool) -> Dict[str, float]:
        part = "val" if stage == "val" else "test"
        ks_ok = [k for k in ks if k < dm.dataset.num_items] or [min(dm.dataset.num_items - 1, 1)]
        out = evaluate(dm.dataset, item_emb, part=part, protocols=list(protocols_by_stage[stage]), ks=ks_ok,
                       baselines=list(baselines) if with_baselines else [], full_ks=full_ks, seed=seed,
                       batch_size=batch_size, user_fn=user_fn, history_weights=weights, history_half_life=half)
        cold = dm.cold_data() if stage == "test" and embed_with is not None and hasattr(dm, "cold_data") else None
        if cold is not None:
            out.update(cold_metrics(dm.dataset, cold, cold_variants(cold, embed_with), history_csr(dm.dataset, "test"),
                                    user_fn, weights("test"), seed=seed, batch_size=batch_size))
        return out

    return run
