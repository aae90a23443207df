"""The k8s namer under live traffic: meshd in-process, the real kubernetes_asyncio client, FakeKubeApi.

Pods are upstreams on 127.0.0.1, one EndpointSlice each (a slice carries one port number, and
every pod here listens on its own port). A rollout follows a Deployment's rolling update with
`maxSurge: 1, maxUnavailable: 0`: a new pod is created not ready, becomes ready, then an old pod
starts terminating (its endpoint turns `terminating`, it keeps serving what it has), and its
process stops only once no meshd sends it anything. Requests flow all the time, from several
keep-alive connections, and not one may fail, in plain mode and in DaemonSet mode (two meshds
as two nodes). Bad input (unknown port name, unknown service, a 403 or garbage from the API)
is checked from a request's point of view: its status and its `l5d-err`.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import yaml

from meshd.discovery.k8s import K8sNamer
from meshd.discovery.k8s_watch import WatchStats
from meshd.observable import Observable
from meshd.transformers import DaemonSetTransformer
from routing.path import Path
from tests.conftest import Mesh
from tests.support.client import ConnectionClosed, RawConnection, RawResponse
from tests.support.k8s_api import (
    FakeKubeApi,
    Fault,
    endpoint_slice,
    service,
    service_port,
    slice_endpoint,
    slice_port,
)
from tests.support.upstreams import Received, Reply, Upstream
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(60)

ACCOUNTS = Path.read("/#/k8s/bank/http/accounts")
MakeMesh = Callable[..., Awaitable[Mesh]]


@pytest.fixture
async def api() -> AsyncIterator[FakeKubeApi]:
    async with FakeKubeApi() as server:
        server.apply(service("bank", "accounts", [service_port("http", 80, "http")], selector={"app": "accounts"}))
        server.apply(service("mesh", "meshd", [service_port("incoming", 4141, "incoming")],
                             selector={"app.kubernetes.io/name": "meshd"}))
        yield server


class Pods:
    """Pod processes (upstreams answering with their name) and their EndpointSlices."""

    def __init__(self, api: FakeKubeApi) -> None:
        self.api = api
        self.by_name: dict[str, Upstream] = {}
        self.nodes: dict[str, str] = {}

    async def start(self, name: str, node: str, *, ready: bool = True) -> Upstream:
        async def handler(request: Received) -> Reply:
            return Reply(200, [("Content-Type", "text/plain")], name.encode())

        up = Upstream(handler, name=name)
        await up.start()
        self.by_name[name] = up
        self.nodes[name] = node
        self.publish(name, ready=ready)
        return up

    def publish(self, name: str, *, ready: bool = True, terminating: bool = False) -> None:
        """Write the pod's slice as the EndpointSlice controller would."""
        endpoint = slice_endpoint("127.0.0.1", ready=ready and not terminating, serving=ready,
                                  terminating=terminating, node_name=self.nodes[name], pod=name, namespace="bank")
        self.api.apply(endpoint_slice("bank", "accounts", name=f"accounts-{name}", endpoints=[endpoint],
                                      ports=[slice_port("http", self.by_name[name].port)]))

    async def stop(self, name: str) -> None:
        self.api.delete("endpointslices", "bank", f"accounts-{name}")
        await self.by_name[name].close()

    async def close(self) -> None:
        for up in self.by_name.values():
            await up.close()


@pytest.fixture
async def pods(api: FakeKubeApi) -> AsyncIterator[Pods]:
    p = Pods(api)
    yield p
    await p.close()


@pytest.fixture
async def flows() -> AsyncIterator[Callable[[int], Traffic]]:
    """Starts traffic; whatever a failing test left running is stopped."""
    started: list[Traffic] = []

    def start(port: int) -> Traffic:
        started.append(Traffic(port).start())
        return started[-1]

    yield start
    for t in started:
        await t.stop()


