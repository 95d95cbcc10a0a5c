"""issue 20, acceptance: the README's own sequence as a new user walks it (data -> fit -> test ->
predict -> recommend -> report -> serve + every curl), on the synthetic config, each step a real
`pinsage` process; the report must have training curves and a coloured map."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.app.servers import free_port, wait_until_serving

PROJECT = Path(__file__).resolve().parents[2]
SMALL = ('{"num_users": 300, "num_items": 400, "num_interactions": 5000, "num_communities": 5, "feature_dim": 8, '
         '"seed": 0}')


@pytest.mark.slow
def test_readme_sequence_on_the_synthetic_config(tmp_path):
    pytest.importorskip("matplotlib", reason="pinsage report needs matplotlib (the dev / tools extra)")
    pytest.importorskip("wandb", reason="the README's runs log to wandb (offline)")
    pytest.importorskip("httpx", reason="httpx is not installed (dev extra)")
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "WANDB_MODE": "offline", "PINSAGE_SERVE_TOKEN": "tok"}
    cfg = str(PROJECT / "configs" / "synthetic.yaml")
    data = ["--data.reader_args", SMALL, "--data.cache_dir", str(tmp_path / "cache")]

    def pinsage(*argv):
        p = subprocess.run([sys.executable, "-m", "app.cli", *argv], env=env, cwd=tmp_path, capture_output=True,
                           text=True, timeout=1200)
        assert p.returncode == 0, (argv, p.stderr[-3000:])
        assert "Traceback" not in p.stderr, p.stderr[-3000:]
        return p

    pinsage("data", "--config", str(PROJECT / "configs" / "data" / "synthetic.yaml"), *data)
    pinsage("fit", "--config", cfg, *data)  # the config's own trainer: wandb offline under outputs/synthetic
    last = tmp_path / "outputs" / "synthetic" / "checkpoints" / "last.ckpt"
    assert last.is_file()
    metrics = json.loads(pinsage("test", "--config", cfg, *data, "--ckpt_path", str(last)).stdout.splitlines()[-1])
    assert metrics["pinsage/item/hit_rate@100"] > 0.3
    pinsage("predict", "--config", cfg, *data, "--ckpt_path", str(last))
    art = tmp_path / "artifacts" / "synthetic"
    assert (art / "manifest.json").is_file()
    assert json.loads(pinsage("recommend", "--artifacts", str(art), "--item", "50", "-k", "10", "--json").stdout)["items"]
    pinsage("recommend", "--artifacts", str(art), "--user", "1", "-k", "10")
    pinsage("report", "outputs/synthetic", "artifacts/synthetic", "--out", "report/")
    assert (tmp_path / "report" / "index.html").is_file()
    # what the page was drawn from: the fit's curves (not test's run) and a coloured map
    from app.report import load_inputs

    inp = load_inputs([str(tmp_path / "outputs" / "synthetic"), str(art)], embed=False)
    assert inp.history is not None and "train/loss" in inp.history, inp.history_source
    assert inp.labels is not None and len({int(x) for x in inp.labels} - {-1}) > 1
    # serve, then every curl of the README against it
    port = free_port()
    srv = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--artifacts", str(art), "--port", str(port)],
                           env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until_serving(srv, f"http://127.0.0.1:{port}", seconds=240)
        from tests.app.test_serve_faults import _readme_curls

        for cmd in _readme_curls():
            p = subprocess.run(["bash", "-c", cmd.replace("localhost:8000", f"127.0.0.1:{port}") +
                                " -s -o /dev/stderr -w '%{http_code}'"], env=env, capture_output=True, text=True,
                               timeout=60)
            status = int(p.stdout.strip()[-3:])
            if status == 422 and "/items" in cmd:  # MovieLens content; the synthetic model needs features
                assert "give a 'features' row" in p.stderr
                continue
            assert status in (200, 201), (cmd, status, p.stderr)
    finally:
        srv.terminate()
        srv.wait(30)
