"""The `meshd` command line as an operator runs it: `meshd check -c FILE` and `meshd --version`.

Each test runs `python -m meshd` in a subprocess and checks its exit code and what it printed.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from meshd import __version__

ROOT = pathlib.Path(__file__).resolve().parents[2]

VALID = """\
admin: {ip: 127.0.0.1, port: 9990}
namers:
  - {kind: fs, rootDir: ./disco}
routers:
  - label: outgoing
    servers: [{ip: 127.0.0.1, port: 4140, maxHeaderBytes: 16384, headerTimeoutMs: 5000}]
    dtab: /svc => /#/fs;
    client:
      pool: {maxConnections: 100, idleTimeMs: 5000, maxWaiters: 10}
drainTimeoutMs: 5000
"""

#: The issue's example, and more: every problem is reported, each with its YAML path and line.
INVALID = """\
admin:
  port: 9990
routers:
  - label: outgoing
    servers:
      - ip: 127.0.0.1
        port: 41x0
    dtab: /svc => /#/fs;
    client:
      pool: {maxConnections: 0}
      loadBalancer: {kind: ewmaa}
drainTimeoutMs: -1
bogusKey: 1
"""


def meshd(*args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "meshd", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def test_version_prints_the_package_version(tmp_path):
    result = meshd("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"meshd {__version__}"


def test_check_accepts_a_valid_file_with_exit_0(tmp_path):
    (tmp_path / "meshd.yaml").write_text(VALID)
    result = meshd("check", "-c", "meshd.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "meshd.yaml: ok"
    assert result.stderr == ""


def test_check_lists_every_problem_with_its_path_and_line_and_exits_1(tmp_path):
    (tmp_path / "meshd.yaml").write_text(INVALID)
    result = meshd("check", "-c", "meshd.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    problems = [
        line.strip() for line in result.stderr.splitlines() if line.startswith("  ") and " | " not in line
    ]
    assert problems == [
        'routers[0].servers[0].port: line 7: expected an integer 0-65535, got "41x0"',
        "routers[0].client.pool.maxConnections: line 10: expected an integer >= 1, got 0",
        'routers[0].client.loadBalancer.kind: line 11: unknown kind "ewmaa" (known kinds: roundRobin, p2c, ewma); '
        'did you mean "ewma"?',
        "drainTimeoutMs: line 12: expected an integer >= 0, got -1",
        'bogusKey: line 13: unknown key "bogusKey"; known keys: admin, namers, routers, drainTimeoutMs, tracing',
    ]
    assert result.stderr.startswith("meshd.yaml: 5 problems found:\n")
    assert "       7 |         port: 41x0" in result.stderr  # the offending line is quoted


@pytest.mark.parametrize(
    ("server", "message"),
    [
        (
            "{port: 4140, maxHeaderBytes: 100}",
            "routers[0].servers[0].maxHeaderBytes: line 3: expected an integer",
        ),
        (
            "{port: 4140, headerTimeoutMs: 0}",
            "routers[0].servers[0].headerTimeoutMs: line 3: expected an integer >= 1",
        ),
        (
            "{ip: 10.0.0.300, port: 4140}",
            "routers[0].servers[0].ip: line 3: expected an IP address, got '10.0.0.300'",
        ),
    ],
)
def test_check_validates_listener_limits(tmp_path, server, message):
    (tmp_path / "meshd.yaml").write_text(f"routers:\n  - label: outgoing\n    servers: [{server}]\n")
    result = meshd("check", "-c", "meshd.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert message in result.stderr


def test_check_reads_the_routes_file_a_router_names(tmp_path):
    config = VALID.replace(
        "    dtab: /svc => /#/fs;\n", "    dtab: /svc => /#/fs;\n    routes: ./routes.yaml\n"
    )
    (tmp_path / "meshd.yaml").write_text(config)
    (tmp_path / "routes.yaml").write_text(
        textwrap.dedent("""\
        dtab: |
          /svc/accounts => ;
        """)
    )
    result = meshd("check", "-c", "meshd.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert "routes" in result.stderr and "routes.yaml" in result.stderr
    (tmp_path / "routes.yaml").write_text("dtab: |\n  /svc/accounts => /#/fs/accounts-v2;\n")
    assert meshd("check", "-c", "meshd.yaml", cwd=tmp_path).returncode == 0


def test_check_refuses_a_daemonset_transformer_that_no_namer_serves(tmp_path):
    config = VALID.replace(
        "    dtab: /svc => /#/fs;\n",
        "    dtab: /svc => /#/fs;\n    transformers: [{kind: daemonset, path: /#/k8s/mesh/incoming/meshd}]\n",
    )
    (tmp_path / "meshd.yaml").write_text(config)
    result = meshd("check", "-c", "meshd.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert (
        "routers: line 4: router outgoing, transformers[0] (daemonset): no namer serves "
        "/#/k8s/mesh/incoming/meshd (namer prefixes: /#/fs)"
    ) in result.stderr
    fixed = config.replace("/#/k8s/mesh/incoming/meshd", "/#/fs/meshd")
    (tmp_path / "meshd.yaml").write_text(fixed)
    assert meshd("check", "-c", "meshd.yaml", cwd=tmp_path).returncode == 0


def test_check_of_a_missing_file_exits_1(tmp_path):
    result = meshd("check", "-c", "nowhere.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert "nowhere.yaml: 1 problem found:" in result.stderr
    assert "cannot read the file" in result.stderr


def test_check_of_a_yaml_syntax_error_points_at_line_and_column(tmp_path):
    (tmp_path / "meshd.yaml").write_text("routers:\n  - label: x\n    servers: [{port: 1}\n")
    result = meshd("check", "-c", "meshd.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert "YAML syntax error" in result.stderr
    assert "line 4, column 1" in result.stderr or "line 3" in result.stderr


def test_run_with_an_invalid_file_exits_1_before_starting(tmp_path):
    (tmp_path / "meshd.yaml").write_text(INVALID)
    result = meshd("run", "-c", "meshd.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert "routers[0].servers[0].port: line 7" in result.stderr


def test_no_command_prints_help_and_exits_2(tmp_path):
    result = meshd(cwd=tmp_path)
    assert result.returncode == 2
    assert "usage: meshd" in result.stdout
