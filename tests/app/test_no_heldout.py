"""Datasets without held-out data (every user has < 3 interactions), your own table, and
`pinsage data` on a fit config (issue 11 defects 6 and 10)."""

import json
from pathlib import Path

import pytest

from app.cli import main

PROJECT = Path(__file__).resolve().parents[2]


def short_log(folder: Path) -> Path:
    # 60 users x 2 interactions: pairs for training, nothing held out for validation or test
    rows = "".join(f"{u},{(u * 7 + k) % 40},{u * 10 + k}\n" for u in range(60) for k in range(2))
    (folder / "log.csv").write_text("user,item,ts\n" + rows)
    return folder / "log.csv"


def table_args(folder: Path) -> list:
    return ["--config", str(PROJECT / "configs" / "synthetic.yaml"), "--data.dataset=table",
            f"--data.root={folder}", "--data.reader_args", json.dumps({"path": "log.csv", "time_col": "ts"}),
            "--data.features=[log_degree]", f"--data.cache_dir={folder / 'cache'}", "--data.batch_size=8",
            "--data.num_easy_negatives=5", "--trainer.logger=false", f"--trainer.default_root_dir={folder / 'run'}",
            "--trainer.enable_progress_bar=false"]


def test_data_warns_when_nothing_is_held_out(tmp_path, capsys):
    from app.data_command import main as data_main

    short_log(tmp_path)
    assert data_main(["--data.dataset=table", f"--data.root={tmp_path}", "--data.reader_args",
                      json.dumps({"path": "log.csv", "time_col": "ts"}), "--data.features=[log_degree]",
                      f"--data.cache_dir={tmp_path / 'cache'}"]) == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out.strip().splitlines()[-1])["num_val_pairs"] == 0
    assert "warning: no validation pairs" in cap.err and "warning: no test pairs" in cap.err


@pytest.mark.parametrize("command", ["fit", "test", "validate"])
def test_fit_test_validate_refuse_up_front_without_held_out_pairs(tmp_path, capsys, command):
    short_log(tmp_path)
    assert main([command, *table_args(tmp_path)]) == 2
    # the line that says what 'auto' chose (datamodules.choices) may come first: it is not an error
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if not ln.startswith("pinsage: table has")]
    part = "test" if command == "test" else "validation"
    assert len(err) == 1 and err[0].startswith(f"pinsage {command}: error: dataset 'table' has no {part} pairs")
    assert ("add interactions" if command == "fit" else "nothing to evaluate") in err[0]
    assert not (tmp_path / "run").exists() or not list((tmp_path / "run").rglob("*.ckpt"))


def test_batch_covering_the_whole_catalogue_names_the_fix():
    import numpy as np

    from datamodules.loaders import TrainBatchDataset

    class Builder:
        num_items = 6

    pairs = np.array([[0, 1], [2, 3], [4, 5]])
    ds = TrainBatchDataset(pairs, Builder(), num_easy_negatives=10, miner=None, max_hard_negatives=0, seed=0)
    with pytest.raises(ValueError, match=r"no negatives \(its 3 pairs hold 6 of the catalogue's 6 items.*"
                                         r"set data.num_easy_negatives >= 1 and a data.batch_size"):
        ds.make_batch(np.arange(3))


def test_example_table_config_reads_a_users_own_files(tmp_path, capsys):
    from app.data_command import main as data_main

    (tmp_path / "interactions.tsv").write_text(
        "user_id\titem_id\ttimestamp\tcount\n" + "".join(
            f"u{u}\t0{(u + k) % 9}\t{u * 100 + k}\t{k + 1}\n" for u in range(30) for k in range(4)))
    (tmp_path / "items.tsv").write_text(
        "item_id\ttitle\tgenres\n" + "".join(f"0{i}\t=Item {i} (200{i})\tA|B\n" for i in range(9)))
    assert data_main(["--config", str(PROJECT / "configs" / "data" / "example-table.yaml"), f"--data.root={tmp_path}",
                      "--data.features=[log_degree, categories, year]", f"--data.cache_dir={tmp_path / 'c'}"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["dataset"] == "table" and out["num_items"] == 9 and out["num_users"] == 30
    assert out["num_interactions"] == 120 and out["num_duplicates_dropped"] == 0


def test_data_accepts_a_fit_config(tmp_path, capsys):
    from app.data_command import main as data_main

    assert data_main(["--config", str(PROJECT / "configs" / "synthetic.yaml"),
                      f"--data.cache_dir={tmp_path}"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["dataset"] == "synthetic" and out["num_items"] == 1000
