"""``pinsage serve``: an HTTP recommendation API over ``pinsage predict`` artifacts, with a live
index that takes new items inductively; ``pinsage embed-new``: the same inductive path over a CSV.

    PINSAGE_SERVE_TOKEN=... pinsage serve --artifacts DIR [--host 127.0.0.1 --port 8000]
    pinsage serve --artifacts DIR --read-only
    pinsage embed-new --artifacts DIR --items new.csv [--output new.npz]

Endpoints (JSON in and out; the OpenAPI schema is at ``/openapi.json``, docs at ``/docs``):

* ``GET /items/{id}/similar?k=10`` -> ``{"query", "items": [{"id", "score", "title"}]}``;
* ``GET /users/{id}/recommendations?k=10``: the user's history items excluded; the user vector is
  the model's user encoder (:meth:`app.recommend.Recommender.user_vector`);
* ``POST /recommendations`` ``{"history": [ids], "k"}``: for a user the model never saw;
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
import asyncio
import csv
import errno
import hashlib
import hmac
import inspect
import ipaddress
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np

from .explorer import add_explorer_routes
from . import artifact_format as fmt
from .inductive import InductiveEmbedder, NewItem, NewItemError
from .recommend import ArtifactError, Recommender, UnknownIdError

MAX_K = 1000
MAX_BODY_BYTES = 8 << 20  # request bodies above this answer 413 (--max-body-mb)
MAX_HISTORY = 10_000  # POST /recommendations history length (--max-history)
MAX_ID_CHARS = 256
MAX_BATCH = 256  # POST /items embedded, logged and inserted together (group commit)
TOKEN_ENV = "PINSAGE_SERVE_TOKEN"

try:  # orjson (the serve extra) encodes the answers about 5x faster than json
    import orjson as _orjson

    def _dumps(obj) -> bytes:
        return _orjson.dumps(obj, option=_orjson.OPT_SERIALIZE_NUMPY)
except ImportError:  # pragma: no cover
    def _dumps(obj) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()


def _json_response():
    from starlette.responses import Response

    class JSONBytes(Response):
        media_type = "application/json"

        def render(self, content) -> bytes:
            return _dumps(content)

    return JSONBytes


# ----------------------------------------------------------------------------------------------
# the append-only item log
# ----------------------------------------------------------------------------------------------
class LogWriteError(OSError):
    """The item log could not take a batch (disk full, permissions); nothing of it was stored."""


_CHECK = b',"sha256":"'


def _with_checksum(line: bytes) -> bytes:
    """``{...}`` -> ``{...,"sha256":"<sha256 of {...}>"}``: each record carries its own checksum."""
    return line[:-1] + _CHECK + hashlib.sha256(line).hexdigest().encode() + b'"}'


def _checksum_ok(line: bytes, rec: dict) -> bool:
    """A record's checksum matches (records written before checksums existed have none)."""
    if "sha256" not in rec:
        return True
    line = line.rstrip()
    tail = len(_CHECK) + 64 + 2
    if line[-tail:-tail + len(_CHECK)] != _CHECK:
        return False
    return hmac.compare_digest(hashlib.sha256(line[:-tail] + b"}").hexdigest().encode(), line[-66:-2])