class Traffic:
    """Clients on keep-alive connections sending GETs back to back until stopped; every outcome is kept."""

    def __init__(self, port: int, host: str = "accounts", connections: int = 3) -> None:
        self.port = port
        self.host = host
        self.connections = connections
        self.statuses: Counter[int] = Counter()
        self.bodies: Counter[bytes] = Counter()
        self.failures: list[str] = []
        self.done: Observable[int] = Observable(0)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> Traffic:
        self._tasks = [asyncio.create_task(self._client()) for _ in range(self.connections)]
        return self

    async def more(self, n: int) -> None:
        """Wait until `n` more requests have completed (traffic really flowed across a change)."""
        target = self.done.get() + n
        async with asyncio.timeout(10):
            await self.done.wait_for(lambda d: d >= target)

    async def stop(self) -> None:
        self._stop.set()
        tasks, self._tasks = self._tasks, []
        await asyncio.gather(*tasks)

    async def _client(self) -> None:
        conn = await RawConnection.open(self.port)
        try:
            while not self._stop.is_set():
                try:
                    resp = await asyncio.wait_for(conn.request("GET", "/balance", host=self.host), 5)
                except (ConnectionClosed, OSError, TimeoutError) as exc:
                    self.failures.append(repr(exc))
                    await conn.close()
                    conn = await RawConnection.open(self.port)
                    continue
                self.statuses[resp.status] += 1
                self.bodies[resp.body] += 1
                if resp.status != 200:
                    self.failures.append(f"{resp.status} {resp.header('l5d-err')}")
                self.done.set(self.done.get() + 1)
        finally:
            await conn.close()


def k8s_mesh_config(*routers: dict[str, Any]) -> dict[str, Any]:
    return {
        "admin": {"ip": "127.0.0.1", "port": 0},
        "namers": [{"kind": "k8s", "kubeconfig": "kubeconfig", "backoff": {"minMs": 10, "maxMs": 100}}],
        "routers": [{"servers": [{"ip": "127.0.0.1", "port": 0}], "dtab": "/svc => /#/k8s/bank/http;", **r}
                    for r in routers],
    }


async def start_mesh(make_mesh: MakeMesh, api: FakeKubeApi, *routers: dict[str, Any]) -> Mesh:
    return await make_mesh(k8s_mesh_config(*routers), files={"kubeconfig": yaml.safe_dump(api.kubeconfig())})


def k8s_namer(mesh: Mesh) -> K8sNamer:
    namer = mesh.daemon.namers[Path.read("/#/k8s")]
    assert isinstance(namer, K8sNamer)
    return namer


def accounts_watch(mesh: Mesh) -> WatchStats | None:
    """This meshd's k8s namer's view of bank/accounts (its public statistics)."""
    for watch in k8s_namer(mesh).statistics().watches:
        if (watch.namespace, watch.service) == ("bank", "accounts"):
            return watch
    return None


def accounts_seen_by(mesh: Mesh) -> set[int]:
    """The ports of the accounts pods this meshd's k8s namer currently serves."""
    watch = accounts_watch(mesh)
    ports = [p for p in watch.ports if p.port == "http"] if watch is not None else []
    return {int(a.rsplit(":", 1)[1]) for p in ports for a in p.addresses}


def daemons_known(mesh: Mesh, nodes: tuple[str, ...]) -> bool:
    """Whether the outgoing router's daemonset transformer knows a meshd on exactly these nodes."""
    [transformer] = mesh.daemon.router("outgoing").transformers
    assert isinstance(transformer, DaemonSetTransformer)
    return transformer.statistics().nodes == nodes


def has_seen(mesh: Mesh, api: FakeKubeApi) -> bool:
    """Whether this meshd has applied the API's latest change (an accounts slice change)."""
    watch = accounts_watch(mesh)
    return watch is not None and watch.endpoints_rv == str(api.revision)


