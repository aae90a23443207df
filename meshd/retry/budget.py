"""Retry budget: bounds retries to a share of recent requests plus a small floor (Finagle's RetryBudget).

How this works (Finagle 21.4.0 `RetryBudget.scala` + `TokenBucket.newLeakyBucket`, see
docs/retries.md): a leaky token bucket over a sliding window of `ttl_secs`, cut into 10 slices.

- Every original request deposits `DEPOSIT` (1000) tokens; every retry must withdraw
  `withdrawal = int(1000 / percent_can_retry)` tokens (5000 for 0.2, so five requests pay for one
  retry). With `percent_can_retry == 0`, deposits are worth nothing and a retry costs 1 token.
- Tokens live in the window: a deposit or withdrawal made in slice k stops counting when the
  window reaches slice k + 10, i.e. between 0.9 and 1.0 x ttl later.
- On top of the window sum there is a fixed `reserve = min_retries_per_sec * ttl_secs * withdrawal`,
  so a client with little traffic still gets `min_retries_per_sec * ttl_secs` retries per window.
- `try_withdraw()` succeeds iff `window_sum + reserve >= withdrawal`, and then subtracts `withdrawal`.

Invariant this guarantees (tested in tests/meshd/retry/test_budget.py): right after any granted
retry, with D deposits and R granted retries in the current 10-slice window,
`R * withdrawal <= D * deposit + reserve`, i.e. `R <= min_retries_per_sec * ttl_secs + D * 1000 / withdrawal`.

One deliberate difference from Finagle: Finagle's WindowedAdder restarts its slice timer whenever
it rotates, so a slice can stretch to almost two slice-widths and a token can outlive the ttl by up
to ~2x. meshd aligns slices on a fixed grid of the injected clock (slice k covers
[k*W, (k+1)*W) with W = ttl/10), so the window is exactly 10 slices and the budget is fully
refilled ttl after the last request. Time is read in whole milliseconds, as Finagle does.

Not thread-safe and needs no lock: meshd runs one event loop per worker process.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from mypy_extensions import mypyc_attr

SCALE_FACTOR: Final = 1000
"""Finagle's `TokenRetryBudget.ScaleFactor`: a deposit is worth this many tokens."""

SLICES: Final = 10
"""Slices in the sliding window (Finagle's `TokenBucket.newLeakyBucket` uses 10)."""

MIN_TTL_SECS: Final = 1
MAX_TTL_SECS: Final = 60
MAX_PERCENT_CAN_RETRY: Final = float(SCALE_FACTOR)
_SCALA_INT_MAX: Final = (1 << 31) - 1


@dataclass(frozen=True, slots=True)
class RetryBudgetStatistics:
    """Counts since the budget was made, plus the retries available now."""

    deposits: int
    retries_granted: int
    retries_refused: int
    balance: float


@mypyc_attr(allow_interpreted_subclasses=True)
class RetryBudget:
    """What the retry stage needs from a budget: three verbs and a snapshot.

    `deposit()` once per original request (never for a retry); `try_withdraw()` once before each
    retry, which must not be sent when it returns False; `balance` is the number of retries the
    budget would grant right now, for the `meshd_retry_budget_balance` gauge.

    A base class rather than a `Protocol`: the compiled fast path deposits through mypyc's vtable
    (a C call), not a Python method lookup, on every request.
    """

    __slots__ = ()

    def deposit(self) -> None:
        raise NotImplementedError

    def try_withdraw(self) -> bool:
        raise NotImplementedError

    @property
    def balance(self) -> float:
        raise NotImplementedError

    def statistics(self) -> RetryBudgetStatistics:
        raise NotImplementedError


