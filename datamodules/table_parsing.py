"""Delimited and Parquet tables parsed into typed columns, every bad cell reported with its place.

The building blocks of the readers (:mod:`datamodules.readers`, :mod:`datamodules.table_reader`):
:func:`read_delimited` keeps row labels that map back to 1-based file lines (as an editor shows
them), :func:`read_any` picks CSV/TSV or Parquet by suffix (after the memory check of
:func:`datamodules.memory.check_log_fits`), and the column parsers (:func:`int_ids`,
:func:`str_ids`, :func:`finite_numbers`, :func:`unix_seconds`, :func:`multi_hot`, ...) raise a
:class:`DataError` that names the file, the line, the bad value and the fix.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from .interactions import DataError
from .memory import check_log_fits

_YEAR_IN_TITLE = r"\((\d{4})\)\s*$"
_NO_GENRES = "(no genres listed)"


def require_file(folder, name: str, source: str) -> Path:
    """``folder/name`` or a DataError naming the file, the folder searched and the data's origin."""
    p = Path(folder) / name
    if not p.is_file():
        raise DataError(
            f"missing file {name!r} in folder {str(Path(folder))!r}; the data comes from {source} "
            f"(nothing is downloaded: unpack it so that {name!r} is directly in that folder)"
        )
    return p


class Table:
    """A parsed delimited file plus how to turn a row label into ``"<file> line N"``."""

    def __init__(self, df: pd.DataFrame, path: Path, first_line: Optional[int]):
        self.df = df
        self.path = path
        self.first_line = first_line  # line number of row label 0; None -> "row N" (Parquet)

    def where(self, label) -> str:
        if self.first_line is None:
            return f"{self.path} row {int(label) + 1}"
        return f"{self.path} line {int(label) + self.first_line}"


def read_delimited(
    path: Path,
    sep: str,
    *,
    header: bool,
    names: Optional[Sequence[str]] = None,
    encoding: str = "utf-8",
    quoting: int = csv.QUOTE_MINIMAL,
    str_cols: Sequence[str] = (),
) -> Table:
    """Read a delimited text file with row labels that map back to file lines.

    Blank lines are kept while parsing (so label ``r`` is line ``r + first_line``) and dropped
    afterwards. A multi-character separator (``::``) is rewritten to a tab first so the fast C
    parser can be used. CRLF line endings are handled by pandas.
    """
    if names is not None:
        _check_field_count(path, sep, names, encoding, quoting)
    src = path
    if len(sep) > 1:
        raw = path.read_bytes()
        if b"\t" in raw:
            line = raw[: raw.index(b"\t")].count(b"\n") + 1
            raise DataError(f"{path} line {line}: unexpected tab character in a {sep!r}-separated file")
        src = io.BytesIO(raw.replace(sep.encode(), b"\t"))
        sep = "\t"
    try:
        df = pd.read_csv(
            src, sep=sep, header=0 if header else None, names=list(names) if names is not None else None,
            index_col=False, skip_blank_lines=False, encoding=encoding, quoting=quoting,
            low_memory=False, dtype={c: str for c in str_cols} or None,  # string ids byte for byte ("07" != "7")
        )
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty (no rows)") from None
    except pd.errors.ParserError as e:
        m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(e))
        if m:
            raise DataError(
                f"{path} line {m.group(2)}: expected {m.group(1)} fields separated by {sep!r}, found "
                f"{m.group(3)}; fix or remove that line (or quote fields that contain {sep!r})"
            ) from None
        raise DataError(f"{path}: cannot parse the file ({e}); check the separator and quoting") from None
    except UnicodeDecodeError:
        # pandas decodes in chunks: its error's offset is within a chunk, so find the file's own
        raw = path.read_bytes()
        try:
            raw.decode(encoding)
            where = "a byte"
        except UnicodeDecodeError as e:
            line = raw[:e.start].count(b"\n") + 1
            where = f"line {line}: byte {e.start} (0x{raw[e.start]:02x})"
        raise DataError(
            f"{path} {where} is not valid {encoding} text; re-save the file as UTF-8 or set encoding "
            "(MovieLens files before 2016 are latin-1)"
        ) from None
    blank = df.isna().all(axis=1).to_numpy()
    if blank.any():
        df = df.loc[~blank]
    return Table(df, path, 2 if header else 1)


