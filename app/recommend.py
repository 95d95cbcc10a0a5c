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

from .artifacts import read_title


class ArtifactError(ValueError):
    """Missing, truncated or inconsistent artifacts, or an unknown id."""


class Recommender:
    """Loaded artifacts: embeddings, FAISS index, item table and user histories."""

    def __init__(self, folder: str):
        from .retrieval import load_index

        self.folder = Path(folder)
        self.manifest = self._manifest()
        self._verify_files()
        try:
            self.emb = np.load(self.folder / "embeddings.npy", allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise ArtifactError(f"{self.folder / 'embeddings.npy'} cannot be read ({e}): re-run `pinsage predict`") from e
        n, d = self.manifest["count"], self.manifest["dims"]
        if self.emb.ndim != 2 or self.emb.shape != (n, d):
            raise ArtifactError(f"embeddings.npy has shape {self.emb.shape}, manifest.json says ({n}, {d}): "
                                "the artifacts are truncated or mixed; re-run `pinsage predict`")
        self.index = load_index(self.folder / "index.faiss", expected_dim=d, expected_count=n)
        try:
            with open(self.folder / "items.csv", newline="") as f:
                rows = list(csv.DictReader(f))
            self.item_ids = [r["id"] for r in rows]
            self.titles = [read_title(r["title"] or "") for r in rows]
        except (OSError, KeyError, UnicodeDecodeError, csv.Error) as e:
            raise ArtifactError(f"{self.folder / 'items.csv'} cannot be read ({type(e).__name__}: {e}): "
                                "re-run `pinsage predict`") from None
        if len(rows) != n:
            raise ArtifactError(f"items.csv has {len(rows)} rows, embeddings.npy {n}: re-run `pinsage predict`")
        self.item_index = {raw: i for i, raw in enumerate(self.item_ids)}
        self._users = None  # users.npz is read on the first --user query

    def _manifest(self) -> dict:
        path = self.folder / "manifest.json"
        if not path.is_file():
            raise ArtifactError(f"--artifacts {str(self.folder)!r} has no manifest.json: run `pinsage predict` first")
        try:
            man = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ArtifactError(f"{path} is not valid JSON ({e}): the artifacts are corrupt; re-run `pinsage predict`") from None
        missing = [k for k in ("count", "dims") if not isinstance(man, dict) or not isinstance(man.get(k), int)]
        if missing:
            raise ArtifactError(f"{path} has no integer {' / '.join(repr(k) for k in missing)}: the artifacts are "
                                "corrupt or not from `pinsage predict`; re-run it")
        return man

    def _verify_files(self) -> None:
        """Sizes and SHA-256 checksums recorded by predict (manifests without them: skipped)."""
        from .artifacts import file_digest

        for name, want in (self.manifest.get("checksums") or {}).items():
            path = self.folder / name
            if not path.is_file():
                raise ArtifactError(f"{path} is missing (listed in manifest.json): re-run `pinsage predict`")
            size = path.stat().st_size
            if size != want.get("size"):
                raise ArtifactError(f"{path} has {size} bytes, manifest.json says {want.get('size')}: the file is "
                                    "truncated or replaced; re-run `pinsage predict`")
            if file_digest(path)["sha256"] != want.get("sha256"):
                raise ArtifactError(f"{path} fails its SHA-256 check (manifest.json): the file is corrupt; "
                                    "re-run `pinsage predict`")

    def _load_users(self):
        if self._users is None:
            path = self.folder / "users.npz"
            try:
                with np.load(path, allow_pickle=False) as users:
                    ids, ptr, items = users["user_ids"].tolist(), users["ptr"], users["items"]
                    # the model's user encoder (models/user_encoder.py): p_u = normalise(W_u sum)
                    encoder = users["encoder"] if "encoder" in users.files else None
            except Exception as e:  # zipfile/numpy raise many types for a truncated archive
                raise ArtifactError(f"{path} cannot be read ({type(e).__name__}: {e}): the file is truncated or "
                                    "corrupt; re-run `pinsage predict`") from None
            if len(ptr) != len(ids) + 1 or (len(items) and (items.min() < 0 or items.max() >= self.num_items)):
                raise ArtifactError(f"{path} does not match the catalogue: re-run `pinsage predict`")
            self._users = ids, {raw: u for u, raw in enumerate(ids)}, ptr, items
            d = self.emb.shape[1]
            self.user_encoder = np.eye(d, dtype=np.float32) if encoder is None else encoder
        return self._users

    def user_vector(self, history) -> np.ndarray:
        """The user representation the model trained and was evaluated with (see UserEncoder)."""
        self._load_users()
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

        user_ids, user_index, user_ptr, user_items = self._load_users()
        if raw_id not in user_index:
            raise ArtifactError(f"--user {raw_id!r} is unknown ({len(user_ids)} users in users.npz)")
        u = user_index[raw_id]
        seen = user_items[user_ptr[u]:user_ptr[u + 1]]
        self._check_k(k, len(np.unique(seen)))
        q = self.user_vector(seen)
        s, ids = search(self.index, q[None, :].astype(np.float32), k, exclude=[seen])
        return self._answer({"user": raw_id, "history": len(seen)}, s[0], ids[0])


def _one_line(text: str) -> str:
    """Control characters (a newline in a title) escaped, so each answer stays on one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


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
        for r, it in enumerate(out["items"], 1):  # one line per item, whatever the title holds
            print(f"{r:3d}. {it['score']:.4f}  {_one_line(it['id'])}  {_one_line(it['title'] or '')}")
    return 0
