"""Readers: raw recommendation file formats -> :class:`~datamodules.interactions.Interactions`.

Every reader takes the folder (or file) holding the raw files, never downloads anything, parses
with vectorised numpy/pandas code and reports bad input as a :class:`DataError` that names the
file, the 1-based line number (as an editor shows it) where there is one, the bad value and the
fix.

Formats:

* :func:`read_movielens_100k` - GroupLens ml-100k (``u.data``, ``u.item``, ``u.genre``).
* :func:`read_movielens_1m` - GroupLens ml-1m (``ratings.dat``, ``movies.dat``).
* :func:`read_lightgcn` - the LightGCN / NGCF splits (Gowalla, Yelp2018, Amazon-Book):
  ``train.txt`` / ``test.txt`` with ``user item item ...`` lines.
* :func:`read_ncf` - the NCF leave-one-out splits (``<name>.train.rating``, ``.test.rating``,
  ``.test.negative``).
* :func:`read_table_log` - a user's own CSV / Parquet log plus an optional item table.
* :func:`read_item_features` - an external numeric item feature table aligned to dense items.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from .interactions import DataError, Interactions, ItemTable
from .memory import check_log_fits

__all__ = [
    "MOVIELENS_100K_GENRES",
    "read_movielens_100k",
    "read_movielens_1m",
    "read_lightgcn",
    "read_ncf",
    "read_table_log",
    "read_item_features",
]

#: The 19 genre flags of ml-100k ``u.item``, in column order (used when ``u.genre`` is absent).
MOVIELENS_100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
]

_SRC_100K = "GroupLens ml-100k.zip (https://grouplens.org/datasets/movielens/100k/)"
_SRC_1M = "GroupLens ml-1m.zip (https://grouplens.org/datasets/movielens/1m/)"
_SRC_LIGHTGCN = "the LightGCN authors' Data/<dataset>/ folder (github.com/kuandeng/LightGCN)"
_SRC_NCF = "the NCF authors' Data/ folder (github.com/hexiangnan/neural_collaborative_filtering)"
_YEAR_IN_TITLE = r"\((\d{4})\)\s*$"
_NO_GENRES = "(no genres listed)"


# --------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------
def _require(folder, name: str, source: str) -> Path:
    """``folder/name`` or a DataError naming the file, the folder searched and the data's origin."""
    p = Path(folder) / name
    if not p.is_file():
        raise DataError(
            f"missing file {name!r} in folder {str(Path(folder))!r}; the data comes from {source} "
            f"(nothing is downloaded: unpack it so that {name!r} is directly in that folder)"
        )
    return p


class _Table:
    """A parsed delimited file plus how to turn a row label into ``"<file> line N"``."""

    def __init__(self, df: pd.DataFrame, path: Path, first_line: Optional[int]):
        self.df = df
        self.path = path
        self.first_line = first_line  # line number of row label 0; None -> "row N" (Parquet)

    def where(self, label) -> str:
        if self.first_line is None:
            return f"{self.path} row {int(label) + 1}"
        return f"{self.path} line {int(label) + self.first_line}"


def _read_delimited(
    path: Path,
    sep: str,
    *,
    header: bool,
    names: Optional[Sequence[str]] = None,
    encoding: str = "utf-8",
    quoting: int = csv.QUOTE_MINIMAL,
    str_cols: Sequence[str] = (),
) -> _Table:
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
    return _Table(df, path, 2 if header else 1)


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


def _read_any(path: Path, *, sep: str, header: bool, columns: Optional[Sequence[str]], encoding: str,
              str_cols: Sequence[str] = ()) -> _Table:
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
        return _Table(df.reset_index(drop=True), path, None)
    if not header and columns is None:
        raise DataError(f"{path}: header is false, so name the columns: set columns: [user, item, ...] "
                        "(one name per field, in file order)")
    # a file too large for memory: one line now, not a MemoryError minutes into the read
    check_log_fits(path, sep=sep, header=header, names=columns, encoding=encoding, str_cols=str_cols)
    return _read_delimited(path, sep, header=header, names=columns, encoding=encoding, str_cols=str_cols)


