"""Moving events, in version order, from the writer to readers (read models, feed gateways).

``Published`` is what travels: the durable envelopes of one command together with the decoded
events, so an in-process reader never decodes and a remote one never re-encodes.
"""

from openperps.bus.memory import InProcessBus, Published, Subscriber

__all__ = ["InProcessBus", "Published", "Subscriber"]
