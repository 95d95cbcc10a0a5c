"""Item -> similar items, user -> items, from ``pinsage predict`` artifacts (:class:`Recommender`;
the ``pinsage recommend`` command is :mod:`app.recommend_command`).

A user's query vector comes from :meth:`Recommender.user_vector` (the model's user encoder, the
representation it trained and was evaluated with, with the user's own vector ``e_u`` for a user
of the log when the model has a user-id table); items they have already engaged with are never
recommended.

:class:`Recommender` is also what ``pinsage serve`` (``app/serve.py``) loads; it can grow
(:meth:`Recommender.add_item`, items embedded inductively after training).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np

from . import artifact_format as fmt
from .artifact_format import ArtifactError
from .rows import Rows  # noqa: F401 - also imported from here


class UnknownIdError(ArtifactError):
    """An item or user id that is not in the catalogue."""


def user_vector(history_emb: np.ndarray, encoder: Optional[np.ndarray] = None,
                user_row: Optional[np.ndarray] = None) -> np.ndarray:
    """The query vector ``[d]`` of a user from the embeddings of their history items ``[h, d]``:
    the model's user representation (:class:`models.user_encoder.UserEncoder`, whose learned
    ``[d, d]`` layer predict stores in users.npz as ``encoder``; ``None``: the identity, i.e. the
    normalised mean), the same code the evaluator scores, never a copy.

    ``user_row``: the user's own vector ``e_u [d]`` (its row of the user-id table of a model
    trained with ``model.user_id_embedding``, users.npz's
    :data:`app.artifact_format.USER_ID_TABLE`), added as the encoder adds it; ``None`` (a model
    without the table, or a user not in the log, who has no row): the history alone."""
    import torch

    from models.user_encoder import UserEncoder

    d = history_emb.shape[1]
    enc = UserEncoder(d, learned=encoder is not None, num_users=0 if user_row is None else 1)
    with torch.no_grad():
        if encoder is not None:
            enc.lin.weight.copy_(torch.from_numpy(np.asarray(encoder, dtype=np.float32)))
        if user_row is not None:
            enc.user_emb.weight.copy_(torch.from_numpy(np.asarray(user_row, dtype=np.float32).reshape(1, d)))
    pooled = torch.from_numpy(np.ascontiguousarray(history_emb, dtype=np.float32)).sum(0, keepdim=True)
    users = None if user_row is None else torch.zeros(1, dtype=torch.long)
    with torch.no_grad():
        return enc(pooled, users)[0].numpy().astype(np.float32)


class Recommender:
    """Loaded artifacts: embeddings, FAISS index, item table and user histories."""

    def __init__(self, folder: str):
        from .retrieval import load_index

        self.folder = Path(folder)
        self.manifest = fmt.read_manifest(self.folder)
        fmt.verify_checksums(self.folder, self.manifest)
        path = self.folder / fmt.EMBEDDINGS
        try:
            self.emb = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise ArtifactError(f"{path} cannot be read ({e}): re-run `pinsage predict`") from e
        n, d = self.manifest["count"], self.manifest["dims"]
        if self.emb.ndim != 2 or self.emb.shape != (n, d):
            raise ArtifactError(f"{fmt.EMBEDDINGS} has shape {self.emb.shape}, {fmt.MANIFEST} says ({n}, {d}): "
                                "the artifacts are truncated or mixed; re-run `pinsage predict`")
        self.vectors = Rows(self.emb)
        self.index = load_index(self.folder / fmt.INDEX, expected_dim=d, expected_count=n)
        items = fmt.read_items(self.folder)
        self.item_ids, self.titles = items.ids, items.titles
        # optional columns (predict writes them when the dataset has them): the trained catalogue's
        # categories ("a|b") and years, None when absent (shown by the explorer's item cards)
        self.categories, self.years = items.categories, items.years
        if len(self.item_ids) != n:
            raise ArtifactError(f"{fmt.ITEMS} has {len(self.item_ids)} rows, {fmt.EMBEDDINGS} {n}: "
                                "re-run `pinsage predict`")
        self.item_index = {raw: i for i, raw in enumerate(self.item_ids)}
        self.neighbours = self._neighbour_table()
        self._users = None  # users.npz is read on the first --user query

    def _neighbour_table(self) -> Optional[np.ndarray]:
        """``neighbours.npy`` (``int32 [count, K]``, :func:`app.retrieval.neighbour_table`): every
        catalogue item's top-K from the index, written by predict; ``None`` for folders without it."""
        info = self.manifest.get("neighbours")
        if not info:
            return None
        path = self.folder / info.get("file", fmt.NEIGHBOURS)
        try:
            table = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise ArtifactError(f"{path} cannot be read ({e}): re-run `pinsage predict`") from e
        if table.ndim != 2 or table.shape != (self.manifest["count"], info.get("k")) or table.dtype != np.int32:
            raise ArtifactError(f"{path} has shape {table.shape} ({table.dtype}), manifest.json says "
                                f"({self.manifest['count']}, {info.get('k')}) int32: re-run `pinsage predict`")
        return table

    def _load_users(self):
        if self._users is None:
            path = self.folder / fmt.USERS
            try:
                with np.load(path, allow_pickle=False) as users:
                    ids, ptr, items = users["user_ids"].tolist(), users["ptr"], users["items"]
                    # the model's user encoder (models/user_encoder.py): p_u = normalise(W_u sum)
                    encoder = users["encoder"] if "encoder" in users.files else None
                    # its per-user vectors e_u (model.user_id_embedding; older artifacts: none)
                    table = users[fmt.USER_ID_TABLE] if fmt.USER_ID_TABLE in users.files else None
            except Exception as e:  # zipfile/numpy raise many types for a truncated archive
                raise ArtifactError(f"{path} cannot be read ({type(e).__name__}: {e}): the file is truncated or "
                                    "corrupt; re-run `pinsage predict`") from None
            if len(ptr) != len(ids) + 1 or (len(items) and (items.min() < 0 or items.max() >= self.num_items)):
                raise ArtifactError(f"{path} does not match the catalogue: re-run `pinsage predict`")
            if table is not None and table.shape != (len(ids), self.emb.shape[1]):
                raise ArtifactError(f"{path}'s {fmt.USER_ID_TABLE} has shape {table.shape}: expected "
                                    f"({len(ids)}, {self.emb.shape[1]}) (users x dims); re-run `pinsage predict`")
            self._users = ids, {raw: u for u, raw in enumerate(ids)}, ptr, items
            self.user_encoder, self.user_id_table = encoder, table
        return self._users

    @property
    def user_ids(self) -> list:
        return self._load_users()[0]

    @property
    def user_index(self) -> dict:
        return self._load_users()[1]

    @property
    def user_ptr(self) -> np.ndarray:
        return self._load_users()[2]

    @property
    def user_items(self) -> np.ndarray:
        return self._load_users()[3]

    def user_vector(self, history, user: Optional[int] = None) -> np.ndarray:
        """The user representation the model trained and was evaluated with (its UserEncoder) from
        the item indices ``history``; ``user``: the index of a user of users.npz, whose own vector
        ``e_u`` is added when the model has a user-id table (``None``: a user not in the log, who
        has none: the history alone)."""
        self._load_users()
        row = None if user is None or self.user_id_table is None else self.user_id_table[user]
        return user_vector(self.vectors.rows(history), self.user_encoder, row)

    @property
    def num_items(self) -> int:
        return len(self.vectors)

    def add_item(self, raw_id: str, title: Optional[str], z: np.ndarray) -> int:
        """Append an item (its embedding ``z [d]``) to the catalogue and the live index; return its index."""
        if raw_id in self.item_index:
            raise ArtifactError(f"item {raw_id!r} already exists")
        z = np.ascontiguousarray(np.asarray(z, dtype=np.float32).reshape(1, -1))
        self.vectors.append(z)
        self.index.add(z)
        i = len(self.item_ids)
        self.item_ids.append(raw_id)
        self.titles.append(title or "")
        self.item_index[raw_id] = i
        return i

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
            raise UnknownIdError(f"item {raw_id!r} is not in the catalogue ({self.num_items} items; ids as in items.csv)")
        i = self.item_index[raw_id]
        self._check_k(k, 1)
        q = self.vectors.rows([i])
        found = self._from_table(i, q[0], k)
        if found is None:
            s, ids = search(self.index, q, k, exclude=[[i]])
            found = s[0], ids[0]
        return self._answer({"item": raw_id, "title": self.titles[i] or None}, *found)

    def _from_table(self, i: int, q: np.ndarray, k: int):
        """``(scores, ids)`` of catalogue item ``i``'s top-``k`` from the precomputed table, merged
        with an exact scan of the items inserted since (so they appear wherever they rank), or
        ``None`` (no table, an inserted query, ``k`` beyond the table, unfilled slots): then the
        caller searches the index."""
        table = self.neighbours
        if table is None or i >= table.shape[0] or k > table.shape[1]:
            return None
        ids = table[i, :k].astype(np.int64)
        if ids[-1] < 0:
            return None
        scores = self.emb[ids] @ q
        n_new = self.vectors.n_extra
        if n_new:
            new_scores = self.vectors.extra[:n_new] @ q
            m = min(k, n_new)
            top = np.argpartition(-new_scores, m - 1)[:m] if n_new > m else np.arange(n_new)
            ids = np.concatenate([ids, top + table.shape[0]])
            scores = np.concatenate([scores, new_scores[top]])
            order = np.argsort(-scores, kind="stable")[:k]
            ids, scores = ids[order], scores[order]
        return scores, ids

    def for_user(self, raw_id: str, k: int = 10) -> dict:
        """Items for a user of the log: their whole logged history (excluded) and, with a user-id
        table, their own vector ``e_u`` (:meth:`user_vector`)."""
        user_ids, user_index, user_ptr, user_items = self._load_users()
        if raw_id not in user_index:
            raise UnknownIdError(f"user {raw_id!r} is unknown ({len(user_ids)} users in users.npz)")
        u = user_index[raw_id]
        seen = user_items[user_ptr[u]:user_ptr[u + 1]]
        return self._for_history(seen, k, {"user": raw_id, "history": len(seen)}, user=u)

    def for_history(self, raw_ids: List[str], k: int = 10) -> dict:
        """Items for a user the model never saw, from the raw ids of their history (excluded); such
        a user has no row in the user-id table, so their vector is the history's alone."""
        if not raw_ids:
            raise ArtifactError("history is empty: give at least one item id")
        unknown = [r for r in raw_ids if r not in self.item_index]
        if unknown:
            raise ArtifactError(f"history holds {len(unknown)} unknown item id(s), e.g. {unknown[0]!r} "
                                f"(catalogue of {self.num_items} items)")
        seen = np.array([self.item_index[r] for r in raw_ids], dtype=np.int64)
        return self._for_history(seen, k, {"history": len(seen)})

    def _for_history(self, seen: np.ndarray, k: int, query: dict, user: Optional[int] = None) -> dict:
        from .retrieval import search

        self._check_k(k, len(np.unique(seen)))
        q = self.user_vector(seen, user)
        s, ids = search(self.index, q[None, :], k, exclude=[seen])
        return self._answer(query, s[0], ids[0])
