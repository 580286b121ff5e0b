"""Which engine build runs: compiled when installed compiled and up to date, else pure."""

from __future__ import annotations

import importlib.machinery
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import openperps

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def make_package(root: Path, *, built_after_source: bool) -> Path:
    core = root / "core"
    core.mkdir(parents=True)
    for name in ("book", "engine", "margin", "numbers"):
        source, built = core / f"{name}.py", core / f"{name}{SUFFIX}"
        source.write_text("")
        built.write_bytes(b"")
        os.utime(source, (1_000_000, 1_000_000))
        os.utime(built, (1_000_100, 1_000_100))
    if not built_after_source:
        os.utime(core / "engine.py", (1_000_200, 1_000_200))  # edited after the build
    return root


def test_up_to_date_compiled_modules_are_used(tmp_path: Path) -> None:
    assert openperps._stale_compiled(make_package(tmp_path, built_after_source=True)) == []


def test_a_source_edited_after_the_build_makes_its_module_stale(tmp_path: Path) -> None:
    stale = openperps._stale_compiled(make_package(tmp_path, built_after_source=False))
    assert stale == ["openperps.core.engine"]


def test_a_pure_install_has_nothing_stale(tmp_path: Path) -> None:
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "engine.py").write_text("")
    assert openperps._stale_compiled(tmp_path) == []


def test_openperps_pure_loads_the_python_sources() -> None:
    code = "from openperps.core import is_compiled, engine; print(is_compiled(), engine.__file__)"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(os.environ, OPENPERPS_PURE="1"),
        capture_output=True,
        text=True,
        check=True,
    )
    compiled, path = done.stdout.split()
    assert compiled == "False" and path.endswith("engine.py")


def test_a_stale_compiled_module_makes_the_whole_engine_run_pure_with_a_warning() -> None:
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    core = Path(openperps.__file__).parent / "core"
    if not any(path.name.endswith(suffixes) for path in core.iterdir()):
        pytest.skip("openperps is installed pure: every module is a .py whatever is stale")
    # in a fresh interpreter: the choice is made once, when openperps is first imported
    code = (
        "import warnings, openperps\n"
        "openperps._stale_compiled = lambda: ['openperps.core.engine']\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    openperps._choose_build()\n"
        "from openperps.core import is_compiled, book, engine\n"
        "print(is_compiled(), book.__file__, engine.__file__)\n"
        "print(caught[0].message)\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "OPENPERPS_PURE"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    modules, warning = done.stdout.splitlines()
    compiled, *paths = modules.split()
    assert compiled == "False"
    assert all(path.endswith(".py") for path in paths)  # all or none, not the stale one only
    assert "openperps.core.engine is older than its source" in warning
    assert "make install" in warning


def test_setup_compiles_the_modules_the_package_knows_as_compiled() -> None:
    """setup.py cannot import the package it builds, so it keeps its own list."""
    import ast

    tree = ast.parse((Path(__file__).parents[2] / "setup.py").read_text("utf-8"))
    (listed,) = [
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "COMPILED_MODULES" for t in node.targets)
    ]
    names = {path.removeprefix("src/").removesuffix(".py").replace("/", ".") for path in listed}
    assert names == set(openperps.COMPILED_MODULES)


def test_make_rebuilds_when_a_compiled_module_changes() -> None:
    makefile = (Path(__file__).parents[2] / "Makefile").read_text("utf-8")
    found = re.search(r"addprefix src/openperps/core/,([^)]*)\)", makefile)
    assert found is not None
    names = {f"openperps.core.{name.removesuffix('.py')}" for name in found.group(1).split()}
    assert names == set(openperps.COMPILED_MODULES)
