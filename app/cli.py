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

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")

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
ENGINES = ("local", "ray")


def _lightning_cli_class():
    from pytorch_lightning.cli import LightningCLI

    class PinSageCLI(LightningCLI):
        def _parse_ckpt_path(self) -> None:
            # LightningCLI merges *all* of a checkpoint's hyperparameters over the config, so
            # `--model.eval_ks` or `--model.lr` would be ignored with `--ckpt_path`. Only the model's
            # architecture comes from the checkpoint (a config of another shape is refused instead of
            # silently training/testing another model); evaluation and optimisation keys come from
            # the config and the command line.
            from .checkpoints import RESUME_KEYS, SPECIAL_PATHS, read_checkpoint

            sub = self.config.get("subcommand")
            path = sub and self.config[sub].get("ckpt_path")
            if not path or path in SPECIAL_PATHS:
                return
            from models.module import SHAPE_KEYS

            ckpt = read_checkpoint(path, need=("state_dict",) + (RESUME_KEYS if sub == "fit" else ()))
            saved = ckpt.get("hyper_parameters") or {}
            cfg = self.config[sub].model
            diff = [f"{k}: checkpoint {saved[k]!r} vs config {cfg.get(k)!r}" for k in SHAPE_KEYS
                    if k in saved and k not in ("in_channels", "num_items") and cfg.get(k) != saved[k]]
            if diff:
                raise ValueError(f"checkpoint {path} was trained with another model shape ({', '.join(diff)}); "
                                 "use the config it was trained with or retrain")
            arch = {k: saved[k] for k in SHAPE_KEYS + ("importance_pooling",) if k in saved}
            if arch:
                self.config = self.parser.parse_object({sub: {"model": arch}}, self.config)

        def parse_arguments(self, parser, args) -> None:
            # jsonargparse prints ~90 lines of usage before the line that matters: say it first too
            import contextlib
            import io

            buf = io.StringIO()
            try:
                with contextlib.redirect_stderr(buf):
                    super().parse_arguments(parser, args)
            except SystemExit as e:
                text = buf.getvalue()
                if e.code in (0, None):
                    sys.stderr.write(text)
                    raise
                at = text.rfind("error: ")
                msg = " ".join(text[at + len("error: "):].split()) if at >= 0 else "invalid arguments"
                argv = sys.argv[1:] if args is None else list(args)
                sub = next((a for a in argv if a in LIGHTNING_COMMANDS), "")
                line = f"pinsage {sub}: error: {msg}"
                sys.stderr.write(f"{line}\n{text[:at] if at >= 0 else text}{line}\n")
                raise SystemExit(2) from None
            sys.stderr.write(buf.getvalue())

        def add_arguments_to_parser(self, parser) -> None:
            # the model is sized by the data it trains on
            parser.link_arguments("data.num_features", "model.in_channels", apply_on="instantiate")
            parser.link_arguments("data.num_items", "model.num_items", apply_on="instantiate")
            parser.link_arguments("data.num_layers", "model.num_layers")
            # where `pinsage predict` writes its artifacts (see app/artifacts.py)
            parser.add_argument("--artifacts.output_dir", type=Optional[str], default=None,
                                help="output folder of predict (default artifacts/<dataset>)")
            parser.add_argument("--artifacts.index", type=str, default="auto",
                                help="FAISS index: auto | exact | hnsw | ivfpq")
            parser.add_argument("--artifacts.chunk_size", type=int, default=65536,
                                help="items per chunk of layer-wise inference (bounds memory)")
            parser.add_argument("--artifacts.neighbours", type=int, default=50,
                                help="precompute every item's top-K similar items from the index (neighbours.npy: "
                                     "`pinsage serve` answers k <= K from it); 0: none")
            parser.add_argument("--artifacts.evaluate", type=bool, default=True,
                                help="also write metrics.json (every evaluation protocol + baselines)")
            # where predict's layer-wise inference runs (app/ray_inference.py)
            parser.add_argument("--engine", type=str, default="local",
                                help="predict: local (this process) | ray (Ray Data; the optional .[ray] extra)")
            parser.add_argument("--ray.address", type=Optional[str], default=None,
                                help="predict --engine ray: the cluster to join (default: start a local Ray)")

            parser.add_argument("--artifacts.baselines", type=Optional[List[str]], default=None,
                                help="baselines scored beside the model in metrics.json (default: the model's "
                                     "--model.baselines; also itemknn, rp3beta, ease, pixie, gfcf with the settings "
                                     "`pinsage baselines` tuned on validation, else untuned defaults)")
            # per-epoch metrics file (pinsage sweep reads it) and the report's figures in wandb
            from .callbacks import EpochMetricsLog, WandbFigures

            parser.add_lightning_class_args(EpochMetricsLog, "metrics_log")
            parser.add_lightning_class_args(WandbFigures, "figures")

        def _wire_evaluator(self) -> None:
            from .evaluation import module_evaluator

            hp, dm = self.model.hparams, self.datamodule
            self.model.evaluator = module_evaluator(
                dm, {"val": hp.val_protocols, "test": hp.test_protocols}, ks=hp.eval_ks,
                baselines=hp.baselines, batch_size=hp.rank_batch_size, seed=getattr(dm, "seed", 0),
                embed_with=self.model.embed_with if getattr(dm, "full_graph", False) else None)

        def before_fit(self) -> None:
            _tidy_wandb(self.trainer)
            _checkpoints_under_root(self.trainer)
            _require_pairs(self.datamodule, "fit", ("train", "val"))
            self._wire_evaluator()

        def before_validate(self) -> None:
            _tidy_wandb(self.trainer)
            _require_pairs(self.datamodule, "validate", ("val",))
            self._wire_evaluator()

        def before_test(self) -> None:
            _tidy_wandb(self.trainer)
            _require_pairs(self.datamodule, "test", ("test",))
            self._wire_evaluator()

        def predict(self, model, datamodule=None, ckpt_path=None, **_):
            """Layer-wise full-catalogue inference + FAISS index (not Trainer.predict's per-batch path)."""
            from datamodules.progress import progress_enabled

            from .artifacts import load_weights, write_artifacts

            cfg = self.config[self.subcommand]
            art = cfg.artifacts
            names = art.get("baselines")
            if names is not None:
                from .evaluation import ALL_BASELINES

                bad = [b for b in names if b not in ALL_BASELINES]
                if bad:
                    raise ValueError(f"--artifacts.baselines has {bad}: choose from {list(ALL_BASELINES)}")
            if cfg.engine not in ENGINES:
                raise ValueError(f"--engine {cfg.engine!r} is not valid; choose one of {list(ENGINES)}")
            if cfg.engine == "ray":
                from .ray_inference import _require_ray

                _require_ray()
            load_weights(model, ckpt_path)
            out = art.output_dir or f"artifacts/{datamodule.dataset_name}"
            evaluate = art.evaluate
            if evaluate and not _pairs(datamodule, "test"):
                print(f"pinsage predict: warning: {_no_pairs_reason(datamodule, 'test')}: nothing to evaluate, "
                      "so no metrics.json (the embeddings and the index are written)", file=sys.stderr)
                evaluate = False
            write_artifacts(model, datamodule, out, index=art.index, chunk_size=art.chunk_size,
                            neighbours=art.get("neighbours", 50),
                            evaluate=evaluate, ckpt_path=ckpt_path,
                            config=cfg.as_dict(), baselines=art.get("baselines"), engine=cfg.engine,
                            ray_address=cfg.ray.address, progress=progress_enabled())
            print(json.dumps({"artifacts": str(out)}))

    return PinSageCLI


