"""``pinsage serve``: an HTTP recommendation API over ``pinsage predict`` artifacts, with a live
index that takes new items inductively; ``pinsage embed-new``: the same inductive path over a CSV.

    PINSAGE_SERVE_TOKEN=... pinsage serve --artifacts DIR [--host 127.0.0.1 --port 8000]
    pinsage serve --artifacts DIR --read-only
    pinsage embed-new --artifacts DIR --items new.csv [--output new.npz]

Endpoints (JSON in and out; the OpenAPI schema is at ``/openapi.json``, docs at ``/docs``):

* ``GET /items/{id}/similar?k=10`` -> ``{"query", "items": [{"id", "score", "title"}]}``;
* ``GET /users/{id}/recommendations?k=10``: the user's history items excluded; the user vector is
  the model's user encoder (:meth:`app.recommend.Recommender.user_vector`), with the user's own
  vector ``e_u`` when the model has a user-id table (``model.user_id_embedding``);
* ``POST /recommendations`` ``{"history": [ids], "k"}``: for a user the model never saw (no
  ``e_u``: the vector is the history's alone);
* ``POST /items`` (token) ``{"id", "title"?, "categories"?, "year"?, "features"?,
  "engaged_users"?, "co_engaged_items"?}``: embedded inductively (:mod:`app.inductive`), written
  to the append-only item log (fsync'ed before the answer), then inserted into the live index;
* ``POST /admin/reload`` (token) ``{"artifacts"?: DIR}``: load a new artifacts folder (default:
  the same path, e.g. after a new ``pinsage predict``), replay the item log into it, and swap it in
  atomically; requests in flight finish on the old one;
* ``GET /healthz``; ``GET /metrics`` (Prometheus text: request counts, latency histogram, index size);
* ``GET /`` the explorer page and its reads ``GET /search``, ``GET /items/{id}``, ``GET /users/{id}``,
  ``GET /map`` (:mod:`app.explorer`).

Write endpoints need ``Authorization: Bearer $PINSAGE_SERVE_TOKEN``; the server refuses to start
with write endpoints when the variable is unset (``--read-only`` starts without them).  Read
endpoints are open on a loopback host; on any other host they need the token too unless
``--public-reads``.

The item log (default ``<DIR>.items.jsonl``, beside the artifact folder, so a new ``predict`` that
replaces the folder keeps it) holds one JSON line per inserted item: the request and the vectors
computed for it.  At start every line is replayed: with the stored vectors when it was written
against the same artifacts (same ``manifest.json``), re-embedded from the request otherwise; items
already in the catalogue are skipped.  A torn last line (a crash mid-write, never acknowledged) is
ignored.
"""

import argparse
import csv
import ipaddress
import json
import os
import sys
from pathlib import Path
from typing import Any, List, Optional

import numpy as np

from .inductive import NewItem, NewItemError
from .recommend import ArtifactError
# the service's parts, importable from here as before: the state and item log (app/serve_state.py);
# the FastAPI app is app/serve_api.py, imported on first use (FastAPI is the optional serve extra)
from .serve_state import (MAX_BODY_BYTES, MAX_HISTORY, MAX_K, TOKEN_ENV, ItemLog, LogWriteError,  # noqa: F401
                          ServiceState, check_new_id, default_log_path)


def create_app(*args, **kwargs):
    """The ASGI app: :func:`app.serve_api.create_app` (same arguments)."""
    from .serve_api import create_app as build

    return build(*args, **kwargs)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ----------------------------------------------------------------------------------------------
# command lines
# ----------------------------------------------------------------------------------------------
def _threads(n: int) -> None:
    import faiss
    import torch

    faiss.omp_set_num_threads(n)
    torch.set_num_threads(n)


