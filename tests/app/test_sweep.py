"""``pinsage sweep``: wandb sweep files run locally with Optuna (grid / random / bayes), pruning,
trials.csv + best config, resume after a kill; every sweep file stays valid for ``wandb sweep``."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

optuna = pytest.importorskip("optuna", reason="pinsage sweep needs optuna (the dev / tools extra)")

from app.cli import main  # noqa: E402
from app.sweep import (SweepError, SweepRunner, expand_command, format_value, load_sweep,  # noqa: E402
                       resolve_fit_config)

PROJECT = Path(__file__).resolve().parents[2]
SWEEPS = sorted((PROJECT / "configs" / "sweeps").glob("*.yaml"))
SCHEMA = Path(__file__).parent / "data" / "wandb_sweep_schema.json"  # wandb/sweeps src/sweeps/config/schema.json (MIT)
READER = {"num_users": 300, "num_items": 400, "num_interactions": 5000, "num_communities": 5, "feature_dim": 8,
          "seed": 0}


def write_sweep(path: Path, method: str = "bayes", params: dict = None, command: list = None, **extra) -> Path:
    doc = {"program": "pinsage", "method": method, "metric": {"name": "val/pinsage/item/mrr", "goal": "maximize"},
           "parameters": params or {"model.lr": {"distribution": "log_uniform_values", "min": 0.003, "max": 0.1},
                                    "model.margin": {"values": [0.05, 0.3]}},
           "command": command or ["${env}", "pinsage", "fit", "--config", str(PROJECT / "configs" / "synthetic.yaml"),
                                  "${args}"], **extra}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def read_csv(path: Path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------------------------
# the sweep file
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_every_sweep_file_is_valid_for_wandb_and_for_pinsage_sweep(path):
    jsonschema = pytest.importorskip("jsonschema")
    doc = yaml.safe_load(path.read_text())
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    errors = [e.message for e in validator.iter_errors(doc)]
    assert not errors, errors
    sweep = load_sweep(str(path))
    assert sweep.metric == "val/pinsage/item/mrr" and sweep.goal == "maximize" and sweep.swept
    # the local runner runs exactly `pinsage fit --config <that config>` plus the values
    argv = expand_command(sweep, ["--model.lr=0.001"])
    assert argv[:3] == ["fit", "--config", doc["command"][doc["command"].index("--config") + 1]]
    assert argv[-1] == "--model.lr=0.001"


def test_schema_rejects_what_wandb_rejects():
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    assert list(validator.iter_errors({"method": "bayes", "trials": 3}))  # no extra top-level keys
    assert list(validator.iter_errors({"method": "anneal"}))


@pytest.mark.parametrize("params, method, match", [
    ({"model.lr": {"distribution": "normal", "mu": 0, "sigma": 1}}, "bayes", "distribution 'normal' is not supported"),
    ({"model.lr": {"min": 0.1, "max": 0.01}}, "random", "min 0.1 must be < max 0.01"),
    ({"model.lr": {"distribution": "uniform", "min": 0.001, "max": 0.01}}, "grid", "method grid needs `values`"),
    ({"model.lr": {"value": 0.01}}, "random", "no parameter varies"),
    ({"model.lr": [0.1, 0.2]}, "random", "expected a mapping"),
])
def test_bad_parameters_are_named(tmp_path, params, method, match):
    with pytest.raises(SweepError, match=match):
        load_sweep(str(write_sweep(tmp_path / "s.yaml", method=method, params=params)))


def test_bad_sweep_file_is_one_line_exit_2(tmp_path, capsys):
    write_sweep(tmp_path / "bad.yaml", method="anneal")
    assert main(["sweep", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pinsage sweep: error:") and "method='anneal'" in err[0]
    write_sweep(tmp_path / "noargs.yaml", command=["pinsage", "fit", "--config", "configs/synthetic.yaml"])
    assert main(["sweep", str(tmp_path / "noargs.yaml")]) == 2
    assert "${args}" in capsys.readouterr().err
    assert main(["sweep", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    # random/bayes need a number of trials
    write_sweep(tmp_path / "ok.yaml")
    assert main(["sweep", str(tmp_path / "ok.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "--trials N" in capsys.readouterr().err


def test_an_override_the_cli_refuses_is_caught_before_any_trial(tmp_path, capsys):
    write_sweep(tmp_path / "s.yaml", params={"model.no_such_key": {"values": [1, 2]}}, method="grid")
    assert main(["sweep", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "does not parse" in err and "no_such_key" in err
    assert not (tmp_path / "o" / "trials").exists()


def test_parameters_map_to_optuna_and_back(tmp_path):
    params = {"a.lr": {"distribution": "log_uniform", "min": -5.0, "max": -1.0},
              "a.win": {"values": [[0.01, 0.05], [0.02, 0.1]]},
              "a.k": {"distribution": "int_uniform", "min": 2, "max": 4},
              "a.flag": {"values": [True, False]},
              "a.c": {"value": "x"}}
    sweep = load_sweep(str(write_sweep(tmp_path / "s.yaml", method="random", params=params)))
    by = {p.name: p for p in sweep.params}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        t = study.ask()
        vals = {p.name: p.suggest(t) for p in sweep.params}
        assert 0.0067 <= vals["a.lr"] <= 0.368  # exp(-5) .. exp(-1): wandb's log_uniform takes exponents
        assert vals["a.win"] in ([0.01, 0.05], [0.02, 0.1]) and vals["a.k"] in (2, 3, 4)
        assert vals["a.flag"] in (True, False) and vals["a.c"] == "x"
        study.tell(t, 0.0)
    assert by["a.k"].grid() == [2, 3, 4]
    assert format_value(True) == "true" and format_value([0.01, 0.05]) == "[0.01, 0.05]" and format_value(None) == "null"


def test_grid_runs_every_point_once(tmp_path):
    sweep = load_sweep(str(write_sweep(tmp_path / "s.yaml", method="grid", params={
        "model.margin": {"values": [0.1, 0.2, 0.3]}, "data.num_neighbors": {"values": [5, 10]}})))
    assert sweep.grid_size() == 6


# ----------------------------------------------------------------------------------------------
# the runner with a stand-in for `pinsage fit` (fast): pruning, failures, outputs
# ----------------------------------------------------------------------------------------------
FAKE_FIT = textwrap.dedent("""
    import json, sys, time
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
    lr = float(args["model.lr"])
    if lr < 0:
        print("boom", flush=True)
        sys.exit(3)
    with open(args["metrics_log.path"], "a") as f:
        for epoch in range(4):
            f.write(json.dumps({"epoch": epoch, "val/pinsage/item/mrr": lr * (1 + epoch) / 4}) + "\\n")
            f.flush()
            time.sleep(0.4)
