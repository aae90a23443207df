"""`/metrics` and `/admin/endpoints` after real traffic: every family meshd defines, with sane values.

The scrape is parsed with prometheus-client's own parser, so a malformed exposition fails here
as it would fail in Prometheus. One scenario produces every kind of event the metrics count:
successes, a retried 503, a refused retry (empty budget), a total timeout, an ejection, a pick
made while every endpoint was ejected, a good and a bad routing-file reload.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import re
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families

from meshd.admin.metrics import METRICS
from tests.support.client import RawConnection, RawResponse
from tests.support.upstreams import Received, Reply
from tests.support.waiting import wait_until

Labels = tuple[tuple[str, str], ...]

ROUTES = "dtab: |\n  /svc => /#/fs;\n"

#: families a router exports only when configured for them (this scenario is not)
ONLY_WHEN_CONFIGURED = {
    "meshd_daemonset_forwarded_total": "routers with transformers",
    # the supervisor's, under --workers only (tests/system/test_worker_liveness.py)
    "meshd_worker_up": "meshd run --workers N",
    "meshd_worker_heartbeat_age_seconds": "meshd run --workers N",
    "meshd_worker_restarts_total": "meshd run --workers N",
    "meshd_faults_injected_total": "routing files with fault rules (tests/integration/test_fault_rules.py)",
    "meshd_mirrored_requests_total": "routing files with mirror rules (tests/integration/test_mirror_rules.py)",
    "meshd_mirror_skipped_total": "routing files with mirror rules (tests/integration/test_mirror_rules.py)",
    # TLS and authorization (docs/tls.md; tests/integration/test_tls_*.py, test_authz.py check them)
    "meshd_tls_handshakes_total": "TLS servers or clients",
    "meshd_tls_handshake_failures_total": "TLS servers or clients",
    "meshd_tls_cert_reloads_total": "TLS servers or clients",
    "meshd_tls_cert_expiry_timestamp_seconds": "TLS servers or clients",
    "meshd_authz_denied_total": "routers with a TLS server or an authorization section",
    # HTTP/2 (docs/http2.md; tests/integration/test_h2_attacks.py checks them)
    "meshd_h2_connection_errors_total": "routers with protocol: h2",
    "meshd_h2_streams_reset_total": "routers with protocol: h2",
    "meshd_h2_streams_refused_total": "routers with protocol: h2",
    "meshd_h2_ping_timeouts_total": "routers with protocol: h2",
    # tracing (docs/tracing.md; tests/integration/test_tracing.py checks them)
    "meshd_trace_spans_exported_total": "tracing with a collector",
    "meshd_trace_spans_dropped_total": "tracing with a collector",
    "meshd_trace_spans_queued": "tracing with a collector",
    "meshd_trace_malformed_headers_total": "tracing with a collector",
    "meshd_grpc_timeouts_total": "routers with protocol: h2",
    "meshd_grpc_responses_total": "routers with protocol: h2 that answered gRPC calls",
}


class Scrape:
    """One parsed scrape: families by name, and samples as (sample name, labels) -> value."""

    def __init__(self, text: str) -> None:
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples: dict[tuple[str, Labels], float] = {}
        for family in self.families.values():
            for s in family.samples:
                self.samples[(s.name, tuple(sorted(s.labels.items())))] = s.value

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, tuple(sorted(labels.items())))]

    def select(self, name: str, **labels: str) -> dict[Labels, float]:
        """Samples of `name` whose labels include `labels`."""
        want = set(labels.items())
        return {lb: v for (n, lb), v in self.samples.items() if n == name and want <= set(lb)}


async def http_get(port: int, target: str, host: str = "localhost", method: str = "GET") -> RawResponse:
    conn = await RawConnection.open(port)
    try:
        return await asyncio.wait_for(conn.request(method, target, host=host), 10)
    finally:
        await conn.close()


async def scrape(mesh) -> Scrape:
    resp = await http_get(mesh.admin_port, "/metrics")
    assert resp.status == 200
    assert (resp.header("content-type") or "").startswith("text/plain")
    return Scrape(resp.body.decode())


def family_name(metric: str) -> str:
    """The family name the parser reports: counters lose their `_total` suffix."""
    return metric.removesuffix("_total")


async def test_every_metric_family_appears_with_sane_values_after_traffic(make_mesh, make_upstream, tmp_path):
    calls: defaultdict[str, int] = defaultdict(int)

    async def flaky(req: Received) -> Reply:  # every other request fails: a GET is retried once
        calls["flaky"] += 1
        return Reply(503 if calls["flaky"] % 2 else 200, [], b"flaky\n")

    async def down(req: Received) -> Reply:
        return Reply(503, [], b"down\n")

    never = asyncio.Event()

    async def hang(req: Received) -> Reply:
        await never.wait()
        return Reply(200)

    acc1, acc2 = await make_upstream(), await make_upstream()
    flaky_up, down_up, hang_up = await make_upstream(flaky), await make_upstream(down), await make_upstream(hang)
    mesh = await make_mesh(
        routes="routes.yaml",
        files={"routes.yaml": ROUTES},
        services=[
            {"prefix": "/svc/down", "retries": {"budget": {"minRetriesPerSec": 0, "percentCanRetry": 0.0}}},
            {"prefix": "/svc/hang", "totalTimeoutMs": 100},
        ],
        clients=[
            {
                "prefix": "/#/fs/down",
                "failureAccrual": {"kind": "consecutiveFailures", "failures": 2, "backoff": {"kind": "constant", "ms": 60000}},
            }
        ],
    )
    mesh.register("accounts", acc1, acc2)
    mesh.register("flaky", flaky_up)
    mesh.register("down", down_up)
    mesh.register("hang", hang_up)

    held = await RawConnection.open(mesh.port)  # one downstream connection kept open to the end
    try:
        for _ in range(20):
            assert (await held.request("GET", "/", host="accounts")).status == 200
        assert (await http_get(mesh.port, "/", host="flaky")).status == 200  # 503, retried, 200
        # POSTs are not retried on 5xx: two failures eject the only endpoint, the third is an all-ejected pick
        for _ in range(3):
            assert (await http_get(mesh.port, "/", host="down", method="POST")).status == 503
        # a GET would be retried, but this service's budget allows none
        assert (await http_get(mesh.port, "/", host="down")).status == 503
        timed_out = await http_get(mesh.port, "/", host="hang")
        assert timed_out.status == 504 and timed_out.header("l5d-err")

        # a bad routing-file edit is refused and counted
        (mesh.root / "routes.yaml").write_text("dtab: |\n  /svc => \n")
        watcher = mesh.daemon.routes_watchers["outgoing"]
        await wait_until(lambda: watcher.errors == 1, timeout=5, message="bad routes edit refused")

        m = await scrape(mesh)
    finally:
        await held.close()

    # every family defined in METRICS is exported, with its help text and the right type
    for name, help_text in METRICS.items():
        family = m.families.get(family_name(name))
        if name in ONLY_WHEN_CONFIGURED and (family is None or not family.samples):
            continue
        assert family is not None, f"{name} missing from /metrics"
        assert family.documentation == help_text
        expected = "counter" if name.endswith("_total") else "histogram" if "duration" in name else "gauge"
        assert family.type == expected, name
        assert family.samples, f"{name} has no samples"
        assert all(s.value >= 0 for s in family.samples), name
        if name.startswith("meshd_discovery_"):  # a namer's, shared by every router
            assert all(s.labels.get("namer") == "/#/fs" for s in family.samples), name
        elif name in ("meshd_config_file_reloads_total", "meshd_config_loaded_timestamp_seconds"):
            pass  # the whole process's
        else:
            assert all(s.labels.get("router") == "outgoing" for s in family.samples), name

    # discovery freshness: the fs namer scanned its directory moments ago, nothing is stale
    fresh = (("name", "accounts"), ("namer", "/#/fs"))
    assert 0 <= m.samples[("meshd_discovery_last_update_age_seconds", fresh)] < 5
    assert m.samples[("meshd_discovery_stale", fresh)] == 0

    r = {"router": "outgoing"}
    accounts = {**r, "service": "/svc/accounts"}
    # requests by status class: what the clients saw
    assert m.value("meshd_requests_total", **accounts, status_class="2xx") == 20
    assert m.value("meshd_requests_total", **r, service="/svc/flaky", status_class="2xx") == 1
    assert m.value("meshd_requests_total", **r, service="/svc/down", status_class="5xx") == 4
    assert m.value("meshd_requests_total", **r, service="/svc/hang", status_class="5xx") == 1
    # latency histogram: cumulative buckets, +Inf equals the count, the sum is plausible
    buckets = sorted(
        (float(dict(lb)["le"]), v) for lb, v in m.select("meshd_request_duration_seconds_bucket", **accounts).items()
    )
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)
    assert buckets[-1] == (float("inf"), 20)
    assert m.value("meshd_request_duration_seconds_count", **accounts) == 20
    assert 0 < m.value("meshd_request_duration_seconds_sum", **accounts) < 20 * 1.0
    hang_sum = m.value("meshd_request_duration_seconds_sum", **r, service="/svc/hang")
    assert 0.09 <= hang_sum < 5  # uvloop timers have millisecond resolution: allow firing ~1 ms early
    # retries, the budget, timeouts
    assert m.value("meshd_retries_total", **r, service="/svc/flaky", reason="response") == 1
    assert m.value("meshd_retries_total", **accounts, reason="response") == 0
    assert m.value("meshd_retry_budget_exhausted_total", **r, service="/svc/down") == 1
    assert m.value("meshd_retry_budget_exhausted_total", **accounts) == 0
    assert m.value("meshd_retry_budget_balance", **r, service="/svc/down") == 0
    assert m.value("meshd_retry_budget_balance", **accounts) >= 1  # the floor of minRetriesPerSec
    assert m.value("meshd_timeouts_total", **r, service="/svc/hang", kind="total") == 1
    assert m.value("meshd_timeouts_total", **accounts, kind="total") == 0
    # clients: endpoints, pools, per-endpoint load and state
    acc = {**r, "client": "/#/fs/accounts"}
    assert m.value("meshd_endpoints", **acc) == 2
    idle = m.value("meshd_pool_connections", **acc, state="idle")
    assert idle == acc1.open_connections + acc2.open_connections >= 1  # meshd's view matches the upstreams'
    assert m.value("meshd_pool_connections", **acc, state="busy") == 0
    assert m.value("meshd_pool_waiters", **acc) == 0
    pending = m.select("meshd_endpoint_pending")
    assert len(pending) == 2 + 1 + 1 + 1 and set(pending.values()) == {0}  # nothing in flight any more
    ewma = m.select("meshd_endpoint_ewma_seconds", **acc)
    assert len(ewma) == 2 and all(0 < v < 1 for v in ewma.values())
    states: dict[str, dict[str, float]] = defaultdict(dict)
    for lb, v in m.select("meshd_endpoint_state").items():
        d = dict(lb)
        states[d["endpoint"]][d["state"]] = v
    for endpoint, by_state in states.items():
        assert set(by_state) == {"live", "ejected", "probing"}
        assert sum(by_state.values()) == 1, endpoint  # exactly one current state
    assert states[f"127.0.0.1:{down_up.port}"]["ejected"] == 1
    assert states[f"127.0.0.1:{acc1.port}"]["live"] == 1
    assert m.value("meshd_ejections_total", **r, client="/#/fs/down") == 1
    assert m.value("meshd_ejections_total", **acc) == 0
    assert m.value("meshd_all_ejected_picks_total", **r, client="/#/fs/down") == 2  # POST #3 and the GET
    assert m.value("meshd_all_ejected_picks_total", **acc) == 0
    # the routing file and the downstream connections
    assert m.value("meshd_config_reloads_total", **r, result="success") == 1  # the initial load
    assert m.value("meshd_config_reloads_total", **r, result="error") == 1
    assert m.value("meshd_connections_accepted_total", **r) == 1 + 1 + 4 + 1
    assert m.value("meshd_connections_open", **r) >= 1  # `held` was open at scrape time


async def test_in_flight_requests_show_as_pending_and_busy(make_mesh, make_upstream):
    release = asyncio.Event()

    async def held(req: Received) -> Reply:
        await release.wait()
        return Reply(200, [], b"done\n")

    up = await make_upstream(held)
    mesh = await make_mesh()
    mesh.register("svc", up)
    conns = [await RawConnection.open(mesh.port) for _ in range(3)]
    tasks = [asyncio.create_task(c.request("GET", "/", host="svc")) for c in conns]
    try:
        await wait_until(lambda: up.requests == 3, timeout=5, message="three requests at the upstream")
        m = await scrape(mesh)
        cl = {"router": "outgoing", "client": "/#/fs/svc"}
        assert m.value("meshd_endpoint_pending", **cl, endpoint=f"127.0.0.1:{up.port}") == 3
        assert m.value("meshd_pool_connections", **cl, state="busy") == 3
        assert m.value("meshd_connections_open", router="outgoing") == 3
        release.set()
        assert [r.status for r in await asyncio.wait_for(asyncio.gather(*tasks), 5)] == [200] * 3
        after = await scrape(mesh)
        assert after.value("meshd_endpoint_pending", **cl, endpoint=f"127.0.0.1:{up.port}") == 0
        assert after.value("meshd_pool_connections", **cl, state="idle") == 3
    finally:
        release.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in conns:
            await c.close()


async def test_admin_endpoints_lists_each_clients_endpoints_with_load_cost_and_state(make_mesh, make_upstream):
    a, b = await make_upstream(), await make_upstream()
    mesh = await make_mesh()
    mesh.register("accounts", a, f"127.0.0.1 {b.port} 2")
    mesh.register("ledger", a)
    for host in ("accounts", "ledger"):
        for _ in range(5):
            assert (await http_get(mesh.port, "/", host=host)).status == 200
    resp = await http_get(mesh.admin_port, "/admin/endpoints")
    assert resp.status == 200 and (resp.header("content-type") or "").startswith("application/json")
    (router,) = json.loads(resp.body)
    assert router["router"] == "outgoing"
    clients = {c["client"]: c for c in router["clients"]}
    assert set(clients) == {"/#/fs/accounts", "/#/fs/ledger"}
    accounts = clients["/#/fs/accounts"]
    assert accounts["balancer"] == "ewma" and accounts["addr"] == "bound"
    assert accounts["statistics"] == {
        "live": 2, "ejected": 0, "probing": 0, "ejections": 0, "allEjectedPicks": 0,
        "panic": False, "panicPicks": 0, "ejectionsPrevented": 0,
    }
    endpoints = {e["address"]: e for e in accounts["endpoints"]}
    assert set(endpoints) == {f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"}
    assert endpoints[f"127.0.0.1:{b.port}"]["weight"] == 2.0
    for e in endpoints.values():
        assert e["state"] == "live" and e["pending"] == 0 and e["ejections"] == 0
        assert e["cost"] >= 0 and e["ewmaSeconds"] >= 0
        assert set(e["pool"]) == {"idle", "busy", "dialing", "waiters"}
    assert sum(e["pool"]["idle"] for e in endpoints.values()) >= 1
    assert any(e["ewmaSeconds"] > 0 for e in endpoints.values())
    (ledger_endpoint,) = clients["/#/fs/ledger"]["endpoints"]
    assert ledger_endpoint["address"] == f"127.0.0.1:{a.port}"


def test_metrics_md_names_only_metrics_that_exist():
    """Every metric name in docs/metrics.md (PromQL examples and alert rules included) is real."""
    root = pathlib.Path(__file__).resolve().parents[2]
    known = set(METRICS)
    known |= {f"{name}_{suffix}" for name in METRICS if "duration" in name for suffix in ("bucket", "sum", "count")}
    namer_sources = "".join(p.read_text() for p in (root / "meshd" / "discovery").glob("*.py"))
    known |= set(re.findall(r'"(meshd_[a-z0-9_]+)"', namer_sources))
    documented = set(re.findall(r"\bmeshd_[a-z0-9_]+", (root / "docs" / "metrics.md").read_text()))
    assert documented - known == set()
    assert set(METRICS) <= documented
