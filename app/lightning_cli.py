"""The LightningCLI of ``pinsage fit|validate|test|predict`` (:class:`PinSageCLI`), at module level
so that both the console script (:mod:`app.cli`) and ``pinsage sweep`` (which parses trial
commands without running them) build on it without importing each other.

It links the data's sizes into the model, adds predict's ``--artifacts.*``, ``--engine`` and
``--ray.address`` arguments and the fit callbacks' arguments, takes only the model's shape from a
checkpoint, refuses datasets without the pairs a command needs, and runs ``predict`` as layer-wise
full-catalogue inference into an artifact folder (:func:`app.artifacts.write_artifacts`).
"""

from __future__ import annotations

import json
import os
import sys
from typing import List, Optional

from pytorch_lightning.cli import LightningCLI, SaveConfigCallback

from .callbacks import EpochMetricsLog, WandbFigures
from .checkpoints import RESUME_KEYS, SPECIAL_PATHS, atomic_checkpoint_io, lock_run_folder, read_checkpoint

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
ENGINES = ("local", "ray")
SIMILAR_ITEMS = 50  # --artifacts.similar_items: the top-K table predict precomputes


class PinSageCLI(LightningCLI):
    def _parse_ckpt_path(self) -> None:
        # LightningCLI merges *all* of a checkpoint's hyperparameters over the config, so
        # `--model.eval_ks` or `--model.lr` would be ignored with `--ckpt_path`. Only the model's
        # architecture comes from the checkpoint (a config of another shape is refused instead of
        # silently training/testing another model); evaluation and optimisation keys come from
        # the config and the command line.
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
        parser.link_arguments("data.num_users", "model.num_users", apply_on="instantiate")
        parser.link_arguments("data.num_layers", "model.num_layers")
        add_predict_arguments(parser)
        # per-epoch metrics file (pinsage sweep reads it) and the report's figures in wandb
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
                        neighbours=similar_items(art),
                        evaluate=evaluate, ckpt_path=ckpt_path,
                        config=cfg.as_dict(), baselines=art.get("baselines"), engine=cfg.engine,
                        ray_address=cfg.ray.address, progress=progress_enabled())
        print(json.dumps({"artifacts": str(out)}))


def add_predict_arguments(parser) -> None:
    """``--artifacts.*``, ``--engine`` and ``--ray.address``: what ``pinsage predict`` writes and where it runs."""
    # where `pinsage predict` writes its artifacts (see app/artifacts.py)
    parser.add_argument("--artifacts.output_dir", type=Optional[str], default=None,
                        help="output folder of predict (default artifacts/<dataset>)")
    parser.add_argument("--artifacts.index", type=str, default="auto",
                        help="FAISS index: auto | exact | hnsw | ivfpq")
    parser.add_argument("--artifacts.chunk_size", type=int, default=65536,
                        help="items per chunk of layer-wise inference (bounds memory)")
    parser.add_argument("--artifacts.similar_items", type=Optional[int], default=None,
                        help=f"precompute every item's top-K similar items from the index (neighbours.npy: "
                             f"`pinsage serve` answers k <= K from it); 0: none (default {SIMILAR_ITEMS})")
    parser.add_argument("--artifacts.neighbours", type=Optional[int], default=None,
                        help="deprecated spelling of --artifacts.similar_items (T is --data.num_neighbors)")
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


def similar_items(art) -> int:
    """``--artifacts.similar_items``, or its deprecated spelling ``--artifacts.neighbours`` (with a
    line saying so), else the default."""
    new, old = art.get("similar_items"), art.get("neighbours")
    if old is not None:
        print("pinsage predict: warning: --artifacts.neighbours is deprecated: use --artifacts.similar_items "
              "(--data.num_neighbors is T, the neighbourhood size)", file=sys.stderr)
        if new is not None and new != old:
            raise ValueError(f"--artifacts.similar_items {new} and --artifacts.neighbours {old} disagree: give "
                             "--artifacts.similar_items only")
    return int(next(v for v in (new, old, SIMILAR_ITEMS) if v is not None))


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
    from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
    from pytorch_lightning.callbacks import ModelCheckpoint

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


class LogConfigCallback(SaveConfigCallback):
    """Writes config.yaml beside the run and sends the whole resolved config to the logger."""

    def save_config(self, trainer, pl_module, stage) -> None:
        import yaml

        if trainer.logger is not None:
            cfg = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
            trainer.logger.log_hyperparams({"config": cfg})


def run_lightning(argv: List[str]) -> PinSageCLI:
    """Parse ``argv`` (``fit|validate|test|predict ...``) and run it; returns the CLI object."""
    from datamodules.datamodule import PinSageDataModule
    from models.module import PinSageModule

    return PinSageCLI(
        PinSageModule,
        PinSageDataModule,
        args=None if argv == sys.argv[1:] else argv,
        save_config_callback=LogConfigCallback,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"use_distributed_sampler": False},
        auto_configure_optimizers=False,
    )
