"""Progress bars for long steps, on stderr; quiet when stderr is not a terminal or with ``--quiet``.

``pinsage <cmd> --quiet`` sets ``PINSAGE_QUIET=1`` (inherited by DataLoader workers and sweep
trials); ``PINSAGE_PROGRESS=1`` forces the bars on even without a terminal (logs, CI). One helper
for every long step: title embedding, walks for every item, predict's layers, index build,
evaluation, the report's map.
"""

from __future__ import annotations

import os
import sys
from typing import Optional


def progress_enabled(requested: bool = True) -> bool:
    """Whether a bar should show: requested, not ``--quiet``, and stderr a terminal (or forced)."""
    if not requested or os.environ.get("PINSAGE_QUIET", "") not in ("", "0"):
        return False
    if os.environ.get("PINSAGE_PROGRESS", "") not in ("", "0"):
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def progress_bar(total: Optional[int], desc: str, unit: str = "it", requested: bool = True):
    """A tqdm bar on stderr (a disabled one when :func:`progress_enabled` says no); use as a
    context manager and call ``update(n)``."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False,
                disable=not progress_enabled(requested))
