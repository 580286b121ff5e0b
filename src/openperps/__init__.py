"""OpenPerps: a self-hostable perpetual-futures exchange and its Kana-compatible feed."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

__version__ = "0.1.0"

# Modules that setup.py may compile with mypyc; keep in step with core.COMPILED_MODULES.
_COMPILABLE = frozenset(
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
        if fullname not in _COMPILABLE:
            return None
        source = Path(__file__).parent / "core" / (fullname.rsplit(".", 1)[1] + ".py")
        return importlib.util.spec_from_file_location(fullname, source)


if os.environ.get("OPENPERPS_PURE", "") not in ("", "0") and not any(
    isinstance(finder, _PureSources) for finder in sys.meta_path
):
    sys.meta_path.insert(0, _PureSources())
