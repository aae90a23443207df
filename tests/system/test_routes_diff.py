"""`meshd routes diff old.yaml new.yaml`, run as a real process against a config with an fs namer."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

MESHD_YAML = """\
namers:
  - {kind: fs, rootDir: ./disco}
routers:
  - label: outgoing
    dtab: /svc => /#/fs;
"""
OLD = """\
rules:
  - name: accounts-canary
    prefix: /svc/accounts
    weights: {/#/fs/accounts: 95, /#/fs/accounts-v2: 5}
  - name: books
    prefix: /svc/books
    dst: /#/fs/books
"""
NEW = """\
rules:
  - name: accounts-canary
    prefix: /svc/accounts
    weights: {/#/fs/accounts: 75, /#/fs/accounts-v2: 25}
  - name: books
    prefix: /svc/books
    dst: /#/fs/books
  - name: search-off
    prefix: /svc/search
    dst: "!"
"""


def meshd(*args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "meshd", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def workdir(tmp_path: pathlib.Path) -> pathlib.Path:
    (tmp_path / "disco").mkdir()
    for name, port in (("accounts", 8081), ("accounts-v2", 8091), ("books", 8082), ("search", 8083)):
        (tmp_path / "disco" / name).write_text(f"127.0.0.1 {port}\n")
    (tmp_path / "meshd.yaml").write_text(MESHD_YAML)
    (tmp_path / "old.yaml").write_text(OLD)
    (tmp_path / "new.yaml").write_text(NEW)
    return tmp_path


def test_shows_where_traffic_goes_before_and_after_for_every_routed_name(workdir: pathlib.Path) -> None:
    done = meshd("routes", "diff", "old.yaml", "new.yaml", "-c", "meshd.yaml", cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "router outgoing:",
        "  /svc/accounts: CHANGED",
        "    before: 95.00% /#/fs/accounts, 5.00% /#/fs/accounts-v2",
        "    after:  75.00% /#/fs/accounts, 25.00% /#/fs/accounts-v2",
        "      /#/fs/accounts: 95.00% -> 75.00% (-20.00 points)",
        "      /#/fs/accounts-v2: 5.00% -> 25.00% (+20.00 points)",
        "  /svc/books: unchanged: 100.00% /#/fs/books",
        "  /svc/search: CHANGED",
        "    before: 100.00% /#/fs/search",
        "    after:  100.00% ! (fails: 502)",
        "      ! (fails: 502): 0.00% -> 100.00% (+100.00 points)",
        "      /#/fs/search: 100.00% -> 0.00% (-100.00 points)",
        "2 of 3 names change",
    ]


def test_given_names_json_and_exit_code(workdir: pathlib.Path) -> None:
    done = meshd("routes", "diff", "old.yaml", "new.yaml", "/svc/books", "/svc/users", "-c", "meshd.yaml",
                 "--json", "--exit-code", cwd=workdir)
    assert done.returncode == 0, done.stderr  # neither name changes
    answer = json.loads(done.stdout)
    assert answer == {
        "router": "outgoing",
        "names": [
            {"path": "/svc/books", "changed": False, "before": {"/#/fs/books": 1.0}, "after": {"/#/fs/books": 1.0}},
            {"path": "/svc/users", "changed": False, "before": {"~ (no such name: 502)": 1.0},
             "after": {"~ (no such name: 502)": 1.0}},
        ],
    }
    changed = meshd("routes", "diff", "old.yaml", "new.yaml", "/svc/accounts", "-c", "meshd.yaml", "--exit-code",
                    cwd=workdir)
    assert changed.returncode == 1


def test_a_broken_file_is_reported_like_meshd_check_and_nothing_is_compared(workdir: pathlib.Path) -> None:
    (workdir / "new.yaml").write_text(NEW.replace("75,", "-75,"))
    done = meshd("routes", "diff", "old.yaml", "new.yaml", "-c", "meshd.yaml", cwd=workdir)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines()[:2] == [
        "new.yaml: 1 problem found:",
        '  rules[0].weights["/#/fs/accounts"]: line 4: weight must be a finite number >= 0, got -75',
    ]
