"""`pinsage predict`'s output folder: only its own artifact folders are ever replaced, stale temp
folders of a killed predict are cleaned, permissions follow the umask, titles are CSV-safe."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from app.artifact_format import check_output_dir, clean_stale_temps, read_title, safe_title
from app.cli import main


def predict(args, last, out, *extra):
    return main(["predict", *args, "--ckpt_path", str(last), "--artifacts.output_dir", str(out),
                 "--artifacts.evaluate=false", *extra])


def test_predict_refuses_a_folder_that_is_not_an_artifact_folder(tiny_run, tmp_path, capsys):
    _, last, args = tiny_run
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(last.read_bytes())
    (run / "NOTES.txt").write_text("notes\n")
    assert predict(args, ckpt, run) == 2
    err = capsys.readouterr().err
    assert "pinsage predict: error:" in err and "is not an artifact folder" in err and str(run) in err
    assert (run / "NOTES.txt").read_text() == "notes\n" and ckpt.read_bytes() == last.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing written beside it either


def test_predict_replaces_its_own_artifacts_and_an_empty_folder(tiny_run, tmp_path, capsys):
    _, last, args = tiny_run
    out = tmp_path / "art"
    out.mkdir()
    assert predict(args, last, out) == 0
    first = json.loads((out / "manifest.json").read_text())
    assert first["format"] == "pinsage-artifacts"
    assert predict(args, last, out) == 0  # its own folder: replaced
    second = json.loads((out / "manifest.json").read_text())
    assert second["checksums"] == first["checksums"]
    # a foreign file dropped into the folder makes it no longer ours to delete
    (out / "mine.txt").write_text("x")
    assert predict(args, last, out) == 2
    assert (out / "mine.txt").exists() and "not an artifact folder" in capsys.readouterr().err


def test_output_dir_dot_is_refused_before_any_work(tiny_run, tmp_path, monkeypatch, capsys):
    _, last, args = tiny_run
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("x")
    import app.artifacts as artifacts

    def boom(*a, **k):  # the data module must not even be set up
        raise AssertionError("predict did work before refusing the output folder")

    monkeypatch.setattr(artifacts, "clean_stale_temps", boom)
    assert predict(args, last, ".") == 2
    assert "is the current folder" in capsys.readouterr().err and (tmp_path / "keep.txt").exists()
    with pytest.raises(ValueError, match="is a file"):
        check_output_dir(str(tmp_path / "keep.txt"))


def test_stale_temp_of_a_killed_predict_is_cleaned_and_live_ones_are_kept(tmp_path):
    out = tmp_path / "art"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".art.{dead.pid}.abc123.tmp"
    stale.mkdir()
    (stale / "embeddings.npy").write_bytes(b"half")
    live = tmp_path / f".art.{os.getpid()}.def456.tmp"
    live.mkdir()
    old = tmp_path / f".art.old-{dead.pid}"
    old.mkdir()
    other = tmp_path / ".art.notes"  # not named like ours: never touched
    other.mkdir()
    assert sorted(clean_stale_temps(out)) == sorted([stale, old])
    assert not stale.exists() and not old.exists() and live.exists() and other.exists()


def test_artifact_folder_permissions_follow_the_umask(tiny_run, tmp_path):
    _, last, args = tiny_run
    out = tmp_path / "art"
    old = os.umask(0o022)
    try:
        assert predict(args, last, out) == 0
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o755
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o644}


def test_titles_are_csv_formula_safe_and_round_trip():
    for title in ["=HYPERLINK(\"x\")", "+1", "-2", "@SUM(A1)", "'quoted", "plain", "", "a=b"]:
        cell = safe_title(title)
        assert not cell.startswith(("=", "+", "-", "@")) and read_title(cell) == title
    assert safe_title("plain") == "plain"


def test_items_csv_titles_with_formulas_and_newlines(tmp_path):
    from app.artifacts import write_artifacts  # noqa: F401 - the writer uses safe_title
    from app.recommend_command import _one_line

    path = tmp_path / "items.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "id", "title"])
        w.writerow([0, "a", safe_title("=cmd|' /C calc'!A0")])
        w.writerow([1, "b", safe_title("two\nlines")])
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [read_title(r["title"]) for r in rows] == ["=cmd|' /C calc'!A0", "two\nlines"]
    assert "\n" not in _one_line("two\nlines") and _one_line("two\nlines") == "two\\nlines"
    assert np.all([not r["title"].startswith("=") for r in rows])


def test_the_report_reads_items_through_the_format_module(tmp_path):
    """`pinsage report` decodes CSV-safe cells like the recommender (it once showed the leading ')."""
    from app import artifact_format as fmt
    from app.report import ReportInputs, load_artifacts

    np.save(tmp_path / fmt.EMBEDDINGS, np.eye(3, dtype=np.float32))
    fmt.write_items(tmp_path / fmt.ITEMS, ["=a", "b", "+c"], ["=SUM(A1)", "'quoted", ""], None, None)
    man = fmt.write_manifest(tmp_path, {"dataset": "tiny", "count": 3, "dims": 3})
    assert man["format"] == fmt.FORMAT and fmt.is_artifact_folder(tmp_path)
    assert set(man["checksums"]) == {fmt.EMBEDDINGS, fmt.ITEMS}
    fmt.verify_checksums(tmp_path, man)
    inp = ReportInputs()
    load_artifacts(tmp_path, inp, with_dataset=False)
    assert list(inp.titles) == ["=SUM(A1)", "'quoted", "item +c"] and inp.name == "tiny"
    (tmp_path / fmt.ITEMS).write_text("index,id,title\n0,x,y\n")
    with pytest.raises(fmt.ArtifactError, match="items.csv has .* bytes"):
        fmt.verify_checksums(tmp_path, man)


def test_similar_items_flag_and_its_deprecated_spelling(tiny_run, tmp_path, capsys):
    """`--artifacts.similar_items` sizes the top-K table; `--artifacts.neighbours` (easily confused
    with T, --data.num_neighbors) still works, with a line saying it is deprecated."""
    _, last, args = tiny_run
    assert predict(args, last, tmp_path / "a", "--artifacts.similar_items", "4") == 0
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["neighbours"]["k"] == 4
    assert "deprecated" not in capsys.readouterr().err
    assert predict(args, last, tmp_path / "b", "--artifacts.neighbours", "3") == 0
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["neighbours"]["k"] == 3
    assert "--artifacts.neighbours is deprecated: use --artifacts.similar_items" in capsys.readouterr().err
    assert predict(args, last, tmp_path / "c") == 0
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["neighbours"]["k"] == 50
