"""The on-disk dataset cache folder: its format, the streaming writer, the checked opener.

A cache folder ``<cache_dir>/<dataset>-<key>/`` holds one plain ``.npy`` file per array and
``manifest.json`` (format name, format version, metadata, and per array its dtype, shape, byte size
and the SHA-256 of every byte). :class:`CacheWriter` builds it in a temp folder beside the target
(:meth:`~CacheWriter.put` per array as soon as the build has it, :meth:`~CacheWriter.finish` writes
the manifest and publishes with one ``rename``; two processes publishing the same folder both
succeed and one valid copy stays); temp folders of builds killed on this host are removed by the
next build. :func:`open_cache` checks every array against the manifest (whole-file digests,
remembered while a file is unchanged, ``datamodules.digests``) and raises :class:`CacheError`
for a folder of another format version or a damaged one. What goes into the folder and its key
is :mod:`datamodules.datasets`' business.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .digests import DigestMemo, sha256_file


#: format version of the cache folder (1 was a single ``.npz``); a cache of another version is rebuilt
CACHE_VERSION = 3  # 3: whole-file digests (2 hashed the first and last MiB)
CACHE_FORMAT = "pinsage-dataset-cache"
MANIFEST = "manifest.json"
_MIB = 1 << 20


class CacheError(Exception):
    """A dataset cache folder that cannot be used (old format, damaged): rebuild it."""


class CacheWriter:
    """The temp folder a cache is built in (beside ``path``): :meth:`put` writes an array as soon as
    the build has it and hands back a read-only memory map of the file (so the build holds one
    stage's arrays in RAM, not the whole cache); :meth:`finish` writes the manifest and publishes
    the folder with one ``rename``; :meth:`abort` removes it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(self.path)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.tmp-{_HOST}-{os.getpid()}-", dir=self.path.parent))
        self.entries: Dict[str, dict] = {}

    def put(self, name: str, arr) -> np.ndarray:
        arr = np.asarray(arr)
        if not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
        fn = self.tmp / f"{name}.npy"
        np.save(fn, arr, allow_pickle=False)
        self.entries[name] = {"dtype": arr.dtype.str, "shape": list(arr.shape), "bytes": fn.stat().st_size,
                              "digest": f"{fn.stat().st_size}:{sha256_file(fn)}"}
        if arr.nbytes < _MIB or arr.dtype.hasobject:
            return arr
        return np.load(fn, mmap_mode="r", allow_pickle=False)

    def finish(self, meta: dict, order: Optional[List[str]] = None) -> None:
        names = [k for k in (order or []) if k in self.entries] + [k for k in self.entries if k not in (order or [])]
        manifest = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "meta": meta,
                    "arrays": {k: self.entries[k] for k in names}}
        with open(self.tmp / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(self.tmp, 0o777 & ~_umask())
        _publish(self.tmp, self.path)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def open_cache(path: Path, mmap: bool = True):
    """``(manifest, {name: array})`` of a cache folder, every array checked against the manifest."""
    manifest = _read_manifest(path)
    arrays: Dict[str, np.ndarray] = {}
    memo = DigestMemo(path.parent)
    for name, e in manifest["arrays"].items():
        fn = path / f"{name}.npy"
        try:
            size = fn.stat().st_size
        except FileNotFoundError:
            raise CacheError(f"array file {fn.name} is missing") from None
        if size != e["bytes"]:
            raise CacheError(f"array file {fn.name} has {size} bytes, the manifest says {e['bytes']} (truncated?)")
        if memo.digest(fn) != e["digest"]:
            raise CacheError(f"array file {fn.name} does not match the digest in the manifest")
        try:
            arr = np.load(fn, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise CacheError(f"array file {fn.name} cannot be read: {err}") from None
        if arr.dtype.str != e["dtype"] or list(arr.shape) != list(e["shape"]):
            raise CacheError(f"array file {fn.name} holds {arr.dtype.str} {list(arr.shape)}, the manifest "
                             f"says {e['dtype']} {e['shape']}")
        arrays[name] = arr
    memo.save()
    return manifest, arrays


def _read_manifest(path: Path) -> dict:
    mf = path / MANIFEST
    if not path.is_dir():
        raise CacheError(f"{path} is not a cache folder")
    try:
        manifest = json.loads(mf.read_text())
    except FileNotFoundError:
        raise CacheError(f"{MANIFEST} is missing") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise CacheError(f"{MANIFEST} is not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
        raise CacheError(f"{MANIFEST} is not a {CACHE_FORMAT} manifest")
    if manifest.get("version") != CACHE_VERSION:
        raise CacheError(f"it was written in format version {manifest.get('version')!r}, this version reads "
                         f"{CACHE_VERSION}")
    if not isinstance(manifest.get("arrays"), dict) or not isinstance(manifest.get("meta"), dict):
        raise CacheError(f"{MANIFEST} lacks its 'arrays' or 'meta' entry")
    return manifest


def _publish(tmp: Path, path: Path) -> None:
    """Rename the finished folder ``tmp`` to ``path`` (race-safe across processes and nodes)."""
    for attempt in range(5):
        if path.exists() and not path.is_dir():
            raise OSError(f"cannot write the dataset cache {path}: a file that is not a cache folder is in the way")
        try:
            os.rename(tmp, path)
            return
        except OSError as err:
            if err.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
                raise
        try:  # someone else published first: keep theirs when it is valid
            open_cache(path)
            shutil.rmtree(tmp, ignore_errors=True)
            return
        except CacheError:
            pass
        aside = path.with_name(f".{path.name}.stale-{os.getpid()}-{attempt}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            continue
        _remove_cache_folder(aside)
    raise OSError(f"could not publish the dataset cache {path}: it keeps being replaced by other processes")


_HOST = "".join(c if c.isalnum() else "_" for c in os.uname().nodename)


def _remove_stale_temps(path: Path) -> None:
    """Temp folders of builds killed on this host (their process is gone) are removed."""
    prefix = f".{path.name}.tmp-{_HOST}-"
    for d in path.parent.glob(prefix + "*"):
        try:
            pid = int(d.name[len(prefix):].split("-", 1)[0])
        except ValueError:
            continue
        try:
            os.kill(pid, 0)
            continue  # still building
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        if d.is_dir():
            _remove_cache_folder(d)


def _remove_cache_folder(path: Path) -> None:
    """Remove a cache folder we wrote (only ``*.npy`` and the manifest; anything else stays)."""
    for f in path.iterdir():
        if f.is_file() and (f.suffix == ".npy" or f.name == MANIFEST):
            f.unlink()
    try:
        path.rmdir()
    except OSError:
        pass


def default_cache_dir() -> Path:
    return Path(os.environ.get("PINSAGE_CACHE", Path.home() / ".cache" / "pinsage"))
