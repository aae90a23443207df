"""How long failure accrual keeps an endpoint ejected: equal-jittered exponential or constant.

A backoff is a fresh, endless stream of delays in seconds per ejection streak: the first
ejection uses the first delay, each failed probe the next one, and a revival starts a new
stream. Kinds (YAML `backoff: {kind: ...}`):

- `jittered` (Finagle `Backoff.equalJittered(start, maximum)`, linkerd's failure-accrual
  default with 5 s and 300 s, `FailureAccrualConfig.scala`): `start` first, then for
  k = 1, 2, ...: `h = start * 2**(k-1)`, delay `min(maximum, h + uniform[0, h))`, i.e.
  5 s, [5, 10), [10, 20), [20, 40), ... up to 300 s, where it stays.
- `constant`: the same delay every time.

Finagle pads every accrual stream with a constant 300 s once it runs out; both streams here
are endless, so that padding never applies.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar, Final, Protocol

__all__ = [
    "Backoff",
    "BackoffConfig",
    "ConstantBackoff",
    "ConstantBackoffConfig",
    "EqualJitteredBackoff",
    "EqualJitteredBackoffConfig",
]

_MAX_SHIFT: Final = 62  # Finagle's MaxBitShift: past it, 2**k stops meaning anything


class Backoff(Protocol):
    def delays(self) -> Iterator[float]:
        """A new endless stream of delays, in seconds, for one ejection streak."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class EqualJitteredBackoffConfig:
    """Exponential backoff keeping half of each step fixed and jittering the other half."""

    KIND: ClassVar[str] = "jittered"

    min_ms: int = 5000
    max_ms: int = 300000

    def __post_init__(self) -> None:
        if self.min_ms <= 0:
            raise ValueError("minMs must be positive")
        if self.max_ms < self.min_ms:
            raise ValueError("maxMs must not be below minMs")

    def build(self, rng: random.Random) -> EqualJitteredBackoff:
        return EqualJitteredBackoff(self.min_ms / 1000.0, self.max_ms / 1000.0, rng)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConstantBackoffConfig:
    """The same ejection time after every failure streak and failed probe."""

    KIND: ClassVar[str] = "constant"

    ms: int = 5000

    def __post_init__(self) -> None:
        if self.ms < 0:
            raise ValueError("ms must not be negative")

    def build(self, rng: random.Random) -> ConstantBackoff:
        return ConstantBackoff(self.ms / 1000.0)


BackoffConfig = EqualJitteredBackoffConfig | ConstantBackoffConfig

#: accrual backoff kinds -> config classes (`failureAccrual.backoff.kind`)
BACKOFFS: Final[dict[str, type[EqualJitteredBackoffConfig] | type[ConstantBackoffConfig]]] = {
    "jittered": EqualJitteredBackoffConfig,
    "constant": ConstantBackoffConfig,
}


class EqualJitteredBackoff:
    __slots__ = ("_start", "_maximum", "_rng")

    def __init__(self, start_s: float, maximum_s: float, rng: random.Random) -> None:
        self._start = start_s
        self._maximum = maximum_s
        self._rng = rng

    def delays(self) -> Iterator[float]:
        start, maximum, rng = self._start, self._maximum, self._rng
        yield start
        attempt = 1
        while True:
            half = start * (1 << min(attempt - 1, _MAX_SHIFT))
            if half >= maximum:
                break
            yield min(maximum, half + rng.random() * half)
            attempt += 1
        while True:
            yield maximum

    def __repr__(self) -> str:
        return f"EqualJitteredBackoff(start={self._start}s, maximum={self._maximum}s)"


class ConstantBackoff:
    __slots__ = ("_delay",)

    def __init__(self, delay_s: float) -> None:
        self._delay = delay_s

    def delays(self) -> Iterator[float]:
        delay = self._delay
        while True:
            yield delay

    def __repr__(self) -> str:
        return f"ConstantBackoff({self._delay}s)"
