"""Test doubles for balancer tests: a minimal member type and builders (the clock is the one
FakeClock, tests/support/clock.py, re-exported here)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from balancers.base import Balancer, NodeState
from balancers.configs import AccrualConfig, NoAccrualConfig
from balancers.node import Node
from balancers.registry import BALANCERS
from tests.support.clock import FakeClock

__all__ = ["FakeClock", "Member", "build", "members", "state", "fail", "succeed", "KINDS"]


@dataclass(frozen=True)
class Member:
    key: str
    weight: float = 1.0


def members(n: int, weight: float = 1.0) -> list[Member]:
    return [Member(f"n{i}", weight) for i in range(n)]


def build(
    kind: str,
    clock: FakeClock,
    *,
    seed: int = 0,
    accrual: AccrualConfig | None = None,
    n: int = 0,
) -> Balancer[Member]:
    balancer: Balancer[Member] = BALANCERS[kind]().build(
        clock, random.Random(seed), accrual if accrual is not None else NoAccrualConfig()
    )
    if n:
        balancer.update(members(n))
    return balancer


KINDS = tuple(BALANCERS)


def state(node: Node[Member]) -> NodeState:
    """`node.state`, read through a call so type checkers do not narrow it between reads."""
    return node.state


def fail(node: Node[Member], times: int = 1) -> None:
    for _ in range(times):
        node.finish(node.start(), failure=True)


def succeed(node: Node[Member]) -> None:
    node.finish(node.start(), failure=False)
