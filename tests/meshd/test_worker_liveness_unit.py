"""The supervisor's liveness figures on an injected clock, and its /metrics text: the workers'
summed families plus its own, each family once (a second HELP line would fail Prometheus's scrape)."""

from __future__ import annotations

import pathlib

from prometheus_client.parser import text_string_to_metric_families

from meshd.admin.metrics import METRICS
from meshd.exposition import render
from meshd.workers import DOWN_AFTER_S, Supervisor, _Liveness, _Merged


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_up_while_the_last_heartbeat_is_at_most_the_limit_old_and_restarts_start_over():
    clock = Clock()
    sup = Supervisor([pathlib.Path("/nonexistent/0.sock"), pathlib.Path("/nonexistent/1.sock")], clock=clock)
    assert sup.liveness() == [(False, 0.0), (False, 0.0)]  # no answer yet
    sup.last_beat = [100.0, 100.0]
    clock.now = 100.0 + DOWN_AFTER_S
    assert sup.liveness() == [(True, DOWN_AFTER_S), (True, DOWN_AFTER_S)]
    sup.last_beat[1] = 101.0
    clock.now = 100.0 + DOWN_AFTER_S + 1 / 1024
    (up0, age0), (up1, _) = sup.liveness()
    assert not up0 and age0 > DOWN_AFTER_S and up1
    sup.restarted(1)
    assert sup.restarts == [0, 1] and sup.liveness()[1] == (False, 0.0)


async def test_a_worker_that_does_not_answer_is_not_marked_alive():
    sup = Supervisor([pathlib.Path("/nonexistent/0.sock")])
    assert await sup.beat(0) is False and sup.last_beat == [None]


def test_supervisor_metrics_hold_each_family_once():
    worker_text = (
        "# HELP meshd_worker_up x\n# TYPE meshd_worker_up gauge\n"
        "# HELP meshd_worker_restarts_total x\n# TYPE meshd_worker_restarts_total counter\n"
        '# HELP meshd_requests_total x\n# TYPE meshd_requests_total counter\nmeshd_requests_total{router="r"} 2.0\n'
    )
    text = render([*_Merged([worker_text, worker_text]).collect(),
                   *_Liveness([(True, 0.25), (False, 7.0)], [0, 2]).collect()]).decode()
    assert text.count("# HELP meshd_worker_up ") == 1 and text.count("# HELP meshd_worker_restarts_total ") == 1
    samples = {
        (s.name, s.labels.get("worker", "")): s.value for f in text_string_to_metric_families(text) for s in f.samples
    }
    assert samples[("meshd_requests_total", "")] == 4.0
    assert samples[("meshd_worker_up", "0")] == 1.0 and samples[("meshd_worker_up", "1")] == 0.0
    assert samples[("meshd_worker_heartbeat_age_seconds", "1")] == 7.0
    assert samples[("meshd_worker_restarts_total", "1")] == 2.0
    assert f"# HELP meshd_worker_up {METRICS['meshd_worker_up']}" in text
