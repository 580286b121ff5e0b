"""The exchange core: pure logic, no I/O. See ``core.engine`` for the entry point."""
