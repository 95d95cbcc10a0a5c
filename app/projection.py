"""The 2-D map of a catalogue's embeddings (``pinsage report``'s picture and the explorer's
``GET /map``): UMAP, t-SNE or PCA, saying which was used."""

from __future__ import annotations

from typing import Tuple

import numpy as np


class ProjectionError(ValueError):
    """A map method that is not valid or not installed: one line for the user."""


MAP_METHODS = ("auto", "umap", "tsne", "pca")


def project_2d(emb: np.ndarray, seed: int = 0, method: str = "auto") -> Tuple[np.ndarray, str]:
    """2-D coordinates and the method used: ``auto`` = UMAP (cosine) when umap-learn is
    installed, else t-SNE (cosine, scikit-learn), else PCA."""
    if method not in MAP_METHODS:
        raise ProjectionError(f"map method {method!r} is not valid; choose one of {list(MAP_METHODS)}")
    x = np.asarray(emb, dtype=np.float32)
    if x.shape[0] < 5 or method == "pca":
        return _pca(x), "PCA"
    if method == "umap":
        try:
            import umap  # noqa: F401
        except ImportError:
            raise ProjectionError("--map umap needs umap-learn: pip install umap-learn") from None
    try:
        if method == "tsne":
            raise ImportError
        import warnings

        import umap

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            red = umap.UMAP(n_components=2, n_neighbors=min(15, x.shape[0] - 1), min_dist=0.1, metric="cosine",
                            random_state=seed, n_jobs=1)
            return red.fit_transform(x), "UMAP"
    except ImportError:
        pass
    try:
        from sklearn.manifold import TSNE

        perp = float(min(30.0, max(2.0, (x.shape[0] - 1) / 4)))
        return TSNE(n_components=2, perplexity=perp, init="pca", metric="cosine", random_state=seed).fit_transform(x), \
            "t-SNE"
    except ImportError:
        return _pca(x), "PCA"


def _pca(x: np.ndarray) -> np.ndarray:
    xc = x - x.mean(0, keepdims=True)
    if xc.shape[1] < 2:
        return np.pad(xc, ((0, 0), (0, 2 - xc.shape[1])))
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    return xc @ vt[:2].T
