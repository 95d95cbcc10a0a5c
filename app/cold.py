"""The cold-item protocol: do items that training never saw land where they belong?

A dataset built with ``data.cold_items: 0.1`` holds 10% of its items out of training entirely
(:mod:`datamodules.cold`): they are in the catalogue with their content, but no interaction of
theirs is in the training graph, the pairs or the validation/test parts. Each cold item's first
``cold_engagements`` (3) engagements are its *early* engagements; every later engagement
``(u, c)`` is a **case**: user ``u`` (with their training + validation history as the query, the
model's user representation and history weights as in the ``full`` protocol) ranks the cold
items (``candidates`` = all cold items but those already in ``u``'s history), and the case is a
hit at ``k`` when ``c`` is among the top ``k``: "which of the new items should this user get?".
The cases are split by user (a seeded half each): ``cold-val`` rows choose settings, ``cold``
rows report them.

Rows (``<model>/cold/hit@k``), one per way of embedding the cold items, all on the same cases:

* ``pinsage-content-only``: the trained network on the item's content alone (no neighbourhood,
  no ID term, the neutral degree a new item gets);
* ``pinsage-3-engagements``: the same network, the item's neighbourhood from walks over the
  training graph plus its early engagements (no retraining);
* ``pinsage-retrained``: a model trained *with* the early engagements (``data.cold_retrain``);
* ``popularity``: the cold items by what is known of their popularity when they are new (the
  early-engagement counts: equal for all, so the expected hit-rate of a random order, the
  chance level ``k / candidates``);
  ``popularity-oracle``: by their engagement counts in the whole log (future included; an upper
  reference no deployed system has).
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

KS = (10, 100)


def cold_ranks(scores: Tensor, cand: np.ndarray, targets: np.ndarray, masked: Sequence[np.ndarray]) -> Tensor:
    """1-based rank of each case's target among ``cand`` (``scores [B, len(cand)]``; ties count
    against the target; ``masked[b]``: candidate positions left out for case ``b``)."""
    pos = np.searchsorted(cand, targets)
    s = scores.clone()
    for b, m in enumerate(masked):
        if m.size:
            s[b, torch.as_tensor(m)] = -torch.inf
    t = s[torch.arange(s.size(0)), torch.as_tensor(pos)]
    return 1 + (s > t.unsqueeze(1)).sum(1) + ((s == t.unsqueeze(1)).sum(1) - 1)


def cold_metrics(ds, cold: Dict, variants: Dict[str, Tensor], history, user_fn: Optional[Callable] = None,
                 weights: Optional[np.ndarray] = None, ks: Sequence[int] = KS, seed: int = 0,
                 batch_size: int = 1024) -> Dict[str, float]:
    """``{"<name>/cold/hit@k": ..., "cold/num_cases", "cold/num_items"}`` for each embedding of
    ``variants`` (``[I, d]``) and the popularity references; ``cold`` from
    ``PinSageDataModule.cold_data()``, ``history = (ptr, items)`` the users' test-time history
    (:func:`app.evaluation.history_csr`), ``weights`` its pooling weights."""
    cand = np.asarray(cold["items"], dtype=np.int64)
    hptr, hitems = history
    users, targets = cold["cases"][:, 0], cold["cases"][:, 1]
    keep = np.diff(hptr)[users] > 0  # a case needs a history to query with
    users, targets = users[keep], targets[keep]
    masked = [np.flatnonzero(np.isin(cand, hitems[hptr[u]:hptr[u + 1]])) for u in users]
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xC01D, 1]))
    is_val = (rng.random(ds.num_users) < 0.5)[users]
    out: Dict[str, float] = {"cold/num_cases": float((~is_val).sum()), "cold-val/num_cases": float(is_val.sum()),
                             "cold/num_items": float(cand.size)}
    if not users.size:
        return out
    ks = [k for k in ks if k < cand.size] or [1]

    def record(name: str, score_fn: Callable[[np.ndarray], Tensor]) -> None:
        hits = {k: np.zeros(users.size, dtype=bool) for k in ks}
        for a in range(0, users.size, batch_size):
            b = slice(a, a + batch_size)
            r = cold_ranks(score_fn(users[b]), cand, targets[b], masked[b]).numpy()
            for k in ks:
                hits[k][b] = r <= k
        for k in ks:
            for proto, sel in (("cold", ~is_val), ("cold-val", is_val)):
                if sel.any():
                    out[f"{name}/{proto}/hit@{k}"] = float(hits[k][sel].mean())

    for name, emb in variants.items():
        emb = torch.as_tensor(emb).float()
        prof = (user_fn(emb, hptr, hitems, weights) if user_fn is not None
                else torch.nn.functional.normalize(_mean_rows(emb, hptr, hitems), dim=-1)).float()
        record(name, lambda u, p=prof, e=emb[torch.as_tensor(cand)]: p[torch.as_tensor(u)] @ e.t())
    # what is known of a new item's popularity is the same for all (its early engagements): the
    # expected hit-rate of a random order among the case's candidates, k / n
    n = cand.size - np.array([m.size for m in masked])
    for k in ks:
        for proto, sel in (("cold", ~is_val), ("cold-val", is_val)):
            if sel.any():
                out[f"popularity/{proto}/hit@{k}"] = float(np.minimum(k / n[sel], 1.0).mean())
    full = np.bincount(ds.interactions.items, minlength=ds.num_items)[cand]
    oracle = torch.as_tensor(full + rng.random(cand.size) * 0.5, dtype=torch.float32)
    record("popularity-oracle", lambda u: oracle.expand(len(u), -1))
    return out


def _mean_rows(emb: Tensor, ptr: np.ndarray, items: np.ndarray) -> Tensor:
    seg = torch.repeat_interleave(torch.arange(ptr.size - 1), torch.as_tensor(np.diff(ptr)))
    return torch.zeros(ptr.size - 1, emb.size(1)).index_add_(0, seg, emb[torch.as_tensor(items)])


def cold_variants(cold: Dict, embed_with: Callable) -> Dict[str, Tensor]:
    """The model's embeddings of the cold items, by the protocol's variants (module docstring)."""
    items = cold["items"]
    if cold["retrained"]:
        return {"pinsage-retrained": embed_with(None, None)}
    return {"pinsage-content-only": embed_with(None, items),
            "pinsage-3-engagements": embed_with(cold["engaged_nbr"], items)}
