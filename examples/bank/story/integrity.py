"""The check that ends the demo: did every approved authorisation move the money exactly once, and only those?

The card network's own records (the simulator's results) are compared with what the bank's services hold:

- every approved authorisation has exactly one ledger transaction, `auth:<id>`, debiting the customer and
  crediting the merchant by the authorised amount; no declined, failed or unknown id has one;
- the ledger balances: all balances sum to zero and equal the sum of the postings;
- for every customer, the accounts service's available balance equals the ledger balance (opening funding
  minus approved purchases), and the opening balance is the one the bank was seeded with;
- the after-response work is complete: no outbox step pending, a feed entry for every approved
  authorisation, a push for every approved or declined one;
- the asynchronous side (when the bank runs on the event log): every decided authorisation's event is on the
  decisions topic and on the enriched topic (no event lost), payments has nothing left to publish, and every
  consumer group has caught up with no dead letter. Feed entries and pushes are keyed by the authorisation id,
  so "exactly once after deduplication" is the same as "present"; the duplicates the consumers were actually
  delivered (and ignored) are counted and shown.

Reading the state first asks payments to replay its outbox, and waits (with a deadline) for the relay and the
consumers to catch up, so work that was only delayed is not reported.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp

from examples.bank.authorisation import (
    DECISIONS_TOPIC,
    ENRICHED_TOPIC,
    INCOME_TOPIC,
    auth_id_from_ledger_key,
    customer_ledger_account,
    ledger_key,
)
from examples.bank.ledger_book import Leg
from examples.bank.ledger_book import parse_legs as ledger_parse_legs
from examples.bank.simulator import AuthResult
from examples.bank.story.eventlog import ReplayResult
from examples.bank.story.report import IntegrityReport
from examples.bank.story.topology import Layout

MAX_LISTED: Final = 40
REPLAY_ROUNDS: Final = 5
CATCH_UP_POLL_SECS: Final = 0.2
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
    on_the_log: bool = False
    decision_event_ids: frozenset[str] = frozenset()
    enriched_event_ids: frozenset[str] = frozenset()
    events_unpublished: int = 0
    consumer_lag: Mapping[str, int] = field(default_factory=dict)
    """Each `topic/group`'s lag when the check read it (after waiting for it to reach 0)."""
    duplicates_delivered: int = 0
    dead_letters: int = 0
    catch_up_secs: float = 0.0
    #: approvals posted to the ledger by its catch-up consumer, not by payments' own call
    ledger_caught_up: int = 0


def check_integrity(
    results: Sequence[AuthResult],
    state: BankState,
    seeded_balances: Mapping[str, int],
    *,
    replay: ReplayResult | None = None,
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

    if state.on_the_log:
        decided = [*approved, *declined]
        mismatches += [
            f"{result.outcome} {result.request.auth_id} has no event on {DECISIONS_TOPIC}"
            for result in decided
            if result.request.auth_id not in state.decision_event_ids
        ]
        mismatches += [
            f"{result.outcome} {result.request.auth_id} has no event on {ENRICHED_TOPIC}"
            for result in decided
            if result.request.auth_id not in state.enriched_event_ids
        ]
        if state.events_unpublished:
            mismatches.append(f"{state.events_unpublished} events still unpublished in the payments outbox")
        mismatches += [
            f"consumer group {name} still lags by {lag}" for name, lag in state.consumer_lag.items() if lag
        ]
        if state.dead_letters:
            mismatches.append(f"{state.dead_letters} events were dead-lettered")
        if replay is not None and replay.ids != state.decision_event_ids:
            missing = len(state.decision_event_ids - replay.ids)
            mismatches.append(
                f"replaying {replay.topic} into {replay.group} gave {len(replay.ids)} events, not the "
                f"{len(state.decision_event_ids)} on the topic ({missing} missing)"
            )

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
        on_the_log=state.on_the_log,
        events=len(state.decision_event_ids),
        duplicates_delivered=state.duplicates_delivered,
        catch_up_secs=state.catch_up_secs,
        ledger_caught_up=state.ledger_caught_up,
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
    log_state = await read_log_state(session, layout) if layout.of("events") else None
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
        **(log_state or {}),
    )


