"""``pinsage data`` on a log without timestamps: the split kind and the split sizes."""

import json

import numpy as np


def _write_sorted_log(path, num_users=40, seed=0):
    """A CSV without a time column, sorted by item id (as many public logs are)."""
    rng = np.random.default_rng(seed)
    rows = [(u, int(i)) for u in range(num_users) for i in rng.choice(200, size=int(rng.integers(4, 16)), replace=False)]
    rows.sort(key=lambda r: (r[1], r[0]))
    path.write_text("user,item\n" + "".join(f"{u},{i}\n" for u, i in rows))
    return rows


def test_data_command_reports_a_random_split_for_a_log_without_timestamps(tmp_path, capsys, monkeypatch):
    from app.data_command import main
    from datamodules import splits
    from datamodules.datasets import load_dataset

    monkeypatch.setattr(splits, "_announced", set())  # announced once per process: not by an earlier test

    rows = _write_sorted_log(tmp_path / "log.csv")
    argv = ["--data.dataset", "table", "--data.root", str(tmp_path), "--data.cache_dir", str(tmp_path / "c"),
            "--data.reader_args", '{"path": "log.csv"}', "--data.features", "[log_degree]"]
    assert main(argv) == 0
    cap = capsys.readouterr()
    out = json.loads(cap.out.strip().splitlines()[-1])
    assert "split='random'" in cap.err and "no timestamps" in cap.err
    assert out["split"] == "random" and out["split_seed"] == 0 and out["has_timestamps"] is False
    assert out["num_interactions"] == len(rows)
    assert out["num_val"] == out["num_test"] == 40 and out["num_train"] == len(rows) - 80
    assert out["num_val_pairs"] == out["num_test_pairs"] == 40
    # no timestamps: the training pairs are co-occurrences, one per training interaction
    assert out["pairs"] == "cooccurrence" and out["num_epoch_pairs"] == out["num_train"]
    # the held-out items are not each user's highest item id (what "last row in file order" gives)
    ds = load_dataset("table", root=str(tmp_path), cache_dir=str(tmp_path / "c"), features=["log_degree"],
                      reader_args={"path": "log.csv"})
    inter = ds.interactions
    top = np.full(inter.num_users, -1)
    np.maximum.at(top, inter.users, inter.items)
    assert (inter.items[ds.split.test] == top[inter.users[ds.split.test]]).mean() < 0.3
    # another split seed: another split, and the JSON says which seed
    assert main(argv + ["--data.split_seed", "3"]) == 0
    out3 = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out3["split_seed"] == 3 and out3["num_test"] == 40
    ds3 = load_dataset("table", root=str(tmp_path), cache_dir=str(tmp_path / "c"), features=["log_degree"],
                       reader_args={"path": "log.csv"}, split_seed=3)
    assert not np.array_equal(ds3.split.test, ds.split.test)
    # an explicit temporal split on the same log says so
    assert main(argv + ["--data.split", "temporal"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["split"] == "temporal"
    # a bad seed is one error line, exit code 2; so is min_weight on a log without weights
    assert main(argv + ["--data.split_seed", "-1"]) == 2
    assert main(argv + ["--data.min_weight", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("pinsage data: error: min_weight=3.0 needs interaction weights")
