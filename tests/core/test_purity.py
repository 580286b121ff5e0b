"""The core stays pure: no clock, randomness, sockets or event loop (style.md, principle 1)."""

from __future__ import annotations

import ast
from pathlib import Path

import openperps.core

FORBIDDEN = {"asyncio", "socket", "time", "random", "uuid", "datetime", "os", "threading"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text("utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_core_imports_nothing_impure() -> None:
    core = Path(openperps.core.__file__).parent
    files = sorted(core.glob("*.py"))
    assert files
    offenders = {f.name: sorted(_imports(f) & FORBIDDEN) for f in files if _imports(f) & FORBIDDEN}
    assert offenders == {}


def test_the_check_itself_catches_an_impure_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import time\nfrom random import choice\n")
    assert _imports(bad) & FORBIDDEN == {"time", "random"}
