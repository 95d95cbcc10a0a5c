"""Is the one-vector user or the training objective what holds PinSage back on a log without time
order? Two probes on a config's dataset (RESULTS.md, "Measured first, then a set objective"):

* ``--ease-rank``: EASE's item-item matrix truncated to rank k (user vector = the sum of the
  history's left factors, item vector = the right factor: a one-vector user) and EASE's score
  matrix truncated to rank k, validation and test Recall@20 (full ranking, training items masked).
* otherwise: an ID-embedding model (no graph, no content) trained with a full softmax over the
  catalogue, one user query per step from the training history, validation Recall@20 per epoch:
  ``--user mean`` (normalised mean, cosine, learned scale), ``asym`` (separate history vectors),
  ``kernel`` (log-sum-exp over the history items: a kernel-sum user trained with its scorer);
  ``--objective leave-one-out`` (one held-out positive, the rest the query) or ``set`` (a random
  ``--held-out`` share of the history are all positives of a query pooled from the rest);
  ``--teacher-weight w`` gives share w of the loss to EASE's (``--lam``) top ``--teacher-top`` items
  of the same query (``--teacher-mode step``) or of each user's whole training history (``fixed``).

    python benchmarks/objective_probe.py --config configs/movielens-latest-small-notime.yaml --ease-rank
    python benchmarks/objective_probe.py --config configs/movielens-latest-small-notime.yaml --objective set --dim 128
    python benchmarks/objective_probe.py --config configs/movielens-latest-small-notime.yaml --objective set --dim 128 \
        --epochs 15 --teacher-weight 0.5
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from datamodules.datasets import load_dataset


def _dataset(config: str):
    with open(config) as f:
        cfg = yaml.safe_load(f)
    data = cfg["data"]
    if isinstance(data, str):
        from pathlib import Path
        with open(Path(config).parent / data) as f:
            data = yaml.safe_load(f)
    keys = ("dataset", "root", "features", "split", "split_seed", "reader_args")
    return load_dataset(**{k: data[k] for k in keys if k in data})


def _recall(scores: np.ndarray, train: np.ndarray, users, items, k: int = 20) -> float:
    s = np.where(train[users] > 0, -np.inf, scores[users])
    top = np.argpartition(-s, k, axis=1)[:, :k]
    return float((top == items[:, None]).any(1).mean())


def _ease(ds, lam: float):
    """(the binary users x items training matrix X, EASE's item-item matrix B)."""
    g = ds.train_graph
    ptr, col = np.asarray(g.user_ptr), np.asarray(g.user_items)
    X = np.zeros((ds.num_users, ds.num_items), np.float32)
    for u in range(ds.num_users):
        X[u, col[ptr[u]:ptr[u + 1]]] = 1
    P = np.linalg.inv(X.T @ X + lam * np.eye(ds.num_items, dtype=np.float32))
    B = -P / np.diag(P)
    np.fill_diagonal(B, 0)
    return X, B


def ease_rank(ds, lam: float, ranks) -> None:
    X, B = _ease(ds, lam)
    parts = {p: ds.split_user_items(p) for p in ("val", "test")}

    def both(S):
        return {p: round(_recall(S, X, *parts[p]), 4) for p in parts}

    S = X @ B
    print(json.dumps({"model": "ease", "lam": lam, **both(S)}), flush=True)
    Su, ss, Vs = np.linalg.svd(S, full_matrices=False)
    for k in ranks:
        u_, s_, v_ = torch.svd_lowrank(torch.from_numpy(B), q=k + 16, niter=3)
        Bk = ((u_[:, :k] * s_[:k]) @ v_[:, :k].T).numpy()
        print(json.dumps({"rank": k, "item_item_rank_k": both(X @ Bk),
                          "scores_rank_k": both((Su[:, :k] * ss[:k]) @ Vs[:k])}), flush=True)


class Probe(torch.nn.Module):
    def __init__(self, num_items: int, dim: int, user: str, tau: float) -> None:
        super().__init__()
        self.user, self.tau = user, tau
        self.emb = torch.nn.Parameter(torch.randn(num_items, dim) * 0.1)
        self.hist = torch.nn.Parameter(torch.randn(num_items, dim) * 0.1) if user == "asym" else None
        self.scale = torch.nn.Parameter(torch.tensor(10.0))

    def forward(self, histories) -> torch.Tensor:
        """``[B, I]`` scores of every item for each history (a list of item-id tensors)."""
        z = F.normalize(self.emb, dim=-1)
        if self.user == "kernel":
            lens = torch.tensor([len(h) for h in histories])
            sims = z[torch.cat(histories)] @ z.T / self.tau
            seg = torch.repeat_interleave(torch.arange(len(histories)), lens)
            m = sims.max().detach()
            out = torch.zeros(len(histories), z.size(0)).index_add_(0, seg, torch.exp(sims - m))
            return torch.log(out + 1e-30) + m - torch.log(lens.float()).unsqueeze(1)
        h = F.normalize(self.hist, dim=-1) if self.hist is not None else z
        q = F.normalize(torch.stack([h[i].mean(0) for i in histories]), dim=-1)
        return q @ z.T * self.scale


def _step_batch(ptr, col, users, objective: str, held_out: float, cap: int):
    """(query histories, positives per query as a [B, I] 0/1 matrix, other training items mask)."""
    hists, pos_rows, masks = [], [], []
    for u in users.tolist():
        h = col[ptr[u]:ptr[u + 1]]
        if objective == "set":
            held = torch.rand(len(h)) < held_out
            if not held.any():
                held[torch.randint(len(h), (1,))] = True
            if held.all():
                held[torch.randint(len(h), (1,))] = False
        else:
            held = torch.zeros(len(h), dtype=torch.bool)
            held[torch.randint(len(h), (1,))] = True
        kept = h[~held]
        hists.append(kept[torch.randperm(len(kept))[:cap]])
        pos_rows.append(h[held])
        masks.append(kept)
    return hists, pos_rows, masks


def train_probe(ds, a) -> None:
    g = ds.train_graph
    ptr = torch.as_tensor(np.asarray(g.user_ptr)).long()
    col = torch.as_tensor(np.asarray(g.user_items)).long()
    vu, vi = (torch.as_tensor(x).long() for x in ds.split_user_items("val"))
    torch.manual_seed(a.seed)
    model = Probe(ds.num_items, a.dim, a.user, a.tau)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    users = torch.arange(ds.num_users)[(ptr[1:] - ptr[:-1]) >= 2]
    teacher = torch.from_numpy(_ease(ds, a.lam)[1]) if a.teacher_weight > 0 else None
    if teacher is not None and a.teacher_mode == "fixed":  # the teacher's top items of each whole history
        full = [col[ptr[u]:ptr[u + 1]] for u in range(ds.num_users)]
        seg = torch.repeat_interleave(torch.arange(ds.num_users), ptr[1:] - ptr[:-1])
        t = torch.zeros(ds.num_users, ds.num_items).index_add_(0, seg, teacher[col])
        teacher = t.masked_fill(_mask(full, ds.num_items), -1e9).topk(a.teacher_top, dim=1).indices
    for epoch in range(a.epochs):
        t0, total = time.perf_counter(), 0.0
        for _ in range(a.passes):
            perm = users[torch.randperm(len(users))]
            for b in range(0, len(perm), a.batch):
                hists, pos, kept = _step_batch(ptr, col, perm[b:b + a.batch], a.objective, a.held_out, a.cap)
                own = _mask(kept, ds.num_items)
                logp = F.log_softmax(model(hists).masked_fill(own, -1e9), 1)
                loss = -torch.stack([logp[r, p].mean() for r, p in enumerate(pos)]).mean()
                if teacher is not None:
                    tce = (-logp.gather(1, teacher[perm[b:b + a.batch]]).mean() if a.teacher_mode == "fixed"
                           else _teacher_ce(teacher, kept, own, logp, a))
                    loss = (1 - a.teacher_weight) * loss + a.teacher_weight * tce
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach())
        print(json.dumps({"user": a.user, "objective": a.objective, "dim": a.dim, "teacher": [a.teacher_weight, a.teacher_top, a.teacher_tau, a.teacher_mode], "epoch": epoch,
                          "loss": round(total, 2), "val_recall@20": round(_evaluate(model, ptr, col, vu, vi), 4),
                          "seconds": round(time.perf_counter() - t0, 1)}), flush=True)


