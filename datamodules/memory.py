"""Memory this process may still use, and whether reading a text log fits in it (issue 20 item 13).

A log too large for memory used to fail minutes into the read (a ``MemoryError``, or the kernel's
OOM killer under a container limit). :func:`check_log_fits` answers before the read: it samples
the file's head, estimates the rows and the memory the read takes, and raises
:class:`LogTooLarge` (one line: the file, its size, the estimate, what is available and the
largest log that would fit) when the estimate exceeds :func:`available_bytes`.

The estimate is a *lower bound* of the read's peak (``pandas.read_csv`` with the C parser's
whole-file tokenizer, then the id columns densified): the file's bytes (the token stream), 12
bytes per field (the tokenizer's per-field and per-line records), the parsed columns as the head's own
``DataFrame.memory_usage(deep=True)``, string ids once more as Python ``str`` objects and 16
bytes per row (dense user and item indices). Measured against the real peak of ``read_table_log`` on 4M-row logs (ids as
integers or strings, with and without time and weight columns) it is 0.80-0.97 of it, so a log
that fits is not refused; one just above the line may still fail in the read (and the dataset
build after the read needs memory of its own).

A Parquet file is estimated from its metadata's row count and its first batch
(:func:`estimate_parquet_read`).

Available memory: the smallest of ``MemAvailable`` (+ free swap) and, for every cgroup above
this process (v1 ``memory.limit_in_bytes``, v2 ``memory.max``), its limit less its usage, the
reclaimable page cache (``inactive_file``) not counted as used.
``PINSAGE_MEMORY_CHECK=0`` turns the check off (read anyway).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Optional, Sequence

from .interactions import DataError

GB = 2**30
HEAD_BYTES = 1 << 20  # the sample the bytes per row and the parsed size per row come from
_UNLIMITED = 2**60    # cgroup v1 writes ~2^63 for "no limit"


class LogTooLarge(DataError):
    """The log cannot be read in the memory available (the message says how much would fit)."""


def human(n: float) -> str:
    """``5.00 GB`` / ``12.3 MB``: bytes as a person reads them (GB = 2^30 bytes)."""
    return f"{n / GB:.2f} GB" if n >= GB else f"{n / 2**20:.1f} MB"


def _read_int(p: Path) -> Optional[int]:
    try:
        s = p.read_text().strip()
    except OSError:
        return None
    return None if s in ("", "max") else int(s)


def _inactive_file(stat: Path, key: str) -> int:
    try:
        for line in stat.read_text().splitlines():
            k, _, v = line.partition(" ")
            if k == key:
                return int(v)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_rooms(proc_cgroup: Path = Path("/proc/self/cgroup"), fs: Path = Path("/sys/fs/cgroup")) -> list:
    """``(room, limit)`` of every memory-limited cgroup above this process (v1 and v2)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        _, ctrls, path = line.split(":", 2)
        if "memory" in ctrls.split(","):  # v1
            base, files = fs / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        elif ctrls == "":  # v2 (unified); hybrid hosts mount it under unified/
            base = fs if (fs / "cgroup.controllers").exists() else fs / "unified"
            files = ("memory.max", "memory.current", "inactive_file")
        else:
            continue
        parts = [p for p in path.split("/") if p]
        for depth in range(len(parts), -1, -1):  # this cgroup and every ancestor up to the mount's root
            d = base.joinpath(*parts[:depth])
            limit = _read_int(d / files[0])
            if limit is None or limit >= _UNLIMITED:
                continue
            used = (_read_int(d / files[1]) or 0) - _inactive_file(d / "memory.stat", files[2])
            out.append((max(limit - max(used, 0), 0), limit))
    return out


def _meminfo(meminfo: Path = Path("/proc/meminfo")) -> Optional[int]:
    try:
        kb = {k: int(v.split()[0]) for k, v in (ln.split(":", 1) for ln in meminfo.read_text().splitlines())
              if k in ("MemAvailable", "SwapFree")}
    except (OSError, ValueError):
        return None
    return (kb["MemAvailable"] + kb.get("SwapFree", 0)) * 1024 if "MemAvailable" in kb else None


def available_bytes() -> Optional[int]:
    """Bytes this process can still allocate (see module docstring); ``None`` when unknown."""
    found = [r for r, _ in _cgroup_rooms()]
    m = _meminfo()
    if m is not None:
        found.append(m)
    return min(found) if found else None


def memory_limit_note() -> str:
    """``" (cgroup memory limit 4.00 GB)"`` when a cgroup limit is the binding one, else ``""``."""
    rooms = _cgroup_rooms()
    m = _meminfo()
    if rooms and (m is None or min(rooms)[0] <= m):
        return f" (cgroup memory limit {human(min(rooms)[1])})"
    return ""


