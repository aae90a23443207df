"""Payments: approve/decline decisions, idempotency under retries and duplicates, and failure handling."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from examples.bank.authorisation import (
    STEP_ORDER,
    AuthRequest,
    Outcome,
    approved,
    declined,
    notification_text,
    outcome_of_hold,
)
from examples.bank.harness import BankHarness, running_bank
from examples.bank.outbox import RetryPolicy
from examples.bank.payments import AFTER_WORK

NO_RETRIES = RetryPolicy(attempts=1, first_backoff_ms=0)


@pytest.fixture
async def bank(tmp_path):
    async with running_bank(tmp_path, retry_policy=NO_RETRIES) as harness:
        yield harness


async def open_account(bank: BankHarness, account_id: str, balance: int) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.put(
            f"{bank.url('accounts')}/accounts/{account_id}", json={"opening_balance": balance}
        ) as r:
            assert r.status in (200, 201)


async def authorise(
    bank: BankHarness, auth_id: str, account_id: str, amount: int, *, replica: int = 0
) -> dict[str, Any]:
    body = {"auth_id": auth_id, "account_id": account_id, "merchant_id": "m-001", "amount": amount}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{bank.url('payments', replica)}/authorisations", json=body) as response:
            answer: dict[str, Any] = await response.json()
            answer["status"] = response.status
            return answer


async def get_json(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        body: dict[str, Any] = await response.json()
        return body


async def settle(bank: BankHarness) -> None:
    """Wait for every payments replica's after-response work to finish."""
    for app in bank.apps["payments"]:
        await app[AFTER_WORK].wait_idle()


async def ledger_keys(bank: BankHarness) -> list[str]:
    listed = await get_json(f"{bank.url('ledger')}/transactions?prefix=auth:")
    return [item["key"] for item in listed["transactions"]]


# --- decision rules, without I/O -------------------------------------------------------------------------


def test_hold_answers_map_to_decisions():
    assert outcome_of_hold("held") is None
    assert outcome_of_hold("declined") == declined("insufficient_funds")
    assert outcome_of_hold("released") == declined("voided")
    unexpected = outcome_of_hold("weird")
    assert unexpected is not None and unexpected.decision == "failed" and unexpected.steps == ("release",)


def test_approval_without_ledger_posting_queues_the_posting_first():
    assert approved(ledger_posted=False).steps == ("ledger", "enrich", "feed", "notify")
    assert approved(ledger_posted=True).steps == ("enrich", "feed", "notify")


def test_outcome_refuses_steps_out_of_order():
    with pytest.raises(ValueError, match="steps must follow"):
        Outcome("approved", "", ("feed", "enrich"))
    assert STEP_ORDER[0] == "release"


def test_idempotency_keys_derive_from_the_auth_id():
    request = AuthRequest(auth_id="a-1", account_id="c-1", merchant_id="m-1", amount=1234)
    assert request.ledger_key == "auth:a-1"
    assert [leg.account for leg in request.ledger_legs()] == ["customer:c-1", "merchant:m-1"]
    assert (
        request.fingerprint
        != AuthRequest(auth_id="a-1", account_id="c-1", merchant_id="m-1", amount=1).fingerprint
    )
    assert notification_text(request, "approved", "", "Corner Coffee") == "You paid 12.34 at Corner Coffee."


# --- the service, in process ---------------------------------------------------------------------------


async def test_approves_when_funds_cover_the_amount(bank):
    await open_account(bank, "c-1", 10_000)
    answer = await authorise(bank, "a-1", "c-1", 2_500)
    assert (answer["status"], answer["decision"]) == (200, "approved")
    account = await get_json(f"{bank.url('accounts')}/accounts/c-1")
    assert account["available"] == 7_500
    assert await ledger_keys(bank) == ["auth:a-1"]
    await settle(bank)
    feed = await get_json(f"{bank.url('feed')}/feed/c-1")
    assert [(e["auth_id"], e["merchant_name"]) for e in feed["entries"]] == [("a-1", "Corner Coffee")]
    pushes = await get_json(f"{bank.url('notifications')}/notifications?customer_id=c-1")
    assert [push["message"] for push in pushes["notifications"]] == ["You paid 25.00 at Corner Coffee."]


async def test_declines_when_funds_are_insufficient(bank):
    await open_account(bank, "c-1", 1_000)
    answer = await authorise(bank, "a-1", "c-1", 1_001)
    assert (answer["status"], answer["decision"], answer["reason"]) == (200, "declined", "insufficient_funds")
    assert (await get_json(f"{bank.url('accounts')}/accounts/c-1"))["available"] == 1_000
    assert await ledger_keys(bank) == []
    await settle(bank)
    pushes = await get_json(f"{bank.url('notifications')}/notifications")
    assert "declined (insufficient_funds)" in pushes["notifications"][0]["message"]


