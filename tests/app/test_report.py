"""``pinsage report``: the figures of a run folder / artifacts / sweep, as PNGs referenced by an
HTML page; the wandb history reader; the end-of-fit figures in an offline wandb run."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="pinsage report needs matplotlib (the dev / tools extra)")

from app.cli import main  # noqa: E402

PROJECT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
READER = {"num_users": 300, "num_items": 400, "num_interactions": 5000, "num_communities": 5, "feature_dim": 8,
          "seed": 0}


def tiny_fit_args(tmp: Path, logger: list) -> list:
    return [
        "fit", "--config", str(PROJECT / "configs" / "synthetic.yaml"), "--seed_everything=0",
        "--data.reader_args", json.dumps(READER), f"--data.cache_dir={tmp / 'cache'}",
        "--data.batch_size=64", "--data.num_neighbors=5", "--data.num_walks=10", "--data.num_easy_negatives=40",
        "--data.max_hard_negatives=1", "--data.num_workers=0", "--data.persistent_workers=false",
        "--model.hidden_channels=32", "--model.out_channels=16", "--model.lr=0.05",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={tmp / 'run'}", "--trainer.accelerator=cpu", "--trainer.devices=1",
        "--trainer.max_epochs=2", "--trainer.log_every_n_steps=2", *logger,
    ]


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    """A 2-epoch fit on a tiny synthetic graph with the CSV logger: ``run/`` folder."""
    tmp = tmp_path_factory.mktemp("report-run")
    assert main(tiny_fit_args(tmp, ["--trainer.logger=CSVLogger", f"--trainer.logger.save_dir={tmp / 'run'}"])) == 0
    return tmp / "run"


def assert_png(path: Path) -> None:
    from PIL import Image

    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.size[0] > 200 and im.size[1] > 100, (path, im.size)


def test_report_on_a_run_folder_writes_every_figure_and_the_page(csv_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no artifacts/ here: the embeddings come from the checkpoint
    out = tmp_path / "report"
    assert main(["report", str(csv_run), "--out", str(out), "--map", "tsne"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["report"] == str(out / "index.html")
    page = (out / "index.html").read_text()
    for name in ("curves", "embedding_map", "gallery", "metrics"):
        assert_png(out / f"{name}.png")
        assert f"src='{name}.png'" in page, name
    # what the page says it used: the CSV logger's file, t-SNE, the planted communities
    assert "metrics.csv" in page and "embedding map: t-SNE" in page
    assert page.count("<h3>") == 4  # four gallery queries, each with its tables
    assert "community" in page


def test_report_inputs_of_a_run(csv_run, tmp_path, monkeypatch):
    from app.report import load_inputs, make_figures

    monkeypatch.chdir(tmp_path)
    inp = load_inputs([str(csv_run)])
    assert {"train/loss", "lr", "val/pinsage/item/mrr"} <= set(inp.history.columns)
    assert inp.history["val/pinsage/item/mrr"].notna().sum() == 2  # one validation per epoch
    assert inp.embeddings.shape == (400, 16) and inp.label_kind == "community" and len(inp.label_names) == 5
    # scored as `pinsage test` scores it: the module's baselines (popularity, cooccurrence), no random
    assert inp.metrics["pinsage/item/mrr"] > inp.metrics["popularity/item/mrr"] and "random/item/mrr" not in inp.metrics
    ptr, items, w = inp.nbr
    assert len(ptr) == 401 and (np.diff(ptr) <= 5).all()
    figs = make_figures(inp, map_method="pca")
    assert set(figs) == {"curves", "embedding_map", "gallery", "metrics"}


def test_report_on_a_sweep_folder(tmp_path):
    import csv

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    rows = [{"trial": i, "state": s, "value": v, "model.lr": lr, "data.num_neighbors": t,
             "trial_dir": str(sweep / "trials" / f"{i:03d}")}
            for i, (s, v, lr, t) in enumerate([("complete", 0.5, 0.001, 10), ("complete", 0.6, 0.003, 20),
                                               ("pruned", 0.2, 0.01, 10), ("complete", 0.55, 0.0005, 20)])]
    with open(sweep / "trials.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    for r in rows:
        d = Path(r["trial_dir"])
        d.mkdir(parents=True)
        (d / "epochs.jsonl").write_text("".join(json.dumps({"epoch": e, "val/pinsage/item/mrr": r["value"] - 0.1 / (e + 1)}) + "\n"
                                                for e in range(2)))
    (sweep / "sweep.json").write_text(json.dumps({
        "name": "s", "method": "bayes", "metric": "val/pinsage/item/mrr", "goal": "maximize",
        "parameters": {"model.lr": {"kind": "log_uniform_values", "log": True},
                       "data.num_neighbors": {"kind": "categorical", "log": False}},
        "best": {"trial": 1, "value": 0.6}}))
    out = tmp_path / "out"
    assert main(["report", str(sweep), "--out", str(out)]) == 0
    page = (out / "index.html").read_text()
    for name in ("sweep_trials", "sweep_params", "sweep_curves"):
        assert_png(out / f"{name}.png")
        assert f"src='{name}.png'" in page
    assert "embedding_map.png" not in page  # a sweep folder alone has no embeddings


def test_report_bad_input_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pinsage report: error:") and "nope" in err[0]
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "holds no run" in capsys.readouterr().err


def test_projection_methods_say_which_was_used():
    from app.projection import ProjectionError, project_2d

    x = np.random.default_rng(0).normal(size=(60, 8)).astype(np.float32)
    xy, method = project_2d(x, method="pca")
    assert xy.shape == (60, 2) and method == "PCA"
    xy, method = project_2d(x, method="tsne")
    assert xy.shape == (60, 2) and method == "t-SNE"
    try:
        import umap  # noqa: F401
        expect = "UMAP"
    except ImportError:
        expect = "t-SNE"
    assert project_2d(x, method="auto")[1] == expect
    with pytest.raises(ProjectionError, match="map method"):
        project_2d(x, method="mds")


def test_item_labels_take_the_most_specific_genre():
    from types import SimpleNamespace

    from app.report import item_labels

    cats = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 1], [0, 0, 0], [1, 0, 0]], dtype=np.uint8)
    table = SimpleNamespace(categories=cats, category_names=["Drama", "Comedy", "Horror"])
    ds = SimpleNamespace(extras={}, interactions=SimpleNamespace(item_table=table))
    lab, names, kind = item_labels(ds)
    assert kind.startswith("genre")
    got = [names[i] if i >= 0 else None for i in lab]
    assert got == ["Comedy", "Drama", "Horror", None, "Drama"]


@pytest.mark.slow
def test_fit_logs_the_figures_to_wandb(tmp_path, monkeypatch):
    """End of fit with the offline WandbLogger: report/* images in the run, and `pinsage report`
    reads the training curves back from the offline run's log."""
    import wandb

    from app.report import read_history, wandb_records

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens
    monkeypatch.chdir(tmp_path)
    try:
        assert main(tiny_fit_args(tmp_path, [f"--trainer.logger.init_args.save_dir={tmp_path / 'run'}",
                                             "--figures.max_items=300"])) == 0
    finally:
        wandb.finish()
    log = next((tmp_path / "run").glob("wandb/offline-run-*/run-*.wandb"))
    deadline = time.monotonic() + 30
    while True:
        kinds, keys = set(), set()
        try:
            for rec in wandb_records(log):
                kinds.add(rec.WhichOneof("record_type"))
                if kinds and rec.WhichOneof("record_type") == "history":
                    keys |= {it.key or "/".join(it.nested_key) for it in rec.history.item}
        except Exception:
            pass
        if "exit" in kinds or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for name in ("curves", "embedding_map", "gallery", "metrics"):
        assert any(k.startswith(f"report/{name}") for k in keys), (name, sorted(keys))
    media = list((log.parent / "files" / "media" / "images" / "report").glob("*.png"))
    assert len(media) >= 4
    for p in media:
        assert p.read_bytes()[:8] == PNG_MAGIC
    history, source = read_history(tmp_path / "run")
    assert source.endswith(".wandb") and history["val/pinsage/item/mrr"].notna().sum() == 2
    assert history["train/loss"].notna().sum() >= 2


def test_report_scores_a_run_as_predicts_metrics_json(tiny_run, tmp_path):
    """`pinsage report` on a run folder embeds its last checkpoint and scores it with the module's
    protocols, baselines and user representation: the numbers of predict's metrics.json (it once
    scored users by the plain mean of their history and default settings)."""
    from app.report_inputs import ReportInputs, _load_config, embed_run

    run, last, args = tiny_run
    out = tmp_path / "art"
    assert main(["predict", *args, "--ckpt_path", str(last), "--artifacts.output_dir", str(out),
                 "--artifacts.index", "exact"]) == 0
    want = json.loads((out / "metrics.json").read_text())
    inp = ReportInputs()
    embed_run(run, _load_config(run / "config.yaml"), inp)
    keys = sorted(k for k, v in want.items() if isinstance(v, float) and not k.endswith("seconds"))
    assert any(k.startswith("pinsage/full/") for k in keys)
    assert sorted(k for k, v in inp.metrics.items() if isinstance(v, float) and not k.endswith("seconds")) == keys
    assert max(abs(inp.metrics[k] - want[k]) for k in keys) <= 1e-6
