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


#: run folders this process holds (``pinsage fit``): released by :func:`release_run_locks`
_RUN_LOCKS: Dict[str, int] = {}
LOCK_NAME = ".pinsage-fit.lock"


def _is_rank_zero() -> bool:
    import os

    return all(os.environ.get(k, "0") in ("", "0") for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "GLOBAL_RANK"))


def lock_run_folder(dirpath: str) -> None:
    """Hold an exclusive lock on a checkpoint folder for this process's ``fit`` (rank 0 only: the other
    ranks of one run write nothing there), or a ValueError naming the process that holds it.  The lock
    (``flock``) goes with the process, ``kill -9`` included."""
    import fcntl
    import os

    if not _is_rank_zero():
        return
    folder = os.path.abspath(dirpath)
    if folder in _RUN_LOCKS:
        return
    parent, name = os.path.split(folder)
    os.makedirs(parent, exist_ok=True)  # the lock sits beside the folder (Lightning warns on a non-empty one)
    fd = os.open(os.path.join(parent, f".{name}{LOCK_NAME}"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ValueError(f"another `pinsage fit` (pid {holder}) is writing checkpoints into {folder}: two runs in one "
                         "folder would mix their checkpoints; wait for it, or give this run its own "
                         "--trainer.default_root_dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _RUN_LOCKS[folder] = fd


def release_run_locks() -> None:
    import os

    while _RUN_LOCKS:
        _, fd = _RUN_LOCKS.popitem()
        os.close(fd)


def atomic_checkpoint_io():
    """Lightning's CheckpointIO writing ``<name>.tmp-<pid>`` beside the target, fsync, then one rename:
    a full disk leaves the previous checkpoint as it was, never a truncated ``best-*.ckpt``."""
    import io
    import os

    import torch
    from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
            if storage_options is not None or "://" in str(path):  # remote paths: Lightning's own writer
                return super().save_checkpoint(checkpoint, path, storage_options)
            path = str(path)
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            buf = io.BytesIO()
            torch.save(checkpoint, buf)
            tmp = f"{path}.tmp-{os.getpid()}"
            try:
                with open(tmp, "wb") as f:
                    f.write(buf.getbuffer())
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException as e:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                if isinstance(e, OSError) and not e.filename:  # say which checkpoint could not be written
                    raise OSError(e.errno, e.strerror, path) from None
                raise

    return AtomicCheckpointIO()
