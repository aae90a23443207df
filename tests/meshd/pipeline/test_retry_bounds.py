"""The retry loop's per-request bounds (`maxRetries`, `maxRequeues`), with the budget out of the way.

The next service is a fake that plays a script of outcomes (a status, or an error written or
not); sleeping is recorded, not done; the budget grants every retry, as the budget's floor of
`minRetriesPerSec` does for a request or two a second. Whatever the script, a request makes at
most 1 + maxRetries + maxRequeues attempts.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.config.model import RetriesConfig
from meshd.errors import AttemptTimeout, ConnectFailed, MeshdError, PoolExhausted, UpstreamFailed
from meshd.http.body import Body
from meshd.http.messages import Request, Response
from meshd.pipeline.context import RouteContext
from meshd.pipeline.retries import RetryCounters, retries_stage
from meshd.pipeline.timeouts import TimeoutCounters
from meshd.retry.backoff import RetryJitteredBackoffConfig
from meshd.retry.budget import RetryBudget, RetryBudgetStatistics
from meshd.retry.classifiers import RetryableIdempotent5XXConfig
from tests.support.clock import FakeClock

Outcome = int | str
#: error outcomes by name: (written, factory)
ERRORS = {
    "refused": lambda: ConnectFailed("connect to 127.0.0.1:1 failed: connection refused"),
    "pool_exhausted": lambda: PoolExhausted("connection pool for 127.0.0.1:1 exhausted"),
    "reset": lambda: UpstreamFailed("127.0.0.1:1 closed the connection before responding"),
    "attempt_timeout": lambda: AttemptTimeout("attempt to 127.0.0.1:1 exceeded requestAttemptTimeoutMs (5 ms)"),
}
WRITTEN = {"reset", "attempt_timeout"}


class GenerousBudget(RetryBudget):
    """Grants every retry."""

    def __init__(self) -> None:
        self.withdrawals = 0

    def deposit(self) -> None:
        pass

    def try_withdraw(self) -> bool:
        self.withdrawals += 1
        return True

    @property
    def balance(self) -> float:
        return 1e9

    def statistics(self) -> RetryBudgetStatistics:
        return RetryBudgetStatistics(0, self.withdrawals, 0, 1e9)


class Script:
    """The next service: plays `outcomes` in order, then answers 200 for ever."""

    def __init__(self, outcomes: list[Outcome]) -> None:
        self.outcomes = outcomes
        self.calls = 0

    async def __call__(self, ctx: RouteContext) -> Response:
        outcome = self.outcomes[self.calls] if self.calls < len(self.outcomes) else 200
        self.calls += 1
        if isinstance(outcome, str):
            raise ERRORS[outcome]()
        return Response(outcome, b"", [], Body.empty())


async def run(outcomes: list[Outcome], method: str, max_retries: int, max_requeues: int):
    counters = RetryCounters()
    budget = GenerousBudget()
    clock = FakeClock(autoadvance=True)  # the backoff sleeps pass at once, recorded in clock.slept
    stage = retries_stage(
        RetryableIdempotent5XXConfig().build(),
        budget,
        RetryJitteredBackoffConfig().build(random.Random(1)),
        counters,
        TimeoutCounters(),
        add_success_class=False,
        max_retries=max_retries,
        max_requeues=max_requeues,
        clock=clock,
    )
    script = Script(outcomes)
    ctx = RouteContext(Request(method, "/", "1.1", [], Body.empty()))
    result: Response | MeshdError
    try:
        result = await stage(script)(ctx)
    except MeshdError as exc:
        result = exc
    return script, ctx, counters, clock.slept, result


outcome = st.sampled_from([200, 404, 500, 503, "refused", "pool_exhausted", "reset", "attempt_timeout"])


@settings(max_examples=400, deadline=None)
@given(
    outcomes=st.lists(outcome, max_size=40),
    method=st.sampled_from(["GET", "PUT", "POST"]),
    max_retries=st.integers(0, 5),
    max_requeues=st.integers(0, 12),
)
def test_attempts_never_exceed_one_plus_both_bounds(outcomes, method, max_retries, max_requeues):
    script, ctx, counters, slept, result = asyncio.run(run(outcomes, method, max_retries, max_requeues))
    assert script.calls == ctx.attempts
    assert ctx.attempts <= 1 + max_retries + max_requeues
    assert counters.response + counters.error <= max_retries
    assert counters.requeue <= max_requeues
    assert ctx.attempts == 1 + counters.response + counters.error + counters.requeue
    assert len(slept) <= ctx.attempts - 1
    # replay the script to know how the request ended, and check the loop stopped for that reason
    played = [script.outcomes[i] if i < len(script.outcomes) else 200 for i in range(script.calls)]
    last = played[-1]
    idempotent = method != "POST"
    last_retryable = (
        (isinstance(last, int) and last >= 500 and idempotent)
        or last in ("refused", "pool_exhausted")
        or (last in WRITTEN and idempotent)
    )
    assert counters.limit == (1 if last_retryable else 0)  # a retryable failure ends only at a bound
    if isinstance(last, str):
        assert isinstance(result, MeshdError)
        if last_retryable:
            bound = "maxRequeues" if last in ("refused", "pool_exhausted") else "maxRetries"
            n = ctx.attempts
            assert result.l5d_err.endswith(
                f"; gave up after {n} attempt{'s' if n != 1 else ''} "
                f"({bound} {max_requeues if bound == 'maxRequeues' else max_retries})"
            )
    else:
        assert isinstance(result, Response) and result.status == last
        assert "l5d-err" not in {name.decode().lower() for name, _ in result.headers}


def test_the_defaults_give_three_attempts_after_writing_and_eleven_before():
    defaults = RetriesConfig()
    assert (defaults.max_retries, defaults.max_requeues) == (2, 10)
    script, ctx, counters, _, result = asyncio.run(run([503] * 50, "GET", 2, 10))
    assert script.calls == 3 and counters.response == 2 and counters.limit == 1
    assert isinstance(result, Response) and result.status == 503
    script, ctx, counters, _, result = asyncio.run(run(["refused"] * 50, "POST", 2, 10))
    assert script.calls == 11 and counters.requeue == 10 and counters.limit == 1
    assert isinstance(result, ConnectFailed)
    assert result.l5d_err == (
        "connect to 127.0.0.1:1 failed: connection refused; gave up after 11 attempts (maxRequeues 10)"
    )
    assert str(result) == result.l5d_err


@pytest.mark.parametrize(("outcomes", "calls"), [(["refused", "refused", 503, 503, 503], 5), ([503, "refused", 503, "refused", "reset"], 5)])
def test_requeues_and_retries_are_counted_apart(outcomes, calls):
    script, ctx, counters, _, result = asyncio.run(run(outcomes, "GET", 2, 2))
    assert script.calls == calls
    assert counters.limit == 1
