"""Inductive embeddings for items that appear after training (no retraining).

PinSage is inductive (Ying et al., KDD 2018; Hamilton et al., NeurIPS 2017): an item's embedding
is a function of its content features and of its importance neighbourhood, so a new item gets one
from its content and its first engagements.  ``pinsage predict`` stores what that needs beside the
embeddings (:func:`write_inductive_files`):

* ``model.pt``: the network's constructor arguments and weights (``torch.load(weights_only=True)``);
* ``layer_<k>.npy``: ``float32 [I, hidden]``, the layer-k vectors ``h^(k)`` of every item for
  ``k = 0 .. K-1`` (``h^(0)`` = encoded features), from the same layer-wise inference that made
  ``embeddings.npy``;
* ``walk_graph.npz``: the training graph the neighbourhoods were sampled on (both CSRs) and
  ``neighbourhoods.npz``, the neighbourhood of every item used at predict;
* ``features.json``: how raw content becomes the model's input row (column names, the
  standardisation mean/std of the non-binary columns, category names, decades).

A new item ``n`` (:class:`InductiveEmbedder.embed`):

1. **features** ``x_n``: the given ``features`` row (width ``F`` checked), or built from ``title``
   (MiniLM text of ``"title. genres"``), ``categories`` (multi-hot), ``year`` (decade one-hot) and
   ``log_degree`` (number of engaged users), standardised with the training statistics;
2. **neighbourhood**: ``num_walks`` random walks with restarts from ``n`` over the training graph
   extended by ``n``'s engagements (a hop from ``n`` goes to one of ``engaged_users`` or to the
   "session" of ``co_engaged_items``, and on to one of that user's items, ``n`` itself included),
   run by the numba kernels of :mod:`datamodules.walks` and weighted like training when the folder
   stores the interaction weights; the top-T items by visit count (ties: smaller index) with
   L1-normalised weights (:mod:`app.new_item_walks`).  The walk settings (T = ``num_neighbors``)
   are the DataModule's (:class:`datamodules.walk_settings.WalkSettings`, the manifest's
   ``inductive.walks``);
3. **layers**: ``h^(0)_n = encode(x_n)``; ``h^(k+1)_n = layer_k(h^(k)[N(n)], h^(k)_n)`` with the
   *stored* ``h^(k)`` of its neighbours; ``z_n = head(h^(K)_n)``.  Existing items keep their
   vectors.  The new item's own ``h^(0..K-1)`` are kept, so later new items can have it as a
   neighbour.

With an item's own stored neighbourhood and features, this path reproduces its ``embeddings.npy``
row (tested), so the only approximation for a new item is that the graph around it is not
re-embedded.  Models with an ID embedding have no ID row for a new item: the ID term is left out.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from datamodules import chunks
from datamodules.walk_settings import WalkSettings
from models.pinsage import PinSage

from . import artifact_format as fmt
from .artifact_format import INDUCTIVE_FILES
from .new_item_walks import NewItemWalks
from .rows import Rows

__all__ = ["NewItem", "NewItemError", "FeatureEncoder", "InductiveEmbedder", "write_inductive_files",
           "INDUCTIVE_FILES"]

MODEL_ARGS = ("in_channels", "hidden_channels", "out_channels", "num_layers", "num_items", "id_embedding",
              "conv", "importance_pooling", "dropout", "skip")
TEXT_MODEL = "all-MiniLM-L6-v2"


class NewItemError(ValueError):
    """A new item that cannot be embedded; ``status`` is the HTTP status it maps to."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass
class NewItem:
    """A new item: raw id, optional content, optional engagements (raw ids)."""

    id: str
    title: Optional[str] = None
    categories: Optional[List[str]] = None
    year: Optional[int] = None
    features: Optional[List[float]] = None
    engaged_users: List[str] = field(default_factory=list)
    co_engaged_items: List[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict) -> "NewItem":
        def ids(v):
            return [str(x) for x in (v or [])]

        return cls(id=str(d["id"]), title=(d.get("title") or None), categories=d.get("categories") or None,
                   year=d.get("year"), features=d.get("features"), engaged_users=ids(d.get("engaged_users")),
                   co_engaged_items=ids(d.get("co_engaged_items")))

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v not in (None, [])}

    def has_content(self) -> bool:
        return bool(self.title) or bool(self.categories) or self.year is not None or self.features is not None


