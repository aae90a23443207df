"""Backoff schedules: how long to wait before each retry, as a fresh iterator of delays per request.

Kinds (YAML `service.retries.backoff: {kind: ...}`):

- `constant` (`ms`, default 0): the same delay every time. linkerd's default backoff is
  `Backoff.const(0)` (retry at once); meshd's default kind is `jittered` instead.
- `jittered` (`minMs` 10, `maxMs` 1000): Finagle's `Backoff.decorrelatedJittered(min, max)`.
  First `min`; then, from the current delay `cur`, `cur + rand[0, upper - cur)` where
  `upper = max if cur >= max // 3 else 3 * cur`; once a delay equals `max` it stays there.
  So every delay is in `[cur, 3 * cur)`, never decreases, and never exceeds `max`.
- `exponential` (`startMs` 5000, `maxMs` 300000): Finagle's `Backoff.equalJittered(start, max)`:
  `start`, then `start * 2**(k-1) + rand[0, start * 2**(k-1))` for k = 1, 2, ... until a value
  would reach `max`, after which it is `max` forever. linkerd uses it (with these defaults) for
  failure-accrual probing; it is offered here for such users.

Arithmetic is done in integer nanoseconds, as Finagle does, so caps are exact; delays come out as
float seconds. Schedules are infinite: the retry budget and the total timeout end the retrying.
Randomness comes only from the `random.Random` given to `build()`.
"""

from __future__ import annotations

import abc
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar, Final, Protocol

_NS_PER_MS: Final = 1_000_000
_NS_PER_SEC: Final = 1e9


class BackoffPolicy(Protocol):
    """Makes the delay schedule for one request."""

    def schedule(self) -> Iterator[float]:
        """A new infinite iterator of delays in seconds: the first is the wait before retry 1."""
        ...


class BackoffConfig(abc.ABC):
    """Base of every backoff kind's config: `KIND` names it in YAML, `build` makes the policy."""

    __slots__ = ()
    KIND: ClassVar[str]

    @abc.abstractmethod
    def build(self, rng: random.Random) -> BackoffPolicy: ...


class ConstantBackoff:
    """The same delay before every retry."""

    __slots__ = ("_delay_secs",)

    def __init__(self, delay_ns: int) -> None:
        if delay_ns < 0:
            raise ValueError(f"delay must be >= 0, got {delay_ns} ns")
        self._delay_secs = delay_ns / _NS_PER_SEC

    def schedule(self) -> Iterator[float]:
        return itertools.repeat(self._delay_secs)

    def __repr__(self) -> str:
        return f"ConstantBackoff({self._delay_secs:g}s)"


class DecorrelatedJitteredBackoff:
    """Finagle's `Backoff.decorrelatedJittered(start, maximum)` (finagle-core `Backoff.scala`)."""

    __slots__ = ("_start_ns", "_max_ns", "_rng")

    def __init__(self, start_ns: int, max_ns: int, rng: random.Random) -> None:
        _check_jitter_bounds(start_ns, max_ns)
        self._start_ns = start_ns
        self._max_ns = max_ns
        self._rng = rng

    def schedule(self) -> Iterator[float]:
        cur, maximum, rng = self._start_ns, self._max_ns, self._rng
        while cur != maximum:
            yield cur / _NS_PER_SEC
            # Finagle compares with maximum / 3 first, to avoid overflow; keep its exact rule.
            upper = maximum if cur >= maximum // 3 else cur * 3
            spread = upper - cur
            cur = cur if spread == 0 else cur + rng.randrange(spread)
        yield from itertools.repeat(maximum / _NS_PER_SEC)

    def __repr__(self) -> str:
        start, maximum = self._start_ns / _NS_PER_SEC, self._max_ns / _NS_PER_SEC
        return f"DecorrelatedJitteredBackoff(min={start:g}s, max={maximum:g}s)"


