"""issue 20 item 16: own data needed two hand-written files; configs/table.yaml needs only the log's
path and column names.  Item 7: ids a spreadsheet reads as formulas are escaped in items.csv."""

import csv
import json
from pathlib import Path

import numpy as np

from app.cli import main

PROJECT = Path(__file__).resolve().parents[2]


def test_fit_test_predict_recommend_with_only_the_log_path(tmp_path, monkeypatch, capsys):
    from datamodules import choices

    monkeypatch.setattr(choices, "_announced", set())  # said once per process: not by an earlier test
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    items = ["=1+1", "@SUM(A1)", "-3"] + [f"it{k}" for k in range(117)]
    rows = [f"u{u},{items[i]}" for u, i in zip(rng.integers(0, 150, 2500), rng.integers(0, len(items), 2500))]
    Path("my.csv").write_text("user,item\n" + "\n".join(rows) + "\n")
    args = ["--config", str(PROJECT / "configs" / "table.yaml"), "--data.reader_args.path", "my.csv",
            "--data.reader_args.id_type", "str", "--data.cache_dir", str(tmp_path / "cache"),
            "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--model.hidden_channels=16",
            "--model.out_channels=8", "--data.num_walks=5", "--data.num_easy_negatives=40"]
    assert main(["fit", *args, "--trainer.max_epochs=1"]) == 0
    last = tmp_path / "outputs" / "table" / "checkpoints" / "last.ckpt"
    assert last.is_file()
    said = [ln for ln in capsys.readouterr().err.splitlines() if " so: split " in ln]
    assert len(said) == 1 and "has no timestamps" in said[0] and "split random" in said[0], said
    assert "user queries leave_one_out" in said[0]
    assert main(["test", *args, "--ckpt_path", str(last)]) == 0  # 120 items: NCF with fewer negatives
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "pinsage/item/mrr" in out
    art = tmp_path / "art"
    assert main(["predict", *args, "--ckpt_path", str(last), "--artifacts.output_dir", str(art)]) == 0
    with open(art / "items.csv", newline="") as f:
        cells = {r["id"] for r in csv.DictReader(f)}
    assert {"'=1+1", "'@SUM(A1)", "'-3"} <= cells and "=1+1" not in cells  # escaped like titles
    from app.recommend_command import main as recommend_main

    capsys.readouterr()
    assert recommend_main(["--artifacts", str(art), "--item", "=1+1", "--json", "-k", "5"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["query"]["item"] == "=1+1" and len(got["items"]) == 5


def test_a_log_with_timestamps_fits_and_tests_with_next_item_queries(tmp_path, monkeypatch, capsys):
    """The same config on a log with a time column: temporal split, next-item user queries."""
    from datamodules import choices

    monkeypatch.setattr(choices, "_announced", set())
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(1)
    n = 2500
    rows = zip(rng.integers(0, 150, n), rng.integers(0, 120, n), rng.permutation(n) + 1_600_000_000,
               rng.integers(1, 6, n))
    Path("timed.csv").write_text("user,item,ts,rating\n" + "".join(f"{u},{i},{t},{r}\n" for u, i, t, r in rows))
    args = ["--config", str(PROJECT / "configs" / "table.yaml"), "--data.reader_args.path", "timed.csv",
            "--data.reader_args.time_col", "ts", "--data.reader_args.weight_col", "rating",
            "--data.cache_dir", str(tmp_path / "cache"), "--trainer.logger=false",
            "--trainer.enable_progress_bar=false", "--model.hidden_channels=16", "--model.out_channels=8",
            "--data.num_walks=5", "--data.num_easy_negatives=40"]
    assert main(["fit", *args, "--trainer.max_epochs=1"]) == 0
    said = [ln for ln in capsys.readouterr().err.splitlines() if " so: split " in ln]
    assert len(said) == 1 and "has timestamps, weights" in said[0], said
    assert "split temporal" in said[0] and "user queries before" in said[0] and "half-life 3" in said[0]
    last = tmp_path / "outputs" / "table" / "checkpoints" / "last.ckpt"
    assert main(["test", *args, "--ckpt_path", str(last)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "pinsage/full/recall@20" in out and "pinsage/item/mrr" in out
