"""Accounts: available balance arithmetic and idempotent holds (place, release, capture)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from examples.bank import accounts
from examples.bank.accounts import decide_hold
from examples.bank.harness import serving
from examples.bank.options import ServiceOptions


@pytest.fixture
async def api(tmp_path):
    app = accounts.create_app(
        ServiceOptions(service="accounts", db=tmp_path / "accounts.db", replica="accounts-1")
    )
    async with serving(app) as [url], aiohttp.ClientSession() as session:

        async def call(
            method: str, path: str, body: dict[str, Any] | None = None
        ) -> tuple[int, dict[str, Any]]:
            async with session.request(method, url + path, json=body) as response:
                return response.status, await response.json()

        assert (await call("PUT", "/accounts/c-1", {"opening_balance": 1_000}))[0] == 201
        yield call


def test_a_hold_may_use_the_whole_available_balance_but_no_more():
    assert decide_hold(100, 100) == "held"
    assert decide_hold(100, 101) == "declined"


async def test_hold_reduces_available_and_a_replay_does_not_hold_twice(api):
    assert (await api("PUT", "/holds/a-1", {"account_id": "c-1", "amount": 300}))[0] == 201
    status, hold = await api("PUT", "/holds/a-1", {"account_id": "c-1", "amount": 300})
    assert (status, hold["status"]) == (200, "held")
    _, account = await api("GET", "/accounts/c-1")
    assert (account["held"], account["available"]) == (300, 700)


async def test_hold_beyond_available_is_recorded_as_declined(api):
    await api("PUT", "/holds/a-1", {"account_id": "c-1", "amount": 800})
    status, hold = await api("PUT", "/holds/a-2", {"account_id": "c-1", "amount": 201})
    assert (status, hold["status"]) == (201, "declined")
    assert (await api("PUT", "/holds/a-2", {"account_id": "c-1", "amount": 201}))[1]["status"] == "declined"
    assert (await api("GET", "/accounts/c-1"))[1]["available"] == 200


async def test_hold_with_other_content_under_the_same_id_is_a_conflict(api):
    await api("PUT", "/holds/a-1", {"account_id": "c-1", "amount": 300})
    assert (await api("PUT", "/holds/a-1", {"account_id": "c-1", "amount": 301}))[0] == 409


async def test_release_gives_the_money_back_and_is_idempotent(api):
    await api("PUT", "/holds/a-1", {"account_id": "c-1", "amount": 300})
    assert (await api("DELETE", "/holds/a-1"))[1]["status"] == "released"
    assert (await api("DELETE", "/holds/a-1"))[0] == 200
    assert (await api("GET", "/accounts/c-1"))[1]["available"] == 1_000


async def test_release_before_the_hold_arrives_keeps_the_late_hold_from_taking_effect(api):
    await api("DELETE", "/holds/a-1")
    status, hold = await api("PUT", "/holds/a-1", {"account_id": "c-1", "amount": 300})
    assert (status, hold["status"]) == (200, "released")
    assert (await api("GET", "/accounts/c-1"))[1]["available"] == 1_000


async def test_captured_hold_still_counts_and_cannot_be_released(api):
    await api("PUT", "/holds/a-1", {"account_id": "c-1", "amount": 300})
    assert (await api("PUT", "/holds/a-1/capture"))[1]["status"] == "captured"
    assert (await api("PUT", "/holds/a-1/capture"))[0] == 200
    assert (await api("DELETE", "/holds/a-1"))[0] == 409
    _, account = await api("GET", "/accounts/c-1")
    assert (account["captured"], account["available"]) == (300, 700)


async def test_unknown_account_is_404_and_opening_is_idempotent(api):
    assert (await api("PUT", "/holds/a-1", {"account_id": "nobody", "amount": 1}))[0] == 404
    assert (await api("GET", "/accounts/nobody"))[0] == 404
    assert (await api("PUT", "/accounts/c-1", {"opening_balance": 1_000}))[0] == 200
    assert (await api("PUT", "/accounts/c-1", {"opening_balance": 5}))[0] == 409
    assert [a["id"] for a in (await api("GET", "/accounts"))[1]["accounts"]] == ["c-1"]
