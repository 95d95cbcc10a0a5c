"""issue 20 item 13: a log too large for memory is one line before the read (file, size, estimate,
available, what would fit), and a log that fits is read as before."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from datamodules import memory
from datamodules.memory import LogTooLarge, check_log_fits, estimate_text_read
from datamodules.readers import read_table_log

PROJECT = Path(__file__).resolve().parents[2]


def _log(path: Path, rows: int, str_ids: bool = False, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    u, i, t = rng.integers(0, rows // 10 + 1, rows), rng.integers(0, rows // 20 + 1, rows), rng.integers(0, 10**9, rows)
    p = "u" if str_ids else ""
    path.write_text("user,item,ts\n" + "".join(f"{p}{a},{p}{b},{c}\n" for a, b, c in zip(u, i, t)))
    return path


def _cgroup_v1(tmp_path, path: str, limits: dict) -> tuple:
    """A fake /proc/self/cgroup naming ``path`` and a v1 memory tree with ``limits`` per level
    (``{rel: (limit, usage, inactive_file)}``)."""
    proc = tmp_path / "cgroup"
    proc.write_text(f"5:devices:/\n4:memory:{path}\n0::/\n")
    fs = tmp_path / "fs"
    for rel, (limit, usage, inactive) in limits.items():
        d = fs / "memory" / rel
        d.mkdir(parents=True, exist_ok=True)
        (d / "memory.limit_in_bytes").write_text(f"{limit}\n")
        (d / "memory.usage_in_bytes").write_text(f"{usage}\n")
        (d / "memory.stat").write_text(f"cache 5\ntotal_inactive_file {inactive}\n")
    return proc, fs


def test_cgroup_v1_limit_of_this_group_and_its_ancestors(tmp_path):
    no_limit = 9223372036854771712
    proc, fs = _cgroup_v1(tmp_path, "/a/b", {"": (no_limit, 10 * 2**30, 0), "a": (6 * 2**30, 2 * 2**30, 2**30),
                                             "a/b": (4 * 2**30, 3 * 2**30, 2**29)})
    rooms = sorted(memory._cgroup_rooms(proc, fs))
    # b: 4 GB - (3 GB used - 0.5 GB reclaimable page cache); a: 6 - (2 - 1); the root has no limit
    assert rooms == [(int(1.5 * 2**30), 4 * 2**30), (5 * 2**30, 6 * 2**30)]


def test_cgroup_v2_memory_max(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text("0::/job\n")
    d = tmp_path / "fs" / "job"
    d.mkdir(parents=True)
    (tmp_path / "fs" / "cgroup.controllers").write_text("memory\n")
    (tmp_path / "fs" / "memory.max").write_text("max\n")  # the root: no limit
    (d / "memory.max").write_text(f"{3 * 2**30}\n")
    (d / "memory.current").write_text(f"{2**30}\n")
    (d / "memory.stat").write_text("anon 1\ninactive_file 0\n")
    assert memory._cgroup_rooms(proc, tmp_path / "fs") == [(2 * 2**30, 3 * 2**30)]


def test_sizes_as_a_person_reads_them():
    assert memory.human(5 * 2**30) == "5.00 GB" and memory.human(3 * 2**20) == "3.0 MB"


def test_available_bytes_is_the_smallest_room(monkeypatch):
    monkeypatch.setattr(memory, "_meminfo", lambda: 20 * 2**30)
    monkeypatch.setattr(memory, "_cgroup_rooms", lambda: [(3 * 2**30, 4 * 2**30)])
    assert memory.available_bytes() == 3 * 2**30
    assert memory.memory_limit_note() == " (cgroup memory limit 4.00 GB)"
    monkeypatch.setattr(memory, "_cgroup_rooms", lambda: [])
    assert memory.available_bytes() == 20 * 2**30 and memory.memory_limit_note() == ""


@pytest.mark.parametrize("str_ids", [False, True])
def test_refused_above_a_simulated_limit_and_read_below_it(tmp_path, monkeypatch, str_ids):
    path = _log(tmp_path / "log.csv", 60_000, str_ids)  # > the 1 MiB head: rows are extrapolated
    kw = dict(sep=",", header=True, names=None, encoding="utf-8", str_cols=("user", "item") if str_ids else ())
    est = estimate_text_read(path, **kw)
    assert abs(est["rows"] - 60_000) < 600 and est["need"] > est["size"]
    monkeypatch.setattr(memory, "available_bytes", lambda: est["need"] - 1)
    with pytest.raises(LogTooLarge) as e:
        read_table_log(path, time_col="ts", id_type="str" if str_ids else "int")
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and f"is {memory.human(est['size'])}, about" in msg
    assert f"needs at least {memory.human(est['need'])} of memory but" in msg and "would fit" in msg
    fit_rows = int(msg.split("(~")[1].split(" rows")[0].replace(",", ""))
    assert 0.9 * est["rows"] < fit_rows <= est["rows"]  # what fits: (just) less than what there is
    monkeypatch.setattr(memory, "available_bytes", lambda: est["need"])  # just enough: read as before
    inter = read_table_log(path, time_col="ts", id_type="str" if str_ids else "int")
    assert inter.timestamps is not None and inter.num_interactions > 50_000
    monkeypatch.setattr(memory, "available_bytes", lambda: 1)
    monkeypatch.setenv("PINSAGE_MEMORY_CHECK", "0")  # the check switched off: read anyway
    again = read_table_log(path, time_col="ts", id_type="str" if str_ids else "int")
    assert again.num_interactions == inter.num_interactions


def test_parquet_refused_above_a_simulated_limit_and_read_below_it(tmp_path, monkeypatch):
    import pandas as pd

    path = tmp_path / "log.parquet"
    pd.read_csv(_log(tmp_path / "log.csv", 30_000)).to_parquet(path)
    est = memory.estimate_parquet_read(path)
    assert est["rows"] == 30_000 and est["need"] > 30_000 * 40  # 3 int64 columns, twice, + indices
    monkeypatch.setattr(memory, "available_bytes", lambda: est["need"] - 1)
    with pytest.raises(LogTooLarge, match=r"log\.parquet: the file is .* about 30,000 rows .* would fit"):
        read_table_log(path, time_col="ts")
    monkeypatch.setattr(memory, "available_bytes", lambda: est["need"])
    assert read_table_log(path, time_col="ts").num_interactions > 25_000


def test_multi_character_separator_counts_the_rewritten_copy(tmp_path):
    a = tmp_path / "a.csv"
    a.write_text("".join(f"{k % 97},{k % 89}\n" for k in range(5000)))
    b = tmp_path / "b.dat"
    b.write_text(a.read_text().replace(",", "::"))
    ea = estimate_text_read(a, sep=",", header=False, names=["u", "i"], encoding="utf-8")
    eb = estimate_text_read(b, sep="::", header=False, names=["u", "i"], encoding="utf-8")
    assert ea["rows"] == eb["rows"] == 5000 and eb["need"] - ea["need"] > 2 * ea["size"]


def test_unknown_memory_or_unparsable_head_never_refuses(tmp_path, monkeypatch):
    path = _log(tmp_path / "log.csv", 100)
    monkeypatch.setattr(memory, "available_bytes", lambda: None)
    check_log_fits(path, sep=",", header=True, names=None, encoding="utf-8")
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"user,item\n\xff\xfe,1\n")
    monkeypatch.setattr(memory, "available_bytes", lambda: 1)
    check_log_fits(bad, sep=",", header=True, names=None, encoding="utf-8")  # the read says what is wrong


def test_pinsage_data_says_it_in_one_line(tmp_path, monkeypatch, capsys):
    from app.data_command import main

    _log(tmp_path / "log.csv", 2000)
    monkeypatch.setattr(memory, "available_bytes", lambda: 10_000)
    code = main(["--data.dataset", "table", "--data.root", str(tmp_path), "--data.cache_dir", str(tmp_path / "c"),
                 "--data.reader_args", json.dumps({"path": "log.csv", "time_col": "ts"})])
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert code == 2 and len(err) == 1 and "log.csv" in err[0] and "would fit" in err[0], err
    assert not any((tmp_path / "c").glob("table-*"))  # nothing cached


_PEAK = """
import json, sys
from datamodules.readers import read_table_log
def hwm():
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) * 1024
base = hwm()
read_table_log(sys.argv[1], time_col='ts', id_type=sys.argv[2])
print(json.dumps(hwm() - base))
"""


@pytest.mark.slow
@pytest.mark.parametrize("str_ids", [False, True])
def test_the_estimate_is_below_the_real_peak_and_close_to_it(tmp_path, str_ids):
    """A log that fits must not be refused: the estimate stays under the read's measured peak."""
    path = _log(tmp_path / "log.csv", 1_500_000, str_ids)
    est = estimate_text_read(path, sep=",", header=True, names=None, encoding="utf-8",
                             str_cols=("user", "item") if str_ids else ())
    out = subprocess.run([sys.executable, "-c", _PEAK, str(path), "str" if str_ids else "int"], cwd=PROJECT,
                         capture_output=True, text=True, check=True, env={"PYTHONPATH": str(PROJECT), "PATH": ""})
    peak = json.loads(out.stdout.strip().splitlines()[-1])
    assert 0.6 * peak < est["need"] <= peak, (est["need"], peak)
