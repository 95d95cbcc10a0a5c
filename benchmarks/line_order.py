"""Does the order of a LightGCN-format line carry time? (RESULTS.md, "Sixth pass")

From the *training* file only: for sampled users with at least ``--min-items`` training items,
the mean co-engagement cosine (item columns of the training user x item matrix, L2-normalised)
between items ``g`` places apart in the user's line, for each gap ``g``. In a line sorted by time,
items next to each other are more alike than items far apart (a user's next check-in is near the
last one); in a line in random or id order the curve is flat. Prints one JSON line.

    python benchmarks/line_order.py --root ../shared/data/gowalla/raw [--shuffle]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import scipy.sparse as sp

from datamodules.readers import read_lightgcn


def gap_similarity(users: np.ndarray, items: np.ndarray, gaps, num_users: int, min_items: int, seed: int,
                   shuffle: bool = False):
    """``{gap: mean cosine}`` over sampled users' lines (rows grouped by user, in file order;
    ``shuffle``: each line in a seeded random order instead, the control)."""
    rng = np.random.default_rng(seed)
    x = sp.csr_matrix((np.ones(users.size, np.float32), (users, items)))
    norm = np.sqrt(np.asarray(x.sum(axis=0)).ravel()) + 1e-9
    xn = sp.csc_matrix(x.multiply(1.0 / norm))
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], users.size]
    long = np.flatnonzero(ends - starts >= min_items)
    pick = rng.choice(long, size=min(num_users, long.size), replace=False)
    sims = {g: [] for g in gaps}
    for k in pick:
        line = items[starts[k]:ends[k]]
        line = rng.permutation(line) if shuffle else line
        cols = xn[:, line]
        gram = (cols.T @ cols).toarray()
        for g in gaps:
            sims[g].append(float(np.diagonal(gram, offset=g).mean()))
    return {g: round(float(np.mean(v)), 4) for g, v in sims.items()}, int(pick.size)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="../shared/data/gowalla/raw", help="folder holding train.txt and test.txt")
    p.add_argument("--gaps", type=int, nargs="+", default=[1, 2, 5, 20])
    p.add_argument("--users", type=int, default=1500, help="users sampled among those with --min-items")
    p.add_argument("--min-items", type=int, default=30)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--shuffle", action="store_true", help="the control: each line in a random order")
    a = p.parse_args()
    inter = read_lightgcn(a.root)
    train = ~inter.is_test
    sims, n = gap_similarity(inter.users[train], inter.items[train], a.gaps, a.users, a.min_items, a.seed,
                             a.shuffle)
    print(json.dumps({"root": a.root, "shuffled": a.shuffle, "users": n, "mean_cosine_by_gap": sims}))


if __name__ == "__main__":
    main()
