"""Timeouts and deadlines in the running proxy: totalTimeoutMs, requestAttemptTimeoutMs, l5d-ctx-deadline.

Slow replicas are simulated inside the upstream handlers (an event that is never set, or a sleep
on the test's clock); the test body never sleeps. Most tests run meshd on the fake clock
(`make_mesh(clock=FakeClock(start=0.0))`, real sockets): a limit is asserted at its instant
exactly, nothing at `limit - 1/1024` s, the timeout at `limit`. One real-clock test per behaviour
stays as a smoke test of the production timers (`..._smoke`: the total timeout, the attempt
timeout, the caller's deadline); those measure the moment with the monotonic clock around the
request against a tolerant window: never earlier than the limit (less the event loop's
millisecond rounding), and not much later than it.
"""

from __future__ import annotations

import asyncio
import time

from meshd.expiry import Expiry
from meshd.pipeline.timeouts import TimeoutCounters
from meshd.retry.deadline import Deadline, format_deadline, parse_deadline
from routing.path import Path
from tests.integration.test_retries import NO_BACKOFF, metric, scrape
from tests.support.client import RawConnection, RawResponse
from tests.support.clock import FakeClock
from tests.support.upstreams import Handler, Received, Reply
from tests.support.waiting import wait_until

EARLY = 0.005  # the event loop rounds timers to the millisecond
LATE = 0.5  # generous: two cores shared with other test runs


def hangs() -> Handler:
    """A handler that never answers (the pending handler is cancelled when the test's loop closes)."""
    never = asyncio.Event()

    async def handler(req: Received) -> Reply:
        await never.wait()
        return Reply(200, [], b"ok")

    return handler


def hangs_first(n: int) -> Handler:
    """A handler that never answers its first `n` requests and answers the rest at once."""
    never = asyncio.Event()
    seen = [0]

    async def handler(req: Received) -> Reply:
        seen[0] += 1
        if seen[0] <= n:
            await never.wait()
        return Reply(200, [], b"ok")

    return handler


async def timed_get(
    port: int, headers: list[tuple[str, str]] | None = None, host: str = "svc"
) -> tuple[RawResponse, float]:
    conn = await RawConnection.open(port)
    start = time.monotonic()
    try:
        resp = await conn.request("GET", "/", headers, host=host)
    finally:
        elapsed = time.monotonic() - start
        await conn.close()
    return resp, elapsed


def timeouts_of(mesh, name: str = "/svc/svc") -> TimeoutCounters:
    counters: TimeoutCounters = mesh.daemon.routers[0].services[Path.read(name)].timeouts
    return counters


def wall_ns() -> int:
    return time.time_ns()


# -- totalTimeoutMs -------------------------------------------------------------------------------


async def test_total_timeout_answers_504_at_the_limit_and_drops_the_attempt_smoke(make_mesh, make_upstream):
    up = await make_upstream(hangs())
    mesh = await make_mesh(service={"totalTimeoutMs": 300})
    mesh.register("svc", up)
    resp, elapsed = await timed_get(mesh.port)
    assert resp.status == 504
    assert resp.header("l5d-err") == "request exceeded totalTimeoutMs (300 ms)"
    assert 0.3 - EARLY <= elapsed < 0.3 + LATE
    await wait_until(lambda: up.open_connections == 0, timeout=5, message="the attempt's connection aborted")
    t = timeouts_of(mesh)
    assert (t.total, t.attempt, t.deadline) == (1, 0, 0)
    text = await scrape(mesh.admin_port)
    assert metric(text, "meshd_timeouts_total", router="outgoing", service="/svc/svc", kind="total") == 1


