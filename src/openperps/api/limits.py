"""Request rates of the REST API: token buckets per account and per client address.

Two limits, each a bucket of ``burst`` tokens refilled at ``per second`` tokens a second, one
token a request:

- signed actions, per account acted on (the wallet a request is verified for, delegate or
  not): what one bot may ask of the matching engine;
- every request, per client address: a ceiling on one machine's traffic, reads included.
  ``/health`` and ``/metrics`` are not counted (monitors poll them).

Past a limit the answer is 429, code 2036, with ``Retry-After`` (whole seconds, at least 1):
a bot that waits that long is answered again. A limit of 0 turns that limit off. Buckets of
clients that went quiet are dropped once they would be full again, so memory follows the
number of recently active clients, not of all clients ever seen.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from openperps.feed.session import check_limits


@dataclass(frozen=True)
class RestLimits:
    actions_per_second: float = 50.0  # signed actions per account
    action_burst: int = 100
    requests_per_second: float = 500.0  # any request, per client address
    request_burst: int = 1000

    def __post_init__(self) -> None:
        check_limits(self, zero_allowed=("actions_per_second", "requests_per_second"), what="rest")


class Buckets:
    """Token buckets by key. ``take(key)`` spends a token and answers 0.0, or answers how many
    seconds until one is there (and spends nothing)."""

    PRUNE_AT = 10_000  # buckets kept before the full ones are dropped

    def __init__(
        self, per_second: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_second = per_second
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)

    def take(self, key: str) -> float:
        if not self.per_second:
            return 0.0
        now = self.clock()
        tokens, when = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - when) * self.per_second)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.per_second
        if len(self._buckets) >= self.PRUNE_AT and key not in self._buckets:
            self._prune(now)
        self._buckets[key] = (tokens - 1.0, now)
        return 0.0

    def _prune(self, now: float) -> None:
        """Forget every bucket that has refilled: it would start full anyway."""
        full = self.burst / self.per_second
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full}

    def __len__(self) -> int:
        return len(self._buckets)


def retry_after(seconds: float) -> str:
    """The ``Retry-After`` value for a wait: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))
