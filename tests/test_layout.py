"""The import graph of app/, datamodules/ and models/, function-level imports included: no cycle,
and data flows one way (app -> datamodules, models; models imports neither)."""

import ast
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "datamodules", "models")


def module_files(root: Path = ROOT) -> Dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            mods[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    return mods


def import_graph(mods: Dict[str, Path]) -> Dict[str, Set[str]]:
    """module -> the project modules it imports anywhere in its body (``from . import x`` counts x)."""
    graph: Dict[str, Set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                while name and name not in mods:
                    name = name.rpartition(".")[0]
                if name and name != mod:
                    graph[mod].add(name)
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_the_cycle_finder_finds_a_cycle_and_only_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set(), "c": {"b"}}) == []


def test_the_import_graph_sees_relative_and_function_level_imports(tmp_path):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "x.py").write_text("def f():\n    from .y import g\n")
    (tmp_path / "app" / "y.py").write_text("from . import x\n")
    graph = import_graph(module_files(tmp_path))
    assert graph == {"app.x": {"app.y"}, "app.y": {"app.x"}}
    assert cycles(graph) == [["app.x", "app.y"]]


def test_no_import_cycle_between_project_modules():
    assert cycles(import_graph(module_files())) == []


def test_data_flows_one_way():
    graph = import_graph(module_files())
    up = {m: sorted(t for t in targets if t.split(".")[0] in bad)
          for m, targets in graph.items()
          for bad in [{"app", "datamodules"} if m.startswith("models") else {"app"} if m.startswith("datamodules")
                      else set()]}
    assert {m: t for m, t in up.items() if t} == {}


#: none allowed past the limits (the numba walk kernel was the last: its slot pick and visit count
#: are inlined helpers now, the same neighbourhoods bit for bit)
KNOWN_LONG_MODULES: Set[str] = set()
KNOWN_LONG_FUNCTIONS: Set[str] = set()


def oversized(root: Path = ROOT, max_lines: int = 600, max_function: int = 80):
    """``(modules over max_lines, functions over max_function)`` of the three packages."""
    modules, functions = [], []
    for path in module_files(root).values():
        rel = path.relative_to(root).as_posix()
        text = path.read_text()
        if len(text.splitlines()) > max_lines:
            modules.append(rel)
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                    node.end_lineno - node.lineno + 1 > max_function:
                functions.append(f"{rel}:{node.name}")
    return sorted(modules), sorted(functions)


def test_oversized_finds_a_long_function(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.py").write_text("def f():\n" + "    x = 1\n" * 90 + "\n\ndef g():\n    pass\n")
    assert oversized(tmp_path) == ([], ["models/m.py:f"])
    assert oversized(tmp_path, max_lines=50) == (["models/m.py"], ["models/m.py:f"])


def test_no_new_module_over_600_lines_or_function_over_80():
    modules, functions = oversized()
    assert sorted(set(modules) - KNOWN_LONG_MODULES) == []
    assert sorted(set(functions) - KNOWN_LONG_FUNCTIONS) == []
