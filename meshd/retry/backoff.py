"""Retries' backoff kinds: the one implementation in `balancers/backoff.py`, with retries' defaults.

`service.retries.backoff: {kind: ...}` accepts the same kinds, with the same meaning, as failure
accrual's `backoff:` (see `balancers/backoff.py` and docs/retries.md, "Backoff"); only the
defaults of two kinds differ, because a retry waits milliseconds where an ejection lasts seconds:

- `jittered` (decorrelated jitter): `minMs` 10, `maxMs` 1000. meshd's default retry backoff.
- `constant`: `ms` 0, linkerd's default retry backoff (`Backoff.const(0)`, retry at once).
- `exponential` (equal jitter): `startMs` 5000, `maxMs` 300000, the same class as failure accrual's.

The retry stage asks for a fresh `delays()` iterator per request; schedules are endless, the retry
budget, `maxRetries` and the total timeout end the retrying.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from balancers.backoff import (
    Backoff,
    BackoffConfig,
    ConstantBackoffConfig,
    ExponentialBackoffConfig,
    JitteredBackoffConfig,
)

__all__ = [
    "BACKOFFS",
    "Backoff",
    "BackoffConfig",
    "ExponentialBackoffConfig",
    "RetryConstantBackoffConfig",
    "RetryJitteredBackoffConfig",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryConstantBackoffConfig(ConstantBackoffConfig):
    """`{kind: constant, ms: 0}`: wait `ms` before every retry (linkerd's default is 0)."""

    ms: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryJitteredBackoffConfig(JitteredBackoffConfig):
    """`{kind: jittered, minMs: 10, maxMs: 1000}`: decorrelated jitter; meshd's default retry backoff."""

    min_ms: int = 10
    max_ms: int = 1000


BACKOFFS: Final[dict[str, type[BackoffConfig]]] = {
    "constant": RetryConstantBackoffConfig,
    "jittered": RetryJitteredBackoffConfig,
    "exponential": ExponentialBackoffConfig,
}
"""Retry backoff kinds -> config classes. meshd's default is `jittered` (linkerd's was constant 0)."""
