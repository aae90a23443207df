"""A deterministic discrete-event simulation of one client balancing over modelled replicas.

How this works. Requests arrive open-loop (Poisson, `rate` per second) for `duration_s`
simulated seconds. Each arrival asks the balancer for a node, calls `start()` and schedules
its completion at a time drawn from that replica's model; completions call `finish()` in time
order. A replica with `concurrency` serves at most that many requests at once and queues the
rest (FIFO), so overload shows up as latency; without it every request is served at once.
Time is a fake clock advanced from event to event and randomness one `Random(seed)`, so the
same arguments always give the same result. No sockets, no sleeps: 100k requests take about
0.3 s of wall time.

Latency of a successful request is `latency_ms * exp(sigma * N(0, 1)) + extra_ms` (lognormal
around `latency_ms`, so its median is `latency_ms + extra_ms`) plus any queueing; a failure
(probability `failure_rate`) takes `failure_latency_ms` instead.

Used by the balancer tests and by `bench`.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from balancers.base import Balancer, BalancerStatistics
from balancers.configs import AccrualConfig, ConsecutiveFailuresConfig
from balancers.node import Node
from balancers.registry import BALANCERS, BalancerConfig

__all__ = ["ReplicaModel", "SimResult", "simulate", "standard_replicas"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaModel:
    name: str
    latency_ms: float = 10.0
    sigma: float = 0.25
    extra_ms: float = 0.0
    failure_rate: float = 0.0
    failure_latency_ms: float = 1.0
    weight: float = 1.0
    concurrency: int | None = None

    def __post_init__(self) -> None:
        if self.latency_ms < 0 or self.extra_ms < 0 or self.failure_latency_ms < 0:
            raise ValueError("latencies must not be negative")
        if self.sigma < 0:
            raise ValueError("sigma must not be negative")
        if not 0.0 <= self.failure_rate <= 1.0:
            raise ValueError("failure_rate must be between 0 and 1")
        if not self.weight > 0:
            raise ValueError("weight must be positive")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")


@dataclass(frozen=True, slots=True)
class SimResult:
    """Outcome of one run. Latency percentiles are over successful requests, in milliseconds."""

    kind: str
    requests: int
    successes: int
    failures: int
    success_rate: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    shares: dict[str, float] = field(hash=False)
    """Fraction of all requests sent to each replica, by name."""
    statistics: BalancerStatistics


def standard_replicas(n: int = 10, *, latency_ms: float = 10.0) -> tuple[ReplicaModel, ...]:
    """`n` replicas of which `slow` is 100 ms slower and `failing` fails half its requests fast."""
    if n < 3:
        raise ValueError("need at least 3 replicas")
    healthy = [ReplicaModel(name=f"r{i}", latency_ms=latency_ms) for i in range(n - 2)]
    return (
        *healthy,
        ReplicaModel(name="slow", latency_ms=latency_ms, extra_ms=100.0),
        ReplicaModel(name="failing", latency_ms=latency_ms, failure_rate=0.5, failure_latency_ms=1.0),
    )


@dataclass(frozen=True, slots=True)
class _Member:
    key: int
    weight: float


def simulate(
    kind: str,
    replicas: Sequence[ReplicaModel],
    rate: float,
    duration_s: float,
    seed: int,
    *,
    balancer: BalancerConfig | None = None,
    accrual: AccrualConfig | None = None,
) -> SimResult:
    """Run `kind` (a key of BALANCERS, or `balancer` for a specific config) over `replicas`.

    `accrual` defaults to linkerd's default policy (5 consecutive failures, jittered 5..300 s).
    """
    if not replicas:
        raise ValueError("need at least one replica")
    if not rate > 0 or not duration_s > 0:
        raise ValueError("rate and duration must be positive")
    config = balancer if balancer is not None else BALANCERS[kind]()
    rng = random.Random(seed)
    now = 0.0

    def clock() -> float:
        return now

    lb: Balancer[_Member] = config.build(
        clock, rng, accrual if accrual is not None else ConsecutiveFailuresConfig()
    )
    lb.update([_Member(i, r.weight) for i, r in enumerate(replicas)])

    n = len(replicas)
    mus = [r.latency_ms / 1000.0 for r in replicas]
    sigmas = [r.sigma for r in replicas]
    extras = [r.extra_ms / 1000.0 for r in replicas]
    fail_rates = [r.failure_rate for r in replicas]
    fail_latencies = [r.failure_latency_ms / 1000.0 for r in replicas]
    limits = [r.concurrency for r in replicas]
    busy = [0] * n
    queues: list[deque[tuple[float, float, Node[_Member]]]] = [deque() for _ in range(n)]
    picks = [0] * n
    latencies: list[float] = []
    failures = 0

    # completion events: (time, seq, replica, arrival, started, node, failed)
    events: list[tuple[float, int, int, float, float, Node[_Member], bool]] = []
    seq = 0
    rand = rng.random
    gauss = rng.gauss
    expovariate = rng.expovariate
    push = heapq.heappush
    pop = heapq.heappop

    def serve(i: int, arrival: float, started: float, node: Node[_Member]) -> None:
        nonlocal seq
        if rand() < fail_rates[i]:
            service, failed = fail_latencies[i], True
        else:
            sigma = sigmas[i]
            service = (mus[i] * math.exp(sigma * gauss(0.0, 1.0)) if sigma else mus[i]) + extras[i]
            failed = False
        seq += 1
        push(events, (now + service, seq, i, arrival, started, node, failed))

    next_arrival = expovariate(rate)
    while True:
        if events and (events[0][0] <= next_arrival or next_arrival >= duration_s):
            t, _, i, arrival, started, node, failed = pop(events)
            now = t
            node.finish(started, failure=failed)
            if failed:
                failures += 1
            else:
                latencies.append(t - arrival)
            queue = queues[i]
            if queue:
                q_arrival, q_started, q_node = queue.popleft()
                serve(i, q_arrival, q_started, q_node)
            else:
                busy[i] -= 1
        elif next_arrival < duration_s:
            now = next_arrival
            node = lb.pick()
            i = node.member.key
            picks[i] += 1
            started = node.start()
            limit = limits[i]
            if limit is None or busy[i] < limit:
                busy[i] += 1
                serve(i, now, started, node)
            else:
                queues[i].append((now, started, node))
            next_arrival = now + expovariate(rate)
        else:
            break

    requests = sum(picks)
    latencies.sort()
    return SimResult(
        kind=config.KIND,
        requests=requests,
        successes=requests - failures,
        failures=failures,
        success_rate=(requests - failures) / requests if requests else 1.0,
        p50_ms=_percentile(latencies, 0.50),
        p90_ms=_percentile(latencies, 0.90),
        p99_ms=_percentile(latencies, 0.99),
        p999_ms=_percentile(latencies, 0.999),
        shares={r.name: (picks[i] / requests if requests else 0.0) for i, r in enumerate(replicas)},
        statistics=lb.statistics(),
    )


def _percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted seconds, in milliseconds (0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(0, math.ceil(q * len(ordered)) - 1)
    return ordered[rank] * 1000.0
