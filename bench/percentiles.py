"""The one rank rule every bench reports latencies with."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile: the smallest value that at least ``fraction`` of
    ``values`` are at or below (the median of an even count is the lower middle one); NaN
    for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(math.ceil(len(ordered) * fraction), 1)
    return ordered[rank - 1]
