"""`service.retries.budget` in YAML: the retry budget's config.

It lives apart from the budget itself because `budget.py` is compiled with mypyc (every request
deposits into the budget) and this is not: the config loader reads its dataclass fields, and its
checks must see whatever the YAML held (a compiled class would check types before
`__post_init__` could say which key is wrong).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from meshd.retry.budget import MAX_TTL_SECS, MIN_TTL_SECS, RetryBudget, TokenRetryBudget, no_retries

__all__ = ["RetryBudgetConfig"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryBudgetConfig:
    """`service.retries.budget` in YAML: `{ttlSecs, minRetriesPerSec, percentCanRetry}`.

    Defaults are Finagle's and linkerd's. meshd is stricter than Finagle on one point:
    percentCanRetry above 1 is an error, not "more retries than requests" (see docs/retries.md).
    """

    ttl_secs: int = 10
    min_retries_per_sec: int = 10
    percent_can_retry: float = 0.2

    def __post_init__(self) -> None:
        if not _is_int(self.ttl_secs) or not MIN_TTL_SECS <= self.ttl_secs <= MAX_TTL_SECS:
            raise ValueError(
                f"ttlSecs: must be a whole number between {MIN_TTL_SECS} and {MAX_TTL_SECS}, "
                f"got {self.ttl_secs!r}"
            )
        if not _is_int(self.min_retries_per_sec) or self.min_retries_per_sec < 0:
            raise ValueError(
                f"minRetriesPerSec: must be a whole number >= 0, got {self.min_retries_per_sec!r}"
            )
        percent = self.percent_can_retry
        if isinstance(percent, bool) or not isinstance(percent, int | float) or not 0.0 <= percent <= 1.0:
            raise ValueError(
                f"percentCanRetry: must be between 0 and 1 (a fraction: 0.2 means 20% of requests), "
                f"got {percent!r}; meshd refuses values above 1, which Finagle would accept, because they "
                f"let retries outnumber requests"
            )

    def build(self, clock: Callable[[], float]) -> RetryBudget:
        """The working budget; `clock` returns monotonic seconds (pass `runtime.clock.now`)."""
        if self.min_retries_per_sec == 0 and self.percent_can_retry == 0:
            return no_retries()
        return TokenRetryBudget(
            ttl_secs=self.ttl_secs,
            min_retries_per_sec=self.min_retries_per_sec,
            percent_can_retry=float(self.percent_can_retry),
            clock=clock,
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
