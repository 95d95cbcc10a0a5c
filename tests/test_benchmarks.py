"""Every benchmark script starts as its documented command does (``python benchmarks/<name>.py``)
with the project installed and no ``sys.path`` patch: scripts with options answer ``--help`` (and
start nothing), the modules other scripts import load."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SCRIPTS = sorted(BENCH.glob("*.py"))
#: the packages ``pip install -e .`` puts on the path (pyproject's [tool.setuptools] packages)
INSTALLED = ("app", "datamodules", "models")

# Runs every script in one interpreter (torch and friends are imported once): as ``python
# benchmarks/x.py --help`` would, with the script's folder first on sys.path (cwd = benchmarks/).
RUNNER = r"""
import contextlib, io, json, runpy, sys
out = {}
for path in sys.argv[1:]:
    sys.argv = [path, "--help"]
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            runpy.run_path(path, run_name="__main__")
        code = None
    except SystemExit as e:
        code = e.code
    except BaseException as e:  # noqa: BLE001 (reported per script)
        code = f"{type(e).__name__}: {e}"
    out[path] = {"exit": code, "usage": "usage:" in buf.getvalue()}
print(json.dumps(out))
"""


def _sys_path_patches(path: Path):
    """``sys.path.<insert|append|extend>(...)`` calls and ``sys.path = ...`` / ``+=`` in the file's code
    (text inside strings, e.g. the DGL example files training.py writes out, is not code)."""
    def is_sys_path(node):
        return isinstance(node, ast.Attribute) and node.attr == "path" and \
            isinstance(node.value, ast.Name) and node.value.id == "sys"

    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and is_sys_path(node.func.value):
            found.append(node.lineno)
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            found += [node.lineno for t in targets if is_sys_path(t)]
    return sorted(found)


def test_the_patch_finder_sees_a_patch_and_not_a_string(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("import sys\nsys.path.insert(0, 'a')\ncode = 'sys.path.insert(0, 1)'\nsys.path += ['b']\n")
    assert _sys_path_patches(f) == [2, 4]


def test_no_benchmark_patches_sys_path():
    assert {p.name: _sys_path_patches(p) for p in SCRIPTS if _sys_path_patches(p)} == {}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A folder holding only the installed packages (links to this checkout's): on PYTHONPATH it
    stands for ``pip install -e .`` of the code under test, and ``benchmarks`` is not importable
    from it, as after a real install."""
    site = tmp_path_factory.mktemp("site")
    for pkg in INSTALLED:
        (site / pkg).symlink_to(ROOT / pkg, target_is_directory=True)
    return site


def test_every_benchmark_starts_without_a_patch(installed):
    env = {"PYTHONPATH": str(installed), "WANDB_MODE": "disabled", "PATH": "/usr/bin:/bin",
           "HOME": str(installed), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", RUNNER, *[p.name for p in SCRIPTS]], cwd=BENCH, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert sorted(got) == [p.name for p in SCRIPTS]
    for p in SCRIPTS:
        has_options = "ArgumentParser(" in p.read_text()
        want = {"exit": 0, "usage": True} if has_options else {"exit": None, "usage": False}
        assert got[p.name] == want, (p.name, got[p.name], r.stderr[-2000:])