def _looks_like_data(names) -> bool:
    """True when a column name parses as a number (real headers are names, so it is a data row)."""
    for n in names:
        try:
            float(str(n))
            return True
        except ValueError:
            pass
    return False


def _show(v) -> str:
    """A cell value as it reads in the file, quoted (``'-1'``, ``'abc'``)."""
    if hasattr(v, "item"):
        v = v.item()
    return repr(str(v))


def _missing_value(t: _Table, col: str, isna: np.ndarray):
    label = t.df.index[np.flatnonzero(isna)[0]]
    raise DataError(f"{t.where(label)}: column {col!r} is empty (missing field); every row needs "
                    f"all {t.df.shape[1]} fields")


def _int_ids(t: _Table, col: str, what: str) -> np.ndarray:
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
            f"{t.where(t.df.index[k])}: {what} id {_show(s.iloc[k])} in column {col!r} is too large for an "
            "integer id (at most 2^63 - 1, read exactly); set id_type: str to read ids as strings"
        )
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{t.where(t.df.index[k])}: {what} id {_show(s.iloc[k])} in column {col!r} is not a non-negative "
            "integer; fix the value, or set id_type: str to accept any string id"
        )
    return vals


def _str_ids(t: _Table, col: str) -> np.ndarray:
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


def _ids(t: _Table, col: str, what: str, id_type: str) -> np.ndarray:
    return _int_ids(t, col, what) if id_type == "int" else _str_ids(t, col)


def _numbers(t: _Table, col: str, what: str, hint: str) -> np.ndarray:
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
        raise DataError(f"{t.where(t.df.index[k])}: {what} {_show(s.iloc[k])} in column {col!r} is not a "
                        f"number; {hint}")
    return num


def _timestamps(t: _Table, col: str) -> np.ndarray:
    num = _numbers(t, col, "timestamp", "give Unix seconds (integer or float), or leave time_col unset")
    return num.astype(np.int64)


def _years_from_titles(titles: pd.Series) -> np.ndarray:
    y = titles.astype(str).str.extract(_YEAR_IN_TITLE, expand=False)
    return pd.to_numeric(y, errors="coerce").fillna(-1).to_numpy(dtype=np.int64)


def _multi_hot(cats: pd.Series, sep: str) -> Tuple[List[str], np.ndarray]:
    """``"A|B"`` strings -> (sorted names, uint8 multi-hot); MovieLens' "(no genres listed)" = none."""
    s = cats.fillna("").astype(str).str.strip()
    d = s.str.get_dummies(sep=sep)
    d = d.drop(columns=[c for c in d.columns if c.strip() in ("", _NO_GENRES)])
    return [str(c) for c in d.columns], d.to_numpy(dtype=np.uint8)


