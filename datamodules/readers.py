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
* :func:`read_table_log` - a user's own CSV / Parquet log plus an optional item table, and
  :func:`read_item_features` - an external numeric item feature table aligned to dense items
  (both in :mod:`datamodules.table_reader`, importable from here as before).

The parsing they share (line-numbered tables, typed columns): :mod:`datamodules.table_parsing`.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Tuple

import numpy as np
import pandas as pd

from .interactions import DataError, Interactions, ItemTable
from .table_parsing import (
    Table,
    finite_numbers,
    int_ids,
    multi_hot,
    read_delimited,
    require_file,
    show_value,
    unix_seconds,
    years_from_titles,
)
from .table_reader import read_item_features, read_table_log

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
    data = require_file(folder, "u.data", _SRC_100K)
    item = require_file(folder, "u.item", _SRC_100K)
    t = read_delimited(data, "\t", header=False, names=["user", "item", "rating", "timestamp"])
    users = int_ids(t, "user", "user")
    items = int_ids(t, "item", "item")
    ratings = finite_numbers(t, "rating", "rating", "ratings must be numbers")
    ts = unix_seconds(t, "timestamp")

    genres = list(MOVIELENS_100K_GENRES)
    gpath = folder / "u.genre"
    if gpath.is_file():
        g = read_delimited(gpath, "|", header=False, names=["genre", "id"], encoding="latin-1",
                            quoting=csv.QUOTE_NONE)
        gid = int_ids(g, "id", "genre")
        names = g.df["genre"].astype(str).to_numpy()[np.argsort(gid)]
        if len(names) != 19:
            raise DataError(f"{gpath}: expected 19 genres, found {len(names)}; restore the original u.genre "
                            f"from {_SRC_100K} or delete it to use the standard list")
        genres = [str(n) for n in names]
    cols = ["id", "title", "release", "video", "url"] + [f"g{k}" for k in range(19)]
    it = read_delimited(item, "|", header=False, names=cols, encoding="latin-1", quoting=csv.QUOTE_NONE)
    ids = int_ids(it, "id", "item")
    flags = it.df[cols[5:]]
    fl = flags.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isin(fl, (0.0, 1.0))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(f"{it.where(it.df.index[r])}: genre flag {c + 1} ({genres[c]}) is "
                        f"{show_value(flags.iloc[r, c])}; each of the 19 genre fields must be 0 or 1")
    titles = it.df["title"].fillna("").astype(str)
    rel = it.df["release"].fillna("").astype(str).str.extract(r"(\d{4})\s*$", expand=False)
    years = pd.to_numeric(rel, errors="coerce").fillna(-1).to_numpy(dtype=np.int64)
    from_title = years_from_titles(titles)
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
    rpath = require_file(folder, "ratings.dat", _SRC_1M)
    mpath = require_file(folder, "movies.dat", _SRC_1M)
    t = read_delimited(rpath, "::", header=False, names=["user", "item", "rating", "timestamp"],
                        encoding="latin-1", quoting=csv.QUOTE_NONE)
    users = int_ids(t, "user", "user")
    items = int_ids(t, "item", "item")
    ratings = finite_numbers(t, "rating", "rating", "ratings must be numbers")
    ts = unix_seconds(t, "timestamp")
    m = read_delimited(mpath, "::", header=False, names=["id", "title", "genres"], encoding="latin-1",
                        quoting=csv.QUOTE_NONE)
    ids = int_ids(m, "id", "item")
    titles = m.df["title"].fillna("").astype(str)
    names, cats = multi_hot(m.df["genres"], "|")
    table = ItemTable(ids=ids, titles=titles.to_numpy(dtype=object), category_names=names, categories=cats,
                      years=years_from_titles(titles))
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


def read_lightgcn(folder, order_as_time: bool = False) -> Interactions:
    """Read a LightGCN/NGCF split (Gowalla, Yelp2018, Amazon-Book) from ``folder``.

    ``train.txt`` and ``test.txt`` hold ``user item item ...`` lines (space separated, 0-based
    remapped ids; a line may hold only a user id). Rows are train rows (file order) then test
    rows; ``is_test`` marks the latter. The files hold no timestamps.
    The remapped ids are kept as the raw ids (``user_list.txt`` / ``item_list.txt`` are not
    needed), so dense ids equal file ids when they are contiguous, as in the published splits.
    Users with no item in either file do not appear.

    ``order_as_time``: take each line's order as the user's time order (``timestamps`` = the row's
    position: a user's training items in line order, then its test items). Off, the log has no
    timestamps and nothing assumes an order. On Gowalla's training lines, items next to each other
    are far more alike than items 20 apart (mean co-engagement cosine 0.143 vs 0.079; 0.087 at
    every gap with the lines shuffled: ``benchmarks/line_order.py``), so the order is the check-in
    sequence; with it the ``fixed`` split validates on each user's last training item, and the
    recency options apply.
    """
    if not isinstance(order_as_time, bool):
        raise ValueError(f"reader_args.order_as_time must be true or false, got {order_as_time!r}")
    folder = Path(folder)
    train = require_file(folder, "train.txt", _SRC_LIGHTGCN)
    test = require_file(folder, "test.txt", _SRC_LIGHTGCN)
    u1, i1 = _parse_adjacency_lines(train)
    u2, i2 = _parse_adjacency_lines(test)
    if u1.size == 0:
        raise DataError(f"{train}: no interactions (every line is empty or holds only a user id)")
    is_test = np.zeros(u1.size + u2.size, dtype=bool)
    is_test[u1.size:] = True
    order = np.arange(is_test.size, dtype=np.int64) if order_as_time else None
    return Interactions.from_raw(np.concatenate([u1, u2]), np.concatenate([i1, i2]), timestamps=order,
                                 is_test=is_test, source=str(train))


# --------------------------------------------------------------------------------------------
# NCF leave-one-out splits
# --------------------------------------------------------------------------------------------
def _read_rating_file(path: Path) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    t = read_delimited(path, "\t", header=False, names=["user", "item", "rating", "timestamp"])
    if len(t.df) == 0:
        raise DataError(f"{path}: the file is empty (no rows)")
    return (int_ids(t, "user", "user"), int_ids(t, "item", "item"),
            finite_numbers(t, "rating", "rating", "ratings must be numbers"), unix_seconds(t, "timestamp"))


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
    t = Table(df, path, 1)
    pair = df[0].astype(str).str.extract(r"^\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)\s*$")
    bad = pair[0].isna().to_numpy()
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise DataError(f"{t.where(df.index[k])}: first field {show_value(df.iloc[k, 0])} is not '(user,item)' "
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
        what = "is missing (fewer negatives than the other lines)" if pd.isna(v) else f"{show_value(v)} is not a non-negative integer"
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
    trp = require_file(folder, f"{name}.train.rating", _SRC_NCF)
    tep = require_file(folder, f"{name}.test.rating", _SRC_NCF)
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
