"""Backoff: how long to wait after each failure in a row. meshd's one implementation, for every user.

Users: retries (`service.retries.backoff`), failure accrual (`failureAccrual.backoff`, how long
an ejection lasts) and service discovery (Kubernetes re-list/re-watch, DNS refresh after a
failure). A backoff is a pure, endless sequence: `delays()` returns a fresh iterator of delays in
seconds, the first one for the first failure of a streak, the next for the next failure in a row;
a success ends the streak and the user asks for a fresh iterator the next time. Nothing here
reads a clock or sleeps, and all randomness comes from the `random.Random` given to the policy,
so a seeded generator gives the same delays every time.

Kinds (YAML `backoff: {kind: ...}`), one meaning each, for every user:

- `constant` (`ms`): the same delay every time (Finagle `Backoff.const`).
- `jittered` (`minMs`, `maxMs`): decorrelated jitter, Finagle `Backoff.decorrelatedJittered(min,
  max)`, which is what linkerd 1's `kind: jittered` builds (`io.buoyant.namer.BackoffConfig`)
  for retries and failure accrual alike. First `min`; then, from the current delay `cur`,
  `cur + rand[0, upper - cur)` with `upper = max if cur >= max // 3 else 3 * cur`; once a delay
  equals `max` it stays there. Every delay lies in [cur, 3 * cur), never decreases, never exceeds
  `max`.
- `exponential` (`startMs`, `maxMs`): equal jitter, Finagle `Backoff.equalJittered(start, max)`,
  linkerd's failure-accrual default (5 s, 300 s) and discovery's backoff. `start`, then for
  k = 1, 2, ...: `h = start * 2**(k-1)`, delay `h + rand[0, h)`, i.e. in [h, 2h); once a draw
  would reach `max`, `max` from then on.

Defaults differ per user and are set where each user registers its kinds: the config classes
below carry failure accrual's (`BACKOFFS` here), `meshd/retry/backoff.py` gives retries theirs
(`constant` 0 ms, `jittered` 10..1000 ms), and discovery builds its policy from its own keys.

Arithmetic is in integer nanoseconds, as in Finagle, so caps are exact; delays come out as float
seconds. Finagle pads failure accrual's stream with a constant 300 s once it runs out; these
streams never run out, so that padding never applies.
"""

from __future__ import annotations

import abc
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar, Final, Protocol

__all__ = [
    "BACKOFFS",
    "Backoff",
    "BackoffConfig",
    "ConstantBackoff",
    "ConstantBackoffConfig",
    "DecorrelatedJitteredBackoff",
    "EqualJitteredBackoff",
    "ExponentialBackoffConfig",
    "JitteredBackoffConfig",
    "NS_PER_MS",
    "secs_to_ns",
]

NS_PER_MS: Final = 1_000_000
_NS_PER_SEC: Final = 1e9
_MAX_SHIFT: Final = 62  # Finagle's MaxBitShift: past it, 2**k stops meaning anything


class Backoff(Protocol):
    """A backoff policy: makes the delay sequence of one failure streak."""

    def delays(self) -> Iterator[float]:
        """A new endless iterator of delays in seconds: the first is the wait after failure 1."""
        ...


def secs_to_ns(secs: float) -> int:
    """Seconds (a config value) -> whole nanoseconds, at least 1, for the policies' constructors."""
    return max(1, round(secs * _NS_PER_SEC))


# --- the policies ------------------------------------------------------------------------------


class ConstantBackoff:
    """The same delay every time."""

    __slots__ = ("_delay_secs",)

    def __init__(self, delay_ns: int) -> None:
        if delay_ns < 0:
            raise ValueError(f"delay must be >= 0, got {delay_ns} ns")
        self._delay_secs = delay_ns / _NS_PER_SEC

    def delays(self) -> Iterator[float]:
        return itertools.repeat(self._delay_secs)

    def __repr__(self) -> str:
        return f"ConstantBackoff({self._delay_secs:g}s)"


class _RangeBackoff:
    """A backoff between `start_ns` and `max_ns` that draws its jitter from `rng`."""

    __slots__ = ("_start_ns", "_max_ns", "_rng")

    def __init__(self, start_ns: int, max_ns: int, rng: random.Random) -> None:
        _check_bounds(start_ns, max_ns)
        self._start_ns = start_ns
        self._max_ns = max_ns
        self._rng = rng


