"""Whole-file SHA-256 digests, remembered across runs while a file is provably unchanged.

The dataset cache key hashes every input file, and a cache's arrays are checked against the
digests its build recorded; both need the digest of *every* byte (a same-size edit in the middle
of a file, or a flipped byte in the middle of an array, must be noticed), but reading gigabytes on
every warm start would cost what the cache saves.  So a digest is computed once and remembered in
``<folder>/digests.json`` under the file's identity: device, inode, size, mtime and ctime in
nanoseconds.  Any write to the file changes its ctime (which, unlike the mtime, no user tool can
set back), so a remembered digest is used only for the very bytes it was computed from.  Files
changed in the last :data:`RACY_SECONDS` are not remembered (a write in the same clock tick as the
digest would keep the ctime).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Dict, Optional

MEMO = "digests.json"
RACY_SECONDS = 2.0
MAX_ENTRIES = 10_000
_BLOCK = 8 << 20


def sha256_file(path: Path) -> str:
    """SHA-256 hex of every byte of ``path`` (read in 8 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def _identity(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


class DigestMemo:
    """``digest(path)`` -> ``"<size>:<sha256 of the whole file>"``, remembered in ``folder/digests.json``
    (best effort: a memo that cannot be read or written only costs a re-read)."""

    def __init__(self, folder: Optional[Path]):
        self.path = Path(folder) / MEMO if folder is not None else None
        self._memo: Optional[Dict[str, str]] = None
        self._dirty = False

    def _load(self) -> Dict[str, str]:
        if self._memo is None:
            self._memo = {}
            if self.path is not None:
                try:
                    memo = json.loads(self.path.read_text())
                    if isinstance(memo, dict):
                        self._memo = {str(k): str(v) for k, v in memo.items()}
                except (OSError, ValueError):
                    pass
        return self._memo

    def digest(self, path: Path) -> str:
        st = os.stat(path)
        key = _identity(st)
        memo = self._load()
        if key in memo:
            return memo[key]
        value = f"{st.st_size}:{sha256_file(path)}"
        if _identity(os.stat(path)) == key and time.time() - st.st_ctime_ns / 1e9 > RACY_SECONDS:
            memo[key] = value
            self._dirty = True
        return value

    def save(self) -> None:
        if not self._dirty or self.path is None:
            return
        memo = dict(list(self._memo.items())[-MAX_ENTRIES:])
        tmp = self.path.with_name(f".{MEMO}.tmp-{os.getpid()}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(memo))
            os.replace(tmp, self.path)
            self._dirty = False
        except OSError:
            try:
                tmp.unlink()
            except OSError:
                pass
