"""The FastAPI application of ``pinsage serve`` (:func:`create_app`): request schemas, error
handlers, the read routes, the write routes (``POST /items`` with group commit, ``POST
/admin/reload``), Prometheus metrics and two ASGI middlewares (body size limit, request metrics).

The endpoints and their contract are described in :mod:`app.serve`; what they act on is a
:class:`app.serve_state.ServiceState`, held in ``app.state.holder["state"]`` so that a reload swaps
it atomically.  FastAPI is the optional ``serve`` extra: this module is imported only to serve.
"""

import asyncio
import hmac
import inspect
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from .explorer import add_explorer_routes
from .inductive import NewItem, NewItemError
from .recommend import ArtifactError, UnknownIdError
from .serve_state import (MAX_BATCH, MAX_BODY_BYTES, MAX_HISTORY, MAX_K, TOKEN_ENV, LogWriteError, ServiceState,
                          _dumps, check_new_id)

# ids are strings or integers, never true / 1.0 read as "1"
AnyId = Union[StrictStr, StrictInt]


class JSONBytes(Response):
    """Answers encoded by orjson when it is there (about 5x faster than json)."""

    media_type = "application/json"

    def render(self, content) -> bytes:
        return _dumps(content)


# ----------------------------------------------------------------------------------------------
# request and answer schemas
# ----------------------------------------------------------------------------------------------
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
    history: List[AnyId] = Field(min_length=1, max_length=MAX_HISTORY)
    k: int = Field(10, ge=1, le=MAX_K)


def history_schema(max_history: int) -> type:
    """:class:`HistoryIn` with another longest history (``serve --max-history``)."""
    if max_history == MAX_HISTORY:
        return HistoryIn

    class HistoryInLimited(HistoryIn):
        history: List[AnyId] = Field(min_length=1, max_length=max_history)

    HistoryInLimited.__name__ = "HistoryIn"
    return HistoryInLimited


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


def fail(status: int, message: str, headers=None) -> JSONBytes:
    """The one error shape: ``{"error": "..."}``."""
    return JSONBytes({"error": message}, status_code=status, headers=headers)


# ----------------------------------------------------------------------------------------------
# the application
# ----------------------------------------------------------------------------------------------
def create_app(artifacts: Union[str, Path], token: Optional[str] = None, log_path=None, read_only: bool = False,
               protect_reads: bool = False, state: Optional[ServiceState] = None,
               max_body_bytes: int = MAX_BODY_BYTES, max_history: int = MAX_HISTORY):
    """The ASGI app.  ``token`` guards the write endpoints (and the reads with ``protect_reads``);
    ``read_only`` leaves the write endpoints out (then no token is needed).  Bodies above
    ``max_body_bytes`` answer 413, histories above ``max_history`` items 422."""
    if not read_only and not token:
        raise ValueError(f"{TOKEN_ENV} is not set: the write endpoints (POST /items, POST /admin/reload) need a "
                         "bearer token; set it, or pass --read-only to serve without them")
    holder: Dict[str, Any] = {"state": state or ServiceState(artifacts, log_path)}
    current = lambda: holder["state"]  # noqa: E731 - read at each request: a reload swaps it
    # FastAPI's own OpenTelemetry hooks (newer versions) check the environment on every request: off,
    # /metrics is the service's telemetry
    quiet = ({"telemetry": {"tracing": False, "metrics": False, "logs": False}}
             if "telemetry" in inspect.signature(FastAPI).parameters else {})
    app = FastAPI(title="pinsage", version="0.1.0", default_response_class=JSONBytes,
                  description="PinSage recommendations: similar items, user recommendations, inductive new items.",
                  **quiet)
    app.state.holder = holder
    add_error_handlers(app)
    guard = Depends(token_check(token))
    reads = [guard] if protect_reads else []
    registry, requests_total, latency = prometheus_metrics(current)
    app.include_router(read_routes(current, reads, history_schema(max_history), registry, read_only))
    if not read_only:
        app.include_router(write_routes(holder, [guard]))
    add_explorer_routes(app, current, reads, JSONBytes)
    app.add_middleware(BodyLimitMiddleware, limit=max_body_bytes)
    app.add_middleware(MetricsMiddleware, requests_total=requests_total, latency=latency)
    return app


def add_error_handlers(app: FastAPI) -> None:
    """Every error answers ``{"error": "..."}`` with the status that names what was wrong."""

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

    for error, status in ((UnknownIdError, 404), (ArtifactError, 422), (LogWriteError, 507)):
        app.add_exception_handler(error, _fixed_status(status))

    @app.exception_handler(NewItemError)
    async def _new_item(request, exc):
        return fail(exc.status, str(exc))


def _fixed_status(status: int) -> Callable:
    async def handler(request, exc):
        return fail(status, str(exc))

    return handler


def token_check(token: Optional[str]) -> Callable:
    """The dependency that answers 401 unless ``Authorization: Bearer <token>``."""

    async def check_token(request: Request) -> None:  # async: no thread-pool hop per request
        got = request.headers.get("authorization", "")
        scheme, _, value = got.partition(" ")
        if scheme.lower() != "bearer" or not token or not hmac.compare_digest(value.strip().encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token (Authorization: Bearer $PINSAGE_SERVE_TOKEN)",
                                headers={"WWW-Authenticate": "Bearer"})

    return check_token


