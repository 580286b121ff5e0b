"""The Python SDK: ``Client`` (signed REST calls, typed records) and ``Feed`` (WebSocket
subscriptions that reconnect and resume without losing or repeating live records)."""

from openperps.client.book import LocalBook
from openperps.client.feed import Feed, Push
from openperps.client.rest import ApiError, Client, SyncClient

__all__ = ["ApiError", "Client", "Feed", "LocalBook", "Push", "SyncClient"]
