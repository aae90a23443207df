"""DaemonSet mode with two meshd processes on loopback as two nodes, `node-a` and `node-b`.

Each node's meshd has an `outgoing` router (daemonset transformer) and an `incoming` router
(localnode transformer), like `examples/kubernetes/20-configmap.yaml`. Both read one fs
directory, as every meshd of a cluster sees the same Kubernetes API: `meshd` lists the two
incoming routers with their nodes (the DaemonSet's own pods), the services list their pods
(upstreams in this process) with `node=`. A request sent to node A for a pod on node B must go
through A's outgoing and B's incoming router: both meshds' metrics count it, and the pod sees
two `Via` hops, the caller's request id, its dtab override and a deadline.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.client import RawConnection, RawResponse
from tests.support.upstreams import Received, Reply, Upstream
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(60)

ROOT = pathlib.Path(__file__).resolve().parents[2]


@dataclass
class Node:
    """One meshd process standing for one node's DaemonSet pod."""

    name: str
    outgoing: int
    incoming: int
    admin: int
    process: subprocess.Popen[bytes]
    log: pathlib.Path

    async def get(self, port: int, target: str, headers: list[tuple[str, str]] | None = None, *,
                  host: str) -> RawResponse:
        conn = await RawConnection.open(port)
        try:
            return await asyncio.wait_for(conn.request("GET", target, headers, host=host), 10)
        finally:
            await conn.close()

    async def send(self, service: str, headers: list[tuple[str, str]] | None = None) -> RawResponse:
        """A request from an application on this node: to its meshd's outgoing router."""
        return await self.get(self.outgoing, "/", headers, host=service)

    async def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        text = (await self.get(self.admin, "/metrics", host="admin")).body.decode()
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    async def metric(self, name: str, **labels: str) -> float:
        return (await self.metrics()).get((name, frozenset(labels.items())), 0.0)

    async def requests(self, router: str, service: str = "/svc/accounts") -> float:
        return await self.metric("meshd_requests_total", router=router, service=service, status_class="2xx")

    async def forwarded(self) -> float:
        return await self.metric("meshd_daemonset_forwarded_total", router="outgoing")


def free_ports(count: int) -> list[int]:
    """Ports nobody listens on now: all bound at once, so they are distinct, then released."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def node_config(name: str, disco: pathlib.Path, ports: list[int], incoming_trust: list[str]) -> dict[str, object]:
    outgoing, incoming, admin = ports
    return {
        "admin": {"ip": "127.0.0.1", "port": admin},
        "namers": [{"kind": "fs", "rootDir": str(disco), "pollIntervalMs": 20}],
        "drainTimeoutMs": 2000,
        "routers": [
            {
                "label": "outgoing",
                "servers": [{"ip": "127.0.0.1", "port": outgoing}],
                "dtab": "/svc => /#/fs;",
                "service": {"totalTimeoutMs": 5000},
                "transformers": [{"kind": "daemonset", "path": "/#/fs/meshd"}],
            },
            {
                "label": "incoming",
                "servers": [{"ip": "127.0.0.1", "port": incoming}],
                "dtab": "/svc => /#/fs;",
                # The other meshds are trusted, so l5d-ctx-* and the request id survive the hop.
                "trustedSources": incoming_trust,
                "transformers": [{"kind": "localnode", "nodeName": name}],
            },
        ],
    }


class Cluster:
    """The shared discovery directory, the pods (upstreams) and the meshd nodes."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        self.disco = root / "disco"
        self.disco.mkdir()
        self.nodes: dict[str, Node] = {}
        self.pods: list[Upstream] = []

    def place(self, service: str, pods: list[tuple[Upstream, str]]) -> None:
        """Write a service's endpoints file: `127.0.0.1 <port> node=<node>` per pod."""
        self._write(service, [f"127.0.0.1 {up.port} node={node}" for up, node in pods])

    def _write(self, name: str, lines: list[str]) -> None:
        tmp = self.disco / f".{name}.tmp"
        tmp.write_text("".join(f"{line}\n" for line in lines))
        tmp.replace(self.disco / name)

    async def pod(self, name: str) -> Upstream:
        async def handler(request: Received) -> Reply:
            return Reply(200, [("Content-Type", "text/plain")], name.encode())

        up = Upstream(handler, name=name)
        await up.start()
        self.pods.append(up)
        return up

    async def start(self, *names: str, incoming_trust: list[str] | None = None) -> list[Node]:
        ports = {name: free_ports(3) for name in names}
        self._write("meshd", [f"127.0.0.1 {ports[name][1]} node={name}" for name in names])
        started = []
        for name in names:
            config = self.root / f"{name}.yaml"
            config.write_text(yaml.safe_dump(node_config(name, self.disco, ports[name],
                                                         incoming_trust or ["127.0.0.0/8"])))
            log = self.root / f"{name}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(
                    [sys.executable, "-m", "meshd", "run", "-c", str(config)],
                    cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=out, stderr=subprocess.STDOUT,
                )
            outgoing, incoming, admin = ports[name]
            node = Node(name, outgoing, incoming, admin, process=process, log=log)
            self.nodes[name] = node
            started.append(node)
        for node in started:
            await wait_until(functools.partial(self._is_ready, node), timeout=20, message=f"{node.name} ready")
        return started

    async def _is_ready(self, node: Node) -> bool:
        if node.process.poll() is not None:
            raise AssertionError(f"meshd {node.name} exited with {node.process.returncode}:\n{node.log.read_text()}")
        try:
            return (await node.get(node.admin, "/admin/ready", host="admin")).status == 200
        except OSError:
            return False

    async def stop(self) -> dict[str, int | None]:
        """SIGTERM every meshd and wait for it; returns the exit codes."""
        for node in self.nodes.values():
            if node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for node in self.nodes.values():
            try:
                codes[node.name] = await asyncio.to_thread(node.process.wait, 15)
            except subprocess.TimeoutExpired:
                node.process.kill()
                codes[node.name] = node.process.wait()
        for up in self.pods:
            await up.close()
        self.pods.clear()
        return codes


