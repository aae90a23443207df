"""Failure accrual policies: when a run of failures should eject an endpoint, and for how long.

A policy is per node and only counts; the state machine that uses it lives in `node.py`:

    live --policy says eject (delay d)--> ejected until now+d --clock passes it--> probing
    probing --one request admitted--> (probe in flight) --success--> live (policy.revived())
                                                        --failure--> ejected (next backoff)

Policies, as Finagle 21.4.0 `liveness/FailureAccrualPolicy.scala` defines them:

- `consecutiveFailures` (linkerd's default, 5 failures, `exponential` (equal-jittered)
  5 s..300 s backoff, `FailureAccrualConfig.defaultPolicy`): count failures, a success resets
  the count, eject when the count reaches `failures`.
- `successRate` (linkerd `io.l5d.successRate {successRate, requests}`): an `Ema` over the
  request count (stamp = requests seen, window = `requests`) of 1 per success and 0 per
  failure; a failure ejects once at least `requests` requests were seen and the average is
  below `success_rate`.
- `none`: never ejects.

Every ejection streak takes its delays from a fresh backoff stream (see `backoff.py`):
the first ejection uses the first delay, each failed probe the next, a revival resets it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from mypy_extensions import mypyc_attr

from balancers.backoff import Backoff
from balancers.ewma import Ema

__all__ = [
    "AccrualPolicy",
    "AccrualPolicyFactory",
    "ConsecutiveFailures",
    "NoAccrual",
    "SuccessRate",
]


@mypyc_attr(allow_interpreted_subclasses=True)
class AccrualPolicy:
    """Per-node failure bookkeeping. Durations are seconds.

    A base class rather than a `Protocol`: the compiled node calls `record_success` on every
    request's end, through mypyc's vtable (a C call) instead of a Python method lookup."""

    __slots__ = ()

    def record_success(self) -> None:
        raise NotImplementedError

    def record_failure(self) -> float | None:
        """Count a failure of a live node; return how long to eject it for, or None to keep it."""
        raise NotImplementedError

    def next_backoff(self) -> float:
        """The ejection time after a failed probe: the next delay of the current streak."""
        raise NotImplementedError

    def revived(self) -> None:
        """A probe succeeded: forget the failure history and restart the backoff stream."""
        raise NotImplementedError


AccrualPolicyFactory = Callable[[], AccrualPolicy]
"""Makes a fresh policy for each new node."""




class _Streak:
    """The backoff stream of the current ejection streak."""

    __slots__ = ("_backoff", "_delays")

    def __init__(self, backoff: Backoff) -> None:
        self._backoff = backoff
        self._delays: Iterator[float] = backoff.delays()

    def next(self) -> float:
        return next(self._delays)

    def reset(self) -> None:
        self._delays = self._backoff.delays()


class ConsecutiveFailures(AccrualPolicy):
    __slots__ = ("_failures", "_count", "_streak")

    def __init__(self, failures: int, backoff: Backoff) -> None:
        self._failures = failures
        self._count = 0
        self._streak = _Streak(backoff)

    def record_success(self) -> None:
        self._count = 0

    def record_failure(self) -> float | None:
        self._count += 1
        if self._count >= self._failures:
            return self._streak.next()
        return None

    def next_backoff(self) -> float:
        return self._streak.next()

    def revived(self) -> None:
        self._count = 0
        self._streak.reset()

    def __repr__(self) -> str:
        return f"ConsecutiveFailures({self._count}/{self._failures})"


class SuccessRate(AccrualPolicy):
    __slots__ = ("_required", "_window", "_requests", "_ema", "_streak")

    def __init__(self, success_rate: float, requests: int, backoff: Backoff) -> None:
        self._required = success_rate
        self._window = requests
        self._requests = 0
        self._ema = Ema(requests)
        self._streak = _Streak(backoff)

    @property
    def success_rate(self) -> float:
        return self._ema.value

    def record_success(self) -> None:
        self._requests += 1
        self._ema.update(self._requests, 1.0)

    def record_failure(self) -> float | None:
        self._requests += 1
        rate = self._ema.update(self._requests, 0.0)
        if self._requests >= self._window and rate < self._required:
            return self._streak.next()
        return None

    def next_backoff(self) -> float:
        return self._streak.next()

    def revived(self) -> None:
        self._requests = 0
        self._ema.reset()
        self._streak.reset()

    def __repr__(self) -> str:
        return f"SuccessRate({self._ema.value:.3f} over {self._requests}, needs {self._required})"


class NoAccrual(AccrualPolicy):
    """Never ejects: every node stays live whatever it answers."""

    __slots__ = ()

    def record_success(self) -> None:
        pass

    def record_failure(self) -> float | None:
        return None

    def next_backoff(self) -> float:
        return 0.0

    def revived(self) -> None:
        pass
