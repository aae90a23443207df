"""Where the demo's bank runs: which replicas, on which free loopback ports, and meshd's files describing them.

meshd runs two routers: `outgoing`, which the services call, and `incoming`, standing for the meshd of another
node, through which the outgoing router reaches the ledger over mutual TLS (docs/tls.md).

Everything lives in one work directory: the meshd config, the fs namer's directory (one file per service name,
one `host port` line per replica), the operators' routes.yaml, the services' SQLite files (one per service;
the canary `accounts-v2` shares `accounts.db`) and a log file per process.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import yaml

from examples.bank.story.canary import routes_document


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """A service as meshd names it (`name`), the program that implements it and how many replicas run."""

    name: str
    module: str
    replicas: int
    database: str
    version: str = "v1"
    args: tuple[str, ...] = ()
    """Options of this service's own, appended to the shared ones."""


BANK: Final[tuple[ServiceSpec, ...]] = (
    # The ack wait is 10 s rather than 30 s so that a consumer SIGKILLed mid-batch is caught up within the
    # demo's final check.
    ServiceSpec("events", "examples.bank.events", 2, "events", args=("--ack-wait", "10")),
    ServiceSpec("locks", "examples.bank.locks", 1, "locks"),
    ServiceSpec("accounts", "examples.bank.accounts", 3, "accounts"),
    ServiceSpec("accounts-v2", "examples.bank.accounts", 1, "accounts", version="v2"),
    ServiceSpec("ledger", "examples.bank.ledger", 3, "ledger"),
    ServiceSpec("payments", "examples.bank.payments", 2, "payments"),
    ServiceSpec("merchants", "examples.bank.merchants", 1, "merchants"),
    ServiceSpec("feed", "examples.bank.feed", 1, "feed"),
    ServiceSpec("notifications", "examples.bank.notifications", 1, "notifications"),
)


@dataclass(frozen=True, slots=True)
class Replica:
    service: str
    name: str
    module: str
    version: str
    port: int
    db: Path
    args: tuple[str, ...] = ()
    #: the ledger's gRPC port (`--grpc-port`) when the demo runs its gRPC hop; 0 otherwise
    grpc_port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self, meshd_url: str, *, python: str = sys.executable) -> list[str]:
        return [
            python,
            "-m",
            self.module,
            "--port",
            str(self.port),
            "--db",
            str(self.db),
            "--replica",
            self.name,
            "--version",
            self.version,
            "--meshd",
            meshd_url,
            "--events",
            *self.args,
            *(("--grpc-port", str(self.grpc_port)) if self.grpc_port else ()),
        ]


@dataclass(frozen=True, slots=True)
class BrokerNode:
    """One nats-server of the demo's 3-node JetStream cluster (`--bus nats`)."""

    name: str
    port: int
    cluster_port: int
    routes: tuple[int, ...]
    store: Path

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def command(self, binary: str) -> list[str]:
        return [
            binary,
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-js",
            "-sd",
            str(self.store),
            "--server_name",
            self.name,
            "--cluster_name",
            "bank",
            "--cluster",
            f"nats://127.0.0.1:{self.cluster_port}",
            "--routes",
            ",".join(f"nats://127.0.0.1:{port}" for port in self.routes),
        ]


#: The node-to-node hop of the demo (docs/tls.md): the outgoing router reaches the ledger through an `incoming`
#: router over mutual TLS, as the meshd of another node. Identities are SPIFFE URIs in the certificates.
TRUST_DOMAIN: Final = "bank.local"
NODE_IDENTITY: Final = f"spiffe://{TRUST_DOMAIN}/ns/bank/sa/meshd-node-a"
STRANGER_IDENTITY: Final = f"spiffe://{TRUST_DOMAIN}/ns/web/sa/frontend"
INCOMING_NAME: Final = "meshd.bank.local"
LEDGER_RULE: Final = "ledger-callers"


@dataclass(frozen=True, slots=True)
class Layout:
    workdir: Path
    replicas: tuple[Replica, ...]
    router_port: int
    admin_port: int
    brokers: tuple[BrokerNode, ...] = ()
    #: the `incoming` router (mutual TLS) the ledger is reached through
    incoming_port: int = 0
    #: meshd's HTTP/2 router (`protocol: h2`) for the gRPC hop payments -> ledger (`bank.Ledger/Post`);
    #: 0 when the demo runs without it (the default until meshd speaks HTTP/2)
    grpc_port: int = 0

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def meshd_url(self) -> str:
        return f"http://127.0.0.1:{self.router_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "meshd.yaml"

    @property
    def disco_dir(self) -> Path:
        return self.workdir / "disco"

    @property
    def routes_path(self) -> Path:
        return self.workdir / "routes.yaml"

    @property
    def logs_dir(self) -> Path:
        return self.workdir / "logs"

    @property
    def tls_dir(self) -> Path:
        """The demo's development CA and certificates (made with meshd's `meshd tls` helpers)."""
        return self.workdir / "tls"

    @property
    def pid_file(self) -> Path:
        return self.workdir / "pids"

    def of(self, service: str) -> tuple[Replica, ...]:
        return tuple(replica for replica in self.replicas if replica.service == service)

    def replica(self, name: str) -> Replica:
        for replica in self.replicas:
            if replica.name == name:
                return replica
        raise KeyError(name)


