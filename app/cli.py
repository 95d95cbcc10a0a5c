"""The ``pinsage`` console script.

* ``pinsage fit|validate|test|predict --config configs/<name>.yaml [--trainer.* --data.* --model.*]``
  is the Lightning CLI over :class:`models.module.PinSageModule` and
  :class:`datamodules.datamodule.PinSageDataModule`; ``test`` and ``validate`` print the metrics (model
  and baselines) as one JSON object on its last stdout line.
* ``pinsage data --config configs/data/<name>.yaml`` inspects a dataset (counts as JSON).
* ``pinsage baselines --config C`` tunes the item-item baselines on the validation split of C's
  dataset and records their settings beside its cache (app/baselines_command.py); ``test`` and
  predict's ``metrics.json`` use them.
* ``pinsage recommend ...`` answers item/user queries from predicted artifacts.
* ``pinsage serve --artifacts DIR`` is the HTTP API (``app/serve.py``); ``pinsage embed-new``
  embeds a CSV of new items inductively.
* ``pinsage sweep configs/sweeps/<name>.yaml`` runs a wandb sweep file locally (app/sweep.py).
* ``pinsage report RUN_DIR_OR_ARTIFACTS [--out report/]`` writes a static HTML report (app/report.py).

``--quiet`` (any command) silences our progress bars and lines on stderr (they are off anyway when
stderr is not a terminal).
"""

from __future__ import annotations

import json
import os
import sys
from typing import List, Optional

from .disk_errors import _disk_error, is_disk_error

# offline by default: wandb syncs later, the text model never reaches for a hub
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# idle OpenMP threads sleep instead of spinning: the walk kernels and torch share 2 cores
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")




def keep_freed_memory() -> bool:
    """glibc: keep freed heap memory for the next allocation (``mallopt``: blocks up to 32 MB from
    the heap, which is trimmed back to the system only beyond 512 MB free). A whole-catalogue step
    frees and reallocates dozens of ``[items, d]`` buffers; by default glibc hands them back (above
    its ~2x-the-largest-block trim threshold) and every reuse page-faults: ~7,700 faults, ~10 ms of
    a 90 ms model pass at Gowalla (benchmarks/TRAINING.md). ``False`` (nothing set): not glibc, or
    a ``MALLOC_*_`` environment setting is the user's."""
    if not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and other C libraries: their own policy
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 512 << 20))


#: library messages that say nothing to a user of pinsage (issue 20: "keep the user's screen for the user")
_NOISE = (r"Sparse CSR tensor support is in beta",
          r"`isinstance\(treespec, LeafSpec\)` is deprecated",
          r"The dirpath has changed from",
          r"The anonymous setting has no effect")


class _DropTips:
    """logging filter: Lightning's advertising tips (litlogger, litmodels)."""

    def filter(self, record) -> bool:
        return "💡 Tip" not in str(record.getMessage())


def _quiet_libraries() -> None:
    import logging
    import warnings

    for msg in _NOISE:
        warnings.filterwarnings("ignore", message=msg)
    os.environ.setdefault("WANDB_SILENT", "true")  # wandb's banner and warnings; its errors still raise
    for name in ("lightning_fabric.utilities.rank_zero", "pytorch_lightning.utilities.rank_zero",
                 "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropTips())


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--quiet" in argv[1:] and argv[0] != "sweep":
        argv = [a for a in argv if a != "--quiet"]
        os.environ["PINSAGE_QUIET"] = "1"  # read by datamodules.progress (also in workers and children)
    _quiet_libraries()
    from .config_check import check_config_args

    try:
        check_config_args(argv[1:])
    except ValueError as e:  # an alias bomb: refused before any parser expands it
        print(f"pinsage {argv[0] if argv else ''}: error: {e}", file=sys.stderr)
        return 2
    if argv and argv[0] == "sweep":
        from .sweep import main as sweep_main

        return sweep_main(argv[1:])
    if argv and argv[0] == "report":
        from .report import main as report_main

        return report_main(argv[1:])
    if argv and argv[0] == "data":
        from .data_command import main as data_main

        return data_main(argv[1:])
    if argv and argv[0] == "baselines":
        from .baselines_command import main as baselines_main

        return baselines_main(argv[1:])
    if argv and argv[0] == "recommend":
        from .recommend_command import main as recommend_main

        return recommend_main(argv[1:])
    if argv and argv[0] in ("serve", "embed-new"):
        from .serve import embed_new_main, serve_main

        return (serve_main if argv[0] == "serve" else embed_new_main)(argv[1:])
    if argv and argv[0] in ("-h", "--help") or not argv:
        print("usage: pinsage {fit,validate,test,predict,data,baselines,recommend,serve,embed-new,sweep,report} [--config CONFIG] [overrides]\n"
              "       pinsage <command> --help for the arguments of one command")
        return 0 if argv else 2
    from datamodules.interactions import DataError

    from .checkpoints import release_run_locks
    from .lightning_cli import run_lightning

    keep_freed_memory()  # fit / validate / test / predict: the training and embedding passes

    try:
        cli = run_lightning(argv)
    except (DataError, ValueError, FileNotFoundError, ImportError) as e:  # bad input / a missing extra: one line
        print(f"pinsage {argv[0]}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if not is_disk_error(e):
            raise
        print(f"pinsage {argv[0]}: error: {_disk_error(e)}", file=sys.stderr)
        return 1
    except (MemoryError, RuntimeError) as e:
        if not _is_out_of_memory(e):
            raise
        print(f"pinsage {argv[0]}: error: {_memory_error(e)}", file=sys.stderr)
        return 1
    finally:
        release_run_locks()
    if argv[0] in ("test", "validate"):
        _finish_loggers()  # wandb prints its "sync this run" lines at exit: before our JSON, not after
        print(json.dumps(getattr(cli.model, "last_metrics", {}), sort_keys=True))
    return 0


def _is_out_of_memory(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or "can't allocate memory" in str(e) or "not enough memory" in str(e)


def _memory_error(e: BaseException) -> str:
    """One line for an allocation that does not fit: how much was asked, how much there is."""
    import re

    from datamodules.memory import available_bytes, memory_limit_note

    asked = re.search(r"allocate (\d+) bytes", str(e))
    room = available_bytes()  # MemAvailable, or a container's (cgroup) limit when that binds
    avail = "" if room is None else f"; {room / 2**30:.1f} GB are available{memory_limit_note()}"
    need = f" ({int(asked.group(1)) / 2**30:,.1f} GB asked at once)" if asked else ""
    return (f"out of memory{need}{avail}: use a smaller model (--model.hidden_channels, --model.out_channels), "
            "a smaller --data.batch_size, or a smaller input file (e.g. a sample of the log), or a machine with "
            "more memory")


def _finish_loggers() -> None:
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


if __name__ == "__main__":
    sys.exit(main())
