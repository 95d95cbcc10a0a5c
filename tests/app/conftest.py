"""A tiny model trained once per session through the CLI, shared by the app tests."""

from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]

TINY = [
    "--config", str(PROJECT / "configs" / "synthetic.yaml"),
    "--data.reader_args", '{"num_users": 300, "num_items": 400, "num_interactions": 5000, "num_communities": 5, '
                          '"feature_dim": 8, "seed": 0}',
    "--data.batch_size=64", "--data.num_neighbors=5", "--data.num_walks=10", "--data.num_easy_negatives=40",
    "--data.max_hard_negatives=1", "--data.num_workers=0",
    "--model.hidden_channels=32", "--model.out_channels=16", "--model.lr=0.08",
    "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """``(run_dir, last_ckpt, args)`` of a 3-epoch fit on a tiny synthetic graph."""
    import os

    from app.cli import main

    run = tmp_path_factory.mktemp("tiny-run")
    os.environ["PINSAGE_CACHE"] = str(run / "cache")
    args = TINY + ["--data.cache_dir", str(run / "cache"), "--trainer.default_root_dir", str(run)]
    assert main(["fit", *args, "--trainer.max_epochs=3"]) == 0
    last = next(p for p in run.rglob("last.ckpt"))
    return run, last, args


@pytest.fixture
def tiny_args(tmp_path):
    """``tiny_args(root) -> argv`` of the tiny run writing under ``root`` (dataset cache in tmp)."""
    def make(root):
        return TINY + ["--data.cache_dir", str(tmp_path / "cache"), "--trainer.default_root_dir", str(root)]
    return make


@pytest.fixture(scope="module")
def artifacts(tiny_run, tmp_path_factory, request):
    """A `pinsage predict` folder of the tiny run (exact index, no metrics), one per test module:
    the serve, explorer and inductive tests each insert items into their own."""
    from app.cli import main

    _, last, args = tiny_run
    out = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1] + "-art") / "synthetic"
    assert main(["predict", *args, "--ckpt_path", str(last), "--artifacts.output_dir", str(out),
                 "--artifacts.index", "exact", "--artifacts.evaluate", "false"]) == 0
    return out
