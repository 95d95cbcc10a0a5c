"""The explorer: a page at ``GET /`` of ``pinsage serve`` (and a static copy in ``pinsage report``)
to look at the embeddings: search the catalogue, an item's card (its similar items next to its
importance neighbourhood), a user's card, "add an item" through the inductive path, and the 2-D map.

The page (``app/static/explorer.{html,js,css}``: no build step, no CDN) reads JSON endpoints only;
this module adds the ones it needs beside the API of :mod:`app.serve`:

* ``GET /search?q=star+wars&limit=20`` -> ``{"query", "items": [{"id", "title", "match"}], "more"}``:
  the item whose id is ``q`` first, then titles starting with ``q`` (alphabetically), then titles
  holding it (catalogue order), case-insensitive, at most ``limit``;
* ``GET /items/{id}`` -> ``{"id", "index", "title", "categories", "year", "degree", "inserted",
  "neighbourhood": [{"id", "title", "weight"}]}``: the item's importance neighbourhood (the
  random-walk neighbours the model aggregated, with their weights; for an inserted item, the walks
  of the inductive path) and its training degree (engaged users);
* ``GET /users/{id}?n=20`` -> ``{"id", "history_size", "recent": [{"id", "title"}]}``: the last
  ``n`` items of the user's log, most recent first;
* ``GET /map?n=2000&method=pca`` -> ``{"method", "total", "labels", "points": [[id, title, x, y,
  label]]}``: a seeded sample of the trained catalogue projected to 2-D with the report's projection
  (:func:`app.projection.project_2d`), coordinates in [0, 1], ``label`` = index into ``labels`` (the
  item's first category) or -1; computed once per (n, method) and kept.

Search: prefixes by binary search over the titles' sorted order; substrings by a scan of one string
of all lowercased titles (``str.find``, C speed, memory ~ the titles' size) that stops after
``limit`` matches; the index is built once at load (``benchmarks/explorer.py``: 1M titles).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from .projection import MAP_METHODS, project_2d
from .recommend import UnknownIdError

STATIC = Path(__file__).resolve().parent / "static"
PAGE_FILES = {"explorer.html": "text/html; charset=utf-8", "explorer.js": "text/javascript; charset=utf-8",
              "explorer.css": "text/css; charset=utf-8"}
SEP = "\x00"
MAX_LIMIT = 200
MAX_MAP_POINTS = 5000
MAP_CACHE = 4
# the page is served with these: it runs only its own files and sends data nowhere else
PAGE_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
                                           "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"}


def _norm(text: str) -> str:
    return text.lower().replace(SEP, " ")


class _Chunk:
    """Titles ``first .. first + n - 1`` lowercased: one string ``SEP t0 SEP t1 ... SEP`` (substring
    scans: ``str.find``), the offset of each title in it, and the titles' sorted order (prefixes:
    binary search, O(log n))."""

    def __init__(self, titles: Sequence[str], first: int):
        low = [_norm(t or "") for t in titles]
        lengths = np.fromiter((len(t) + 1 for t in low), dtype=np.int64, count=len(low))
        self.starts = np.concatenate([[1], 1 + np.cumsum(lengths)]) if len(low) else np.ones(1, np.int64)
        self.blob = SEP + SEP.join(low) + SEP
        self.order = np.asarray(sorted(range(len(low)), key=low.__getitem__), dtype=np.int64)
        self.first = first

    def __len__(self) -> int:
        return self.order.shape[0]

    def title(self, j: int) -> str:
        return self.blob[int(self.starts[j]):int(self.starts[j + 1]) - 1]

    def item_at(self, pos: int) -> int:
        """The local index of the title holding blob position ``pos``."""
        return int(np.searchsorted(self.starts, pos, side="right")) - 1

    def prefixed(self, needle: str, limit: int) -> List[int]:
        """Up to ``limit`` global indices whose title starts with ``needle``, alphabetically."""
        import bisect

        key = self.title
        lo = bisect.bisect_left(range(len(self)), needle, key=lambda r: key(int(self.order[r])))
        out: List[int] = []
        for r in range(lo, len(self)):
            j = int(self.order[r])
            if len(out) >= limit or not key(j).startswith(needle):
                break
            out.append(self.first + j)
        return out

    def holding(self, needle: str, limit: int, skip: set) -> List[int]:
        """Up to ``limit`` global indices (not in ``skip``) whose title holds ``needle``, in order."""
        out: List[int] = []
        blob, n = self.blob, len(self)
        pos = blob.find(needle)
        while pos >= 0 and len(out) < limit:
            j = self.item_at(pos)
            if self.first + j not in skip:
                out.append(self.first + j)
            pos = blob.find(needle, int(self.starts[j + 1])) if j + 1 < n else -1
        return out


class TitleSearch:
    """Case-insensitive prefix / substring search over item titles; grows with inserted items."""

    def __init__(self, titles: Sequence[str]):
        self.base = _Chunk(titles, 0)
        self.n_base = len(titles)
        self._extra: Optional[_Chunk] = None
        self._extra_titles: List[str] = []

    def sync(self, titles: Sequence[str]) -> None:
        """Index ``titles[len(indexed):]`` (items inserted since)."""
        n = self.n_base + len(self._extra_titles)
        if len(titles) > n:
            self._extra_titles.extend(titles[n:])
            self._extra = _Chunk(self._extra_titles, self.n_base)

    def search(self, query: str, limit: int) -> List[tuple]:
        """``[(index, "prefix" | "substring")]``: titles starting with ``query`` (alphabetically),
        then titles holding it (catalogue order), at most ``limit``."""
        q = _norm(query.strip())
        if not q:
            return []
        chunks = [self.base] + ([self._extra] if self._extra is not None else [])
        found: List[tuple] = []
        for c in chunks:
            found += [(g, "prefix") for g in c.prefixed(q, limit - len(found))]
        seen = {g for g, _ in found}
        for c in chunks:
            if len(found) >= limit:
                break
            found += [(g, "substring") for g in c.holding(q, limit - len(found), seen)]
        return found[:limit]


class Explorer:
    """What the explorer's endpoints answer, over one :class:`app.serve.ServiceState`."""

    def __init__(self, state):
        self.state = state
        self.rec = state.rec
        self.titles = TitleSearch(self.rec.titles[:self.rec.manifest["count"]])
        self._maps: Dict[tuple, dict] = {}
        self._lock = threading.Lock()

    @classmethod
    def of(cls, state) -> "Explorer":
        """The explorer of ``state`` (built once: the title index is precomputed at load)."""
        ex = getattr(state, "_explorer", None)
        if ex is None:
            ex = cls(state)
            state._explorer = ex
        return ex

    def _ref(self, i: int) -> dict:
        return {"id": self.rec.item_ids[i], "title": self.rec.titles[i] or None}

    def search(self, query: str, limit: int = 20) -> dict:
        rec = self.rec
        self.titles.sync(rec.titles)
        items: List[dict] = []
        exact = rec.item_index.get(query.strip())
        if exact is not None:
            items.append({**self._ref(exact), "match": "id"})
        hits = self.titles.search(query, limit + 1)
        hits = [(i, m) for i, m in hits if i != exact][:limit + 1 - len(items)]
        items += [{**self._ref(i), "match": m} for i, m in hits]
        return {"query": query, "items": items[:limit], "more": len(items) > limit}

    def item(self, raw_id: str, max_neighbours: int = 50) -> dict:
        rec, state = self.rec, self.state
        i = rec.item_index.get(raw_id)
        if i is None:
            raise UnknownIdError(f"item {raw_id!r} is not in the catalogue ({rec.num_items} items; "
                                 "ids as in items.csv)")
        base = rec.manifest["count"]
        new = getattr(state, "inserted", {}).get(raw_id) if i >= base else None
        cats: Optional[List[str]] = None
        year = None
        if i < base:
            if rec.categories is not None:
                cats = [c for c in rec.categories[i].split("|") if c]
            if rec.years is not None and rec.years[i]:
                year = int(rec.years[i])
        elif new is not None:
            cats, year = list(new.categories or []), new.year
        degree, nbr = self._neighbourhood(i, base, new, max_neighbours)
        return {"id": raw_id, "index": i, "title": rec.titles[i] or None, "categories": cats, "year": year,
                "degree": degree, "inserted": i >= base, "neighbourhood": nbr}

    def _neighbourhood(self, i: int, base: int, new, max_neighbours: int):
        """``(degree, [{"id", "title", "weight"}])`` from the inductive files (``None`` without them)."""
        emb = self.state.embedder
        if emb is None:
            return None, None
        if i < base:
            degree = int(emb.item_ptr[i + 1] - emb.item_ptr[i]) if i + 1 < emb.item_ptr.shape[0] else None
            ptr, items, weights = emb.nbr
            s, e = int(ptr[i]), int(ptr[i + 1])
            ids, w = items[s:e], weights[s:e]
        elif new is not None:  # the same walks as at insertion (seeded by the id): see app.inductive
            import zlib

            users = np.asarray(sorted({emb.user_index[u] for u in new.engaged_users if u in emb.user_index}), np.int64)
            co = np.asarray([self.rec.item_index[r] for r in dict.fromkeys(new.co_engaged_items)
                             if r in self.rec.item_index], np.int64)
            degree = len(set(new.engaged_users))
            ids, w = emb.neighbourhood(users, co, zlib.crc32(new.id.encode("utf-8")))
        else:
            return None, None
        order = np.argsort(-np.asarray(w), kind="stable")[:max_neighbours]
        return degree, [{**self._ref(int(ids[j])), "weight": float(w[j])} for j in order]

    def user(self, raw_id: str, n: int = 20) -> dict:
        user_ids, user_index, ptr, items = self.rec._load_users()
        u = user_index.get(raw_id)
        if u is None:
            raise UnknownIdError(f"user {raw_id!r} is unknown ({len(user_ids)} users in users.npz)")
        hist = items[ptr[u]:ptr[u + 1]]
        recent = hist[::-1][:n].tolist()
        return {"id": raw_id, "history_size": int(hist.shape[0]), "recent": [self._ref(int(i)) for i in recent]}

    def map(self, n: int = 2000, method: str = "pca", seed: int = 0) -> dict:
        key = (n, method, seed)
        with self._lock:  # one projection at a time; the last MAP_CACHE (n, method) kept
            if key not in self._maps:
                while len(self._maps) >= MAP_CACHE:
                    self._maps.pop(next(iter(self._maps)))
                self._maps[key] = self._project(n, method, seed)
            return self._maps[key]

    def _project(self, n: int, method: str, seed: int) -> dict:
        rec = self.rec
        base = rec.manifest["count"]
        rng = np.random.default_rng(seed)
        idx = np.sort(rng.choice(base, n, replace=False)) if base > n else np.arange(base)
        xy, used = project_2d(np.asarray(rec.emb[idx], dtype=np.float32), seed, method)
        xy = np.asarray(xy, dtype=np.float64)
        lo, hi = xy.min(0), xy.max(0)
        xy = (xy - lo) / np.where(hi > lo, hi - lo, 1.0)
        labels: List[str] = []
        lab = np.full(len(idx), -1, dtype=np.int64)
        if rec.categories is not None:
            first = [rec.categories[i].split("|")[0] if rec.categories[i] else "" for i in idx.tolist()]
            names, counts = np.unique([f for f in first if f], return_counts=True)
            labels = [str(x) for x in names[np.argsort(-counts, kind="stable")]]
            pos = {name: j for j, name in enumerate(labels)}
            lab = np.array([pos.get(f, -1) for f in first], dtype=np.int64)
        points = [[rec.item_ids[i], rec.titles[i] or None, round(float(x), 5), round(float(y), 5), int(c)]
                  for i, (x, y), c in zip(idx.tolist(), xy.tolist(), lab.tolist())]
        return {"method": used, "total": rec.num_items, "sample": int(len(idx)), "labels": labels, "points": points}


