"""An in-process bank for tests: each service on its own loopback server, joined by a stand-in for meshd.

`HostRouter` forwards a request to a replica of the service its Host header names, round robin, and does
nothing else: no retries, no balancing, no failure accrual. Tests that need those run the real meshd. It can
be told to fail a service (optionally one method only), which is how tests make a peer misbehave at an exact
point of a flow.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from examples.bank import accounts, feed, ledger, locks, merchants, notifications, payments
from examples.bank.events import service as events_service
from examples.bank.ledger_grpc import GRPC_PORT
from examples.bank.options import ServiceOptions
from examples.bank.outbox import RetryPolicy

AppFactory = Callable[[ServiceOptions], web.Application]

SERVICES: Final[tuple[str, ...]] = ("accounts", "ledger", "payments", "merchants", "feed", "notifications")
"""Without the event log: the after-answer work runs as calls from the payments outbox."""
SERVICES_ON_THE_LOG: Final[tuple[str, ...]] = ("events", "locks", *SERVICES)
"""With `events=True`: the events service (embedded SQLite) and the locks service (the relay's leader
election) start first, and the others use them."""

_HOP_BY_HOP: Final = frozenset({"host", "connection", "keep-alive", "transfer-encoding", "content-length"})


@dataclass(frozen=True, slots=True)
class RoutedCall:
    service: str
    method: str
    path: str
    status: int


@dataclass(frozen=True, slots=True)
class _Fault:
    method: str | None
    status: int


class HostRouter:
    """The meshd stand-in. `calls` records every forwarded request, in order."""

    def __init__(self) -> None:
        self.calls: list[RoutedCall] = []
        self._replicas: dict[str, list[str]] = {}
        self._cursors: dict[str, Iterator[str]] = {}
        self._faults: dict[str, _Fault] = {}
        self._session: aiohttp.ClientSession | None = None
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self._forward)
        self.app.cleanup_ctx.append(self._lifecycle)

    def __repr__(self) -> str:
        return f"HostRouter({sorted(self._replicas)})"

    def add_replica(self, service: str, base_url: str) -> None:
        self._replicas.setdefault(service, []).append(base_url.rstrip("/"))
        self._cursors[service] = itertools.cycle(list(self._replicas[service]))

    def fail(self, service: str, *, method: str | None = None, status: int = 503) -> None:
        """Answer `status` for this service's requests (only those with `method`, if given) until heal()."""
        self._faults[service] = _Fault(method, status)

    def heal(self, service: str) -> None:
        self._faults.pop(service, None)

    async def _lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as session:
            self._session = session
            yield

    async def _forward(self, request: web.Request) -> web.Response:
        service = request.host.split(":")[0]
        fault = self._faults.get(service)
        if fault is not None and fault.method in (None, request.method):
            return self._record(
                service, request, web.Response(status=fault.status, headers={"l5d-err": "injected"})
            )
        cursor = self._cursors.get(service)
        if cursor is None or self._session is None:
            return self._record(
                service, request, web.Response(status=502, headers={"l5d-err": "unknown service"})
            )
        headers = {name: value for name, value in request.headers.items() if name.lower() not in _HOP_BY_HOP}
        async with self._session.request(
            request.method, next(cursor) + request.path_qs, data=await request.read(), headers=headers
        ) as upstream:
            body = await upstream.read()
            copied = {
                name: value for name, value in upstream.headers.items() if name.lower() not in _HOP_BY_HOP
            }
            return self._record(
                service, request, web.Response(status=upstream.status, body=body, headers=copied)
            )

    def _record(self, service: str, request: web.Request, response: web.Response) -> web.Response:
        self.calls.append(RoutedCall(service, request.method, request.path, response.status))
        return response


@dataclass
class BankHarness:
    """A running in-process bank. `urls[service]` lists the replicas' base URLs; `router_url` is "meshd"."""

    router: HostRouter
    router_url: str
    urls: dict[str, list[str]] = field(default_factory=dict)
    apps: dict[str, list[web.Application]] = field(default_factory=dict)

    def url(self, service: str, replica: int = 0) -> str:
        return self.urls[service][replica]

    def app(self, service: str, replica: int = 0) -> web.Application:
        return self.apps[service][replica]


@asynccontextmanager
async def serving(*apps: web.Application) -> AsyncIterator[list[str]]:
    """Serve each app on its own loopback port for the duration of the block; yields their base URLs."""
    servers: list[TestServer] = []
    try:
        for app in apps:
            server = TestServer(app, host="127.0.0.1")
            await server.start_server()
            servers.append(server)
        yield [str(server.make_url("")).rstrip("/") for server in servers]
    finally:
        for server in reversed(servers):
            await server.close()


@asynccontextmanager
async def running_bank(
    directory: Path,
    *,
    replicas: Mapping[str, int] | None = None,
    retry_policy: RetryPolicy | None = None,
    events: bool = False,
    ledger_grpc: bool = False,
) -> AsyncIterator[BankHarness]:
    """Start every service (one replica each unless `replicas` says otherwise) with its database under
    `directory`; replicas of a service share its database file, as they do in the demo. `events=True` runs
    the after-answer work on the event log (the services' `--events`). `ledger_grpc=True` makes the
    payments -> ledger posting the gRPC call `bank.Ledger/Post` (ledger_grpc.py): the ledger replicas serve it
    on a port of their own and payments calls the first one directly (the stand-in router speaks HTTP/1.1
    only; the demo sends it through meshd's HTTP/2 router)."""
    counts = {service: 1 for service in (SERVICES_ON_THE_LOG if events else SERVICES)} | dict(replicas or {})
    factories = _factories(retry_policy)
    router = HostRouter()
    async with AsyncExitStack() as stack:
        [router_url] = await stack.enter_async_context(serving(router.app))
        harness = BankHarness(router, router_url)
        grpc_target: str | None = None
        for service, count in counts.items():
            apps = [
                factories[service](
                    ServiceOptions(
                        service=service,
                        db=directory / f"{service}.db",
                        replica=f"{service}-{index + 1}",
                        meshd=router_url,
                        events=events,
                        grpc_port=0 if ledger_grpc and service == "ledger" else None,
                        ledger_grpc=grpc_target if service == "payments" else None,
                    )
                )
                for index in range(count)
            ]
            urls = await stack.enter_async_context(serving(*apps))
            if ledger_grpc and service == "ledger":
                grpc_target = f"127.0.0.1:{apps[0][GRPC_PORT]}"
            for url in urls:
                router.add_replica(service, url)
            harness.urls[service] = urls
            harness.apps[service] = apps
        yield harness


def _factories(retry_policy: RetryPolicy | None) -> dict[str, AppFactory]:
    return {
        "accounts": accounts.create_app,
        "ledger": ledger.create_app,
        "payments": functools.partial(payments.create_app, retry_policy=retry_policy),
        "merchants": merchants.create_app,
        "feed": feed.create_app,
        "notifications": notifications.create_app,
        "events": events_service.create_app,
        "locks": locks.create_app,
    }
