"""The README stays a page a new user reads (<= 200 lines); its commands name real subcommands and
config files; every docs/ link resolves; docs/layout.md names every module."""

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
COMMANDS = {"fit", "validate", "test", "predict", "data", "baselines", "recommend", "serve", "embed-new", "sweep",
            "report"}


def code_lines(text: str):
    """The lines of the fenced ``bash`` blocks, continuation lines joined, comments dropped."""
    out, cur, fence = [], "", False
    for line in text.splitlines():
        if line.startswith("```"):
            fence = not fence
            continue
        if not fence:
            continue
        cur += line.split("  #")[0].rstrip().rstrip("\\") + " "
        if not line.rstrip().endswith("\\"):
            if cur.strip() and not cur.lstrip().startswith("#"):
                out.append(cur.strip())
            cur = ""
    return out


def test_readme_is_short():
    assert len(README.read_text().splitlines()) <= 200


def test_readme_pinsage_commands_name_real_subcommands_and_configs():
    cmds = [c for c in code_lines(README.read_text()) if re.search(r"(^|\s)pinsage\s", c)]
    assert len(cmds) >= 8, cmds
    for cmd in cmds:
        argv = shlex.split(cmd[cmd.index("pinsage "):].replace("<same>", "x"))
        assert argv[1] in COMMANDS, cmd
        for i, tok in enumerate(argv[:-1]):
            if tok == "--config":
                assert (ROOT / argv[i + 1]).is_file(), cmd


def test_doc_links_resolve():
    pages = [README, *sorted((ROOT / "docs").glob("*.md"))]
    assert len(pages) >= 6
    for page in pages:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), (page.name, target)


def test_layout_names_every_module():
    text = (ROOT / "docs" / "layout.md").read_text()
    modules = [p.relative_to(ROOT).as_posix() for pkg in ("app", "datamodules", "models")
               for p in sorted((ROOT / pkg).glob("*.py")) if p.name != "__init__.py"]
    assert len(modules) > 40
    assert [m for m in modules if f"`{m}`" not in text] == []
