"""The demo's asynchronous side: the payroll that keeps customers solvent, and the consumer-lag sampler.

**Payroll.** Without income, the seeded customers run out of money: a 15-minute run at 50/s once declined
22,192 of 36,039 authorisations, 97 % of them in the last phase. So the demo pays every customer a salary
every `period_secs`, sized to what the simulator spends on average per customer in that time (its purchase
distribution's mean, times the rate, divided among the customers). Income and spending then balance on
average whatever `--duration` and `--rate` are, and the approval rate stays where it starts. Salaries are
events on the `income` topic, published through meshd (`Host: events`) like any other call, in batches; each
has an id (`salary-<run>-<round>-<account>`) so a retried batch is stored once. The accounts service consumes
them (posting `income:<id>` to the ledger, then crediting the account).

**Lag.** Once a second the sampler reads every consumer group's lag from an events replica; the report shows
the largest total lag seen in each phase.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import aiohttp

from examples.bank.authorisation import INCOME_TOPIC
from examples.bank.simulator import UNKNOWN_ACCOUNT_RATE, SimClock

MEAN_PURCHASE_CENTS: Final = 0.9 * (100 + 3_000) / 2 + 0.1 * (3_000 + 20_000) / 2
"""The mean of `Cardholders.draw`'s amounts: 90 % uniform in 1-30, 10 % uniform in 30-200 (in cents)."""
PUBLISH_BATCH: Final = 500
PUBLISH_ATTEMPTS: Final = 12
"""Tries per payroll batch, 0.2 s to 2 s apart (about 15 s): long enough to ride out a broker node's restart."""
LAG_SAMPLE_SECS: Final = 1.0
TIMEOUT: Final = aiohttp.ClientTimeout(total=5.0)

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PayrollPlan:
    period_secs: float
    salary_cents: int

    @classmethod
    def for_traffic(cls, *, rate: float, customers: int, duration_secs: float) -> PayrollPlan:
        """About a dozen paydays per run (every 2 to 30 s), each paying what a customer spends on average
        between two paydays."""
        period = min(max(duration_secs / 12.0, 2.0), 30.0)
        spend_per_customer_per_sec = rate * (1.0 - UNKNOWN_ACCOUNT_RATE) * MEAN_PURCHASE_CENTS / customers
        return cls(period, max(1, round(spend_per_customer_per_sec * period)))


def salary_events(
    account_ids: Sequence[str], run_id: str, payday: int, amount: int
) -> list[dict[str, object]]:
    return [
        {
            "id": f"salary-{run_id}-{payday}-{account_id}",
            "payload": {"account_id": account_id, "amount": amount, "kind": "salary"},
        }
        for account_id in account_ids
    ]


@dataclass
class PayrollResult:
    paydays: int = 0
    salaries: int = 0
    cents: int = 0
    failed_batches: int = 0


async def run_payroll(
    session: aiohttp.ClientSession,
    meshd_url: str,
    clock: SimClock,
    *,
    plan: PayrollPlan,
    account_ids: Sequence[str],
    run_id: str,
    start: float,
    end: float,
    result: PayrollResult,
) -> None:
    """Pay everyone at start + period, start + 2 periods, ... until `end`."""
    payday = 1
    while (when := start + payday * plan.period_secs) < end:
        await clock.sleep_until(when)
        events = salary_events(account_ids, run_id, payday, plan.salary_cents)
        for first in range(0, len(events), PUBLISH_BATCH):
            batch = events[first : first + PUBLISH_BATCH]
            if await _publish(session, meshd_url, batch):
                result.salaries += len(batch)
                result.cents += len(batch) * plan.salary_cents
            else:
                result.failed_batches += 1
        result.paydays += 1
        payday += 1


async def _publish(session: aiohttp.ClientSession, meshd_url: str, batch: list[dict[str, object]]) -> bool:
    for attempt in range(PUBLISH_ATTEMPTS):
        try:
            async with session.post(
                f"{meshd_url}/topics/{INCOME_TOPIC}",
                json={"events": batch},
                headers={"Host": "events"},
                timeout=TIMEOUT,
            ) as response:
                if response.status == 200:
                    return True
        except (aiohttp.ClientError, TimeoutError) as exc:
            _log.warning("payroll: publish failed: %s", exc)
        await asyncio.sleep(min(0.2 * (attempt + 1), 2.0))  # the same ids again: stored once
    return False


@dataclass
class LagSamples:
    """(time, total lag over every consumer group) pairs."""

    samples: list[tuple[float, int]] = field(default_factory=list)

    def max_between(self, start: float, end: float) -> int | None:
        inside = [lag for when, lag in self.samples if start <= when < end]
        return max(inside) if inside else None


async def sample_lag(
    session: aiohttp.ClientSession, events_urls: Sequence[str], clock: SimClock, into: LagSamples
) -> None:
    """Read `/groups` from the first events replica that answers, once a second, until cancelled."""
    while True:
        for url in events_urls:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
                async with session.get(f"{url}/groups", timeout=TIMEOUT) as response:
                    groups = (await response.json())["groups"]
                    into.samples.append((clock.now(), sum(int(group["lag"]) for group in groups)))
                    break
        await clock.sleep_until(clock.now() + LAG_SAMPLE_SECS)


@dataclass(frozen=True, slots=True)
class ReplayResult:
    topic: str
    group: str
    events: int
    ids: frozenset[str]
    seconds: float

    def to_json(self) -> dict[str, object]:
        return {
            "topic": self.topic,
            "group": self.group,
            "events": self.events,
            "ids": len(self.ids),
            "seconds": round(self.seconds, 3),
        }


async def replay_into_fresh_group(
    session: aiohttp.ClientSession, meshd_url: str, topic: str, group: str, *, timeout_secs: float = 60.0
) -> ReplayResult:
    """Replay the whole topic into a brand-new consumer group through meshd: reset it to offset 1, then fetch
    and acknowledge until a fetch comes back empty. Answers the ids it received (a set: a redelivery counts once)
    and how many deliveries it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    headers = {"Host": "events"}
    async with session.post(
        f"{meshd_url}/topics/{topic}/replay",
        json={"group": group, "offset": 1},
        headers=headers,
        timeout=TIMEOUT,
    ) as response:
        response.raise_for_status()
    ids: set[str] = set()
    deliveries = 0
    base = f"{meshd_url}/topics/{topic}/groups/{group}"
    async with asyncio.timeout(timeout_secs):
        while True:
            async with session.post(
                f"{base}/fetch", json={"max": 100}, headers=headers, timeout=TIMEOUT
            ) as response:
                response.raise_for_status()
                events = (await response.json())["events"]
            if not events:
                break
            async with session.post(
                f"{base}/ack",
                json={"receipts": [e["receipt"] for e in events]},
                headers=headers,
                timeout=TIMEOUT,
            ) as response:
                response.raise_for_status()
            deliveries += len(events)
            ids.update(str(e["id"]) for e in events)
    return ReplayResult(topic, group, deliveries, frozenset(ids), loop.time() - started)
