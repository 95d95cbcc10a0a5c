"""One line for a write the disk refused (full, quota, read-only, permissions): the CLI's and
``pinsage data``'s."""

from __future__ import annotations

import errno

_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def is_disk_error(e: OSError) -> bool:
    """A write the disk refused: by errno, or numpy's short write (``"N requested and M written"``, no errno)."""
    return e.errno in _DISK_ERRNOS or (e.errno is None and "requested and" in str(e) and "written" in str(e))


def _disk_error(e: OSError) -> str:
    """One line for a write the disk refused (full, quota, read-only, permissions)."""
    what = f" {e.filename!r}" if e.filename else ""
    why = f"{e.strerror} (errno {e.errno})" if e.strerror else f"{e} (a short write: the disk is full?)"
    return (f"cannot write{what}: {why}; files already complete were kept and "
            "nothing was left half written: free space (or fix permissions) and run the command again")
