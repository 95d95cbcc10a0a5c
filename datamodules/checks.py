"""The one integer check of the data side and the commands: a whole number in a range, or a
``ValueError`` that names the argument, the value and what would be valid.

Arguments are checked once, where they enter (config parsing, the CLI, the readers and the public
functions and constructors a caller reaches); the layers and kernels behind them trust their inputs.
"""

from __future__ import annotations

from typing import Optional

import numpy as np


def check_int(name: str, value, lo: int = 0, hi: Optional[int] = None, *, hint: str = "") -> int:
    """``value`` as a Python ``int`` when it is an integer (``bool`` is not) in ``[lo, hi)``
    (``hi=None``: no upper bound); else ``ValueError("<name>=<value> is invalid: expected an
    integer >= lo<hint>")`` (``in [lo, hi)`` with an upper bound). ``hint`` adds what the value
    means or its other choices, e.g. ``" (Lightning's current_epoch)"``, ``" or null (auto)"``."""
    if (type(value) is int or (isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)))) \
            and value >= lo and (hi is None or value < hi):
        return int(value)
    valid = f">= {lo}" if hi is None else f"in [{lo}, {hi})"
    raise ValueError(f"{name}={value!r} is invalid: expected an integer {valid}{hint}")