CONSUMER_GROUPS: Final[tuple[tuple[str, str, tuple[str, ...]], ...]] = (
    (DECISIONS_TOPIC, "ledger", ("ledger",)),
    (DECISIONS_TOPIC, "merchants", ("merchants",)),
    (ENRICHED_TOPIC, "feed", ("feed",)),
    (ENRICHED_TOPIC, "notifications", ("notifications",)),
    (INCOME_TOPIC, "accounts", ("accounts", "accounts-v2")),
)
"""(topic, group, the services whose replicas are its members)."""
CATCH_UP_TIMEOUT_SECS: Final = 90.0


async def read_log_state(session: aiohttp.ClientSession, layout: Layout) -> dict[str, Any]:
    """Wait until payments published everything and every group caught up (or the deadline passed), then read
    both topics, the dead-letter topics and the consumers' duplicate counts."""
    events, payments = layout.of("events")[0].url, layout.of("payments")[0].url
    started = time.monotonic()
    lags: dict[str, int] = {}
    unpublished = 0
    while True:
        outbox = await _get(session, f"{payments}/outbox")
        unpublished = _int(_mapping(outbox, "events").get("pending", 0))
        for topic, group, _ in CONSUMER_GROUPS:
            lags[f"{topic}/{group}"] = _int(
                (await _get(session, f"{events}/topics/{topic}/groups/{group}"))["lag"]
            )
        if (
            unpublished == 0 and not any(lags.values())
        ) or time.monotonic() - started > CATCH_UP_TIMEOUT_SECS:
            break
        await asyncio.sleep(CATCH_UP_POLL_SECS)
    caught_up = time.monotonic() - started
    duplicates = 0
    for _, _, services in CONSUMER_GROUPS:
        for replica in (replica for service in services for replica in layout.of(service)):
            for consumer in _items(await _get(session, f"{replica.url}/_consumers"), "consumers"):
                duplicates += _int(consumer["duplicates"])
    decisions = await read_events(session, events, DECISIONS_TOPIC)
    dead = 0
    for topic, group, _ in CONSUMER_GROUPS:
        dead += len(await read_topic(session, events, f"dlq.{topic}.{group}"))
    return {
        "on_the_log": True,
        "decision_event_ids": frozenset(str(event["id"]) for event in decisions),
        "ledger_caught_up": caught_up_postings(decisions),
        "enriched_event_ids": frozenset(await read_topic(session, events, ENRICHED_TOPIC)),
        "events_unpublished": unpublished,
        "consumer_lag": lags,
        "duplicates_delivered": duplicates,
        "dead_letters": dead,
        "catch_up_secs": caught_up,
    }


async def read_topic(session: aiohttp.ClientSession, events_url: str, topic: str) -> list[str]:
    """Every event id on the topic, page by page."""
    return [str(event["id"]) for event in await read_events(session, events_url, topic)]


async def read_events(session: aiohttp.ClientSession, events_url: str, topic: str) -> list[dict[str, Any]]:
    """Every event on the topic (id, offset, payload), page by page."""
    events: list[dict[str, Any]] = []
    start = 1
    while True:
        page = _items(
            await _get(session, f"{events_url}/topics/{topic}/events?from={start}&limit=1000"), "events"
        )
        if not page:
            return events
        events += page
        start = _int(page[-1]["offset"]) + 1


def caught_up_postings(decisions: list[dict[str, Any]]) -> int:
    """Approvals whose ledger posting payments could not make while the card network waited (the call
    failed: a ledger replica killed under it), posted afterwards by the ledger's catch-up consumer."""
    count = 0
    for event in decisions:
        payload = event.get("payload")
        if isinstance(payload, dict) and payload.get("decision") == "approved" and payload.get("ledger_posted") is False:
            count += 1
    return count


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