async def roll(pods: Pods, traffic: list[Traffic], meshes: list[Mesh], old: str, new: str, node: str) -> None:
    """Replace pod `old` by a new pod `new` on `node`, as a rolling update does, with traffic flowing."""
    up = await pods.start(new, node, ready=False)  # created, not ready yet: never used
    await wait_until(lambda: all(has_seen(m, pods.api) for m in meshes), message="not-ready pod seen")
    assert all(up.port not in accounts_seen_by(m) for m in meshes)
    for t in traffic:
        await t.more(20)
    assert up.requests == 0
    pods.publish(new, ready=True)
    await wait_until(lambda: up.requests > 0, timeout=10, message=f"{new} serving")
    gone = pods.by_name[old]
    pods.publish(old, terminating=True)  # SIGTERM: the pod drains what it has
    await wait_until(lambda: all(gone.port not in accounts_seen_by(m) for m in meshes), message=f"{old} dropped")
    await wait_until(lambda: gone.open_connections == 0, timeout=10, message=f"meshd closed {old}'s connections")
    served = gone.requests
    for t in traffic:
        await t.more(20)
    assert gone.requests == served  # nothing more reached it
    await pods.stop(old)


# -- rollouts under live traffic -------------------------------------------------------------------


async def test_rollout_under_live_traffic_fails_no_request(
    make_mesh: MakeMesh, api: FakeKubeApi, pods: Pods, flows: Callable[[int], Traffic]
):
    await pods.start("old-1", "node-a")
    await pods.start("old-2", "node-b")
    mesh = await start_mesh(make_mesh, api, {"label": "outgoing"})
    traffic = flows(mesh.port)
    await traffic.more(30)
    await roll(pods, [traffic], [mesh], "old-1", "new-1", "node-a")
    await roll(pods, [traffic], [mesh], "old-2", "new-2", "node-b")
    await traffic.more(30)
    await traffic.stop()

    assert traffic.failures == []
    assert set(traffic.statuses) == {200}
    assert set(traffic.bodies) == {b"old-1", b"old-2", b"new-1", b"new-2"}
    router = mesh.daemon.router("outgoing")
    client = router.clients[ACCOUNTS]
    assert {e.address.port for e in client.endpoints()} == {pods.by_name["new-1"].port, pods.by_name["new-2"].port}
    assert retried(mesh) == 0  # no attempt failed and was hidden by a retry


async def test_daemonset_rollout_moves_pods_between_nodes_with_no_failed_request(
    make_mesh: MakeMesh, api: FakeKubeApi, pods: Pods, flows: Callable[[int], Traffic]
):
    await pods.start("old-a", "node-a")
    await pods.start("old-b", "node-b")
    nodes: dict[str, Mesh] = {}
    for node in ("node-a", "node-b"):
        nodes[node] = await start_mesh(
            make_mesh, api,
            {"label": "outgoing", "transformers": [{"kind": "daemonset", "path": "/#/k8s/mesh/incoming/meshd"}]},
            {"label": "incoming", "transformers": [{"kind": "localnode", "nodeName": node}]},
        )
    for node, mesh in nodes.items():  # the DaemonSet's pods: each meshd's incoming port, on its node
        api.apply(endpoint_slice("mesh", "meshd", name=f"meshd-{node}", endpoints=[
            slice_endpoint("127.0.0.1", node_name=node, pod=f"meshd-{node}", namespace="mesh")
        ], ports=[slice_port("incoming", mesh.daemon.port_of("incoming"))]))
    for mesh in nodes.values():
        await wait_until(functools.partial(daemons_known, mesh, ("node-a", "node-b")), message="daemons known")
    meshes = list(nodes.values())
    traffic = [flows(mesh.port) for mesh in meshes]
    for t in traffic:
        await t.more(30)
    await roll(pods, traffic, meshes, "old-a", "new-b", "node-b")  # node-a is left without accounts pods
    await roll(pods, traffic, meshes, "old-b", "new-a", "node-a")
    for t in traffic:
        await t.more(30)
        await t.stop()

    assert [t.failures for t in traffic] == [[], []]
    assert retried(nodes["node-a"]) == retried(nodes["node-b"]) == 0
    assert set(traffic[0].bodies) | set(traffic[1].bodies) == {b"old-a", b"old-b", b"new-a", b"new-b"}
    a, b = nodes["node-a"], nodes["node-b"]
    sent = sum(t.done.get() for t in traffic)
    # Every request went through the meshd of its pod's node: forwarded by the sender's outgoing
    # router, answered by an incoming router.
    assert await forwarded(a) + await forwarded(b) == sent
    assert await requests(a, "incoming") + await requests(b, "incoming") == sent
    assert await requests(a, "incoming") > 0 and await requests(b, "incoming") > 0


