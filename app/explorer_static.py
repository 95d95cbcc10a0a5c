"""The explorer page as static files (``pinsage report``): the page of ``pinsage serve`` with a
snapshot of the server's own answers for a seeded sample of items and the most active users, so
it opens from the file system, offline."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List
from urllib.parse import quote

import numpy as np

from .explorer import Explorer, page_file
from .serve_state import ServiceState

SNAPSHOT_FILE = "explorer-snapshot.js"


def snapshot(folder, num_items: int = 1000, num_users: int = 20, k: int = 10, map_method: str = "pca",
             seed: int = 0) -> dict:
    """The answers ``pinsage serve`` gives for the page's requests about a seeded sample of
    ``num_items`` items (the map's points: their cards and similar items) and the ``num_users``
    users with the longest histories, computed by the same code as the endpoints, keyed by the
    request path the page sends."""
    with tempfile.TemporaryDirectory() as tmp:  # no item log: the catalogue as predict wrote it
        state = ServiceState(folder, log_path=Path(tmp) / "none.jsonl")
    rec, ex = state.rec, Explorer(state)

    def q(raw: str) -> str:  # as the page's encodeURIComponent
        return quote(raw, safe="-_.!~*'()")

    m = ex.map(min(num_items, rec.num_items), map_method, seed)
    map_query = f"/map?n={m['sample']}&method={map_method}"
    answers: Dict[str, Any] = {
        "/healthz": {"status": "ok", "items": rec.num_items, "base_items": rec.manifest["count"],
                     "writable": False, "inductive": False},
        map_query: m}
    kk = min(k, rec.num_items - 1)
    for p in m["points"]:
        answers[f"/items/{q(p[0])}"] = ex.item(p[0])
        answers[f"/items/{q(p[0])}/similar?k={k}"] = rec.similar_items(p[0], kk)
    ptr = rec.user_ptr
    longest = np.argsort(-(ptr[1:] - ptr[:-1]), kind="stable")[:num_users]
    users = [rec.user_ids[int(u)] for u in longest]
    for u in users:
        answers[f"/users/{q(u)}"] = ex.user(u)
        answers[f"/users/{q(u)}/recommendations?k={k}"] = rec.for_user(u, min(k, rec.num_items - 1))
    return {"map_query": map_query, "items": [[p[0], p[1]] for p in m["points"]], "users": users,
            "answers": answers}


def write_static(folder, out: Path, write_bytes: Callable[[Path, bytes], None], **kw) -> List[Path]:
    """``<out>/explorer.html`` + ``<out>/static/explorer.{js,css}`` + the snapshot: the page opens
    from the file system, offline."""
    snap = snapshot(folder, **kw)
    (out / "static").mkdir(parents=True, exist_ok=True)
    html = page_file("explorer.html").decode().replace(
        "<!--snapshot-->", f'<script src="static/{SNAPSHOT_FILE}"></script>')
    paths = []
    for name, data in ((f"static/{SNAPSHOT_FILE}",
                        b"window.PINSAGE_SNAPSHOT = " + json.dumps(snap, ensure_ascii=True).encode() + b";\n"),
                       ("static/explorer.js", page_file("explorer.js")),
                       ("static/explorer.css", page_file("explorer.css")),
                       ("explorer.html", html.encode())):
        write_bytes(out / name, data)
        paths.append(out / name)
    return paths
