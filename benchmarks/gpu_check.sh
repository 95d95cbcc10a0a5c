#!/usr/bin/env bash
# The GPU check of issue 19, one script, < 8 min on one H100-class GPU:
#   1. the tests marked `gpu` (they skip without CUDA),
#   2. a 2-epoch Gowalla fit with --trainer.precision bf16-mixed on the GPU,
#   3. layer-wise predict (and the naive path, for the ratio) of the 1M-item synthetic catalogue
#      on the GPU (benchmarks/inference.py --device cuda),
# and the figures in benchmarks/results/gpu.json.
#
#   benchmarks/gpu_check.sh              # on a machine with a GPU
#   benchmarks/gpu_check.sh --dry-run    # (or DRY_RUN=1) the same steps at tiny size on the CPU;
#                                        # writes <work>/gpu-dry-run.json, never gpu.json
# Environment: PYTHON (default: python), GPU_CHECK_WORK (default: a temp folder), DATA_ROOT
# (default: ../shared/data), GPU_CHECK_TESTS (where pytest collects the `gpu` tests; default: tests).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
cd "$root"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export WANDB_MODE="${WANDB_MODE:-disabled}"
exec "${PYTHON:-python}" "$here/gpu_check.py" "$@"
