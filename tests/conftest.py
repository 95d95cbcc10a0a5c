"""Shared fixtures: the real-data root (tests marked ``dataset`` skip without it) and small
synthetic datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PROJECT = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("PINSAGE_DATA_ROOT", PROJECT.parent / "shared" / "data"))


def data_folder(name: str) -> Path:
    """The real dataset folder, or skip the test with the reason."""
    folder = DATA_ROOT / name
    if not folder.is_dir():
        pytest.skip(f"dataset folder {folder} is absent (set PINSAGE_DATA_ROOT to the folder holding '{name}/')")
    return folder


@pytest.fixture(scope="session")
def data_root() -> Path:
    return DATA_ROOT


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pinsage-cache")


@pytest.fixture(scope="session")
def small_synthetic(cache_dir):
    from datamodules.datasets import load_dataset

    return load_dataset(
        "synthetic", cache_dir=str(cache_dir),
        reader_args=dict(num_users=400, num_items=300, num_interactions=6000, num_communities=6, feature_dim=8, seed=0),
    )


@pytest.fixture(autouse=True)
def _no_leaked_quiet():
    """An in-process ``pinsage ... --quiet`` sets ``PINSAGE_QUIET`` for its children; it must not
    silence the tests that come after it."""
    before = {k: os.environ.get(k) for k in ("PINSAGE_QUIET", "PINSAGE_PROGRESS")}
    yield
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
