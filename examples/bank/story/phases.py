"""The story the demo tells while card traffic flows: steady, chaos, slow replica, canary.

- steady: nothing happens; the baseline.
- chaos: every few seconds one ledger replica and one accounts replica are SIGKILLed and started again. The
  fs namer's files are *not* edited: meshd must keep authorisations succeeding with retries (requests lost
  with a dying replica, connections refused while it restarts) and failure accrual (stop picking it).
- slow: one accounts replica gets +100 ms on every request via its chaos knob; after a warm-up, its share of
  accounts traffic (from the replicas' own counters) shows whether the balancer noticed.
- canary: routes.yaml moves accounts to accounts-v2 at 5 %, 50 %, 100 %, then rolls back to 0 %; each step's
  measured v2 share comes from the replicas' counters, over requests sent after meshd confirmed the reload.
  During each step a few workers also read accounts through meshd, so the shares rest on more requests.

Phase lengths follow the total duration; a phase ends at its planned time unless its work overran (a slow
restart), and the next one starts when it really ended.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

import aiohttp

from examples.bank.simulator import SimClock
from examples.bank.story.canary import CANARY_STEPS, canary_tolerance
from examples.bank.story.cluster import Cluster
from examples.bank.story.metrics import MeshCounters
from examples.bank.story.probing import wait_until
from examples.bank.story.report import CanaryStepReport, SlowReplicaReport
from examples.bank.story.traffic import read_counts, served_between

SLOW_LATENCY_MS: Final = 100.0
PROBE_WORKERS: Final = 2
MAX_RELOAD_WAIT_SECS: Final = 3.0
RELAY_HANDOVER_TIMEOUT_SECS: Final = 30.0
RELAY_DRAIN_SECS: Final = 1.0
"""How long the relay leader is out of meshd's rotation before it is killed: four fs-namer polls (250 ms)."""

Log = Callable[[str], None]
T = TypeVar("T")
Phase = Callable[[float, float], Awaitable[tuple[T, list[str]]]]


@dataclass(frozen=True, slots=True)
class StoryPlan:
    """How long each phase lasts. Minimums keep a short run meaningful: chaos needs room for a few kills and
    restarts, a canary step for meshd's reload plus a measurement."""

    steady_secs: float
    chaos_secs: float
    slow_secs: float
    canary_step_secs: float

    @classmethod
    def for_duration(cls, duration_secs: float) -> StoryPlan:
        if duration_secs <= 0:
            raise ValueError(f"duration must be positive, got {duration_secs}")
        return cls(
            steady_secs=max(0.2 * duration_secs, 2.0),
            chaos_secs=max(0.3 * duration_secs, 4.0),
            slow_secs=max(0.2 * duration_secs, 3.0),
            canary_step_secs=max(0.3 * duration_secs / len(CANARY_STEPS), 2.5),
        )

    @property
    def kill_interval_secs(self) -> float:
        """ "Every few seconds": four rounds of kills per chaos phase, one to five seconds apart."""
        return min(max(self.chaos_secs / 4, 1.0), 5.0)

    @property
    def total_secs(self) -> float:
        return self.steady_secs + self.chaos_secs + self.slow_secs + self.canary_step_secs * len(CANARY_STEPS)


@dataclass(frozen=True, slots=True)
class PhaseWindow:
    """When a phase ran (on the simulator's clock) and what meshd counted meanwhile."""

    name: str
    start: float
    end: float
    counters: MeshCounters
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StoryOutcome:
    windows: tuple[PhaseWindow, ...]
    kills: int
    slow_replica: SlowReplicaReport
    canary: tuple[CanaryStepReport, ...]


