"""issue 20 item 9: `pinsage report` after the README's own sequence (fit -> test -> predict)."""

import json
import os
import time

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="pinsage report needs matplotlib (the dev / tools extra)")

from app.cli import main  # noqa: E402
from app.report import _datamodule_from_config, read_history  # noqa: E402


def test_history_prefers_the_run_with_training_curves_over_a_newer_test_run(tmp_path):
    fit = tmp_path / "logs" / "fit" / "metrics.csv"
    test = tmp_path / "logs" / "test" / "metrics.csv"
    fit.parent.mkdir(parents=True)
    test.parent.mkdir(parents=True)
    fit.write_text("step,epoch,train/loss,val/pinsage/item/mrr\n0,0,1.0,\n9,0,,0.3\n19,1,0.5,\n29,1,,0.4\n")
    test.write_text("step,test/pinsage/item/mrr\n0,0.41\n")
    os.utime(fit, (time.time() - 100, time.time() - 100))
    df, source = read_history(tmp_path)
    assert source == str(fit) and "train/loss" in df


def test_report_loads_the_dataset_of_an_artifact_folder(tiny_run, tmp_path):
    run, last, args = tiny_run
    out = tmp_path / "art"
    assert main(["predict", *args, "--ckpt_path", str(last), "--artifacts.output_dir", str(out),
                 "--artifacts.index", "exact", "--artifacts.evaluate", "false"]) == 0
    cfg = json.loads((out / "manifest.json").read_text())["config"]
    assert "__path__" in cfg["data"]  # what jsonargparse records for `data: data/synthetic.yaml`
    dm = _datamodule_from_config(cfg)
    assert dm.dataset.num_items == 400
    from app.report import ReportInputs, load_artifacts

    inp = ReportInputs()
    load_artifacts(out, inp)
    assert inp.labels is not None and len(set(np.asarray(inp.labels).tolist()) - {-1}) > 1  # a coloured map
    assert inp.degree is not None
    assert not any("not sampled" in n or "cannot" in n.lower() for n in inp.notes), inp.notes
