"""``pinsage data``: parse (or load from cache) a dataset and print its counts as JSON.

The JSON holds the sizes (``num_train`` / ``num_val`` / ``num_test`` interactions and pairs) and
the split kind actually used (``split``: ``auto`` resolved to ``temporal``/``random``/``fixed``)
with its ``split_seed``; the training pair kind (``pairs``: ``auto`` resolved), ``min_weight``
and ``num_epoch_pairs`` (training pairs per epoch; ``num_train_pairs`` counts the consecutive
pairs)."""

from __future__ import annotations

import json
import sys
from typing import List, Optional

from jsonargparse import ActionConfigFile, ArgumentParser

from datamodules.datasets import load_dataset
from datamodules.interactions import DataError
from datamodules.choices import resolve_half_life, resolve_user_queries
from datamodules.pairs import make_pair_source
from datamodules.splits import resolve_split

from .disk_errors import _disk_error, is_disk_error


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="pinsage data",
        description="Read a dataset, split it, build the training graph and item features, print counts as JSON.",
        env_prefix="PINSAGE",
    )
    parser.add_argument("--config", action=ActionConfigFile, help="a configs/data/<name>.yaml file")
    # the same `data:` section as `pinsage fit` (sampler settings are accepted and ignored here)
    from datamodules.datamodule import PinSageDataModule

    parser.add_class_arguments(PinSageDataModule, "data")
    return parser


def _as_group_config(argv: List[str]) -> List[str]:
    """``--config F`` where F holds only the data section (configs/data/*.yaml) -> ``--data F``;
    a fit config (``data:`` + ``model:`` + ``trainer:``, configs/*.yaml) -> its ``data:`` section."""
    import json
    import os

    import yaml

    out = list(argv)
    for j, a in enumerate(out[:-1]):
        if a == "--config":
            try:
                with open(out[j + 1]) as f:
                    content = yaml.safe_load(f) or {}
            except (OSError, yaml.YAMLError):
                continue  # the parser reports the missing / malformed file
            if not isinstance(content, dict):
                continue
            if "data" not in content:
                out[j] = "--data"
            elif isinstance(content["data"], str):  # `data: data/<name>.yaml`, relative to the config
                out[j], out[j + 1] = "--data", os.path.join(os.path.dirname(out[j + 1]), content["data"])
            else:
                out[j], out[j + 1] = "--data", json.dumps(content["data"])
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    cfg = parser.parse_args(_as_group_config(list(argv or [])))
    data = cfg.data.as_dict()
    args = {k: data[k] for k in ("dataset", "root", "cache_dir", "features", "split", "split_seed", "reader_args")}
    try:
        ds = load_dataset(**args, progress=True)
    except (DataError, ValueError, FileNotFoundError, ImportError) as e:
        print(f"pinsage data: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the cache build on a full disk / read-only folder: one line
        if not is_disk_error(e):
            raise
        print(f"pinsage data: error: {_disk_error(e)}", file=sys.stderr)
        return 1
    summary = ds.summary()
    summary["split"] = resolve_split(args["split"], ds.interactions)
    summary["split_seed"] = args["split_seed"]
    try:
        src = make_pair_source(ds, data["pairs"], data["min_weight"], data["walk_length"], data["restart_prob"],
                               data["seed"], data["weighted_walks"])
    except ValueError as e:
        print(f"pinsage data: error: {e}", file=sys.stderr)
        return 2
    summary["pairs"] = src.kind
    if data.get("queries") == "users":  # what the user queries pool ('auto' resolved, datamodules.choices)
        timed = ds.interactions.timestamps is not None
        try:
            summary["user_queries"] = resolve_user_queries(data["user_queries"], "users", timed)
            summary["user_recency_half_life"] = resolve_half_life(data["user_recency_half_life"], timed)
        except ValueError as e:
            print(f"pinsage data: error: {e}", file=sys.stderr)
            return 2
    summary["min_weight"] = data["min_weight"]
    summary["num_epoch_pairs"] = src.num_pairs
    for part, name in (("val", "validation"), ("test", "test")):
        if summary[f"num_{part}_pairs"] == 0:
            print(f"pinsage data: warning: no {name} pairs (held out only for users with >= 3 interactions): "
                  f"`pinsage fit` needs validation pairs, `test` test pairs", file=sys.stderr)
    print(json.dumps(summary))
    return 0