def free_ports(count: int) -> list[int]:
    """Ports the kernel says are free right now; all sockets are held open together so the ports differ.

    There is a window between closing them and the services binding them; on a loopback-only demo machine
    that is an acceptable race (a clash shows as a service failing to start, reported with its log).
    """
    sockets = []
    try:
        for _ in range(count):
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            probe.bind(("127.0.0.1", 0))
            sockets.append(probe)
        return [probe.getsockname()[1] for probe in sockets]
    finally:
        for probe in sockets:
            probe.close()


BROKERS: Final = 3
LEDGER_MODULE: Final = "examples.bank.ledger"
#: the fs namer file of the gRPC hop: meshd names `/bank.Ledger/Post` `/svc/bank.Ledger`
GRPC_LEDGER_NAME: Final = "bank.Ledger"


def plan_layout(
    workdir: Path, specs: Iterable[ServiceSpec] = BANK, *, bus: str = "sqlite", grpc: bool = False
) -> Layout:
    """`bus="nats"` adds a 3-node NATS JetStream cluster and points the events replicas at it (3 replicas of
    every stream); `"sqlite"` keeps the events service's embedded log. `grpc=True` makes the ledger posting
    a gRPC call through meshd's HTTP/2 router: the ledger replicas also serve `bank.Ledger/Post` on ports of
    their own, and payments calls it at the router (`--ledger-grpc`)."""
    if bus not in ("sqlite", "nats"):
        raise ValueError(f"bus must be sqlite or nats, got {bus!r}")
    workdir = workdir.resolve()
    specs = tuple(specs)
    broker_count = BROKERS if bus == "nats" else 0
    grpc_count = 1 + sum(spec.replicas for spec in specs if spec.module == LEDGER_MODULE) if grpc else 0
    ports: Iterator[int] = iter(
        free_ports(3 + 2 * broker_count + grpc_count + sum(spec.replicas for spec in specs))
    )
    router_port, admin_port, incoming_port = next(ports), next(ports), next(ports)
    grpc_port = next(ports) if grpc else 0
    if grpc:
        specs = tuple(
            dataclasses.replace(spec, args=(*spec.args, "--ledger-grpc", f"127.0.0.1:{grpc_port}"))
            if spec.name == "payments"
            else spec
            for spec in specs
        )
    client_ports = [next(ports) for _ in range(broker_count)]
    cluster_ports = [next(ports) for _ in range(broker_count)]
    brokers = tuple(
        BrokerNode(
            name=f"nats-{index + 1}",
            port=client_ports[index],
            cluster_port=cluster_ports[index],
            routes=tuple(port for other, port in enumerate(cluster_ports) if other != index),
            store=workdir / "data" / f"nats-{index + 1}",
        )
        for index in range(broker_count)
    )
    if brokers:
        nats_args = ["--backend", "nats", "--stream-replicas", str(broker_count)]
        for broker in brokers:
            nats_args += ["--nats", broker.url]
        specs = tuple(
            dataclasses.replace(spec, args=(*spec.args, *nats_args)) if spec.name == "events" else spec
            for spec in specs
        )
    replicas = tuple(
        Replica(
            service=spec.name,
            name=f"{spec.name}-{index}",
            module=spec.module,
            version=spec.version,
            port=next(ports),
            db=workdir / "data" / f"{spec.database}.db",
            args=spec.args,
            grpc_port=next(ports) if grpc and spec.module == LEDGER_MODULE else 0,
        )
        for spec in specs
        for index in range(1, spec.replicas + 1)
    )
    return Layout(workdir.resolve(), replicas, router_port, admin_port, brokers, incoming_port, grpc_port)


def grpc_router(layout: Layout) -> dict[str, object]:
    """meshd's HTTP/2 router for the gRPC hop: `/bank.Ledger/Post` is named `/svc/bank.Ledger` (identifier
    `grpc`) and bound by the fs namer to the ledger replicas' gRPC ports; UNAVAILABLE is retried
    (`grpc.default`), and a posting is idempotent under its key, so that is safe."""
    return {
        "label": "grpc",
        "protocol": "h2",
        "servers": [{"ip": "127.0.0.1", "port": layout.grpc_port}],
        "identifier": {"kind": "grpc"},
        "dtab": "/svc => /#/fs;",
        "service": {
            "responseClassifier": {"kind": "grpc.default"},
            "retries": {"budget": {"ttlSecs": 10, "minRetriesPerSec": 10, "percentCanRetry": 0.2}},
        },
        "client": {
            "loadBalancer": {"kind": "ewma"},
            "failureAccrual": {"kind": "consecutiveFailures", "failures": 5},
        },
    }


