"""Moving events, in version order, from the writer to readers (read models, feed gateways).

``Published`` is what travels: the durable envelopes of one command together with the decoded
events, so an in-process reader never decodes and a remote one never re-encodes.

``InProcessBus`` (here) is the embedded default; ``openperps.bus.nats`` carries the same
batches through NATS JetStream to readers in other processes (imported on its own, so the
embedded default needs no NATS client).
"""

from typing import Final

from openperps.bus.memory import InProcessBus, Published, Subscriber

# where the NATS bus is unless told otherwise: the server, and the stream and its subject
DEFAULT_NATS_URL: Final = "nats://127.0.0.1:4222"
DEFAULT_STREAM: Final = "OPENPERPS"
DEFAULT_SUBJECT: Final = "openperps.events"

__all__ = [
    "DEFAULT_NATS_URL",
    "DEFAULT_STREAM",
    "DEFAULT_SUBJECT",
    "InProcessBus",
    "Published",
    "Subscriber",
]
