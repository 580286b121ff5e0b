"""Moving events, in version order, from the writer to readers (read models, feed gateways).

``Published`` is what travels: the durable envelopes of one command together with the decoded
events, so an in-process reader never decodes and a remote one never re-encodes.

``InProcessBus`` (here) is the embedded default; ``openperps.bus.nats`` carries the same
batches through NATS JetStream to readers in other processes (imported on its own, so the
embedded default needs no NATS client).
"""

from openperps.bus.memory import InProcessBus, Published, Subscriber

__all__ = ["InProcessBus", "Published", "Subscriber"]
