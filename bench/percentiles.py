"""Percentiles by the nearest-rank definition, and latency summaries built from them.

Definition (nearest rank): for n samples sorted ascending, x[1] <= ... <= x[n], and 0 < p <= 100, the
p-th percentile is x[k] with k = ceil(p/100 * n): the smallest sample such that at least p% of all
samples are less than or equal to it. p = 0 gives x[1], the minimum; p = 100 gives x[n], the maximum.
It never interpolates, so every reported latency is one that a request actually saw, and
with fewer than 1/(1 - p/100) samples the percentile is simply the maximum (p99.999 of 60,000
requests is the slowest one), which the reports say rather than invent precision.

`k` is computed with exact rational arithmetic from the decimal form of p, so that p = 99.9 over 1,000
samples gives k = 999 and not 1,000 through binary rounding.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from fractions import Fraction
from typing import Final

from bench.results import LatencyStats

STANDARD_PERCENTILES: Final[tuple[float, ...]] = (50.0, 90.0, 99.0, 99.9, 99.99, 99.999)

# Points for percentile curves: 0%, then 1 - 10^-x for x in 0.1 steps up to 99.999%.
CURVE_PERCENTILES: Final[tuple[float, ...]] = (0.0,) + tuple(
    round(100.0 * (1.0 - 10.0 ** (-step / 10.0)), 6) for step in range(1, 51)
)


def rank(p: float, n: int) -> int:
    """The 1-based nearest rank of percentile `p` among `n` samples."""
    if not 0.0 <= p <= 100.0:
        raise ValueError(f"percentile must be between 0 and 100, got {p}")
    if n <= 0:
        raise ValueError("no samples")
    k = math.ceil(Fraction(repr(p)) * n / 100)
    return max(1, k)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The nearest-rank percentile of values already sorted ascending."""
    return sorted_values[rank(p, len(sorted_values)) - 1]


def percentiles(values: Iterable[float], ps: Sequence[float]) -> dict[float, float]:
    ordered = sorted(values)
    return {p: percentile(ordered, p) for p in ps}


def key(p: float) -> str:
    """The name of a percentile in results and tables: 50 -> "50", 99.9 -> "99.9"."""
    return f"{p:g}"


def summarize(latencies_secs: Iterable[float], ps: Sequence[float] = STANDARD_PERCENTILES) -> LatencyStats:
    """Reduce latencies (seconds) to a `LatencyStats` in milliseconds; an empty input gives count 0."""
    ordered = sorted(latencies_secs)
    if not ordered:
        return LatencyStats(count=0, mean_ms=0.0, max_ms=0.0, percentiles_ms={})
    to_ms = 1000.0
    return LatencyStats(
        count=len(ordered),
        mean_ms=math.fsum(ordered) / len(ordered) * to_ms,
        max_ms=ordered[-1] * to_ms,
        percentiles_ms={key(p): percentile(ordered, p) * to_ms for p in ps},
        curve=tuple((p, percentile(ordered, p) * to_ms) for p in CURVE_PERCENTILES),
    )
