"""What a balancer is given: members (meshd's endpoints, opaque but for `key` and `weight`) and a clock.

The lowest module of `balancers`: the node, the membership, every balancer kind and the
interface in `base.py` build on these names, and this module imports none of them.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Protocol, TypeVar

__all__ = ["Clock", "M", "Member"]

Clock = Callable[[], float]
"""Monotonic seconds. meshd passes `clock.now`; tests pass a fake."""


class Member(Protocol):
    """What a balancer needs to know about an endpoint: who it is and how much traffic it wants."""

    @property
    def key(self) -> Hashable: ...

    @property
    def weight(self) -> float: ...


M = TypeVar("M", bound=Member)
