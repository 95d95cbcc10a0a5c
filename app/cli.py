"""The ``pinsage`` console script.

* ``pinsage fit|validate|test|predict --config configs/<name>.yaml [--trainer.* --data.* --model.*]``
  is the Lightning CLI over :class:`models.module.PinSageModule` and
  :class:`datamodules.datamodule.PinSageDataModule`; ``test`` and ``validate`` print the metrics (model
  and baselines) as one JSON object on its last stdout line.
* ``pinsage data --config configs/data/<name>.yaml`` inspects a dataset (counts as JSON).
* ``pinsage recommend ...`` answers item/user queries from predicted artifacts.
* ``pinsage serve --artifacts DIR`` is the HTTP API (``app/serve.py``); ``pinsage embed-new``
  embeds a CSV of new items inductively.
"""

from __future__ import annotations

import json
import os
import sys
from typing import List, Optional

# offline by default: wandb syncs later, the text model never reaches for a hub
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# idle OpenMP threads sleep instead of spinning: the walk kernels and torch share 2 cores
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def _lightning_cli_class():
    from pytorch_lightning.cli import LightningCLI

    class PinSageCLI(LightningCLI):
        def _parse_ckpt_path(self) -> None:
            # LightningCLI merges a checkpoint's hyperparameters over the config: refuse a shape
            # mismatch instead of silently training/testing another model than the config says
            sub = self.config.get("subcommand")
            path = sub and self.config[sub].get("ckpt_path")
            if path and os.path.isfile(path):
                import torch

                from models.module import SHAPE_KEYS

                saved = torch.load(path, weights_only=True, map_location="cpu").get("hyper_parameters", {})
                cfg = self.config[sub].model
                diff = [f"{k}: checkpoint {saved[k]!r} vs config {cfg.get(k)!r}" for k in SHAPE_KEYS
                        if k in saved and k not in ("in_channels", "num_items") and cfg.get(k) != saved[k]]
                if diff:
                    raise ValueError(f"checkpoint {path} was trained with another model shape ({', '.join(diff)}); "
                                     "use the config it was trained with or retrain")
            super()._parse_ckpt_path()

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
            parser.add_argument("--artifacts.evaluate", type=bool, default=True,
                                help="also write metrics.json (every evaluation protocol + baselines)")

        def _wire_evaluator(self) -> None:
            from .evaluation import module_evaluator

            hp, dm = self.model.hparams, self.datamodule
            self.model.evaluator = module_evaluator(
                dm, {"val": hp.val_protocols, "test": hp.test_protocols}, ks=hp.eval_ks,
                baselines=hp.baselines, batch_size=hp.rank_batch_size, seed=getattr(dm, "seed", 0))

        def before_fit(self) -> None:
            _checkpoints_under_root(self.trainer)
            self._wire_evaluator()

        def before_validate(self) -> None:
            self._wire_evaluator()

        def before_test(self) -> None:
            self._wire_evaluator()

        def predict(self, model, datamodule=None, ckpt_path=None, **_):
            """Layer-wise full-catalogue inference + FAISS index (not Trainer.predict's per-batch path)."""
            from .artifacts import load_weights, write_artifacts

            cfg = self.config[self.subcommand]
            art = cfg.artifacts
            load_weights(model, ckpt_path)
            out = art.output_dir or f"artifacts/{datamodule.dataset_name}"
            write_artifacts(model, datamodule, out, index=art.index, chunk_size=art.chunk_size,
                            evaluate=art.evaluate, ckpt_path=ckpt_path,
                            config=cfg.as_dict())
            print(json.dumps({"artifacts": str(out)}))

    return PinSageCLI


def _checkpoints_under_root(trainer) -> None:
    """Checkpoints go to ``<default_root_dir>/checkpoints`` whatever the logger (a stable path)."""
    import os.path

    from pytorch_lightning.callbacks import ModelCheckpoint

    for cb in trainer.callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
            cb.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")


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
    if argv and argv[0] == "data":
        from .data_command import main as data_main

        return data_main(argv[1:])
    if argv and argv[0] == "recommend":
        from .recommend import main as recommend_main

        return recommend_main(argv[1:])
    if argv and argv[0] in ("serve", "embed-new"):
        from .serve import embed_new_main, serve_main

        return (serve_main if argv[0] == "serve" else embed_new_main)(argv[1:])
    if argv and argv[0] in ("-h", "--help") or not argv:
        print("usage: pinsage {fit,validate,test,predict,data,recommend,serve,embed-new} [--config CONFIG] [overrides]\n"
              "       pinsage <command> --help for the arguments of one command")
        return 0 if argv else 2
    from datamodules.interactions import DataError

    try:
        cli = run_lightning(argv)
    except (DataError, ValueError, FileNotFoundError) as e:  # bad input: one clear line, no traceback
        print(f"pinsage {argv[0]}: error: {e}", file=sys.stderr)
        return 2
    if argv[0] in ("test", "validate"):
        print(json.dumps(getattr(cli.model, "last_metrics", {}), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
