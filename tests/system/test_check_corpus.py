"""`meshd check` on a corpus of broken files (tests/system/check_corpus/, see its README).

Every marked line must be reported exactly once, at that line of the file, with the marked
text; nothing unmarked may be reported. The corpus cases run in-process (`run_check`, what
`meshd check` calls); the command line itself (exit codes, `--strict`, `--routes`) runs as a
real process below.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from meshd.config.checks import run_check

ROOT = pathlib.Path(__file__).resolve().parents[2]
CORPUS = pathlib.Path(__file__).parent / "check_corpus"
CASES = sorted(p.name for p in CORPUS.iterdir() if p.is_dir())
MARKER = re.compile(r"#\s*!([!W])\s*(.+?)\s*$")
#: a problem line of a `meshd check` block: `  [warning: ]path: line L[, column C]: message`
PROBLEM = re.compile(r"^  (?P<warning>warning: )?(?:(?P<path>\S+): )?line (?P<line>\d+)(?:, column (?P<column>\d+))?: (?P<message>.*)$")


def expected(path: pathlib.Path) -> list[tuple[str, int, str]]:
    out = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        match = MARKER.search(line)
        if match:
            out.append((path.name, number, ("warning" if match.group(1) == "W" else "error") + ": " + match.group(2)))
    return out


def reported(blocks: list[str]) -> list[tuple[str, int, str]]:
    out = []
    for block in blocks:
        source = pathlib.Path(block.split(": ", 1)[0]).name
        for line in block.splitlines()[1:]:
            match = PROBLEM.match(line)
            if match:
                severity = "warning" if match.group("warning") else "error"
                out.append((source, int(match.group("line")), f"{severity}: {match.group('message')}"))
    return out


@pytest.fixture
def case_dir(tmp_path: pathlib.Path, request: pytest.FixtureRequest) -> pathlib.Path:
    target = tmp_path / request.param
    shutil.copytree(CORPUS / request.param, target)
    return target


@pytest.mark.parametrize("case_dir", CASES, indirect=True)
def test_every_problem_is_reported_once_at_its_line(case_dir: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(case_dir)
    report = run_check("meshd.yaml")
    marks = [m for name in ("meshd.yaml", "routes.yaml") if (case_dir / name).exists() for m in expected(case_dir / name)]
    found = reported(report.blocks)
    assert len(found) == len(marks), "\n".join(report.blocks)
    for source, line, text in marks:
        hits = [f for f in found if f[0] == source and f[1] == line]
        assert len(hits) == 1, f"{source} line {line}: expected one problem, got {hits}\n" + "\n".join(report.blocks)
        severity, _, fragment = text.partition(": ")
        assert hits[0][2].startswith(severity + ": ") and fragment in hits[0][2], (text, hits[0])
    assert report.errors == sum(1 for m in marks if m[2].startswith("error"))
    assert report.warnings == sum(1 for m in marks if m[2].startswith("warning"))


def meshd(*args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "meshd", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("case_dir", ["three-mistakes"], indirect=True)
def test_the_three_mistakes_take_one_run_in_the_config_format(case_dir: pathlib.Path) -> None:
    done = meshd("check", "-c", "meshd.yaml", cwd=case_dir)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines()[:4] == [
        "routes.yaml: 3 problems found:",
        "  dtab: line 3, column 14: expected '=>', found '/'",
        "       3 |   /svc/users /#/fs/users;         # !! expected '=>', found '/'",
        "         |              ^",
    ]
    assert '  rules[0].weights["/#/fs/accounts-v2"]: line 9: weight must be a finite number >= 0, got -5' in done.stderr
    assert '  rules[1].dts: line 12: unknown key "dts"; did you mean "dst"?' in done.stderr


@pytest.mark.parametrize("case_dir", ["canary-typo"], indirect=True)
def test_warnings_pass_unless_strict(case_dir: pathlib.Path) -> None:
    done = meshd("check", "-c", "meshd.yaml", cwd=case_dir)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "meshd.yaml: ok",
        "routes.yaml: ok",
        "3 warnings (shown above); --strict makes warnings fail the check",
    ]
    assert "routes.yaml: 2 problems found (2 warnings):" in done.stderr
    strict = meshd("check", "--strict", "-c", "meshd.yaml", cwd=case_dir)
    assert strict.returncode == 1
    assert strict.stdout == ""
    assert "--strict: 3 warnings fail the check" in strict.stderr
    # fixed: no warning, and --strict passes
    (case_dir / "routes.yaml").write_text(
        (case_dir / "routes.yaml").read_text().replace("acounts-v2", "accounts-v2").replace("accounts-v3", "accounts-v2")
    )
    (case_dir / "meshd.yaml").write_text((case_dir / "meshd.yaml").read_text().replace("/#/fss/", "/#/fs/"))
    fixed = meshd("check", "--strict", "-c", "meshd.yaml", cwd=case_dir)
    assert fixed.returncode == 0, fixed.stderr
    assert fixed.stderr == ""


@pytest.mark.parametrize("case_dir", ["canary-typo"], indirect=True)
def test_a_routing_file_alone_and_against_a_config(case_dir: pathlib.Path) -> None:
    alone = meshd("check", "--routes", "routes.yaml", cwd=case_dir)
    assert alone.returncode == 0, alone.stderr
    assert alone.stdout.splitlines() == ["routes.yaml: ok"]  # no namers known: no binding warnings
    (case_dir / "other.yaml").write_text("rules:\n  - name: a\n    prefix: /svc/a\n    weights: {/#/fs/nope: 1, /#/fs/accounts: 1}\n")
    against = meshd("check", "-c", "meshd.yaml", "--routes", "other.yaml", "--strict", cwd=case_dir)
    assert against.returncode == 1
    assert 'other.yaml: 1 problem found (1 warning):\n  warning: rules[0].weights["/#/fs/nope"]: line 4, column 15: ' in against.stderr
    usage = meshd("check", cwd=case_dir)
    assert usage.returncode == 2