def prometheus_metrics(current: Callable[[], ServiceState]):
    """``(registry, requests_total, latency)``; the index-size gauges read the current state."""
    registry = CollectorRegistry()
    requests_total = Counter("pinsage_requests_total", "HTTP requests", ["endpoint", "method", "status"],
                             registry=registry)
    latency = Histogram("pinsage_request_seconds", "request latency", ["endpoint"], registry=registry,
                        buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0))
    index_items = Gauge("pinsage_index_items", "items in the live index", registry=registry)
    inserted_items = Gauge("pinsage_inserted_items", "items added after training (POST /items + log)",
                           registry=registry)
    index_items.set_function(lambda: current().num_items)
    inserted_items.set_function(lambda: current().num_items - current().rec.manifest["count"])
    return registry, requests_total, latency


def read_routes(current: Callable[[], ServiceState], reads: list, history_in: type, registry,
                read_only: bool) -> APIRouter:
    """``GET /items/{id}/similar``, ``GET /users/{id}/recommendations``, ``POST /recommendations``,
    ``GET /healthz``, ``GET /metrics``."""
    router = APIRouter()
    k_query = Query(10, ge=1, le=MAX_K, description=f"number of results, 1..{MAX_K}")

    @router.get("/items/{item_id}/similar", response_model=Answer, dependencies=reads)
    async def similar(item_id: str, k: int = k_query):
        return JSONBytes(current().rec.similar_items(item_id, k))

    @router.get("/users/{user_id}/recommendations", response_model=Answer, dependencies=reads)
    async def for_user(user_id: str, k: int = k_query):
        return JSONBytes(current().rec.for_user(user_id, k))

    @router.post("/recommendations", response_model=Answer, dependencies=reads)
    async def for_history(body: history_in):
        return JSONBytes(current().rec.for_history([str(h) for h in body.history], body.k))

    @router.get("/healthz")
    async def healthz():
        s = current()
        return {"status": "ok", "items": s.num_items, "base_items": s.rec.manifest["count"],
                "artifacts": str(s.folder), "identity": s.identity, "writable": not read_only,
                "inductive": s.embedder is not None, "replayed": s.replayed}

    @router.get("/metrics")
    async def metrics():
        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router


def write_routes(holder: Dict[str, Any], writes: list) -> APIRouter:
    """``POST /items`` and ``POST /admin/reload`` (both behind the token).

    Group commit: POST /items requests queue up; one task at a time takes all that are queued (up
    to MAX_BATCH), embeds them as one batch and encodes their log lines off the event loop, appends
    the lines with one write + one fsync, then inserts them into the index in the loop (log order ==
    index order; reads never see a half-made insert) and only then answers each request: an
    acknowledged item is on disk."""
    router = APIRouter()
    write_lock = asyncio.Lock()
    queue: List[tuple] = []
    writer = {"running": False}

    async def drain():
        try:
            while queue:
                batch = queue[:MAX_BATCH]
                del queue[:MAX_BATCH]
                await _commit_batch(holder, write_lock, batch)
        finally:
            writer["running"] = False

    @router.post("/items", status_code=201, dependencies=writes)
    async def add_item(body: NewItemIn):
        fut = asyncio.get_running_loop().create_future()
        queue.append((NewItem.from_dict(body.model_dump()), fut))
        if not writer["running"]:
            writer["running"] = True
            asyncio.ensure_future(drain())
        return JSONBytes(await fut, status_code=201)

    @router.post("/admin/reload", dependencies=writes)
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

    return router


def _embed_and_log(s: ServiceState, items: List[NewItem]) -> list:
    done, records = s.prepare(items)
    if records:
        s.log.append(records)  # one write + one fsync for the batch
    return done


async def _commit_batch(holder: Dict[str, Any], write_lock: asyncio.Lock, batch: List[tuple]) -> None:
    """One group commit: embed + log off the loop, insert in the loop, then answer each future."""
    items = [it for it, _ in batch]
    try:
        async with write_lock:
            s = holder["state"]
            done = await asyncio.to_thread(_embed_and_log, s, items)  # one thread hop a batch
            answers = s.commit_batch(items, done)
    except BaseException as e:  # nothing of this batch was acknowledged
        for _, fut in batch:
            if not fut.done():
                fut.set_exception(e)
        if not isinstance(e, Exception):
            raise
        return
    for (_, fut), a in zip(batch, answers):
        if not fut.done():
            (fut.set_exception if isinstance(a, NewItemError) else fut.set_result)(a)


# ----------------------------------------------------------------------------------------------
# ASGI middlewares
# ----------------------------------------------------------------------------------------------
class BodyLimitMiddleware:
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
            msg = await receive()
            if msg.get("type") == "http.request":
                seen[0] += len(msg.get("body", b""))
                if seen[0] > self.limit:
                    raise StarletteHTTPException(413, self._message())
            return msg

        await self.app(scope, limited, send)


class MetricsMiddleware:
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