def _teacher_ce(B: torch.Tensor, kept, own: torch.Tensor, logp: torch.Tensor, a) -> torch.Tensor:
    """Cross-entropy of the model's softmax against the teacher's (EASE's scores of the same query):
    its top ``--teacher-top`` items uniformly, or softmax(score / ``--teacher-tau``) when 0."""
    seg = torch.repeat_interleave(torch.arange(len(kept)), torch.tensor([len(k) for k in kept]))
    t = torch.zeros(len(kept), B.size(0)).index_add_(0, seg, B[torch.cat(kept)]).masked_fill(own, -1e9)
    if a.teacher_top > 0:
        q = torch.zeros_like(t).scatter_(1, t.topk(a.teacher_top, dim=1).indices, 1.0 / a.teacher_top)
    else:
        q = F.softmax(t / a.teacher_tau, 1)
    return -(q * logp.clamp(min=-1e4)).sum(1).mean()


def _mask(rows, num_items: int) -> torch.Tensor:
    m = torch.zeros(len(rows), num_items, dtype=torch.bool)
    for r, items in enumerate(rows):
        m[r, items] = True
    return m


@torch.no_grad()
def _evaluate(model: Probe, ptr, col, vu, vi, k: int = 20) -> float:
    hits = []
    for b in range(0, len(vu), 128):
        hs = [col[ptr[u]:ptr[u + 1]] for u in vu[b:b + 128].tolist()]
        s = model(hs).masked_fill(_mask(hs, model.emb.size(0)), -float("inf"))
        hits.append((s.topk(k, dim=1).indices == vi[b:b + 128, None]).any(1).float())
    return float(torch.cat(hits).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="a dataset config (its data block is loaded through the cache)")
    p.add_argument("--ease-rank", action="store_true", help="the EASE rank-k probe instead of training")
    p.add_argument("--lam", type=float, default=100.0, help="EASE's lambda (the tuned value on notime)")
    p.add_argument("--ranks", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--user", choices=["mean", "asym", "kernel"], default="mean")
    p.add_argument("--objective", choices=["leave-one-out", "set"], default="leave-one-out")
    p.add_argument("--held-out", type=float, default=0.5, help="the set objective's held-out share")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--tau", type=float, default=0.1, help="the kernel user's temperature")
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--passes", type=int, default=4, help="passes over the users per epoch")
    p.add_argument("--batch", type=int, default=32, help="users per step")
    p.add_argument("--cap", type=int, default=100000, help="at most this many query items per user")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--teacher-weight", type=float, default=0.0,
                   help="share of the loss given to matching EASE's (--lam) distribution of the same query")
    p.add_argument("--teacher-top", type=int, default=50, help="the teacher's top-k items as uniform targets (0: softmax)")
    p.add_argument("--teacher-mode", choices=["step", "fixed"], default="step",
                   help="the teacher scores each step's query (step) or each user's whole training history once (fixed)")
    p.add_argument("--teacher-tau", type=float, default=0.05, help="the teacher softmax's temperature (--teacher-top 0)")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    ds = _dataset(a.config)
    if a.ease_rank:
        ease_rank(ds, a.lam, a.ranks)
    else:
        train_probe(ds, a)


if __name__ == "__main__":
    main()
