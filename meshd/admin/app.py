"""Admin server: /metrics, /admin/ping, /admin/ready, /admin/config, /admin/routes,
/admin/endpoints, /admin/delegator, the dashboard and what it reads (/admin/requests,
/admin/replicas, /admin/dtab/playground), served by meshd/admin/web.py (the part of aiohttp.web's
API these pages use, on httptools; aiohttp itself costs every process 11 MB).

The admin server shares the event loop with the proxy but none of its hot path: it only reads
counters and statistics when asked, and `/metrics` renders in short slices so a scrape never
holds the loop for more than a few milliseconds (see meshd/admin/metrics.py).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import pathlib
import time
from collections.abc import AsyncIterator

from meshd import __version__
from meshd.admin import web
from meshd.admin.history import INTERVAL_S, ReplicaHistory, readings
from meshd.admin.metrics import Exporter
from meshd.admin.view import MeshdView
from meshd.config.loader import to_yaml_dict
from meshd.explain import dentry_origins, explain
from meshd.exposition import CONTENT_TYPE, Registry
from routing.parser import DtabSyntaxError, parse_dtab

DASHBOARD = pathlib.Path(__file__).parent / "dashboard"
_DAEMON: web.AppKey[MeshdView] = web.AppKey("daemon")
_EXPORTER: web.AppKey[Exporter] = web.AppKey("exporter")
_HISTORY: web.AppKey[ReplicaHistory] = web.AppKey("history")
#: the largest dtab the playground parses (the size of a routing file's, and then some)
PLAYGROUND_MAX_DTAB_BYTES = 65536


def build_app(daemon: MeshdView, registry: Registry, *, history_interval_s: float = INTERVAL_S) -> web.Application:
    """The admin application over `daemon`'s read-only view; `/metrics` also serves `registry`."""
    app = web.Application()
    app[_DAEMON] = daemon
    app[_EXPORTER] = Exporter(daemon, registry)
    app[_HISTORY] = ReplicaHistory(lambda: readings(daemon), interval_s=history_interval_s)
    app.cleanup_ctx.append(_sample_history)
    app.add_routes(
        [
            web.get("/metrics", metrics),
            web.get("/admin/ping", ping),
            web.get("/admin/ready", ready),
            web.get("/admin/config", config),
            web.post("/admin/reload", reload),
            web.get("/admin/routes", routes),
            web.get("/admin/endpoints", endpoints),
            web.get("/admin/delegator", delegator),
            web.get("/admin/namers", namers),
            web.get("/admin/version", version),
            web.get("/admin/requests", recent_requests),
            web.get("/admin/replicas", replicas),
            web.get("/admin/dtab/playground", playground),
            web.get("/", dashboard),
        ]
    )
    if DASHBOARD.is_dir():
        app.router.add_static("/dashboard/", DASHBOARD)
    return app


async def _sample_history(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.get_running_loop().create_task(app[_HISTORY].run(), name="admin-replica-history")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def start_admin(
    daemon: MeshdView, registry: Registry, ip: str, port: int
) -> tuple[web.AdminServer, int]:
    server = await web.serve_tcp(build_app(daemon, registry), ip, port)
    return server, server.port


async def start_admin_unix(daemon: MeshdView, registry: Registry, path: str) -> web.AdminServer:
    """A worker's admin server, on a Unix socket the supervisor aggregates (see workers.py)."""
    return await web.serve_unix(build_app(daemon, registry), path)


async def stop_admin(server: object) -> None:
    assert isinstance(server, web.AdminServer)
    await server.close()


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, indent=2, default=str) + "\n", status=status, content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    body = await request.app[_EXPORTER].scrape()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def ping(request: web.Request) -> web.Response:
    return web.Response(text="pong\n")


async def ready(request: web.Request) -> web.Response:
    if request.app[_DAEMON].ready:
        return web.Response(text="ready\n")
    return web.Response(text="not ready\n", status=503)


