"""The Python SDK: ``Client`` (signed REST calls, typed records; ``SyncClient`` the same
without an event loop) and ``Feed`` (WebSocket subscriptions that reconnect and resume without
losing or repeating live records). Errors derive from ``ClientError`` (see ``rest``)."""

from openperps.client.book import LocalBook
from openperps.client.feed import (
    Feed,
    FeedClosedError,
    FeedConnectError,
    FeedError,
    FeedFailedError,
    Push,
)
from openperps.client.rest import (
    ActionResult,
    ApiError,
    Client,
    ClientClosed,
    ClientError,
    Fill,
    FundingPayment,
    NetworkError,
    NewOrder,
    OrderResult,
    Refusal,
    SyncClient,
    TransferResult,
)

__all__ = [
    "ActionResult",
    "ApiError",
    "Client",
    "ClientClosed",
    "ClientError",
    "Feed",
    "FeedClosedError",
    "FeedConnectError",
    "FeedError",
    "FeedFailedError",
    "Fill",
    "FundingPayment",
    "LocalBook",
    "NetworkError",
    "NewOrder",
    "OrderResult",
    "Push",
    "Refusal",
    "SyncClient",
    "TransferResult",
]
