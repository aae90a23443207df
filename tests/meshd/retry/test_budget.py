"""Retry budget: Finagle's formulas, the window bound, refill, and the two fixed budgets.

Time is whole milliseconds on a fake clock; the window has 10 slices of W = ttl_secs * 100 ms on a
fixed grid (slice k = [k*W, (k+1)*W)). A token added in slice k counts until the clock reaches
slice k + 10.

The bound proved here, with dep = 1000 (0 when percent is 0), w = int(1000 / percent) (1 when
percent is 0) and reserve = min_retries_per_sec * ttl_secs * w:

  (1) right after any granted retry, counting the D requests and R granted retries in the current
      window (the 10 slices ending with the current one):
          R * w <= D * dep + reserve,  i.e.  R <= min_retries_per_sec * ttl_secs + D * 1000 / w
      where 1000 / w is percent_can_retry rounded up by int() (exactly 0.2 for 0.2).
  (2) hence, for any 10 consecutive slices j-9..j, the retries granted in them are bounded by the
      requests in the 19 slices j-18..j:  R[j-9..j] <= min_retries_per_sec * ttl_secs + D[j-18..j] * 1000 / w.
      The extra 9 slices are the window's granularity: credit earned just before a window can be
      spent inside it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.retry.budget import (
    NO_RETRIES,
    UNLIMITED,
    RetryBudgetStatistics,
    TokenRetryBudget,
    no_retries,
    round_half_even,
    unlimited,
)
from meshd.retry.budget_config import RetryBudgetConfig
from tests.support.clock import FakeClock


def at_ms(ms: int) -> FakeClock:
    """The one fake clock (tests/support/clock.py), at a whole millisecond."""
    return FakeClock(start=ms / 1000)


def ms_of(clock: FakeClock) -> int:
    return round(clock.now() * 1000)


def set_ms(clock: FakeClock, ms: int) -> None:
    """Move the clock to a whole millisecond (as `ms / 1000`: no summed float error)."""
    clock.advance_to(ms / 1000)


def advance_ms(clock: FakeClock, ms: int) -> None:
    set_ms(clock, ms_of(clock) + ms)


def make_budget(clock: Callable[[], float], ttl_secs: int = 10, min_retries_per_sec: int = 10, percent: float = 0.2):
    return TokenRetryBudget(
        ttl_secs=ttl_secs, min_retries_per_sec=min_retries_per_sec, percent_can_retry=percent, clock=clock
    )


def drain(budget) -> int:
    """Withdraw until refused; return how many were granted."""
    granted = 0
    while budget.try_withdraw():
        granted += 1
        assert granted < 1_000_000, "budget never ran out"
    return granted


# --- Finagle's arithmetic -------------------------------------------------------------------------


def test_default_budget_costs_match_finagle():
    budget = make_budget(FakeClock(start=0.0))
    assert budget.deposit_amount == 1000
    assert budget.withdrawal_amount == 5000
    assert budget.reserve == 10 * 10 * 5000


def test_zero_percent_makes_deposits_worthless_and_retries_cost_one_token():
    budget = make_budget(FakeClock(start=0.0), min_retries_per_sec=3, percent=0.0)
    assert (budget.deposit_amount, budget.withdrawal_amount, budget.reserve) == (0, 1, 30)
    for _ in range(1000):
        budget.deposit()
    assert budget.balance == 30
    assert drain(budget) == 30


def test_fresh_budget_grants_the_floor_of_min_retries_times_ttl():
    budget = make_budget(at_ms(5_000))
    assert budget.balance == 100
    assert drain(budget) == 100
    assert budget.balance == 0


def test_every_five_requests_buy_one_retry_at_twenty_percent():
    budget = make_budget(FakeClock(start=0.0), min_retries_per_sec=0)
    assert drain(budget) == 0
    for _ in range(4):
        budget.deposit()
    assert not budget.try_withdraw()
    budget.deposit()
    assert budget.try_withdraw()
    assert not budget.try_withdraw()


def test_truncated_withdrawal_rounds_the_percentage_in_the_clients_favour():
    # int(1000 / 0.3) = 3333, so 3333 requests earn 1000 retries (30.003 %), not 999.
    budget = make_budget(FakeClock(start=0.0), min_retries_per_sec=0, percent=0.3)
    assert budget.withdrawal_amount == 3333
    for _ in range(3333):
        budget.deposit()
    assert drain(budget) == 1000


def test_finagle_range_allows_more_retries_than_requests_outside_config():
    # The working class accepts Finagle's 0..1000; only RetryBudgetConfig refuses > 1.
    budget = make_budget(FakeClock(start=0.0), min_retries_per_sec=0, percent=5.0)
    budget.deposit()
    assert drain(budget) == 5


def test_worked_example_from_docs():
    """docs/retries.md: defaults, 50 requests/s for 10 s, then an outage, then silence."""
    clock = at_ms(0)
    budget = make_budget(clock)
    for i in range(500):  # 50 rps for 10 s: t = 0.00, 0.02, ..., 9.98
        set_ms(clock, i * 20)
        budget.deposit()
    assert budget.balance == 200  # 20 % of 500 + 10/s * 10 s
    assert drain(budget) == 200
    assert budget.statistics().retries_refused == 1
    advance_ms(clock, 10_000)  # ten quiet seconds: the window has emptied
    assert budget.balance == 100


# --- window and refill ----------------------------------------------------------------------------


def test_withdrawal_is_forgotten_exactly_ten_slices_later():
    clock = at_ms(7_000)  # ttl 10 s: slices of 1 s, slice 7 starts here
    budget = make_budget(clock)
    assert drain(budget) == 100
    set_ms(clock, 16_999)  # still slice 16: slices 7..16 in the window
    assert budget.balance == 0
    set_ms(clock, 17_000)  # slice 17: slice 7 has left the window
    assert budget.balance == 100


def test_withdrawal_late_in_a_slice_is_forgotten_after_nine_and_a_bit_slices():
    clock = at_ms(7_999)  # last millisecond of slice 7
    budget = make_budget(clock)
    drain(budget)
    set_ms(clock, 17_000)  # 9.001 s later: a whole window of slices has passed
    assert budget.balance == 100


def test_deposits_expire_with_their_slice():
    clock = at_ms(0)
    budget = make_budget(clock, min_retries_per_sec=0)
    for _ in range(50):
        budget.deposit()
    assert budget.balance == 10
    set_ms(clock, 9_999)
    assert budget.balance == 10
    set_ms(clock, 10_000)
    assert budget.balance == 0


def test_balance_never_goes_negative_when_spent_credit_expires():
    clock = at_ms(0)
    budget = make_budget(clock, min_retries_per_sec=0)
    for _ in range(10):
        budget.deposit()
    set_ms(clock, 9_000)
    assert drain(budget) == 2
    set_ms(clock, 10_000)  # the deposits left, the withdrawals have not: tokens are negative
    assert budget.balance == 0
    for _ in range(10):
        budget.deposit()
    assert not budget.try_withdraw(), "new credit first pays back the debt"
    set_ms(clock, 19_000)
    assert budget.balance == 2


def test_clock_reading_is_rounded_to_the_millisecond_so_float_error_cannot_move_a_boundary():
    # 32.3 * 1000 == 32299.999999999996: truncating would put this reading in the previous slice.
    clock = at_ms(31_300)  # slice 313
    budget = make_budget(clock, ttl_secs=1)  # slices of 100 ms
    assert drain(budget) == 10
    set_ms(clock, 32_300)  # slice 323: slice 313 has just left the window
    assert budget.balance == 10


def test_clock_stepping_back_does_not_rewind_the_window():
    # (no Clock steps back, the fake one included: the budget's defence is tested with bare readings)
    readings = [20.0]
    budget = make_budget(lambda: readings[0])
    drain(budget)
    readings[0] = 5.0
    assert budget.balance == 0
    readings[0] = 30.0
    assert budget.balance == 100


# --- properties over any request pattern ----------------------------------------------------------

OPS = st.lists(
    st.tuples(
        st.one_of(st.integers(0, 50), st.integers(0, 3_000), st.integers(0, 70_000)),
        st.sampled_from(["deposit", "withdraw"]),
    ),
    max_size=250,
)
PERCENTS = st.one_of(
    st.sampled_from([0.0, 0.01, 0.05, 0.1, 0.2, 0.25, 0.3, 1 / 3, 0.5, 0.7, 1.0]),
    st.floats(0.0, 1.0),
)


@dataclass
class Model:
    """A plain restatement of the budget: every event kept with its slice; no ring, no running sum."""

    slice_ms: int
    deposit_amount: int
    withdrawal: int
    reserve: int
    events: list[tuple[int, str]] = field(default_factory=list)  # (slice, "deposit" | "retry")

    def window(self, now_slice: int) -> list[str]:
        return [kind for s, kind in self.events if now_slice - 10 < s <= now_slice]

    def tokens(self, now_slice: int) -> int:
        kinds = self.window(now_slice)
        return kinds.count("deposit") * self.deposit_amount - kinds.count("retry") * self.withdrawal


@settings(max_examples=200, deadline=None)
@given(
    ops=OPS,
    start_ms=st.integers(0, 10**9),
    ttl_secs=st.sampled_from([1, 2, 3, 7, 10, 60]),
    min_retries=st.integers(0, 20),
    percent=PERCENTS,
)
def test_budget_matches_model_and_never_exceeds_percent_plus_floor(
    ops, start_ms, ttl_secs, min_retries, percent
):
    clock = at_ms(start_ms)
    budget = make_budget(clock, ttl_secs=ttl_secs, min_retries_per_sec=min_retries, percent=percent)
    w, dep, reserve = budget.withdrawal_amount, budget.deposit_amount, budget.reserve
    slice_ms = ttl_secs * 100
    model = Model(slice_ms, dep, w, reserve)
    deposits = granted = refused = 0

    for advance, op in ops:
        advance_ms(clock, advance)
        now_slice = ms_of(clock) // slice_ms
        if op == "deposit":
            budget.deposit()
            model.events.append((now_slice, "deposit"))
            deposits += 1
            continue
        expected = model.tokens(now_slice) + reserve >= w
        assert budget.try_withdraw() is expected
        if not expected:
            refused += 1
            continue
        granted += 1
        model.events.append((now_slice, "retry"))
        kinds = model.window(now_slice)
        d, r = kinds.count("deposit"), kinds.count("retry")
        # (1): exact integer form, then the same in retries.
        assert r * w <= d * dep + reserve
        assert r <= min_retries * ttl_secs + d * dep / w + 1e-9
        if percent > 0:
            assert dep / w >= percent - 1e-12  # int() only ever rounds the percentage up...
            if 1000 / percent < 2**31 - 1:  # (below ~5e-7, w saturates at Int.MaxValue as in Scala)
                assert dep / w <= percent / (1 - percent / 1000) + 1e-12  # ...by at most 0.1 %

    # (2): any 10 consecutive slices, against the requests of the 19 slices ending with them.
    retry_slices = [s for s, kind in model.events if kind == "retry"]
    deposit_slices = [s for s, kind in model.events if kind == "deposit"]
    for j in set(retry_slices):
        r = sum(1 for s in retry_slices if j - 9 <= s <= j)
        d = sum(1 for s in deposit_slices if j - 18 <= s <= j)
        assert r * w <= d * dep + reserve

    assert budget.statistics() == RetryBudgetStatistics(
        deposits=deposits, retries_granted=granted, retries_refused=refused, balance=budget.balance
    )


@settings(max_examples=150, deadline=None)
@given(
    ops=OPS,
    start_ms=st.integers(0, 10**9),
    ttl_secs=st.sampled_from([1, 5, 10, 60]),
    min_retries=st.integers(0, 20),
    percent=PERCENTS,
)
def test_balance_is_what_try_withdraw_grants_now(ops, start_ms, ttl_secs, min_retries, percent):
    clock = at_ms(start_ms)
    budget = make_budget(clock, ttl_secs=ttl_secs, min_retries_per_sec=min_retries, percent=percent)
    for advance, op in ops:
        advance_ms(clock, advance)
        if op == "deposit":
            budget.deposit()
        else:
            budget.try_withdraw()
    balance = budget.balance
    assert balance >= 0 and balance == int(balance)
    assert drain(budget) == balance


@settings(max_examples=150, deadline=None)
@given(
    ops=OPS,
    start_ms=st.integers(0, 10**9),
    ttl_secs=st.sampled_from([1, 5, 10, 60]),
    min_retries=st.integers(0, 20),
    percent=PERCENTS,
)
def test_budget_refills_to_the_floor_one_ttl_after_the_last_request(
    ops, start_ms, ttl_secs, min_retries, percent
):
    clock = at_ms(start_ms)
    budget = make_budget(clock, ttl_secs=ttl_secs, min_retries_per_sec=min_retries, percent=percent)
    for advance, op in ops:
        advance_ms(clock, advance)
        if op == "deposit":
            budget.deposit()
        else:
            budget.try_withdraw()
    advance_ms(clock, ttl_secs * 1000)
    assert budget.balance == min_retries * ttl_secs
    assert drain(budget) == min_retries * ttl_secs


@given(st.lists(st.sampled_from(["deposit", "withdraw"]), max_size=200))
def test_no_retries_never_allows_and_unlimited_always_does(ops):
    refusing, granting = no_retries(), unlimited()
    for op in ops:
        if op == "deposit":
            refusing.deposit()
            granting.deposit()
        else:
            assert refusing.try_withdraw() is False
            assert granting.try_withdraw() is True
    assert refusing.balance == 0
    assert granting.balance == math.inf
    n_deposits, n_withdraws = ops.count("deposit"), ops.count("withdraw")
    assert refusing.statistics() == RetryBudgetStatistics(n_deposits, 0, n_withdraws, 0.0)
    assert granting.statistics() == RetryBudgetStatistics(n_deposits, n_withdraws, 0, math.inf)


def test_shared_fixed_budgets():
    NO_RETRIES.deposit()
    UNLIMITED.deposit()
    assert NO_RETRIES.try_withdraw() is False
    assert UNLIMITED.try_withdraw() is True
    assert repr(NO_RETRIES) == "NO_RETRIES" and repr(UNLIMITED) == "UNLIMITED"


# --- config ----------------------------------------------------------------------------------------


def test_config_defaults_are_finagles_and_build_a_working_budget():
    config = RetryBudgetConfig()
    assert (config.ttl_secs, config.min_retries_per_sec, config.percent_can_retry) == (10, 10, 0.2)
    budget = config.build(FakeClock(start=0.0))
    assert budget.balance == 100
    assert "percent_can_retry=0.2" in repr(budget)


def test_config_with_no_floor_and_no_percentage_builds_a_refusing_budget():
    budget = RetryBudgetConfig(min_retries_per_sec=0, percent_can_retry=0).build(FakeClock(start=0.0))
    for _ in range(100):
        budget.deposit()
    assert not budget.try_withdraw()
    assert budget.statistics().retries_refused == 1


def test_config_accepts_the_edges():
    RetryBudgetConfig(ttl_secs=1, min_retries_per_sec=0, percent_can_retry=1.0).build(FakeClock(start=0.0))
    RetryBudgetConfig(ttl_secs=60, min_retries_per_sec=0, percent_can_retry=1).build(FakeClock(start=0.0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ttl_secs": 0}, "ttlSecs"),
        ({"ttl_secs": 61}, "ttlSecs"),
        ({"ttl_secs": 1.5}, "ttlSecs"),
        ({"ttl_secs": True}, "ttlSecs"),
        ({"min_retries_per_sec": -1}, "minRetriesPerSec"),
        ({"min_retries_per_sec": 0.5}, "minRetriesPerSec"),
        ({"percent_can_retry": -0.1}, "percentCanRetry"),
        ({"percent_can_retry": 1.01}, "percentCanRetry"),
        ({"percent_can_retry": 20}, "above 1"),
        ({"percent_can_retry": math.nan}, "percentCanRetry"),
        ({"percent_can_retry": "0.2"}, "percentCanRetry"),
    ],
)
def test_config_rejects_bad_values_with_the_yaml_key_in_the_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RetryBudgetConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ttl_secs": 0},
        {"ttl_secs": 61},
        {"min_retries_per_sec": -1},
        {"percent_can_retry": -1.0},
        {"percent_can_retry": 1000.5},
    ],
)
def test_working_budget_enforces_finagles_requirements(kwargs):
    args = {"ttl_secs": 10, "min_retries_per_sec": 10, "percent_can_retry": 0.2} | kwargs
    with pytest.raises(ValueError):
        TokenRetryBudget(clock=FakeClock(start=0.0), **args)


@given(st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-10**6, 10**6).map(lambda n: n + 0.5)))
def test_round_half_even_is_the_builtin_round(x: float) -> None:
    assert round_half_even(x) == round(x)