async def test_pods_of_a_node_whose_meshd_is_gone_are_called_directly(
    make_mesh: MakeMesh, make_upstream: Callable[..., Awaitable[Upstream]], api: FakeKubeApi, pods: Pods,
    flows: Callable[[int], Traffic],
):
    """A DaemonSet rollout of meshd itself: node-b's meshd pod terminates; node-a keeps serving its pods."""
    pod_b = await pods.start("accounts-b", "node-b")
    a = await start_mesh(
        make_mesh, api,
        {"label": "outgoing", "transformers": [{"kind": "daemonset", "path": "/#/k8s/mesh/incoming/meshd"}]},
    )
    incoming_b = await make_upstream(gateway_handler, name="meshd-b")  # stands in for node-b's meshd
    meshd_b = slice_endpoint("127.0.0.1", node_name="node-b", pod="meshd-b", namespace="mesh")
    api.apply(endpoint_slice("mesh", "meshd", name="meshd-b", endpoints=[meshd_b],
                             ports=[slice_port("incoming", incoming_b.port)]))
    await wait_until(functools.partial(daemons_known, a, ("node-b",)), message="daemon known")
    traffic = flows(a.port)
    await traffic.more(20)
    assert incoming_b.requests > 0 and pod_b.requests == 0
    api.apply(endpoint_slice("mesh", "meshd", name="meshd-b", endpoints=[
        slice_endpoint("127.0.0.1", ready=False, serving=True, terminating=True, node_name="node-b",
                       pod="meshd-b", namespace="mesh")
    ], ports=[slice_port("incoming", incoming_b.port)]))
    await wait_until(functools.partial(daemons_known, a, ()), message="daemon gone")
    await wait_until(lambda: pod_b.requests > 0, message="direct traffic")
    await traffic.more(20)
    await traffic.stop()
    assert traffic.failures == []
    assert await forwarded(a) == incoming_b.requests < traffic.done.get()


async def gateway_handler(request: Received) -> Reply:
    return Reply(200, [], b"via-gateway")


# -- bad input, seen by a request ------------------------------------------------------------------


async def one_request(mesh: Mesh, host: str) -> RawResponse:
    conn = await RawConnection.open(mesh.port)
    try:
        return await asyncio.wait_for(conn.request("GET", "/", host=host), 10)
    finally:
        await conn.close()


async def test_unknown_port_name_is_a_negative_binding_named_in_l5d_err(make_mesh, api, pods):
    await pods.start("p1", "node-a")
    mesh = await start_mesh(make_mesh, api, {"label": "outgoing", "dtab": "/svc => /#/k8s/bank/grpc;"})
    resp = await one_request(mesh, "accounts")
    assert resp.status == 502
    err = resp.header("l5d-err") or ""
    assert err.startswith(
        "No hosts are available for /svc/accounts: /#/k8s/bank/grpc/accounts: service bank/accounts: "
        "no port named 'grpc'"
    )
    assert "/svc=>/#/k8s/bank/grpc" in err  # the rule that led to the negative name


async def test_service_that_does_not_exist_is_a_negative_binding_named_in_l5d_err(make_mesh, api, pods):
    await pods.start("p1", "node-a")
    mesh = await start_mesh(make_mesh, api, {"label": "outgoing"})
    assert (await one_request(mesh, "accounts")).status == 200
    resp = await one_request(mesh, "ledger")
    assert resp.status == 502
    assert (resp.header("l5d-err") or "").startswith("No hosts are available for /svc/ledger:")