# --------------------------------------------------------------------------------------------
# MovieLens
# --------------------------------------------------------------------------------------------
def read_movielens_100k(folder) -> Interactions:
    """Read GroupLens MovieLens-100K from ``folder`` (``u.data``, ``u.item``, optional ``u.genre``).

    ``u.data`` (tab: user, item, rating, timestamp) gives the log with ``weights`` = rating and
    ``timestamps``; ``u.item`` (``|``-separated, latin-1: id, title, release date, video date,
    url, 19 genre flags) gives titles, the 19 genre flags (named from ``u.genre`` when present)
    and the release year (from the release date, else ``(YYYY)`` in the title; -1 unknown).

    Why not ``torch_geometric.datasets.MovieLens100K``: it processes into a ``processed/`` folder
    beside ``raw/`` (the shared data folder is read-only), it reads only the fixed ``u1.base`` /
    ``u1.test`` split rather than the full ``u.data`` log our temporal split needs, and it returns
    a ``HeteroData`` of tensors without raw ids, titles or release years. Parsing the two small
    files directly is simpler and writes nothing.
    """
    folder = Path(folder)
    data = _require(folder, "u.data", _SRC_100K)
    item = _require(folder, "u.item", _SRC_100K)
    t = _read_delimited(data, "\t", header=False, names=["user", "item", "rating", "timestamp"])
    users = _int_ids(t, "user", "user")
    items = _int_ids(t, "item", "item")
    ratings = _numbers(t, "rating", "rating", "ratings must be numbers")
    ts = _timestamps(t, "timestamp")

    genres = list(MOVIELENS_100K_GENRES)
    gpath = folder / "u.genre"
    if gpath.is_file():
        g = _read_delimited(gpath, "|", header=False, names=["genre", "id"], encoding="latin-1",
                            quoting=csv.QUOTE_NONE)
        gid = _int_ids(g, "id", "genre")
        names = g.df["genre"].astype(str).to_numpy()[np.argsort(gid)]
        if len(names) != 19:
            raise DataError(f"{gpath}: expected 19 genres, found {len(names)}; restore the original u.genre "
                            f"from {_SRC_100K} or delete it to use the standard list")
        genres = [str(n) for n in names]
    cols = ["id", "title", "release", "video", "url"] + [f"g{k}" for k in range(19)]
    it = _read_delimited(item, "|", header=False, names=cols, encoding="latin-1", quoting=csv.QUOTE_NONE)
    ids = _int_ids(it, "id", "item")
    flags = it.df[cols[5:]]
    fl = flags.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isin(fl, (0.0, 1.0))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(f"{it.where(it.df.index[r])}: genre flag {c + 1} ({genres[c]}) is "
                        f"{_show(flags.iloc[r, c])}; each of the 19 genre fields must be 0 or 1")
    titles = it.df["title"].fillna("").astype(str)
    rel = it.df["release"].fillna("").astype(str).str.extract(r"(\d{4})\s*$", expand=False)
    years = pd.to_numeric(rel, errors="coerce").fillna(-1).to_numpy(dtype=np.int64)
    from_title = _years_from_titles(titles)
    years = np.where(years < 0, from_title, years)
    table = ItemTable(ids=ids, titles=titles.to_numpy(dtype=object), category_names=genres,
                      categories=fl.astype(np.uint8), years=years)
    return Interactions.from_raw(users, items, timestamps=ts, weights=ratings, item_table=table, source=str(data))


def read_movielens_1m(folder) -> Interactions:
    """Read GroupLens MovieLens-1M from ``folder``.

    ``ratings.dat``: ``UserID::MovieID::Rating::Timestamp``; ``movies.dat`` (latin-1):
    ``MovieID::Title (Year)::Genre1|Genre2``. Returns weights = rating, timestamps, titles,
    genres (multi-hot, sorted names) and years (from the title, -1 unknown).
    """
    folder = Path(folder)
    rpath = _require(folder, "ratings.dat", _SRC_1M)
    mpath = _require(folder, "movies.dat", _SRC_1M)
    t = _read_delimited(rpath, "::", header=False, names=["user", "item", "rating", "timestamp"],
                        encoding="latin-1", quoting=csv.QUOTE_NONE)
    users = _int_ids(t, "user", "user")
    items = _int_ids(t, "item", "item")
    ratings = _numbers(t, "rating", "rating", "ratings must be numbers")
    ts = _timestamps(t, "timestamp")
    m = _read_delimited(mpath, "::", header=False, names=["id", "title", "genres"], encoding="latin-1",
                        quoting=csv.QUOTE_NONE)
    ids = _int_ids(m, "id", "item")
    titles = m.df["title"].fillna("").astype(str)
    names, cats = _multi_hot(m.df["genres"], "|")
    table = ItemTable(ids=ids, titles=titles.to_numpy(dtype=object), category_names=names, categories=cats,
                      years=_years_from_titles(titles))
    return Interactions.from_raw(users, items, timestamps=ts, weights=ratings, item_table=table, source=str(rpath))


# --------------------------------------------------------------------------------------------
# LightGCN / NGCF splits
# --------------------------------------------------------------------------------------------
_POW10 = 10 ** np.arange(19, dtype=np.int64)


