import json
import time

import numpy as np
import pytest

from datamodules.datasets import load_dataset
from datamodules.interactions import DataError
from tests.conftest import data_folder

SYN = dict(num_users=300, num_items=200, num_interactions=4000, num_communities=5, feature_dim=4, seed=1)


def test_cache_roundtrip_is_identical_and_fast(tmp_path):
    a = load_dataset("synthetic", cache_dir=str(tmp_path), reader_args=SYN)
    files = list(tmp_path.glob("synthetic-*.npz"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp"))
    t0 = time.perf_counter()
    b = load_dataset("synthetic", cache_dir=str(tmp_path), reader_args=SYN)
    assert time.perf_counter() - t0 < 2.0
    assert a.summary() == b.summary()
    for k, v in a.to_arrays().items():
        assert np.array_equal(v, b.to_arrays()[k]), k
    assert (b.extras["item_community"] == a.extras["item_community"]).all()
    # other arguments -> another cache entry
    load_dataset("synthetic", cache_dir=str(tmp_path), reader_args={**SYN, "seed": 2})
    assert len(list(tmp_path.glob("synthetic-*.npz"))) == 2


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    ds = load_dataset("synthetic", cache_dir=str(tmp_path / "a"), reader_args=SYN)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    target = tmp_path / "b" / "x.npz"
    with pytest.raises(OSError, match="disk full"):
        ds.save(target)
    assert not target.exists() and list((tmp_path / "b").iterdir()) == []


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
