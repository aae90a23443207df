"""The supervisor's /metrics under --workers: counters are summed over the workers, the routes
version gauges are not (every worker serves the same version; the sum would say N)."""

from __future__ import annotations

from meshd.exposition import render
from meshd.workers import _Merged


def worker_text(reloads: float, loaded_at: float) -> str:
    return (
        "# HELP meshd_config_reloads_total Routing-file reloads by result (success, error).\n"
        "# TYPE meshd_config_reloads_total counter\n"
        f'meshd_config_reloads_total{{result="success",router="outgoing"}} {reloads}\n'
        "# HELP meshd_routes_version 1 for the routing-file version a router serves.\n"
        "# TYPE meshd_routes_version gauge\n"
        'meshd_routes_version{router="outgoing",source="configmap mesh/r key routes.yaml",version="184467",'
        'digest="5c1e0e6a9b2d"} 1.0\n'
        "# HELP meshd_routes_loaded_timestamp_seconds When the version in force was applied.\n"
        "# TYPE meshd_routes_loaded_timestamp_seconds gauge\n"
        f'meshd_routes_loaded_timestamp_seconds{{router="outgoing"}} {loaded_at}\n'
    )


def test_versions_are_not_summed_but_counters_are() -> None:
    text = render(_Merged([worker_text(2, 1700000000.5), worker_text(3, 1700000001.25)]).collect()).decode()
    assert 'meshd_config_reloads_total{result="success",router="outgoing"} 5.0' in text
    assert (
        'meshd_routes_version{digest="5c1e0e6a9b2d",router="outgoing",source="configmap mesh/r key routes.yaml",'
        'version="184467"} 1.0'
    ) in text
    assert 'meshd_routes_loaded_timestamp_seconds{router="outgoing"} 1.70000000125e+09' in text
