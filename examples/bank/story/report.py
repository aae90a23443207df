"""The demo's result as data (what `--json-out` writes and the system test reads) and as the printed tables."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from examples.bank.simulator import AuthResult, percentile
from examples.bank.story.grpc_hop import GrpcHopReport
from examples.bank.story.metrics import MeshCounters
from examples.bank.story.mtls import MtlsReport


@dataclass(frozen=True, slots=True, kw_only=True)
class PhaseReport:
    name: str
    seconds: float
    requests: int
    approved: int
    declined: int
    failed: int
    p50_ms: float
    p99_ms: float
    retries: float
    ejections: float
    notes: tuple[str, ...] = ()
    max_lag: int | None = None
    """The largest total consumer lag sampled during the phase (None: not on the log, or no sample)."""

    @property
    def approval_rate(self) -> float:
        """Approved among the decided (approved + declined): failures are not the customers' doing."""
        decided = self.approved + self.declined
        return self.approved / decided if decided else math.nan

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "approval_rate": _finite(self.approval_rate),
            "max_lag": self.max_lag,
            "seconds": round(self.seconds, 3),
            "requests": self.requests,
            "approved": self.approved,
            "declined": self.declined,
            "failed": self.failed,
            "p50_ms": _finite(self.p50_ms),
            "p99_ms": _finite(self.p99_ms),
            "retries": self.retries,
            "ejections": self.ejections,
            "notes": list(self.notes),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class SlowReplicaReport:
    replica: str
    added_latency_ms: float
    warmup_secs: float
    accounts_requests: int
    slow_requests: int

    @property
    def share(self) -> float:
        return self.slow_requests / self.accounts_requests if self.accounts_requests else math.nan

    def to_json(self) -> dict[str, object]:
        return {
            "replica": self.replica,
            "added_latency_ms": self.added_latency_ms,
            "warmup_secs": round(self.warmup_secs, 3),
            "accounts_requests": self.accounts_requests,
            "slow_requests": self.slow_requests,
            "share": _finite(self.share),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class CanaryStepReport:
    target_share: float
    accounts_requests: int
    v2_requests: int
    tolerance: float
    reload_confirmed: bool

    @property
    def measured_share(self) -> float:
        return self.v2_requests / self.accounts_requests if self.accounts_requests else math.nan

    @property
    def within_tolerance(self) -> bool:
        return abs(self.measured_share - self.target_share) <= self.tolerance

    def to_json(self) -> dict[str, object]:
        return {
            "target_share": self.target_share,
            "accounts_requests": self.accounts_requests,
            "v2_requests": self.v2_requests,
            "measured_share": _finite(self.measured_share),
            "tolerance": _finite(self.tolerance),
            "within_tolerance": self.within_tolerance,
            "reload_confirmed": self.reload_confirmed,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class IntegrityReport:
    approved: int
    declined: int
    failed: int
    ledger_transactions: int
    outbox_pending: int
    mismatches: tuple[str, ...]
    on_the_log: bool = False
    events: int = 0
    duplicates_delivered: int = 0
    catch_up_secs: float = 0.0
    #: approvals the ledger's catch-up consumer posted (payments' own call had failed)
    ledger_caught_up: int = 0

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "approved": self.approved,
            "declined": self.declined,
            "failed": self.failed,
            "ledger_transactions": self.ledger_transactions,
            "outbox_pending": self.outbox_pending,
            "mismatches": list(self.mismatches),
            "on_the_log": self.on_the_log,
            "events": self.events,
            "duplicates_delivered": self.duplicates_delivered,
            "catch_up_secs": round(self.catch_up_secs, 3),
            "ledger_caught_up": self.ledger_caught_up,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoResult:
    workdir: str
    duration_secs: float
    rate: float
    kills: int
    phases: tuple[PhaseReport, ...]
    slow_replica: SlowReplicaReport
    canary: tuple[CanaryStepReport, ...]
    integrity: IntegrityReport
    payroll: dict[str, object] = field(default_factory=dict)
    replay: dict[str, object] = field(default_factory=dict)
    #: the node-to-node hop over mutual TLS and the caller it refused (examples/bank/story/mtls.py)
    mtls: MtlsReport | None = None
    #: the payments -> ledger gRPC hop as meshd counted it (examples/bank/story/grpc_hop.py); None without it
    grpc_hop: GrpcHopReport | None = None

    @property
    def ok(self) -> bool:
        """The exit status: the integrity check decides; the other figures are for people (and the system test)."""
        return self.integrity.ok

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "workdir": self.workdir,
            "duration_secs": self.duration_secs,
            "rate": self.rate,
            "kills": self.kills,
            "phases": [phase.to_json() for phase in self.phases],
            "slow_replica": self.slow_replica.to_json(),
            "canary": [step.to_json() for step in self.canary],
            "integrity": self.integrity.to_json(),
            "payroll": dict(self.payroll),
            "replay": dict(self.replay),
            "mtls": self.mtls.to_json() if self.mtls is not None else None,
            "grpc_hop": self.grpc_hop.to_json() if self.grpc_hop is not None else None,
        }


def summarise_phase(
    name: str,
    *,
    start: float,
    end: float,
    results: Sequence[AuthResult],
    counters: MeshCounters,
    notes: Sequence[str] = (),
    max_lag: int | None = None,
) -> PhaseReport:
    """The phase's row: the authorisations *intended* to be sent during it, and meshd's counter deltas."""
    mine = [result for result in results if start <= result.intended_at < end]
    latencies = [result.latency_ms for result in mine]
    return PhaseReport(
        name=name,
        seconds=end - start,
        requests=len(mine),
        approved=sum(result.outcome == "approved" for result in mine),
        declined=sum(result.outcome == "declined" for result in mine),
        failed=sum(result.outcome == "failed" for result in mine),
        p50_ms=percentile(latencies, 0.50),
        p99_ms=percentile(latencies, 0.99),
        retries=counters.retries,
        ejections=counters.ejections,
        notes=tuple(notes),
        max_lag=max_lag,
    )


def render(result: DemoResult) -> str:
    lines = [
        "",
        f"{'phase':<8} {'secs':>5} {'requests':>8} {'approved':>8} {'declined':>8} {'failed':>6} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'retries':>7} {'ejections':>9} {'approve%':>8} {'lag max':>7}",
    ]
    for phase in result.phases:
        lag = "-" if phase.max_lag is None else str(phase.max_lag)
        lines.append(
            f"{phase.name:<8} {phase.seconds:>5.1f} {phase.requests:>8} {phase.approved:>8} {phase.declined:>8} "
            f"{phase.failed:>6} {phase.p50_ms:>7.1f} {phase.p99_ms:>7.1f} {phase.retries:>7.0f} {phase.ejections:>9.0f} "
            f"{phase.approval_rate:>8.1%} {lag:>7}"
        )
        lines += [f"{'':<8} - {note}" for note in phase.notes]
    slow = result.slow_replica
    lines += [
        "",
        *(
            [
                f"income: {result.payroll['salaries']} salaries on {result.payroll['paydays']} paydays "
                f"(every {result.payroll['period_secs']}s, {result.payroll['salary_cents']} cents each), "
                "published to the income topic through meshd"
            ]
            if result.payroll
            else []
        ),
        "",
        f"slow replica: {slow.replica} (+{slow.added_latency_ms:.0f} ms) served {slow.slow_requests} of "
        f"{slow.accounts_requests} accounts requests ({slow.share:.1%}) after a {slow.warmup_secs:.1f}s warm-up",
        "",
        f"{'canary':<8} {'v2 target':>9} {'requests':>8} {'to v2':>6} {'measured':>8} {'tolerance':>9}  within",
    ]
    for step in result.canary:
        reload_note = "" if step.reload_confirmed else "  (reload not confirmed by meshd's metrics)"
        lines.append(
            f"{'':<8} {step.target_share:>9.0%} {step.accounts_requests:>8} {step.v2_requests:>6} "
            f"{step.measured_share:>8.1%} {'±' + format(step.tolerance, '.1%'):>9}  "
            f"{'yes' if step.within_tolerance else 'NO'}{reload_note}"
        )
    mtls = result.mtls
    if mtls is not None:
        lines += [
            "",
            f"mTLS: {mtls.hop_requests} ledger requests crossed the node-to-node hop over mutual TLS and HTTP/2 as "
            f"{mtls.caller} ({mtls.handshakes} handshakes: the requests share multiplexed connections)",
            f"mTLS: a caller presenting {mtls.refused_caller} was refused: {mtls.refused_status} {mtls.refused_error}",
        ]
    if result.grpc_hop is not None:
        lines += ["", result.grpc_hop.line()]
    integrity = result.integrity
    lines.append("")
    if integrity.ok:
        lines.append(
            f"integrity: OK - {integrity.approved} approved authorisations each in the ledger exactly once, "
            f"{integrity.declined} declined ones nowhere, balances add up, no after-response work pending"
        )
        if integrity.on_the_log:
            lines.append(
                f"event log: OK - {integrity.events} decision events, none lost; every consumer caught up "
                f"{integrity.catch_up_secs:.1f}s after the traffic stopped; {integrity.duplicates_delivered} "
                f"duplicate deliveries ignored by id; no dead letters; {integrity.ledger_caught_up} approvals "
                "posted to the ledger by its catch-up"
            )
        if result.replay:
            lines.append(
                f"replay: {result.replay['topic']} from offset 1 into the fresh group {result.replay['group']}: "
                f"{result.replay['events']} deliveries of {result.replay['ids']} distinct events in "
                f"{result.replay['seconds']}s (the integrity check compares them with the topic)"
            )
    else:
        lines.append(f"integrity: {len(integrity.mismatches)} MISMATCHES")
        lines += [f"  - {mismatch}" for mismatch in integrity.mismatches]
    return "\n".join(lines) + "\n"


def _finite(value: float) -> float | None:
    """JSON has no NaN or infinity: an undefined figure is null."""
    return value if math.isfinite(value) else None
