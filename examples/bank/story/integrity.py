"""The check that ends the demo: did every approved authorisation move the money exactly once, and only those?

The card network's own records (the simulator's results) are compared with what the bank's services hold:

- every approved authorisation has exactly one ledger transaction, `auth:<id>`, debiting the customer and
  crediting the merchant by the authorised amount; no declined, failed or unknown id has one;
- the ledger balances: all balances sum to zero and equal the sum of the postings;
- for every customer, the accounts service's available balance equals the ledger balance (opening funding
  minus approved purchases), and the opening balance is the one the bank was seeded with;
- the after-response work is complete: no outbox step pending, a feed entry for every approved
  authorisation, a push for every approved or declined one.

Reading the state first asks payments to replay its outbox, so work that was only delayed is not reported.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import aiohttp

from examples.bank.authorisation import auth_id_from_ledger_key, customer_ledger_account, ledger_key
from examples.bank.ledger_book import Leg
from examples.bank.ledger_book import parse_legs as ledger_parse_legs
from examples.bank.simulator import AuthResult
from examples.bank.story.report import IntegrityReport
from examples.bank.story.topology import Layout

MAX_LISTED: Final = 40
REPLAY_ROUNDS: Final = 5
READ_TIMEOUT: Final = aiohttp.ClientTimeout(total=30.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class BankState:
    """What the services hold at the end of the run."""

    ledger_transactions: Mapping[str, tuple[Leg, ...]]
    ledger_balances: Mapping[str, int]
    ledger_total: int
    ledger_consistent: bool
    opening_balances: Mapping[str, int]
    available_balances: Mapping[str, int]
    feed_auth_ids: frozenset[str]
    notified_auth_ids: frozenset[str]
    outbox_pending: int


def check_integrity(
    results: Sequence[AuthResult], state: BankState, seeded_balances: Mapping[str, int]
) -> IntegrityReport:
    mismatches: list[str] = []
    by_id = {result.request.auth_id: result for result in results}
    approved = [result for result in results if result.outcome == "approved"]
    declined = [result for result in results if result.outcome == "declined"]

    for result in approved:
        legs = state.ledger_transactions.get(ledger_key(result.request.auth_id))
        if legs is None:
            mismatches.append(f"approved {result.request.auth_id} is not in the ledger")
        elif legs != result.request.ledger_legs():
            mismatches.append(f"approved {result.request.auth_id} is in the ledger with other legs: {legs}")
    posted = [
        auth_id for key in state.ledger_transactions if (auth_id := auth_id_from_ledger_key(key)) is not None
    ]
    for auth_id in posted:
        sent = by_id.get(auth_id)
        if sent is None:
            mismatches.append(f"ledger has {ledger_key(auth_id)}, which the card network never sent")
        elif sent.outcome != "approved":
            mismatches.append(f"{sent.outcome} {auth_id} was posted to the ledger")

    if state.ledger_total != 0:
        mismatches.append(f"ledger balances sum to {state.ledger_total}, not 0")
    if not state.ledger_consistent:
        mismatches.append("ledger running balances differ from the sum of its postings")
    for account_id, seeded in sorted(seeded_balances.items()):
        opening = state.opening_balances.get(account_id)
        if opening != seeded:
            mismatches.append(f"account {account_id} opened with {opening}, seeded with {seeded}")
        available = state.available_balances.get(account_id)
        in_ledger = state.ledger_balances.get(customer_ledger_account(account_id), 0)
        if available != in_ledger:
            mismatches.append(
                f"account {account_id}: accounts says {available} available, ledger says {in_ledger}"
            )

    if state.outbox_pending:
        mismatches.append(f"{state.outbox_pending} after-response steps still pending in the payments outbox")
    mismatches += [
        f"approved {result.request.auth_id} has no feed entry"
        for result in approved
        if result.request.auth_id not in state.feed_auth_ids
    ]
    mismatches += [
        f"{result.outcome} {result.request.auth_id} sent no notification"
        for result in (*approved, *declined)
        if result.request.auth_id not in state.notified_auth_ids
    ]

    listed = mismatches[:MAX_LISTED]
    if len(mismatches) > MAX_LISTED:
        listed.append(f"... and {len(mismatches) - MAX_LISTED} more")
    return IntegrityReport(
        approved=len(approved),
        declined=len(declined),
        failed=sum(result.outcome == "failed" for result in results),
        ledger_transactions=len(posted),
        outbox_pending=state.outbox_pending,
        mismatches=tuple(listed),
    )


async def read_bank_state(session: aiohttp.ClientSession, layout: Layout) -> BankState:
    """Replay the payments outbox until nothing is pending (a few rounds at most), then read every service.

    Reads go straight to a replica, not through meshd: the check must not depend on what it is checking.
    """
    payments, ledger = layout.of("payments")[0].url, layout.of("ledger")[0].url
    accounts, feed = layout.of("accounts")[0].url, layout.of("feed")[0].url
    notifications = layout.of("notifications")[0].url
    pending = 0
    for _ in range(REPLAY_ROUNDS):
        pending = _int((await _post(session, f"{payments}/outbox/replay"))["pending"])
        if pending == 0:
            break
    transactions, balances, account_list, entries, pushes = await asyncio.gather(
        _get(session, f"{ledger}/transactions"),
        _get(session, f"{ledger}/balances"),
        _get(session, f"{accounts}/accounts"),
        _get(session, f"{feed}/feed"),
        _get(session, f"{notifications}/notifications"),
    )
    return BankState(
        ledger_transactions={
            str(item["key"]): ledger_parse_legs(item["legs"]) for item in _items(transactions, "transactions")
        },
        ledger_balances={str(name): _int(value) for name, value in _mapping(balances, "balances").items()},
        ledger_total=_int(balances["total"]),
        ledger_consistent=bool(balances["consistent"]),
        opening_balances={str(a["id"]): _int(a["opening_balance"]) for a in _items(account_list, "accounts")},
        available_balances={str(a["id"]): _int(a["available"]) for a in _items(account_list, "accounts")},
        feed_auth_ids=frozenset(str(entry["auth_id"]) for entry in _items(entries, "entries")),
        notified_auth_ids=frozenset(str(push["auth_id"]) for push in _items(pushes, "notifications")),
        outbox_pending=pending,
    )


async def _get(session: aiohttp.ClientSession, url: str) -> dict[str, object]:
    async with session.get(url, timeout=READ_TIMEOUT) as response:
        response.raise_for_status()
        body: dict[str, object] = await response.json()
        return body


async def _post(session: aiohttp.ClientSession, url: str) -> dict[str, object]:
    async with session.post(url, timeout=READ_TIMEOUT) as response:
        response.raise_for_status()
        body: dict[str, object] = await response.json()
        return body


def _items(body: Mapping[str, object], key: str) -> list[dict[str, object]]:
    value = body[key]
    if not isinstance(value, list):
        raise ValueError(f"{key} is not a list")
    return [item for item in value if isinstance(item, dict)]


def _mapping(body: Mapping[str, object], key: str) -> dict[str, object]:
    value = body[key]
    if not isinstance(value, dict):
        raise ValueError(f"{key} is not an object")
    return value


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    return value