class DecorrelatedJitteredBackoff(_RangeBackoff):
    """Finagle's `Backoff.decorrelatedJittered(start, maximum)` (finagle-core `Backoff.scala`)."""

    __slots__ = ()

    def delays(self) -> Iterator[float]:
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


class EqualJitteredBackoff(_RangeBackoff):
    """Finagle's `Backoff.equalJittered(start, maximum)`: half of each doubling kept, half jittered."""

    __slots__ = ()

    def delays(self) -> Iterator[float]:
        start, maximum, rng = self._start_ns, self._max_ns, self._rng
        if start == maximum:
            yield from itertools.repeat(maximum / _NS_PER_SEC)
            return
        yield start / _NS_PER_SEC
        attempt = 1
        while True:
            # Finagle's exact cap rule (integer division, shift capped at 62 bits).
            shift = 1 << min(_MAX_SHIFT, attempt - 1)
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


# --- the configs (YAML `backoff: {kind: ...}`) -------------------------------------------------


class BackoffConfig(abc.ABC):
    """Base of every backoff kind's config: `KIND` names it in YAML, `build` makes the policy."""

    __slots__ = ()
    KIND: ClassVar[str]

    @abc.abstractmethod
    def build(self, rng: random.Random) -> Backoff: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ConstantBackoffConfig(BackoffConfig):
    """`{kind: constant, ms: 5000}`: wait `ms` every time (failure accrual's default `ms`)."""

    KIND: ClassVar[str] = "constant"
    ms: int = 5000

    def __post_init__(self) -> None:
        if not _is_int(self.ms) or self.ms < 0:
            raise ValueError(f"ms: must be a whole number of milliseconds >= 0, got {self.ms!r}")

    def build(self, rng: random.Random) -> Backoff:
        return ConstantBackoff(self.ms * NS_PER_MS)


@dataclass(frozen=True, slots=True, kw_only=True)
class JitteredBackoffConfig(BackoffConfig):
    """`{kind: jittered, minMs: 5000, maxMs: 300000}`: decorrelated jitter (failure accrual's defaults)."""

    KIND: ClassVar[str] = "jittered"
    min_ms: int = 5000
    max_ms: int = 300_000

    def __post_init__(self) -> None:
        _check_config("minMs", self.min_ms, self.max_ms)

    def build(self, rng: random.Random) -> Backoff:
        return DecorrelatedJitteredBackoff(self.min_ms * NS_PER_MS, self.max_ms * NS_PER_MS, rng)


@dataclass(frozen=True, slots=True, kw_only=True)
class ExponentialBackoffConfig(BackoffConfig):
    """`{kind: exponential, startMs: 5000, maxMs: 300000}`: equal jitter; failure accrual's default."""

    KIND: ClassVar[str] = "exponential"
    start_ms: int = 5000
    max_ms: int = 300_000

    def __post_init__(self) -> None:
        _check_config("startMs", self.start_ms, self.max_ms)

    def build(self, rng: random.Random) -> Backoff:
        return EqualJitteredBackoff(self.start_ms * NS_PER_MS, self.max_ms * NS_PER_MS, rng)


BACKOFFS: Final[dict[str, type[BackoffConfig]]] = {
    "constant": ConstantBackoffConfig,
    "jittered": JitteredBackoffConfig,
    "exponential": ExponentialBackoffConfig,
}
"""Failure accrual's backoff kinds (`failureAccrual.backoff.kind`) -> config classes.

The default (no `backoff:` key) is `exponential` 5 s..300 s, linkerd's `FailureAccrualConfig`
default `Backoff.equalJittered(5.seconds, 300.seconds)`."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_config(start_name: str, start_ms: int, max_ms: int) -> None:
    if not _is_int(start_ms) or start_ms <= 0:
        raise ValueError(f"{start_name}: must be a whole number of milliseconds > 0, got {start_ms!r}")
    if not _is_int(max_ms) or max_ms < start_ms:
        raise ValueError(
            f"maxMs: must be a whole number of milliseconds >= {start_name} ({start_ms}), got {max_ms!r}"
        )


def _check_bounds(start_ns: int, max_ns: int) -> None:
    # Finagle: require(start > 0); require(maximum > 0); require(start <= maximum).
    if start_ns <= 0:
        raise ValueError(f"start must be > 0, got {start_ns} ns")
    if max_ns < start_ns:
        raise ValueError(f"maximum ({max_ns} ns) must be >= start ({start_ns} ns)")