async def test_total_timeout_bounds_the_retries_too(make_mesh, make_upstream):
    clock = FakeClock(start=0.0)

    async def slow_503(req: Received) -> Reply:
        await clock.sleep(0.125)  # a slow, failing replica (on the test's clock): the behaviour under test
        return Reply(503, [], b"")

    up = await make_upstream(slow_503)
    mesh = await make_mesh(
        # (maxRetries above the default 2, so that the total timeout, not the bound, ends it)
        service={"totalTimeoutMs": 450,
                 "retries": {"budget": {"minRetriesPerSec": 1000}, "backoff": NO_BACKOFF, "maxRetries": 10}},
        clock=clock,
    )
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    await conn.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
    for attempt in (1, 2, 3, 4):  # answered (503) at 125, 250 and 375 ms, each retried at once
        await wait_until(lambda n=attempt: up.requests == n, timeout=5, message=f"attempt {attempt}")
        due = 0.125 * attempt
        await wait_until(lambda d=due: d in [t.when for t in clock.pending], timeout=5, message="the replica's sleep")
        if attempt < 4:
            clock.advance_to(due)
    clock.advance_to(0.45 - 1 / 1024)
    assert timeout_timers(clock) == {0.45} and up.requests == 4  # the fourth attempt still running
    clock.advance_to(0.45)  # the total timeout cuts it off, before its answer at 500 ms
    resp = await asyncio.wait_for(conn.read_response(), 5)
    await conn.close()
    assert resp.status == 504
    assert resp.header("l5d-err") == "request exceeded totalTimeoutMs (450 ms)"
    assert up.requests == 4
    state = mesh.daemon.routers[0].services[Path.read("/svc/svc")]
    assert state.retries.response == 3 and state.timeouts.total == 1


async def test_a_backoff_that_would_end_past_the_deadline_returns_the_failure_at_once(make_mesh, make_upstream):
    async def always_503(req: Received) -> Reply:
        return Reply(503, [("X-From", "upstream")], b"down\n")

    clock = FakeClock(start=0.0)
    up = await make_upstream(always_503)
    mesh = await make_mesh(
        service={"totalTimeoutMs": 1000, "retries": {"backoff": {"kind": "constant", "ms": 5000}}}, clock=clock
    )
    mesh.register("svc", up)
    resp, _ = await timed_get(mesh.port)
    assert resp.status == 503 and resp.header("x-from") == "upstream"  # not a 504 a second later
    assert clock.now() == 0.0  # at once: answered without the clock moving at all
    assert up.requests == 1
    assert timeouts_of(mesh).total == 0
    assert mesh.daemon.routers[0].services[Path.read("/svc/svc")].retries.deadline == 1


# -- requestAttemptTimeoutMs ---------------------------------------------------------------------


async def test_attempt_timeout_that_is_not_retried_answers_504_smoke(make_mesh, make_upstream):
    up = await make_upstream(hangs())
    mesh = await make_mesh(service={"responseClassifier": {"kind": "nonRetryable5XX"}},
                           client={"requestAttemptTimeoutMs": 200})
    mesh.register("svc", up)
    resp, elapsed = await timed_get(mesh.port)
    assert resp.status == 504
    assert resp.header("l5d-err") == f"attempt to 127.0.0.1:{up.port} exceeded requestAttemptTimeoutMs (200 ms)"
    assert 0.2 - EARLY <= elapsed < 0.2 + LATE
    assert up.requests == 1
    t = timeouts_of(mesh)
    assert (t.total, t.attempt, t.deadline) == (0, 1, 0)


async def test_attempt_timeout_is_retried_and_the_retry_answers(make_mesh, make_upstream):
    clock = FakeClock(start=0.0)
    up = await make_upstream(hangs_first(1))
    mesh = await make_mesh(
        service={"retries": {"backoff": NO_BACKOFF}}, client={"requestAttemptTimeoutMs": 250}, clock=clock
    )
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    await conn.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
    await wait_until(lambda: up.requests == 1, timeout=5, message="the first attempt")
    assert timeout_timers(clock) == {0.25}
    clock.advance(0.25 - 1 / 1024)
    assert timeout_timers(clock) == {0.25} and up.requests == 1  # the first attempt still running
    clock.advance(1 / 1024)
    resp = await asyncio.wait_for(conn.read_response(), 5)  # the retry, sent at 250 ms, answers
    await conn.close()
    assert resp.status == 200
    assert up.requests == 2
    state = mesh.daemon.routers[0].services[Path.read("/svc/svc")]
    assert state.timeouts.attempt == 1 and state.retries.error == 1


