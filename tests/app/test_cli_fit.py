"""`pinsage fit` then `pinsage test` end to end on a tiny synthetic graph."""

import json

from app.cli import main

TINY = [
    "--config", "configs/synthetic.yaml",
    "--data.reader_args", '{"num_users": 300, "num_items": 150, "num_interactions": 4000, "num_communities": 5, '
                          '"feature_dim": 8, "seed": 0}',
    "--data.batch_size=64", "--data.num_neighbors=5", "--data.num_walks=10", "--data.num_easy_negatives=40",
    "--data.max_hard_negatives=1", "--data.num_workers=0",
    "--model.hidden_channels=32", "--model.out_channels=16", "--model.lr=0.01",
    "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
]


def test_fit_then_test_prints_metrics_json(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(__import__("pathlib").Path(__file__).resolve().parents[2])
    monkeypatch.setenv("PINSAGE_CACHE", str(tmp_path / "cache"))
    root = ["--trainer.default_root_dir", str(tmp_path)]
    assert main(["fit", *TINY, *root, "--trainer.max_epochs=3"]) == 0
    ckpts = sorted(tmp_path.rglob("*.ckpt"))
    assert any(p.name == "last.ckpt" for p in ckpts) and any(p.name.startswith("best") for p in ckpts)
    capsys.readouterr()
    last = next(p for p in ckpts if p.name == "last.ckpt")
    assert main(["test", *TINY, *root, "--ckpt_path", str(last)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("test/hit_rate@10", "test/hit_rate@100", "test/mrr", "test/hr@10", "test/ndcg@10",
                "test/popularity/hit_rate@10", "test/cooccurrence/mrr"):
        assert key in out, key
    assert "test/hit_rate@500" not in out  # catalogue of 150 items
    # planted communities: the trained model ranks held-out items far above chance (10/150)
    assert out["test/hit_rate@10"] > 0.15
    assert out["test/mrr"] > out["test/popularity/mrr"] * 0.8