async def test_declines_an_unknown_account(bank):
    answer = await authorise(bank, "a-1", "nobody", 100)
    assert (answer["decision"], answer["reason"]) == ("declined", "no_such_account")


async def test_replayed_authorisation_answers_the_same_and_posts_once(bank):
    await open_account(bank, "c-1", 10_000)
    first = await authorise(bank, "a-1", "c-1", 4_000)
    again = await authorise(bank, "a-1", "c-1", 4_000, replica=0)
    assert (first["decision"], first["replayed"]) == ("approved", False)
    assert (again["decision"], again["replayed"]) == ("approved", True)
    assert (await get_json(f"{bank.url('accounts')}/accounts/c-1"))["held"] == 4_000
    assert await ledger_keys(bank) == ["auth:a-1"]


async def test_concurrent_duplicates_on_two_replicas_move_money_once(tmp_path):
    async with running_bank(tmp_path, replicas={"payments": 2}, retry_policy=NO_RETRIES) as bank:
        await open_account(bank, "c-1", 10_000)
        answers = await asyncio.gather(
            *(authorise(bank, "a-1", "c-1", 3_000, replica=i % 2) for i in range(6))
        )
        assert {answer["decision"] for answer in answers} == {"approved"}
        assert sum(not answer["replayed"] for answer in answers) == 1
        assert (await get_json(f"{bank.url('accounts')}/accounts/c-1"))["available"] == 7_000
        assert await ledger_keys(bank) == ["auth:a-1"]
        await settle(bank)


async def test_same_auth_id_with_other_content_is_a_conflict(bank):
    await open_account(bank, "c-1", 10_000)
    await authorise(bank, "a-1", "c-1", 100)
    answer = await authorise(bank, "a-1", "c-1", 200)
    assert answer["status"] == 409


async def test_failure_before_any_write_is_forgotten_so_the_id_can_be_retried(bank):
    await open_account(bank, "c-1", 10_000)
    bank.router.fail("accounts")
    failed = await authorise(bank, "a-1", "c-1", 100)
    assert (failed["status"], failed["decision"]) == (503, "failed")
    bank.router.heal("accounts")
    retried = await authorise(bank, "a-1", "c-1", 100)
    assert (retried["decision"], retried["replayed"]) == ("approved", False)


async def test_unanswered_hold_is_released_and_the_id_stays_failed(bank):
    await open_account(bank, "c-1", 10_000)
    bank.router.fail("accounts", method="PUT")
    failed = await authorise(bank, "a-1", "c-1", 100)
    assert (failed["status"], failed["decision"]) == (503, "failed")
    bank.router.heal("accounts")
    await settle(bank)
    hold = await get_json(f"{bank.url('accounts')}/holds/a-1")
    assert hold["status"] == "released"
    again = await authorise(bank, "a-1", "c-1", 100)
    assert (again["decision"], again["replayed"]) == ("failed", True)
    assert (await get_json(f"{bank.url('accounts')}/accounts/c-1"))["available"] == 10_000


async def test_ledger_outage_still_approves_and_the_outbox_posts_later(bank):
    await open_account(bank, "c-1", 10_000)
    bank.router.fail("ledger")
    answer = await authorise(bank, "a-1", "c-1", 700)
    assert answer["decision"] == "approved"
    await settle(bank)
    outbox = await get_json(f"{bank.url('payments')}/outbox")
    assert [(row["step"], row["attempts"]) for row in outbox["pending"]] == [
        ("ledger", 1),
        ("enrich", 0),
        ("feed", 0),
        ("notify", 0),
    ]
    assert await ledger_keys(bank) == []
    bank.router.heal("ledger")
    async with aiohttp.ClientSession() as session, session.post(f"{bank.url('payments')}/outbox/replay") as r:
        assert await r.json() == {"attempted": 1, "completed": 1, "pending": 0}
    assert await ledger_keys(bank) == ["auth:a-1"]


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(opening=st.integers(0, 5_000), amounts=st.lists(st.integers(1, 3_000), min_size=1, max_size=6))
async def test_decisions_follow_the_available_balance(opening, amounts):
    """Sequential authorisations approve exactly while the amount fits what is still available."""
    with tempfile.TemporaryDirectory() as directory:
        async with running_bank(Path(directory), retry_policy=NO_RETRIES) as bank:
            await open_account(bank, "c-1", opening)
            available = opening
            for index, amount in enumerate(amounts):
                answer = await authorise(bank, f"a-{index}", "c-1", amount)
                expected = "approved" if amount <= available else "declined"
                assert answer["decision"] == expected
                available -= amount if expected == "approved" else 0
            account = await get_json(f"{bank.url('accounts')}/accounts/c-1")
            balance = await get_json(f"{bank.url('ledger')}/balances/customer:c-1")
            await settle(bank)
    assert account["available"] == available
    assert balance["balance"] == available - opening
