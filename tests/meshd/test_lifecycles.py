"""Lifecycles: services, clients, bindings and namer watches unused for `bindingCache.idleTtlSecs`
are dropped by the router's sweep, and nothing that is in use is (issue 14, part 5).

These drive a router directly with a fake clock and a namer that counts its holders (no sockets;
tests/integration/test_lifecycles.py does it end to end with 100,000 names).
"""

from __future__ import annotations

import pathlib
import random

import pytest
import yaml

from meshd.config.errors import ConfigError
from meshd.config.loader import load_config
from meshd.config.model import MeshdConfig
from meshd.discovery.addr import Addr, Address, Bound
from meshd.observable import Observable
from meshd.pipeline.stats import MAX_SERVICES
from meshd.router import Router
from meshd.runtime import Runtime
from meshd.transformers import DaemonSetTransformer, LocalNodeTransformer
from routing.namer import BoundName
from routing.nametree import NEG, Leaf, NameTree
from routing.path import Path
from tests.support.clock import FakeClock

IDLE_TTL_S = 60


class CountingNamer:
    """`/#/fake/<name>`: names starting with `up` exist (one replica each), the rest are negative.
    Counts the holders of each id: `addr()` takes one, `release()` gives one back."""

    def __init__(self) -> None:
        self._prefix = Path.read("/#/fake")
        self._version: Observable[int] = Observable(0)
        self.holders: dict[Path, int] = {}
        self.watches: dict[Path, Observable[Addr]] = {}

    @property
    def prefix(self) -> Path:
        return self._prefix

    @property
    def version(self) -> Observable[int]:
        return self._version

    def lookup(self, path: Path) -> NameTree[BoundName] | None:
        if not path or not path[0].startswith("up"):
            return NEG
        return Leaf(BoundName(id=self._prefix.concat(path.take(1)), residual=path.drop(1)))

    def addr(self, id: Path) -> Observable[Addr]:
        self.holders[id] = self.holders.get(id, 0) + 1
        watch = self.watches.get(id)
        if watch is None:
            node = "node-a" if id[-1].endswith("a") else "node-b"
            watch = self.watches[id] = Observable(Bound(frozenset({Address("127.0.0.1", 9, node_name=node)})))
        return watch

    def release(self, id: Path) -> None:
        self.holders[id] -= 1
        if self.holders[id] == 0:
            del self.holders[id]
            del self.watches[id]

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


def make_router(namer: CountingNamer | None = None, **router: object) -> tuple[Router, FakeClock]:
    config = {
        "label": "outgoing",
        "servers": [{"ip": "127.0.0.1", "port": 0}],
        "dtab": "/svc => /#/fake;",
        "bindingCache": {"idleTtlSecs": IDLE_TTL_S},
        **router,
    }
    cfg = load_config(yaml.safe_dump({"routers": [config]}), MeshdConfig)
    clock = FakeClock()
    runtime = Runtime(clock=clock, rng=random.Random(1), base_dir=pathlib.Path("."))
    namers = {namer.prefix: namer} if namer is not None else {}
    return Router(cfg.routers[0], runtime, namers), clock  # type: ignore[dict-item]


def idle(router: Router, clock: FakeClock, seconds: float, *, keep: tuple[str, ...] = ()) -> None:
    """Let `seconds` pass, one sweep a second, using the services named in `keep` every second."""
    for _ in range(int(seconds)):
        clock.advance(1.0)
        for name in keep:
            router.service_for(svc(name))
        router.sweep()


def svc(name: str) -> Path:
    return Path.read(f"/svc/{name}")


def fake(name: str) -> Path:
    return Path.read(f"/#/fake/{name}")


def test_binding_cache_idle_ttl_is_configurable_with_linkerds_default() -> None:
    def router_config(**binding_cache: object) -> MeshdConfig:
        base = {"label": "r", "servers": [{"port": 0}], **({"bindingCache": binding_cache} if binding_cache else {})}
        return load_config(yaml.safe_dump({"routers": [base]}), MeshdConfig)

    assert router_config().routers[0].binding_cache.idle_ttl_secs == 600
    assert router_config(idleTtlSecs=30).routers[0].binding_cache.idle_ttl_secs == 30
    with pytest.raises(ConfigError, match="idleTtlSecs"):
        router_config(idleTtlSecs=0)


