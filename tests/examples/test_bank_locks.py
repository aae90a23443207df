"""The locks service (leases with a TTL and a fencing term) and the outbox relay's leader election on it."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from examples.bank import locks
from examples.bank.harness import running_bank, serving
from examples.bank.options import ServiceOptions
from examples.bank.outbox import RetryPolicy
from examples.bank.payments import RELAY
from examples.bank.storage import Database
from tests.examples.test_bank_events import settle
from tests.examples.test_bank_payments import authorise, get_json, open_account
from tests.support.waiting import wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def service(tmp_path):
    clock = Clock()
    app = locks.create_app(
        ServiceOptions(service="locks", db=tmp_path / "locks.db", replica="locks-1"), now=clock
    )
    async with serving(app) as [url], aiohttp.ClientSession() as session:

        async def call(method: str, path: str, body: object = None) -> tuple[int, Any]:
            async with session.request(method, url + path, json=body) as response:
                return response.status, await response.json()

        yield call, clock


async def test_a_lease_is_exclusive_until_it_expires_and_the_term_fences_holders(service):
    call, clock = service
    assert await call("PUT", "/locks/job", {"holder": "a", "ttl_ms": 3000}) == (
        200,
        {"name": "job", "holder": "a", "term": 1, "expires_in_ms": 3000},
    )
    status, lease = await call("PUT", "/locks/job", {"holder": "b", "ttl_ms": 3000})
    assert (status, lease["holder"], lease["term"]) == (409, "a", 1)
    clock.now += 2.0
    status, lease = await call("PUT", "/locks/job", {"holder": "a", "ttl_ms": 3000})  # a renewal
    assert (status, lease["term"], lease["expires_in_ms"]) == (200, 1, 3000)
    clock.now += 3.0  # a stopped renewing: its lease lapses
    assert (await call("GET", "/locks/job"))[0] == 404
    status, lease = await call("PUT", "/locks/job", {"holder": "b", "ttl_ms": 3000})
    assert (status, lease["holder"], lease["term"]) == (200, "b", 2)
    assert (await call("DELETE", "/locks/job?holder=a"))[1]["released"] is False
    assert (await call("DELETE", "/locks/job?holder=b"))[1]["released"] is True
    status, lease = await call("PUT", "/locks/job", {"holder": "a", "ttl_ms": 3000})
    assert (status, lease["term"]) == (200, 3)


async def test_bad_lock_requests_are_refused(service):
    call, _ = service
    assert (await call("PUT", "/locks/job", {"holder": "a", "ttl_ms": 5}))[0] == 422
    assert (await call("PUT", "/locks/job", {"ttl_ms": 3000}))[0] == 422


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from([0.0, 0.5, 1.0, 3.5])), max_size=25))
async def test_never_two_live_holders_and_the_term_grows_exactly_on_hand_over(attempts):
    with tempfile.TemporaryDirectory() as directory:
        db = await Database.open(Path(directory) / "locks.db", locks.SCHEMA)
        try:
            now, held_by, held_until, term = 0.0, None, float("-inf"), 0
            for holder, advance in attempts:
                now += advance
                granted, lease = await locks.acquire(db, "job", holder, 2.0, now)
                live_other = held_by is not None and held_by != holder and held_until > now
                assert granted is not live_other
                if granted:
                    expected = term if (held_by == holder and held_until > now) else term + 1
                    assert lease.term == expected
                    held_by, held_until, term = holder, now + 2.0, lease.term
                else:
                    assert (lease.holder, lease.term) == (held_by, term)
        finally:
            await db.close()


async def test_exactly_one_payments_replica_relays_and_a_dead_leader_is_replaced(tmp_path):
    async with running_bank(
        tmp_path, events=True, replicas={"payments": 2}, retry_policy=RetryPolicy(attempts=1)
    ) as bank:
        await open_account(bank, "c-1", 10_000)
        for n in range(4):
            assert (await authorise(bank, f"a-{n}", "c-1", 100, replica=n % 2))["decision"] == "approved"
        await settle(bank)
        relays = [app[RELAY] for app in bank.apps["payments"]]
        leaders = [relay for relay in relays if relay.leadership is not None and relay.leadership.leader]
        assert len(leaders) == 1
        [leader] = leaders
        [follower] = [relay for relay in relays if relay is not leader]
        assert (leader.published, follower.published) == (4, 0)  # the leader relayed the follower's rows too

        await leader.aclose()  # the leader dies: it stops renewing, its lease lapses within the TTL
        assert (await authorise(bank, "a-9", "c-1", 100, replica=1))["decision"] == "approved"

        def taken_over() -> bool:
            return follower.published >= 1

        await wait_until(taken_over, timeout=10, message="the follower to take over the relay")
        assert follower.leadership is not None and follower.leadership.terms_led == [2]
        await settle(bank)
        outbox = await get_json(f"{bank.url('payments', 1)}/outbox")
        assert outbox["events"] == {"published": 5} and outbox["relay"]["leader"] is True
