"""The router's service table under invented names: bounded, never reset wholesale.

The first MAX_SERVICES names are named services (own counters, own label, never evicted); later
ones are folded (shared counters under `_other`) and, when the table is full, the least recently
used folded services with no request in flight are dropped. These tests drive the router's
service table directly (no sockets; tests/integration/test_invented_names.py does it end to end).
"""

from __future__ import annotations

import asyncio
import pathlib
import random

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.config.loader import load_config
from meshd.config.model import MeshdConfig
from meshd.http.body import Body
from meshd.http.messages import Request, Response
from meshd.pipeline.context import RouteContext
from meshd.pipeline.stats import MAX_SERVICES, OVERFLOW_SERVICE, RouterStats
from meshd.router import EVICT_BATCH, MAX_SERVICE_STATES, Router, ServiceState, _counting_in_flight
from meshd.runtime import Runtime
from routing.path import Path
from tests.support.clock import FakeClock


def make_router(base_dir: pathlib.Path = pathlib.Path(".")) -> Router:
    config = load_config(
        yaml.safe_dump(
            {"routers": [{"label": "outgoing", "servers": [{"ip": "127.0.0.1", "port": 0}], "dtab": "/svc => /#/fs;"}]}
        ),
        MeshdConfig,
    )
    runtime = Runtime(clock=FakeClock(), rng=random.Random(1), base_dir=base_dir)
    return Router(config.routers[0], runtime, {})


def svc(name: str) -> Path:
    return Path.read(f"/svc/{name}")


def state_of(router: Router, name: str) -> ServiceState:
    router.service_for(svc(name))
    return router.services[svc(name)]


def test_20000_invented_names_keep_the_table_bounded_and_leave_a_real_services_budget_and_counters() -> None:
    router = make_router()
    real = state_of(router, "accounts")
    assert not real.folded and real.label == "/svc/accounts"
    # the real service has spent some of its budget and counted retries and timeouts
    for _ in range(5):
        real.budget.deposit()
    granted = sum(real.budget.try_withdraw() for _ in range(500))
    assert 0 < granted < 500
    real.retries.response = granted
    real.timeouts.total = 2
    balance = real.budget.balance

    largest = 0
    for i in range(20_000):
        router.service_for(svc(f"invented{i}"))
        largest = max(largest, len(router.services))

    assert largest <= MAX_SERVICE_STATES
    assert router.evicted >= 20_000 + 1 - MAX_SERVICE_STATES
    # the real service was never dropped: same state, same budget, same counts
    assert router.services[svc("accounts")] is real
    assert router.service_for(svc("accounts")) is real.service
    assert real.budget.balance == balance and real.retries.response == granted and real.timeouts.total == 2
    # the label cap: MAX_SERVICES named services at most, every later name folded
    assert len(router.named) <= MAX_SERVICES
    assert len(router.stats.services) <= MAX_SERVICES
    assert router.folded_created == 20_000 + 1 - len(router.named)
    folded = [s for s in router.services.values() if s.folded]
    assert folded and all(s.label == OVERFLOW_SERVICE and s.retries is router.folded_retries for s in folded)


def test_a_recently_used_folded_service_outlives_idle_ones_and_the_least_recently_used_go_first() -> None:
    router = make_router()
    for i in range(MAX_SERVICES):  # every label taken: what follows is folded
        router.service_for(svc(f"early{i}"))
    busy = state_of(router, "busy")
    assert busy.folded
    old = [svc(f"old{i}") for i in range(EVICT_BATCH)]
    for path in old:  # used once, in tick 0, created after `busy`
        router.service_for(path)
    router.sweep()  # tick 1
    router.service_for(svc("busy"))
    n = 0
    while router.evicted == 0 and n <= MAX_SERVICE_STATES:
        router.service_for(svc(f"new{n}"))
        n += 1
    # the first eviction took the tick-0 services, oldest created first, and not `busy` (tick 1)
    assert router.services[svc("busy")] is busy
    assert all(path not in router.services for path in old)
    assert router.evicted == EVICT_BATCH
    # `busy` is used in every tick while thousands of new names come and go
    for _ in range(12):
        router.sweep()
        router.service_for(svc("busy"))
        for _ in range(1_000):
            router.service_for(svc(f"new{n}"))
            n += 1
        assert len(router.services) <= MAX_SERVICE_STATES
    assert router.services[svc("busy")] is busy
    assert router.evicted > 3 * EVICT_BATCH


def test_a_folded_service_with_a_request_in_flight_is_never_evicted() -> None:
    router = make_router()
    for i in range(MAX_SERVICES):
        router.service_for(svc(f"early{i}"))
    slow = state_of(router, "slow")
    slow.in_flight = 1  # what `_counting_in_flight` keeps while a request is inside its pipeline
    for i in range(MAX_SERVICE_STATES + 2 * EVICT_BATCH):  # three evictions, `slow` the oldest each time
        router.service_for(svc(f"invented{i}"))
    assert router.evicted >= 2 * EVICT_BATCH
    assert router.services[svc("slow")] is slow
    assert len(router.services) <= MAX_SERVICE_STATES
    slow.in_flight = 0
    evicted, i = router.evicted, 0
    while router.evicted == evicted and i <= MAX_SERVICE_STATES:
        router.service_for(svc(f"later{i}"))
        i += 1
    assert svc("slow") not in router.services  # idle again, and the least recently used