async def version(request: web.Request) -> web.Response:
    return _json({"version": __version__})


async def config(request: web.Request) -> web.Response:
    """The running config, with its version (a hash of its settings), load time and the last
    refused reload's reason."""
    daemon = request.app[_DAEMON]
    return _json({
        "version": daemon.config_version,
        "loadedAt": daemon.config_loaded_at,
        "lastReloadError": daemon.config_last_error,
        "config": to_yaml_dict(daemon.config),
    })


async def reload(request: web.Request) -> web.Response:
    """`POST /admin/reload`: read meshd.yaml again and apply it (as SIGHUP); from loopback only."""
    if request.remote not in ("127.0.0.1", "::1"):
        return _json({"error": "POST /admin/reload is accepted from loopback only"}, status=403)
    outcome = await request.app[_DAEMON].reload_from_file()
    status = 200 if outcome.result != "refused" else 422
    return _json({"result": outcome.result, "message": outcome.message, "version": outcome.version}, status=status)


async def routes(request: web.Request) -> web.Response:
    daemon = request.app[_DAEMON]
    out = []
    for router in daemon.routers:
        watcher = daemon.routes_watchers.get(router.label)
        out.append(
            {
                "router": router.label,
                "dtab": router.own_dtab.show(),
                "effectiveDtab": router.dtab.get().show(),
                "routesFile": watcher.source if watcher else None,
                "routes": watcher.current.to_json() if watcher and watcher.current else None,
                "version": watcher.version if watcher else None,
                "digest": watcher.digest if watcher else None,
                "loadedAt": _timestamp(watcher.loaded_at) if watcher else None,
                "faultsActive": [
                    {"rule": rule.name, "prefix": rule.prefix.show(), "fault": rule.fault.to_json() if rule.fault else None}
                    for rule in router.match_rules.faults
                ],
                "mirrorsActive": [
                    {"rule": rule.name, "prefix": rule.prefix.show(),
                     "mirror": rule.mirror.to_json() if rule.mirror else None}
                    for rule in router.match_rules.mirrors
                ],
                "reloads": {"success": watcher.successes, "error": watcher.errors} if watcher else None,
                "lastError": watcher.last_error if watcher else None,
            }
        )
    return _json(out)


