"""A real Prometheus (Debian's package) scraping a real meshd process, with the example alert rules.

meshd runs as a subprocess (`python -m meshd run`) in front of real upstreams; Prometheus scrapes
its admin port every second and evaluates examples/monitoring/alerts.yml every second. After a
known amount of traffic the test asks Prometheus's HTTP API for the series and checks their
values: request counts per service and status class, attempts and failures per client and per
endpoint, the latency histograms through `histogram_quantile`. It also checks that every alert
rule evaluates without error against meshd's real series, that "all replicas ejected" goes
pending for the replica set whose only replica failure accrual ejected, and that every query of
the Grafana dashboard is valid PromQL that Prometheus runs. Everything waits by polling with a
deadline; nothing sleeps.
"""

from __future__ import annotations

import json
import pathlib
import re

import yaml

from tests.support.client import RawConnection
from tests.support.process import MeshdProcess, process_config
from tests.support.prometheus import Prometheus
from tests.support.upstreams import Received, Reply
from tests.support.waiting import wait_until

MONITORING = pathlib.Path(__file__).resolve().parents[2] / "examples" / "monitoring"
RULES = sum(len(g["rules"]) for g in yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"])


async def failing(req: Received) -> Reply:
    return Reply(500, [], b"broken\n")


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the example dashboard, its variables replaced as Grafana would."""
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    out = []
    for expr in exprs:
        expr = expr.replace("$__rate_interval", "1m")
        expr = re.sub(r'=~"\$\w+"', '=~".*"', expr)
        assert "$" not in expr, expr
        out.append(expr)
    return out


async def test_prometheus_scrapes_meshd_and_sees_the_known_traffic(make_upstream, tmp_path):
    accounts, ledger = await make_upstream(), await make_upstream(failing)
    config = process_config(
        {
            "client": {
                "failureAccrual": {"kind": "consecutiveFailures", "failures": 5, "backoff": {"kind": "constant", "ms": 600000}},
            }
        }
    )
    async with MeshdProcess(tmp_path / "meshd", config) as mesh:
        mesh.register("accounts", accounts.address_line)
        mesh.register("ledger", ledger.address_line)
        prom_config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["alerts.yml"],
            "scrape_configs": [{"job_name": "meshd", "static_configs": [{"targets": [f"127.0.0.1:{mesh.admin_port}"]}]}],
        }
        files = {"alerts.yml": (MONITORING / "alerts.yml").read_text()}
        async with Prometheus(tmp_path / "prometheus", prom_config, files) as prom:
            conn = await RawConnection.open(mesh.port)
            try:
                await wait_until(lambda: _served(conn, "accounts"), timeout=10, message="meshd sees the fs namer's files")
                for _ in range(29):
                    assert (await conn.request("GET", "/", host="accounts")).status == 200
                # POSTs are not retried: 7 attempts, 7 failures; the 5th ejects the only replica
                for _ in range(7):
                    assert (await conn.request("POST", "/", host="ledger", body=b"x")).status == 500
            finally:
                await conn.close()

            ok = 'meshd_requests_total{job="meshd",router="outgoing",service="/svc/accounts",status_class="2xx"}'

            async def scraped_after_traffic() -> bool:
                return await prom.value(ok) == 30 and await prom.value(
                    'meshd_requests_total{service="/svc/ledger",status_class="5xx"}'
                ) == 7

            await wait_until(scraped_after_traffic, timeout=30, interval=0.2, message="Prometheus to scrape the traffic")

            assert await prom.value('up{job="meshd"}') == 1
            (target,) = (await prom.api("targets"))["activeTargets"]
            assert target["health"] == "up" and target["lastError"] == ""
            # per replica set and per replica
            assert await prom.value('meshd_client_requests_total{client="/#/fs/accounts"}') == 30
            assert await prom.value('meshd_client_failures_total{client="/#/fs/accounts"}') == 0
            assert await prom.value('meshd_client_failures_total{client="/#/fs/ledger"}') == 7
            assert await prom.value('meshd_client_retries_total{client="/#/fs/ledger"}') == 0
            endpoint = f'client="/#/fs/accounts",endpoint="127.0.0.1:{accounts.port}"'
            assert await prom.value(f"meshd_endpoint_requests_total{{{endpoint}}}") == 30
            assert await prom.value(f"meshd_endpoint_request_duration_seconds_count{{{endpoint}}}") == 30
            assert await prom.value('meshd_ejections_total{client="/#/fs/ledger"}') == 1
            assert await prom.value('meshd_endpoint_state{client="/#/fs/ledger",state="ejected"}') == 1
            # latency: a quantile of the histograms Prometheus computes from meshd's buckets
            for expr in (
                'histogram_quantile(0.5, sum by (le) (meshd_request_duration_seconds_bucket{service="/svc/accounts"}))',
                'histogram_quantile(0.99, sum by (le) (meshd_client_request_duration_seconds_bucket{client="/#/fs/accounts"}))',
                f"histogram_quantile(0.99, sum by (le) (meshd_endpoint_request_duration_seconds_bucket{{{endpoint}}}))",
            ):
                q = await prom.value(expr)
                assert q is not None and 0 < q < 1.0, (expr, q)  # loopback: well under a second
            # staleness signals: the config's load time is a recent Unix time
            loaded = await prom.value("meshd_config_loaded_timestamp_seconds")
            now = await prom.value("vector(time())")
            assert loaded is not None and now is not None and 0 <= now - loaded < 300

            # the alert rules: every one evaluates against the real series without error, and the
            # replica set whose only replica is ejected has "all replicas ejected" pending
            async def rules_evaluated() -> bool:
                groups = (await prom.api("rules"))["groups"]
                rules = [r for g in groups for r in g["rules"]]
                return len(rules) == RULES and all(r["health"] == "ok" and r.get("lastError", "") == "" for r in rules)

            await wait_until(rules_evaluated, timeout=15, interval=0.2, message="every alert rule evaluated, healthy")

            async def ejected_alert() -> bool:
                alerts = (await prom.api("alerts"))["alerts"]
                return any(
                    a["labels"]["alertname"] == "MeshdAllReplicasEjected" and a["labels"]["client"] == "/#/fs/ledger"
                    for a in alerts
                )

            await wait_until(ejected_alert, timeout=15, interval=0.2, message="MeshdAllReplicasEjected for ledger")
            # nothing about accounts, which only succeeded (a scrape that caught ledger's failures
            # half-way may also make its error-budget burn pending: that one is about ledger too)
            alerts = (await prom.api("alerts"))["alerts"]
            assert all(
                a["labels"].get("client") == "/#/fs/ledger" or a["labels"].get("service") == "/svc/ledger" for a in alerts
            ), alerts

            # the dashboard: every query runs; the per-replica panels have data
            for expr in dashboard_queries():
                await prom.query(expr)  # raises with Prometheus's error on invalid PromQL
            # once two scrapes hold the counts, rates and quantiles per replica have data
            per_replica = (
                "histogram_quantile(0.99, sum by (client, endpoint, le) "
                "(rate(meshd_endpoint_request_duration_seconds_bucket[1m])))"
            )

            async def per_replica_data() -> bool:
                return len(await prom.query(per_replica)) == 2

            await wait_until(per_replica_data, timeout=15, interval=0.2, message="per-replica p99 from rates")

async def _served(conn: RawConnection, host: str) -> bool:
    return (await conn.request("GET", "/", host=host)).status == 200
