"""The configured ``WandbLogger`` (configs/synthetic.yaml, ``offline: true``) without network.

A few training steps + one validation through ``pinsage fit`` with ``WANDB_MODE=offline`` and
everything under tmp; then the offline run folder (what ``wandb sync`` uploads later) is read
back: its ``.wandb`` record log holds the run's config (model and data hyperparameters), the
history of train/loss, lr, val/pinsage/item/hit_rate@10, val/pinsage/item/mrr and the ``val/recommendations`` table, whose
JSON under ``files/media/table`` maps query titles to their top-10 titles.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from app.report import wandb_records

PROJECT = Path(__file__).resolve().parents[2]

TINY_READER = {"num_users": 200, "num_items": 120, "num_interactions": 2500, "num_communities": 4,
               "feature_dim": 8, "seed": 0}


def read_run(log: Path):
    kinds, config, history = set(), {}, []
    for rec in wandb_records(log):
        kind = rec.WhichOneof("record_type")
        kinds.add(kind)
        if kind == "config":
            config.update({it.key: json.loads(it.value_json) for it in rec.config.update})
        elif kind == "history":
            history.append({it.key or "/".join(it.nested_key): json.loads(it.value_json) for it in rec.history.item})
    return kinds, config, history


def test_wandb_offline_run_has_config_metrics_and_recommendation_table(tmp_path, monkeypatch):
    import wandb

    from app.cli import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens: no network is needed
    monkeypatch.setenv("PINSAGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    args = [
        "fit", "--config", str(PROJECT / "configs" / "synthetic.yaml"), "--seed_everything=0",
        "--data.reader_args", json.dumps(TINY_READER),
        "--data.batch_size=64", "--data.num_neighbors=5", "--data.num_walks=5", "--data.num_easy_negatives=30",
        "--data.max_hard_negatives=1", "--data.num_workers=0", "--data.persistent_workers=false",
        "--data.eval_batch_size=512", f"--data.cache_dir={tmp_path / 'cache'}",
        "--model.hidden_channels=16", "--model.out_channels=8",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={tmp_path / 'run'}", "--trainer.accelerator=cpu", "--trainer.devices=1",
        "--trainer.max_epochs=1", "--trainer.limit_train_batches=4", "--trainer.log_every_n_steps=1",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'wb'}",  # the config's WandbLogger, offline: true
    ]
    try:
        assert main(args) == 0
    finally:
        wandb.finish()

    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    run = runs[0]
    log = next(run.glob("run-*.wandb"))
    # wandb's core process may still be flushing the log for a moment after finish() returns
    deadline = time.monotonic() + 30
    while True:
        try:
            kinds, config, history = read_run(log)
        except Exception:  # a half-written last chunk
            kinds = set()
        if "exit" in kinds or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    # a complete offline run (header .. exit), i.e. syncable with `wandb sync <run>`
    assert {"header", "run", "config", "history", "exit"} <= kinds

    # resolved hyperparameters: the model's (with linked in_channels/num_items) and the data's
    assert config["hidden_channels"] == 16 and config["out_channels"] == 8 and config["lr"] == pytest.approx(1e-3)
    assert config["num_items"] == 120 and config["in_channels"] > 0
    assert config["dataset"] == "synthetic" and config["batch_size"] == 64 and config["reader_args"] == TINY_READER
    assert config["num_easy_negatives"] == 30 and config["max_hard_negatives"] == 1

    keys = set().union(*history)
    for key in ("train/loss", "lr", "val/pinsage/item/hit_rate@10", "val/pinsage/item/mrr", "trainer/global_step"):
        assert key in keys, key
    train = [h for h in history if "train/loss" in h]
    assert len(train) == 4 and all(h["lr"] > 0 for h in train)
    val = [h for h in history if "val/pinsage/item/mrr" in h]
    assert len(val) == 1 and 0 <= val[0]["val/pinsage/item/hit_rate@10"] <= 1 and 0 < val[0]["val/pinsage/item/mrr"] <= 1

    # the recommendations table: logged at validation, its JSON inside the run folder
    table_keys = [h for h in history if "val/recommendations/path" in h]
    assert len(table_keys) == 1 and table_keys[0]["val/recommendations/_type"] == "table-file"
    table_file = run / "files" / table_keys[0]["val/recommendations/path"]
    assert table_file.is_file()
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["query", "top-10"]
    assert len(table["data"]) in range(1, 9)  # num_examples: 1..8 rows
    for query, top in table["data"]:
        titles = top.split(" | ")
        assert query.startswith("item ") and len(titles) == 10 and query not in titles
        assert all(t.startswith("item ") for t in titles)