def _head(path: Path, size: int) -> bytes:
    with open(path, "rb") as f:
        head = f.read(min(size, HEAD_BYTES))
    if len(head) < size:  # cut at the last whole line
        head = head[: head.rfind(b"\n") + 1]
    return head


def estimate_text_read(path, *, sep: str, header: bool, names: Optional[Sequence[str]], encoding: str,
                       str_cols: Sequence[str] = ()) -> Optional[dict]:
    """``{"size", "rows", "head_rows", "bytes_per_row", "need"}`` of reading delimited ``path``
    (see module docstring), or ``None`` when the head gives no rows to go by."""
    import pandas as pd

    path = Path(path)
    size = path.stat().st_size
    head = _head(path, size)
    if not head:
        return None
    text, sep_ = (head.replace(sep.encode(), b"\t"), "\t") if len(sep) > 1 else (head, sep)
    try:
        df = pd.read_csv(io.BytesIO(text), sep=sep_, header=0 if header else None,
                         names=list(names) if names is not None else None, index_col=False, encoding=encoding,
                         low_memory=False, dtype={c: str for c in str_cols} or None)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError):
        return None  # the read itself will say what is wrong with the file
    rows_head = len(df)
    if rows_head == 0:
        return None
    first = head.find(b"\n") + 1 if header else 0
    bytes_per_row = max((len(head) - first) / rows_head, 1.0)
    rows = int((size - first) / bytes_per_row)
    parsed = float(df.memory_usage(deep=True, index=False).sum()) / rows_head
    # string ids become Python str objects (an object array: a pointer + the object's ~49 + len bytes)
    as_objects = sum(57.0 + float(df[c].astype(str).str.len().mean()) for c in str_cols if c in df.columns)
    per_row = 12.0 * df.shape[1] + parsed + as_objects + 16.0
    stream = size * (3 if len(sep) > 1 else 1)  # a multi-character separator: the bytes, rewritten, parsed
    return {"size": size, "rows": rows, "head_rows": rows_head, "bytes_per_row": bytes_per_row,
            "need": int(stream + rows * per_row), "fit_ratio": (3 if len(sep) > 1 else 1) + per_row / bytes_per_row}


def estimate_parquet_read(path, str_cols: Sequence[str] = ()) -> Optional[dict]:
    """As :func:`estimate_text_read` for a Parquet file: the rows from its metadata; per row the
    Arrow table, the DataFrame (both measured on the first batch), string ids as Python objects and
    the dense indices (a lower bound too: the measured peak was 1.5-2.6x it on 4M-row files)."""
    try:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        rows = int(pf.metadata.num_rows)
        batch = next(pf.iter_batches(batch_size=20_000), None)
    except Exception:  # not readable as Parquet: the read itself says what is wrong
        return None
    if batch is None or batch.num_rows == 0:
        return None
    df = batch.to_pandas()
    n = batch.num_rows
    as_objects = sum(57.0 + float(df[c].astype(str).str.len().mean()) for c in str_cols if c in df.columns)
    per_row = batch.nbytes / n + float(df.memory_usage(deep=True, index=False).sum()) / n + as_objects + 16.0
    size = Path(path).stat().st_size
    need = int(rows * per_row)
    return {"size": size, "rows": rows, "head_rows": n, "bytes_per_row": size / max(rows, 1), "need": need,
            "fit_ratio": need / max(size, 1)}


def check_log_fits(path, *, sep: str = ",", header: bool = True, names: Optional[Sequence[str]] = None,
                   encoding: str = "utf-8", str_cols: Sequence[str] = (), what: str = "file",
                   parquet: bool = False) -> None:
    """Raise :class:`LogTooLarge` before reading ``path`` (delimited text, or Parquet with
    ``parquet``) when its read cannot fit in memory."""
    if os.environ.get("PINSAGE_MEMORY_CHECK", "") == "0":
        return
    avail = available_bytes()
    if avail is None:
        return
    est = (estimate_parquet_read(path, str_cols) if parquet else
           estimate_text_read(path, sep=sep, header=header, names=names, encoding=encoding, str_cols=str_cols))
    if est is None or est["need"] <= avail:
        return
    fit = avail / est["fit_ratio"]
    sample = "" if parquet else f" in its first {est['head_rows']:,}"
    raise LogTooLarge(
        f"{path}: the {what} is {human(est['size'])}, about {est['rows']:,} rows ({est['bytes_per_row']:.0f} bytes "
        f"a row{sample}); reading it needs at least {human(est['need'])} of memory but "
        f"{human(avail)} are available{memory_limit_note()}; a {what} of up to about {human(fit)} "
        f"(~{int(fit / est['bytes_per_row']):,} rows) would fit: use a sample of it or a machine with more memory "
        "(PINSAGE_MEMORY_CHECK=0 reads it anyway)")
