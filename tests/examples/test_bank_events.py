"""The bank on the event log: payments publishes its decisions through a transactional outbox and a relay, and
ledger catch-up, enrichment, the feed and notifications are consumers, idempotent by event id.

The whole bank runs in process (`running_bank(events=True)`): the events service on its embedded SQLite
engine, every call (publish, fetch, acknowledge) through the harness's Host-header router standing in for
meshd, which is how the tests make the log or a peer unreachable at an exact point.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest

from examples.bank.harness import BankHarness, running_bank
from examples.bank.outbox import RetryPolicy
from tests.examples.test_bank_payments import authorise, get_json, ledger_keys, open_account
from tests.support.waiting import wait_until

GROUPS = (
    ("authorisations", "ledger"),
    ("authorisations", "merchants"),
    ("authorisations-enriched", "feed"),
    ("authorisations-enriched", "notifications"),
    ("income", "accounts"),
)


@pytest.fixture
async def bank(tmp_path):
    async with running_bank(tmp_path, events=True, retry_policy=RetryPolicy(attempts=1)) as harness:
        yield harness


async def caught_up(bank: BankHarness) -> bool:
    """The relay published everything and every consumer group acknowledged everything (read in the order
    the work flows, so all zero means done)."""
    outbox = await get_json(f"{bank.url('payments')}/outbox")
    if outbox["events"].get("pending", 0):
        return False
    for topic, group in GROUPS:
        if (await get_json(f"{bank.url('events')}/topics/{topic}/groups/{group}"))["lag"]:
            return False
    return True


async def settle(bank: BankHarness) -> None:
    await wait_until(lambda: caught_up(bank), timeout=15, message="the relay and the consumers to catch up")


async def consumer_stats(bank: BankHarness, service: str) -> dict[str, Any]:
    [stats] = (await get_json(f"{bank.url(service)}/_consumers"))["consumers"]
    return stats


async def test_an_approval_reaches_feed_and_notifications_through_the_log(bank):
    await open_account(bank, "c-1", 10_000)
    assert (await authorise(bank, "a-1", "c-1", 2_500))["decision"] == "approved"
    await settle(bank)
    feed = await get_json(f"{bank.url('feed')}/feed/c-1")
    assert [(e["auth_id"], e["merchant_name"], e["category"]) for e in feed["entries"]] == [
        ("a-1", "Corner Coffee", "cafe")
    ]
    pushes = await get_json(f"{bank.url('notifications')}/notifications")
    assert [p["message"] for p in pushes["notifications"]] == ["You paid 25.00 at Corner Coffee."]
    outbox = await get_json(f"{bank.url('payments')}/outbox")
    assert outbox["events"] == {"published": 1} and outbox["counts"] == {}  # no call-style steps at all
    [event] = (await get_json(f"{bank.url('events')}/topics/authorisations/events"))["events"]
    assert event["id"] == "a-1" and event["payload"]["decision"] == "approved"
    assert event["payload"]["ledger_posted"] is True
    # the after-answer work reached the events service through the mesh, like any call
    assert {("events", "POST")} <= {(c.service, c.method) for c in bank.router.calls}


async def test_a_decline_is_notified_but_not_in_the_feed(bank):
    await open_account(bank, "c-1", 100)
    assert (await authorise(bank, "a-1", "c-1", 500))["decision"] == "declined"
    await settle(bank)
    assert (await get_json(f"{bank.url('feed')}/feed"))["entries"] == []
    [push] = (await get_json(f"{bank.url('notifications')}/notifications"))["notifications"]
    assert push["message"] == "A card payment of 5.00 at Corner Coffee was declined (insufficient_funds)."


async def test_the_log_being_down_never_blocks_a_payment_and_the_relay_catches_up(bank):
    await open_account(bank, "c-1", 10_000)
    bank.router.fail("events")
    started = time.monotonic()
    answers = [await authorise(bank, f"a-{n}", "c-1", 100) for n in range(3)]
    elapsed = time.monotonic() - started
    assert [a["decision"] for a in answers] == ["approved"] * 3
    assert elapsed < 2.0, f"three approvals took {elapsed:.2f}s with the log down"

    def relay_refused() -> bool:
        return any(
            (c.service, c.path, c.status) == ("events", "/topics/authorisations", 503)
            for c in bank.router.calls
        )

    await wait_until(relay_refused, timeout=5, message="the relay to try publishing")
    assert (await get_json(f"{bank.url('payments')}/outbox"))["events"] == {"pending": 3}
    assert (await get_json(f"{bank.url('feed')}/feed"))["entries"] == []
    bank.router.heal("events")
    await settle(bank)
    feed = await get_json(f"{bank.url('feed')}/feed")
    assert sorted(e["auth_id"] for e in feed["entries"]) == ["a-0", "a-1", "a-2"]


async def test_ledger_catch_up_is_a_consumer_and_posts_once(bank):
    await open_account(bank, "c-1", 10_000)
    bank.router.fail("ledger", method="PUT")
    assert (await authorise(bank, "a-1", "c-1", 700))["decision"] == "approved"
    await settle(bank)
    assert await ledger_keys(bank) == ["auth:a-1"]  # posted by the ledger's own consumer, from the event
    [event] = (await get_json(f"{bank.url('events')}/topics/authorisations/events"))["events"]
    assert event["payload"]["ledger_posted"] is False
    balance = await get_json(f"{bank.url('ledger')}/balances/customer:c-1")
    assert balance["balance"] == -700


async def test_consumers_are_idempotent_by_event_id_under_a_replay(bank):
    await open_account(bank, "c-1", 10_000)
    for n in range(4):
        assert (await authorise(bank, f"a-{n}", "c-1", 100))["decision"] == "approved"
    await settle(bank)
    async with aiohttp.ClientSession() as session:
        for group in ("feed", "notifications"):
            body = {"group": group, "offset": 1}
            async with session.post(
                f"{bank.url('events')}/topics/authorisations-enriched/replay", json=body
            ) as r:
                assert (await r.json())["next_offset"] == 1
    await settle(bank)
    feed = await get_json(f"{bank.url('feed')}/feed")
    assert sorted(e["auth_id"] for e in feed["entries"]) == ["a-0", "a-1", "a-2", "a-3"]
    assert len((await get_json(f"{bank.url('notifications')}/notifications"))["notifications"]) == 4
    stats = await consumer_stats(bank, "feed")
    assert (stats["handled"], stats["duplicates"]) == (8, 4)  # every event twice, the second time a no-op


async def test_income_events_credit_the_account_and_the_ledger_once(bank):
    await open_account(bank, "c-1", 1_000)
    assert (await authorise(bank, "a-1", "c-1", 1_500))["decision"] == "declined"
    salary = {"id": "salary-1", "payload": {"account_id": "c-1", "amount": 2_000}}
    async with aiohttp.ClientSession() as session:
        for _ in range(2):  # a retried publish: stored once, credited once
            async with session.post(
                f"{bank.router_url}/topics/income", json={"events": [salary]}, headers={"Host": "events"}
            ) as response:
                assert response.status == 200
    await settle(bank)
    account = await get_json(f"{bank.url('accounts')}/accounts/c-1")
    assert (account["credited"], account["available"]) == (2_000, 3_000)
    ledger = await get_json(f"{bank.url('ledger')}/balances/customer:c-1")
    assert ledger["balance"] == 2_000  # the opening balance was never posted in this test; the income was
    assert (await authorise(bank, "a-2", "c-1", 1_500))["decision"] == "approved"


async def test_a_peer_outage_is_retried_in_place_and_never_dead_letters_an_event(bank):
    await open_account(bank, "c-1", 1_000)
    bank.router.fail("ledger")  # the income consumer needs the ledger
    salary = {"id": "salary-1", "payload": {"account_id": "c-1", "amount": 2_000}}
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{bank.router_url}/topics/income", json={"events": [salary]}, headers={"Host": "events"}
        ) as response:
            assert response.status == 200

    async def retried() -> bool:
        return (await consumer_stats(bank, "accounts"))["retries"] >= 2

    await wait_until(retried, timeout=10, message="the income consumer to retry against the dead ledger")
    bank.router.heal("ledger")
    await settle(bank)
    stats = await consumer_stats(bank, "accounts")
    assert (stats["handled"], stats["failures"]) == (1, 0)
    assert (await get_json(f"{bank.url('accounts')}/accounts/c-1"))["credited"] == 2_000
    assert (await get_json(f"{bank.url('events')}/topics/dlq.income.accounts/events"))["events"] == []
