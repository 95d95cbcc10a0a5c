import json
import os
import time

import numpy as np
import pytest

from datamodules.datasets import CACHE_VERSION, load_dataset
from datamodules.interactions import DataError
from tests.conftest import data_folder

SYN = dict(num_users=300, num_items=200, num_interactions=4000, num_communities=5, feature_dim=4, seed=1)


def _caches(folder):
    return sorted(p for p in folder.glob("synthetic-*") if p.is_dir())


def test_cache_roundtrip_is_identical_and_memory_mapped(tmp_path):
    a = load_dataset("synthetic", cache_dir=str(tmp_path), reader_args=SYN)
    caches = _caches(tmp_path)
    assert len(caches) == 1 and not list(tmp_path.glob(".*tmp*"))
    manifest = json.loads((caches[0] / "manifest.json").read_text())
    assert manifest["version"] == CACHE_VERSION and manifest["format"] == "pinsage-dataset-cache"
    assert {p.name for p in caches[0].iterdir()} == {"manifest.json"} | {f"{k}.npy" for k in manifest["arrays"]}
    b = load_dataset("synthetic", cache_dir=str(tmp_path), reader_args=SYN)
    assert a.summary() == b.summary()
    for k, v in a.to_arrays().items():
        assert np.array_equal(v, b.to_arrays()[k]), k
    assert (b.extras["item_community"] == a.extras["item_community"]).all()
    # the graph, features and pairs are read-only memory maps of the .npy files, not copies
    for arr in (b.train_graph.user_items, b.train_graph.item_ptr, b.item_features, b.train_pairs):
        assert isinstance(arr, np.memmap) and not arr.flags.writeable
    # other arguments -> another cache entry
    load_dataset("synthetic", cache_dir=str(tmp_path), reader_args={**SYN, "seed": 2})
    assert len(_caches(tmp_path)) == 2


def test_cache_key_covers_every_load_argument(tmp_path):
    """A new argument of load_dataset enters the key without anyone listing it."""
    import inspect

    from datamodules import datasets

    params = inspect.signature(load_dataset).parameters
    keyed = [p for p in params if p not in datasets._NOT_IN_KEY]
    assert {"dataset", "features", "split", "reader_args"} <= set(keyed)
    load_dataset("synthetic", cache_dir=str(tmp_path), reader_args=SYN)
    load_dataset("synthetic", cache_dir=str(tmp_path), reader_args=SYN, features=["log_degree"])
    load_dataset("synthetic", cache_dir=str(tmp_path), reader_args=SYN, split="temporal")
    assert len(_caches(tmp_path)) == 3
    # arguments that do not shape the data share the cache
    load_dataset("synthetic", root=str(tmp_path / "elsewhere"), cache_dir=str(tmp_path), reader_args=SYN,
                 progress=True)
    assert len(_caches(tmp_path)) == 3


def _damage_truncate(folder):
    f = folder / "graph_user_items.npy"
    f.write_bytes(f.read_bytes()[:-100])


def _damage_flip(folder):
    f = folder / "item_features.npy"
    b = bytearray(f.read_bytes())
    b[-3] ^= 0xFF
    f.write_bytes(bytes(b))


def _damage_manifest(folder):
    (folder / "manifest.json").write_text('{"format": "pinsage-dataset-cache", "vers')


def _damage_missing(folder):
    (folder / "train_pairs.npy").unlink()


def _damage_old_version(folder):
    m = json.loads((folder / "manifest.json").read_text())
    m["version"] = 1
    (folder / "manifest.json").write_text(json.dumps(m))


def _damage_header(folder):
    f = folder / "split_train.npy"
    f.write_bytes(b"garbage!" + f.read_bytes()[8:])


@pytest.mark.parametrize("damage", [_damage_truncate, _damage_flip, _damage_manifest, _damage_missing,
                                    _damage_old_version, _damage_header])
