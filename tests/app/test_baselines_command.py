"""``pinsage baselines`` on a user's own log outside the repo: tune on validation, record beside the
dataset cache, and ``pinsage test`` uses the record (and says so)."""

import json

import numpy as np
import pytest
import yaml


def _write_log(folder, num_users=120, num_items=60, seed=0):
    """A genre-structured CSV log without timestamps: each user engages mostly with one of 4 groups."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(num_users):
        g = u % 4
        own = np.arange(g * 15, g * 15 + 15)
        picks = set(rng.choice(own, size=int(rng.integers(5, 10)), replace=False).tolist())
        picks |= set(rng.choice(num_items, size=2, replace=False).tolist())
        rows += [(f"u{u}", f"i{i}") for i in sorted(picks)]
    (folder / "log.csv").write_text("user,item\n" + "".join(f"{u},{i}\n" for u, i in rows))


def _config(folder, cache):
    cfg = {
        "data": {"dataset": "table", "root": str(folder), "cache_dir": str(cache), "features": ["log_degree"],
                 "reader_args": {"path": "log.csv", "id_type": "str"}, "num_layers": 1, "num_neighbors": 5, "num_walks": 10,
                 "batch_size": 32, "num_easy_negatives": 20, "max_hard_negatives": 0, "num_workers": 0},
        "model": {"hidden_channels": 16, "out_channels": 8,
                  "baselines": ["popularity", "itemknn", "gfcf"], "test_protocols": ["item", "full"]},
        "trainer": {"logger": False, "enable_progress_bar": False, "enable_model_summary": False,
                    "default_root_dir": str(folder / "run"), "max_epochs": 1},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_baselines_on_a_table_config_then_test_uses_the_record(tmp_path, capsys):
    from app.cli import main

    _write_log(tmp_path)
    cfg = _config(tmp_path, tmp_path / "cache")
    # before tuning: test says the baselines are untuned
    assert main(["test", "--config", str(cfg)]) == 0
    cap = capsys.readouterr()
    before = _last_json(cap.out)
    assert before["baseline_settings"]["itemknn"]["source"] == "untuned defaults"
    assert "untuned defaults: itemknn" in cap.err and "pinsage baselines --config" in cap.err

    grid = '{"itemknn": {"k": [5, 20], "shrink": [0.0]}, "gfcf": {"k": [4, 8], "alpha": [0.0, 0.3]}}'
    assert main(["baselines", "--config", str(cfg), "--models", "[itemknn, gfcf]", "--grid", grid]) == 0
    cap = capsys.readouterr()
    res = _last_json(cap.out)
    assert set(res["models"]) == {"itemknn", "gfcf"} and res["history"] == "equal weights"
    assert res["models"]["itemknn"]["settings_tried"] == 2 and res["models"]["gfcf"]["settings_tried"] == 4
    record = tmp_path / "cache" / (sorted(p.name for p in (tmp_path / "cache").iterdir() if p.is_dir())[0]
                                   + ".baselines.json")
    assert res["record"] == str(record) and record.is_file()
    assert "itemknn {'k': 5, 'shrink': 0.0}: val recall@20=" in cap.err
    stored = json.loads(record.read_text())["tunings"]["equal weights"]
    # the chosen setting is the grid's best on validation
    for name in ("itemknn", "gfcf"):
        best = max(stored[name]["grid"], key=lambda row: row[1])
        assert stored[name]["params"] == best[0] == res["models"][name]["params"]
        assert res["models"][name]["val_recall@20"] == best[1]

    assert main(["test", "--config", str(cfg)]) == 0
    cap = capsys.readouterr()
    after = _last_json(cap.out)
    for name in ("itemknn", "gfcf"):
        s = after["baseline_settings"][name]
        assert s["params"] == res["models"][name]["params"]
        assert s["source"] == f"tuned on validation ({record}, equal weights)"
    assert f"tuned on validation ({record}" in cap.err
    assert "popularity/full/recall@20" in after and "gfcf/full/recall@20" in after


def test_baselines_command_errors_at_the_edge(tmp_path, capsys):
    from app.cli import main

    _write_log(tmp_path)
    cfg = _config(tmp_path, tmp_path / "cache")
    assert main(["baselines", "--config", str(cfg), "--models", "[itemknn, knn]"]) == 2
    assert "--models has 'knn' is not known; choose from" in capsys.readouterr().err
    assert main(["baselines", "--config", str(cfg), "--models", "[popularity]"]) == 2
    assert "'popularity', which has nothing to tune" in capsys.readouterr().err
    assert main(["baselines", "--config", str(cfg), "--models", "[ease]", "--grid", '{"ease": {"lambda": [1]}}']) == 2
    assert "--grid ease has parameter 'lambda': choose from ['lam']" in capsys.readouterr().err
    assert main(["baselines", "--config", str(cfg), "--models", "[ease]", "--grid", '{"gfcf": {"k": [2]}}']) == 2
    assert "--grid has 'gfcf', which is not among --models ['ease']" in capsys.readouterr().err
    assert main(["baselines", "--config", str(cfg), "--grid", "{bad"]) == 2
    assert "--grid is not valid JSON/YAML" in capsys.readouterr().err
    assert not list((tmp_path / "cache").glob("*.baselines.json"))  # nothing written


def test_ease_above_the_limit_is_refused_naming_the_count(tmp_path, capsys, monkeypatch):
    from app import item_item_baselines as bl
    from app.cli import main

    _write_log(tmp_path)
    cfg = _config(tmp_path, tmp_path / "cache")
    monkeypatch.setattr(bl, "EASE_MAX_ITEMS", 10)
    assert main(["baselines", "--config", str(cfg), "--models", "[ease]"]) == 2
    assert "ease: the catalogue has 60 items, more than the limit of 10" in capsys.readouterr().err
    # in the default list it is skipped with the same reason, the others are tuned
    assert main(["baselines", "--config", str(cfg), "--grid", '{"itemknn": [{"k": 5}], "rp3beta": [{"k": 5}], '
                 '"pixie": [{"num_walks": 20}], "gfcf": [{"k": 4}]}']) == 0
    cap = capsys.readouterr()
    assert "skipping ease: the catalogue has 60 items" in cap.err
    assert set(_last_json(cap.out)["models"]) == {"itemknn", "rp3beta", "pixie", "gfcf"}