@pytest.mark.parametrize(("fault", "code", "reason"), [
    (Fault("status", status=403, times=None), "403", "is forbidden"),
    (Fault("html", times=None), "502", "502"),
])
async def test_api_refusing_or_answering_garbage_fails_the_binding_in_time(make_mesh, api, pods, fault, code, reason):
    await pods.start("p1", "node-a")
    api.add_fault(fault)
    mesh = await start_mesh(make_mesh, api, {"label": "outgoing", "bindingTimeoutMs": 300})
    resp = await one_request(mesh, "accounts")
    assert resp.status == 504
    err = resp.header("l5d-err") or ""
    assert err.startswith(
        "binding /svc/accounts did not complete within 300 ms: /#/k8s/bank/http/accounts: "
        "service bank/accounts: "
    )
    assert reason in err  # the namer's own reason: the API's refusal or its garbage
    registry = mesh.daemon.runtime.registry
    assert (registry.get_sample_value("meshd_k8s_api_errors_total", {"code": code}) or 0) >= 1
    # The operator finds the reason on the admin server.
    conn = await RawConnection.open(mesh.admin_port)
    namers = json.loads((await conn.request("GET", "/admin/namers", host="admin")).body)
    await conn.close()
    [watch] = [w for w in namers[0]["state"]["watches"] if w["service"] == "accounts"]
    assert reason in (watch["last_error"] or "")


async def test_l5d_err_of_a_binding_the_api_refuses_names_the_refusal(make_mesh, api, pods):
    await pods.start("p1", "node-a")
    api.add_fault(Fault("status", status=403, times=None))
    mesh = await start_mesh(make_mesh, api, {"label": "outgoing", "bindingTimeoutMs": 300})
    assert "forbidden" in ((await one_request(mesh, "accounts")).header("l5d-err") or "")


async def test_l5d_err_of_an_unknown_port_names_the_port(make_mesh, api, pods):
    await pods.start("p1", "node-a")
    mesh = await start_mesh(make_mesh, api, {"label": "outgoing", "dtab": "/svc => /#/k8s/bank/grpc;"})
    err = (await one_request(mesh, "accounts")).header("l5d-err") or ""
    assert "/#/k8s/bank/grpc/accounts" in err and "grpc" in err.split(":", 1)[1].split(";")[0]


async def test_api_failing_after_binding_keeps_the_last_known_pods_serving(make_mesh, api, pods):
    await pods.start("p1", "node-a")
    mesh = await start_mesh(make_mesh, api, {"label": "outgoing"})
    assert (await one_request(mesh, "accounts")).body == b"p1"
    async with asyncio.timeout(10):
        await api.open_watches.wait_for(lambda n: n == 2)  # the slices' and the Service's
    api.add_fault(Fault("status", status=403, times=None))
    assert api.end_watches() == 2  # the watches must start again, and are refused
    await wait_until(
        lambda: (mesh.daemon.runtime.registry.get_sample_value("meshd_k8s_api_errors_total", {"code": "403"}) or 0) > 0,
        message="403 seen",
    )
    resp = await one_request(mesh, "accounts")
    assert resp.status == 200 and resp.body == b"p1"


# -- helpers reading meshd's own metrics -------------------------------------------------------------


def retried(mesh: Mesh) -> int:
    """Retries of every kind in every router and service of this meshd."""
    return sum(
        state.retries.response + state.retries.error + state.retries.requeue
        for router in mesh.daemon.routers
        for state in router.services.values()
    )


async def forwarded(mesh: Mesh) -> float:
    return mesh.daemon.runtime.registry.get_sample_value("meshd_daemonset_forwarded_total",
                                                         {"router": "outgoing"}) or 0.0


async def requests(mesh: Mesh, router: str) -> float:
    return mesh.daemon.runtime.registry.get_sample_value(
        "meshd_requests_total", {"router": router, "service": "/svc/accounts", "status_class": "2xx"}
    ) or 0.0
