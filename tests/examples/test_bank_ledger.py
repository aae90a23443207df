"""The ledger: balance arithmetic, and idempotent posting under any interleaving of retried requests."""

from __future__ import annotations

import asyncio
import random
import tempfile
from pathlib import Path

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from examples.bank import ledger
from examples.bank.harness import serving
from examples.bank.ledger_book import Leg, apply, fingerprint, make_transaction, transfer
from examples.bank.options import ServiceOptions

ACCOUNTS = ("customer:a", "customer:b", "merchant:m", "bank:funding")


@st.composite
def transactions(draw: st.DrawFn) -> tuple[Leg, ...]:
    """A balanced transaction: one debit split over one or two credits, on distinct accounts."""
    names = draw(st.lists(st.sampled_from(ACCOUNTS), min_size=2, max_size=3, unique=True))
    first = draw(st.integers(1, 10_000))
    legs = [Leg(names[1], "credit", first)]
    total = first
    if len(names) == 3:
        second = draw(st.integers(1, 10_000))
        legs.append(Leg(names[2], "credit", second))
        total += second
    legs.append(Leg(names[0], "debit", total))
    return make_transaction(draw(st.permutations(legs)))


@given(st.lists(transactions(), max_size=30))
def test_balances_always_sum_to_zero(posted):
    balances: dict[str, int] = {}
    for legs in posted:
        balances = apply(balances, legs)
    assert sum(balances.values()) == 0


@given(transactions(), st.randoms(use_true_random=False))
def test_fingerprint_ignores_leg_order(legs, rng):
    shuffled = list(legs)
    rng.shuffle(shuffled)
    assert fingerprint(shuffled) == fingerprint(legs)


def test_unbalanced_transaction_is_refused():
    with pytest.raises(ValueError, match="debits"):
        make_transaction([Leg("a", "debit", 10), Leg("b", "credit", 9)])


def test_transfer_moves_money_from_debit_to_credit_account():
    assert apply({"a": 100}, transfer("a", "b", 30)) == {"a": 70, "b": 30}


@st.composite
def post_schedules(draw: st.DrawFn) -> tuple[dict[str, tuple[Leg, ...]], list[tuple[str, tuple[Leg, ...]]]]:
    """Distinct keys with their transactions, and a shuffled list of posts: each key sent one to three times
    (retries), some keys also once with different legs (a client bug the ledger must refuse)."""
    count = draw(st.integers(1, 6))
    keys = [f"tx-{index}" for index in range(count)]
    intended = {key: draw(transactions()) for key in keys}
    posts: list[tuple[str, tuple[Leg, ...]]] = []
    for key in keys:
        posts += [(key, intended[key])] * draw(st.integers(1, 3))
        if draw(st.booleans()):
            bigger = tuple(Leg(leg.account, leg.direction, leg.amount * 2) for leg in intended[key])
            posts.append((key, make_transaction(bigger)))
    return intended, draw(st.permutations(posts))


async def _put(session: aiohttp.ClientSession, url: str, key: str, legs: tuple[Leg, ...]) -> int:
    body = {"legs": [leg.to_json() for leg in legs]}
    async with session.put(f"{url}/transactions/{key}", json=body) as response:
        return response.status


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(post_schedules(), st.integers(0, 2**32 - 1))
async def test_any_interleaving_of_retried_posts_posts_each_key_once(schedule, seed):
    intended, posts = schedule
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as directory:
        db = Path(directory) / "ledger.db"
        replicas = [
            ledger.create_app(ServiceOptions(service="ledger", db=db, replica=f"ledger-{i}")) for i in (1, 2)
        ]
        async with serving(*replicas) as urls, aiohttp.ClientSession() as session:
            statuses = await asyncio.gather(
                *(_put(session, rng.choice(urls), key, legs) for key, legs in posts)
            )
            async with session.get(f"{urls[0]}/balances") as response:
                book = await response.json()
            stored = {}
            for key in intended:
                async with session.get(f"{urls[1]}/transactions/{key}") as response:
                    stored[key] = make_transaction(Leg(**leg) for leg in (await response.json())["legs"])

    expected: dict[str, int] = {}
    for key in intended:
        outcomes = [
            (status, fingerprint(legs)) for (k, legs), status in zip(posts, statuses, strict=True) if k == key
        ]
        assert [status for status, _ in outcomes].count(201) == 1, outcomes
        winner = fingerprint(stored[key])
        for status, digest in outcomes:
            assert status in ((200, 201) if digest == winner else (409,))
        expected = apply(expected, stored[key])
    assert {account: balance for account, balance in book["balances"].items() if balance} == {
        account: balance for account, balance in expected.items() if balance
    }
    assert book["total"] == 0
    assert book["consistent"] is True


async def test_same_key_replay_answers_the_recorded_transaction(tmp_path):
    app = ledger.create_app(ServiceOptions(service="ledger", db=tmp_path / "ledger.db", replica="ledger-1"))
    legs = transfer("customer:a", "merchant:m", 250)
    async with serving(app) as [url], aiohttp.ClientSession() as session:
        assert await _put(session, url, "auth:1", legs) == 201
        assert await _put(session, url, "auth:1", tuple(reversed(legs))) == 200
        async with session.get(f"{url}/balances/customer:a") as response:
            assert (await response.json())["balance"] == -250
        async with session.get(f"{url}/transactions", params={"prefix": "auth:"}) as response:
            listed = (await response.json())["transactions"]
    assert [item["key"] for item in listed] == ["auth:1"]


async def test_invalid_legs_are_refused_with_422(tmp_path):
    app = ledger.create_app(ServiceOptions(service="ledger", db=tmp_path / "ledger.db", replica="ledger-1"))
    async with serving(app) as [url], aiohttp.ClientSession() as session:
        async with session.put(
            f"{url}/transactions/x", json={"legs": [{"account": "a", "direction": "up"}]}
        ) as r:
            assert r.status == 422
            assert "direction" in (await r.json())["error"]
        async with session.get(f"{url}/transactions/x") as r:
            assert r.status == 404
