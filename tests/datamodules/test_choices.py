"""issue 20 item 16: ``auto`` data settings are chosen from what the log has (timestamps or not),
explicit values are kept, and one stderr line says what was chosen and why."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from datamodules import choices
from datamodules.choices import resolve_half_life, resolve_user_queries
from datamodules.datamodule import PinSageDataModule

PROJECT = Path(__file__).resolve().parents[2]


def write_log(path: Path, timed: bool, weights: bool = False, users: int = 60, items: int = 80, seed: int = 0):
    """A small CSV log (``user,item[,ts][,rating]``), rows shuffled so file order is not time order."""
    rng = np.random.default_rng(seed)
    rows = [(u, int(i)) for u in range(users) for i in rng.choice(items, size=int(rng.integers(5, 15)), replace=False)]
    rng.shuffle(rows)
    ts = rng.permutation(len(rows)) + 1_600_000_000
    head = "user,item" + (",ts" if timed else "") + (",rating" if weights else "")
    lines = [f"{u},{i}" + (f",{t}" if timed else "") + (f",{1 + (u + i) % 5}" if weights else "")
             for (u, i), t in zip(rows, ts)]
    path.write_text(head + "\n" + "\n".join(lines) + "\n")
    return path


def table_dm(tmp_path, log: Path, **over) -> PinSageDataModule:
    """A DataModule with configs/data/table.yaml's settings on ``log``."""
    cfg = yaml.safe_load((PROJECT / "configs" / "data" / "table.yaml").read_text())
    cfg["reader_args"] = {**cfg["reader_args"], "path": str(log), **over.pop("reader_args", {})}
    cfg.update(root=str(tmp_path), cache_dir=str(tmp_path / "cache"), **over)
    return PinSageDataModule(**cfg)


def test_resolution_rules():
    assert resolve_user_queries("auto", "users", True) == "before"
    assert resolve_user_queries("auto", "users", False) == "leave_one_out"
    assert resolve_user_queries("auto", "items", True) == "leave_one_out"  # only user queries pool "before"
    assert resolve_user_queries("leave_one_out", "users", True) == "leave_one_out"  # explicit: kept
    assert resolve_half_life("auto", True) == choices.AUTO_HALF_LIFE and resolve_half_life("auto", False) is None
    assert resolve_half_life(5, False) == 5.0 and resolve_half_life(None, True) is None
    with pytest.raises(ValueError, match=r"user_recency_half_life must be a number > 0.*got -1"):
        resolve_half_life(-1, True)
    with pytest.raises(ValueError, match=r"user_queries='later' is not valid; choose one of"):
        resolve_user_queries("later", "users", True)


def test_a_log_with_timestamps_gets_temporal_next_item_queries(tmp_path, capsys):
    dm = table_dm(tmp_path, write_log(tmp_path / "timed.csv", timed=True, weights=True),
                  reader_args={"time_col": "ts", "weight_col": "rating"})
    dm.setup()
    assert dm.chosen == {"split": "temporal", "pairs": "consecutive", "user_queries": "before",
                         "user_recency_half_life": choices.AUTO_HALF_LIFE}
    assert dm.user_queries == "before" and dm.user_recency_half_life == choices.AUTO_HALF_LIFE
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("pinsage:")]
    assert len(err) == 1, err  # one line (not also split's own 'auto' line)
    line = err[0]
    assert "has timestamps, weights, no item table" in line and "split temporal" in line
    assert "user queries before" in line and "recency half-life 3 (" in line
    assert line.count("; auto)") == 3 and "weights steer the walks" in line
    # the training queries are the items before each positive: a user's first item is never one
    data = dm.train_dataset()
    ptr = dm.full_graph_data()["history"][0]
    assert len(data) == int(ptr[-1]) - int((np.diff(ptr) > 0).sum())


def test_a_log_without_timestamps_gets_a_random_split_and_whole_history_queries(tmp_path, capsys):
    dm = table_dm(tmp_path, write_log(tmp_path / "plain.csv", timed=False))
    dm.setup()
    assert dm.chosen == {"split": "random", "pairs": "cooccurrence", "user_queries": "leave_one_out",
                         "user_recency_half_life": None}
    assert dm.user_recency_half_life is None
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("pinsage:")]
    assert len(err) == 1, err
    assert "has no timestamps, no weights, no item table" in err[0] and "split random" in err[0]
    assert "user queries leave_one_out" in err[0] and "equal weights" in err[0]
    assert dm.dataset.split.sizes()["test"] == 60  # one random held-out interaction per user
    assert len(dm.train_dataset()) == int(dm.full_graph_data()["history"][0][-1])  # every training row


def test_explicit_values_are_kept(tmp_path, capsys):
    log = write_log(tmp_path / "timed.csv", timed=True)
    dm = table_dm(tmp_path, log, reader_args={"time_col": "ts"}, split="random", user_queries="leave_one_out",
                  user_recency_half_life=None)
    dm.setup()
    assert dm.chosen["split"] == "random" and dm.user_queries == "leave_one_out"
    assert dm.user_recency_half_life is None
    line = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("pinsage:")][0]
    assert "split random (a seeded" in line and line.count("; auto)") == 0 and line.count("; as set)") == 3
    # nothing left to auto: no line at all
    dm2 = table_dm(tmp_path, log, reader_args={"time_col": "ts"}, split="temporal", pairs="consecutive",
                   user_queries="before", user_recency_half_life=2.0)
    dm2.setup()
    assert dm2.user_queries == "before" and dm2.user_recency_half_life == 2.0
    assert not [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("pinsage:")]


def test_explicit_before_on_a_log_without_timestamps_is_refused(tmp_path):
    dm = table_dm(tmp_path, write_log(tmp_path / "plain.csv", timed=False), user_queries="before")
    with pytest.raises(ValueError, match="user_queries='before' needs a log with timestamps"):
        dm.setup()


def test_half_life_auto_reads_the_log_on_first_use(tmp_path):
    """``user_recency_half_life`` read before ``setup`` (e.g. by an evaluator) is the resolved value."""
    dm = table_dm(tmp_path, write_log(tmp_path / "timed.csv", timed=True), reader_args={"time_col": "ts"})
    assert dm.user_recency_half_life == choices.AUTO_HALF_LIFE and dm.dataset is not None


@pytest.mark.parametrize("timed", [True, False])
def test_pinsage_data_says_what_the_user_queries_pool(tmp_path, capsys, timed):
    import json

    from app.data_command import main

    write_log(tmp_path / "log.csv", timed=timed)
    ra = {"path": "log.csv", **({"time_col": "ts"} if timed else {})}
    assert main(["--config", str(PROJECT / "configs" / "data" / "table.yaml"), "--data.root", str(tmp_path),
                 "--data.cache_dir", str(tmp_path / "c"), "--data.reader_args", json.dumps(ra)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["split"] == ("temporal" if timed else "random")
    assert out["user_queries"] == ("before" if timed else "leave_one_out")
    assert out["user_recency_half_life"] == (choices.AUTO_HALF_LIFE if timed else None)
