"""The k8s namer with the real kubernetes_asyncio client against FakeKubeApi."""

from __future__ import annotations

import asyncio
import json
import logging
import pathlib
import random
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import yaml

from meshd.discovery.addr import Addr, Address, Bound, Failed, Neg
from meshd.discovery.k8s import K8sBackoffConfig, K8sNamer, K8sNamerConfig
from meshd.exposition import Registry
from meshd.observable import Observable
from meshd.runtime import Runtime
from routing.namer import BoundName
from routing.nametree import NEG, Leaf
from routing.path import Path
from tests.support.k8s_api import (
    FakeKubeApi,
    Fault,
    RecordedRequest,
    TlsFiles,
    endpoint_slice,
    service,
    service_port,
    slice_endpoint,
    slice_port,
)
from tests.support.waiting import wait_until as poll_until

FIXTURES = pathlib.Path(__file__).resolve().parents[3].parent / "shared" / "k8s-api" / "fixtures"
SLICES = "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices"
WAIT = 5.0


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def fixture_lines(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines() if line.strip()]


class BackoffSleeps:
    """The namer's injected sleep: records every backoff and returns at once (no real waiting)."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.count: Observable[int] = Observable(0)

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        self.count.set(len(self.delays))
        await asyncio.sleep(0)

    async def wait_for_more(self, n: int) -> None:
        target = self.count.get() + n
        async with asyncio.timeout(WAIT):
            await self.count.wait_for(lambda c: c >= target)


@pytest.fixture
async def api() -> AsyncIterator[FakeKubeApi]:
    async with FakeKubeApi() as server:
        server.load_fixture(fixture("endpointslice-list.json"))
        server.load_fixture(fixture("service-get.json"))
        yield server


@pytest.fixture
def runtime(tmp_path: pathlib.Path) -> Runtime:
    return Runtime(rng=random.Random(7), registry=Registry(), base_dir=tmp_path)


@pytest.fixture
def sleeps() -> BackoffSleeps:
    return BackoffSleeps()


@pytest.fixture
async def make_namer(api: FakeKubeApi, runtime: Runtime, tmp_path: pathlib.Path, sleeps: BackoffSleeps):
    """Builds started namers (kubeconfig file pointing at the fake server); closes them afterwards."""
    made: list[K8sNamer] = []

    async def make(server: FakeKubeApi | None = None, **overrides: Any) -> K8sNamer:
        server = server or api
        (tmp_path / "kubeconfig").write_text(yaml.safe_dump(server.kubeconfig()))
        settings: dict[str, Any] = {"kubeconfig": "kubeconfig", "backoff": K8sBackoffConfig(min_ms=1, max_ms=10)}
        settings.update(overrides)
        namer = K8sNamer(K8sNamerConfig(**settings), runtime, sleep=sleeps)
        made.append(namer)
        await namer.start()
        return namer

    yield make
    for namer in made:
        await namer.close()


@pytest.fixture
async def namer(make_namer) -> K8sNamer:
    made: K8sNamer = await make_namer()
    return made


async def resolved(namer: K8sNamer, path: str) -> Any:
    """The lookup answer once it is no longer pending."""
    async with asyncio.timeout(WAIT):
        while (answer := namer.lookup(Path.read(path))) is None:
            await namer.version.wait_changed()
    return answer


async def value(obs: Observable[Addr], predicate: Callable[[Addr], bool]) -> Addr:
    async with asyncio.timeout(WAIT):
        return await obs.wait_for(predicate)


def hosts(addr: Addr) -> set[str]:
    assert isinstance(addr, Bound), addr
    return {a.show() for a in addr.addresses}


def is_bound_to(*expected: str) -> Callable[[Addr], bool]:
    return lambda a: isinstance(a, Bound) and {x.show() for x in a.addresses} == set(expected)


def web_id(port: str = "http") -> Path:
    return Path.read(f"/#/k8s/shop/{port}/web")


def slice_requests(api: FakeKubeApi) -> list[RecordedRequest]:
    return [r for r in api.requests if r.path == SLICES]


def relist_rv(api: FakeKubeApi, listed: RecordedRequest) -> str:
    """The RV a list answered with: the revision when it was served (nothing changed since)."""
    return str(api.revision)


def metric(runtime: Runtime, name: str, **labels: str) -> float:
    return runtime.registry.get_sample_value(name, labels) or 0.0


# -- resolution -------------------------------------------------------------------------------


async def test_fixture_slices_bind_to_ready_endpoints_only(namer: K8sNamer):
    answer = await resolved(namer, "/shop/http/web/extra/path")
    assert answer == Leaf(BoundName(id=web_id(), residual=Path.read("/extra/path")))
    addr = await value(namer.addr(web_id()), lambda a: isinstance(a, Bound))
    assert isinstance(addr, Bound)
    assert addr.addresses == frozenset({
        Address("10.244.1.17", 8080, node_name="node-a", zone="us-east-1a", meta=(("pod", "web-5d8f7c9b6-2xkqv"),)),
        Address("10.244.2.9", 8080, node_name="node-b", zone="us-east-1b", meta=(("pod", "web-5d8f7c9b6-h7p4m"),)),
    })  # not-ready 10.244.1.23 and terminating 10.244.3.4 are never served


async def test_names_are_lower_cased_and_share_one_watch(namer: K8sNamer, api: FakeKubeApi):
    assert await resolved(namer, "/SHOP/HTTP/Web") == Leaf(BoundName(id=web_id()))
    assert await resolved(namer, "/shop/admin/web") == Leaf(BoundName(id=web_id("admin")))
    http, admin = namer.addr(web_id()), namer.addr(web_id("admin"))
    assert hosts(await value(admin, lambda a: isinstance(a, Bound))) == {"10.244.1.17:9990", "10.244.2.9:9990"}
    assert hosts(http.get()) == {"10.244.1.17:8080", "10.244.2.9:8080"}
    await api.open_watches.wait_for(lambda n: n == 2)
    watches = [r for r in api.requests if r.is_watch]
    assert sorted(str(r.resource) for r in watches) == ["endpointslices", "services"]  # one of each for both ports


async def test_numeric_port_maps_through_the_service_target_port(namer: K8sNamer):
    assert await resolved(namer, "/shop/80/web") == Leaf(BoundName(id=web_id("80")))
    addr80 = await value(namer.addr(web_id("80")), lambda a: isinstance(a, Bound))
    assert hosts(addr80) == {"10.244.1.17:8080", "10.244.2.9:8080"}  # port 80 -> targetPort "http" -> 8080
    assert await resolved(namer, "/shop/9990/web") == Leaf(BoundName(id=web_id("9990")))
    assert hosts(namer.addr(web_id("9990")).get()) == {"10.244.1.17:9990", "10.244.2.9:9990"}
    assert await resolved(namer, "/shop/8080/web") is NEG  # a container port is not a Service port


async def test_unknown_port_name_unknown_service_and_invalid_names_are_neg(namer: K8sNamer, api: FakeKubeApi):
    assert await resolved(namer, "/shop/grpc/web") is NEG
    assert await resolved(namer, "/shop/http/nosuch") is NEG
    assert await resolved(namer, "/nowhere/http/web") is NEG
    before = len(api.requests)
    for bad in ("/shop/http", "/shop/ht_tp/web", "/shop/0/web", "/sh..op/http/web"):
        assert namer.lookup(Path.read(bad)) is NEG
    assert len(api.requests) == before  # nonsense never reaches the API server
    assert isinstance(namer.addr(Path.read("/#/k8s/shop/http")).get(), Failed)


async def test_service_without_pods_is_bound_to_nothing(namer: K8sNamer, api: FakeKubeApi):
    api.load_fixture(fixture("endpointslice-empty.json"))  # endpoints: null, ports: null
    api.apply(service("shop", "api", [service_port("http", 80, "http")], selector={"app": "api"}))
    assert await resolved(namer, "/shop/http/api") == Leaf(BoundName(id=Path.read("/#/k8s/shop/http/api")))
    assert namer.addr(Path.read("/#/k8s/shop/http/api")).get() == Bound(frozenset())
    assert await resolved(namer, "/shop/grpc/api") is NEG


async def test_multiple_slices_are_merged_and_duplicates_collapse(namer: K8sNamer, api: FakeKubeApi):
    http = namer.addr(web_id())
    await value(http, is_bound_to("10.244.1.17:8080", "10.244.2.9:8080"))
    api.apply(endpoint_slice("shop", "web", name="web-extra", ports=[slice_port("http", 8080)], endpoints=[
        slice_endpoint("10.244.2.9", node_name="node-b"),  # also in web-q9z4m: moving between slices
        slice_endpoint("10.244.9.1", ready=None),  # no ready condition: unknown means ready
    ]))
    await value(http, is_bound_to("10.244.1.17:8080", "10.244.2.9:8080", "10.244.9.1:8080"))


async def test_readiness_changes_and_terminating_endpoints(namer: K8sNamer, api: FakeKubeApi):
    api.apply(service("shop", "pay", [service_port("http", 80, 8080)]))

    def pay_slice(*endpoints: dict[str, Any]) -> None:
        api.apply(endpoint_slice("shop", "pay", name="pay-abcde", endpoints=endpoints,
                                 ports=[slice_port("http", 8080)]))

    pay_slice(slice_endpoint("10.1.0.1"), slice_endpoint("10.1.0.2", ready=False))
    pay = namer.addr(Path.read("/#/k8s/shop/http/pay"))
    await value(pay, is_bound_to("10.1.0.1:8080"))
    pay_slice(slice_endpoint("10.1.0.1"), slice_endpoint("10.1.0.2"))
    await value(pay, is_bound_to("10.1.0.1:8080", "10.1.0.2:8080"))
    pay_slice(slice_endpoint("10.1.0.1", ready=False, serving=True, terminating=True), slice_endpoint("10.1.0.2"))
    await value(pay, is_bound_to("10.1.0.2:8080"))
    pay_slice(slice_endpoint("10.1.0.1", ready=None, terminating=True), slice_endpoint("10.1.0.2"))
    api.apply(service("shop", "pay", [service_port("http", 80, 8080), service_port("admin", 9990)]))
    assert hosts(pay.get()) == {"10.1.0.2:8080"}


async def test_pod_rollout_is_seen_as_the_right_sequence_of_sets(namer: K8sNamer, api: FakeKubeApi):
    api.apply(service("bank", "ledger", [service_port("http", 80, "http")]))
    port = [slice_port("http", 8080)]

    def pods(**states: str) -> list[dict[str, Any]]:
        out = []
        for name, state in states.items():
            ip = {"a": "10.2.0.1", "b": "10.2.0.2", "c": "10.2.0.3", "d": "10.2.0.4"}[name]
            ready = state == "ready"
            out.append(slice_endpoint(ip, ready=ready, serving=ready or state == "terminating",
                                      terminating=state == "terminating", pod=f"ledger-{name}"))
        return out

    api.apply(endpoint_slice("bank", "ledger", name="ledger-x1", endpoints=pods(a="ready", b="ready"), ports=port))
    ledger = namer.addr(Path.read("/#/k8s/bank/http/ledger"))
    seen: list[set[str]] = []
    ledger.subscribe(lambda a: seen.append(hosts(a)) if isinstance(a, Bound) else None)
    steps = [
        (dict(a="ready", b="ready", c="starting"), {"10.2.0.1:8080", "10.2.0.2:8080"}),
        (dict(a="ready", b="ready", c="ready"), {"10.2.0.1:8080", "10.2.0.2:8080", "10.2.0.3:8080"}),
        (dict(a="terminating", b="ready", c="ready", d="starting"), {"10.2.0.2:8080", "10.2.0.3:8080"}),
        (dict(b="ready", c="ready", d="ready"), {"10.2.0.2:8080", "10.2.0.3:8080", "10.2.0.4:8080"}),
        (dict(b="terminating", c="ready", d="ready"), {"10.2.0.3:8080", "10.2.0.4:8080"}),
        (dict(c="ready", d="ready"), {"10.2.0.3:8080", "10.2.0.4:8080"}),
    ]
    await value(ledger, is_bound_to("10.2.0.1:8080", "10.2.0.2:8080"))
    for states, expected in steps:
        api.apply(endpoint_slice("bank", "ledger", name="ledger-x1", endpoints=pods(**states), ports=port))
        await value(ledger, is_bound_to(*expected))
    # The "c starting" and "old pod removed" steps change nothing and publish nothing.
    api.apply(service("bank", "ledger", [service_port("http", 80, "http")]))  # a final round trip as a barrier
    await resolved(namer, "/bank/http/ledger")
    assert seen == [
        {"10.2.0.1:8080", "10.2.0.2:8080"},
        {"10.2.0.1:8080", "10.2.0.2:8080", "10.2.0.3:8080"},
        {"10.2.0.2:8080", "10.2.0.3:8080"},
        {"10.2.0.2:8080", "10.2.0.3:8080", "10.2.0.4:8080"},
        {"10.2.0.3:8080", "10.2.0.4:8080"},
    ]


async def test_service_deleted_then_recreated_goes_neg_then_bound(namer: K8sNamer, api: FakeKubeApi):
    await resolved(namer, "/shop/http/web")
    http = namer.addr(web_id())
    saved = [api.get("endpointslices", "shop", n) for n in ("web-7xk2p", "web-q9z4m")]
    svc = api.get("services", "shop", "web")
    version = namer.version.get()
    for n in ("web-7xk2p", "web-q9z4m"):
        api.delete("endpointslices", "shop", n)
    api.delete("services", "shop", "web")
    await value(http, lambda a: isinstance(a, Neg))
    assert namer.lookup(Path.read("/shop/http/web")) is NEG and namer.version.get() > version
    assert svc is not None
    api.apply(svc)
    for s in saved:
        assert s is not None
        api.apply(s)
    await value(http, is_bound_to("10.244.1.17:8080", "10.244.2.9:8080"))
    assert namer.lookup(Path.read("/shop/http/web")) == Leaf(BoundName(id=web_id()))


# -- list and watch mechanics ------------------------------------------------------------------


async def test_fixture_watch_stream_is_applied_and_410_relists(namer: K8sNamer, api: FakeKubeApi, runtime: Runtime):
    http = namer.addr(web_id())
    await value(http, is_bound_to("10.244.1.17:8080", "10.244.2.9:8080"))
    await api.open_watches.wait_for(lambda n: n == 2)
    events = fixture_lines("watch-endpointslices.ndjson")
    assert [e["type"] for e in events] == ["MODIFIED", "ADDED", "BOOKMARK", "DELETED", "ERROR"]
    api.apply(events[0]["object"])  # 10.244.1.23 became ready
    await value(http, is_bound_to("10.244.1.17:8080", "10.244.2.9:8080", "10.244.1.23:8080"))
    api.apply(events[1]["object"])  # a new slice with one not-ready endpoint: no change
    assert api.send_bookmarks() == 2
    api.delete("endpointslices", "shop", events[3]["object"]["metadata"]["name"])
    await value(http, is_bound_to("10.244.1.17:8080", "10.244.1.23:8080"))
    mark = len(api.requests)
    api.inject_410()
    relist = await api.wait_for_request(lambda r: r.path == SLICES and not r.is_watch, after=mark)
    rewatch = await api.wait_for_request(lambda r: r.path == SLICES and r.is_watch, after=mark)
    assert relist.index < rewatch.index
    assert rewatch.resource_version == relist_rv(api, relist)
    assert metric(runtime, "meshd_k8s_watch_restarts_total", namespace="shop", service="web", reason="expired") == 2
    # Both watches of the service (slices and Service) allowed bookmarks and got one.
    assert metric(runtime, "meshd_k8s_watch_events_total", namespace="shop", service="web", type="BOOKMARK") == 2
    assert hosts(http.get()) == {"10.244.1.17:8080", "10.244.1.23:8080"}


async def test_watch_requests_use_bookmarks_timeout_and_the_list_rv(namer: K8sNamer, api: FakeKubeApi):
    await resolved(namer, "/shop/http/web")
    await api.open_watches.wait_for(lambda n: n == 2)
    listed, watched = slice_requests(api)
    assert listed.query == {"labelSelector": "kubernetes.io/service-name=web"}
    assert watched.query["watch"] == "True" and watched.query["allowWatchBookmarks"] == "True"
    assert watched.query["timeoutSeconds"] == "300"
    assert watched.query["labelSelector"] == "kubernetes.io/service-name=web"
    assert watched.resource_version == str(api.revision)  # the list's RV, not an item's
    assert all(r.headers["Authorization"] == f"Bearer {api.token}" for r in api.requests)
    svc_watch = next(r for r in api.requests if r.resource == "services" and r.is_watch)
    assert svc_watch.query["fieldSelector"] == "metadata.name=web"


async def test_eof_resumes_from_the_last_event_or_bookmark_rv(namer: K8sNamer, api: FakeKubeApi):
    http = namer.addr(web_id())
    await value(http, lambda a: isinstance(a, Bound))
    await api.open_watches.wait_for(lambda n: n == 2)
    api.delete("endpointslices", "shop", "web-q9z4m")
    deleted_rv = str(api.revision)
    await value(http, is_bound_to("10.244.1.17:8080"))
    mark = len(api.requests)
    api.end_watches()
    resumed = await api.wait_for_request(lambda r: r.path == SLICES, after=mark)
    assert resumed.is_watch and resumed.resource_version == deleted_rv  # no re-list on EOF
    await api.open_watches.wait_for(lambda n: n == 2)
    api.apply(service("other", "x", [service_port("http", 80)]))  # moves the revision past ours
    api.send_bookmarks()
    api.apply(service("other", "x", [service_port("http", 81)]))
    # Wait until the bookmark reached the namer: its statistics show the bookmark's RV.
    bookmark_rv = str(api.revision - 1)
    async with asyncio.timeout(WAIT):
        while namer.statistics().watches[0].endpoints_rv != bookmark_rv:
            await asyncio.sleep(0)
    mark = len(api.requests)
    api.end_watches()
    resumed = await api.wait_for_request(lambda r: r.path == SLICES, after=mark)
    assert resumed.is_watch and resumed.resource_version == bookmark_rv
    assert len([r for r in slice_requests(api) if not r.is_watch]) == 1  # never listed again


async def test_rewatching_builds_no_ssl_context_or_session(namer: K8sNamer, api: FakeKubeApi,
                                                            monkeypatch: pytest.MonkeyPatch):
    """A re-watch must be cheap: kubernetes_asyncio's Watch() builds a new ApiClient each time,
    whose SSL context loads the CA bundle with the event loop blocked (~18 ms, on the data
    plane's loop). The namer's watches reuse the namer's one client."""
    http = namer.addr(web_id())
    await value(http, lambda a: isinstance(a, Bound))
    await api.open_watches.wait_for(lambda n: n == 2)
    built: list[str] = []
    real_context = ssl.create_default_context
    real_session = aiohttp.ClientSession.__init__

    def counting_context(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        built.append("ssl")
        return real_context(*args, **kwargs)

    def counting_session(self: aiohttp.ClientSession, *args: Any, **kwargs: Any) -> None:
        built.append("session")
        real_session(self, *args, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", counting_context)
    monkeypatch.setattr(aiohttp.ClientSession, "__init__", counting_session)
    for _ in range(5):
        mark = len(api.requests)
        api.end_watches()
        await api.wait_for_request(lambda r: r.path == SLICES and r.is_watch, after=mark)
        await api.open_watches.wait_for(lambda n: n == 2)
    api.delete("endpointslices", "shop", "web-q9z4m")
    await value(http, is_bound_to("10.244.1.17:8080"))  # the re-made watches still deliver
    assert built == []


async def test_expired_rv_on_resume_relists_and_replaces_state(namer: K8sNamer, api: FakeKubeApi):
    http = namer.addr(web_id())
    await value(http, is_bound_to("10.244.1.17:8080", "10.244.2.9:8080"))
    await api.open_watches.wait_for(lambda n: n == 2)
    mark = len(api.requests)
    api.end_watches()  # the namer does not see what follows until it re-watches...
    api.delete("endpointslices", "shop", "web-q9z4m")
    api.compact()  # ...and by then its RV is too old
    await value(http, is_bound_to("10.244.1.17:8080"))
    listed = await api.wait_for_request(lambda r: r.path == SLICES and not r.is_watch, after=mark)
    rewatch = await api.wait_for_request(lambda r: r.path == SLICES and r.is_watch,
                                         after=listed.index)
    slices = [r for r in api.requests[mark:] if r.path == SLICES]
    assert slices[:3] == [slices[0], listed, rewatch] and slices[0].is_watch
    assert rewatch.resource_version == str(api.revision)


async def test_http_410_answer_to_a_watch_also_relists(namer: K8sNamer, api: FakeKubeApi):
    await value(namer.addr(web_id()), lambda a: isinstance(a, Bound))
    await api.open_watches.wait_for(lambda n: n == 2)
    api.add_fault(Fault("status", status=410, resource="endpointslices", watch=True))
    mark = len(api.requests)
    api.end_watches()
    await api.wait_for_request(lambda r: r.path == SLICES and not r.is_watch, after=mark)


async def test_one_watch_per_service_whatever_the_number_of_users(namer: K8sNamer, api: FakeKubeApi):
    observables = [namer.addr(web_id(p)) for p in ("http", "http", "admin", "80")]
    for obs in observables:
        await value(obs, lambda a: isinstance(a, Bound))
    await resolved(namer, "/shop/9990/web")
    await api.open_watches.wait_for(lambda n: n == 2)
    assert len([r for r in api.requests if r.is_watch]) == 2
    assert observables[0] is observables[1]
    [stats] = namer.statistics().watches
    assert stats.refcount == 4 and stats.source == "endpointslices" and stats.state == "watching"


async def test_idle_watch_is_closed_after_release(make_namer, api: FakeKubeApi):
    namer = await make_namer(idle_ttl_secs=0.01)
    obs = namer.addr(web_id())  # held: the tiny idle TTL does not apply
    await value(obs, lambda a: isinstance(a, Bound))
    assert namer.lookup(Path.read("/shop/http/web")) == Leaf(BoundName(id=web_id()))
    await api.open_watches.wait_for(lambda n: n == 2)
    version = namer.version.get()
    namer.release(web_id())
    async with asyncio.timeout(WAIT):
        await api.open_watches.wait_for(lambda n: n == 0)
    assert namer.statistics().watches == ()
    assert namer.version.get() > version  # lookups would be pending again
    assert isinstance(obs.get(), Bound)  # holders of the old observable keep the last value
    assert namer.lookup(Path.read("/shop/http/web")) is None  # a new lookup starts a new watch
    assert [w.service for w in namer.statistics().watches] == ["web"]


async def test_falls_back_to_core_endpoints_when_slices_are_not_served(make_namer):
    async with FakeKubeApi(serve_endpoint_slices=False) as server:
        server.load_fixture(fixture("endpoints-list.json"))
        server.load_fixture(fixture("service-get.json"))
        namer = await make_namer(server)
        http = namer.addr(web_id())
        assert hosts(await value(http, lambda a: isinstance(a, Bound))) == {"10.244.1.17:8080", "10.244.2.9:8080"}
        assert await resolved(namer, "/shop/80/web") == Leaf(BoundName(id=web_id("80")))
        assert namer.statistics().source == "endpoints"
        await server.open_watches.wait_for(lambda n: n == 2)
        assert not any(r.path.startswith(SLICES) for r in server.requests)
        ep_watch = next(r for r in server.requests if r.resource == "endpoints" and r.is_watch)
        assert ep_watch.query["fieldSelector"] == "metadata.name=web"
        await namer.close()


# -- failures ----------------------------------------------------------------------------------


async def test_outage_keeps_last_endpoints_then_recovers(namer: K8sNamer, api: FakeKubeApi, sleeps: BackoffSleeps,
                                                         runtime: Runtime):
    http = namer.addr(web_id())
    await value(http, is_bound_to("10.244.1.17:8080", "10.244.2.9:8080"))
    asked = runtime.clock.now()
    (fresh,) = namer.freshness()  # a healthy watch: current now
    assert (fresh.name, fresh.stale) == ("shop/web", False)
    assert fresh.confirmed_at is not None and asked <= fresh.confirmed_at <= runtime.clock.now()
    seen: list[Addr] = []
    http.subscribe(seen.append, replay=False)
    async with api.outage():
        broke = runtime.clock.now()
        api.delete("endpointslices", "shop", "web-q9z4m")
        await sleeps.wait_for_more(3)  # the namer failed to reconnect several times
        assert hosts(http.get()) == {"10.244.1.17:8080", "10.244.2.9:8080"}
        assert namer.lookup(Path.read("/shop/http/web")) == Leaf(BoundName(id=web_id()))
        stats = namer.statistics().watches[0]
        assert stats.consecutive_failures >= 1 and "unreachable" in (stats.last_error or "")
        (stale,) = namer.freshness()  # last-known-good, as of the first failure
        assert stale.stale and stale.confirmed_at is not None and broke <= stale.confirmed_at < runtime.clock.now()
    await value(http, is_bound_to("10.244.1.17:8080"))
    # both watches (endpoints and service) back: current again once each has had an event; the
    # service's has none of its own, so the API's bookmarks (about once a minute) prove it live
    def current() -> bool:
        api.send_bookmarks()
        return not namer.freshness()[0].stale

    await poll_until(current, timeout=5, message="the watches are current again")
    assert seen == [Bound(frozenset({Address("10.244.1.17", 8080, node_name="node-a", zone="us-east-1a",
                                             meta=(("pod", "web-5d8f7c9b6-2xkqv"),))}))]  # nothing in between
    assert metric(runtime, "meshd_k8s_api_errors_total", code="unreachable") >= 3
    assert max(sleeps.delays) <= 0.010


async def test_unreachable_from_the_start_is_failed_then_bound(make_namer, api: FakeKubeApi, sleeps: BackoffSleeps):
    async with api.outage():
        namer = await make_namer()
        assert namer.lookup(Path.read("/shop/http/web")) is None
        http = namer.addr(web_id())
        failed = await value(http, lambda a: isinstance(a, Failed))
        assert isinstance(failed, Failed) and "unreachable" in failed.reason
        assert namer.lookup(Path.read("/shop/http/web")) is None  # still pending, never NEG
    await value(http, is_bound_to("10.244.1.17:8080", "10.244.2.9:8080"))
    assert await resolved(namer, "/shop/http/web") == Leaf(BoundName(id=web_id()))


@pytest.mark.parametrize(("status", "explanation"), [
    (403, ['cannot watch resource "endpointslices"', "ClusterRole"]),
    (500, ["InternalError", "etcdserver: request timed out"]),
])
async def test_watch_errors_are_logged_counted_and_retried(namer: K8sNamer, api: FakeKubeApi, runtime: Runtime,
                                                           caplog: pytest.LogCaptureFixture, sleeps: BackoffSleeps,
                                                           status: int, explanation: list[str]):
    caplog.set_level(logging.WARNING, logger="meshd")
    http = namer.addr(web_id())
    await value(http, lambda a: isinstance(a, Bound))
    await api.open_watches.wait_for(lambda n: n == 2)
    api.add_fault(Fault("status", status=status, resource="endpointslices", watch=True, times=2))
    api.end_watches()
    await sleeps.wait_for_more(2)
    assert hosts(http.get()) == {"10.244.1.17:8080", "10.244.2.9:8080"}  # kept through the failures
    api.delete("endpointslices", "shop", "web-q9z4m")
    await value(http, is_bound_to("10.244.1.17:8080"))  # the loop survived and recovered
    assert metric(runtime, "meshd_k8s_api_errors_total", code=str(status)) == 2
    assert metric(runtime, "meshd_k8s_watch_restarts_total", namespace="shop", service="web", reason="error") == 2
    messages = [r.getMessage() for r in caplog.records if f"{status}: " in r.getMessage()]
    assert len(messages) == 2 and all(text in messages[0] for text in explanation)


async def test_garbage_answers_and_malformed_events_never_break_the_loop(namer: K8sNamer, api: FakeKubeApi,
                                                                       runtime: Runtime, sleeps: BackoffSleeps):
    api.add_fault(Fault("html", resource="endpointslices", times=1))  # a proxy's error page
    http = namer.addr(web_id())
    await value(http, lambda a: isinstance(a, Bound))
    assert metric(runtime, "meshd_k8s_api_errors_total", code="502") == 1
    await api.open_watches.wait_for(lambda n: n == 2)
    watches_before = len([r for r in api.requests if r.is_watch])
    api.inject_line(b"this is not json\n")
    api.inject_line(b'{"no":"type"}\n')
    api.inject_line(b'{"type":"MODIFIED","object":{"kind":"EndpointSlice","metadata":{"resourceVersion":"1"}}}\n')
    api.inject_line(b'{"type":"MODIFIED","object":{"kind":"Service","metadata":{"name":"web"},'
                    b'"spec":{"ports":"nope"}}}\n')
    api.delete("endpointslices", "shop", "web-q9z4m")
    await value(http, is_bound_to("10.244.1.17:8080"))
    assert len([r for r in api.requests if r.is_watch]) == watches_before  # the streams went on
    malformed = metric(runtime, "meshd_k8s_watch_events_total", namespace="shop", service="web", type="MALFORMED")
    assert malformed == 8  # four bad lines, each seen by both watches
    # The bad Service update was ignored: the Service and its port 80 are still known.
    assert await resolved(namer, "/shop/80/web") == Leaf(BoundName(id=web_id("80")))


async def test_html_error_page_on_a_watch_backs_off(namer: K8sNamer, api: FakeKubeApi, runtime: Runtime,
                                                    sleeps: BackoffSleeps):
    await value(namer.addr(web_id()), lambda a: isinstance(a, Bound))
    await api.open_watches.wait_for(lambda n: n == 2)
    api.add_fault(Fault("html", resource="endpointslices", watch=True, times=1))
    api.end_watches()
    await sleeps.wait_for_more(1)
    async with asyncio.timeout(WAIT):
        await api.open_watches.wait_for(lambda n: n == 2)
    assert metric(runtime, "meshd_k8s_api_errors_total", code="502") == 1


async def test_stalled_watch_hits_the_client_timeout_and_resumes(make_namer, api: FakeKubeApi, runtime: Runtime):
    namer = await make_namer(watch_timeout_secs=1, request_timeout_secs=0.2)
    http = namer.addr(web_id())
    await value(http, lambda a: isinstance(a, Bound))
    await api.open_watches.wait_for(lambda n: n == 2)
    api.add_fault(Fault("stall", resource="endpointslices", watch=True, times=1))
    mark = len(api.requests)
    api.end_watches()
    stalled = await api.wait_for_request(lambda r: r.path == SLICES, after=mark)
    # ... after 1.2 s of silence (timeoutSeconds + requestTimeoutSecs) the client gives up and watches again.
    async with asyncio.timeout(WAIT):
        await api.wait_for_request(lambda r: r.path == SLICES, after=stalled.index + 1)
    assert metric(runtime, "meshd_k8s_api_errors_total", code="timeout") == 1
    api.delete("endpointslices", "shop", "web-q9z4m")
    await value(http, is_bound_to("10.244.1.17:8080"))


async def test_state_dump_is_json(namer: K8sNamer):
    await value(namer.addr(web_id()), lambda a: isinstance(a, Bound))
    dump = json.loads(json.dumps(namer.state_dump()))
    assert dump["prefix"] == "/#/k8s" and dump["connected"] is True
    [watch] = dump["watches"]
    assert watch["namespace"] == "shop" and watch["service"] == "web" and watch["refcount"] == 1
    assert watch["ports"] == [{"port": "http", "answer": "bound",
                               "addresses": ["10.244.1.17:8080", "10.244.2.9:8080"]}]


async def test_closed_namer_answers_pending_and_stops_its_watches(make_namer, api: FakeKubeApi):
    namer = await make_namer()
    await value(namer.addr(web_id()), lambda a: isinstance(a, Bound))
    await namer.close()
    async with asyncio.timeout(WAIT):
        await api.open_watches.wait_for(lambda n: n == 0)
    assert namer.lookup(Path.read("/shop/http/web")) is None
    assert isinstance(namer.addr(web_id()).get(), Failed)


async def test_in_cluster_service_account_over_tls(tmp_path: pathlib.Path, runtime: Runtime):
    """The in-cluster path: https with the service-account CA, the token file as bearer token."""
    tls = TlsFiles.create(tmp_path)
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("projected-sa-token")
    (account / "ca.crt").write_bytes(tls.ca_cert.read_bytes())
    async with FakeKubeApi(token="projected-sa-token", ssl_context=tls.server_context()) as server:
        server.load_fixture(fixture("endpointslice-list.json"))
        server.load_fixture(fixture("service-get.json"))
        environ = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(server.port)}
        namer = K8sNamer(K8sNamerConfig(), runtime, environ=environ, service_account_dir=account)
        try:
            await namer.start()
            http = namer.addr(web_id())
            assert hosts(await value(http, lambda a: isinstance(a, Bound))) == {"10.244.1.17:8080", "10.244.2.9:8080"}
            assert server.url.startswith("https://")
            assert {r.headers["Authorization"] for r in server.requests} == {"Bearer projected-sa-token"}
        finally:
            await namer.close()