# ----------------------------------------------------------------------------------------------
# writing (called by app/artifacts.py; file names: app/artifact_format.py)
# ----------------------------------------------------------------------------------------------
def _raw_columns(ds, names: List[str], cache_dir) -> Dict[str, np.ndarray]:
    """The raw (unstandardised) value of the non-binary built-in columns for every item."""
    from datamodules.features import embed_texts, item_texts, log_degree_column

    out: Dict[str, np.ndarray] = {}
    if "log_degree" in names:
        out["log_degree"] = log_degree_column(ds.train_graph.item_degree())[:, None]
    if any(n.startswith("text:") for n in names):
        texts = item_texts(ds.interactions)
        emb = embed_texts(texts, model_name=TEXT_MODEL, cache_dir=cache_dir).astype(np.float64)
        nonempty = np.array([bool(t) for t in texts], dtype=bool)
        out["text"] = np.where(nonempty[:, None], emb, 0.0)
    return out


def feature_spec(ds, cache_dir=None) -> dict:
    """``features.json``: how a new item's raw content becomes a model input row.

    The standardisation statistics are recomputed from the raw columns of the training items and
    checked against ``ds.item_features``; when they do not reproduce it (e.g. ``external``
    columns) ``"buildable": false`` and new items must come with a ``features`` row."""
    names = list(ds.feature_names)
    x = ds.item_features  # as stored (mapped): only the checked columns are read, as float64, below
    spec = {"names": names, "width": len(names), "text_model": TEXT_MODEL, "buildable": True,
            "mean": [0.0] * len(names), "std": [1.0] * len(names), "binary": [True] * len(names),
            "category_names": [n[len("category:"):] for n in names if n.startswith("category:")],
            "decades": [int(n[len("year:"):-1]) for n in names if n.startswith("year:") and n != "year:unknown"],
            "reason": ""}
    if any(n.startswith("external:") for n in names):
        spec.update(buildable=False, reason="the model's input has external feature columns")
        return spec
    try:
        raw = _raw_columns(ds, names, cache_dir)
    except ImportError as e:
        spec.update(buildable=False, reason=str(e))
        return spec
    cols = {"log_degree": [names.index("log_degree")] if "log_degree" in names else [],
            "text": [i for i, n in enumerate(names) if n.startswith("text:")]}
    for key, idx in cols.items():
        if not idx:
            continue
        r = raw[key]
        binary = ((r == 0) | (r == 1)).all(axis=0)
        mean, std = r.mean(axis=0), r.std(axis=0)
        for j, c in enumerate(idx):
            if binary[j]:
                continue
            const = std[j] < 1e-12
            spec["binary"][c] = False
            spec["mean"][c] = float(mean[j])
            spec["std"][c] = 0.0 if const else float(std[j])
    enc = FeatureEncoder(spec)
    rebuilt = enc.standardise(np.concatenate([raw.get(k, np.zeros((x.shape[0], 0))) for k in ("log_degree", "text")],
                                             axis=1), [c for k in ("log_degree", "text") for c in cols[k]])
    check = [c for k in ("log_degree", "text") for c in cols[k]]
    if check and not np.allclose(rebuilt, np.asarray(x[:, check], dtype=np.float64), atol=1e-4):
        spec.update(buildable=False, reason="the stored features could not be rebuilt from the item content")
    return spec


