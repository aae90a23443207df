"""The bank demo's whole story against the real meshd, as a subprocess: chaos, slow replica, canary, books.

The demo runs once for the module (about 25 s of story plus start-up) and writes its result as JSON; each test
checks one claim from it. If meshd cannot run, the demo exits within its start-up timeout with the reason and
meshd's log, and every test here fails with that message instead of hanging.

The canary bound: meshd chooses a union branch at random per request, so the measured v2 share over n requests
is binomial. A step passes if it is within +-2 % of its target, or - when n is too small for +-2 % to be a
sound claim - within the two-sided 99.9 % binomial interval 3.29 * sqrt(p (1 - p) / n). With the demo's probe
readers each step measures a few thousand requests, where the 2 % bound binds for the 5 % step and the
interval is about +-3 % for the 50 % step. Steps at 0 % and 100 % are deterministic and must be within 2 %.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import examples
from tests.examples.test_bank_processes import is_alive

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

ROOT = Path(examples.__file__).resolve().parent.parent
DURATION_SECS = 20
RATE = 30
STARTUP_TIMEOUT_SECS = 30
RUN_TIMEOUT_SECS = 240
MIN_CANARY_REQUESTS = 200
MIN_SLOW_PHASE_REQUESTS = 50


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    workdir = tmp_path_factory.mktemp("bank-demo")
    result_path = workdir / "result.json"
    argv = [
        sys.executable,
        "-m",
        "examples.bank.demo",
        "--duration",
        str(DURATION_SECS),
        "--rate",
        str(RATE),
        "--workdir",
        str(workdir),
        "--startup-timeout",
        str(STARTUP_TIMEOUT_SECS),
        "--json-out",
        str(result_path),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    demo = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = demo.communicate(timeout=RUN_TIMEOUT_SECS)
    except subprocess.TimeoutExpired:
        demo.send_signal(signal.SIGINT)  # let it stop what it started
        stdout, stderr = demo.communicate(timeout=30)
        pytest.fail(
            f"the demo did not finish within {RUN_TIMEOUT_SECS}s:\n{stdout[-3000:]}\n{stderr[-3000:]}"
        )
    if demo.returncode == 2:
        pytest.fail(f"the demo could not start the bank (is meshd runnable as `python -m meshd`?):\n{stderr}")
    if not result_path.exists():
        pytest.fail(
            f"the demo exited with {demo.returncode} and wrote no result:\n{stdout[-3000:]}\n{stderr[-3000:]}"
        )
    result: dict[str, Any] = json.loads(result_path.read_text())
    result["_exit_code"] = demo.returncode
    result["_output"] = stdout
    result["_pids"] = _started_pids(Path(result["workdir"]))
    return result


def _started_pids(run_dir: Path) -> list[int]:
    return [int(line.split()[1]) for line in (run_dir / "pids").read_text().splitlines()]


def phase(story: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(p for p in story["phases"] if p["name"] == name)
    return found


def test_no_authorisation_fails_through_chaos(story):
    chaos = phase(story, "chaos")
    assert story["kills"] >= 4, story["_output"]
    assert chaos["requests"] >= 0.5 * RATE * chaos["seconds"], chaos
    assert chaos["failed"] == 0, story["_output"]
    assert sum(p["failed"] for p in story["phases"]) == 0, story["_output"]


def test_books_are_consistent_at_the_end(story):
    integrity = story["integrity"]
    assert integrity["mismatches"] == [], story["_output"]
    assert integrity["ok"] is True and story["_exit_code"] == 0
    assert integrity["approved"] > 0 and integrity["ledger_transactions"] == integrity["approved"]
    assert integrity["outbox_pending"] == 0


@pytest.mark.parametrize("step", range(4))
def test_canary_split_matches_each_step(story, step):
    measured = story["canary"][step]
    target, requests = measured["target_share"], measured["accounts_requests"]
    assert requests >= MIN_CANARY_REQUESTS, measured
    share = measured["v2_requests"] / requests
    if target in (0.0, 1.0):
        bound = 0.02
    else:
        bound = max(0.02, 3.29 * math.sqrt(target * (1 - target) / requests))
    assert abs(share - target) <= bound, (measured, bound)


def test_slow_replica_gets_under_ten_percent_once_warmed_up(story):
    slow = story["slow_replica"]
    assert slow["accounts_requests"] >= MIN_SLOW_PHASE_REQUESTS, slow
    assert slow["slow_requests"] / slow["accounts_requests"] < 0.10, slow


def test_the_ledger_hop_is_mutual_tls_and_a_stranger_is_refused(story):
    mtls = story["mtls"]
    assert mtls["hop_requests"] > 0 and 0 < mtls["handshakes"] < mtls["hop_requests"], mtls
    assert mtls["refused_status"] == 403, mtls
    assert "ledger-callers" in mtls["refused_error"] and mtls["refused_caller"] in mtls["refused_error"], mtls
    assert "mTLS: a caller presenting" in story["_output"]


def test_nothing_the_demo_started_is_left_running(story):
    assert story["_pids"], "the demo recorded no processes"
    assert [pid for pid in story["_pids"] if is_alive(pid)] == []


def test_the_event_log_side_caught_up_and_customers_stay_solvent(story):
    integrity = story["integrity"]
    assert integrity["on_the_log"] is True, story["_output"]
    assert integrity["events"] >= integrity["approved"] + integrity["declined"], integrity
    assert story["payroll"]["salaries"] > 0 and story["payroll"]["failed_batches"] == 0, story["payroll"]
    rates = [p["approval_rate"] for p in story["phases"]]
    assert min(rates) >= 0.8, rates
    assert any(p["max_lag"] is not None for p in story["phases"]), story["phases"]
    chaos = phase(story, "chaos")
    assert any("took over the outbox relay" in note for note in chaos["notes"]), chaos["notes"]


def test_the_ledger_postings_are_grpc_calls_through_meshd(story):
    # the demo's default: payments posts to the ledger as bank.Ledger/Post through meshd's h2 router
    hop = story["grpc_hop"]
    integrity = story["integrity"]
    # every approval was posted by an OK call through meshd, unless the call failed under chaos (a ledger
    # replica killed under it) and the ledger's catch-up consumer posted it from the event log instead
    assert integrity["on_the_log"], integrity
    assert hop is not None and hop["by_status"].get("OK", 0) >= integrity["approved"] - integrity["ledger_caught_up"], (
        hop, integrity)
    # ... which is the exception: most approvals were posted by their own call
    assert integrity["ledger_caught_up"] * 10 < integrity["approved"], integrity
    assert "gRPC: " in story["_output"] and "through meshd's HTTP/2 router" in story["_output"]