""")


def fake_runner(tmp_path, values, method="grid", **kw) -> SweepRunner:
    fake = tmp_path / "fake_fit.py"
    fake.write_text(FAKE_FIT)
    sweep = load_sweep(str(write_sweep(tmp_path / "s.yaml", method=method,
                                       params={"model.lr": {"values": values}}, command=[
                                           "${env}", "pinsage", "fit", "--config",
                                           str(PROJECT / "configs" / "synthetic.yaml"), "--trainer.logger=false",
                                           "${args}"])))
    runner = SweepRunner(sweep, tmp_path / "out", kw.pop("trials", None), 1, [], quiet=True, poll_s=0.05, **kw)
    runner.child = [sys.executable, str(fake)]
    return runner


def test_bad_trials_are_pruned_and_failures_recorded(tmp_path):
    # MedianPruner: after 2 complete trials, a trial below their median at the same epoch stops
    runner = fake_runner(tmp_path, [0.9, 0.8, 0.88, 0.1, -1.0])
    runner._sampler = lambda: optuna.samplers.BruteForceSampler(seed=0)
    order = [0.9, 0.8, 0.88, 0.1, -1.0]
    runner._study_orig = runner._study

    def study_in_order():
        s = runner._study_orig()
        for v in order:
            s.enqueue_trial({"model.lr": v})
        return s

    runner._study = study_in_order
    assert runner.run() == 0
    rows = {float(r["model.lr"]): r for r in read_csv(tmp_path / "out" / "trials.csv")}
    assert set(rows) == set(order)
    assert rows[0.9]["state"] == rows[0.8]["state"] == rows[0.88]["state"] == "complete"
    assert rows[0.1]["state"] == "pruned" and int(rows[0.1]["epochs"]) < 4
    assert rows[-1.0]["state"] == "fail" and "exit 3" in rows[-1.0]["error"]
    assert float(rows[0.9]["value"]) == pytest.approx(0.9)  # the metric at the last epoch
    info = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert info["best"]["values"] == {"model.lr": 0.9}
    best = (tmp_path / "out" / "best-config.yaml").read_text()
    assert "model.lr" in best.splitlines()[1] and "val/pinsage/item/mrr=0.9" in best.splitlines()[0]
    _, cfg = resolve_fit_config(["fit", "--config", str(tmp_path / "out" / "best-config.yaml")])
    assert cfg.model.lr == pytest.approx(0.9) and cfg.trainer.default_root_dir == str(tmp_path / "out" / "best")


@pytest.mark.parametrize("method", ["grid", "random"])
def test_a_trial_left_running_by_a_kill_runs_again_with_its_values(tmp_path, method):
    first = fake_runner(tmp_path, [0.5, 0.6, 0.7], method=method, trials=3)
    first.out.mkdir(parents=True)
    study = first._study()
    t = study.ask()  # what a killed sweep leaves behind: a RUNNING trial nobody runs
    lost = first.sweep.params[0].suggest(t)
    assert study.trials[0].state.name == "RUNNING"
    runner = fake_runner(tmp_path, [0.5, 0.6, 0.7], method=method, trials=3)
    assert runner.run() == 0
    rows = read_csv(tmp_path / "out" / "trials.csv")
    assert len(rows) == 3 and all(r["state"] == "complete" for r in rows) and "0" not in [r["trial"] for r in rows]
    assert lost in [float(r["model.lr"]) for r in rows]
    if method == "grid":  # every grid point exactly once
        assert sorted(float(r["model.lr"]) for r in rows) == [0.5, 0.6, 0.7]


def test_a_second_sweep_on_the_same_folder_is_refused(tmp_path):
    from app.sweep import _lock

    runner = fake_runner(tmp_path, [0.5, 0.6])
    (tmp_path / "out").mkdir()
    held = _lock(tmp_path / "out")
    try:
        with pytest.raises(SweepError, match="another pinsage sweep is running"):
            runner.run()
    finally:
        held.close()
    assert runner.run() == 0 and len(read_csv(tmp_path / "out" / "trials.csv")) == 2


def test_other_sweep_file_on_the_same_folder_is_refused(tmp_path):
    assert fake_runner(tmp_path, [0.5, 0.6]).run() == 0
    with pytest.raises(SweepError, match="another sweep file"):
        fake_runner(tmp_path, [0.5, 0.7]).run()


# ----------------------------------------------------------------------------------------------
# the real thing: 6 tiny `pinsage fit` trials over 2 parameters, killed and resumed
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sweep_of_six_tiny_trials_resumes_after_a_kill(tmp_path):
    from app.report import wandb_records

    cache = tmp_path / "cache"
    command = ["${env}", "pinsage", "fit", "--config", str(PROJECT / "configs" / "synthetic.yaml"),
               f"--data.reader_args={json.dumps(READER)}", f"--data.cache_dir={cache}", "--data.batch_size=64",
               "--data.num_neighbors=5", "--data.num_walks=10", "--data.num_easy_negatives=40",
               "--data.max_hard_negatives=0", "--data.num_workers=0", "--data.persistent_workers=false",
               "--model.hidden_channels=16", "--model.out_channels=8", "--trainer.max_epochs=1",
               "--trainer.limit_train_batches=4", "--trainer.enable_progress_bar=false",
               "--trainer.enable_model_summary=false", "--trainer.accelerator=cpu", "--trainer.devices=1", "${args}"]
    path = write_sweep(tmp_path / "tiny.yaml", method="bayes", command=command, run_cap=6, name="tiny")
    out = tmp_path / "sweeps" / "tiny"
    env = dict(os.environ, WANDB_MODE="offline", WANDB_BASE_URL="http://127.0.0.1:9", PINSAGE_CACHE=str(cache),
               PYTHONPATH=str(PROJECT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "app.cli", "sweep", str(path), "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 900
        while not (out / "trials" / "002").is_dir():  # trials 0 and 1 are done, trial 2 has started
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the sweep made no progress"
            time.sleep(0.5)
        time.sleep(2)
        proc.send_signal(signal.SIGKILL)  # no chance to clean up
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(read_csv(out / "trials.csv")) == 2

    # the same command continues: the interrupted trial 2 runs again (same values), 6 in all
    res = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "trial 2 was interrupted: running it again" in res.stderr
    rows = read_csv(out / "trials.csv")
    assert len(rows) == 6 and all(r["state"] in ("complete", "pruned") for r in rows)
    nums = [int(r["trial"]) for r in rows]
    assert 2 not in nums and nums[:2] == [0, 1]
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'optuna.db'}")
    interrupted = study.trials[2]
    assert interrupted.user_attrs.get("interrupted")
    redone = [t for t in study.trials if t.number > 2 and t.params == interrupted.params]
    assert redone and redone[0].state.name == "COMPLETE"
    for r in rows:
        assert 0 < float(r["value"]) <= 1 and 0.003 <= float(r["model.lr"]) <= 0.1 and r["model.margin"] in ("0.05", "0.3")
    # the best config is a full fit config with the best values
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    best = max(rows, key=lambda r: float(r["value"]))
    assert summary["best"]["trial"] == int(best["trial"])
    _, cfg = resolve_fit_config(["fit", "--config", summary["best_config"]])
    assert cfg.model.lr == pytest.approx(float(best["model.lr"])) and cfg.model.margin == float(best["model.margin"])
    assert cfg.data.num_neighbors == 5 and cfg.trainer.max_epochs == 1
    # each trial is an offline wandb run in the sweep's group (wandb sync shows the sweep)
    for r in rows:
        log = next(Path(r["trial_dir"]).glob("wandb/offline-run-*/run-*.wandb"))
        # wandb's service process may still be flushing the last trial's file when the sweep returns
        for _ in range(60):
            runs = [rec.run for rec in wandb_records(log) if rec.WhichOneof("record_type") == "run"]
            if runs:
                break
            time.sleep(1)
        assert runs and runs[0].run_group == "tiny" and runs[0].display_name == f"tiny-{int(r['trial']):03d}"