def serve_main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="pinsage serve", description="HTTP recommendation API over predict artifacts")
    p.add_argument("--artifacts", required=True, help="folder written by `pinsage predict`")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--log", default=None, help="item log (default <artifacts>.items.jsonl beside the folder)")
    p.add_argument("--read-only", action="store_true", help="no write endpoints (no token needed)")
    p.add_argument("--public-reads", action="store_true", help="read endpoints open on a non-loopback host")
    p.add_argument("--threads", type=int, default=1, help="FAISS/torch threads per request (default 1)")
    p.add_argument("--max-body-mb", type=float, default=MAX_BODY_BYTES / (1 << 20),
                   help=f"largest request body in MiB (default {MAX_BODY_BYTES >> 20}); larger ones answer 413")
    p.add_argument("--max-history", type=int, default=MAX_HISTORY,
                   help=f"longest POST /recommendations history (default {MAX_HISTORY}); longer ones answer 422")
    args = p.parse_args(argv)
    if args.max_body_mb <= 0 or args.max_history < 1:
        p.error(f"--max-body-mb {args.max_body_mb} and --max-history {args.max_history} must be positive")
    try:
        import uvicorn
    except ImportError:
        print('pinsage serve: error: needs the serve extra: pip install -e ".[serve]"', file=sys.stderr)
        return 2
    token = os.environ.get(TOKEN_ENV) or None
    try:
        _threads(args.threads)
        app = create_app(args.artifacts, token=token, log_path=args.log, read_only=args.read_only,
                         protect_reads=not _is_loopback(args.host) and not args.public_reads,
                         max_body_bytes=int(args.max_body_mb * (1 << 20)), max_history=args.max_history)
    except (ArtifactError, ValueError, FileNotFoundError, KeyError) as e:
        print(f"pinsage serve: error: {e}", file=sys.stderr)
        return 2
    s = app.state.holder["state"]
    print(json.dumps({"serving": str(s.folder), "items": s.num_items, "replayed": s.replayed,
                      "url": f"http://{args.host}:{args.port}", "load_seconds": round(s.load_seconds, 2)}),
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


def _split(v: Any) -> List[str]:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return []
    return [t for t in str(v).replace(",", "|").split("|") if t.strip()] if str(v).strip() else []


def read_new_items(path: str) -> List[NewItem]:
    """A CSV of new items: ``id`` and any of ``title, categories, year, features, engaged_users,
    co_engaged_items`` (lists separated by ``|``)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"--items {path!r} does not exist")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "id" not in rows[0]:
        raise ValueError(f"--items {path!r} needs a header row with an 'id' column (and any of title, categories, "
                         "year, features, engaged_users, co_engaged_items)")
    out = []
    for n, r in enumerate(rows, 2):
        try:
            feats = _split(r.get("features"))
            out.append(NewItem(
                id=check_new_id(str(r["id"]).strip()), title=(r.get("title") or "").strip() or None,
                categories=[c.strip() for c in _split(r.get("categories"))] or None,
                year=int(r["year"]) if (r.get("year") or "").strip() else None,
                features=[float(x) for x in feats] if feats else None,
                engaged_users=[u.strip() for u in _split(r.get("engaged_users"))],
                co_engaged_items=[i.strip() for i in _split(r.get("co_engaged_items"))]))
        except ValueError as e:
            raise ValueError(f"--items {path!r} line {n}: {e}") from None
    return out


def embed_new_main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="pinsage embed-new",
                                description="embed new items inductively and append them to the item log")
    p.add_argument("--artifacts", required=True, help="folder written by `pinsage predict`")
    p.add_argument("--items", required=True, help="CSV: id[,title,categories,year,features,engaged_users,"
                                                  "co_engaged_items] (lists separated by |)")
    p.add_argument("--log", default=None, help="item log (default <artifacts>.items.jsonl; `serve` replays it)")
    p.add_argument("--output", default=None, help="also write the new embeddings to this .npz (ids, embeddings)")
    args = p.parse_args(argv)
    try:
        items = read_new_items(args.items)
        state = ServiceState(args.artifacts, args.log)
        results, records = [], []
        for it in items:  # all embedded (later rows may name earlier ones) before anything is logged
            z, layers, info = state.embed(it)
            records.append(state.record(it, z, layers))
            results.append({"id": it.id, "index": state._commit(it, z, layers), **info})
        state.log.append(records)
    except (ArtifactError, NewItemError, ValueError, OSError) as e:
        print(f"pinsage embed-new: error: {e}", file=sys.stderr)
        return 2
    if args.output:
        ids = [r["index"] for r in results]
        out = Path(args.output)
        tmp = out.with_name(f".{out.name}.tmp.npz")
        np.savez(tmp, ids=np.array([it.id for it in items]), embeddings=state.rec.vectors.rows(ids))
        os.replace(tmp, out)
    print(json.dumps({"added": len(results), "items": state.num_items, "log": str(state.log.path),
                      "neighbours": [r["neighbours"] for r in results][:20]}))
    return 0
