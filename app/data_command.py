"""``pinsage data``: parse (or load from cache) a dataset and print its counts as JSON.

The JSON holds the sizes (``num_train`` / ``num_val`` / ``num_test`` interactions and pairs) and
the split kind actually used (``split``: ``auto`` resolved to ``temporal``/``random``/``fixed``)
with its ``split_seed``."""

from __future__ import annotations

import json
import sys
from typing import List, Optional

from jsonargparse import ActionConfigFile, ArgumentParser

from datamodules.datasets import load_dataset
from datamodules.interactions import DataError
from datamodules.splits import resolve_split


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
    """``--config F`` where F holds only the data section (configs/data/*.yaml) -> ``--data F``."""
    import yaml

    out = list(argv)
    for j, a in enumerate(out[:-1]):
        if a == "--config":
            try:
                with open(out[j + 1]) as f:
                    content = yaml.safe_load(f) or {}
            except OSError:
                continue  # the parser reports the missing file
            if isinstance(content, dict) and "data" not in content:
                out[j] = "--data"
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    cfg = parser.parse_args(_as_group_config(list(argv or [])))
    data = cfg.data.as_dict()
    args = {k: data[k] for k in ("dataset", "root", "cache_dir", "features", "split", "split_seed", "reader_args")}
    try:
        ds = load_dataset(**args, progress=True)
    except (DataError, ValueError, FileNotFoundError) as e:
        print(f"pinsage data: error: {e}", file=sys.stderr)
        return 2
    summary = ds.summary()
    summary["split"] = resolve_split(args["split"], ds.interactions)
    summary["split_seed"] = args["split_seed"]
    print(json.dumps(summary))
    return 0
