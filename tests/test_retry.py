"""Doubling pauses between attempts."""

from __future__ import annotations

import asyncio

import pytest

from openperps.retry import Backoff


async def test_pauses_double_up_to_the_ceiling_and_add_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    backoff = Backoff(0.05, 0.3)
    assert (backoff.pauses, backoff.waited, backoff.next) == (0, 0.0, 0.05)
    for _ in range(5):
        await backoff.pause()
    assert slept == [0.05, 0.1, 0.2, 0.3, 0.3]
    assert backoff.pauses == 5
    assert backoff.waited == pytest.approx(0.95)
    assert backoff.next == 0.3


@pytest.mark.parametrize(("first", "ceiling"), [(0, 1), (-1, 1), (2, 1)])
def test_pauses_that_cannot_work_are_refused(first: float, ceiling: float) -> None:
    with pytest.raises(ValueError, match="0 < first <= ceiling"):
        Backoff(first, ceiling)
