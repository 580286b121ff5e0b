"""The running exchange + REST server the SDK tests talk to."""

from tests.client.test_sdk import server

__all__ = ["server"]
