"""Make the cold-start copy of a GroupLens MovieLens folder: 10% of the items (seeded) lose every
interaction, so they are absent from training entirely; the other raw files are linked unchanged.

    python benchmarks/serve_cold_data.py --src ../shared/data/movielens-100k --dst outputs/serve/cold-data/movielens-100k

Writes ``<dst>/raw/...`` and ``<dst>/cold_items.json`` (the raw ids held out).  Used by
``benchmarks/serve.py inductive`` (see benchmarks/SERVE.md).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

RATINGS = {"movielens-100k": ("u.data", "\t"), "movielens-latest-small": ("ml-latest-small/ratings.csv", ",")}


def make_cold_copy(src: Path, dst: Path, fraction: float = 0.1, seed: int = 0) -> list:
    name = src.name
    fname, sep = RATINGS[name]
    with open(src / "raw" / fname, newline="") as f:
        lines = f.read().splitlines(keepends=True)
    header = []
    if name == "movielens-latest-small" and lines and not lines[0].split(sep)[0].strip().isdigit():
        header, lines = lines[:1], lines[1:]
    items = np.array([ln.split(sep)[1].strip() for ln in lines])
    uniq = np.unique(items)
    rng = np.random.default_rng(seed)
    cold = sorted(rng.choice(uniq, size=int(round(fraction * uniq.size)), replace=False).tolist(), key=str)
    keep = ~np.isin(items, cold)
    (dst / "raw" / fname).parent.mkdir(parents=True, exist_ok=True)
    tmp = (dst / "raw" / fname).with_name(f".{Path(fname).name}.tmp")
    with open(tmp, "w", newline="") as f:
        f.write("".join(header + [ln for ln, k in zip(lines, keep) if k]))
    os.replace(tmp, dst / "raw" / fname)
    for p in (src / "raw").rglob("*"):
        rel = p.relative_to(src / "raw")
        if p.is_file() and str(rel) != fname and not (dst / "raw" / rel).exists():
            (dst / "raw" / rel).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(p.resolve(), dst / "raw" / rel)
    (dst / "cold_items.json").write_text(json.dumps({"cold_items": cold, "seed": seed, "fraction": fraction,
                                                     "rows_removed": int((~keep).sum())}))
    return cold


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", required=True)
    ap.add_argument("--dst", required=True)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    cold = make_cold_copy(Path(a.src), Path(a.dst), a.fraction, a.seed)
    print(json.dumps({"cold_items": len(cold), "dst": a.dst}))