class Story:
    """Runs the phases in order against a running cluster; card traffic runs beside it, started by the demo."""

    def __init__(
        self,
        cluster: Cluster,
        plan: StoryPlan,
        clock: SimClock,
        rng: random.Random,
        *,
        account_ids: Sequence[str],
        log: Log,
    ) -> None:
        self._cluster = cluster
        self._plan = plan
        self._clock = clock
        self._rng = rng
        self._account_ids = tuple(account_ids)
        self._log = log

    def __repr__(self) -> str:
        return f"Story({self._plan})"

    async def run(self, start: float) -> StoryOutcome:
        plan = self._plan
        await self._clock.sleep_until(start)
        steady, _ = await self._measure("steady", start, start + plan.steady_secs, self._steady)
        chaos, kills = await self._measure("chaos", steady.end, steady.end + plan.chaos_secs, self._chaos)
        slow, slow_report = await self._measure("slow", chaos.end, chaos.end + plan.slow_secs, self._slow)
        canary_end = slow.end + plan.canary_step_secs * len(CANARY_STEPS)
        canary, steps = await self._measure("canary", slow.end, canary_end, self._canary)
        return StoryOutcome((steady, chaos, slow, canary), kills, slow_report, steps)

    async def _measure(self, name: str, start: float, end: float, phase: Phase[T]) -> tuple[PhaseWindow, T]:
        """Run one phase until its planned end, with meshd's counters read on either side."""
        self._log(f"phase {name}: {end - start:.1f}s")
        before = await self._cluster.mesh_counters()
        outcome, notes = await phase(start, end)
        await self._clock.sleep_until(end)
        ended = max(end, self._clock.now())  # a phase that overran (slow restarts) is reported as it ran
        after = await self._cluster.mesh_counters()
        return PhaseWindow(name, start, ended, after.minus(before), tuple(notes)), outcome

    async def _steady(self, start: float, end: float) -> tuple[None, list[str]]:
        return None, []

    async def _chaos(self, start: float, end: float) -> tuple[int, list[str]]:
        layout, interval = self._cluster.layout, self._plan.kill_interval_secs
        # Consumers of the event log die too, mid-batch: what they had not acknowledged is delivered again.
        groups = (
            layout.of("ledger"),
            layout.of("accounts"),
            (*layout.of("merchants"), *layout.of("feed"), *layout.of("notifications")),
        )
        pools = [itertools.cycle(group) for group in groups if group]
        brokers = itertools.cycle(layout.brokers) if layout.brokers else None
        kills = broker_kills = rounds = 0
        handover = asyncio.create_task(self._relay_handover())
        tick = start + interval / 2
        while tick < end - interval / 4:  # four rounds, the last one with time left to restart
            await self._clock.sleep_until(tick)
            victims = tuple(next(pool) for pool in pools)
            crashes = [self._cluster.crash_and_restart(victim) for victim in victims]
            names = [victim.name for victim in victims]
            if brokers is not None and rounds % 2 == 0:  # a broker node every other round: one down at a time
                broker = next(brokers)
                crashes.append(self._cluster.crash_and_restart_broker(broker))
                names.append(broker.name)
                broker_kills += 1
            self._log(f"  SIGKILL {', '.join(names)}, then restart them")
            await asyncio.gather(*crashes)
            kills += len(victims)
            rounds += 1
            tick += interval
        relay_note = await handover
        notes = [
            f"{kills} replicas SIGKILLed and restarted (ledger, accounts and a consumer of the event log each "
            f"round), about every {interval:.1f}s; disco files untouched"
        ]
        if relay_note:
            notes.append(relay_note)
        if broker_kills:
            notes.append(f"{broker_kills} NATS nodes SIGKILLed and restarted (one of 3 at a time)")
        return kills, notes

    async def _relay_handover(self) -> str | None:
        """SIGKILL the payments replica that leads the outbox relay, and time until another replica holds the
        relay lock. The leader is first taken out of meshd's rotation (its fs file rewritten without it) so
        that no card authorisation is in flight on it when it dies: this kill is about the relay, not the
        card network, whose own chaos is the rest of the phase."""
        cluster, layout = self._cluster, self._cluster.layout
        payments = layout.of("payments")
        if len(payments) < 2:
            return None
        lease = await cluster.relay_lease()
        if lease is None:
            return "relay: nobody held the relay lock at the start of chaos"
        old = layout.replica(str(lease["holder"]))
        cluster.write_disco("payments", [replica for replica in payments if replica is not old])
        await self._clock.sleep_until(self._clock.now() + RELAY_DRAIN_SECS)
        self._log(f"  SIGKILL {old.name}, the outbox relay's leader (term {lease['term']}), drained first")
        await cluster.supervisor.kill(old.name)
        killed_at = self._clock.now()
        taken: list[dict[str, object]] = []

        async def handed_over() -> bool:
            current = await cluster.relay_lease()
            if current is not None and current["holder"] != old.name:
                taken.append(current)
                return True
            return False

        try:
            await wait_until(
                handed_over, timeout_secs=RELAY_HANDOVER_TIMEOUT_SECS, what="the relay hand-over"
            )
        except TimeoutError:
            pass
        took = self._clock.now() - killed_at
        await cluster.supervisor.restart(old.name)
        await cluster.wait_healthy(old)
        cluster.write_disco("payments", payments)
        if not taken:
            return (
                f"relay leader {old.name} SIGKILLed: NO other replica took over the relay within {took:.0f}s"
            )
        new = taken[0]
        self._log(f"  {new['holder']} took over the outbox relay after {took:.1f}s (term {new['term']})")
        return (
            f"relay leader {old.name} (term {lease['term']}) SIGKILLed after draining; {new['holder']} "
            f"took over the outbox relay {took:.1f}s later (term {new['term']})"
        )

    async def _slow(self, start: float, end: float) -> tuple[SlowReplicaReport, list[str]]:
        layout = self._cluster.layout
        slow = layout.of("accounts")[0]
        everyone = (*layout.of("accounts"), *layout.of("accounts-v2"))
        warmup = (end - start) / 3
        await self._cluster.set_chaos(slow, latency_ms=SLOW_LATENCY_MS)
        try:
            await self._clock.sleep_until(start + warmup)
            before = await read_counts(self._cluster.session, everyone)
            await self._clock.sleep_until(end)
            after = await read_counts(self._cluster.session, everyone)
        finally:
            await self._cluster.set_chaos(slow)
        served = served_between(before, after)
        report = SlowReplicaReport(
            replica=slow.name,
            added_latency_ms=SLOW_LATENCY_MS,
            warmup_secs=warmup,
            accounts_requests=sum(served.values()),
            slow_requests=served.get(slow.name, 0),
        )
        return report, [
            f"{slow.name} +{SLOW_LATENCY_MS:.0f} ms; {report.share:.1%} of accounts traffic after warm-up"
        ]

    async def _canary(self, start: float, end: float) -> tuple[tuple[CanaryStepReport, ...], list[str]]:
        steps: list[CanaryStepReport] = []
        step_start = start
        for share in CANARY_STEPS:
            step_end = step_start + self._plan.canary_step_secs
            steps.append(await self._canary_step(share, step_start, step_end))
            step_start = step_end
        return tuple(steps), [
            "accounts-v2 at " + " -> ".join(f"{share:.0%}" for share in CANARY_STEPS) + " (rollback)"
        ]

    async def _canary_step(self, share: float, start: float, end: float) -> CanaryStepReport:
        cluster, layout = self._cluster, self._cluster.layout
        v1, v2 = layout.of("accounts"), layout.of("accounts-v2")
        reloads_before = (await cluster.mesh_counters()).reloads
        cluster.route_accounts_to_v2(share)
        self._log(f"  routes.yaml: accounts-v2 at {share:.0%}")
        reload_deadline = start + min(MAX_RELOAD_WAIT_SECS, (end - start) / 2)
        confirmed = await self._wait_reload(reloads_before, deadline=reload_deadline)
        before = await read_counts(cluster.session, (*v1, *v2))
        await self._probe_accounts(until=end)
        after = await read_counts(cluster.session, (*v1, *v2))
        served = served_between(before, after)
        total = sum(served.values())
        return CanaryStepReport(
            target_share=share,
            accounts_requests=total,
            v2_requests=sum(served.get(replica.name, 0) for replica in v2),
            tolerance=canary_tolerance(share, total),
            reload_confirmed=confirmed,
        )

    async def _wait_reload(self, reloads_before: float, *, deadline: float) -> bool:
        """Wait until meshd counts a config reload; if it never does (no such metric), the wait itself is the
        settling time and the step is marked unconfirmed."""

        async def reloaded() -> bool:
            return (await self._cluster.mesh_counters()).reloads > reloads_before

        try:
            await wait_until(
                reloaded, timeout_secs=max(deadline - self._clock.now(), 0.01), what="routes reload"
            )
        except TimeoutError:
            return False
        return True

    async def _probe_accounts(self, *, until: float) -> None:
        """A few closed-loop readers of GET /accounts/{id} through meshd, until `until`."""
        session, url = self._cluster.session, self._cluster.layout.meshd_url

        async def reader() -> None:
            while self._clock.now() < until:
                account_id = self._rng.choice(self._account_ids)
                try:
                    async with session.get(
                        f"{url}/accounts/{account_id}", headers={"Host": "accounts"}
                    ) as reply:
                        await reply.read()
                except aiohttp.ClientError:
                    continue

        async with asyncio.TaskGroup() as group:
            for _ in range(PROBE_WORKERS):
                group.create_task(reader())
