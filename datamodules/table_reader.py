"""A user's own tables: the interaction log (CSV/TSV or Parquet) with an optional item table, and
external numeric item features aligned to the dense items.

Bad input is a :class:`DataError` naming the file, the line (or row), the value and the fix,
including the "file has no header row: set header: false and columns: [...]" diagnosis.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from .interactions import DataError, Interactions, ItemTable
from .table_parsing import (
    check_columns,
    finite_numbers,
    id_column,
    int_ids,
    multi_hot,
    read_any,
    show_value,
    str_ids,
    unix_seconds,
    years_from_titles,
)

__all__ = ["read_table_log", "read_item_features"]


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
    t = read_any(path, sep=sep, header=header, columns=columns, encoding=encoding,
                  str_cols=(user_col, item_col) if id_type == "str" else ())
    check_columns(t, {"user_col": user_col, "item_col": item_col, "weight_col": weight_col,
                       "time_col": time_col}, header, "log")
    if len(t.df) == 0:
        raise DataError(f"{path}: the interaction log is empty (no user-item rows)")
    users = id_column(t, user_col, "user", id_type)
    items = id_column(t, item_col, "item", id_type)
    weights = None if weight_col is None else finite_numbers(t, weight_col, "weight", "weights must be numbers")
    ts = None if time_col is None else unix_seconds(t, time_col)
    table = None
    if items_path is not None:
        it = read_any(Path(items_path), sep=sep, header=items_header, columns=items_columns, encoding=encoding,
                       str_cols=(item_id_col,) if id_type == "str" else ())
        check_columns(it, {"item_id_col": item_id_col, "title_col": title_col,
                            "categories_col": categories_col}, items_header, "item table")
        ids = id_column(it, item_id_col, "item", id_type)
        titles = None
        years = None
        if title_col is not None:
            ts_ = it.df[title_col].fillna("").astype(str).str.strip()
            titles = ts_.to_numpy(dtype=object)
            years = years_from_titles(ts_)
        names, cats = [], None
        if categories_col is not None:
            names, cats = multi_hot(it.df[categories_col], categories_sep)
        table = ItemTable(ids=ids, titles=titles, category_names=names, categories=cats, years=years)
    return Interactions.from_raw(users, items, timestamps=ts, weights=weights, item_table=table, source=str(path))


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
    t = read_any(path, sep=sep, header=True, columns=None, encoding=encoding, str_cols=() if is_int else (id_col,))
    check_columns(t, {"id_col": id_col}, True, "feature table")
    if len(t.df) == 0:
        raise DataError(f"{path}: the feature table is empty (no rows)")
    feat_cols = [c for c in t.df.columns if str(c) != id_col]
    if not feat_cols:
        raise DataError(f"{path}: the feature table has only the id column {id_col!r}; add numeric feature columns")
    ids = int_ids(t, id_col, "item") if is_int else str_ids(t, id_col)
    ref = item_ids if is_int else item_ids.astype(str).astype(object)
    sorter = np.argsort(ref)
    pos = np.clip(np.searchsorted(ref, ids, sorter=sorter), 0, len(ref) - 1)
    dense = sorter[pos]
    found = ref[dense] == ids
    if not found.all():
        k = int(np.flatnonzero(~found)[0])
        raise DataError(f"unknown item {show_value(ids[k])} in feature table {t.where(t.df.index[k])}: it has no "
                        "interaction in the log; remove the row (features are only used for items in the log)")
    uniq, counts = np.unique(dense, return_counts=True)
    if (counts > 1).any():
        d = uniq[counts > 1][0]
        k = int(np.flatnonzero(dense == d)[1])
        raise DataError(f"{t.where(t.df.index[k])}: item {show_value(ids[k])} appears more than once in the feature table; "
                        "keep one row per item")
    vals = t.df[feat_cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(vals)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(f"{t.where(t.df.index[r])}: column {str(feat_cols[c])!r} value {show_value(t.df[feat_cols[c]].iloc[r])} "
                        "is missing, not a number, NaN or infinite; give a finite number")
    x = np.zeros((len(item_ids), len(feat_cols)), dtype=np.float32)
    x[dense] = vals.astype(np.float32)
    present = np.zeros(len(item_ids), dtype=bool)
    present[dense] = True
    return x, present