def _check_field_count(path: Path, sep: str, names: Sequence[str], encoding: str, quoting: int) -> None:
    """The first non-blank line has one field per name (pandas would silently drop extra fields)."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.decode(encoding, errors="replace").rstrip("\r\n")
            if line.strip():
                break
        else:
            return
    if len(sep) > 1 or quoting == csv.QUOTE_NONE:
        n = len(line.split(sep))
    else:
        n = len(next(csv.reader([line], delimiter=sep)))
    if n != len(names):
        raise DataError(
            f"{path} line {lineno}: has {n} fields separated by {sep!r} but {len(names)} column names were given "
            f"({list(names)}); give one name per field, in file order"
        )


def read_any(path: Path, *, sep: str, header: bool, columns: Optional[Sequence[str]], encoding: str,
              str_cols: Sequence[str] = ()) -> Table:
    """CSV / TSV or Parquet (by suffix)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file {str(path)!r} does not exist; check the path (relative paths are resolved "
                        "against the dataset folder)")
    if path.suffix.lower() in (".parquet", ".pq"):
        check_log_fits(path, str_cols=str_cols, parquet=True)  # too large for memory: one line, now
        try:
            df = pd.read_parquet(path)
        except Exception as e:  # pyarrow raises many types
            raise DataError(f"{path}: cannot read the Parquet file ({e})") from None
        if columns is not None:
            if len(columns) != df.shape[1]:
                raise DataError(f"{path}: columns lists {len(columns)} names but the file has {df.shape[1]} "
                                f"columns {list(df.columns)}; give one name per column")
            df.columns = list(columns)
        return Table(df.reset_index(drop=True), path, None)
    if not header and columns is None:
        raise DataError(f"{path}: header is false, so name the columns: set columns: [user, item, ...] "
                        "(one name per field, in file order)")
    # a file too large for memory: one line now, not a MemoryError minutes into the read
    check_log_fits(path, sep=sep, header=header, names=columns, encoding=encoding, str_cols=str_cols)
    return read_delimited(path, sep, header=header, names=columns, encoding=encoding, str_cols=str_cols)


def _looks_like_data(names) -> bool:
    """True when a column name parses as a number (real headers are names, so it is a data row)."""
    for n in names:
        try:
            float(str(n))
            return True
        except ValueError:
            pass
    return False


def show_value(v) -> str:
    """A cell value as it reads in the file, quoted (``'-1'``, ``'abc'``)."""
    if hasattr(v, "item"):
        v = v.item()
    return repr(str(v))


def _missing_value(t: Table, col: str, isna: np.ndarray):
    label = t.df.index[np.flatnonzero(isna)[0]]
    raise DataError(f"{t.where(label)}: column {col!r} is empty (missing field); every row needs "
                    f"all {t.df.shape[1]} fields")


def int_ids(t: Table, col: str, what: str) -> np.ndarray:
    """Column ``col`` as non-negative int64 ids, or a DataError naming line and value."""
    s = t.df[col]
    isna = s.isna().to_numpy()
    if isna.any():
        _missing_value(t, col, isna)
    if pd.api.types.is_integer_dtype(s.dtype):
        big = (s.to_numpy() > np.iinfo(np.int64).max) if pd.api.types.is_unsigned_integer_dtype(s.dtype) \
            else np.zeros(len(s), bool)
        vals = np.where(big, 0, s.to_numpy()).astype(np.int64)
        bad = (vals < 0) | big
    else:
        num = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64)
        with np.errstate(invalid="ignore"):
            # ids at or above 2^53 went through a float here: two of them could become one
            big = np.isfinite(num) & (num >= 2.0 ** 53)
            bad = ~np.isfinite(num) | (num < 0) | (num != np.floor(num)) | big
        vals = np.where(bad, 0, num).astype(np.int64)
    if big.any() and np.flatnonzero(big)[0] == np.flatnonzero(bad)[0]:
        k = int(np.flatnonzero(big)[0])
        raise DataError(
            f"{t.where(t.df.index[k])}: {what} id {show_value(s.iloc[k])} in column {col!r} is too large for an "
            "integer id (at most 2^63 - 1, read exactly); set id_type: str to read ids as strings"
        )
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{t.where(t.df.index[k])}: {what} id {show_value(s.iloc[k])} in column {col!r} is not a non-negative "
            "integer; fix the value, or set id_type: str to accept any string id"
        )
    return vals


