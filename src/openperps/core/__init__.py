"""The exchange core: pure logic, no I/O. See ``core.engine`` for the entry point.

The hot modules (``openperps.COMPILED_MODULES``) may be installed compiled to C with mypyc
(see ``setup.py``); ``is_compiled()`` tells which build runs. ``OPENPERPS_PURE=1`` in the
environment loads the Python sources anyway (see ``openperps``).
"""

from __future__ import annotations


def is_compiled() -> bool:
    """True when the engine runs as compiled C (mypyc), False when it runs as Python."""
    from openperps.core import engine

    return not str(engine.__file__).endswith(".py")
