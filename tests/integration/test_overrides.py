"""Per-prefix overrides in the running proxy: `services:` over `service`, `clients:` over `client`.

One meshd serves several logical names; each test checks that the name under an override gets
the stricter (or looser) behaviour and the others keep the router's defaults.
"""

from __future__ import annotations

import asyncio

import pytest

from meshd.config.errors import ConfigError
from meshd.config.loader import load_config
from meshd.config.model import MeshdConfig
from tests.integration.test_retries import NO_BACKOFF, fail_first, metric, scrape, service_state
from tests.integration.test_timeouts import timeout_timers
from tests.support.client import RawConnection, RawResponse
from tests.support.clock import FakeClock
from tests.support.upstreams import Handler, Received, Reply
from tests.support.waiting import wait_until


def never_answers() -> Handler:
    never = asyncio.Event()

    async def handler(req: Received) -> Reply:
        await never.wait()
        return Reply(200, [], b"")

    return handler


async def get(port: int, host: str, method: str = "GET", body: bytes = b"") -> RawResponse:
    conn = await RawConnection.open(port)
    try:
        resp = await conn.request(method, "/", host=host, body=body)
    finally:
        await conn.close()
    return resp


async def send(port: int, host: str) -> RawConnection:
    """A GET sent on a new connection; the test reads the answer once its clock has moved."""
    conn = await RawConnection.open(port)
    await conn.send(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return conn


async def test_payments_is_stricter_than_the_default_service(make_mesh, make_upstream):
    accounts = await make_upstream(fail_first(1))
    payments = await make_upstream(fail_first(1))
    mesh = await make_mesh(
        service={"retries": {"backoff": NO_BACKOFF}, "addSuccessClassHeader": True},
        services=[{"prefix": "/svc/payments", "responseClassifier": {"kind": "nonRetryable5XX"}}],
    )
    mesh.register("accounts", accounts)
    mesh.register("payments", payments)
    a = await get(mesh.port, "accounts")
    p = await get(mesh.port, "payments")
    assert (a.status, accounts.requests) == (200, 2)
    assert (p.status, payments.requests) == (503, 1)
    # keys the override does not set are inherited from `service`
    assert p.header("l5d-success-class") == "0.0" and a.header("l5d-success-class") == "1.0"
    text = await scrape(mesh.admin_port)
    for name, count in (("/svc/accounts", 1), ("/svc/payments", 0)):
        assert metric(text, "meshd_retries_total", router="outgoing", service=name, reason="response") == count


async def test_total_timeout_for_one_prefix_only(make_mesh, make_upstream):
    clock = FakeClock(start=0.0)

    async def slow(req: Received) -> Reply:
        await clock.sleep(0.375)  # a slow replica (on the test's clock): the behaviour under test
        return Reply(200, [], b"slow but fine")

    up = await make_upstream(slow)
    mesh = await make_mesh(services=[{"prefix": "/svc/payments", "totalTimeoutMs": 125}], clock=clock)
    mesh.register("payments", up)
    mesh.register("accounts", up)
    conn = await send(mesh.port, "payments")
    await wait_until(lambda: up.requests == 1, timeout=5, message="the payments request")
    assert timeout_timers(clock) == {0.125}
    clock.advance_to(0.125 - 1 / 1024)
    assert timeout_timers(clock) == {0.125}  # not yet
    clock.advance_to(0.125)
    p = await asyncio.wait_for(conn.read_response(), 5)
    await conn.close()
    assert p.status == 504 and p.header("l5d-err") == "request exceeded totalTimeoutMs (125 ms)"
    conn = await send(mesh.port, "accounts")
    await wait_until(lambda: up.requests == 2, timeout=5, message="the accounts request")
    await wait_until(lambda: 0.5 in [t.when for t in clock.pending], timeout=5, message="the replica's sleep")
    assert timeout_timers(clock) == set()  # no total timeout for accounts
    clock.advance_to(0.5)  # the replica answers after its 375 ms: accounts waited for it
    a = await asyncio.wait_for(conn.read_response(), 5)
    await conn.close()
    assert a.status == 200 and a.body == b"slow but fine"


async def test_wildcard_prefix_and_file_order(make_mesh, make_upstream):
    ups = {name: await make_upstream(fail_first(1)) for name in ("payments", "ledger", "accounts")}
    mesh = await make_mesh(
        service={"retries": {"backoff": NO_BACKOFF}},
        services=[
            # every name under /svc: retries off (a budget of nothing)
            {"prefix": "/svc/*", "retries": {"budget": {"minRetriesPerSec": 0, "percentCanRetry": 0}}},
            # later entries win: ledger gets retries back (a whole `retries` section replaces)
            {"prefix": "/svc/ledger", "retries": {"backoff": NO_BACKOFF}},
        ],
    )
    for name, up in ups.items():
        mesh.register(name, up)
    statuses = {name: (await get(mesh.port, name)).status for name in ups}
    assert statuses == {"payments": 503, "ledger": 200, "accounts": 503}
    assert {name: up.requests for name, up in ups.items()} == {"payments": 1, "ledger": 2, "accounts": 1}


async def test_each_service_has_its_own_retry_budget(make_mesh, make_upstream):
    async def always_503(req: Received) -> Reply:
        return Reply(503, [], b"")

    noisy = await make_upstream(always_503)
    quiet = await make_upstream(fail_first(1))
    mesh = await make_mesh(
        service={"retries": {"budget": {"minRetriesPerSec": 1, "ttlSecs": 2, "percentCanRetry": 0.2},
                             "backoff": NO_BACKOFF}}
    )
    mesh.register("noisy", noisy)
    mesh.register("quiet", quiet)
    for _ in range(10):
        await get(mesh.port, "noisy")
    assert service_state(mesh, "/svc/noisy").budget.balance == 0  # the noisy service spent its own
    q = await get(mesh.port, "quiet")
    assert q.status == 200 and quiet.requests == 2  # ...and not the quiet one's


async def test_client_override_sets_the_attempt_timeout_of_one_replica_set(make_mesh, make_upstream):
    clock = FakeClock(start=0.0)
    ledger = await make_upstream(never_answers())
    mesh = await make_mesh(
        service={"responseClassifier": {"kind": "nonRetryable5XX"}, "totalTimeoutMs": 625},
        clients=[{"prefix": "/#/fs/ledger", "requestAttemptTimeoutMs": 125}],
        clock=clock,
    )
    mesh.register("ledger", ledger)
    conn = await send(mesh.port, "ledger")
    await wait_until(lambda: ledger.requests == 1, timeout=5, message="the ledger request")
    assert timeout_timers(clock) == {0.125, 0.625}  # the attempt's and the total's
    clock.advance_to(0.125 - 1 / 1024)
    assert timeout_timers(clock) == {0.125, 0.625}
    clock.advance_to(0.125)
    resp = await asyncio.wait_for(conn.read_response(), 5)
    await conn.close()
    assert resp.status == 504
    assert "requestAttemptTimeoutMs (125 ms)" in (resp.header("l5d-err") or "")
    other = await make_upstream(never_answers())
    mesh.register("accounts", other)
    conn = await send(mesh.port, "accounts")
    await wait_until(lambda: other.requests == 1, timeout=5, message="the accounts request")
    assert timeout_timers(clock) == {0.75}  # no attempt timeout here: only the total, 625 ms on
    clock.advance_to(0.75 - 1 / 1024)
    assert timeout_timers(clock) == {0.75}
    clock.advance_to(0.75)
    resp = await asyncio.wait_for(conn.read_response(), 5)
    await conn.close()
    assert resp.status == 504
    assert resp.header("l5d-err") == "request exceeded totalTimeoutMs (625 ms)"


async def test_smaller_replay_buffer_for_one_prefix(make_mesh, make_upstream):
    uploads = await make_upstream(fail_first(1))
    docs = await make_upstream(fail_first(1))
    mesh = await make_mesh(
        service={"retries": {"backoff": NO_BACKOFF}},
        services=[{"prefix": "/svc/uploads", "replayBufferBytes": 100}],
    )
    mesh.register("uploads", uploads)
    mesh.register("docs", docs)
    body = b"b" * 500
    u = await get(mesh.port, "uploads", "PUT", body)
    d = await get(mesh.port, "docs", "PUT", body)
    assert (u.status, uploads.requests) == (503, 1)  # beyond its 100-byte buffer: never retried
    assert (d.status, docs.requests) == (200, 2)
    assert docs.received[1].body == body


# -- bad overrides are config errors with the path and line ------------------------------------------


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (
            "    responseClassifier: {kind: retryableAll5XX}\n",
            'routers[0].services[1].responseClassifier.kind: line 9: unknown kind "retryableAll5XX" '
            "(known kinds: nonRetryable5XX, retryableRead5XX, retryableIdempotent5XX, allSuccessful, "
            "grpc.default, grpc.retryableStatusCodes, grpc.neverRetryable, grpc.alwaysRetryable)",
        ),
        (
            "    retries:\n      budget: {percentCanRetry: 20}\n",
            "routers[0].services[1].retries.budget.percentCanRetry: line 10: must be between 0 and 1",
        ),
        (
            "    retries:\n      budget: {ttlSecs: 0}\n",
            "routers[0].services[1].retries.budget.ttlSecs: line 10: must be a whole number between 1 and 60",
        ),
        (
            "    retries:\n      budget: {minRetriesPerSec: -1}\n",
            "routers[0].services[1].retries.budget.minRetriesPerSec: line 10: must be a whole number >= 0",
        ),
        (
            "    totalTimeoutMs: 0\n",
            "routers[0].services[1].totalTimeoutMs: line 9:",
        ),
    ],
)
def test_invalid_override_is_a_config_error_naming_path_and_line(entry, expected):
    text = (
        "routers:\n"                                   # 1
        "- label: outgoing\n"                          # 2
        "  service:\n"                                 # 3
        "    totalTimeoutMs: 1000\n"                   # 4
        "  services:\n"                                # 5
        "  - prefix: /svc/accounts\n"                  # 6
        "    totalTimeoutMs: 500\n"                    # 7
        "  - prefix: /svc/payments\n"                  # 8
        + entry                                        # 9, 10
    )
    with pytest.raises(ConfigError) as info:
        load_config(text, MeshdConfig)
    assert len(info.value.problems) == 1
    assert str(info.value).startswith(expected), str(info.value)


def test_override_with_a_bad_prefix_is_a_config_error():
    text = "routers:\n- label: outgoing\n  services:\n  - prefix: svc/payments\n    totalTimeoutMs: 5\n"
    with pytest.raises(ConfigError) as info:
        load_config(text, MeshdConfig)
    # the column is counted in the file (the prefix's first character)
    assert str(info.value).startswith("routers[0].services[0].prefix: line 4, column 13:"), str(info.value)
