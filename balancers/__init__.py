"""balancers: load balancing and failure accrual as a pure library (no sockets, no asyncio).

meshd builds a balancer from its config (`BALANCERS[kind](...).build(clock, rng, accrual)`),
feeds it endpoint sets with `update()`, and for every attempt calls `pick()`, then
`node.start()` and `node.finish(started, failure=...)`. See docs/load-balancing.md.
"""

from balancers.accrual import AccrualPolicy
from balancers.backoff import (
    BackoffConfig,
    ConstantBackoffConfig,
    ExponentialBackoffConfig,
    JitteredBackoffConfig,
)
from balancers.base import Balancer, BalancerStatistics, Clock, Member, NodeState, NoNodesAvailable
from balancers.configs import (
    AccrualConfig,
    ConsecutiveFailuresConfig,
    EwmaConfig,
    NoAccrualConfig,
    P2CConfig,
    RoundRobinConfig,
    SuccessRateConfig,
)
from balancers.node import Node
from balancers.registry import ACCRUALS, BACKOFFS, BALANCERS, BalancerConfig

__all__ = [
    "ACCRUALS",
    "BACKOFFS",
    "BALANCERS",
    "AccrualConfig",
    "AccrualPolicy",
    "BackoffConfig",
    "Balancer",
    "BalancerConfig",
    "BalancerStatistics",
    "Clock",
    "ConsecutiveFailuresConfig",
    "ConstantBackoffConfig",
    "EwmaConfig",
    "ExponentialBackoffConfig",
    "JitteredBackoffConfig",
    "Member",
    "NoAccrualConfig",
    "NoNodesAvailable",
    "Node",
    "NodeState",
    "P2CConfig",
    "RoundRobinConfig",
    "SuccessRateConfig",
]
