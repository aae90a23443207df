"""What every bank service has besides its own routes: identity headers, /healthz, the chaos knob and /_stats.

Business routes are every path except `/healthz` and the `/_...` operator endpoints. Only business requests are
counted in `/_stats` and only they feel the chaos knob, so the demo can probe and steer a replica without
disturbing what it measures.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from examples.bank.chaos import Chaos, ChaosSettings
from examples.bank.options import ServiceOptions
from examples.bank.payloads import InvalidPayload, read_object

REPLICA_HEADER: Final = "x-replica"
VERSION_HEADER: Final = "x-version"
SERVICE_HEADER: Final = "x-service"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class ReplicaIdentity:
    service: str
    replica: str
    version: str


class ReplicaStats:
    """Counts the business requests this replica served since it started.

    `boot_id` changes on every start, so a reader taking deltas knows when a restart reset the counters.
    """

    def __init__(self, boot_id: str) -> None:
        self.boot_id = boot_id
        self._requests = 0
        self._by_class: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"ReplicaStats(requests={self._requests})"

    @property
    def requests(self) -> int:
        return self._requests

    def record_start(self) -> None:
        """Count the request when it arrives: that is when the balancer chose this replica."""
        self._requests += 1

    def record_finish(self, status: int) -> None:
        self._by_class[f"{status // 100}xx"] += 1

    def snapshot(self, identity: ReplicaIdentity) -> dict[str, object]:
        return {
            "service": identity.service,
            "replica": identity.replica,
            "version": identity.version,
            "boot_id": self.boot_id,
            "requests": self._requests,
            "responses": dict(sorted(self._by_class.items())),
        }


IDENTITY: Final = web.AppKey("identity", ReplicaIdentity)
CHAOS: Final = web.AppKey("chaos", Chaos)
STATS: Final = web.AppKey("stats", ReplicaStats)


def create_replica_app(options: ServiceOptions, *, rng: random.Random | None = None) -> web.Application:
    """An aiohttp app with the parts every service shares; the service adds its own routes to it."""
    app = web.Application(middlewares=[_replica_middleware])
    app.on_response_prepare.append(_stamp_identity)
    app[IDENTITY] = ReplicaIdentity(options.service, options.replica, options.version)
    app[CHAOS] = Chaos(rng if rng is not None else random.Random())
    app[STATS] = ReplicaStats(uuid.uuid4().hex)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/_stats", _stats)
    app.router.add_get("/_chaos", _get_chaos)
    app.router.add_post("/_chaos", _set_chaos)
    return app


def is_business_path(path: str) -> bool:
    return path != "/healthz" and not path.startswith("/_")


@web.middleware
async def _replica_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not is_business_path(request.path):
        return await _handle(request, handler)
    stats, chaos = request.app[STATS], request.app[CHAOS]
    stats.record_start()
    await chaos.delay()
    if chaos.should_fail():
        response: web.StreamResponse = web.json_response({"error": "chaos: injected failure"}, status=503)
    else:
        try:
            response = await _handle(request, handler)
        except web.HTTPException as exc:
            stats.record_finish(exc.status)
            raise
    stats.record_finish(response.status)
    return response


async def _handle(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except InvalidPayload as exc:
        return web.json_response({"error": str(exc)}, status=422)


async def _stamp_identity(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer says who gave it, including errors and answers a handler sends early."""
    identity = request.app[IDENTITY]
    headers = response.headers
    headers[REPLICA_HEADER] = identity.replica
    headers[VERSION_HEADER] = identity.version
    headers[SERVICE_HEADER] = identity.service


async def _healthz(request: web.Request) -> web.Response:
    identity = request.app[IDENTITY]
    return web.json_response(
        {
            "status": "ok",
            "service": identity.service,
            "replica": identity.replica,
            "version": identity.version,
        }
    )


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATS].snapshot(request.app[IDENTITY]))


async def _get_chaos(request: web.Request) -> web.Response:
    return web.json_response(request.app[CHAOS].settings.to_json())


async def _set_chaos(request: web.Request) -> web.Response:
    body = await read_object(request)
    try:
        settings = ChaosSettings.from_json(body)
    except ValueError as exc:
        raise InvalidPayload(str(exc)) from exc
    request.app[CHAOS].set(settings)
    return web.json_response(settings.to_json())