class ItemLog:
    """One JSON object per line, appended and fsync'ed; a torn last line is ignored on read."""

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._truncate_to: Optional[int] = None

    def read(self) -> List[dict]:
        if not self.path.is_file():
            return []
        out = []
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ArtifactError(f"item log {self.path} cannot be read ({e.strerror or e}): fix its permissions "
                                "or pass --log") from None
        lines = data.split(b"\n")
        for n, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError("not an object")
            except ValueError:
                if n == len(lines) - 1:  # torn tail: written by a process killed mid-line
                    break
                raise ArtifactError(f"item log {self.path} line {n + 1} is not valid JSON: fix or move the file")
            if not _checksum_ok(line, rec):
                raise ArtifactError(f"item log {self.path} line {n + 1} does not match its checksum (the line was "
                                    "modified or damaged): restore it or move the file")
            out.append(rec)
        if data and not data.endswith(b"\n"):
            # cut the torn tail so that the next append starts on a fresh line
            with open(self.path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
        return out

    def append(self, records: List[dict]) -> None:
        """All ``records`` with one write and one fsync (the group commit of ``POST /items``):
        when this returns they survive ``kill -9`` and a power cut."""
        payload = b"".join(_with_checksum(_dumps(r)) + b"\n" for r in records)
        with self._lock:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            except OSError as e:
                raise LogWriteError(f"item log {self.path} cannot be opened for writing ({e.strerror or e}): "
                                    "nothing was stored") from None
            try:
                if self._truncate_to is not None:  # an earlier failed append could not be rolled back
                    os.ftruncate(fd, self._truncate_to)
                    self._truncate_to = None
                start = os.fstat(fd).st_size
                try:
                    view = memoryview(payload)
                    while view:  # os.write may write less than asked (a full disk): go on or fail
                        n = os.write(fd, view)
                        if n <= 0:
                            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                        view = view[n:]
                    os.fsync(fd)
                except OSError as e:
                    self._roll_back(fd, start)
                    raise LogWriteError(f"item log {self.path} could not be written ({e.strerror or e}): nothing "
                                        "was stored; free disk space and retry") from None
            except OSError as e:
                if isinstance(e, LogWriteError):
                    raise
                raise LogWriteError(f"item log {self.path} could not be written ({e.strerror or e}): nothing "
                                    "was stored") from None
            finally:
                os.close(fd)

    def _roll_back(self, fd: int, start: int) -> None:
        """Cut a half-written batch off the log (never a torn line before the next record)."""
        try:
            os.ftruncate(fd, start)
            os.fsync(fd)
        except OSError:
            self._truncate_to = start  # retried before the next append; read() drops a torn tail anyway


def default_log_path(folder: Union[str, Path]) -> Path:
    folder = Path(folder).resolve()
    return folder.with_name(folder.name + ".items.jsonl")


# ----------------------------------------------------------------------------------------------
# one loaded artifact folder + the items inserted into it
# ----------------------------------------------------------------------------------------------
class ServiceState:
    """Artifacts (:class:`~app.recommend.Recommender`), the inductive embedder and the item log."""

    def __init__(self, folder: Union[str, Path], log_path: Optional[Union[str, Path]] = None,
                 inductive: bool = True):
        t0 = time.perf_counter()
        self.folder = Path(folder)
        self.rec = Recommender(str(folder))
        self.identity = hashlib.sha256((self.folder / fmt.MANIFEST).read_bytes()).hexdigest()[:16]
        self.embedder: Optional[InductiveEmbedder] = None
        self.inductive_error = ""
        if inductive:
            try:
                self.embedder = InductiveEmbedder(self.folder, self.rec.manifest, self.rec.user_index)
            except FileNotFoundError as e:
                self.inductive_error = str(e)
        self.log = ItemLog(log_path or default_log_path(self.folder))
        self.replayed = {"stored": 0, "recomputed": 0, "skipped": 0}
        self.inserted: Dict[str, NewItem] = {}  # items added after training, by id (the explorer's cards)
        self._replay()
        self.load_seconds = time.perf_counter() - t0

    @property
    def num_items(self) -> int:
        return self.rec.num_items

    def _replay(self) -> None:
        for rec in self.log.read():
            item = NewItem.from_dict(rec["item"])
            if item.id in self.rec.item_index:
                self.replayed["skipped"] += 1
                continue
            if rec.get("artifacts") == self.identity and (self.embedder is None or "layers" in rec):
                z = np.asarray(rec["z"], dtype=np.float32)
                layers = [np.asarray(h, dtype=np.float32)[None, :] for h in rec.get("layers", [])]
                self.replayed["stored"] += 1
            else:
                z, layers, _ = self.embed(item)
                self.replayed["recomputed"] += 1
            self._commit(item, z, layers)

    def embed(self, item: NewItem):
        """``(z, layers, info)`` of one new item, or :class:`NewItemError`."""
        out = self.embed_batch([item])[0]
        if isinstance(out, NewItemError):
            raise out
        return out

    def embed_batch(self, items: List[NewItem]) -> list:
        """Embed ``items`` as one batch (one pass of the layers); per item ``(z, layers, info)`` or the
        :class:`NewItemError` it gets (409 for an id that exists or comes twice, 422 for bad content),
        so that one bad item in a batch fails alone."""
        if self.embedder is None:
            return [NewItemError(f"this server cannot embed new items: {self.inductive_error}", status=503)
                    for _ in items]
        out: list = [None] * len(items)
        todo, seen = [], set()
        for j, it in enumerate(items):
            if it.id in self.rec.item_index:
                out[j] = NewItemError(f"item {it.id!r} already exists (index {self.rec.item_index[it.id]})", status=409)
            elif it.id in seen:
                out[j] = NewItemError(f"item {it.id!r} already exists (posted twice at once)", status=409)
            else:
                seen.add(it.id)
                todo.append(j)
        if not todo:
            return out
        try:
            z, layers, info = self.embedder.embed([items[j] for j in todo], self.rec.item_index.get)
        except NewItemError as e:
            if len(todo) == 1:
                out[todo[0]] = e
                return out
            for j in todo:  # an invalid item in the batch: each on its own, so each gets its own answer
                out[j] = self.embed_batch([items[j]])[0]
            return out
        for b, j in enumerate(todo):
            if not (np.isfinite(z[b]).all() and all(np.isfinite(h[b]).all() for h in layers)):
                # e.g. finite but huge features (1e308): refused before anything is logged
                out[j] = NewItemError(f"item {items[j].id!r}: its embedding is not finite (features too large? "
                                      "give values of the scale of the training features)", status=422)
            else:
                out[j] = z[b], [h[b:b + 1] for h in layers], info[b]
        return out

    def record(self, item: NewItem, z: np.ndarray, layers) -> dict:
        return {"artifacts": self.identity, "item": item.to_dict(), "z": np.asarray(z).tolist(),
                "layers": [np.asarray(h).reshape(-1).tolist() for h in layers], "time": time.time()}

    def _commit(self, item: NewItem, z: np.ndarray, layers) -> int:
        i = self.rec.add_item(item.id, item.title, z)
        if self.embedder is not None:
            self.embedder.add(layers)
        self.inserted[item.id] = item
        return i

    def insert(self, item: NewItem) -> dict:
        """Embed, log (durably), insert one item (what ``POST /items`` does for a batch)."""
        z, layers, info = self.embed(item)
        self.log.append([self.record(item, z, layers)])
        return {"id": item.id, "index": self._commit(item, z, layers), **info}

    def prepare(self, items: List[NewItem]):
        """The part of a batch insert that may run off the event loop: embed the batch and encode
        its log lines.  Returns (per item: embedding or error, the log records of the good ones)."""
        done = self.embed_batch(items)
        records = [self.record(it, r[0], r[1]) for it, r in zip(items, done) if not isinstance(r, NewItemError)]
        return done, records

    def commit_batch(self, items: List[NewItem], done: list) -> list:
        """Insert the embedded items of a logged batch into the index and the tables, in order;
        per item the answer of ``POST /items`` or its :class:`NewItemError`."""
        return [r if isinstance(r, NewItemError) else {"id": it.id, "index": self._commit(it, r[0], r[1]), **r[2]}
                for it, r in zip(items, done)]


# ----------------------------------------------------------------------------------------------
# the FastAPI application
# ----------------------------------------------------------------------------------------------
def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_app(artifacts: Union[str, Path], token: Optional[str] = None, log_path=None, read_only: bool = False,
               protect_reads: bool = False, state: Optional[ServiceState] = None,
               max_body_bytes: int = MAX_BODY_BYTES, max_history: int = MAX_HISTORY):
    """The ASGI app.  ``token`` guards the write endpoints (and the reads with ``protect_reads``);
    ``read_only`` leaves the write endpoints out (then no token is needed).  Bodies above
    ``max_body_bytes`` answer 413, histories above ``max_history`` items 422."""
    from fastapi import Body, Depends, FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import PlainTextResponse
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator
    from starlette.exceptions import HTTPException as StarletteHTTPException

    if not read_only and not token:
        raise ValueError(f"{TOKEN_ENV} is not set: the write endpoints (POST /items, POST /admin/reload) need a "
                         "bearer token; set it, or pass --read-only to serve without them")

    holder: Dict[str, Any] = {"state": state or ServiceState(artifacts, log_path)}
    write_lock = asyncio.Lock()

    registry = CollectorRegistry()
    requests_total = Counter("pinsage_requests_total", "HTTP requests", ["endpoint", "method", "status"],
                             registry=registry)
    latency = Histogram("pinsage_request_seconds", "request latency", ["endpoint"], registry=registry,
                        buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0))
    index_items = Gauge("pinsage_index_items", "items in the live index", registry=registry)
    inserted_items = Gauge("pinsage_inserted_items", "items added after training (POST /items + log)",
                           registry=registry)
    index_items.set_function(lambda: holder["state"].num_items)
    inserted_items.set_function(lambda: holder["state"].num_items - holder["state"].rec.manifest["count"])

    # ids are strings or integers, never true / 1.0 read as "1"
    AnyId = Union[StrictStr, StrictInt]

    class NewItemIn(BaseModel):
        model_config = ConfigDict(extra="forbid")
        id: AnyId
        title: Optional[str] = None
        categories: Optional[List[str]] = None
        year: Optional[int] = None
        features: Optional[List[float]] = None
        engaged_users: Optional[List[AnyId]] = None
        co_engaged_items: Optional[List[AnyId]] = None

        @field_validator("id")
        @classmethod
        def _queryable(cls, v):
            return check_new_id(v)

    class HistoryIn(BaseModel):
        model_config = ConfigDict(extra="forbid")
        history: List[AnyId] = Field(min_length=1, max_length=max_history)
        k: int = Field(10, ge=1, le=MAX_K)

    class ReloadIn(BaseModel):
        model_config = ConfigDict(extra="forbid")
        artifacts: Optional[str] = None

    class Item(BaseModel):
        id: str
        score: float
        title: Optional[str]

    class Answer(BaseModel):
        query: Dict[str, Any]
        items: List[Item]

    ORJSONResponse = _json_response()
    # FastAPI's own OpenTelemetry hooks (newer versions) check the environment on every request: off,
    # /metrics is the service's telemetry
    quiet = ({"telemetry": {"tracing": False, "metrics": False, "logs": False}}
             if "telemetry" in inspect.signature(FastAPI).parameters else {})
    app = FastAPI(title="pinsage", version="0.1.0", default_response_class=ORJSONResponse,
                  description="PinSage recommendations: similar items, user recommendations, inductive new items.",
                  **quiet)
    app.state.holder = holder

    def fail(status: int, message: str, headers=None):
        return ORJSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc):
        ctype = request.headers.get("content-type", "")
        if request.method == "POST" and "json" not in ctype.lower() and any(
                tuple(e.get("loc", ()))[:1] == ("body",) for e in exc.errors()):
            return fail(415, f"the body must be JSON sent with the header Content-Type: application/json (curl: "
                             f"-H 'Content-Type: application/json'); got content-type {ctype or 'none'!r}")
        errs = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errs):
            e = next(e for e in errs if e.get("type") == "json_invalid")
            return fail(400, f"malformed JSON body: {e.get('ctx', {}).get('error', e.get('msg'))}")
        parts = [f"{'.'.join(str(x) for x in e.get('loc', ()) if x != 'body')}: {e.get('msg')}" for e in errs]
        return fail(422, "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc):
        return fail(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(UnknownIdError)
    async def _unknown(request, exc):
        return fail(404, str(exc))

    @app.exception_handler(NewItemError)
    async def _new_item(request, exc):
        return fail(exc.status, str(exc))

    @app.exception_handler(ArtifactError)
    async def _artifact(request, exc):
        return fail(422, str(exc))

    @app.exception_handler(LogWriteError)
    async def _log_write(request, exc):
        return fail(507, str(exc))

    async def check_token(request: Request) -> None:  # async: no thread-pool hop per request
        from fastapi import HTTPException

        got = request.headers.get("authorization", "")
        scheme, _, value = got.partition(" ")
        if scheme.lower() != "bearer" or not token or not hmac.compare_digest(value.strip().encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token (Authorization: Bearer $PINSAGE_SERVE_TOKEN)",
                                headers={"WWW-Authenticate": "Bearer"})

    reads = [Depends(check_token)] if protect_reads else []
    writes = [Depends(check_token)]
    k_query = Query(10, ge=1, le=MAX_K, description=f"number of results, 1..{MAX_K}")

    @app.get("/items/{item_id}/similar", response_model=Answer, dependencies=reads)
    async def similar(item_id: str, k: int = k_query):
        return ORJSONResponse(holder["state"].rec.similar_items(item_id, k))

    @app.get("/users/{user_id}/recommendations", response_model=Answer, dependencies=reads)
    async def for_user(user_id: str, k: int = k_query):
        return ORJSONResponse(holder["state"].rec.for_user(user_id, k))

    @app.post("/recommendations", response_model=Answer, dependencies=reads)
    async def for_history(body: HistoryIn):
        return ORJSONResponse(holder["state"].rec.for_history([str(h) for h in body.history], body.k))

    @app.get("/healthz")
    async def healthz():
        s = holder["state"]
        return {"status": "ok", "items": s.num_items, "base_items": s.rec.manifest["count"],
                "artifacts": str(s.folder), "identity": s.identity, "writable": not read_only,
                "inductive": s.embedder is not None, "replayed": s.replayed}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    if not read_only:
        # group commit: POST /items requests queue up; one task at a time takes all that are queued
        # (up to MAX_BATCH), embeds them as one batch and encodes their log lines off the event loop,
        # appends the lines with one write + one fsync, then inserts them into the index in the loop
        # (log order == index order; reads never see a half-made insert) and only then answers
        # each request: an acknowledged item is on disk.
        queue: List[tuple] = []
        writer = {"running": False}

        def embed_and_log(s: ServiceState, items: List[NewItem]) -> list:
            done, records = s.prepare(items)
            if records:
                s.log.append(records)  # one write + one fsync for the batch
            return done

        async def drain():
            try:
                while queue:
                    batch = queue[:MAX_BATCH]
                    del queue[:MAX_BATCH]
                    items = [it for it, _ in batch]
                    try:
                        async with write_lock:
                            s = holder["state"]
                            done = await asyncio.to_thread(embed_and_log, s, items)  # one thread hop a batch
                            answers = s.commit_batch(items, done)
                    except BaseException as e:  # nothing of this batch was acknowledged
                        for _, fut in batch:
                            if not fut.done():
                                fut.set_exception(e)
                        if not isinstance(e, Exception):
                            raise
                        continue
                    for (_, fut), a in zip(batch, answers):
                        if not fut.done():
                            (fut.set_exception if isinstance(a, NewItemError) else fut.set_result)(a)
            finally:
                writer["running"] = False

        @app.post("/items", status_code=201, dependencies=writes)
        async def add_item(body: NewItemIn):
            fut = asyncio.get_running_loop().create_future()
            queue.append((NewItem.from_dict(body.model_dump()), fut))
            if not writer["running"]:
                writer["running"] = True
                asyncio.ensure_future(drain())
            return ORJSONResponse(await fut, status_code=201)

        @app.post("/admin/reload", dependencies=writes)
        async def reload(body: ReloadIn = Body(default_factory=ReloadIn)):
            async with write_lock:
                old = holder["state"]
                folder = body.artifacts or str(old.folder)
                try:
                    new = await asyncio.to_thread(ServiceState, folder, old.log.path)
                except (ArtifactError, FileNotFoundError, ValueError, KeyError) as e:
                    return fail(422, f"cannot load artifacts {folder!r}: {e}")
                holder["state"] = new  # atomic swap: requests in flight keep the old object
            return {"status": "reloaded", "artifacts": str(new.folder), "items": new.num_items,
                    "replayed": new.replayed, "seconds": round(new.load_seconds, 3)}

    add_explorer_routes(app, lambda: holder["state"], reads, ORJSONResponse)
    app.add_middleware(_BodyLimitMiddleware, limit=max_body_bytes)
    app.add_middleware(_MetricsMiddleware, requests_total=requests_total, latency=latency)
    return app


def check_new_id(v) -> str:
    """A new item's id must be queryable as ``/items/{id}/similar``: no ``/``, no control characters."""
    s = str(v)
    if not s.strip() or len(s) > MAX_ID_CHARS or "/" in s or any(ord(c) < 32 or ord(c) == 127 for c in s):
        raise ValueError(f"id {s[:80]!r} is not usable: give 1-{MAX_ID_CHARS} characters without '/' or control "
                         "characters")
    return v


class _BodyLimitMiddleware:
    """413 for a request body above ``limit`` bytes: by its Content-Length before reading anything,
    or as soon as a chunked body passes the limit."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, int(limit)

    def _message(self, n: Optional[int] = None) -> str:
        size = f" ({n} bytes)" if n is not None else ""
        return (f"request body too large{size}: at most {self.limit} bytes (serve --max-body-mb); send "
                "fewer items or a shorter history")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            body = _dumps({"error": self._message(int(length))})
            await send({"type": "http.response.start", "status": 413,
                        "headers": [(b"content-type", b"application/json"), (b"connection", b"close"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        seen = [0]

        async def limited():
            from starlette.exceptions import HTTPException

            msg = await receive()
            if msg.get("type") == "http.request":
                seen[0] += len(msg.get("body", b""))
                if seen[0] > self.limit:
                    raise HTTPException(413, self._message())
            return msg

        await self.app(scope, limited, send)


class _MetricsMiddleware:
    """Plain ASGI middleware (cheaper than BaseHTTPMiddleware): counts and times every request by
    its route template (``/items/{item_id}/similar``), so ids never become label values."""

    def __init__(self, app, requests_total, latency):
        self.app, self.requests_total, self.latency = app, requests_total, latency
        self._series: Dict[tuple, tuple] = {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            key = (endpoint, scope.get("method", ""), status["code"])
            series = self._series.get(key)
            if series is None:  # the labelled children, looked up once per (route, method, status)
                series = self._series[key] = (self.latency.labels(endpoint),
                                              self.requests_total.labels(endpoint, key[1], str(key[2])))
            series[0].observe(time.perf_counter() - t0)
            series[1].inc()


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