def _parse_adjacency_lines(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """``user item item ...`` lines -> (users, items) int64, vectorised over the file's bytes.

    Tokens are runs of ASCII digits; spaces, tabs, CR and LF separate them. The first token of a
    line is the user, the rest are its items; a line with only a user id (or a blank line) adds no
    interaction.
    """
    b = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    if b.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    isdig = (b >= 48) & (b <= 57)
    ok = isdig | (b == 32) | (b == 9) | (b == 10) | (b == 13)
    if not ok.all():
        pos = int(np.flatnonzero(~ok)[0])
        line = int(np.count_nonzero(b[:pos] == 10)) + 1
        start = int(b[:pos].tobytes().rfind(b"\n")) + 1
        end = b.tobytes().find(b"\n", pos)
        text = b[start: end if end >= 0 else None].tobytes().decode("utf-8", "replace").strip()
        raise DataError(
            f"{path} line {line}: unexpected character {chr(b[pos])!r} in {text[:80]!r}; each line must be "
            "'user item item ...' with non-negative integer ids separated by spaces"
        )
    edge = np.diff(np.concatenate(([0], isdig.view(np.int8), [0])))
    starts = np.flatnonzero(edge == 1)
    ends = np.flatnonzero(edge == -1)
    lengths = ends - starts
    if lengths.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if lengths.max() > 18:
        k = int(np.argmax(lengths > 18))
        line = int(np.count_nonzero(b[: starts[k]] == 10)) + 1
        raise DataError(f"{path} line {line}: id {b[starts[k]:ends[k]].tobytes().decode()!r} is too large "
                        "(more than 18 digits)")
    digit_pos = np.flatnonzero(isdig)
    tok = np.repeat(np.arange(lengths.size), lengths)
    power = ends[tok] - digit_pos - 1
    contrib = (b[digit_pos].astype(np.int64) - 48) * _POW10[power]
    offsets = np.zeros(lengths.size, dtype=np.int64)
    np.cumsum(lengths[:-1], out=offsets[1:])
    values = np.add.reduceat(contrib, offsets)
    newlines = np.flatnonzero(b == 10)
    line_of = np.searchsorted(newlines, starts)
    first = np.ones(lengths.size, dtype=bool)
    first[1:] = line_of[1:] != line_of[:-1]
    user_of = values[first][np.cumsum(first) - 1]
    return user_of[~first], values[~first]


def read_lightgcn(folder) -> Interactions:
    """Read a LightGCN/NGCF split (Gowalla, Yelp2018, Amazon-Book) from ``folder``.

    ``train.txt`` and ``test.txt`` hold ``user item item ...`` lines (space separated, 0-based
    remapped ids; a line may hold only a user id). Rows are train rows (file order) then test
    rows; ``is_test`` marks the latter. There are no timestamps: file order is the time order.
    The remapped ids are kept as the raw ids (``user_list.txt`` / ``item_list.txt`` are not
    needed), so dense ids equal file ids when they are contiguous, as in the published splits.
    Users with no item in either file do not appear.
    """
    folder = Path(folder)
    train = _require(folder, "train.txt", _SRC_LIGHTGCN)
    test = _require(folder, "test.txt", _SRC_LIGHTGCN)
    u1, i1 = _parse_adjacency_lines(train)
    u2, i2 = _parse_adjacency_lines(test)
    if u1.size == 0:
        raise DataError(f"{train}: no interactions (every line is empty or holds only a user id)")
    is_test = np.zeros(u1.size + u2.size, dtype=bool)
    is_test[u1.size:] = True
    return Interactions.from_raw(np.concatenate([u1, u2]), np.concatenate([i1, i2]), is_test=is_test,
                                 source=str(train))


# --------------------------------------------------------------------------------------------
# NCF leave-one-out splits
# --------------------------------------------------------------------------------------------
def _read_rating_file(path: Path) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    t = _read_delimited(path, "\t", header=False, names=["user", "item", "rating", "timestamp"])
    if len(t.df) == 0:
        raise DataError(f"{path}: the file is empty (no rows)")
    return (_int_ids(t, "user", "user"), _int_ids(t, "item", "item"),
            _numbers(t, "rating", "rating", "ratings must be numbers"), _timestamps(t, "timestamp"))


def _read_negatives(path: Path) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(user,item)\\tneg1\\tneg2...`` -> (users, items, negatives [T, K], 1-based line numbers)."""
    try:
        df = pd.read_csv(path, sep="\t", header=None, index_col=False, skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty (no rows)") from None
    except pd.errors.ParserError as e:
        m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(e))
        if m:
            raise DataError(f"{path} line {m.group(2)}: expected {m.group(1)} tab-separated fields "
                            f"('(user,item)' then the negatives), found {m.group(3)}; every line needs "
                            "the same number of negatives") from None
        raise DataError(f"{path}: cannot parse the file ({e})") from None
    blank = df.isna().all(axis=1).to_numpy()
    if blank.any():
        df = df.loc[~blank]
    t = _Table(df, path, 1)
    pair = df[0].astype(str).str.extract(r"^\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)\s*$")
    bad = pair[0].isna().to_numpy()
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise DataError(f"{t.where(df.index[k])}: first field {_show(df.iloc[k, 0])} is not '(user,item)' "
                        "with integer ids")
    negs = df.iloc[:, 1:]
    if negs.shape[1] == 0:
        raise DataError(f"{path} line 1: no negatives after '(user,item)'; each line needs "
                        "tab-separated negative item ids")
    if all(pd.api.types.is_numeric_dtype(d) and not pd.api.types.is_bool_dtype(d) for d in negs.dtypes):
        num = negs.to_numpy(dtype=np.float64)
    else:
        num = negs.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        badn = ~np.isfinite(num) | (num < 0) | (num != np.floor(num))
    if badn.any():
        r, c = np.argwhere(badn)[0]
        v = negs.iloc[r, c]
        what = "is missing (fewer negatives than the other lines)" if pd.isna(v) else f"{_show(v)} is not a non-negative integer"
        raise DataError(f"{t.where(df.index[r])}: negative {c + 1} {what}")
    return (pair[0].to_numpy(dtype=np.int64), pair[1].to_numpy(dtype=np.int64), num.astype(np.int64),
            df.index.to_numpy(dtype=np.int64) + 1)


def _dense(ids_sorted: np.ndarray, raw: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Dense index of each ``raw`` id in sorted ``ids_sorted`` and whether it was found."""
    pos = np.clip(np.searchsorted(ids_sorted, raw), 0, len(ids_sorted) - 1)
    return pos, ids_sorted[pos] == raw


def read_ncf(folder, name: str) -> Interactions:
    """Read an NCF leave-one-out split (He et al., WWW 2017) ``<name>.*`` from ``folder``.

    Files: ``<name>.train.rating`` and ``<name>.test.rating`` (tab: user, item, rating, timestamp;
    0-based ids) and, optionally, ``<name>.test.negative`` (``(user,item)\\tneg1\\t...``, 99
    sampled negatives per test row). Rows are train rows then test rows (file order);
    ``is_test`` marks the test rows.

    ``test_negatives`` (``int64 [T, K]``, dense item indices, ``None`` without the negative file):
    row ``t`` holds the negatives of the ``t``-th test row, i.e. of interaction
    ``np.flatnonzero(is_test)[t]``; rows are matched by ``(user, item)``, not by line order.
    """
    folder = Path(folder)
    trp = _require(folder, f"{name}.train.rating", _SRC_NCF)
    tep = _require(folder, f"{name}.test.rating", _SRC_NCF)
    u1, i1, r1, t1 = _read_rating_file(trp)
    u2, i2, r2, t2 = _read_rating_file(tep)
    is_test = np.zeros(u1.size + u2.size, dtype=bool)
    is_test[u1.size:] = True
    inter = Interactions.from_raw(np.concatenate([u1, u2]), np.concatenate([i1, i2]),
                                  timestamps=np.concatenate([t1, t2]), weights=np.concatenate([r1, r2]),
                                  is_test=is_test, source=str(trp))
    negp = folder / f"{name}.test.negative"
    if not negp.is_file():
        return inter
    nu, ni, negs, lines = _read_negatives(negp)
    du, fu = _dense(inter.user_ids, nu)
    di, fi = _dense(inter.item_ids, ni)
    dn, fn = _dense(inter.item_ids, negs.reshape(-1))
    for found, vals, what in ((fu, nu, "user"), (fi, ni, "item")):
        if not found.all():
            k = int(np.flatnonzero(~found)[0])
            raise DataError(f"{negp} line {lines[k]}: {what} {int(vals[k])} of '(user,item)' does not occur in "
                            f"{trp.name} or {tep.name}; the negative file must belong to the same split")
    if not fn.all():
        k = int(np.flatnonzero(~fn)[0])
        raise DataError(f"{negp} line {lines[k // negs.shape[1]]}: negative item {int(negs.reshape(-1)[k])} occurs "
                        f"in no interaction of {trp.name} / {tep.name}, so it has no dense index; remove it "
                        "or regenerate the negatives from this split")
    n_items = np.int64(inter.num_items)
    neg_key = du * n_items + di
    test_rows = np.flatnonzero(inter.is_test)
    test_key = inter.users[test_rows] * n_items + inter.items[test_rows]
    order = np.argsort(neg_key, kind="stable")
    pos = np.clip(np.searchsorted(neg_key[order], test_key), 0, len(order) - 1)
    hit = neg_key[order][pos] == test_key
    if not hit.all():
        k = int(np.flatnonzero(~hit)[0])
        r = test_rows[k]
        raise DataError(f"{negp}: test row (user {inter.user_ids[inter.users[r]]}, item "
                        f"{inter.item_ids[inter.items[r]]}) of {tep.name} has no '(user,item)' line; "
                        "the negative file must list every test row")
    inter.test_negatives = dn.reshape(negs.shape)[order[pos]].astype(np.int64)
    return inter


# --------------------------------------------------------------------------------------------
# a user's own table
# --------------------------------------------------------------------------------------------
def _check_columns(t: _Table, wanted: dict, header: bool, kind: str) -> None:
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


def read_table_log(
    path,
    *,
    user_col: str = "user",
    item_col: str = "item",
    time_col: Optional[str] = None,
    weight_col: Optional[str] = None,
    header: bool = True,
    columns: Optional[Sequence[str]] = None,
    sep: str = ",",
    items_path=None,
    item_id_col: Optional[str] = None,
    title_col: Optional[str] = None,
    categories_col: Optional[str] = None,
    categories_sep: str = "|",
    items_header: bool = True,
    items_columns: Optional[Sequence[str]] = None,
    id_type: str = "int",
    encoding: str = "utf-8",
) -> Interactions:
    """Read a user's own interaction log (CSV/TSV or Parquet by suffix) and optional item table.

    Args:
        path: the log file (``.csv``/``.tsv``/``.txt`` -> delimited text, ``.parquet``/``.pq``).
        user_col, item_col: id columns. time_col: Unix-seconds column (else file order is time
            order). weight_col: a numeric weight (e.g. rating).
        header: the text file has a header row; with ``header=False`` give ``columns`` (one name
            per field). ``columns`` with ``header=True`` renames the header's columns.
        sep: field separator of text files (CRLF line endings are handled).
        items_path: optional item table (CSV/Parquet) with ``item_id_col`` (default: ``item_col``), ``title_col`` (a
            ``(YYYY)`` at the end of a title gives the year) and ``categories_col``
            (``categories_sep``-joined names -> multi-hot); ``items_header``/``items_columns``
            as for the log.
        id_type: ``"int"`` (non-negative integer ids) or ``"str"`` (any string id).
        encoding: text encoding of delimited files.

    Raises:
        DataError: missing file/column (incl. "file has no header row: set header: false and
            columns: [...]"), malformed line, bad id/number/timestamp (naming file and line), empty log.
    """
    if id_type not in ("int", "str"):
        raise ValueError(f"id_type={id_type!r}: choose 'int' (non-negative integer ids) or 'str'")
    if item_id_col is None:
        item_id_col = item_col
    path = Path(path)
    t = _read_any(path, sep=sep, header=header, columns=columns, encoding=encoding,
                  str_cols=(user_col, item_col) if id_type == "str" else ())
    _check_columns(t, {"user_col": user_col, "item_col": item_col, "weight_col": weight_col,
                       "time_col": time_col}, header, "log")
    if len(t.df) == 0:
        raise DataError(f"{path}: the interaction log is empty (no user-item rows)")
    users = _ids(t, user_col, "user", id_type)
    items = _ids(t, item_col, "item", id_type)
    weights = None if weight_col is None else _numbers(t, weight_col, "weight", "weights must be numbers")
    ts = None if time_col is None else _timestamps(t, time_col)
    table = None
    if items_path is not None:
        it = _read_any(Path(items_path), sep=sep, header=items_header, columns=items_columns, encoding=encoding,
                       str_cols=(item_id_col,) if id_type == "str" else ())
        _check_columns(it, {"item_id_col": item_id_col, "title_col": title_col,
                            "categories_col": categories_col}, items_header, "item table")
        ids = _ids(it, item_id_col, "item", id_type)
        titles = None
        years = None
        if title_col is not None:
            ts_ = it.df[title_col].fillna("").astype(str).str.strip()
            titles = ts_.to_numpy(dtype=object)
            years = _years_from_titles(ts_)
        names, cats = [], None
        if categories_col is not None:
            names, cats = _multi_hot(it.df[categories_col], categories_sep)
        table = ItemTable(ids=ids, titles=titles, category_names=names, categories=cats, years=years)
    return Interactions.from_raw(users, items, timestamps=ts, weights=weights, item_table=table, source=str(path))


# --------------------------------------------------------------------------------------------
# external item features
# --------------------------------------------------------------------------------------------
def read_item_features(path, item_ids, id_col: str = "item", *, sep: str = ",",
                       encoding: str = "utf-8") -> Tuple[np.ndarray, np.ndarray]:
    """Read a numeric item feature table (CSV/Parquet: ``id_col`` + numeric columns).

    Args:
        path: the table. item_ids: the raw id of each dense item (``Interactions.item_ids``);
            the table's ids are parsed as ints when these are ints, else compared as strings.

    Returns:
        ``(x float32 [I, F], present bool [I])``: row ``i`` holds dense item ``i``'s features;
        items absent from the table get zeros and ``present[i] = False``.

    Raises:
        DataError: unknown item id ("unknown item ... in feature table <file> line N"), duplicate
            id, non-numeric / NaN / inf value (naming row and column), no feature column.
    """
    path = Path(path)
    item_ids = np.asarray(item_ids)
    is_int = np.issubdtype(item_ids.dtype, np.integer)
    t = _read_any(path, sep=sep, header=True, columns=None, encoding=encoding, str_cols=() if is_int else (id_col,))
    _check_columns(t, {"id_col": id_col}, True, "feature table")
    if len(t.df) == 0:
        raise DataError(f"{path}: the feature table is empty (no rows)")
    feat_cols = [c for c in t.df.columns if str(c) != id_col]
    if not feat_cols:
        raise DataError(f"{path}: the feature table has only the id column {id_col!r}; add numeric feature columns")
    ids = _int_ids(t, id_col, "item") if is_int else _str_ids(t, id_col)
    ref = item_ids if is_int else item_ids.astype(str).astype(object)
    sorter = np.argsort(ref)
    pos = np.clip(np.searchsorted(ref, ids, sorter=sorter), 0, len(ref) - 1)
    dense = sorter[pos]
    found = ref[dense] == ids
    if not found.all():
        k = int(np.flatnonzero(~found)[0])
        raise DataError(f"unknown item {_show(ids[k])} in feature table {t.where(t.df.index[k])}: it has no "
                        "interaction in the log; remove the row (features are only used for items in the log)")
    uniq, counts = np.unique(dense, return_counts=True)
    if (counts > 1).any():
        d = uniq[counts > 1][0]
        k = int(np.flatnonzero(dense == d)[1])
        raise DataError(f"{t.where(t.df.index[k])}: item {_show(ids[k])} appears more than once in the feature table; "
                        "keep one row per item")
    vals = t.df[feat_cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(vals)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(f"{t.where(t.df.index[r])}: column {str(feat_cols[c])!r} value {_show(t.df[feat_cols[c]].iloc[r])} "
                        "is missing, not a number, NaN or infinite; give a finite number")
    x = np.zeros((len(item_ids), len(feat_cols)), dtype=np.float32)
    x[dense] = vals.astype(np.float32)
    present = np.zeros(len(item_ids), dtype=bool)
    present[dense] = True
    return x, present