def _timestamp(when: float | None) -> str | None:
    """Wall time as RFC 3339 UTC with milliseconds (`2026-12-02T01:30:00.123Z`)."""
    if when is None:
        return None
    moment = datetime.datetime.fromtimestamp(when, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


async def endpoints(request: web.Request) -> web.Response:
    daemon = request.app[_DAEMON]
    return _json(
        [
            {"router": router.label, "clients": [client.to_json() for client in list(router.clients.values())]}
            for router in daemon.routers
        ]
    )


async def namers(request: web.Request) -> web.Response:
    """Each namer's own view of its state (watches, resource versions, last errors)."""
    daemon = request.app[_DAEMON]
    out = []
    for prefix, namer in daemon.namers.items():
        dump = getattr(namer, "state_dump", None) or getattr(namer, "statistics", None)
        state = dump() if dump is not None else None
        if state is not None and not isinstance(state, dict | list):
            state = {k: getattr(state, k) for k in getattr(state, "__slots__", ())} or repr(state)
        out.append({"prefix": prefix.show(), "namer": type(namer).__name__, "state": state})
    return _json(out)


async def delegator(request: web.Request) -> web.Response:
    daemon = request.app[_DAEMON]
    path = request.query.get("path")
    if not path:
        return _json({"error": "give the logical name to explain: ?path=/svc/accounts"}, status=400)
    label = request.query.get("router")
    try:
        router = daemon.router(label) if label else daemon.routers[0]
    except KeyError:
        return _json({"error": f"no router {label!r}"}, status=404)
    watcher = daemon.routes_watchers.get(router.label)
    result = await explain(
        path,
        router.dtab.get(),
        daemon.namers,
        lambda id: router.addr_of(id).get(),
        local_dtab=request.query.get("dtab", ""),
        origins=dentry_origins(router.label, router.own_dtab, watcher.current if watcher else None),
        timeout_s=2.0,
    )
    result["router"] = router.label
    return _json(result, status=400 if "error" in result and "trace" not in result else 200)


async def dashboard(request: web.Request) -> web.StreamResponse:
    index = DASHBOARD / "index.html"
    if index.is_file():
        return web.FileResponse(index)
    return web.Response(text="meshd admin: /metrics /admin/endpoints /admin/routes /admin/delegator?path=\n")


async def recent_requests(request: web.Request) -> web.Response:
    """The last requests each router answered (a ring of 128 per router), newest first."""
    daemon = request.app[_DAEMON]
    label = request.query.get("router")
    wall_minus_mono = time.time() - time.monotonic()  # the listener stamps requests on the monotonic clock
    out = []
    for router in daemon.routers:
        if label and router.label != label:
            continue
        recent = router.stats.recent
        rows = []
        for sample in recent.newest_first():
            node = sample.node
            rows.append(
                {
                    "time": _timestamp(sample.at + wall_minus_mono),
                    "service": sample.service,
                    "endpoint": node.member.label if node is not None else None,
                    "status": sample.status,
                    "latencyMs": round(sample.seconds * 1000.0, 3),
                    "attempts": sample.attempts,
                    "traceId": sample.trace_id or None,
                    "reqid": sample.reqid or None,
                }
            )
        out.append({"router": router.label, "recorded": recent.recorded, "requests": rows})
    return _json(out)


async def replicas(request: web.Request) -> web.Response:
    """Per endpoint: attempts, success and p50/p99 latency per 10 s over the last 5 minutes."""
    history = request.app[_HISTORY]
    return _json({"intervalSeconds": history.interval_s, "window": history.window, "endpoints": history.to_json()})


async def playground(request: web.Request) -> web.Response:
    """The dtab playground: how `path` binds through `dtab` (the router's own when not given).

    The typed dtab replaces the router's (nothing is changed in meshd: it is only explained, as
    `meshd dtab explain` does); a dtab that does not parse is refused with 400 and the parser's
    line and column.
    """
    daemon = request.app[_DAEMON]
    label = request.query.get("router")
    try:
        router = daemon.router(label) if label else daemon.routers[0]
    except KeyError:
        return _json({"error": f"no router {label!r}"}, status=404)
    path = request.query.get("path", "")
    text = request.query.get("dtab")
    base = router.dtab.get()
    watcher = daemon.routes_watchers.get(router.label)
    origins = dentry_origins(router.label, router.own_dtab, watcher.current if watcher else None)
    if text is None:
        # what the page shows before anything is typed: the dtab in force, and where each entry comes from
        if not path:
            return _json({"router": router.label, "dtab": base.show(), "routers": [r.label for r in daemon.routers]})
    else:
        if len(text.encode()) > PLAYGROUND_MAX_DTAB_BYTES:
            return _json({"router": router.label, "error": f"dtab longer than {PLAYGROUND_MAX_DTAB_BYTES} bytes"}, status=400)
        try:
            base = parse_dtab(text)
        except DtabSyntaxError as exc:
            return _json(
                {
                    "router": router.label,
                    "error": f"bad dtab: {exc.short}",
                    "line": exc.line,
                    "column": exc.column,
                    "reason": exc.reason,
                    "errorContext": str(exc),
                },
                status=400,
            )
        origins = ["playground"] * len(base.dentries)
    if not path:
        return _json({"router": router.label, "error": "give the logical name to explain, e.g. /svc/accounts"}, status=400)
    result = await explain(
        path, base, daemon.namers, lambda id: router.addr_of(id).get(), origins=origins, timeout_s=2.0
    )
    result["router"] = router.label
    return _json(result, status=400 if "error" in result and "trace" not in result else 200)
