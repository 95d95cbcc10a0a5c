"""Config files are checked before any parser expands them: a YAML file whose aliases expand to
more than :data:`MAX_NODES` values (a "billion laughs" file) is refused with one line, instead of
hanging ``pinsage fit``/``data`` while it eats memory."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

MAX_NODES = 200_000  # the largest shipped config expands to a few hundred
MAX_DEPTH = 4  # configs naming configs (`data: data/synthetic.yaml`), followed this deep


def _expanded_size(root) -> int:
    """Number of values ``root`` expands to, aliases counted each time they are used (memoised on the
    shared nodes, so an exponential expansion is counted in linear time)."""
    import yaml

    memo: Dict[int, int] = {}
    active = set()

    def size(node) -> int:
        key = id(node)
        if key in memo:
            return memo[key]
        if key in active:  # a recursive alias: infinite
            return MAX_NODES + 1
        active.add(key)
        if isinstance(node, yaml.SequenceNode):
            n = 1 + sum(size(c) for c in node.value)
        elif isinstance(node, yaml.MappingNode):
            n = 1 + sum(size(k) + size(v) for k, v in node.value)
        else:
            n = 1
        active.discard(key)
        memo[key] = n = min(n, MAX_NODES + 1)
        return n

    return size(root)


def _scalars(node, out: List[str], seen=None) -> None:
    import yaml

    seen = set() if seen is None else seen
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.ScalarNode):
        out.append(str(node.value))
    elif isinstance(node, yaml.SequenceNode):
        for c in node.value:
            _scalars(c, out, seen)
    elif isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            _scalars(v, out, seen)


def check_config_file(path: str, depth: int = 0) -> None:
    """ValueError naming ``path`` when its aliases expand past :data:`MAX_NODES` values; the config
    files it names (relative to it) are checked too."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError):
        return  # the parser reports what it cannot read
    if "*" not in text and "<<" not in text:  # no alias, no merge key: nothing to expand
        nodes = []
    else:
        try:
            nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
        except yaml.YAMLError:
            return  # the parser reports the syntax error
    for node in nodes:
        if node is not None and _expanded_size(node) > MAX_NODES:
            raise ValueError(f"config {str(path)!r}: its YAML aliases expand to more than {MAX_NODES:,} values "
                             "(an alias bomb?); write the values out, without nested aliases")
    if depth >= MAX_DEPTH:
        return
    try:
        named: List[str] = []
        for node in nodes or yaml.compose_all(text, Loader=yaml.SafeLoader):
            if node is not None:
                _scalars(node, named)
    except yaml.YAMLError:
        return
    for v in named:
        if v.endswith((".yaml", ".yml")) and "\n" not in v:
            q = Path(v) if Path(v).is_absolute() else p.parent / v
            if q.is_file():
                check_config_file(str(q), depth + 1)


def check_config_args(argv: List[str]) -> None:
    """Every ``.yaml``/``.yml`` file named on a command line (``--config F``, ``--data F``, ``--k=F``,
    a sweep file)."""
    for a in argv:
        v = a.split("=", 1)[1] if a.startswith("--") and "=" in a else a
        if v.endswith((".yaml", ".yml")) and Path(v).is_file():
            check_config_file(v)