def str_ids(t: Table, col: str) -> np.ndarray:
    s = t.df[col]
    isna = s.isna().to_numpy()
    if isna.any():
        _missing_value(t, col, isna)
    out = s.astype(str).to_numpy(dtype=object)
    if pd.api.types.is_float_dtype(s.dtype):  # "12" read as 12.0 -> "12"
        num = s.to_numpy(dtype=np.float64)
        whole = num == np.floor(num)
        out[whole] = num[whole].astype(np.int64).astype(str)
    return out


def id_column(t: Table, col: str, what: str, id_type: str) -> np.ndarray:
    return int_ids(t, col, what) if id_type == "int" else str_ids(t, col)


def finite_numbers(t: Table, col: str, what: str, hint: str) -> np.ndarray:
    """Column ``col`` as finite float64, or a DataError naming line and value."""
    s = t.df[col]
    isna = s.isna().to_numpy()
    if isna.any():
        _missing_value(t, col, isna)
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        num = s.to_numpy(dtype=np.float64)
    else:
        num = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(num)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise DataError(f"{t.where(t.df.index[k])}: {what} {show_value(s.iloc[k])} in column {col!r} is not a "
                        f"number; {hint}")
    return num


def unix_seconds(t: Table, col: str) -> np.ndarray:
    num = finite_numbers(t, col, "timestamp", "give Unix seconds (integer or float), or leave time_col unset")
    return num.astype(np.int64)


def years_from_titles(titles: pd.Series) -> np.ndarray:
    y = titles.astype(str).str.extract(_YEAR_IN_TITLE, expand=False)
    return pd.to_numeric(y, errors="coerce").fillna(-1).to_numpy(dtype=np.int64)


def multi_hot(cats: pd.Series, sep: str) -> Tuple[List[str], np.ndarray]:
    """``"A|B"`` strings -> (sorted names, uint8 multi-hot); MovieLens' "(no genres listed)" = none."""
    s = cats.fillna("").astype(str).str.strip()
    d = s.str.get_dummies(sep=sep)
    d = d.drop(columns=[c for c in d.columns if c.strip() in ("", _NO_GENRES)])
    return [str(c) for c in d.columns], d.to_numpy(dtype=np.uint8)


def check_columns(t: Table, wanted: dict, header: bool, kind: str) -> None:
    """Every wanted column exists, else a DataError (with the no-header-row diagnosis)."""
    have = [str(c) for c in t.df.columns]
    missing = [(opt, c) for opt, c in wanted.items() if c is not None and c not in have]
    if not missing:
        return
    opt, col = missing[0]
    if len(have) == 1:
        for name, sep in (("tab", "\t"), ("semicolon", ";"), ("pipe", "|"), ("comma", ",")):
            if sep in have[0]:
                raise DataError(f"{t.path}: {kind} has no column {col!r} ({opt}); its only column is {have[0]!r}, "
                                f"which looks {name}-separated: set sep: {sep!r}")
    if header and t.first_line is not None and _looks_like_data(have):
        order = [c for c in wanted.values() if c is not None]
        names = (order + [f"col{k + 1}" for k in range(len(order), len(have))])[: len(have)]
        hdr = "items_header" if kind == "item table" else "header"
        cols = "items_columns" if kind == "item table" else "columns"
        raise DataError(
            f"{t.path}: file has no header row (its first line {have} is data): set {hdr}: false and "
            f"{cols}: [{', '.join(names)}] (one name per field, in file order)"
        )
    raise DataError(f"{t.path}: {kind} has no column {col!r} ({opt}); its columns are {have}; set {opt} to one "
                    "of them" + ("" if header else " or fix columns"))