def page_file(name: str) -> bytes:
    return (STATIC / name).read_bytes()


def add_explorer_routes(app, get_state: Callable, reads: list, response_class) -> None:
    """``GET /`` (the page), ``/static/explorer.*`` and the explorer's read endpoints on ``app``."""
    from fastapi import Depends, Query  # noqa: F401  (Depends: the read guard in ``reads``)
    from starlette.responses import Response

    files = {name: page_file(name) for name in PAGE_FILES}  # read once: a missing file fails at start
    Explorer.of(get_state())  # the title index is built at load, not on the first search

    def static(name: str):
        async def serve_file():
            return Response(files[name], media_type=PAGE_FILES[name], headers=PAGE_HEADERS)
        return serve_file

    app.add_api_route("/", static("explorer.html"), methods=["GET"], include_in_schema=False)
    for name in PAGE_FILES:
        app.add_api_route(f"/static/{name}", static(name), methods=["GET"], include_in_schema=False)

    @app.get("/search", dependencies=reads)
    async def search(q: str = Query(..., min_length=1, max_length=200, description="title prefix / substring or id"),
                     limit: int = Query(20, ge=1, le=MAX_LIMIT)):
        return response_class(Explorer.of(get_state()).search(q, limit))

    @app.get("/items/{item_id}", dependencies=reads)
    async def item_card(item_id: str):
        return response_class(Explorer.of(get_state()).item(item_id))

    @app.get("/users/{user_id}", dependencies=reads)
    async def user_card(user_id: str, n: int = Query(20, ge=1, le=1000, description="recent history items")):
        return response_class(Explorer.of(get_state()).user(user_id, n))

    @app.get("/map", dependencies=reads)
    def catalogue_map(n: int = Query(2000, ge=5, le=MAX_MAP_POINTS, description="sampled items"),
                      method: str = Query("pca", pattern="^(" + "|".join(MAP_METHODS) + ")$")):
        # a plain def: FastAPI runs it in its thread pool (a projection takes seconds on a big sample)
        return response_class(Explorer.of(get_state()).map(n, method))