@pytest.fixture
async def cluster(tmp_path: pathlib.Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path)
    yield c
    await c.stop()  # what a failed test left running


async def stop_cleanly(cluster: Cluster) -> None:
    """SIGTERM both meshds: each drains and exits 0."""
    codes = await cluster.stop()
    logs = {name: node.log.read_text()[-2000:] for name, node in cluster.nodes.items()}
    assert codes == {name: 0 for name in cluster.nodes}, f"meshd exit codes {codes}; logs: {logs}"


async def test_request_to_a_pod_on_another_node_goes_through_both_meshds(cluster: Cluster):
    pod_b = await cluster.pod("accounts-b")
    cluster.place("accounts", [(pod_b, "node-b")])
    a, b = await cluster.start("node-a", "node-b")

    now_ns = time.time_ns()
    deadline_ns = now_ns + 3_000_000_000  # the caller's own deadline: earlier than node-a's 5 s timeout
    headers = [("l5d-reqid", "caller-0001"), ("X-App", "kept"), ("l5d-ctx-deadline", f"{now_ns} {deadline_ns}")]
    for _ in range(5):
        resp = await a.send("accounts", headers)
        assert resp.status == 200 and resp.body == b"accounts-b"
    sent = pod_b.requests
    assert sent == 5

    seen = pod_b.received[-1]
    assert seen.header("via") == "1.1 meshd, 1.1 meshd"  # two hops: node-a's meshd, then node-b's
    assert seen.header("x-forwarded-for") == "127.0.0.1, 127.0.0.1"
    assert seen.header("l5d-reqid") == "caller-0001"  # node-b trusted node-a and kept the caller's id
    assert seen.header("l5d-dst-service") == "/svc/accounts"
    assert seen.header("l5d-dst-client") == "/#/fs/accounts"
    assert seen.header("x-app") == "kept" and seen.header("host") == "accounts"
    # The caller's deadline, kept by node-a (earlier than its own) and by node-b.
    assert (seen.header("l5d-ctx-deadline") or "").split(" ")[1] == str(deadline_ns)

    assert await a.forwarded() == sent
    assert await a.requests("outgoing") == sent
    assert await b.requests("incoming") == sent  # node-b's incoming router delivered every one
    assert await a.requests("incoming") == 0
    assert await b.requests("outgoing") == 0
    assert await b.forwarded() == 0
    assert await a.metric("meshd_endpoints", router="outgoing", client="/#/fs/accounts") == 1

    # A sender whose view is stale reaches node-a's incoming router, which has no accounts pod:
    # it delivers to node-b's pod directly rather than failing (localnode fallback: all).
    resp = await a.get(a.incoming, "/", host="accounts")
    assert resp.status == 200 and resp.body == b"accounts-b"
    assert pod_b.received[-1].header("via") == "1.1 meshd"
    assert await a.requests("incoming") == 1
    await stop_cleanly(cluster)


