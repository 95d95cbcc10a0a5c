"""What ``pinsage serve`` and ``pinsage embed-new`` hold: one loaded artifact folder
(:class:`ServiceState`: the :class:`~app.recommend.Recommender`, the inductive embedder and the
items inserted since) and the append-only item log (:class:`ItemLog`).

The item log (default ``<DIR>.items.jsonl``, beside the artifact folder, so a new ``predict`` that
replaces the folder keeps it) holds one JSON line per inserted item: the request and the vectors
computed for it, each line with its own SHA-256.  At start every line is replayed: with the stored
vectors when it was written against the same artifacts (same ``manifest.json``), re-embedded from
the request otherwise; items already in the catalogue are skipped.  A torn last line (a crash
mid-write, never acknowledged) is ignored.
"""

import errno
import hashlib
import hmac
import json
import os
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np

from . import artifact_format as fmt
from .inductive import InductiveEmbedder, NewItem, NewItemError
from .recommend import ArtifactError, Recommender

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


def check_new_id(v) -> str:
    """A new item's id must be queryable as ``/items/{id}/similar``: no ``/``, no control characters."""
    s = str(v)
    if not s.strip() or len(s) > MAX_ID_CHARS or "/" in s or any(ord(c) < 32 or ord(c) == 127 for c in s):
        raise ValueError(f"id {s[:80]!r} is not usable: give 1-{MAX_ID_CHARS} characters without '/' or control "
                         "characters")
    return v
