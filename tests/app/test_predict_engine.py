"""`pinsage predict --engine`: bad values and a missing Ray are one clear error line (no Ray needed)."""

import sys

import pytest

from app.cli import main


def test_unknown_engine_is_one_clear_error(tiny_run, tmp_path, capsys):
    _, last, args = tiny_run
    assert main(["predict", *args, "--ckpt_path", str(last), "--artifacts.output_dir", str(tmp_path / "x"),
                 "--engine", "spark"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("pinsage predict: error: --engine 'spark' is not valid") and "'ray'" in err[-1]
    assert not (tmp_path / "x").exists()


def test_engine_ray_without_ray_names_the_extra(tiny_run, tmp_path, capsys, monkeypatch):
    _, last, args = tiny_run
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    monkeypatch.setitem(sys.modules, "ray.data", None)
    assert main(["predict", *args, "--ckpt_path", str(last), "--artifacts.output_dir", str(tmp_path / "x"),
                 "--engine", "ray"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("pinsage predict: error: --engine ray needs Ray Data") and ".[ray]" in err
    assert not (tmp_path / "x").exists()


def test_ray_available_reports_a_missing_extra(monkeypatch):
    from app.ray_inference import ray_available

    monkeypatch.setitem(sys.modules, "ray", None)
    assert ray_available() is False
    with pytest.raises(ValueError, match=r"pip install -e \"\.\[ray\]\""):
        from app.ray_inference import _require_ray

        _require_ray()