async def test_in_flight_counts_requests_inside_a_folded_services_pipeline_until_they_end_or_are_cancelled() -> None:
    router = make_router()
    router.stats.max_services = 0
    state = state_of(router, "slow")
    assert state.folded
    release = asyncio.Event()

    async def inner(ctx: RouteContext) -> Response:
        await release.wait()
        return Response(200, b"OK", [], Body.empty(0))

    service = _counting_in_flight(state, inner)
    ctx = RouteContext(Request("GET", "/", "1.1", [], Body.empty()))
    first = asyncio.create_task(service(ctx))
    second = asyncio.create_task(service(ctx))
    await asyncio.sleep(0)  # let both enter (no wall-clock wait: one loop turn)
    assert state.in_flight == 2
    second.cancel()
    await asyncio.gather(second, return_exceptions=True)
    assert state.in_flight == 1
    release.set()
    assert (await first).status == 200
    assert state.in_flight == 0


def test_named_services_have_their_own_counters_and_folded_ones_share_the_routers() -> None:
    router = make_router()
    router.stats.max_services = 2
    a, b, c, d = (state_of(router, name) for name in "abcd")
    assert (a.label, b.label, c.label, d.label) == ("/svc/a", "/svc/b", OVERFLOW_SERVICE, OVERFLOW_SERVICE)
    assert a.retries is not b.retries and a.timeouts is not b.timeouts
    assert c.retries is d.retries is router.folded_retries
    assert c.timeouts is d.timeouts is router.folded_timeouts
    assert c.budget is not d.budget  # budgets stay per service
    assert set(router.named) == {"/svc/a", "/svc/b"}
    # the request stats agree: a name with its own series has its own request stats too
    router.stats.observe("/svc/c", 502, 0.001)
    assert set(router.stats.services) == {"/svc/a", "/svc/b", OVERFLOW_SERVICE}


def test_label_for_gives_a_name_its_own_label_until_the_cap_and_keeps_it() -> None:
    stats = RouterStats("outgoing")
    stats.max_services = 3
    stats.observe("/svc/seen", 200, 0.001)
    assert [stats.label_for(n) for n in ("/svc/a", "/svc/seen", "/svc/b", "/svc/c")] == [
        "/svc/a",
        "/svc/seen",
        "/svc/b",
        OVERFLOW_SERVICE,
    ]
    stats.observe("/svc/c", 200, 0.001)
    stats.observe("/svc/a", 200, 0.001)
    assert stats.services[OVERFLOW_SERVICE].count == 1 and stats.services["/svc/a"].count == 1
    assert stats.label_for("/svc/a") == "/svc/a"


# -- the table's rules, over any sequence of requests, ticks and requests in flight -------------

ops = st.lists(
    st.one_of(
        st.tuples(st.just("request"), st.integers(0, 60)),
        st.tuples(st.just("tick"), st.just(0)),
        st.tuples(st.just("begin"), st.integers(0, 60)),
        st.tuples(st.just("end"), st.integers(0, 60)),
    ),
    max_size=300,
)


@settings(max_examples=150, deadline=None)
@given(ops, st.integers(1, 8), st.integers(4, 20), st.integers(1, 5))
def test_the_table_rules_hold_for_any_sequence(
    sequence: list[tuple[str, int]], labels: int, cap: int, batch: int
) -> None:
    router = make_router()
    router.stats.max_services = labels
    router.max_service_states = cap
    router.evict_batch = batch
    named: dict[Path, ServiceState] = {}
    last_used: dict[Path, int] = {}
    tick = 0
    for op, k in sequence:
        path = svc(f"n{k}")
        if op == "tick":
            router.sweep()
            tick += 1
            continue
        if op == "request" or path not in router.services:
            before = dict(router.services)
            router.service_for(path)
            last_used[path] = tick
            state = router.services[path]
            if not state.folded:
                assert named.setdefault(path, state) is state  # a named service is never replaced
            dropped = [p for p in before if p not in router.services]
            if dropped:
                # only idle folded services, and none used more recently than one that stayed
                assert all(before[p].folded and before[p].in_flight == 0 for p in dropped)
                kept_idle = [p for p, s in router.services.items() if p in before and s.folded and s.in_flight == 0]
                assert max(last_used[p] for p in dropped) <= min((last_used[p] for p in kept_idle), default=tick)
                assert len(dropped) <= batch
        state = router.services[path]
        if op == "begin" and state.folded:
            state.in_flight += 1
        elif op == "end" and state.in_flight:
            state.in_flight -= 1
        in_flight = sum(1 for s in router.services.values() if s.in_flight)
        assert len(router.services) <= max(cap, len(router.named) + in_flight + 1)
        assert len(router.named) <= labels
    for path, state in named.items():
        assert router.services[path] is state