def meshd_config(layout: Layout) -> dict[str, object]:
    """The config meshd runs with; paths are absolute so it does not matter where meshd resolves them from."""
    config = _meshd_config(layout)
    if layout.grpc_port:
        routers = config["routers"]
        assert isinstance(routers, list)
        routers.append(grpc_router(layout))
    return config


def _meshd_config(layout: Layout) -> dict[str, object]:
    tls = layout.tls_dir
    return {
        "admin": {"ip": "127.0.0.1", "port": layout.admin_port},
        "namers": [{"kind": "fs", "rootDir": str(layout.disco_dir)}],
        "routers": [
            {
                "label": "outgoing",
                "servers": [{"ip": "127.0.0.1", "port": layout.router_port}],
                "identifier": {"kind": "header", "header": "host"},
                # the ledger is on "another node": its meshd's incoming router, over mutual TLS
                "dtab": f"/svc => /#/fs; /svc/ledger => /$/inet/127.0.0.1/{layout.incoming_port};",
                "routes": str(layout.routes_path),
                "service": {
                    "retries": {"budget": {"ttlSecs": 10, "minRetriesPerSec": 10, "percentCanRetry": 0.2}}
                },
                "client": {
                    "loadBalancer": {"kind": "ewma"},
                    "failureAccrual": {"kind": "consecutiveFailures", "failures": 5},
                },
                # over HTTP/2: the payments' calls to the ledger share one mTLS connection
                # (docs/tls.md, "The hop between nodes")
                "clients": [
                    {
                        "prefix": "/$/inet",
                        "protocol": "h2",
                        "tls": {
                            "serverName": INCOMING_NAME,
                            "caPath": str(tls / "ca.crt"),
                            "certPath": str(tls / "node-a.crt"),
                            "keyPath": str(tls / "node-a.key"),
                        },
                    }
                ],
            },
            {
                "label": "incoming",
                # HTTP/2 from the other node's meshd (HTTP/1.1 from anything else), HTTP/1.1 to the ledger
                "protocol": "h2",
                "h2": {"acceptHttp1": True},
                "servers": [
                    {
                        "ip": "127.0.0.1",
                        "port": layout.incoming_port,
                        "tls": {
                            "certPath": str(tls / "incoming.crt"),
                            "keyPath": str(tls / "incoming.key"),
                            "caPath": str(tls / "ca.crt"),
                            "requireClientCert": True,
                        },
                    }
                ],
                "identifier": {"kind": "header", "header": "host"},
                "dtab": "/svc => /#/fs;",
                # the outgoing meshd forwards from loopback: keep its l5d-ctx-* context (deadlines)
                "trustedSources": ["127.0.0.0/8"],
                "service": {
                    "retries": {"budget": {"ttlSecs": 10, "minRetriesPerSec": 10, "percentCanRetry": 0.2}}
                },
                "client": {
                    "protocol": "http",
                    "loadBalancer": {"kind": "ewma"},
                    "failureAccrual": {"kind": "consecutiveFailures", "failures": 5},
                },
                # only node A's meshd may call the ledger; anything else is refused (default: deny)
                "authorization": {"rules": [{"name": LEDGER_RULE, "prefix": "/svc/ledger", "allow": [NODE_IDENTITY]}]},
            },
        ],
    }


def write_tls_files(layout: Layout) -> None:
    """A development CA, node A's certificate (its meshd's identity), the incoming router's, and a stranger's."""
    from meshd.tls.certs import make_ca, make_cert, write_pair

    tls = layout.tls_dir
    ca = make_ca("bank demo CA", days=2)
    write_pair(ca, tls / "ca.crt", tls / "ca.key")
    write_pair(make_cert(ca, uris=[NODE_IDENTITY], days=2), tls / "node-a.crt", tls / "node-a.key")
    write_pair(make_cert(ca, dns=[INCOMING_NAME], days=2), tls / "incoming.crt", tls / "incoming.key")
    write_pair(make_cert(ca, uris=[STRANGER_IDENTITY], days=2), tls / "stranger.crt", tls / "stranger.key")


def write_mesh_files(layout: Layout) -> None:
    """Write meshd.yaml, one fs-namer file per service and routes.yaml with 100% of accounts on v1."""
    layout.disco_dir.mkdir(parents=True, exist_ok=True)
    layout.logs_dir.mkdir(parents=True, exist_ok=True)
    for service in sorted({replica.service for replica in layout.replicas}):
        lines = "".join(f"127.0.0.1 {replica.port}\n" for replica in layout.of(service))
        write_atomically(layout.disco_dir / service, lines)
    grpc_replicas = [replica for replica in layout.replicas if replica.grpc_port]
    if grpc_replicas:
        lines = "".join(f"127.0.0.1 {replica.grpc_port}\n" for replica in grpc_replicas)
        write_atomically(layout.disco_dir / GRPC_LEDGER_NAME, lines)
    write_tls_files(layout)
    write_atomically(layout.config_path, yaml.safe_dump(meshd_config(layout), sort_keys=False))
    write_atomically(layout.routes_path, routes_document(0.0))


def write_atomically(path: Path, text: str) -> None:
    """Replace the file in one step (write beside it, then rename), so a watcher never reads half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