class TokenRetryBudget(RetryBudget):
    """The working budget; build it with `RetryBudgetConfig.build(clock)`.

    Accepts Finagle's full ranges (ttl 1..60 s, percent 0..1000); the config class is stricter.
    `clock` returns monotonic seconds.
    """

    __slots__ = (
        "_ttl_secs",
        "_min_retries_per_sec",
        "_percent_can_retry",
        "_deposit_amount",
        "_withdrawal_amount",
        "_reserve",
        "_window",
        "_deposits",
        "_granted",
        "_refused",
    )

    def __init__(
        self,
        *,
        ttl_secs: int,
        min_retries_per_sec: int,
        percent_can_retry: float,
        clock: Callable[[], float],
    ) -> None:
        if not MIN_TTL_SECS <= ttl_secs <= MAX_TTL_SECS:
            raise ValueError(f"ttl must be between {MIN_TTL_SECS} and {MAX_TTL_SECS} seconds, got {ttl_secs}")
        if min_retries_per_sec < 0:
            raise ValueError(f"minRetriesPerSec must be >= 0, got {min_retries_per_sec}")
        if not 0.0 <= percent_can_retry <= MAX_PERCENT_CAN_RETRY:
            raise ValueError(
                f"percentCanRetry must be between 0 and {MAX_PERCENT_CAN_RETRY:g}, got {percent_can_retry}"
            )
        self._ttl_secs = ttl_secs
        self._min_retries_per_sec = min_retries_per_sec
        self._percent_can_retry = percent_can_retry
        # Finagle: with only a floor, deposits earn nothing and every retry costs one token,
        # so all credit comes from the reserve.
        self._deposit_amount = 0 if percent_can_retry == 0.0 else SCALE_FACTOR
        self._withdrawal_amount = 1 if percent_can_retry == 0.0 else _to_int(SCALE_FACTOR / percent_can_retry)
        self._reserve = min_retries_per_sec * ttl_secs * self._withdrawal_amount
        self._window = _WindowedSum(slice_ms=ttl_secs * 1000 // SLICES, clock=clock)
        self._deposits = 0
        self._granted = 0
        self._refused = 0

    @property
    def withdrawal_amount(self) -> int:
        """Tokens one retry costs (`int(1000 / percent)`, or 1 when percent is 0)."""
        return self._withdrawal_amount

    @property
    def deposit_amount(self) -> int:
        """Tokens one request earns (1000, or 0 when percent is 0)."""
        return self._deposit_amount

    @property
    def reserve(self) -> int:
        """Tokens always available on top of the window: `min_retries_per_sec * ttl * withdrawal`."""
        return self._reserve

    def deposit(self) -> None:
        self._deposits += 1
        self._window.add(self._deposit_amount)

    def try_withdraw(self) -> bool:
        # Read and debit with no await in between: the check cannot go stale.
        if self._window.sum() + self._reserve >= self._withdrawal_amount:
            self._window.add(-self._withdrawal_amount)
            self._granted += 1
            return True
        self._refused += 1
        return False

    @property
    def balance(self) -> float:
        """Retries `try_withdraw()` would grant now with no further deposits (never negative).

        Whole retries, as Finagle's `balance` (integer division); a float only for the gauge.
        """
        count = self._window.sum() + self._reserve
        return float(max(0, count // self._withdrawal_amount))

    def statistics(self) -> RetryBudgetStatistics:
        return RetryBudgetStatistics(
            deposits=self._deposits,
            retries_granted=self._granted,
            retries_refused=self._refused,
            balance=self.balance,
        )

    def __repr__(self) -> str:
        return (
            f"TokenRetryBudget(ttl_secs={self._ttl_secs}, min_retries_per_sec={self._min_retries_per_sec}, "
            f"percent_can_retry={self._percent_can_retry}, balance={self.balance:g}, "
            f"granted={self._granted}, refused={self._refused})"
        )


class _NoRetries(RetryBudget):
    """Finagle's `RetryBudget.Empty`: never grants a retry."""

    __slots__ = ("_deposits", "_refused")

    def __init__(self) -> None:
        self._deposits = 0
        self._refused = 0

    def deposit(self) -> None:
        self._deposits += 1

    def try_withdraw(self) -> bool:
        self._refused += 1
        return False

    @property
    def balance(self) -> float:
        return 0.0

    def statistics(self) -> RetryBudgetStatistics:
        return RetryBudgetStatistics(
            deposits=self._deposits, retries_granted=0, retries_refused=self._refused, balance=0.0
        )

    def __repr__(self) -> str:
        return "NO_RETRIES"


class _Unlimited(RetryBudget):
    """Finagle's `RetryBudget.Infinite`: always grants. For tests; config never builds it."""

    __slots__ = ("_deposits", "_granted")

    def __init__(self) -> None:
        self._deposits = 0
        self._granted = 0

    def deposit(self) -> None:
        self._deposits += 1

    def try_withdraw(self) -> bool:
        self._granted += 1
        return True

    @property
    def balance(self) -> float:
        return math.inf

    def statistics(self) -> RetryBudgetStatistics:
        return RetryBudgetStatistics(
            deposits=self._deposits, retries_granted=self._granted, retries_refused=0, balance=math.inf
        )

    def __repr__(self) -> str:
        return "UNLIMITED"


NO_RETRIES: Final[RetryBudget] = _NoRetries()
"""Shared budget that refuses every retry. Its statistics are process-wide, so make a fresh
`no_retries()` where the counts matter."""

UNLIMITED: Final[RetryBudget] = _Unlimited()
"""Shared budget that grants every retry (tests). Its balance is +inf."""


def no_retries() -> RetryBudget:
    """A fresh refusing budget with its own statistics (what `RetryBudgetConfig.build` returns
    when both minRetriesPerSec and percentCanRetry are 0)."""
    return _NoRetries()


def unlimited() -> RetryBudget:
    """A fresh always-granting budget with its own statistics."""
    return _Unlimited()


def _to_int(value: float) -> int:
    """Scala's `Double.toInt`: truncate, saturating at Int.MaxValue (a tiny percent costs that much)."""
    return _SCALA_INT_MAX if value >= _SCALA_INT_MAX else int(value)


class _WindowedSum:
    """Sum of the values added in the last `SLICES` slices of `slice_ms` each, slices on a fixed grid.

    A ring of per-slice sums plus a running total; moving to a newer slice clears the slots that
    fell out of the window. O(1) per call (at most SLICES slots cleared per jump).
    """

    __slots__ = ("_slice_ms", "_clock", "_slots", "_head", "_total")

    def __init__(self, *, slice_ms: int, clock: Callable[[], float]) -> None:
        self._slice_ms = slice_ms
        self._clock = clock
        self._slots = [0] * SLICES
        self._head = self._current_slice()
        self._total = 0

    def add(self, value: int) -> None:
        self._advance()
        self._slots[self._head % SLICES] += value
        self._total += value

    def sum(self) -> int:
        self._advance()
        return self._total

    def _current_slice(self) -> int:
        return round_half_even(self._clock() * 1000.0) // self._slice_ms

    def _advance(self) -> None:
        now = self._current_slice()
        steps = now - self._head
        if steps <= 0:  # same slice, or a clock that stepped back: never rewind the window
            return
        if steps >= SLICES:
            self._slots = [0] * SLICES
            self._total = 0
        else:
            slots = self._slots
            for k in range(self._head + 1, now + 1):
                i = k % SLICES
                self._total -= slots[i]
                slots[i] = 0
        self._head = now


def round_half_even(x: float) -> int:
    """`round(x)` for a finite float, as native arithmetic: compiled, the builtin is a module
    attribute lookup and a generic call on every request (the budget reads the clock per deposit).
    Exact: `x - int(x)` is the exact fractional part of any finite float."""
    n = int(x)
    frac = x - n
    if frac > 0.5 or (frac == 0.5 and n & 1):
        return n + 1
    if frac < -0.5 or (frac == -0.5 and n & 1):
        return n - 1
    return n
