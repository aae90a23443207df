"""The outbox: after-response work that cannot complete is kept and finished by a replay, never dropped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from examples.bank.authorisation import AuthRequest, approved
from examples.bank.harness import running_bank
from examples.bank.outbox import Outbox, RetryPolicy, StepFailed
from examples.bank.payments_store import SCHEMA, PaymentsStore
from examples.bank.storage import Database
from tests.examples.test_bank_payments import authorise, get_json, open_account, settle


@pytest.fixture
async def bank(tmp_path):
    async with running_bank(tmp_path, retry_policy=RetryPolicy(attempts=2, first_backoff_ms=0)) as harness:
        yield harness


async def replay(bank) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.post(f"{bank.url('payments')}/outbox/replay") as r:
        report: dict[str, Any] = await r.json()
        return report


async def test_unreachable_merchants_leaves_the_steps_pending_until_replay(bank):
    await open_account(bank, "c-1", 10_000)
    bank.router.fail("merchants")
    assert (await authorise(bank, "a-1", "c-1", 500))["decision"] == "approved"
    await settle(bank)

    outbox = await get_json(f"{bank.url('payments')}/outbox")
    assert [(row["step"], row["attempts"]) for row in outbox["pending"]] == [
        ("enrich", 2),
        ("feed", 0),
        ("notify", 0),
    ]
    assert "HTTP 503" in outbox["pending"][0]["last_error"]
    assert (await get_json(f"{bank.url('feed')}/feed"))["entries"] == []
    assert (await replay(bank)) == {"attempted": 1, "completed": 0, "pending": 1}
    outbox = await get_json(f"{bank.url('payments')}/outbox")
    assert outbox["pending"][0]["attempts"] == 3  # a replay tries each step once, without backoff

    bank.router.heal("merchants")
    assert (await replay(bank)) == {"attempted": 1, "completed": 1, "pending": 0}
    feed = await get_json(f"{bank.url('feed')}/feed")
    assert [(entry["auth_id"], entry["category"]) for entry in feed["entries"]] == [("a-1", "cafe")]
    outbox = await get_json(f"{bank.url('payments')}/outbox")
    assert outbox["pending"] == [] and outbox["counts"] == {"done": 3}


class FlakyPerformer:
    """Fails each step a scripted number of times, then succeeds; records what it was asked to do."""

    def __init__(self, failures: dict[str, int]) -> None:
        self.failures = dict(failures)
        self.performed: list[str] = []

    async def run(self, step, record, context):
        self.performed.append(step)
        if self.failures.get(step, 0) > 0:
            self.failures[step] -= 1
            raise StepFailed(f"{step}: scripted failure")


async def outbox_with(
    tmp_path: Path, performer: FlakyPerformer, policy: RetryPolicy
) -> tuple[Database, PaymentsStore, Outbox, list[float]]:
    db = await Database.open(tmp_path / "payments.db", SCHEMA)
    store = PaymentsStore(db)
    request = AuthRequest(auth_id="a-1", account_id="c-1", merchant_id="m-001", amount=100)
    await store.claim(request)
    await store.finish(request, approved(ledger_posted=True))
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    return db, store, Outbox(store, performer, policy, sleep=sleep), sleeps


async def test_a_failing_step_is_retried_with_backoff_and_then_marked_done(tmp_path):
    performer = FlakyPerformer({"feed": 2})
    db, store, outbox, sleeps = await outbox_with(
        tmp_path, performer, RetryPolicy(attempts=3, first_backoff_ms=50)
    )
    try:
        assert await outbox.drain("a-1", {}) is True
        assert performer.performed == ["enrich", "feed", "feed", "feed", "notify"]
        assert sleeps == [0.05, 0.2]
        assert await store.outbox_counts() == {"done": 3}
    finally:
        await db.close()


async def test_steps_after_a_failed_one_wait_for_it(tmp_path):
    performer = FlakyPerformer({"enrich": 5})
    db, store, outbox, _ = await outbox_with(tmp_path, performer, RetryPolicy(attempts=2, first_backoff_ms=0))
    try:
        assert await outbox.drain("a-1", {}) is False
        assert performer.performed == ["enrich", "enrich"]
        pending = await store.pending_steps("a-1")
        assert [(row.step, row.attempts, row.last_error) for row in pending] == [
            ("enrich", 2, "enrich: scripted failure"),
            ("feed", 0, ""),
            ("notify", 0, ""),
        ]
    finally:
        await db.close()


async def test_replay_with_nothing_pending_does_nothing(bank):
    assert (await replay(bank)) == {"attempted": 0, "completed": 0, "pending": 0}