def write_inductive_files(folder: Path, model: PinSage, datamodule, nbr, layers: Sequence[torch.Tensor]) -> dict:
    """Write the inductive files into the (temporary) artifact ``folder``; return the manifest block.
    ``layers[k] is None``: ``layer_k.npy`` is already there (streamed by the layer-wise pass)."""
    folder = Path(folder)
    ds = datamodule.dataset
    hparams = {k: getattr(model, k) for k in MODEL_ARGS if hasattr(model, k)}
    torch.save({"hparams": hparams, "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}},
               folder / fmt.MODEL)
    for k, h in enumerate(layers):  # None: layer_k.npy is already in folder (streamed there)
        if h is not None:
            np.save(folder / fmt.layer_file(k), h.detach().cpu().numpy().astype(np.float32))
    sampler = datamodule.neighbour_sampler()
    item_ptr, item_users, user_ptr, user_items = getattr(sampler, "arrays", None) or (
        ds.train_graph.item_ptr, ds.train_graph.item_users, ds.train_graph.user_ptr, ds.train_graph.user_items)
    settings = datamodule.walk_settings()
    np.savez(folder / fmt.WALK_GRAPH, item_ptr=item_ptr, item_users=item_users, user_ptr=user_ptr,
             user_items=user_items, **_walk_weights(ds.train_graph, settings, user_items))
    np.savez(folder / fmt.NEIGHBOURHOODS, ptr=nbr[0], items=nbr[1], weights=nbr[2])
    g = ds.train_graph  # read once: the cache's pages, not this process's (the sampler's may be views)
    chunks.release(item_ptr, item_users, user_ptr, user_items, g.item_ptr, g.item_users, g.user_ptr, g.user_items)
    spec = feature_spec(ds, getattr(datamodule, "cache_dir", None) or _default_cache_dir())
    (folder / fmt.FEATURES).write_text(json.dumps(spec))
    walks = settings.to_dict()
    return {"layers": [fmt.layer_file(k) for k in range(len(layers))], "hidden": int(model.hidden_channels),
            "walks": walks, "features_buildable": bool(spec["buildable"])}


def _walk_weights(graph, settings: WalkSettings, user_items) -> dict:
    """``item_weights`` / ``user_weights`` (aligned with ``item_users`` / ``user_items``) when the
    DataModule walks by interaction weight and the weights are not all equal; else nothing."""
    w = getattr(graph, "weights", None)
    if not settings.weighted or w is None or len(w) != len(user_items) or len(w) == 0 or np.all(w == w[0]):
        return {}
    w = np.asarray(w, dtype=np.float64)
    return {"user_weights": w, "item_weights": w[np.asarray(graph.item_to_user_edge, dtype=np.int64)]}


def _default_cache_dir():
    from datamodules.datasets import default_cache_dir

    return default_cache_dir()


# ----------------------------------------------------------------------------------------------
# features of a new item
# ----------------------------------------------------------------------------------------------
class FeatureEncoder:
    """Raw content -> one model input row, with the training statistics of ``features.json``."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.names: List[str] = list(spec["names"])
        self.width = int(spec["width"])
        self.mean = np.asarray(spec["mean"], dtype=np.float64)
        self.std = np.asarray(spec["std"], dtype=np.float64)
        self.binary = np.asarray(spec["binary"], dtype=bool)
        self.category_names: List[str] = list(spec["category_names"])
        self.decades: List[int] = list(spec["decades"])
        self._text_model = None

    def standardise(self, raw: np.ndarray, cols: Sequence[int]) -> np.ndarray:
        cols = list(cols)
        mean, std = self.mean[cols], self.std[cols]
        out = np.where(std > 0, (raw - mean) / np.where(std > 0, std, 1.0), 0.0)
        return np.where(self.binary[cols], raw, out)

    def _text(self, texts: List[str]) -> np.ndarray:
        if self._text_model is None:
            from datamodules.features import _load_text_model

            self._text_model = _load_text_model(self.spec.get("text_model", TEXT_MODEL))
        return self._text_model.encode(texts, batch_size=32, convert_to_numpy=True, show_progress_bar=False,
                                       normalize_embeddings=True).astype(np.float64)

    def encode(self, items: Sequence[NewItem], degrees: Sequence[int]) -> np.ndarray:
        """``float32 [B, F]`` rows; a given ``features`` row is used as is (width checked)."""
        out = np.zeros((len(items), self.width), dtype=np.float64)
        build = []
        for b, it in enumerate(items):
            if it.features is not None:
                f = np.asarray(it.features, dtype=np.float64).reshape(-1)
                if f.shape[0] != self.width:
                    raise NewItemError(f"item {it.id!r}: features has {f.shape[0]} values, the model expects "
                                       f"{self.width} (one per input column: {_summary(self.names)})")
                if not np.isfinite(f).all():
                    raise NewItemError(f"item {it.id!r}: features holds NaN or infinite values")
                out[b] = f
            else:
                build.append(b)
        if not build:
            return out.astype(np.float32)
        if not self.spec.get("buildable", True):
            raise NewItemError(f"item {items[build[0]].id!r}: this model cannot build features from title/"
                               f"categories ({self.spec.get('reason')}); give a 'features' row of width {self.width}")
        from datamodules.features import item_texts
        from datamodules.interactions import ItemTable

        cat_col = {n: i for i, n in enumerate(self.names) if n.startswith("category:")}
        year_col = {n: i for i, n in enumerate(self.names) if n.startswith("year:")}
        text_cols = [i for i, n in enumerate(self.names) if n.startswith("text:")]
        texts = []
        for b in build:
            it = items[b]
            cats = np.zeros(len(self.category_names), dtype=np.uint8)
            for c in it.categories or []:
                if f"category:{c}" not in cat_col:
                    raise NewItemError(f"item {it.id!r}: category {c!r} is unknown; valid categories are "
                                       f"{self.category_names}")
                out[b, cat_col[f"category:{c}"]] = 1.0
                cats[self.category_names.index(c)] = 1
            if year_col:
                dec = None if it.year is None else int(it.year) // 10 * 10
                name = f"year:{dec}s" if dec in self.decades else "year:unknown"
                out[b, year_col[name]] = 1.0
            if "log_degree" in self.names:
                c = self.names.index("log_degree")
                # no engagement yet: the neutral (mean) degree, as training gave its new items
                raw = math.log1p(degrees[b]) if degrees[b] > 0 else self.mean[c]
                out[b, c] = self.standardise(np.array([[raw]]), [c])[0, 0]
            table = ItemTable(ids=np.array([it.id]), titles=np.array([it.title or ""], dtype=object),
                              category_names=self.category_names, categories=cats[None, :])
            texts.append(item_texts(SimpleNamespace(item_table=table, num_items=1))[0])
        if text_cols:
            todo = [j for j, t in enumerate(texts) if t]
            if todo:
                emb = self._text([texts[j] for j in todo])
                for j, e in zip(todo, emb):
                    out[build[j], text_cols] = self.standardise(e[None, :], text_cols)[0]
            for j, t in enumerate(texts):
                if not t:
                    out[build[j], text_cols] = self.standardise(np.zeros((1, len(text_cols))), text_cols)[0]
        return out.astype(np.float32)


def _summary(names: List[str]) -> str:
    groups: Dict[str, int] = {}
    for n in names:
        g = n.split(":", 1)[0]
        groups[g] = groups.get(g, 0) + 1
    return ", ".join(f"{g} x{c}" for g, c in groups.items()) or "none"


# ----------------------------------------------------------------------------------------------
# the inductive embedder
# ----------------------------------------------------------------------------------------------
class InductiveEmbedder:
    """Loads the inductive files of an artifact folder; embeds new items (see the module docstring).

    ``item_index`` maps raw item ids to dense indices (existing items ``0..I-1``, inserted items
    after them, in insertion order, kept by :meth:`add`); ``user_index`` maps raw user ids of the
    training graph to its dense users.
    """

    def __init__(self, folder, manifest: dict, user_index: Dict[str, int]):
        folder = Path(folder)
        info = manifest.get("inductive")
        missing = [f for f in INDUCTIVE_FILES if not (folder / f).is_file()]
        if not info or missing:
            raise FileNotFoundError(f"{folder} has no inductive files ({', '.join(missing) or 'manifest block'} "
                                    "missing): re-run `pinsage predict` with this version to add new items")
        ckpt = torch.load(folder / fmt.MODEL, map_location="cpu", weights_only=True)
        self.model = PinSage(**ckpt["hparams"])
        self.model.load_state_dict(ckpt["state_dict"])
        self.model.eval()
        self.layers = [Rows(np.load(folder / name, mmap_mode="r", allow_pickle=False)) for name in info["layers"]]
        n = manifest["count"]
        for name, t in zip(info["layers"], self.layers):
            if t.base.shape != (n, self.model.hidden_channels):
                raise FileNotFoundError(f"{folder / name} has shape {t.base.shape}, expected ({n}, "
                                        f"{self.model.hidden_channels}): re-run `pinsage predict`")
        g = np.load(folder / fmt.WALK_GRAPH, allow_pickle=False)
        graph = [g[k] for k in ("item_ptr", "item_users", "user_ptr", "user_items")]
        weights = {k: g[k] for k in ("item_weights", "user_weights") if k in g.files}
        nb = np.load(folder / fmt.NEIGHBOURHOODS, allow_pickle=False)
        self.nbr = (nb["ptr"], nb["items"], nb["weights"])
        self.walks = WalkSettings.from_dict(info["walks"])
        self.walker = NewItemWalks(*graph, self.walks, **weights)
        self.encoder = FeatureEncoder(json.loads((folder / fmt.FEATURES).read_text()))
        self.num_base = n
        self.user_index = user_index
        self.in_channels = self.model.in_channels

    @property
    def num_items(self) -> int:
        return len(self.layers[0])

    # the stored walk graph (CSR both ways), held by the walker
    item_ptr = property(lambda self: self.walker.item_ptr)
    item_users = property(lambda self: self.walker.item_users)
    user_ptr = property(lambda self: self.walker.user_ptr)
    user_items = property(lambda self: self.walker.user_items)

    # -- neighbourhood ---------------------------------------------------------------------------
    def neighbourhood(self, users: np.ndarray, co_items: np.ndarray, key: int) -> Tuple[np.ndarray, np.ndarray]:
        """Top-T items (and weights) by visit count of walks from a new item engaged by ``users``
        (dense training users) and co-engaged with ``co_items`` (dense items):
        :class:`app.new_item_walks.NewItemWalks`, the numba walks of training, keyed by ``key``."""
        return self.walker.neighbourhood(users, co_items, key, self.walks)

    # -- layers ----------------------------------------------------------------------------------
    @torch.no_grad()
    def layers_from(self, x: np.ndarray, nbr_items: List[np.ndarray], nbr_weights: List[np.ndarray]):
        """``(z [B, out], [h^(0) .. h^(K-1)] each [B, hidden])`` from input rows and neighbourhoods
        (dense ids into the stored + inserted layer tables)."""
        model = self.model
        xt = torch.from_numpy(np.asarray(x, dtype=np.float32))
        if model.lin_in is not None:
            h = torch.relu(model.lin_in(xt))
        else:
            h = torch.zeros(xt.shape[0], model.hidden_channels)
        deg = np.array([a.shape[0] for a in nbr_items], dtype=np.int64)
        src = np.concatenate(nbr_items) if nbr_items else np.zeros(0, np.int64)
        w = torch.from_numpy(np.concatenate(nbr_weights).astype(np.float32) if nbr_weights else np.zeros(0, np.float32))
        edge_index = torch.stack([torch.arange(src.shape[0]), torch.from_numpy(np.repeat(np.arange(deg.shape[0]), deg))])
        h0 = h
        own = []
        for k in range(model.num_layers):
            own.append(h.numpy().copy())
            h_src = torch.from_numpy(self.layers[k].rows(src)) if src.size else torch.zeros(0, model.hidden_channels)
            h = model.layer(k, h_src, h, edge_index, w)
        h0 = torch.from_numpy(own[0]) if model.skip else None
        return model.head(h, h0).numpy().astype(np.float32), own

    def existing(self, dense_id: int, x_row: np.ndarray) -> np.ndarray:
        """Re-embed a stored item from its stored neighbourhood (a consistency check of this path)."""
        ptr, items, weights = self.nbr
        s, e = int(ptr[dense_id]), int(ptr[dense_id + 1])
        return self.layers_from(x_row[None, :], [items[s:e]], [weights[s:e]])[0][0]

    def embed(self, items: Sequence[NewItem], item_index: Callable[[str], Optional[int]]):
        """Embed ``items`` (validated here, raising :class:`NewItemError`): returns
        ``(z [B, out], layers [K x [B, hidden]], info list[dict])``."""
        xs_deg, nbr_items, nbr_w, info = [], [], [], []
        for it in items:
            if not it.has_content() and not it.engaged_users and not it.co_engaged_items:
                raise NewItemError(f"item {it.id!r} has neither content (title, categories, year, features) nor "
                                   "engagements (engaged_users, co_engaged_items): nothing to embed it from")
            users = sorted({self.user_index[u] for u in it.engaged_users if u in self.user_index})
            unknown_users = len(set(it.engaged_users)) - len(users)
            co = []
            for raw in dict.fromkeys(it.co_engaged_items):
                j = item_index(raw)
                if j is None:
                    raise NewItemError(f"item {it.id!r}: co_engaged_items holds {raw!r}, which is not in the catalogue")
                co.append(j)
            key = zlib.crc32(it.id.encode("utf-8"))
            nb_items, nb_w = self.neighbourhood(np.asarray(users, np.int64), np.asarray(co, np.int64), key)
            nbr_items.append(nb_items)
            nbr_w.append(nb_w)
            xs_deg.append(len(set(it.engaged_users)))
            info.append({"neighbours": int(nb_items.shape[0]), "unknown_users": int(unknown_users)})
        x = self.encoder.encode(items, xs_deg)
        z, layers = self.layers_from(x, nbr_items, nbr_w)
        return z, layers, info

    def add(self, layers: Sequence[np.ndarray]) -> None:
        """Keep inserted items' layer vectors (dense ids continue after the stored ones)."""
        for t, h in zip(self.layers, layers):
            t.append(h)