async def test_a_post_whose_attempt_timed_out_is_not_sent_again(make_mesh, make_upstream):
    up = await make_upstream(hangs_first(1))
    mesh = await make_mesh(client={"requestAttemptTimeoutMs": 200})
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    resp = await conn.request("POST", "/", body=b"charge")
    await conn.close()
    assert resp.status == 504
    assert up.requests == 1


# -- l5d-ctx-deadline -----------------------------------------------------------------------------


async def test_outgoing_requests_carry_the_deadline_of_the_total_timeout(make_mesh, make_upstream):
    up = await make_upstream()
    mesh = await make_mesh(service={"totalTimeoutMs": 2000})
    mesh.register("svc", up)
    before = wall_ns()
    resp, _ = await timed_get(mesh.port)
    after = wall_ns()
    assert resp.status == 200
    sent = parse_deadline(up.received[0].header("l5d-ctx-deadline") or "")
    assert sent is not None
    assert before <= sent.timestamp_ns <= after
    assert sent.deadline_ns - sent.timestamp_ns == 2_000_000_000


async def test_a_callers_earlier_deadline_is_passed_on_unchanged(make_mesh, make_upstream):
    up = await make_upstream()
    mesh = await make_mesh(service={"totalTimeoutMs": 10_000})
    mesh.register("svc", up)
    theirs = Deadline.of_timeout(wall_ns(), 3.0)
    resp, _ = await timed_get(mesh.port, [("l5d-ctx-deadline", format_deadline(theirs))])
    assert resp.status == 200
    sent = parse_deadline(up.received[0].header("l5d-ctx-deadline") or "")
    assert sent is not None and sent.deadline_ns == theirs.deadline_ns
    assert up.received[0].headers_named("l5d-ctx-deadline") == [up.received[0].header("l5d-ctx-deadline")]


async def test_a_callers_later_deadline_is_shortened_to_our_total_timeout(make_mesh, make_upstream):
    up = await make_upstream()
    mesh = await make_mesh(service={"totalTimeoutMs": 1000})
    mesh.register("svc", up)
    theirs = Deadline.of_timeout(wall_ns(), 60.0)
    before = wall_ns()
    resp, _ = await timed_get(mesh.port, [("l5d-ctx-deadline", format_deadline(theirs))])
    assert resp.status == 200
    sent = parse_deadline(up.received[0].header("l5d-ctx-deadline") or "")
    assert sent is not None
    assert before + 1_000_000_000 <= sent.deadline_ns < theirs.deadline_ns


async def test_an_expired_incoming_deadline_is_refused_without_calling_the_upstream(make_mesh, make_upstream):
    clock = FakeClock(start=0.0)
    up = await make_upstream()
    mesh = await make_mesh(clock=clock)  # no totalTimeoutMs: the caller's deadline alone applies
    mesh.register("svc", up)
    now = wall_ns()
    expired = Deadline(now - 2_000_000_000, now - 1_000_000)
    resp, _ = await timed_get(mesh.port, [("l5d-ctx-deadline", format_deadline(expired))])
    assert resp.status == 504
    assert "deadline" in (resp.header("l5d-err") or "")
    assert clock.now() == 0.0 and timeout_timers(clock) == set()  # at once: no time passed, no timer armed
    assert up.requests == 0 and up.connections == 0
    state = mesh.daemon.routers[0].services[Path.read("/svc/svc")]
    assert state.timeouts.deadline == 1
    assert state.budget.statistics().deposits == 0  # refused before the retry budget was touched


async def test_the_callers_deadline_expiring_mid_request_answers_504_smoke(make_mesh, make_upstream):
    up = await make_upstream(hangs())
    mesh = await make_mesh()
    mesh.register("svc", up)
    theirs = Deadline.of_timeout(wall_ns(), 0.3)
    conn = await RawConnection.open(mesh.port)
    resp = await conn.request("GET", "/", [("l5d-ctx-deadline", format_deadline(theirs))])
    done = wall_ns()
    await conn.close()
    assert resp.status == 504
    assert (resp.header("l5d-err") or "").startswith("the caller's deadline (l5d-ctx-deadline) expired")
    assert theirs.deadline_ns - EARLY * 1e9 <= done < theirs.deadline_ns + LATE * 1e9
    assert timeouts_of(mesh).deadline == 1


