"""Pauses between attempts at something that is down for now (a NATS server, a log, the disk):
short at first, doubling up to a ceiling, so a brief outage costs little and a long one
does not spin."""

from __future__ import annotations

import asyncio


class Backoff:
    """Doubling pauses, ``first`` seconds at first and never more than ``ceiling``."""

    def __init__(self, first: float = 0.05, ceiling: float = 2.0) -> None:
        if not 0 < first <= ceiling:
            raise ValueError(f"pauses must be 0 < first <= ceiling, not {first} and {ceiling}")
        self.next = first  # the pause the next ``pause`` takes
        self.ceiling = ceiling
        self.pauses = 0  # taken so far: 0 until the first failure has been waited out
        self.waited = 0.0  # seconds, in all

    async def pause(self) -> None:
        await asyncio.sleep(self.next)
        self.waited += self.next
        self.pauses += 1
        self.next = min(self.next * 2, self.ceiling)