async def test_each_node_delivers_only_to_its_own_pods(cluster: Cluster):
    pod_a1, pod_a2, pod_b = await cluster.pod("a1"), await cluster.pod("a2"), await cluster.pod("b1")
    cluster.place("accounts", [(pod_a1, "node-a"), (pod_a2, "node-a"), (pod_b, "node-b")])
    a, b = await cluster.start("node-a", "node-b")
    for _ in range(60):
        assert (await a.send("accounts")).status == 200
    total = pod_a1.requests + pod_a2.requests + pod_b.requests
    assert total == 60
    # node-a's pods are reached through node-a's own incoming router, node-b's through node-b's.
    assert await a.requests("incoming") == pod_a1.requests + pod_a2.requests > 0
    assert await b.requests("incoming") == pod_b.requests > 0
    assert await a.forwarded() == await a.requests("outgoing") == total
    # node-a's meshd stands for two pods: its gateway weighs 2 against node-b's 1.
    [outgoing] = [r for r in json.loads((await a.get(a.admin, "/admin/endpoints", host="admin")).body)
                  if r["router"] == "outgoing"]
    [client] = outgoing["clients"]
    weights = {e["address"]: e["weight"] for e in client["endpoints"]}
    assert weights == {f"127.0.0.1:{a.incoming}": 2.0, f"127.0.0.1:{b.incoming}": 1.0}
    await stop_cleanly(cluster)


async def test_dtab_override_survives_the_hop(cluster: Cluster):
    v1, v2 = await cluster.pod("accounts-v1"), await cluster.pod("accounts-v2")
    cluster.place("accounts", [(v1, "node-b")])
    cluster.place("accounts-v2", [(v2, "node-b")])
    a, b = await cluster.start("node-a", "node-b")
    override = [("l5d-dtab", "/svc/accounts => /#/fs/accounts-v2")]
    for _ in range(3):
        resp = await a.send("accounts", override)
        # node-b's incoming router binds /svc/accounts again: only with the caller's dtab does it
        # pick accounts-v2.
        assert resp.status == 200 and resp.body == b"accounts-v2"
    assert v2.received[-1].header("l5d-ctx-dtab") == "/svc/accounts => /#/fs/accounts-v2"
    assert (await a.send("accounts")).body == b"accounts-v1"
    assert await b.requests("incoming") == v1.requests + v2.requests
    await stop_cleanly(cluster)


async def test_untrusted_sender_loses_its_context_at_the_hop(cluster: Cluster):
    """Why the incoming router's trustedSources must include the other meshds (docs/kubernetes.md)."""
    v1, v2 = await cluster.pod("accounts-v1"), await cluster.pod("accounts-v2")
    cluster.place("accounts", [(v1, "node-b")])
    cluster.place("accounts-v2", [(v2, "node-b")])
    a, b = await cluster.start("node-a", "node-b", incoming_trust=["10.0.0.0/8"])
    resp = await a.send("accounts", [("l5d-dtab", "/svc/accounts => /#/fs/accounts-v2"), ("l5d-reqid", "x-1")])
    assert resp.status == 200 and resp.body == b"accounts-v1"  # node-b dropped node-a's l5d-ctx-dtab
    seen = v1.received[-1]
    assert seen.header("l5d-ctx-dtab") is None and seen.header("l5d-reqid") != "x-1"
    assert seen.header("l5d-ctx-deadline") is None  # node-a's deadline was dropped too
    await stop_cleanly(cluster)


async def test_pod_on_a_node_without_meshd_is_called_directly(cluster: Cluster):
    pod_c = await cluster.pod("accounts-c")
    cluster.place("accounts", [(pod_c, "node-c")])  # node-c runs no meshd (yet)
    a, _ = await cluster.start("node-a", "node-b")
    assert (await a.send("accounts")).body == b"accounts-c"
    assert pod_c.received[-1].header("via") == "1.1 meshd"  # one hop: fallback direct
    assert await a.forwarded() == 0
    assert await a.requests("outgoing") == pod_c.requests
    await stop_cleanly(cluster)


async def test_meshd_refuses_to_start_when_no_namer_serves_the_daemonset_path(tmp_path: pathlib.Path):
    config = node_config("node-a", tmp_path, free_ports(3), ["127.0.0.0/8"])
    config["routers"][0]["transformers"] = [{"kind": "daemonset", "path": "/#/k8s/mesh/incoming/meshd"}]  # type: ignore[index]
    path = tmp_path / "meshd.yaml"
    path.write_text(yaml.safe_dump(config))
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "meshd", "run", "-c", str(path)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 1
    assert "no namer serves /#/k8s/mesh/incoming/meshd (namer prefixes: /#/fs)" in done.stderr
