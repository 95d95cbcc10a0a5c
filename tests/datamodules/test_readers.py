"""Tests for datamodules.readers: tiny files in tmp_path, plus real data marked ``dataset``."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from datamodules.interactions import DataError
from datamodules.readers import (
    MOVIELENS_100K_GENRES,
    read_item_features,
    read_lightgcn,
    read_movielens_100k,
    read_movielens_1m,
    read_ncf,
    read_table_log,
)

from tests.conftest import data_folder as real


def write(path: Path, text: str, encoding: str = "utf-8", newline: str = "\n") -> Path:
    path.write_bytes(text.replace("\n", newline).encode(encoding))
    return path


# ---------------------------------------------------------------- MovieLens-100K
def _ml100k(folder: Path, genre: bool = True) -> Path:
    write(folder / "u.data", "1\t10\t5\t300\n2\t10\t3\t100\n1\t20\t4\t200\n")
    flags10 = "|".join(["0", "1"] + ["0"] * 17)
    flags20 = "|".join(["0"] * 8 + ["1"] + ["0"] * 10)
    write(folder / "u.item",
          f"10|Café Society (1995)|01-Jan-1995||http://x|{flags10}\n"
          f"20|unknown||||{flags20}\n", encoding="latin-1")
    if genre:
        write(folder / "u.genre", "".join(f"{g}|{k}\n" for k, g in enumerate(MOVIELENS_100K_GENRES)) + "\n")
    return folder


def test_movielens_100k_parses_ratings_titles_genres_years(tmp_path):
    inter = read_movielens_100k(_ml100k(tmp_path))
    assert inter.num_users == 2 and inter.num_items == 2 and inter.num_interactions == 3
    np.testing.assert_array_equal(inter.user_ids, [1, 2])
    np.testing.assert_array_equal(inter.item_ids, [10, 20])
    np.testing.assert_array_equal(inter.timestamps, [300, 100, 200])
    np.testing.assert_array_equal(inter.weights, [5, 3, 4])
    t = inter.item_table
    assert t.titles[0] == "Café Society (1995)"  # latin-1 decoded
    assert t.category_names == MOVIELENS_100K_GENRES
    assert t.categories[0, 1] == 1 and t.categories[0].sum() == 1
    assert t.categories[1, 8] == 1
    np.testing.assert_array_equal(t.years, [1995, -1])


def test_movielens_100k_without_u_genre_uses_standard_names(tmp_path):
    inter = read_movielens_100k(_ml100k(tmp_path, genre=False))
    assert inter.item_table.category_names[8] == "Drama"


def test_movielens_100k_missing_file_names_file_folder_and_source(tmp_path):
    write(tmp_path / "u.item", "")
    with pytest.raises(DataError, match=r"u\.data.*" + str(tmp_path).replace("\\", "\\\\") + r".*ml-100k\.zip"):
        read_movielens_100k(tmp_path)


def test_movielens_100k_bad_line_reports_line(tmp_path):
    _ml100k(tmp_path)
    write(tmp_path / "u.data", "1\t10\t5\t300\n2\tx\t3\t100\n")
    with pytest.raises(DataError, match=r"u\.data line 2: item id 'x'"):
        read_movielens_100k(tmp_path)


# ---------------------------------------------------------------- MovieLens-1M
def test_movielens_1m(tmp_path):
    write(tmp_path / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    write(tmp_path / "movies.dat",
          "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
          "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
          "5::Père (1995)::Comedy\n", encoding="latin-1")
    inter = read_movielens_1m(tmp_path)
    assert (inter.num_users, inter.num_items, inter.num_interactions) == (2, 2, 3)
    np.testing.assert_array_equal(inter.item_ids, [661, 1193])
    t = inter.item_table
    assert list(t.titles) == ["James and the Giant Peach (1996)", "One Flew Over the Cuckoo's Nest (1975)"]
    np.testing.assert_array_equal(t.years, [1996, 1975])
    assert t.category_names == ["Animation", "Children's", "Comedy", "Drama", "Musical"]
    np.testing.assert_array_equal(t.categories, [[1, 1, 0, 0, 1], [0, 0, 0, 1, 0]])
    assert inter.num_catalogue_items_without_interactions == 1
    np.testing.assert_array_equal(inter.weights, [5, 3, 4])


def test_movielens_1m_wrong_field_count(tmp_path):
    write(tmp_path / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109::9\n")
    write(tmp_path / "movies.dat", "661::A (1996)::Drama\n")
    with pytest.raises(DataError, match=r"ratings\.dat line 2: expected 4 fields"):
        read_movielens_1m(tmp_path)


# ---------------------------------------------------------------- LightGCN
def test_lightgcn_train_then_test_and_user_only_lines(tmp_path):
    write(tmp_path / "train.txt", "0 0 1 2\n1 2 3\n2\n")
    write(tmp_path / "test.txt", "0 3\n1 0\n2 1 \n")
    inter = read_lightgcn(tmp_path)
    np.testing.assert_array_equal(inter.users, [0, 0, 0, 1, 1, 0, 1, 2])
    np.testing.assert_array_equal(inter.items, [0, 1, 2, 2, 3, 3, 0, 1])
    np.testing.assert_array_equal(inter.is_test, [False] * 5 + [True] * 3)
    assert inter.timestamps is None
    np.testing.assert_array_equal(inter.user_ids, [0, 1, 2])


def test_lightgcn_order_as_time_validates_on_each_users_last_training_item(tmp_path):
    from datamodules.splits import fixed_split

    write(tmp_path / "train.txt", "0 5 1 2\n1 2 3 4\n")
    write(tmp_path / "test.txt", "0 3\n1 0\n")
    inter = read_lightgcn(tmp_path, order_as_time=True)
    np.testing.assert_array_equal(inter.timestamps, np.arange(8))  # line order, test rows last
    sp = fixed_split(inter)
    # the latest training row of each user (line order), not a random one
    assert sorted(zip(inter.users[sp.val], inter.item_ids[inter.items[sp.val]])) == [(0, 2), (1, 4)]
    np.testing.assert_array_equal(np.sort(sp.test), [6, 7])
    for bad in ("yes", 1):
        with pytest.raises(ValueError, match=r"reader_args\.order_as_time must be true or false, got"):
            read_lightgcn(tmp_path, order_as_time=bad)


def test_lightgcn_crlf_and_multi_digit_ids(tmp_path):
    write(tmp_path / "train.txt", "10 12345 7\n11 40980\n", newline="\r\n")
    write(tmp_path / "test.txt", "10 40980\n", newline="\r\n")
    inter = read_lightgcn(tmp_path)
    np.testing.assert_array_equal(inter.item_ids, [7, 12345, 40980])
    np.testing.assert_array_equal(inter.user_ids[inter.users], [10, 10, 11, 10])


def test_lightgcn_bad_token_names_line(tmp_path):
    write(tmp_path / "train.txt", "0 1 2\n1 -3 4\n")
    write(tmp_path / "test.txt", "0 3\n")
    with pytest.raises(DataError, match=r"train\.txt line 2: unexpected character '-'"):
        read_lightgcn(tmp_path)


def test_lightgcn_missing_test_file(tmp_path):
    write(tmp_path / "train.txt", "0 1\n")
    with pytest.raises(DataError, match=r"missing file 'test\.txt'.*LightGCN"):
        read_lightgcn(tmp_path)


# ---------------------------------------------------------------- NCF
def _ncf(folder: Path, negatives: str) -> Path:
    write(folder / "toy.train.rating", "0\t0\t5\t10\n0\t1\t4\t11\n1\t1\t3\t10\n1\t2\t2\t12\n")
    write(folder / "toy.test.rating", "0\t2\t5\t20\n1\t3\t4\t21\n")
    write(folder / "toy.test.negative", negatives)
    return folder


def test_ncf_negatives_aligned_with_test_rows(tmp_path):
    # negative lines deliberately in the opposite order of the test rows
    inter = read_ncf(_ncf(tmp_path, "(1,3)\t0\t2\n(0,2)\t3\t1\n"), "toy")
    test_rows = np.flatnonzero(inter.is_test)
    assert test_rows.tolist() == [4, 5]
    assert inter.test_negatives.dtype == np.int64 and inter.test_negatives.shape == (2, 2)
    raw = inter.item_ids[inter.test_negatives]
    np.testing.assert_array_equal(raw, [[3, 1], [0, 2]])
    np.testing.assert_array_equal(inter.user_ids[inter.users[test_rows]], [0, 1])


def test_ncf_ragged_negatives(tmp_path):
    _ncf(tmp_path, "(0,2)\t3\t1\n(1,3)\t0\n")
    with pytest.raises(DataError, match=r"test\.negative line 2: negative 2 is missing"):
        read_ncf(tmp_path, "toy")


def test_ncf_negative_pair_malformed(tmp_path):
    _ncf(tmp_path, "(0,2)\t3\t1\n1,3\t0\t1\n")
    with pytest.raises(DataError, match=r"line 2: first field '1,3'"):
        read_ncf(tmp_path, "toy")


def test_ncf_negative_not_in_catalogue_names_line(tmp_path):
    _ncf(tmp_path, "(0,2)\t3\t1\n\n(1,3)\t0\t77\n")
    with pytest.raises(DataError, match=r"test\.negative line 3: negative item 77"):
        read_ncf(tmp_path, "toy")


def test_ncf_without_negative_file(tmp_path):
    _ncf(tmp_path, "")
    (tmp_path / "toy.test.negative").unlink()
    inter = read_ncf(tmp_path, "toy")
    assert inter.test_negatives is None and int(inter.is_test.sum()) == 2


def test_ncf_test_row_without_negatives(tmp_path):
    _ncf(tmp_path, "(0,2)\t3\t1\n")
    with pytest.raises(DataError, match=r"has no '\(user,item\)' line"):
        read_ncf(tmp_path, "toy")


# ---------------------------------------------------------------- generic table
def test_table_csv_with_header_and_item_table(tmp_path):
    log = write(tmp_path / "log.csv", "user,item,rating,ts\n5,100,4.5,30\n6,100,3,10\n5,200,1,20\n", newline="\r\n")
    items = write(tmp_path / "items.csv",
                  'item,title,genres\n100,"Movie, The (1999)",Drama|Comedy\n200,Other,(no genres listed)\n300,X,Drama\n',
                  newline="\r\n")
    inter = read_table_log(log, time_col="ts", weight_col="rating", items_path=items, title_col="title",
                           categories_col="genres")
    np.testing.assert_array_equal(inter.timestamps, [30, 10, 20])
    np.testing.assert_array_equal(inter.weights, [4.5, 3, 1])
    t = inter.item_table
    assert list(t.titles) == ["Movie, The (1999)", "Other"]
    np.testing.assert_array_equal(t.years, [1999, -1])
    assert t.category_names == ["Comedy", "Drama"]
    np.testing.assert_array_equal(t.categories, [[1, 1], [0, 0]])
    assert inter.num_catalogue_items_without_interactions == 1


def test_table_headerless_with_columns(tmp_path):
    log = write(tmp_path / "log.csv", "1,6,2.0,980730861\n1,22,3.0,980731380\n", newline="\r\n")
    inter = read_table_log(log, header=False, columns=["userId", "movieId", "rating", "timestamp"],
                           user_col="userId", item_col="movieId", time_col="timestamp")
    assert inter.num_interactions == 2 and inter.timestamps.tolist() == [980730861, 980731380]


@pytest.mark.parametrize("columns", [["user", "item", "rating"], ["user", "item", "rating", "ts", "extra"]])
def test_table_columns_must_match_field_count(tmp_path, columns):
    log = write(tmp_path / "log.csv", "1,6,2.0,980730861\n1,22,3.0,980731380\n")
    with pytest.raises(DataError, match=r"log\.csv line 1: has 4 fields .* but %d column names" % len(columns)):
        read_table_log(log, header=False, columns=columns)


def test_table_headerless_file_read_with_header_gives_fix(tmp_path):
    log = write(tmp_path / "log.csv", "1,6,2.0,980730861\n1,22,3.0,980731380\n")
    with pytest.raises(DataError, match=r"file has no header row.*set header: false and columns: "
                                        r"\[userId, movieId, rating, timestamp\]"):
        read_table_log(log, user_col="userId", item_col="movieId", weight_col="rating", time_col="timestamp")


def test_table_missing_column_lists_columns(tmp_path):
    log = write(tmp_path / "log.csv", "u,i\n1,2\n")
    with pytest.raises(DataError, match=r"no column 'user' \(user_col\); its columns are \['u', 'i'\]"):
        read_table_log(log)


@pytest.mark.parametrize("row,msg", [
    ("-1,3", r"line 3: user id '-1'"),
    ("1.5,3", r"line 3: user id '1.5'"),
    ("abc,3", r"line 3: user id 'abc'"),
])
def test_table_bad_int_ids(tmp_path, row, msg):
    log = write(tmp_path / "log.csv", f"user,item\n1,2\n{row}\n")
    with pytest.raises(DataError, match=msg):
        read_table_log(log)


def test_table_string_ids(tmp_path):
    log = write(tmp_path / "log.csv", "user,item\nalice,x1\nbob,x1\nalice,x2\n")
    inter = read_table_log(log, id_type="str")
    assert list(inter.user_ids) == ["alice", "bob"] and list(inter.item_ids) == ["x1", "x2"]


def test_table_wrong_field_count(tmp_path):
    log = write(tmp_path / "log.csv", "user,item,rating\n1,2,3\n1,2,3,4\n")
    with pytest.raises(DataError, match=r"log\.csv line 3: expected 3 fields"):
        read_table_log(log, weight_col="rating")


def test_table_short_line_and_blank_lines(tmp_path):
    log = write(tmp_path / "log.csv", "user,item,rating\n1,2,3\n\n1,3\n")
    with pytest.raises(DataError, match=r"log\.csv line 4: column 'rating' is empty"):
        read_table_log(log, weight_col="rating")


def test_table_non_numeric_rating_and_timestamp(tmp_path):
    log = write(tmp_path / "log.csv", "user,item,rating,ts\n1,2,good,5\n")
    with pytest.raises(DataError, match=r"line 2: weight 'good'"):
        read_table_log(log, weight_col="rating")
    log = write(tmp_path / "log2.csv", "user,item,ts\n1,2,5\n1,3,2020-01-01\n")
    with pytest.raises(DataError, match=r"log2\.csv line 3: timestamp '2020-01-01'"):
        read_table_log(log, time_col="ts")


def test_table_empty_log(tmp_path):
    log = write(tmp_path / "log.csv", "user,item\n")
    with pytest.raises(DataError, match=r"empty"):
        read_table_log(log)
    log = write(tmp_path / "nothing.csv", "")
    with pytest.raises(DataError, match=r"nothing\.csv.*empty"):
        read_table_log(log)


def test_table_item_table_bad_id(tmp_path):
    log = write(tmp_path / "log.csv", "user,item\n1,2\n")
    items = write(tmp_path / "items.csv", "item,title\n2,A\nfoo,B\n")
    with pytest.raises(DataError, match=r"items\.csv line 3: item id 'foo'"):
        read_table_log(log, items_path=items, title_col="title")


def test_table_parquet(tmp_path):
    p = tmp_path / "log.parquet"
    pd.DataFrame({"user": [3, 4, 3], "item": [7, 7, 8], "t": [1, 2, 3]}).to_parquet(p)
    inter = read_table_log(p, time_col="t")
    assert inter.num_users == 2 and inter.num_items == 2
    pd.DataFrame({"user": [3, -4], "item": [7, 7]}).to_parquet(p)
    with pytest.raises(DataError, match=r"log\.parquet row 2: user id"):
        read_table_log(p)


# ---------------------------------------------------------------- external features
def test_item_features_aligned_with_mask(tmp_path):
    f = write(tmp_path / "feat.csv", "item,a,b\n30,1.5,2\n10,0.5,1\n")
    x, present = read_item_features(f, np.array([10, 20, 30]))
    np.testing.assert_allclose(x, [[0.5, 1], [0, 0], [1.5, 2]])
    np.testing.assert_array_equal(present, [True, False, True])
    assert x.dtype == np.float32


def test_item_features_unknown_item(tmp_path):
    f = write(tmp_path / "feat.csv", "item,a\n10,1\n99,2\n")
    with pytest.raises(DataError, match=r"unknown item '99' in feature table .*feat\.csv line 3"):
        read_item_features(f, np.array([10, 20]))


def test_item_features_nan(tmp_path):
    f = write(tmp_path / "feat.csv", "item,a,b\n10,1,2\n20,3,nan\n")
    with pytest.raises(DataError, match=r"line 3: column 'b'"):
        read_item_features(f, np.array([10, 20]))


# ---------------------------------------------------------------- real data
@pytest.mark.dataset
def test_real_movielens_100k():
    folder = real("movielens-100k") / "raw"
    t0 = time.perf_counter()
    inter = read_movielens_100k(folder)
    elapsed = time.perf_counter() - t0
    assert (inter.num_users, inter.num_items, inter.num_interactions) == (943, 1682, 100000)
    assert inter.item_table.titles[0] == "Toy Story (1995)"
    assert inter.item_table.categories.shape == (1682, 19)
    assert inter.item_table.years[0] == 1995
    assert elapsed < 5, f"parsing took {elapsed:.2f}s"


@pytest.mark.dataset
def test_real_gowalla_counts_and_speed():
    folder = real("gowalla") / "raw"
    t0 = time.perf_counter()
    inter = read_lightgcn(folder)
    elapsed = time.perf_counter() - t0
    assert (inter.num_users, inter.num_items, inter.num_interactions) == (29858, 40981, 1027370)
    assert int((~inter.is_test).sum()) == 810128 and int(inter.is_test.sum()) == 217242
    np.testing.assert_array_equal(inter.user_ids, np.arange(29858))
    np.testing.assert_array_equal(inter.item_ids, np.arange(40981))
    # a guard against a per-line Python parser (tens of seconds), not a benchmark
    # (benchmarks/data.py times it): loose enough for a loaded 2-core machine
    assert elapsed < 10, f"parsing Gowalla took {elapsed:.2f}s (budget 10 s)"


LATEST = dict(user_col="userId", item_col="movieId", time_col="timestamp", weight_col="rating")


@pytest.mark.dataset
def test_real_movielens_latest_small_headerless_crlf():
    folder = real("movielens-latest-small") / "raw" / "ml-latest-small"
    inter = read_table_log(folder / "ratings.csv", header=False, columns=["userId", "movieId", "rating", "timestamp"],
                           items_path=folder / "movies.csv", items_header=False,
                           items_columns=["movieId", "title", "genres"], item_id_col="movieId",
                           title_col="title", categories_col="genres", **LATEST)
    assert (inter.num_users, inter.num_items, inter.num_interactions) == (706, 8552, 100023)
    assert inter.num_catalogue_items_without_interactions == 8570 - 8552
    titles = set(inter.item_table.titles)
    assert "American President, The (1995)" in titles  # quoted comma kept
    assert not any(t.endswith("\r") for t in titles)


@pytest.mark.dataset
def test_real_movielens_latest_small_header_true_gives_clear_error():
    folder = real("movielens-latest-small") / "raw" / "ml-latest-small"
    with pytest.raises(DataError, match=r"file has no header row.*header: false and columns: "
                                        r"\[userId, movieId, rating, timestamp\]"):
        read_table_log(folder / "ratings.csv", **LATEST)


def test_table_string_ids_round_trip_byte_for_byte(tmp_path):
    # "07", "7" and "011" are three ids; parsing them as numbers first merged 07/7 and dropped rows
    rows = "".join(f"u{k},{item}\n" for k in range(10) for item in ("07", "7", "011", "019"))
    log = write(tmp_path / "log.csv", "user,item\n" + rows)
    items = write(tmp_path / "items.csv", "item,title\n07,seven-zero\n7,seven\n011,eleven\n019,nineteen\n")
    inter = read_table_log(log, id_type="str", items_path=items, title_col="title")
    assert sorted(inter.item_ids) == ["011", "019", "07", "7"]
    assert inter.num_duplicates_dropped == 0 and len(inter.users) == 40
    by_id = {raw: inter.item_table.titles[i] for i, raw in enumerate(inter.item_table.ids)}
    assert by_id == {"07": "seven-zero", "7": "seven", "011": "eleven", "019": "nineteen"}


def test_table_item_id_col_defaults_to_item_col(tmp_path):
    log = write(tmp_path / "log.csv", "user_id,movie\n1,10\n2,10\n1,20\n")
    items = write(tmp_path / "items.csv", "movie,title\n10,Ten\n20,Twenty\n")
    inter = read_table_log(log, user_col="user_id", item_col="movie", items_path=items, title_col="title")
    assert list(inter.item_table.titles) == ["Ten", "Twenty"]


def test_table_tab_separated_file_read_with_comma_names_sep(tmp_path):
    log = write(tmp_path / "log.tsv", "user_id\titem_id\tcount\n1\t2\t3\n")
    with pytest.raises(DataError, match=r"looks tab-separated: set sep: '\\t'"):
        read_table_log(log, user_col="user_id", item_col="item_id")
    inter = read_table_log(log, user_col="user_id", item_col="item_id", sep="\t")
    assert list(inter.item_ids) == [2]


def test_decode_error_names_the_files_own_line_and_byte(tmp_path):
    # far past pandas' first decode chunk, so a chunk-relative offset would be wrong
    head = "user,item,title\n" + "".join(f"{k},{k},title {k}\n" for k in range(20000))
    path = tmp_path / "log.csv"
    path.write_bytes(head.encode() + b"7,7,Caf\xe9\n")
    offset = len(head.encode()) + len("7,7,Caf")
    with pytest.raises(DataError, match=rf"line 20002: byte {offset} \(0xe9\) is not valid utf-8"):
        read_table_log(path)


@pytest.mark.parametrize("a,b", [
    ("18446744073709551616", "18446744073709551617"),  # >= 2^64: read by pandas as objects
    ("9223372036854775809", "9223372036854775810"),  # 2^63..2^64: read by pandas as uint64
])
def test_table_int_ids_too_large_are_refused_not_merged(tmp_path, a, b):
    log = write(tmp_path / "log.csv", f"user,item\n{a},1\n{b},2\n")
    with pytest.raises(DataError, match=r"line 2: user id .* too large.*id_type: str"):
        read_table_log(log)
    inter = read_table_log(log, id_type="str")
    assert list(inter.user_ids) == [a, b]


def test_table_str_ids_never_go_through_floats(tmp_path):
    # 2^53 + 1 and 2^53 are different ids even where a column holds a float (a missing-free mix)
    log = write(tmp_path / "log.csv", "user,item\n9007199254740993,1\n9007199254740992,2\n")
    inter = read_table_log(log, id_type="str")
    assert sorted(inter.user_ids) == ["9007199254740992", "9007199254740993"]
