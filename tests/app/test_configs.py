"""Every YAML under configs/ is accepted by the CLI that uses it (parsed, not run)."""

from pathlib import Path

import pytest
import yaml

from app.sweep import SweepError, resolve_fit_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PROJECT = CONFIGS.parent
FULL = sorted(p for p in CONFIGS.glob("*.yaml"))
DATA = sorted((CONFIGS / "data").glob("*.yaml"))
SWEEPS = sorted((CONFIGS / "sweeps").glob("*.yaml"))


def parse_only(argv):
    """Parse like ``pinsage <argv>`` without instantiating or running anything (the sweep's parser)."""
    return resolve_fit_config(argv)[1]


def test_there_are_configs_for_every_dataset():
    names = {p.stem for p in FULL}
    assert {"synthetic", "movielens-100k", "gowalla", "movielens-latest-small"} <= names
    assert {p.stem for p in DATA} >= names


@pytest.mark.parametrize("path", FULL, ids=lambda p: p.name)
@pytest.mark.parametrize("command", ["fit", "test"])
def test_full_config_parses(path, command):
    cfg = parse_only([command, "--config", str(path)])
    # <dataset>.yaml or a variant <dataset>-<mode>.yaml (e.g. movielens-100k-users.yaml)
    assert cfg.data.dataset == "synthetic" or path.stem == cfg.data.dataset or path.stem.startswith(cfg.data.dataset + "-")
    assert cfg.model.hidden_channels >= 1 and cfg.trainer.max_epochs >= 1


@pytest.mark.parametrize("path", DATA, ids=lambda p: p.name)
def test_data_config_parses_for_pinsage_data(path):
    from app.data_command import _as_group_config, build_parser

    cfg = build_parser().parse_args(_as_group_config(["--config", str(path)]))
    # <dataset>.yaml, or <dataset>-<variant>.yaml (e.g. synthetic-100m.yaml); example-table is a table log
    if path.stem == "example-table":
        assert cfg.data.dataset == "table"
    else:
        assert path.stem == cfg.data.dataset or path.stem.startswith(cfg.data.dataset + "-")


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_every_swept_parameter_is_accepted(path):
    sweep = yaml.safe_load(path.read_text())
    cmd = sweep["command"]
    assert "pinsage" in cmd and "fit" in cmd and "${args}" in cmd
    config = cmd[cmd.index("--config") + 1]
    for name, spec in sweep["parameters"].items():
        values = spec.get("values") or [spec.get("min"), spec.get("max")]
        for v in values:
            arg = f"--{name}={str(v).lower() if isinstance(v, bool) else v}"
            cfg = parse_only(["fit", "--config", str(CONFIGS.parent / config), arg])
            section, key = name.split(".", 1)
            got = cfg[section][key]
            assert got == v or float(got) == pytest.approx(float(v)), (name, v, got)


def test_unknown_key_is_one_clear_error():
    with pytest.raises(SweepError, match="no_such_key"):
        parse_only(["fit", "--config", str(CONFIGS / "synthetic.yaml"), "--model.no_such_key=1"])


def test_csv_logger_is_one_switch(tmp_path):
    cfg = parse_only(["fit", "--config", str(CONFIGS / "synthetic.yaml"), "--trainer.logger=CSVLogger",
                      f"--trainer.logger.save_dir={tmp_path}"])
    assert cfg.trainer.logger.class_path.endswith("CSVLogger")
    assert str(cfg.trainer.logger.init_args.save_dir) == str(tmp_path)


def test_unknown_key_error_line_comes_first_and_last(capsys):
    from app.cli import main

    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", str(CONFIGS / "synthetic.yaml"), "--model.no_such_key=1"])
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == lines[-1] and lines[0].startswith("pinsage fit: error: ") and "no_such_key" in lines[0]


def test_yaml_alias_bomb_is_refused_quickly(tmp_path):
    """issue 20: a billion-laughs config hung `pinsage data`/`fit` (killed at 90 s, 1.3 GB)."""
    import os
    import subprocess
    import sys
    import time

    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for k in range(1, 10):
        lines.append(f"a{k}: &a{k} [" + ", ".join([f"*a{k - 1}"] * 9) + "]")
    lines.append("data:\n  dataset: synthetic\n  reader_args:\n    bomb: *a9")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "WANDB_MODE": "disabled"}
    for cmd in (["data", "--config", str(bomb)], ["fit", "--config", str(bomb)]):
        t0 = time.time()
        try:
            p = subprocess.run([sys.executable, "-m", "app.cli", *cmd], env=env, capture_output=True, text=True,
                               timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"pinsage {cmd[0]} with an alias bomb still runs after 60 s")
        err = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert p.returncode == 2 and len(err) == 1 and "aliases expand" in err[0] and str(bomb) in err[0], p.stderr
        assert time.time() - t0 < 60


def test_shipped_configs_pass_the_alias_check():
    from app.config_check import check_config_file

    for f in sorted((PROJECT / "configs").rglob("*.yaml")):
        check_config_file(str(f))


@pytest.mark.parametrize("path", [p for p in FULL if "callbacks: trainer/" in p.read_text()], ids=lambda p: p.name)
def test_shared_checkpoint_block_resolves_in_every_config(path):
    """The dataset configs point `trainer.callbacks` at one of configs/trainer/*.yaml (one owner of
    the checkpoint policy); it resolves to the best-by-validation and the last-epoch checkpoints."""
    cbs = parse_only(["fit", "--config", str(path)]).trainer.callbacks
    assert [c.class_path.rsplit(".", 1)[-1] for c in cbs] == ["ModelCheckpoint", "ModelCheckpoint"]
    best, last = (c.init_args for c in cbs)
    assert str(best.monitor).startswith("val/pinsage/") and best.mode == "max" and best.filename == "best-{epoch:02d}"
    assert last.filename == "last" and last.save_on_train_epoch_end is True and last.monitor is None


def test_the_shared_checkpoint_blocks_are_used():
    shared = sorted((CONFIGS / "trainer").glob("*.yaml"))
    assert shared, "configs/trainer/ holds the shared blocks"
    used = {p.name for p in shared if any(f"trainer/{p.name}" in c.read_text() for c in FULL)}
    assert used == {p.name for p in shared}
    assert sum("callbacks: trainer/" in c.read_text() for c in FULL) >= 6


def test_no_dataset_config_carries_its_own_copy_of_a_checkpoint_block():
    """Best-by-validation checkpoints come from configs/trainer/ in every config (one owner); only a
    config with another policy (synthetic-100m.yaml: last only) writes its own."""
    inline = [p.name for p in FULL if "ModelCheckpoint" in p.read_text() and "monitor: val/" in p.read_text()]
    assert inline == []
