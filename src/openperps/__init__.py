"""OpenPerps: a self-hostable perpetual-futures exchange and its Kana-compatible feed."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType

__version__ = "0.1.0"

# The modules setup.py compiles with mypyc and the Makefile rebuilds on (tests/packaging checks
# that the three lists agree).
COMPILED_MODULES = frozenset(
    {
        "openperps.core.book",
        "openperps.core.engine",
        "openperps.core.margin",
        "openperps.core.numbers",
    }
)


class _PureSources(importlib.abc.MetaPathFinder):
    """With ``OPENPERPS_PURE=1``: load the compiled modules from their ``.py`` sources, so
    that coverage, tracebacks and debuggers see Python (the two builds behave alike)."""

    def find_spec(
        self,
        fullname: str,
        path: object = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in COMPILED_MODULES:
            return None
        source = Path(__file__).parent / "core" / (fullname.rsplit(".", 1)[1] + ".py")
        return importlib.util.spec_from_file_location(fullname, source)


def _stale_compiled(package: Path = Path(__file__).parent) -> list[str]:
    """Compiled modules whose source changed after they were built (an edit in a checkout
    installed with ``pip install -e``): running them would run old code."""
    stale = []
    for name in sorted(COMPILED_MODULES):
        source = package / "core" / (name.rsplit(".", 1)[1] + ".py")
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            built = source.with_suffix(suffix)
            if built.exists():
                # two seconds of slack: archives keep times to that precision
                if source.exists() and source.stat().st_mtime > built.stat().st_mtime + 2:
                    stale.append(name)
                break
    return stale


def _choose_build() -> None:
    if any(isinstance(finder, _PureSources) for finder in sys.meta_path):
        return
    if os.environ.get("OPENPERPS_PURE", "") not in ("", "0"):
        sys.meta_path.insert(0, _PureSources())
        return
    stale = _stale_compiled()
    if stale:  # all or none: the compiled modules call each other natively
        warnings.warn(
            f"openperps: the compiled {', '.join(stale)} is older than its source; running "
            "the pure-Python engine. Reinstall (make install) to compile it again.",
            stacklevel=2,
        )
        sys.meta_path.insert(0, _PureSources())


_choose_build()
