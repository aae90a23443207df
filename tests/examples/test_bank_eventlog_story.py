"""The demo's asynchronous parts without processes: payroll sizing, salary events, lag per phase, the report."""

from __future__ import annotations

import dataclasses
import json
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from examples.bank.simulator import UNKNOWN_ACCOUNT_RATE, AuthResult, Cardholders
from examples.bank.story.eventlog import (
    MEAN_PURCHASE_CENTS,
    LagSamples,
    PayrollPlan,
    ReplayResult,
    salary_events,
)
from examples.bank.story.integrity import BankState, check_integrity
from examples.bank.story.metrics import MeshCounters
from examples.bank.story.report import DemoResult, SlowReplicaReport, render, summarise_phase
from examples.bank.story.topology import plan_layout
from tests.examples.test_bank_story import RESULTS, healthy_state


def test_the_mean_purchase_is_the_simulators():
    rng = random.Random(7)
    cardholders = Cardholders.generate(10, rng)
    amounts = [cardholders.draw(rng, f"a-{n}").amount for n in range(40_000)]
    assert abs(sum(amounts) / len(amounts) - MEAN_PURCHASE_CENTS) / MEAN_PURCHASE_CENTS < 0.03


@given(
    rate=st.floats(1.0, 500.0),
    customers=st.integers(10, 5_000),
    duration=st.floats(5.0, 3_600.0),
)
def test_income_matches_spending_whatever_the_rate_and_duration(rate, customers, duration):
    plan = PayrollPlan.for_traffic(rate=rate, customers=customers, duration_secs=duration)
    assert 2.0 <= plan.period_secs <= 30.0
    income_per_sec = plan.salary_cents * customers / plan.period_secs
    spending_per_sec = rate * (1 - UNKNOWN_ACCOUNT_RATE) * MEAN_PURCHASE_CENTS
    # rounding a salary to whole cents is the only difference
    assert abs(income_per_sec - spending_per_sec) <= customers / plan.period_secs


def test_salary_events_have_ids_unique_per_run_payday_and_account():
    first = salary_events(["c-1", "c-2"], "run1", 1, 500)
    second = salary_events(["c-1", "c-2"], "run1", 2, 500)
    ids = [event["id"] for event in first + second]
    assert len(set(ids)) == 4
    assert first[0] == {
        "id": "salary-run1-1-c-1",
        "payload": {"account_id": "c-1", "amount": 500, "kind": "salary"},
    }


def test_a_phase_reports_its_approval_rate_and_largest_lag():
    samples = LagSamples([(0.5, 3), (1.5, 40), (2.5, 7), (3.5, 100)])
    assert samples.max_between(1.0, 3.0) == 40
    assert samples.max_between(10.0, 11.0) is None
    phase = summarise_phase(
        "steady",
        start=0.0,
        end=1.0,
        results=[],
        counters=MeshCounters(0.0, 0.0),
        max_lag=samples.max_between(0, 3),
    )
    assert phase.max_lag == 40 and math.isnan(phase.approval_rate)
    assert phase.to_json()["approval_rate"] is None and phase.to_json()["max_lag"] == 40


def test_a_nats_bus_adds_a_three_node_cluster_and_points_the_events_replicas_at_it(tmp_path):
    layout = plan_layout(tmp_path, bus="nats")
    brokers = layout.brokers
    assert [broker.name for broker in brokers] == ["nats-1", "nats-2", "nats-3"]
    ports = [r.port for r in layout.replicas] + [layout.router_port, layout.admin_port]
    ports += [b.port for b in brokers] + [b.cluster_port for b in brokers]
    assert len(set(ports)) == len(ports)
    for broker in brokers:
        assert sorted(broker.routes) == sorted(b.cluster_port for b in brokers if b is not broker)
        assert "-js" in broker.command("nats-server")
    for replica in layout.of("events"):
        argv = replica.command("http://127.0.0.1:4140")
        assert argv[argv.index("--backend") + 1] == "nats"
        assert argv[argv.index("--stream-replicas") + 1] == "3"
        assert [argv[i + 1] for i, arg in enumerate(argv) if arg == "--nats"] == [b.url for b in brokers]
    embedded = plan_layout(tmp_path)
    assert embedded.brokers == () and "--backend" not in embedded.of("events")[0].command("http://x")


