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
from openperps.ratelimit import TokenBucket


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
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, key: str) -> float:
        if not self.per_second:
            return 0.0
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.PRUNE_AT:
                self._prune(now)
            bucket = self._buckets[key] = TokenBucket(self.per_second, self.burst, now)
        return bucket.take(now)

    def _prune(self, now: float) -> None:
        """Forget every bucket that has refilled: it would start full anyway."""
        self._buckets = {k: b for k, b in self._buckets.items() if b.full_at() > now}

    def __len__(self) -> int:
        return len(self._buckets)


def retry_after(seconds: float) -> str:
    """The ``Retry-After`` value for a wait: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))