async def test_deadline_from_an_untrusted_client_is_ignored(make_mesh, make_upstream):
    up = await make_upstream()
    mesh = await make_mesh(trustedSources=["10.0.0.0/8"])  # loopback is not trusted here
    mesh.register("svc", up)
    now = wall_ns()
    expired = Deadline(now - 2_000_000_000, now - 1_000_000)
    resp, _ = await timed_get(mesh.port, [("l5d-ctx-deadline", format_deadline(expired))])
    assert resp.status == 200
    assert up.received[0].header("l5d-ctx-deadline") is None


async def test_malformed_deadline_is_ignored(make_mesh, make_upstream):
    up = await make_upstream()
    mesh = await make_mesh(service={"totalTimeoutMs": 1000})
    mesh.register("svc", up)
    resp, _ = await timed_get(mesh.port, [("l5d-ctx-deadline", "soon please")])
    assert resp.status == 200
    sent = parse_deadline(up.received[0].header("l5d-ctx-deadline") or "")
    assert sent is not None and sent.deadline_ns - sent.timestamp_ns == 1_000_000_000


async def test_a_chain_of_meshds_never_works_past_the_first_callers_deadline(make_mesh, make_upstream):
    # client -> meshd A (totalTimeoutMs 250) -> meshd B (no timeout of its own) -> hanging replica,
    # each meshd on a fake clock of its own (they are two hosts)
    clock_a, clock_b = FakeClock(start=0.0), FakeClock(start=0.0)
    replica = await make_upstream(hangs())
    mesh_b = await make_mesh(clock=clock_b)
    mesh_b.register("svc", replica)
    mesh_a = await make_mesh(service={"totalTimeoutMs": 250}, clock=clock_a)
    mesh_a.register("svc", f"127.0.0.1 {mesh_b.port}")
    conn = await RawConnection.open(mesh_a.port)
    await conn.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
    await wait_until(lambda: replica.requests == 1, timeout=5, message="the request to reach the replica")
    # B received A's deadline and passed the very same instant on to the replica
    at_replica = parse_deadline(replica.received[0].header("l5d-ctx-deadline") or "")
    assert at_replica is not None
    assert at_replica.deadline_ns - at_replica.timestamp_ns == 250_000_000
    assert timeout_timers(clock_a) == {0.25}
    # B enforces what is left of A's deadline (read on the wall clock, so less the real time the
    # request took to reach B): its timer is due no later than A's
    [b_due] = timeout_timers(clock_b)
    assert 0.25 - LATE < b_due <= 0.25
    clock_a.advance(0.25 - 1 / 1024)
    assert timeout_timers(clock_a) == {0.25}  # A still waiting
    clock_a.advance(1 / 1024)
    resp = await asyncio.wait_for(conn.read_response(), 5)
    await conn.close()
    assert resp.status == 504
    assert resp.header("l5d-err") == "request exceeded totalTimeoutMs (250 ms)"
    # and nothing keeps working for A's caller after the deadline: B's attempt is dropped too (A's
    # hanging up on B reaches it before B's own timer, which has not needed to move)
    await wait_until(lambda: replica.open_connections == 0, timeout=5, message="B dropped its attempt")


# -- more on the fake clock -------------------------------------------------------------------------
# (Times in 1/1024 s steps, or eighths, from 0.0, so that the sums are exact floats.)


def timeout_timers(clock: FakeClock) -> set[float]:
    """When the pending total and attempt timeouts fall due (other timers, such as the fs namer's
    poll sleep, share the clock)."""
    return {t.when for t in clock.pending if isinstance(getattr(t.callback, "__self__", None), Expiry)}


