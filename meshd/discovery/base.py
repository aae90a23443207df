"""Namer: the interface every discovery plug-in implements (fs, dns, k8s).

A namer serves one prefix, `/#/<kind>` by default. Binding asks it synchronously about a
path (the segments after its prefix) with `lookup()`; it answers at once with what it knows
now: a name tree of `BoundName`s (usually one `Leaf`), `NEG` when the name does not exist,
or `None` while it does not know yet (it starts whatever background work is needed to find
out and bumps `version` when the answer may have changed). For every `BoundName.id` it
returned, `addr(id)` gives the live address set as an `Observable[Addr]`; balancers subscribe
to it. Every `addr(id)` call is matched by one `release(id)` once its caller is done with the
set (it has unsubscribed): the router does this when it drops an idle client, and right away
for a one-off look (delegator, admin). A namer counts its holders per id and closes the watch
when none is left (fs: at once, the directory scan goes on anyway; dns and k8s: after their
`idleTtlSecs`, unless the name is looked up meanwhile).

Namers never block the event loop and never raise out of `lookup()`/`addr()`: failures become
`Failed(reason)` on the observable, and the last `Bound` set keeps serving meanwhile. A namer may
also have `freshness() -> list[Freshness]` (every built-in one does): how old the data it serves
is, per name, for `meshd_discovery_last_update_age_seconds` and `meshd_discovery_stale`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from meshd.discovery.addr import Addr
from meshd.observable import Observable
from routing.namer import BoundName
from routing.nametree import NameTree
from routing.path import Path


@dataclass(frozen=True, slots=True)
class Freshness:
    """How current one name's data is, as a namer's optional `freshness()` reports it.

    `confirmed_at` is the instant (on the runtime's clock) at which the data the namer serves for
    `name` was last known to be current: the last successful scan (fs), resolution (dns), or the
    moment a healthy watch stopped being healthy (k8s: a live watch is current now). None: never
    confirmed. `stale`: the namer is serving last-known-good data after a failure.
    """

    name: str
    confirmed_at: float | None
    stale: bool


class Namer(Protocol):
    @property
    def prefix(self) -> Path:
        """The namer's prefix, e.g. Path.read('/#/fs')."""
        ...

    @property
    def version(self) -> Observable[int]:
        """Bumped whenever some `lookup()` answer may differ from before (binding caches watch it)."""
        ...

    def lookup(self, path: Path) -> NameTree[BoundName] | None: ...

    def addr(self, id: Path) -> Observable[Addr]: ...

    def release(self, id: Path) -> None:
        """The caller of one earlier `addr(id)` no longer uses it (see the module docstring)."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...
