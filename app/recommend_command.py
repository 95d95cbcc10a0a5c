"""``pinsage recommend``: item -> similar items, user -> items, from ``pinsage predict`` artifacts,
with the items added after training (``embed-new``, ``POST /items``) replayed from the item log
as ``pinsage serve`` replays them (:class:`app.recommend.Recommender` answers).

    pinsage recommend --artifacts DIR --item RAW_ID [-k 10] [--json]
    pinsage recommend --artifacts DIR --user RAW_ID [-k 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

from .recommend import ArtifactError, Recommender, UnknownIdError
from .serve import ServiceState, default_log_path


def _one_line(text: str) -> str:
    """Control characters (a newline in a title) escaped, so each answer stays on one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pinsage recommend", description=__doc__.split("\n\n")[0])
    p.add_argument("--artifacts", required=True, help="folder written by `pinsage predict`")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--item", help="raw item id: similar items")
    g.add_argument("--user", help="raw user id: items for this user, seen ones excluded")
    p.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--log", default=None, help="item log of `embed-new` / `serve` (default <artifacts>.items.jsonl "
                                               "when it exists): its items are answered and recommended too")
    return p


def _with_item_log(folder: str, log: Optional[str]) -> "Recommender":
    """The artifacts plus the items added after training (``embed-new``, ``POST /items``), as ``serve``
    replays them; the artifacts alone when there is no log."""
    path = Path(log) if log else default_log_path(folder)
    if log is None and not path.is_file():
        return Recommender(folder)
    if log is not None and not path.is_file():
        raise FileNotFoundError(f"--log {log!r} does not exist")
    return ServiceState(folder, path).rec


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rec = _with_item_log(args.artifacts, args.log)
        out = rec.similar_items(args.item, args.k) if args.item is not None else rec.for_user(args.user, args.k)
    except UnknownIdError as e:  # "item 'x' is ..." -> "--item 'x' is ...": name the CLI argument
        print(f"pinsage recommend: error: --{e}", file=sys.stderr)
        return 2
    except (ArtifactError, ValueError, FileNotFoundError) as e:
        print(f"pinsage recommend: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(out))
    else:
        q = out["query"]
        print(f"query: {q}")
        for r, it in enumerate(out["items"], 1):  # one line per item, whatever the title holds
            print(f"{r:3d}. {it['score']:.4f}  {_one_line(it['id'])}  {_one_line(it['title'] or '')}")
    return 0
