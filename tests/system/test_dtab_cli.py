"""`meshd dtab explain` and a routing file under `meshd run`, with meshd as a real subprocess.

The explain tests need no ports: the command builds the config's namers (here the fs namer, reading
`disco/`) and the router with its routing file, explains, and exits. The `meshd run` test picks free
loopback ports by binding port 0 first, then watches the real process's log and metrics while the
routing file is edited.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

import meshd
from tests.support.waiting import wait_until_sync

ROOT = Path(meshd.__file__).resolve().parent.parent

MESHD_YAML = """\
admin: {{ip: 127.0.0.1, port: {admin}}}
namers:
  - {{kind: fs, rootDir: ./disco}}
routers:
  - label: outgoing
    servers: [{{ip: 127.0.0.1, port: {port}}}]
    dtab: /svc => /#/fs;
    routes: ./routes.yaml
"""

ROUTES = """\
rules:
  - name: accounts-canary
    description: try v2 on 5% of traffic
    prefix: /svc/accounts
    weights: {/#/fs/accounts: 95, /#/fs/accounts-v2: 5}
"""


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "disco").mkdir()
    (tmp_path / "disco" / "accounts").write_text("127.0.0.1 8081\n127.0.0.1 8082\n")
    (tmp_path / "disco" / "accounts-v2").write_text("127.0.0.1 8091\n")
    (tmp_path / "routes.yaml").write_text(ROUTES)
    (tmp_path / "meshd.yaml").write_text(MESHD_YAML.format(admin=9990, port=4140))
    return tmp_path


def meshd_cli(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "meshd", *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=60
    )


def test_explain_shows_each_dentry_with_its_origin_each_step_and_the_outcomes(workdir):
    done = meshd_cli(workdir, "dtab", "explain", "/svc/accounts", "-c", "meshd.yaml")

    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert out[0] == "router outgoing: /svc/accounts"
    assert out[1] == "dentries (later ones are tried first):"
    assert out[2].split() == ["#0", "/svc=>/#/fs", "from", "router", "outgoing", "dtab"]
    assert out[3].split()[:2] == ["#1", "/svc/accounts=>0.95*/#/fs/accounts"]
    assert out[3].endswith(f"from {workdir / 'routes.yaml'}: rule accounts-canary (line 2)")
    text = done.stdout
    assert "dentry #1 /svc/accounts=>0.95*/#/fs/accounts & 0.05*/#/fs/accounts-v2  ->  " in text
    assert "dentry #0 /svc=>/#/fs  ->  /#/fs/accounts" in text
    assert "namer /#/fs asked for /accounts-v2  ->  /#/fs/accounts-v2" in text
    assert "2/2 /#/fs/accounts  (not tried)" in text
    assert "result: 0.95*/#/fs/accounts & 0.05*/#/fs/accounts-v2" in text
    assert out[-2:] == [
        "   95.00%  /#/fs/accounts  [bound] 127.0.0.1:8081 (w=1), 127.0.0.1:8082 (w=1)",
        "    5.00%  /#/fs/accounts-v2  [bound] 127.0.0.1:8091 (w=1)",
    ]


def test_explain_with_dtab_applies_it_last_like_an_l5d_dtab_header(workdir):
    done = meshd_cli(
        workdir, "dtab", "explain", "/svc/accounts", "-c", "meshd.yaml", "--dtab", "/svc/accounts => /#/fs/accounts-v2"
    )

    assert done.returncode == 0, done.stderr
    assert "#2  /svc/accounts=>/#/fs/accounts-v2" in done.stdout
    assert done.stdout.splitlines()[-1] == "  100.00%  /#/fs/accounts-v2  [bound] 127.0.0.1:8091 (w=1)"


def test_explain_json_has_the_trace_and_the_outcomes(workdir):
    done = meshd_cli(workdir, "dtab", "explain", "/svc/accounts", "-c", "meshd.yaml", "--json")

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["router"] == "outgoing"
    assert [d["from"] for d in result["dentries"]] == [
        "router outgoing dtab",
        f"{workdir / 'routes.yaml'}: rule accounts-canary (line 2)",
    ]
    assert result["trace"]["root"]["children"][0]["children"][0]["weights"] == [0.95, 0.05]
    assert [(o["probability"], o["client"], len(o["addr"]["endpoints"])) for o in result["outcomes"]] == [
        (0.95, "/#/fs/accounts", 2),
        (0.05, "/#/fs/accounts-v2", 1),
    ]


def test_malformed_dtab_option_is_an_error_with_line_column_and_caret(workdir):
    done = meshd_cli(workdir, "dtab", "explain", "/svc/accounts", "-c", "meshd.yaml", "--dtab", "/svc/accounts /x")

    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        "router outgoing: /svc/accounts",
        "error: line 1, column 15: expected '=>', found '/'",
        "1 | /svc/accounts /x",
        "  |               ^",
    ]


def test_broken_routing_file_is_reported_with_its_path_and_line(workdir):
    (workdir / "routes.yaml").write_text(ROUTES.replace("95, ", "-95, "))

    done = meshd_cli(workdir, "dtab", "explain", "/svc/accounts", "-c", "meshd.yaml")

    assert done.returncode == 1
    assert done.stdout.splitlines()[1] == (
        f"error: {workdir / 'routes.yaml'}: rules[0].weights[\"/#/fs/accounts\"]: line 5: "
        "weight must be a finite number >= 0, got -95"
    )
    assert "Traceback" not in done.stderr


def test_unknown_router_is_an_error(workdir):
    done = meshd_cli(workdir, "dtab", "explain", "/svc/accounts", "-c", "meshd.yaml", "--router", "incoming")

    assert done.returncode == 1
    assert "error: no router 'incoming' (routers: outgoing)" in done.stdout


def test_meshd_run_refuses_to_start_on_a_broken_routing_file(workdir):
    (workdir / "routes.yaml").write_text(ROUTES.replace("95, ", "-95, "))

    done = meshd_cli(workdir, "run", "-c", "meshd.yaml")

    assert done.returncode == 1
    assert f"{workdir / 'routes.yaml'}: rules[0].weights[\"/#/fs/accounts\"]: line 5: " in done.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_running_meshd_logs_and_counts_a_refused_edit_then_applies_the_fix(workdir):
    admin = free_port()
    (workdir / "meshd.yaml").write_text(MESHD_YAML.format(admin=admin, port=free_port()))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshd", "run", "-c", "meshd.yaml"],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_sync(lambda: _get(admin, "/admin/ready") == "ready\n", timeout=30, message="meshd ready")

        (workdir / "routes.yaml").write_text(ROUTES.replace("95, ", "-95, "))
        wait_until_sync(lambda: _reloads(admin, "error") == 1, timeout=5, message="the refusal to be counted")
        assert _reloads(admin, "success") == 1
        (workdir / "routes.yaml").write_text(ROUTES.replace("95, ", "50, ").replace(": 5}", ": 50}"))
        wait_until_sync(lambda: _reloads(admin, "success") == 2, timeout=5, message="the fix to apply")
        explained = json.loads(_get(admin, "/admin/delegator?path=/svc/accounts") or "{}")
        assert [o["probability"] for o in explained["outcomes"]] == [0.5, 0.5]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    refused = [line for line in stderr.splitlines() if "routes reload refused" in line]
    assert len(refused) == 1, stderr
    assert "ERROR meshd.reload" in refused[0]
    assert f"{workdir / 'routes.yaml'}: rules[0].weights[\"/#/fs/accounts\"]: line 5: " in refused[0]
    assert "routes reloaded from" in stderr


def _get(port: int, path: str) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return str(response.read().decode())
    except OSError:
        return None


def _reloads(port: int, result: str) -> float:
    text = _get(port, "/metrics") or ""
    for line in text.splitlines():
        if line.startswith("meshd_config_reloads_total{") and f'result="{result}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return -1.0
