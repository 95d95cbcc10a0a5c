"""benchmarks/gpu_check.sh in its dry-run mode: the same steps at tiny size on the CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # a tiny fit, a tiny inference benchmark and the gpu tests (skipped): ~1 min on 2 cores
def test_gpu_check_dry_run(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_WORK=str(tmp_path), DRY_RUN="1", WANDB_MODE="disabled",
               GPU_CHECK_TESTS="tests/app/test_gpu.py")  # collecting the whole suite takes minutes here
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "gpu-dry-run.json").read_text())
    assert doc["dry_run"] is True and doc["ok"] is True and doc["device"] == "cpu (dry run)"
    steps = doc["steps"]
    assert steps["tests"]["rc"] == 0 and steps["fit"]["rc"] == 0 and steps["inference"]["rc"] == 0
    assert steps["tests"]["skipped"] >= 1  # no CUDA here: the gpu tests skip
    assert steps["fit"]["epochs_done"] == 2
    assert steps["inference"]["items"] == 2000 and steps["inference"]["max_abs_diff"] < 1e-4
    # a dry run never writes the GPU figures
    assert not (tmp_path / "gpu.json").exists()


def test_gpu_check_refuses_without_cuda_unless_dry_run(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_WORK=str(tmp_path), DRY_RUN="0")
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--dry-run" in proc.stderr
