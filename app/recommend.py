"""``pinsage recommend``: item -> similar items, user -> items, from ``pinsage predict`` artifacts.

    pinsage recommend --artifacts DIR --item RAW_ID [-k 10] [--json]
    pinsage recommend --artifacts DIR --user RAW_ID [-k 10] [--json]

A user's query vector is the L2-normalised mean of the embeddings of the items in their history;
items they have already engaged with are never recommended.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np


class ArtifactError(ValueError):
    """Missing, truncated or inconsistent artifacts, or an unknown id."""


class Recommender:
    """Loaded artifacts: embeddings, FAISS index, item table and user histories."""

    def __init__(self, folder: str):
        from .retrieval import load_index

        self.folder = Path(folder)
        manifest = self.folder / "manifest.json"
        if not manifest.is_file():
            raise ArtifactError(f"--artifacts {str(self.folder)!r} has no manifest.json: run `pinsage predict` first")
        self.manifest = json.loads(manifest.read_text())
        try:
            self.emb = np.load(self.folder / "embeddings.npy", allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise ArtifactError(f"{self.folder / 'embeddings.npy'} cannot be read ({e}): re-run `pinsage predict`") from e
        n, d = self.manifest["count"], self.manifest["dims"]
        if self.emb.ndim != 2 or self.emb.shape != (n, d):
            raise ArtifactError(f"embeddings.npy has shape {self.emb.shape}, manifest.json says ({n}, {d}): "
                                "the artifacts are truncated or mixed; re-run `pinsage predict`")
        self.index = load_index(self.folder / "index.faiss", expected_dim=d, expected_count=n)
        with open(self.folder / "items.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        if len(rows) != n:
            raise ArtifactError(f"items.csv has {len(rows)} rows, embeddings.npy {n}: re-run `pinsage predict`")
        self.item_ids = [r["id"] for r in rows]
        self.titles = [r["title"] for r in rows]
        self.item_index = {raw: i for i, raw in enumerate(self.item_ids)}
        users = np.load(self.folder / "users.npz", allow_pickle=False)
        self.user_ids = users["user_ids"].tolist()
        self.user_index = {raw: u for u, raw in enumerate(self.user_ids)}
        self.user_ptr, self.user_items = users["ptr"], users["items"]
        d = self.emb.shape[1]
        # the model's user encoder (models/user_encoder.py): p_u = normalise(W_u sum of history)
        self.user_encoder = users["encoder"] if "encoder" in users.files else np.eye(d, dtype=np.float32)

    def user_vector(self, history) -> np.ndarray:
        """The user representation the model trained and was evaluated with (see UserEncoder)."""
        q = self.user_encoder @ self.emb[np.asarray(history, dtype=np.int64)].sum(0)
        return (q / max(float(np.linalg.norm(q)), 1e-12)).astype(np.float32)

    @property
    def num_items(self) -> int:
        return self.emb.shape[0]

    def _check_k(self, k: int, excluded: int) -> None:
        hi = self.num_items - excluded
        if not 1 <= k <= hi:
            raise ArtifactError(f"-k {k} is not valid: choose 1 <= k <= {hi} (catalogue of {self.num_items} items"
                                f"{f', {excluded} excluded' if excluded else ''})")

    def _answer(self, query: dict, scores: np.ndarray, ids: np.ndarray) -> dict:
        items = [{"id": self.item_ids[i], "score": float(s), "title": self.titles[i] or None}
                 for s, i in zip(scores.tolist(), ids.tolist()) if i >= 0]
        return {"query": query, "items": items}

    def similar_items(self, raw_id: str, k: int = 10) -> dict:
        from .retrieval import search

        if raw_id not in self.item_index:
            raise ArtifactError(f"--item {raw_id!r} is not in the catalogue ({self.num_items} items; ids as in items.csv)")
        i = self.item_index[raw_id]
        self._check_k(k, 1)
        s, ids = search(self.index, self.emb[i:i + 1], k, exclude=[[i]])
        return self._answer({"item": raw_id, "title": self.titles[i] or None}, s[0], ids[0])

    def for_user(self, raw_id: str, k: int = 10) -> dict:
        from .retrieval import search

        if raw_id not in self.user_index:
            raise ArtifactError(f"--user {raw_id!r} is unknown ({len(self.user_ids)} users in users.npz)")
        u = self.user_index[raw_id]
        seen = self.user_items[self.user_ptr[u]:self.user_ptr[u + 1]]
        self._check_k(k, len(np.unique(seen)))
        q = self.user_vector(seen)
        s, ids = search(self.index, q[None, :].astype(np.float32), k, exclude=[seen])
        return self._answer({"user": raw_id, "history": len(seen)}, s[0], ids[0])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pinsage recommend", description=__doc__.split("\n\n")[0])
    p.add_argument("--artifacts", required=True, help="folder written by `pinsage predict`")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--item", help="raw item id: similar items")
    g.add_argument("--user", help="raw user id: items for this user, seen ones excluded")
    p.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rec = Recommender(args.artifacts)
        out = rec.similar_items(args.item, args.k) if args.item is not None else rec.for_user(args.user, args.k)
    except (ArtifactError, ValueError, FileNotFoundError) as e:
        print(f"pinsage recommend: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(out))
    else:
        q = out["query"]
        print(f"query: {q}")
        for r, it in enumerate(out["items"], 1):
            print(f"{r:3d}. {it['score']:.4f}  {it['id']}  {it['title'] or ''}")
    return 0
