"""A token bucket: the one request-rate rule of the feed, the REST API and the SDK's feed
client.

A bucket holds up to ``burst`` tokens and gains ``per_second`` a second; a request takes one.
It is pure: the caller passes the time (seconds on any clock that only goes forward), so the
feed's sans-I/O session, the REST app and the client each use their own clock.
"""

from __future__ import annotations


class TokenBucket:
    __slots__ = ("burst", "per_second", "stamp", "tokens")

    def __init__(self, per_second: float, burst: float, now: float) -> None:
        """Full at ``now``. ``per_second`` must be positive."""
        self.per_second = per_second
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> float:
        """Spend a token and answer 0.0; or, with none there, spend nothing and answer how
        many seconds until one is."""
        self.tokens = min(self.burst, self.tokens + max(now - self.stamp, 0.0) * self.per_second)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.per_second

    def empty(self, now: float) -> None:
        """No token left at ``now`` (the other side said so)."""
        self.tokens, self.stamp = 0.0, now

    def full_at(self) -> float:
        """When the bucket will be full again if nothing more is taken."""
        return self.stamp + (self.burst - self.tokens) / self.per_second
