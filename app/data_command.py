"""``pinsage data``: parse (or load from cache) a dataset and print its counts as JSON."""

from __future__ import annotations

import json
import sys
from typing import List, Optional

from jsonargparse import ActionConfigFile, ArgumentParser

from datamodules.datasets import load_dataset
from datamodules.interactions import DataError


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
    args = {k: data[k] for k in ("dataset", "root", "cache_dir", "features", "split", "reader_args")}
    try:
        ds = load_dataset(**args, progress=True)
    except (DataError, ValueError, FileNotFoundError) as e:
        print(f"pinsage data: error: {e}", file=sys.stderr)
        return 2
    summary = ds.summary()
    for part, name in (("val", "validation"), ("test", "test")):
        if summary[f"num_{part}_pairs"] == 0:
            print(f"pinsage data: warning: no {name} pairs (held out only for users with >= 3 interactions): "
                  f"`pinsage fit` needs validation pairs, `test` test pairs", file=sys.stderr)
    print(json.dumps(summary))
    return 0
