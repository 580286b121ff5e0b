"""The exchange core: pure logic, no I/O. See ``core.engine`` for the entry point.

The hot modules (``COMPILED_MODULES``) may be installed compiled to C with mypyc (see
``setup.py`` and ``docs/performance.md``); ``is_compiled()`` tells which build runs.
``OPENPERPS_PURE=1`` in the environment loads the Python sources anyway (see ``openperps``).
"""

from __future__ import annotations

from typing import Final

COMPILED_MODULES: Final = frozenset(
    {
        "openperps.core.book",
        "openperps.core.engine",
        "openperps.core.margin",
        "openperps.core.numbers",
    }
)


def is_compiled() -> bool:
    """True when the engine runs as compiled C (mypyc), False when it runs as Python."""
    from openperps.core import engine

    return not str(engine.__file__).endswith(".py")
