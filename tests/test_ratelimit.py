"""The one token bucket the feed, the REST API and the SDK's feed client share."""

from __future__ import annotations

import pytest

from openperps.ratelimit import TokenBucket


def test_a_bucket_gives_its_burst_then_its_rate_and_refuses_without_spending() -> None:
    bucket = TokenBucket(per_second=4.0, burst=2, now=10.0)
    assert [bucket.take(10.0), bucket.take(10.0)] == [0.0, 0.0]
    assert bucket.take(10.0) == pytest.approx(0.25)
    assert bucket.take(10.125) == pytest.approx(0.125)  # the refusal spent nothing
    assert bucket.take(10.25) == 0.0
    assert bucket.full_at() == pytest.approx(10.75)
    assert [bucket.take(99.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(0.25)]  # capped


def test_emptied_by_the_other_side_and_a_clock_that_steps_back() -> None:
    bucket = TokenBucket(per_second=1.0, burst=5, now=0.0)
    bucket.empty(3.0)
    assert bucket.take(3.0) == pytest.approx(1.0)
    assert bucket.take(2.0) == pytest.approx(1.0)  # an earlier time adds nothing
    assert bucket.take(4.0) == 0.0
