"""What the data settings left at ``auto`` become for a given log, and the one line that says so.

``split: auto`` (:func:`datamodules.splits.resolve_split`) and ``pairs: auto``
(:func:`datamodules.pairs.resolve_pairs`) are resolved where they are defined; this module adds
the user-query settings and owns the announcement (issue 20 item 16: ``configs/table.yaml``
needs only the log's path and columns):

* ``user_queries: auto`` (with ``queries: users``): ``before`` (a next-item objective: the items
  just before each positive) when the log has timestamps, else ``leave_one_out`` (the user's
  whole training history without the positive: without time, "before" means nothing).
* ``user_recency_half_life: auto``: :data:`AUTO_HALF_LIFE` interactions with timestamps (what
  the MovieLens user configs chose on validation), ``None`` (equal weights) without.

Explicit values are kept as given. :func:`announce` prints, once per process and choice, one
stderr line naming what the log has (timestamps, weights, an item table, the features) and
what was chosen from it, so a user of ``configs/table.yaml`` sees why.
"""

from __future__ import annotations

import sys
from typing import Optional

from .pairs import resolve_pairs
from .splits import resolve_split

AUTO = "auto"
USER_QUERIES = ("leave_one_out", "before", AUTO)
AUTO_HALF_LIFE = 3.0  # configs/data/movielens-100k-users.yaml: chosen on validation (RESULTS.md)

_announced: set = set()


def check_user_queries(user_queries: str) -> str:
    if user_queries not in USER_QUERIES:
        raise ValueError(f"user_queries={user_queries!r} is not valid; choose one of {list(USER_QUERIES)}")
    return user_queries


def check_half_life(half_life):
    """``None``, ``'auto'`` or a float > 0 (else a ValueError naming the value)."""
    if half_life is None or half_life == AUTO:
        return half_life
    try:
        v = float(half_life)
    except (TypeError, ValueError):
        v = float("nan")
    if isinstance(half_life, bool) or not v > 0 or v == float("inf"):
        raise ValueError(f"user_recency_half_life must be a number > 0, null (equal weights) or 'auto', "
                         f"got {half_life!r}")
    return v


def resolve_user_queries(user_queries: str, queries: str, has_timestamps: bool) -> str:
    """``before`` / ``leave_one_out`` (``auto``: ``before`` for user queries on a timed log)."""
    check_user_queries(user_queries)
    if user_queries != AUTO:
        return user_queries
    return "before" if queries == "users" and has_timestamps else "leave_one_out"


def resolve_half_life(half_life, has_timestamps: bool) -> Optional[float]:
    """The recency half-life (``auto``: :data:`AUTO_HALF_LIFE` with timestamps, else ``None``)."""
    half_life = check_half_life(half_life)
    if half_life == AUTO:
        return AUTO_HALF_LIFE if has_timestamps else None
    return half_life


def describe(ds, settings: dict, chosen: dict) -> str:
    """One line: what ``ds`` has, and each data choice (``auto`` marks those that follow from it)."""
    inter = ds.interactions
    timed, weighted, table = inter.timestamps is not None, inter.weights is not None, inter.item_table is not None
    has = [("timestamps" if timed else "no timestamps"), ("weights" if weighted else "no weights"),
           ("an item table" if table else "no item table")]

    def item(key: str, text: str, why: str) -> str:
        return f"{text} ({why}; {'auto' if settings.get(key) == AUTO else 'as set'})"

    kind = chosen["split"]
    parts = [item("split", f"split {kind}", {
        "temporal": "each user's last interaction is the test one, the second last the validation one",
        "random": f"a seeded per-user leave-one-out, split_seed {settings.get('split_seed', 0)}; --data.split "
                  "temporal if the file is in time order",
        "fixed": "the dataset's own test set"}[kind])]
    if settings["queries"] == "users":
        uq, half = chosen["user_queries"], chosen["user_recency_half_life"]
        parts.append(item("user_queries", f"user queries {uq}",
                          f"the {settings['user_query_window']} items before each positive: next-item training"
                          if uq == "before" else "the user's whole training history without the positive"))
        parts.append(item("user_recency_half_life", f"recency half-life {'none' if half is None else f'{half:g}'}",
                          "equal weights" if half is None else "history weights 2^(-r/h), r from the latest"))
    else:
        parts.append(item("pairs", f"training pairs {chosen['pairs']}",
                          "each user's consecutive interactions" if chosen["pairs"] == "consecutive"
                          else "two items of one user, drawn each epoch" if chosen["pairs"] == "cooccurrence"
                          else "walks from each item"))
    if weighted:
        parts.append("weights steer the walks" if settings.get("weighted_walks", True) else
                     "weights not used by the walks (weighted_walks: false)")
    groups = list(dict.fromkeys(str(n).split(":", 1)[0] for n in ds.feature_names))  # "text:0" -> "text"
    return (f"pinsage: {ds.name} has {', '.join(has)} (features: {', '.join(groups)}), so: "
            f"{'; '.join(parts)}")


def resolve_all(ds, settings: dict) -> dict:
    """Every data choice for ``ds`` (``split``, ``pairs``, ``user_queries``, ``user_recency_half_life``)."""
    timed = ds.interactions.timestamps is not None
    return {"split": resolve_split(settings["split"], ds.interactions),
            "pairs": resolve_pairs(settings["pairs"], timed),
            "user_queries": resolve_user_queries(settings["user_queries"], settings["queries"], timed),
            "user_recency_half_life": resolve_half_life(settings["user_recency_half_life"], timed)}


def announce(ds, settings: dict, chosen: dict) -> None:
    """Print :func:`describe` on stderr once per process and choice, when any setting is ``auto``."""
    if not any(settings.get(k) == AUTO for k in chosen):
        return
    line = describe(ds, settings, chosen)
    if line not in _announced:
        _announced.add(line)
        print(line, file=sys.stderr, flush=True)
