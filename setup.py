"""Build script: compiles the engine's hot modules to C with mypyc when it can.

Everything else about the package lives in ``pyproject.toml``. The engine is plain,
strictly typed Python; mypyc turns ``core.engine``, ``core.book``, ``core.margin`` and
``core.numbers`` into C extensions that run the same code about 2.5 times faster (see
DEVELOPERS.md); ``openperps.COMPILED_MODULES`` names the same modules. The compiled and the
pure modules behave alike, command for command and byte for byte.

- ``OPENPERPS_PURE=1`` at install time skips compiling (no C compiler needed).
- Without a working compiler the build warns and installs the pure modules.
- ``OPENPERPS_PURE=1`` at run time makes ``import openperps`` load the pure sources even
  where compiled ones exist (coverage, debugging).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

COMPILED_MODULES = [
    "src/openperps/core/book.py",
    "src/openperps/core/engine.py",
    "src/openperps/core/margin.py",
    "src/openperps/core/numbers.py",
]


class OptionalBuildExt(build_ext):  # type: ignore[misc]
    """Build the extensions, but fall back to the pure modules if the compiler fails."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # any compiler failure means "stay pure"
            self._warn(exc)

    def build_extension(self, ext: Any) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._warn(exc)

    @staticmethod
    def _warn(exc: BaseException) -> None:
        print(
            f"openperps: compiling the engine failed ({exc}); installing the pure-Python "
            "engine, which behaves the same and runs slower",
            file=sys.stderr,
        )


def extensions() -> list[Any]:
    if os.environ.get("OPENPERPS_PURE", "") not in ("", "0"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("openperps: mypyc is not available; installing the pure engine", file=sys.stderr)
        return []
    try:
        return list(mypycify(COMPILED_MODULES, opt_level="3", group_name="openperps_core"))
    except BaseException as exc:  # mypyc exits through SystemExit on type errors
        print(f"openperps: mypyc refused the engine ({exc}); installing it pure", file=sys.stderr)
        return []


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
