"""Balancer, failure-accrual and accrual-backoff kinds -> their config classes.

YAML (`client:` section of a router), keys in camelCase of the config fields:

    loadBalancer: {kind: ewma, decayTimeMs: 10000}
    failureAccrual:
      kind: consecutiveFailures
      failures: 5
      backoff: {kind: exponential, startMs: 5000, maxMs: 300000}

meshd's default balancer is `ewma` (linkerd 1's is `p2c`); see docs/load-balancing.md.
"""

from __future__ import annotations

from typing import Final

from balancers.backoff import BACKOFFS
from balancers.configs import (
    ConsecutiveFailuresConfig,
    EwmaConfig,
    NoAccrualConfig,
    P2CConfig,
    RoundRobinConfig,
    SuccessRateConfig,
)

__all__ = [
    "ACCRUALS",
    "BACKOFFS",
    "BALANCERS",
    "BalancerConfig",
    "DEFAULT_ACCRUAL",
    "DEFAULT_BALANCER",
]

BalancerConfig = RoundRobinConfig | P2CConfig | EwmaConfig

BALANCERS: Final[dict[str, type[BalancerConfig]]] = {
    "roundRobin": RoundRobinConfig,
    "p2c": P2CConfig,
    "ewma": EwmaConfig,
}

ACCRUALS: Final[
    dict[str, type[ConsecutiveFailuresConfig] | type[SuccessRateConfig] | type[NoAccrualConfig]]
] = {
    "consecutiveFailures": ConsecutiveFailuresConfig,
    "successRate": SuccessRateConfig,
    "none": NoAccrualConfig,
}


DEFAULT_BALANCER: Final = "ewma"
DEFAULT_ACCRUAL: Final = "consecutiveFailures"
