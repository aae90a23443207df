"""Per-replica metrics after real traffic: attempts, failures, latency and retries per client
(bound name) and per endpoint, checked against what the upstreams themselves received.

Also the per-endpoint cap: past a client's `max_endpoint_series` endpoints share the
`endpoint="_other"` series, a removed endpoint's series goes away while its client's totals keep
its counts, and its label is free for the next replica.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_metrics import Scrape, http_get, scrape
from tests.support.client import RawConnection
from tests.support.upstreams import Received, Reply

CLIENT = "/#/fs/accounts"


async def failing(req: Received) -> Reply:
    return Reply(500, [], b"broken\n")


def _endpoint_sum(s: Scrape, name: str) -> float:
    return sum(s.select(name, client=CLIENT).values())


async def test_per_client_and_per_endpoint_attempts_failures_latency_and_retries(make_mesh, make_upstream):
    good, bad = await make_upstream(), await make_upstream(failing)
    # GETs answered 500 are retried (retryable read): each failure is an attempt, its retry another
    mesh = await make_mesh(service={"responseClassifier": {"kind": "retryableRead5XX"}})
    mesh.register("accounts", good, bad)
    conn = await RawConnection.open(mesh.port)
    try:
        statuses = [(await conn.request("GET", "/", host="accounts")).status for _ in range(40)]
    finally:
        await conn.close()
    s = await scrape(mesh)

    attempts = good.requests + bad.requests
    assert bad.requests > 0 and good.requests > 0
    assert s.value("meshd_client_requests_total", router="outgoing", client=CLIENT) == attempts
    assert s.value("meshd_client_failures_total", router="outgoing", client=CLIENT) == bad.requests
    assert s.value("meshd_client_retries_total", router="outgoing", client=CLIENT) == attempts - 40
    ep = {"router": "outgoing", "client": CLIENT}
    assert s.value("meshd_endpoint_requests_total", endpoint=f"127.0.0.1:{good.port}", **ep) == good.requests
    assert s.value("meshd_endpoint_requests_total", endpoint=f"127.0.0.1:{bad.port}", **ep) == bad.requests
    assert s.value("meshd_endpoint_failures_total", endpoint=f"127.0.0.1:{good.port}", **ep) == 0
    assert s.value("meshd_endpoint_failures_total", endpoint=f"127.0.0.1:{bad.port}", **ep) == bad.requests
    # the service saw 40 requests, 500s only where every attempt failed
    assert statuses.count(500) == sum(s.select("meshd_requests_total", status_class="5xx").values())

    # histograms: counts agree with the counters, buckets are cumulative, the sum is plausible
    for prefix, labels in (("meshd_client", {}), ("meshd_endpoint", {"endpoint": f"127.0.0.1:{good.port}"})):
        name = f"{prefix}_request_duration_seconds"
        count = s.value(f"{name}_count", **ep, **labels)
        assert count == s.value(f"{prefix}_requests_total", **ep, **labels)
        buckets = sorted(
            (float(dict(lb)["le"]), v) for lb, v in s.select(f"{name}_bucket", **ep, **labels).items()
        )
        assert [v for _, v in buckets] == sorted(v for _, v in buckets) and buckets[-1] == (float("inf"), count)
        assert 0 < s.value(f"{name}_sum", **ep, **labels) < count * 1.0  # loopback: well under 1 s each
    # families are typed as Prometheus expects
    families = {f.name: f.type for f in text_string_to_metric_families((await http_get(mesh.admin_port, "/metrics")).body.decode())}
    assert families["meshd_client_request_duration_seconds"] == "histogram"
    assert families["meshd_endpoint_requests"] == "counter"


async def test_endpoint_series_are_capped_per_client_and_removed_endpoints_keep_client_totals(make_mesh, make_upstream):
    ups = [await make_upstream() for _ in range(4)]
    mesh = await make_mesh()
    mesh.register("accounts", ups[0])
    assert (await http_get(mesh.port, "/", host="accounts")).status == 200
    (client,) = mesh.daemon.routers[0].clients.values()
    client.max_endpoint_series = 2
    mesh.register("accounts", *ups)  # two more labels would exceed the cap: one of them is `_other`

    conn = await RawConnection.open(mesh.port)
    try:
        for _ in range(60):
            assert (await conn.request("GET", "/", host="accounts")).status == 200
    finally:
        await conn.close()
    s = await scrape(mesh)
    endpoints = {dict(lb)["endpoint"] for lb in s.select("meshd_endpoint_requests_total", client=CLIENT)}
    assert len(endpoints) == 3 and "_other" in endpoints  # two labelled, the rest folded
    assert f"127.0.0.1:{ups[0].port}" in endpoints
    total = s.value("meshd_client_requests_total", router="outgoing", client=CLIENT)
    assert total == 61 == _endpoint_sum(s, "meshd_endpoint_requests_total")
    assert _endpoint_sum(s, "meshd_endpoint_request_duration_seconds_count") == 61

    # the first replica goes away: its series with it, its counts stay in the client's
    mesh.register("accounts", *ups[1:])
    s = await scrape(mesh)
    endpoints = {dict(lb)["endpoint"] for lb in s.select("meshd_endpoint_requests_total", client=CLIENT)}
    assert f"127.0.0.1:{ups[0].port}" not in endpoints
    assert s.value("meshd_client_requests_total", router="outgoing", client=CLIENT) == 61
    # its label is free again: the next new replica takes it
    extra = await make_upstream()
    mesh.register("accounts", *ups[1:], extra)
    s = await scrape(mesh)
    endpoints = {dict(lb)["endpoint"] for lb in s.select("meshd_endpoint_requests_total", client=CLIENT)}
    assert f"127.0.0.1:{extra.port}" in endpoints