def _tidy_wandb(trainer) -> None:
    """Lightning's WandbLogger passes ``anonymous=None``, which wandb answers with a deprecation
    warning on every run: leave the unset setting out."""
    for lg in getattr(trainer, "loggers", None) or []:
        init = getattr(lg, "_wandb_init", None)
        if isinstance(init, dict) and init.get("anonymous", 0) is None:
            init.pop("anonymous")


def _checkpoints_under_root(trainer) -> None:
    """Checkpoints go to ``<default_root_dir>/checkpoints`` whatever the logger (a stable path); the
    folder is locked for this run (a second ``fit`` into it is refused, not mixed in)."""
    import os.path

    from pytorch_lightning.callbacks import ModelCheckpoint

    from .checkpoints import atomic_checkpoint_io, lock_run_folder

    from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # the default: temp file + rename instead
        trainer.strategy.checkpoint_io = atomic_checkpoint_io()
    for cb in trainer.callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
            cb.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")
        if isinstance(cb, ModelCheckpoint):
            lock_run_folder(cb.dirpath)


def _pairs(datamodule, part: str) -> int:
    datamodule.setup(part if part != "val" else "validate")  # idempotent: parses or loads the cache once
    return int(len(getattr(datamodule.dataset, f"{part}_pairs")))


def _no_pairs_reason(datamodule, part: str) -> str:
    ds = datamodule.dataset
    if part == "train":
        return f"dataset {ds.name!r} has no training pairs (no user has two training interactions in a row)"
    which = "second-last" if part == "val" else "last"
    return (f"dataset {ds.name!r} has no {'validation' if part == 'val' else 'test'} pairs (held out: each user's "
            f"{which} interaction, only for users with >= 3 interactions; here {ds.num_users} users, "
            f"{ds.interactions.num_interactions} interactions)")


def _require_pairs(datamodule, command: str, parts) -> None:
    """Refuse up front (one error line) what would otherwise train an epoch and then fail, or
    print ``{}``: a dataset without the pairs ``command`` needs."""
    for part in parts:
        if not _pairs(datamodule, part):
            hint = {"fit": "add interactions (>= 3 per user for validation) or another split",
                    "validate": "nothing to evaluate", "test": "nothing to evaluate"}[command]
            raise ValueError(f"{_no_pairs_reason(datamodule, part)}: {hint}")


def run_lightning(argv: List[str]):
    from datamodules.datamodule import PinSageDataModule
    from models.module import PinSageModule

    from pytorch_lightning.cli import SaveConfigCallback

    class LogConfigCallback(SaveConfigCallback):
        """Writes config.yaml beside the run and sends the whole resolved config to the logger."""

        def save_config(self, trainer, pl_module, stage) -> None:
            import yaml

            if trainer.logger is not None:
                cfg = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
                trainer.logger.log_hyperparams({"config": cfg})

    cli_cls = _lightning_cli_class()
    cli = cli_cls(
        PinSageModule,
        PinSageDataModule,
        args=None if argv == sys.argv[1:] else argv,
        save_config_callback=LogConfigCallback,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"use_distributed_sampler": False},
        auto_configure_optimizers=False,
    )
    return cli


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
