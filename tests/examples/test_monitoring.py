"""examples/monitoring: the alert rules pass `promtool check rules` and their unit tests
(`promtool test rules`), the unit tests would catch a broken rule, every alert has a case in which
it fires, the Prometheus config is valid, and every query of the Grafana dashboard and of the
rules names only series meshd exports (METRICS, with a histogram's `_bucket`, `_sum` and `_count`).

tests/system/test_prometheus.py loads the same rules and queries into a real Prometheus scraping
a real meshd.
"""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess

import yaml

from meshd.admin.metrics import METRICS
from tests.support.prometheus import find_program

MONITORING = pathlib.Path(__file__).resolve().parents[2] / "examples" / "monitoring"
#: series Prometheus itself adds to every target
PROMETHEUS_OWN = {"up"}
#: what the issue asks the rules to cover
REQUIRED_ALERTS = {
    "MeshdErrorBudgetBurn",
    "MeshdLatencyP99OverObjective",
    "MeshdDiscoveryStale",
    "MeshdRetryBudgetExhausted",
    "MeshdAllReplicasEjected",
    "MeshdCertificateNearExpiry",
}


def promtool(*args: str, cwd: pathlib.Path = MONITORING) -> subprocess.CompletedProcess[str]:
    return subprocess.run([find_program("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def exported_series() -> set[str]:
    """Every series name meshd's /metrics can hold."""
    names = set(METRICS)
    for name in METRICS:
        if name.endswith("_seconds") and "duration" in name:  # the histograms (metrics.py's rule)
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


_KEYWORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right", "Inf", "NaN"}


def metric_names(expr: str) -> set[str]:
    """The series an expression selects: identifiers that are not functions, keywords or labels."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    words = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr))
    return {w for w in words if w not in _KEYWORDS}


def alert_rules() -> list[dict[str, object]]:
    groups = yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append(re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", variable["query"]["query"]))
    return exprs


def test_promtool_checks_the_rules_and_the_config():
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass_and_every_alert_fires_in_one():
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    names = {str(rule["alert"]) for rule in alert_rules()}
    assert REQUIRED_ALERTS <= names
    cases = yaml.safe_load((MONITORING / "alerts_test.yml").read_text())["tests"]
    fired = {t["alertname"] for case in cases for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert fired == names


def test_the_unit_tests_catch_a_broken_rule(tmp_path):
    """The certificate alert with 1 day instead of 14: the unit tests must fail."""
    for name in ("alerts.yml", "alerts_test.yml"):
        shutil.copy(MONITORING / name, tmp_path / name)
    rules = tmp_path / "alerts.yml"
    text = rules.read_text()
    assert text.count("< 14 * 86400") == 1
    rules.write_text(text.replace("< 14 * 86400", "< 1 * 86400"))
    result = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert result.returncode != 0
    assert "MeshdCertificateNearExpiry" in result.stdout + result.stderr


def test_every_dashboard_and_rule_query_names_series_meshd_exports():
    exported = exported_series()
    dashboard = dashboard_exprs()
    rules = [str(rule["expr"]) for rule in alert_rules()]
    used: set[str] = set()
    for expr in dashboard + rules:
        names = metric_names(expr)
        assert names, f"no series in {expr!r}"
        unknown = names - exported - PROMETHEUS_OWN
        assert not unknown, f"{expr!r} names series meshd does not export: {unknown}"
        used |= names
    # the per-replica families are on the dashboard
    for name in ("meshd_client_requests_total", "meshd_client_failures_total", "meshd_endpoint_request_duration_seconds_bucket"):
        assert name in used


def test_the_name_parser_sees_what_it_must():
    """The check above is only as good as `metric_names`: it finds series, not labels or functions."""
    expr = (
        'histogram_quantile(0.99, sum by (client, le) (rate(meshd_client_request_duration_seconds_bucket'
        '{job=~"$job",client="a b"}[5m]))) > on (client) group_left meshd_nope and up == 0'
    )
    assert metric_names(expr) == {"meshd_client_request_duration_seconds_bucket", "meshd_nope", "up"}


def test_the_dashboard_is_grafana_json_with_distinct_panels():
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    assert dashboard["uid"] and dashboard["schemaVersion"] >= 30
    titles = [p["title"] for p in dashboard["panels"] if p["type"] != "row"]
    assert len(titles) == len(set(titles)) >= 20
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