class EqualJitteredBackoff:
    """Finagle's `Backoff.equalJittered(start, maximum)`: half the exponential growth kept, half jittered."""

    __slots__ = ("_start_ns", "_max_ns", "_rng")

    def __init__(self, start_ns: int, max_ns: int, rng: random.Random) -> None:
        _check_jitter_bounds(start_ns, max_ns)
        self._start_ns = start_ns
        self._max_ns = max_ns
        self._rng = rng

    def schedule(self) -> Iterator[float]:
        start, maximum, rng = self._start_ns, self._max_ns, self._rng
        if start == maximum:
            yield from itertools.repeat(maximum / _NS_PER_SEC)
            return
        yield start / _NS_PER_SEC
        attempt = 1
        while True:
            # Finagle's exact cap rule (integer division, shift capped at 62 bits).
            shift = 1 << min(62, attempt - 1)
            half_exp = maximum if start >= maximum // shift else start * shift
            delay = half_exp + rng.randrange(half_exp)
            if half_exp == maximum or delay >= maximum:
                break
            yield delay / _NS_PER_SEC
            attempt += 1
        yield from itertools.repeat(maximum / _NS_PER_SEC)

    def __repr__(self) -> str:
        start, maximum = self._start_ns / _NS_PER_SEC, self._max_ns / _NS_PER_SEC
        return f"EqualJitteredBackoff(start={start:g}s, max={maximum:g}s)"


@dataclass(frozen=True, slots=True, kw_only=True)
class ConstantBackoffConfig(BackoffConfig):
    """`{kind: constant, ms: 0}`: wait `ms` before every retry (linkerd's default is 0)."""

    KIND: ClassVar[str] = "constant"
    ms: int = 0

    def __post_init__(self) -> None:
        if not _is_int(self.ms) or self.ms < 0:
            raise ValueError(f"ms: must be a whole number of milliseconds >= 0, got {self.ms!r}")

    def build(self, rng: random.Random) -> BackoffPolicy:
        return ConstantBackoff(self.ms * _NS_PER_MS)


@dataclass(frozen=True, slots=True, kw_only=True)
class JitteredBackoffConfig(BackoffConfig):
    """`{kind: jittered, minMs: 10, maxMs: 1000}`: decorrelated jitter; meshd's default backoff."""

    KIND: ClassVar[str] = "jittered"
    min_ms: int = 10
    max_ms: int = 1000

    def __post_init__(self) -> None:
        _check_jitter_config("minMs", self.min_ms, self.max_ms)

    def build(self, rng: random.Random) -> BackoffPolicy:
        return DecorrelatedJitteredBackoff(self.min_ms * _NS_PER_MS, self.max_ms * _NS_PER_MS, rng)


@dataclass(frozen=True, slots=True, kw_only=True)
class ExponentialBackoffConfig(BackoffConfig):
    """`{kind: exponential, startMs: 5000, maxMs: 300000}`: equal jitter (linkerd failure accrual's)."""

    KIND: ClassVar[str] = "exponential"
    start_ms: int = 5000
    max_ms: int = 300_000

    def __post_init__(self) -> None:
        _check_jitter_config("startMs", self.start_ms, self.max_ms)

    def build(self, rng: random.Random) -> BackoffPolicy:
        return EqualJitteredBackoff(self.start_ms * _NS_PER_MS, self.max_ms * _NS_PER_MS, rng)


BACKOFFS: Final[dict[str, type[BackoffConfig]]] = {
    "constant": ConstantBackoffConfig,
    "jittered": JitteredBackoffConfig,
    "exponential": ExponentialBackoffConfig,
}
"""Backoff kinds -> config classes. meshd's default is `jittered` (linkerd's was constant 0)."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_jitter_config(start_name: str, start_ms: int, max_ms: int) -> None:
    if not _is_int(start_ms) or start_ms <= 0:
        raise ValueError(f"{start_name}: must be a whole number of milliseconds > 0, got {start_ms!r}")
    if not _is_int(max_ms) or max_ms < start_ms:
        raise ValueError(
            f"maxMs: must be a whole number of milliseconds >= {start_name} ({start_ms}), got {max_ms!r}"
        )


def _check_jitter_bounds(start_ns: int, max_ns: int) -> None:
    # Finagle: require(start > 0); require(maximum > 0); require(start <= maximum).
    if start_ns <= 0:
        raise ValueError(f"start must be > 0, got {start_ns} ns")
    if max_ns < start_ns:
        raise ValueError(f"maximum ({max_ns} ns) must be >= start ({start_ns} ns)")
