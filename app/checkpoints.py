"""Reading a checkpoint the user points at (``--ckpt_path``): one clear error naming the file
for a missing, empty, truncated or foreign file, instead of torch's/Lightning's traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Sequence

#: what Lightning needs to resume training from a checkpoint (beyond the weights)
RESUME_KEYS = ("optimizer_states", "loops", "epoch", "global_step")
#: values Lightning itself resolves (`--ckpt_path last` etc.)
SPECIAL_PATHS = ("last", "best", "hpc", "registry")


def read_checkpoint(path: str, need: Sequence[str] = ("state_dict",)) -> Dict[str, Any]:
    """``torch.load(path, weights_only=True)`` or a ValueError / FileNotFoundError naming ``path``."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--ckpt_path {str(path)!r} does not exist (or is not a file)")
    size = p.stat().st_size
    if size == 0:
        raise ValueError(f"--ckpt_path {str(path)!r} is empty (0 bytes): a write was interrupted; use another "
                         "checkpoint (e.g. the best-*.ckpt beside it) or retrain")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, zipfile errors ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ValueError(f"--ckpt_path {str(path)!r} ({size} bytes) cannot be read as a checkpoint: it is truncated, "
                         f"corrupt or not a PyTorch checkpoint ({type(e).__name__}: {first})") from None
    missing = [k for k in need if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ValueError(f"--ckpt_path {str(path)!r} is not a PinSage Lightning checkpoint (no {', '.join(map(repr, missing))}); "
                         "pass a file written by `pinsage fit` (<run>/checkpoints/*.ckpt)")
    return ckpt