def test_old_or_damaged_cache_is_rebuilt_with_a_message(tmp_path, capsys, damage):
    a = load_dataset("synthetic", cache_dir=str(tmp_path), reader_args=SYN)
    ref = {k: np.array(v) for k, v in a.to_arrays().items()}
    (folder,) = _caches(tmp_path)
    del a
    damage(folder)
    capsys.readouterr()
    b = load_dataset("synthetic", cache_dir=str(tmp_path), reader_args=SYN)
    err = capsys.readouterr().err
    assert "unusable" in err and str(folder) in err and "rebuilding" in err
    for k, v in ref.items():
        assert np.array_equal(v, b.to_arrays()[k]), k
    # rebuilt in place: one valid cache, nothing left aside, and the next run is silent
    assert _caches(tmp_path) == [folder] and not list(tmp_path.glob(".*"))
    load_dataset("synthetic", cache_dir=str(tmp_path), reader_args=SYN)
    assert "unusable" not in capsys.readouterr().err


def test_input_file_replaced_with_same_size_and_mtime_is_noticed(tmp_path):
    import os

    log = tmp_path / "log.csv"
    log.write_text("user,item\n" + "".join(f"{u},{(u * 7 + k) % 9 + 10}\n" for u in range(30) for k in range(4)))
    st = log.stat()
    args = dict(path="log.csv", user_col="user", item_col="item")
    a = load_dataset("table", root=str(tmp_path), cache_dir=str(tmp_path / "c"), reader_args=args)
    text = log.read_text().replace(",11\n", ",12\n")  # same size
    log.write_text(text)
    os.utime(log, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert log.stat().st_size == st.st_size and int(log.stat().st_mtime) == int(st.st_mtime)
    b = load_dataset("table", root=str(tmp_path), cache_dir=str(tmp_path / "c"), reader_args=args)
    assert a.num_items == 9 and b.num_items == 8
    assert len(list((tmp_path / "c").glob("table-*"))) == 2


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    ds = load_dataset("synthetic", cache_dir=str(tmp_path / "a"), reader_args=SYN)
    calls = []

    def boom(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(*a, **k)

    real = np.save
    monkeypatch.setattr(np, "save", boom)
    target = tmp_path / "b" / "x"
    with pytest.raises(OSError, match="disk full"):
        ds.save(target)
    assert not target.exists() and list((tmp_path / "b").iterdir()) == []


def test_concurrent_builders_both_succeed_and_one_copy_stays(tmp_path):
    """Two processes (DDP ranks, nodes on shared storage) publishing the same cache at once."""
    from datamodules.datasets import RecDataset

    ds = load_dataset("synthetic", cache_dir=str(tmp_path / "a"), reader_args=SYN)
    target = tmp_path / "b" / "synthetic-x"
    ds.save(target)
    before = (target / "manifest.json").stat().st_ino
    ds.save(target)  # the loser of the rename race keeps the winner's valid copy
    assert (target / "manifest.json").stat().st_ino == before
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["synthetic-x"]
    assert RecDataset.load(target).summary() == ds.summary()
    # a file in the way that we did not write is never removed
    other = tmp_path / "b" / "not-a-cache"
    other.write_text("mine")
    with pytest.raises(OSError, match="not a cache folder"):
        ds.save(other)
    assert other.read_text() == "mine"


def test_missing_raw_file_names_file_folder_and_source(tmp_path):
    (tmp_path / "movielens-100k" / "raw").mkdir(parents=True)
    (tmp_path / "movielens-100k" / "raw" / "u.item").write_text("")
    with pytest.raises(DataError) as e:
        load_dataset("movielens-100k", root=str(tmp_path), cache_dir=str(tmp_path / "c"))
    msg = str(e.value)
    assert "u.data" in msg and str(tmp_path / "movielens-100k" / "raw") in msg and "GroupLens" in msg
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").iterdir())


def test_unknown_dataset_and_table_without_path(tmp_path):
    with pytest.raises(ValueError, match="dataset='nope'"):
        load_dataset("nope")
    with pytest.raises(ValueError, match="reader_args.path"):
        load_dataset("table", root=str(tmp_path))


def test_reader_argument_a_dataset_does_not_take_is_one_error_naming_those_it_does(tmp_path):
    raw = tmp_path / "gowalla" / "raw"
    raw.mkdir(parents=True)
    (raw / "train.txt").write_text("0 0 1 2 3\n1 1 2 3 4\n")
    (raw / "test.txt").write_text("0 4\n1 0\n")
    with pytest.raises(ValueError, match=r"dataset 'gowalla' does not take reader_args\.order_as_tme; "
                                         r"it takes \['order_as_time', 'features_path'\]"):
        load_dataset("gowalla", root=str(tmp_path), cache_dir=str(tmp_path / "c"),
                     reader_args={"order_as_tme": True})
    ds = load_dataset("gowalla", root=str(tmp_path), cache_dir=str(tmp_path / "c"),
                      reader_args={"order_as_time": True})
    assert ds.summary()["has_timestamps"] and ds.split.val.size == 2
    (tmp_path / "log.csv").write_text("user,item\n0,1\n")  # the table reader: its own options and the log reader's
    with pytest.raises(ValueError, match=r"dataset 'table' does not take reader_args\.time_column; it takes "
                                         r"\['path', 'items_path', 'user_col', .*'time_col'"):
        load_dataset("table", root=str(tmp_path), cache_dir=str(tmp_path / "c"),
                     reader_args={"path": "log.csv", "time_column": "ts"})


def test_table_dataset_from_a_users_csv(tmp_path):
    rows = ["user,item,ts"] + [f"{u},{(u * 7 + k) % 30},{k}" for u in range(20) for k in range(6)]
    (tmp_path / "log.csv").write_text("\n".join(rows) + "\n")
    ds = load_dataset("table", root=str(tmp_path), cache_dir=str(tmp_path / "c"),
                      reader_args=dict(path="log.csv", time_col="ts"))
    s = ds.summary()
    assert s["num_users"] == 20 and s["num_interactions"] == 120 and s["num_test"] == 20


def test_data_command_prints_json_last_line(tmp_path, capsys):
    from app.data_command import main

    cfg = tmp_path / "syn.yaml"
    cfg.write_text("dataset: synthetic\nreader_args:\n  num_users: 100\n  num_items: 50\n"
                   "  num_interactions: 1000\n  num_communities: 5\n")
    assert main(["--config", str(cfg), "--data.cache_dir", str(tmp_path / "c")]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    out = json.loads(last)
    assert out["num_users"] == 100 and out["num_items"] == 50 and out["num_val"] == out["num_test"] >= 90
    # bad input -> one clear error, exit code 2
    assert main(["--config", str(cfg), "--data.dataset", "movielens-100k", "--data.root", str(tmp_path),
                 "--data.cache_dir", str(tmp_path / "c")]) == 2
    assert "missing file 'u.data'" in capsys.readouterr().err


PUBLISHED = {
    "movielens-100k": (943, 1682, 100000),
    "gowalla": (29858, 40981, 1027370),
    "movielens-latest-small": (706, 8552, 100023),
}


@pytest.mark.dataset
@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_counts_via_the_data_command(name, tmp_path, capsys):
    from app.data_command import main

    data_folder(name)
    from tests.conftest import DATA_ROOT, PROJECT

    argv = ["--config", str(PROJECT / "configs" / "data" / f"{name}.yaml"), "--data.root", str(DATA_ROOT),
            "--data.cache_dir", str(tmp_path), "--data.features", "[log_degree]"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (out["num_users"], out["num_items"], out["num_interactions"]) == PUBLISHED[name]
    if name == "gowalla":
        assert out["num_test"] == 217242 and out["num_train"] + out["num_val"] == 810128
    else:
        assert out["num_val"] == out["num_test"] == out["num_users"]


def _build_in_child(cache_dir, q):
    ds = load_dataset("synthetic", cache_dir=cache_dir, reader_args=SYN)
    q.put(ds.summary())


def test_two_processes_building_one_cache_at_once(tmp_path):
    """Ranks that find no cache build it at the same time: both get the data, one copy stays."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_build_in_child, args=(str(tmp_path), q)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    a, b = q.get(timeout=5), q.get(timeout=5)
    assert a == b
    assert len(_caches(tmp_path)) == 1 and [p.name for p in tmp_path.iterdir()] == [_caches(tmp_path)[0].name]


def test_shared_cache_is_built_by_global_rank_zero_only():
    from datamodules.datamodule import PinSageDataModule

    assert PinSageDataModule(dataset="synthetic").prepare_data_per_node is True
    assert PinSageDataModule(dataset="synthetic", cache_shared=True).prepare_data_per_node is False


def test_temp_folder_of_a_killed_build_is_cleaned_on_the_next_build(tmp_path):
    from datamodules import dataset_cache

    ds = load_dataset("synthetic", cache_dir=str(tmp_path / "a"), reader_args=SYN)
    target = tmp_path / "b" / "synthetic-x"
    target.parent.mkdir()
    dead = target.parent / f".synthetic-x.tmp-{dataset_cache._HOST}-{2 ** 22 + 4321}-abc"  # no such pid
    live = target.parent / f".synthetic-x.tmp-{dataset_cache._HOST}-{os.getpid()}-def"  # a build in progress
    for d in (dead, live):
        d.mkdir()
        np.save(d / "users.npy", np.arange(3))
    ds.save(target)
    assert not dead.exists() and live.exists() and (target / "manifest.json").is_file()


def _big_log(path, n=300_000):
    """A table log of more than 2 MiB (the old digest read only its first and last MiB)."""
    rng = np.random.default_rng(0)
    u, i = rng.integers(100, 999, n), rng.integers(100, 999, n)
    path.write_text("user,item\n" + "".join(f"{a},{b}\n" for a, b in zip(u.tolist(), i.tolist())))
    assert path.stat().st_size > 2 * (1 << 20)


def test_same_size_edit_in_the_middle_of_a_big_input_is_noticed(tmp_path):
    log = tmp_path / "log.csv"
    _big_log(log)
    args = dict(path="log.csv", user_col="user", item_col="item")
    a = load_dataset("table", root=str(tmp_path), cache_dir=str(tmp_path / "c"), reader_args=args)
    data = bytearray(log.read_bytes())
    mid = data.index(b"\n", len(data) // 2) + 1  # the user id of a line in the middle: 3 digits -> 3 others
    assert data[mid:mid + 3].isdigit()
    data[mid:mid + 3] = b"099" if data[mid:mid + 3] != b"099" else b"098"  # a new user, same size
    time.sleep(0.01)
    log.write_bytes(bytes(data))
    b = load_dataset("table", root=str(tmp_path), cache_dir=str(tmp_path / "c"), reader_args=args)
    assert b.num_users == a.num_users + 1
    assert len(list((tmp_path / "c").glob("table-*"))) == 2


def test_flipped_byte_in_the_middle_of_a_big_cached_array_is_noticed(tmp_path, capsys):
    big = dict(SYN, num_users=2000, num_items=1000, num_interactions=300_000)
    a = load_dataset("synthetic", cache_dir=str(tmp_path), reader_args=big)
    ref = np.array(a.train_pairs)
    (folder,) = _caches(tmp_path)
    del a
    load_dataset("synthetic", cache_dir=str(tmp_path), reader_args=big)  # a warm open
    arrays = json.loads((folder / "manifest.json").read_text())["arrays"]
    name = max(arrays, key=lambda k: arrays[k]["bytes"])
    f = folder / f"{name}.npy"
    assert f.stat().st_size > 2 * (1 << 20), (name, f.stat().st_size)
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0x01
    f.write_bytes(bytes(b))
    capsys.readouterr()
    c = load_dataset("synthetic", cache_dir=str(tmp_path), reader_args=big)
    err = capsys.readouterr().err
    assert "unusable" in err and f.name in err
    assert np.array_equal(ref, np.asarray(c.train_pairs))
