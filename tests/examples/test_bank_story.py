"""The demo's parts that need no processes: layout and meshd files, canary routes and bounds, counters, the
integrity check and the report."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import yaml

from examples.bank.authorisation import AuthRequest, ledger_key
from examples.bank.ledger_book import transfer
from examples.bank.simulator import AuthResult
from examples.bank.story.canary import CANARY_STEPS, canary_tolerance, routes_document
from examples.bank.story.integrity import BankState, check_integrity
from examples.bank.story.metrics import MeshCounters, parse_counters
from examples.bank.story.phases import StoryPlan
from examples.bank.story.report import CanaryStepReport, summarise_phase
from examples.bank.story.topology import BANK, meshd_config, plan_layout, write_mesh_files
from examples.bank.story.traffic import ReplicaCount, served_between

# --- layout and meshd's files ----------------------------------------------------------------------------


def test_layout_gives_every_process_its_own_port_and_each_service_one_database(tmp_path):
    layout = plan_layout(tmp_path)
    ports = [replica.port for replica in layout.replicas] + [layout.router_port, layout.admin_port, layout.incoming_port]
    assert len(set(ports)) == len(ports) == sum(spec.replicas for spec in BANK) + 3
    assert {replica.db.name for replica in layout.of("accounts") + layout.of("accounts-v2")} == {
        "accounts.db"
    }
    assert [replica.version for replica in layout.of("accounts-v2")] == ["v2"]


def test_meshd_config_has_the_documented_shape(tmp_path):
    layout = plan_layout(tmp_path)
    config = meshd_config(layout)
    router = config["routers"][0]  # type: ignore[index]
    assert config["admin"] == {"ip": "127.0.0.1", "port": layout.admin_port}
    assert config["namers"] == [{"kind": "fs", "rootDir": str(layout.disco_dir)}]
    assert router["servers"] == [{"ip": "127.0.0.1", "port": layout.router_port}]
    assert router["identifier"] == {"kind": "header", "header": "host"}
    # the ledger is reached through the incoming router, over mutual TLS (examples/bank/story/mtls.py)
    assert router["dtab"] == f"/svc => /#/fs; /svc/ledger => /$/inet/127.0.0.1/{layout.incoming_port};"
    incoming = config["routers"][1]  # type: ignore[index]
    assert incoming["servers"][0]["tls"]["requireClientCert"] is True
    # ... and over HTTP/2 between the two meshds, HTTP/1.1 on both outer sides (docs/tls.md)
    assert [(c["prefix"], c["protocol"]) for c in router["clients"]] == [("/$/inet", "h2")]
    assert (incoming["protocol"], incoming["h2"], incoming["client"]["protocol"]) == ("h2", {"acceptHttp1": True}, "http")
    assert incoming["authorization"]["rules"][0]["prefix"] == "/svc/ledger"
    assert router["client"]["failureAccrual"] == {"kind": "consecutiveFailures", "failures": 5}


def test_mesh_files_list_every_replica_and_start_with_all_accounts_on_v1(tmp_path):
    layout = plan_layout(tmp_path)
    write_mesh_files(layout)
    ledger_lines = (layout.disco_dir / "ledger").read_text().splitlines()
    assert ledger_lines == [f"127.0.0.1 {replica.port}" for replica in layout.of("ledger")]
    assert yaml.safe_load(layout.config_path.read_text()) == meshd_config(layout)
    assert yaml.safe_load(layout.routes_path.read_text()) == {"dtab": "/svc/accounts => /#/fs/accounts;"}
    assert sorted(path.name for path in layout.disco_dir.iterdir()) == sorted({spec.name for spec in BANK})


# --- canary ----------------------------------------------------------------------------------------------


def test_routes_documents_for_each_kind_of_step():
    assert CANARY_STEPS == (0.05, 0.5, 1.0, 0.0)
    assert yaml.safe_load(routes_document(0.05))["dtab"] == (
        "/svc/accounts => 0.95 * /#/fs/accounts & 0.05 * /#/fs/accounts-v2;"
    )
    assert yaml.safe_load(routes_document(1.0))["dtab"] == "/svc/accounts => /#/fs/accounts-v2;"
    with pytest.raises(ValueError):
        routes_document(1.5)


def test_canary_tolerance_is_two_percent_once_the_sample_is_large_enough():
    assert canary_tolerance(0.5, 10_000) == 0.02
    assert canary_tolerance(0.5, 400) == pytest.approx(3.29 * 0.025)
    assert canary_tolerance(1.0, 10) == 0.02
    assert canary_tolerance(0.05, 0) == math.inf


def test_canary_step_report_judges_the_measured_share():
    inside = CanaryStepReport(
        target_share=0.5, accounts_requests=1000, v2_requests=530, tolerance=0.05, reload_confirmed=True
    )
    outside = CanaryStepReport(
        target_share=0.05, accounts_requests=1000, v2_requests=90, tolerance=0.02, reload_confirmed=True
    )
    assert (inside.measured_share, inside.within_tolerance) == (0.53, True)
    assert outside.within_tolerance is False


# --- phases and counters ---------------------------------------------------------------------------------


def test_phase_lengths_scale_with_the_duration_and_have_floors():
    long, short = StoryPlan.for_duration(100), StoryPlan.for_duration(1)
    assert (long.steady_secs, long.chaos_secs, long.slow_secs, long.canary_step_secs) == (20, 30, 20, 7.5)
    assert long.total_secs == 100
    assert short.chaos_secs == 4.0 and short.kill_interval_secs == 1.0
    assert long.kill_interval_secs == 5.0


def test_meshd_counters_sum_over_labels_and_missing_ones_read_zero():
    text = (
        "# TYPE meshd_retries counter\n"
        'meshd_retries_total{service="/svc/ledger",reason="5xx"} 3\n'
        'meshd_retries_total{service="/svc/accounts",reason="refused"} 4\n'
        "# TYPE meshd_ejections counter\n"
        'meshd_ejections_total{client="/#/fs/ledger"} 2\n'
    )
    assert parse_counters(text) == MeshCounters(retries=7, ejections=2)
    assert MeshCounters(retries=9, reloads=2).minus(MeshCounters(retries=7)) == MeshCounters(
        retries=2, reloads=2
    )


def test_served_between_counts_a_restarted_replica_from_zero():
    before = {"a-1": ReplicaCount("boot1", 100), "a-2": ReplicaCount("boot2", 50)}
    after = {"a-1": ReplicaCount("boot1", 130), "a-2": ReplicaCount("boot3", 7), "a-3": ReplicaCount("b", 4)}
    assert served_between(before, after) == {"a-1": 30, "a-2": 7, "a-3": 4}


def result(
    auth_id: str, outcome: str, *, account: str = "c-1", amount: int = 100, at: float = 0.0
) -> AuthResult:
    request = AuthRequest(auth_id=auth_id, account_id=account, merchant_id="m-001", amount=amount)
    return AuthResult(request=request, intended_at=at, outcome=outcome, latency_ms=at * 10)  # type: ignore[arg-type]


def test_phase_summary_counts_requests_by_intended_send_time():
    results = [
        result("a", "approved", at=0.5),
        result("b", "failed", at=1.0),
        result("c", "declined", at=2.5),
    ]
    summary = summarise_phase("steady", start=0.0, end=2.0, results=results, counters=MeshCounters(retries=3))
    assert (summary.requests, summary.approved, summary.failed, summary.declined) == (2, 1, 1, 0)
    assert (summary.p50_ms, summary.p99_ms, summary.retries) == (5.0, 10.0, 3)
    assert json.loads(json.dumps(summary.to_json()))["name"] == "steady"


# --- integrity -------------------------------------------------------------------------------------------


def healthy_state(results: list[AuthResult]) -> BankState:
    approved = [r for r in results if r.outcome == "approved"]
    spent = sum(r.request.amount for r in approved)
    return BankState(
        ledger_transactions={
            "open:c-1": transfer("bank:funding", "customer:c-1", 1_000),
            **{ledger_key(r.request.auth_id): r.request.ledger_legs() for r in approved},
        },
        ledger_balances={"bank:funding": -1_000, "customer:c-1": 1_000 - spent, "merchant:m-001": spent},
        ledger_total=0,
        ledger_consistent=True,
        opening_balances={"c-1": 1_000},
        available_balances={"c-1": 1_000 - spent},
        feed_auth_ids=frozenset(r.request.auth_id for r in approved),
        notified_auth_ids=frozenset(r.request.auth_id for r in results if r.outcome != "failed"),
        outbox_pending=0,
    )


RESULTS = [
    result("a-1", "approved"),
    result("a-2", "declined"),
    result("a-3", "failed"),
    result("a-4", "approved"),
]


def test_integrity_holds_for_consistent_books():
    report = check_integrity(RESULTS, healthy_state(RESULTS), {"c-1": 1_000})
    assert report.ok, report.mismatches
    assert (report.approved, report.declined, report.failed, report.ledger_transactions) == (2, 1, 1, 2)


def test_integrity_reports_a_missing_posting_and_a_posted_decline():
    state = healthy_state(RESULTS)
    transactions = dict(state.ledger_transactions)
    del transactions["auth:a-1"]
    transactions["auth:a-2"] = RESULTS[1].request.ledger_legs()
    broken = dataclasses.replace(state, ledger_transactions=transactions)
    mismatches = check_integrity(RESULTS, broken, {"c-1": 1_000}).mismatches
    assert "approved a-1 is not in the ledger" in mismatches
    assert "declined a-2 was posted to the ledger" in mismatches


def test_integrity_reports_unbalanced_books_and_lost_after_work():
    state = healthy_state(RESULTS)
    broken = dataclasses.replace(
        state,
        ledger_total=5,
        available_balances={"c-1": 999},
        feed_auth_ids=frozenset(),
        outbox_pending=2,
        ledger_transactions={**state.ledger_transactions, "auth:zz": RESULTS[0].request.ledger_legs()},
    )
    mismatches = check_integrity(RESULTS, broken, {"c-1": 1_000}).mismatches
    assert "ledger balances sum to 5, not 0" in mismatches
    assert "account c-1: accounts says 999 available, ledger says 800" in mismatches
    assert "approved a-4 has no feed entry" in mismatches
    assert "2 after-response steps still pending in the payments outbox" in mismatches
    assert "ledger has auth:zz, which the card network never sent" in mismatches