async def test_idle_services_and_their_bindings_are_dropped_and_used_ones_kept() -> None:
    namer = CountingNamer()
    router, clock = make_router(namer)
    for name in ("accounts", "idle", "upa"):
        await router.binder.bind(svc(name), "")
        router.service_for(svc(name))
    assert set(router.services) == {svc("accounts"), svc("idle"), svc("upa")}

    idle(router, clock, IDLE_TTL_S - 15, keep=("accounts",))
    assert len(router.services) == 3  # not idle for the idle time yet: nothing dropped
    idle(router, clock, 30, keep=("accounts",))
    assert set(router.services) == {svc("accounts")}
    assert set(router.binder.cache) == {(svc("accounts"), "")}
    assert router.idle_evicted_services == 2


async def test_a_named_service_dropped_while_idle_keeps_its_budget_and_counters_and_comes_back_with_them() -> None:
    router, clock = make_router()
    router.service_for(svc("accounts"))
    state = router.services[svc("accounts")]
    assert not state.folded
    state.retries.response = 3
    state.timeouts.total = 2
    budget = state.budget

    idle(router, clock, IDLE_TTL_S + 15)
    assert svc("accounts") not in router.services
    kept = router.named["/svc/accounts"]  # still exported under its name (meshd/admin/metrics.py)
    assert kept.retries.response == 3 and kept.timeouts.total == 2 and kept.budget is budget

    router.service_for(svc("accounts"))
    again = router.services[svc("accounts")]
    assert again is not state  # a new pipeline ...
    assert again.budget is budget and again.retries is state.retries and again.timeouts is state.timeouts
    assert router.named["/svc/accounts"] is again
    assert again.label == "/svc/accounts"


def test_a_folded_service_with_a_request_in_flight_is_kept_however_long_it_runs() -> None:
    router, clock = make_router()
    router.stats.max_services = 0  # every name folded
    router.service_for(svc("slow"))
    slow = router.services[svc("slow")]
    assert slow.folded
    slow.in_flight = 1  # what `_counting_in_flight` keeps while a request is inside its pipeline
    idle(router, clock, 3 * IDLE_TTL_S)
    assert router.services[svc("slow")] is slow
    slow.in_flight = 0
    idle(router, clock, 15)
    assert svc("slow") not in router.services


def test_an_idle_client_is_closed_and_releases_its_namer_watch_through_the_transformers() -> None:
    namer = CountingNamer()
    router, clock = make_router(namer)
    router.transformers = [
        DaemonSetTransformer(Path.read("/#/fake/daemons"), Observable(Bound(frozenset())), "direct"),
        LocalNodeTransformer("node-a", "all"),
    ]
    busy, quiet = router.client_for(fake("upa")), router.client_for(fake("upb"))
    assert namer.holders == {fake("upa"): 1, fake("upb"): 1}
    source = namer.watches[fake("upb")]
    assert source.subscriber_count == 1  # the daemonset transformer's mapping
    assert router.transformers[0].statistics().clients == 2  # type: ignore[attr-defined]

    quiet.forwarded = 4  # attempts sent to a forwarding meshd: the router keeps the count (a counter)
    # `busy` has an attempt pending on its replica: never dropped, however long it takes
    node = busy.balancer.nodes()[0]
    started = node.start()
    idle(router, clock, IDLE_TTL_S + 15)
    assert set(router.clients) == {fake("upa")}
    assert namer.holders == {fake("upa"): 1}  # upb's watch released ...
    assert source.subscriber_count == 0  # ... after every transformer stopped following it
    assert router.transformers[0].statistics().clients == 1  # type: ignore[attr-defined]
    assert router.idle_evicted_clients == 1 and router.evicted_forwarded == 4

    node.finish(started, failure=False)
    idle(router, clock, 15)
    assert router.clients == {} and namer.holders == {} and namer.watches == {}

    # a name that comes back gets a new client, and a new watch
    again = router.client_for(fake("upb"))
    assert again is not quiet and namer.holders == {fake("upb"): 1}


def test_a_look_at_an_address_set_holds_no_watch() -> None:
    namer = CountingNamer()
    router, _ = make_router(namer)
    assert isinstance(router.addr_of(fake("upa")).get(), Bound)  # the delegator's and the admin's look
    assert namer.holders == {}
    router.client_for(fake("upa"))
    router.addr_of(fake("upa"))
    assert namer.holders == {fake("upa"): 1}


def test_many_idle_names_leave_only_the_working_set() -> None:
    namer = CountingNamer()
    router, clock = make_router(namer)
    for i in range(3 * MAX_SERVICES):
        router.service_for(svc(f"name{i}"))
        router.client_for(fake(f"up{i}"))
    idle(router, clock, IDLE_TTL_S + 15, keep=("name7",))
    assert set(router.services) == {svc("name7")}
    assert router.clients == {} and namer.holders == {}
    assert len(router.named) == MAX_SERVICES  # the labelled names' counters stay, nothing else