async def test_total_timeout_fires_at_the_limit_exactly_on_the_fake_clock(make_mesh, make_upstream):
    clock = FakeClock(start=0.0)
    up = await make_upstream(hangs())
    mesh = await make_mesh(service={"totalTimeoutMs": 250}, clock=clock)
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    await conn.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
    await wait_until(lambda: up.requests == 1, timeout=5, message="the attempt to reach the upstream")
    assert timeout_timers(clock) == {0.25}  # the total timeout's timer, at the deadline
    clock.advance(0.25 - 1 / 1024)
    assert timeout_timers(clock) == {0.25}  # not yet fired
    clock.advance(1 / 1024)
    resp = await asyncio.wait_for(conn.read_response(), 5)
    await conn.close()
    assert resp.status == 504
    assert resp.header("l5d-err") == "request exceeded totalTimeoutMs (250 ms)"
    assert (timeouts_of(mesh).total, up.requests) == (1, 1)


async def test_the_backoff_sleeps_on_the_fake_clock_and_a_retry_past_the_deadline_is_skipped(make_mesh, make_upstream):
    async def always_503(req: Received) -> Reply:
        return Reply(503, [("X-From", "upstream")], b"down\n")

    clock = FakeClock(start=0.0)
    up = await make_upstream(always_503)
    mesh = await make_mesh(
        service={"totalTimeoutMs": 1000, "retries": {"backoff": {"kind": "constant", "ms": 375}, "maxRetries": 10}},
        clock=clock,
    )
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    await conn.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
    await wait_until(lambda: up.requests == 1, timeout=5, message="the first attempt")
    # the retry waits its 375 ms backoff on the fake clock: nothing happens until it passes
    await wait_until(lambda: 0.375 in [t.when for t in clock.pending], timeout=5, message="the backoff sleep")
    clock.advance(0.375 - 1 / 1024)
    assert 0.375 in [t.when for t in clock.pending] and up.requests == 1  # still sleeping
    clock.advance(1 / 1024)
    await wait_until(lambda: up.requests == 2, timeout=5, message="the retry at 375 ms")
    await wait_until(lambda: 0.75 in [t.when for t in clock.pending], timeout=5, message="the second backoff")
    clock.advance(0.375)
    await wait_until(lambda: up.requests == 3, timeout=5, message="the retry at 750 ms")
    # a third backoff would end at 1125 ms, past the 1000 ms deadline: the 503 is returned at once
    resp = await asyncio.wait_for(conn.read_response(), 5)
    await conn.close()
    assert resp.status == 503 and resp.header("x-from") == "upstream"
    assert up.requests == 3 and timeouts_of(mesh).total == 0
    assert mesh.daemon.routers[0].services[Path.read("/svc/svc")].retries.deadline == 1


async def test_attempt_timeouts_retried_until_the_total_timeout(make_mesh, make_upstream):
    clock = FakeClock(start=0.0)
    up = await make_upstream(hangs())
    mesh = await make_mesh(
        service={"totalTimeoutMs": 500, "retries": {"backoff": NO_BACKOFF, "maxRetries": 10}},
        client={"requestAttemptTimeoutMs": 125},
        clock=clock,
    )
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    await conn.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
    await wait_until(lambda: up.requests == 1, timeout=5, message="the first attempt")
    for attempt in (2, 3, 4):  # at 125, 250 and 375 ms exactly: each attempt's timer fires, then a retry
        assert timeout_timers(clock) == {0.125 * (attempt - 1), 0.5}  # this attempt's and the total
        clock.advance(0.125)
        await wait_until(lambda n=attempt: up.requests == n, timeout=5, message=f"attempt {attempt}")
    clock.advance(0.125)  # 500 ms: the total timeout ends the fourth attempt (its own timer is due then too)
    resp = await asyncio.wait_for(conn.read_response(), 5)
    await conn.close()
    assert resp.status == 504
    assert resp.header("l5d-err") == "request exceeded totalTimeoutMs (500 ms)"
    t = timeouts_of(mesh)
    assert (t.total, t.attempt, up.requests) == (1, 3, 4)
