"""The configs of balancers and failure accrual: what `loadBalancer` and `failureAccrual` in YAML build.

They live apart from the algorithms because the algorithms are compiled with mypyc (the proxy
calls them on every request) and these are not: the config loader reads their dataclass fields
and `KIND`, and their checks run on whatever the YAML held (a compiled class would check types
before `__post_init__` could say which key is wrong).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import ClassVar

from balancers.accrual import AccrualPolicyFactory, ConsecutiveFailures, NoAccrual, SuccessRate
from balancers.backoff import BACKOFFS, BackoffConfig, ExponentialBackoffConfig
from balancers.base import Clock, M
from balancers.least_loaded import LeastLoadedNode
from balancers.membership import Membership, NodeFactory
from balancers.node import Node
from balancers.p2c import P2CBalancer
from balancers.peak_ewma import PeakEwmaNode
from balancers.round_robin import RoundRobinBalancer

__all__ = [
    "AccrualConfig",
    "ConsecutiveFailuresConfig",
    "EwmaConfig",
    "NoAccrualConfig",
    "P2CConfig",
    "RoundRobinConfig",
    "SuccessRateConfig",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsecutiveFailuresConfig:
    KIND: ClassVar[str] = "consecutiveFailures"

    failures: int = 5
    backoff: BackoffConfig = field(default_factory=ExponentialBackoffConfig, metadata={"registry": BACKOFFS})

    def __post_init__(self) -> None:
        if self.failures < 1:
            raise ValueError("failures: must be at least 1")

    def build(self, rng: random.Random) -> AccrualPolicyFactory:
        backoff = self.backoff.build(rng)
        failures = self.failures
        return lambda: ConsecutiveFailures(failures, backoff)


@dataclass(frozen=True, slots=True, kw_only=True)
class SuccessRateConfig:
    KIND: ClassVar[str] = "successRate"

    success_rate: float = 0.8
    requests: int = 100
    backoff: BackoffConfig = field(default_factory=ExponentialBackoffConfig, metadata={"registry": BACKOFFS})

    def __post_init__(self) -> None:
        if not 0.0 <= self.success_rate <= 1.0:
            raise ValueError("successRate: must be between 0 and 1")
        if self.requests < 1:
            raise ValueError("requests: must be at least 1")

    def build(self, rng: random.Random) -> AccrualPolicyFactory:
        backoff = self.backoff.build(rng)
        success_rate, requests = self.success_rate, self.requests
        return lambda: SuccessRate(success_rate, requests, backoff)


@dataclass(frozen=True, slots=True, kw_only=True)
class NoAccrualConfig:
    KIND: ClassVar[str] = "none"

    def build(self, rng: random.Random) -> AccrualPolicyFactory:
        return NoAccrual


AccrualConfig = ConsecutiveFailuresConfig | SuccessRateConfig | NoAccrualConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class P2CConfig:
    """P2C least loaded: linkerd 1's default balancer (`Balancers.p2c(maxEffort = 5)`)."""

    KIND: ClassVar[str] = "p2c"

    max_effort: int = 5

    def __post_init__(self) -> None:
        if self.max_effort < 1:
            raise ValueError("maxEffort must be at least 1")

    def build(self, clock: Clock, rng: random.Random, accrual: AccrualConfig) -> P2CBalancer[M]:
        def node(member: M, owner: Membership[M], policies: AccrualPolicyFactory) -> Node[M]:
            return LeastLoadedNode(member, clock, policies(), owner)

        return _p2c(self.KIND, self.max_effort, clock, rng, accrual, node)


@dataclass(frozen=True, slots=True, kw_only=True)
class EwmaConfig:
    """P2C over Peak EWMA: meshd's default (`Balancers.p2cPeakEwma(decayTime = 10.seconds)`)."""

    KIND: ClassVar[str] = "ewma"

    decay_time_ms: int = 10000
    max_effort: int = 5

    def __post_init__(self) -> None:
        if self.decay_time_ms <= 0:
            raise ValueError("decayTimeMs must be positive")
        if self.max_effort < 1:
            raise ValueError("maxEffort must be at least 1")

    def build(self, clock: Clock, rng: random.Random, accrual: AccrualConfig) -> P2CBalancer[M]:
        decay_time_s = self.decay_time_ms / 1000.0

        def node(member: M, owner: Membership[M], policies: AccrualPolicyFactory) -> Node[M]:
            return PeakEwmaNode(member, clock, policies(), owner, decay_time_s)

        return _p2c(self.KIND, self.max_effort, clock, rng, accrual, node)


def _p2c(
    kind: str, max_effort: int, clock: Clock, rng: random.Random, accrual: AccrualConfig, node: NodeFactory[M]
) -> P2CBalancer[M]:
    return P2CBalancer(
        kind=kind, clock=clock, rng=rng, accrual=accrual.build(rng), node_factory=node, max_effort=max_effort
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundRobinConfig:
    """Smooth weighted round robin; no settings."""

    KIND: ClassVar[str] = "roundRobin"

    def build(self, clock: Clock, rng: random.Random, accrual: AccrualConfig) -> RoundRobinBalancer[M]:
        def node(member: M, owner: Membership[M], policies: AccrualPolicyFactory) -> Node[M]:
            return LeastLoadedNode(member, clock, policies(), owner)

        return RoundRobinBalancer(
            kind=self.KIND, clock=clock, rng=rng, accrual=accrual.build(rng), node_factory=node
        )