def on_the_log(results: list[AuthResult]) -> BankState:
    decided = frozenset(r.request.auth_id for r in results if r.outcome != "failed")
    return dataclasses.replace(
        healthy_state(results),
        on_the_log=True,
        decision_event_ids=decided,
        enriched_event_ids=decided,
        consumer_lag={"authorisations/ledger": 0},
        duplicates_delivered=3,
        catch_up_secs=1.5,
    )


def test_the_async_side_passes_when_every_decision_is_on_both_topics_and_replays_whole():
    state = on_the_log(RESULTS)
    replay = ReplayResult("authorisations", "replay-x", 4, state.decision_event_ids, 0.2)
    report = check_integrity(RESULTS, state, {"c-1": 1_000}, replay=replay)
    assert report.ok, report.mismatches
    assert (report.on_the_log, report.events, report.duplicates_delivered) == (True, 3, 3)


def test_the_async_side_reports_lost_events_lag_dead_letters_and_a_short_replay():
    state = dataclasses.replace(
        on_the_log(RESULTS),
        decision_event_ids=frozenset({"a-1", "a-2"}),
        enriched_event_ids=frozenset({"a-1"}),
        events_unpublished=2,
        consumer_lag={"authorisations-enriched/feed": 7},
        dead_letters=1,
    )
    replay = ReplayResult("authorisations", "replay-x", 1, frozenset({"a-1"}), 0.2)
    mismatches = check_integrity(RESULTS, state, {"c-1": 1_000}, replay=replay).mismatches
    assert "approved a-4 has no event on authorisations" in mismatches
    assert "declined a-2 has no event on authorisations-enriched" in mismatches
    assert "2 events still unpublished in the payments outbox" in mismatches
    assert "consumer group authorisations-enriched/feed still lags by 7" in mismatches
    assert "1 events were dead-lettered" in mismatches
    assert any(m.startswith("replaying authorisations into replay-x gave 1 events") for m in mismatches)


def test_the_report_shows_approval_lag_income_the_event_log_and_the_replay():
    phase = summarise_phase("chaos", start=0.0, end=2.0, results=RESULTS, counters=MeshCounters(), max_lag=12)
    state = on_the_log(RESULTS)
    replay = ReplayResult("authorisations", "replay-x", 3, state.decision_event_ids, 0.25)
    result = DemoResult(
        workdir="/tmp/x",
        duration_secs=2.0,
        rate=2.0,
        kills=3,
        phases=(phase,),
        slow_replica=SlowReplicaReport(
            replica="accounts-1", added_latency_ms=100, warmup_secs=1, accounts_requests=10, slow_requests=0
        ),
        canary=(),
        integrity=check_integrity(RESULTS, state, {"c-1": 1_000}, replay=replay),
        payroll={
            "paydays": 2,
            "salaries": 4,
            "cents": 400,
            "failed_batches": 0,
            "period_secs": 2.0,
            "salary_cents": 100,
        },
        replay=replay.to_json(),
    )
    text = render(result)
    assert "approve%" in text and "lag max" in text
    assert "66.7%" in text and " 12" in text.splitlines()[2]  # 2 approved of 3 decided; the lag sampled
    assert "income: 4 salaries on 2 paydays" in text
    assert "event log: OK - 3 decision events, none lost" in text and "3 duplicate deliveries" in text
    assert (
        "replay: authorisations from offset 1 into the fresh group replay-x: 3 deliveries of 3 distinct"
        in text
    )
    document = json.loads(json.dumps(result.to_json()))
    assert document["replay"]["ids"] == 3 and document["payroll"]["salaries"] == 4
    assert document["phases"][0]["approval_rate"] == pytest.approx(2 / 3)
