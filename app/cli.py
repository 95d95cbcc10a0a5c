"""The ``pinsage`` console script.

``pinsage data ...`` inspects a dataset; every other sub-command (fit, validate, test, predict)
goes to the Lightning CLI.
"""

from __future__ import annotations

import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "data":
        from .data_command import main as data_main

        return data_main(argv[1:])
    print("usage: pinsage {data} --config CONFIG [overrides]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
