"""The compiled hot path and the package: what the build compiles with mypyc, what the wheel installs, the stale-build refusal."""

from __future__ import annotations

import ast
import configparser
import fnmatch
import importlib
import os
import re
from pathlib import Path

import pytest

import meshd
from meshd import COMPILED_MODULES, _refuse_stale_compiled_modules, _stale_compiled_modules

ROOT = Path(__file__).resolve().parent.parent


def test_the_makefile_compiles_exactly_the_listed_modules() -> None:
    makefile = (ROOT / "Makefile").read_text()
    match = re.search(r"^HOT := ((?:.*\\\n)*.*)$", makefile, re.MULTILINE)
    assert match is not None
    assert match.group(1).replace("\\", " ").split() == [m.replace(".", "/") + ".py" for m in COMPILED_MODULES]


def test_the_hot_path_runs_compiled() -> None:
    # What the benchmarks measure is what the tests test: under CI, `make test` must have compiled
    # the hot path (MESHD_PURE=1 opts out explicitly).
    if os.environ.get("MESHD_PURE") == "1":
        pytest.skip("MESHD_PURE=1: the hot path runs as pure Python")
    files = {name: str(importlib.import_module(name).__file__) for name in COMPILED_MODULES}
    pure = [name for name, file in files.items() if not file.endswith(".so")]
    if pure and os.environ.get("CI") != "true":
        pytest.skip(f"not compiled (run `make install`; needs gcc and python3-dev): {pure}")
    assert not pure, f"these hot-path modules run as pure Python: {pure}"


def _awaits_while_handling(source: str) -> list[int]:
    """Lines of an `await` (or `async for`/`async with`) inside an `except` or `finally` block."""
    lines: list[int] = []
    for node in ast.walk(ast.parse(source)):
        blocks: list[list[ast.stmt]] = []
        if isinstance(node, ast.ExceptHandler):
            blocks.append(node.body)
        if isinstance(node, ast.Try | ast.TryStar):
            blocks.append(node.finalbody)
        for body in blocks:
            for stmt in body:
                lines.extend(
                    sub.lineno for sub in ast.walk(stmt) if isinstance(sub, ast.Await | ast.AsyncFor | ast.AsyncWith)
                )
    return lines


def test_no_compiled_coroutine_suspends_while_handling_an_exception() -> None:
    # A mypyc coroutine suspended inside `except` leaves its exception in the thread's exc_info
    # while other callbacks run. httptools then chains that stale exception as the __context__ of
    # its callback errors, which the listener and the upstream connection read to tell a HEAD
    # response's end from a malformed one: responses to HEAD came back as 502s after a stale
    # pooled connection was re-sent. So compiled modules never await while handling.
    found = {
        name: lines
        for name in COMPILED_MODULES
        if (lines := _awaits_while_handling((ROOT / (name.replace(".", "/") + ".py")).read_text()))
    }
    assert not found, f"await inside except/finally in compiled modules (module: lines): {found}"


def test_the_await_check_sees_awaits_in_except_and_finally() -> None:
    source = (
        "async def f():\n"
        "    try:\n        await a()\n"
        "    except E:\n        await b()\n"
        "    finally:\n        async with c():\n            pass\n"
        "    await d()\n"
    )
    assert sorted(_awaits_while_handling(source)) == [5, 7]


def test_no_compiled_module_defines_an_error_class() -> None:
    # A mypyc-compiled subclass of an interpreted exception class does not override the base's
    # class attributes: a `QueueTimeout(PoolExhausted)` defined in the compiled pool said
    # kind="pool_exhausted". Error classes therefore live in meshd/errors.py (interpreted).
    found = {}
    for name in COMPILED_MODULES:
        tree = ast.parse((ROOT / (name.replace(".", "/") + ".py")).read_text())
        overriding = [
            node.name
            for node in tree.body
            if isinstance(node, ast.ClassDef)
            and node.bases
            and any(isinstance(stmt, ast.Assign | ast.AnnAssign) for stmt in node.body)
            and any(isinstance(b, ast.Name) and (b.id.endswith(("Error", "Timeout", "Failed", "Exhausted"))
                                                 or b.id in {"Exception", "MeshdError"}) for b in node.bases)
        ]
        if overriding:
            found[name] = overriding
    assert not found, f"error classes with class attributes in compiled modules: {found}"


def _checkout(tmp_path: Path) -> tuple[Path, Path, Path]:
    (tmp_path / ".git").mkdir()
    source = tmp_path / "meshd" / "listener.py"
    source.parent.mkdir()
    source.write_text("x = 1\n")
    built = source.with_name("listener.cpython-311-x86_64-linux-gnu.so")
    built.write_bytes(b"\0")
    (tmp_path / "meshd" / "http").mkdir()
    (tmp_path / "meshd" / "http" / "body.py").write_text("x = 1\n")
    other = tmp_path / "meshd" / "http" / "body.cpython-311-x86_64-linux-gnu.so"
    other.write_bytes(b"\0")
    later = source.stat().st_mtime + 10
    os.utime(other, (later, later))
    return source, built, other


def test_a_compiled_module_older_than_its_source_refuses_the_import_and_changes_nothing(tmp_path: Path) -> None:
    # Python would load the stale build before the edited source. `import meshd` says so and how to
    # fix it; it deletes nothing (an import never changes files).
    source, built, other = _checkout(tmp_path)
    os.utime(built, (source.stat().st_mtime - 10, source.stat().st_mtime - 10))
    assert _stale_compiled_modules(tmp_path) == ["meshd/listener.py"]
    with pytest.raises(ImportError, match=r"older than meshd/listener\.py.*`make install`.*`MESHD_PURE=1 make install`"):
        _refuse_stale_compiled_modules(tmp_path)
    assert built.exists() and other.exists() and source.exists()


def test_fresh_compiled_modules_and_installed_packages_are_accepted(tmp_path: Path) -> None:
    source, built, other = _checkout(tmp_path)
    os.utime(built, (source.stat().st_mtime + 10, source.stat().st_mtime + 10))
    assert _stale_compiled_modules(tmp_path) == []
    _refuse_stale_compiled_modules(tmp_path)
    os.utime(built, (source.stat().st_mtime - 10, source.stat().st_mtime - 10))
    (tmp_path / ".git").rmdir()
    assert _stale_compiled_modules(tmp_path) == []  # not a checkout: a wheel built from what it holds
    _refuse_stale_compiled_modules(tmp_path)
    assert meshd.__version__


def _wheel_packages() -> list[str]:
    """The packages setup.cfg gives the wheel: `packages = find:` (setuptools.find_packages) with its include list."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert config["options"]["packages"].strip() == "find:"
    include = config["options.packages.find"]["include"].split()
    packages = []
    for top in sorted(p for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for init in sorted(top.rglob("__init__.py")):
            parts = init.parent.relative_to(ROOT).parts
            # find_packages descends only through packages
            if all((ROOT.joinpath(*parts[:i]) / "__init__.py").exists() for i in range(1, len(parts))):
                if any(fnmatch.fnmatchcase(".".join(parts), pattern) for pattern in include):
                    packages.append(".".join(parts))
    return packages


def test_the_wheel_installs_only_the_declared_top_level_names() -> None:
    # docs/architecture.md ("Building and packaging") states these names and why; a new one, or
    # examples or the tests, in site-packages is a deliberate change made there first.
    packages = _wheel_packages()
    assert {name.split(".")[0] for name in packages} == {"meshd", "routing", "balancers", "bench"}
    assert not [name for name in packages if name.split(".")[-1] in {"testing", "tests", "examples"}]
    assert "meshd__mypyc" in (ROOT / "docs" / "architecture.md").read_text()  # setup.py's GROUP
    assert 'GROUP = "meshd"' in (ROOT / "setup.py").read_text()
    assert {name for name in COMPILED_MODULES if name.rsplit(".", 1)[0] not in packages} == set()


def test_installed_packages_never_import_what_the_wheel_leaves_out() -> None:
    # tests/ and examples/ run from the source tree only: an installed meshd importing them would fail.
    found = []
    for package in ("meshd", "routing", "balancers", "bench"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
                found += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in {"tests", "examples"}]
    assert not found


def test_the_image_is_built_from_a_base_argument_and_a_clean_context() -> None:
    # The host's virtualenv, caches and host-compiled extensions stay out of the image's build.
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", "build", "**/*.so", "bench/results", ".mypy_cache", "**/__pycache__"} <= ignored
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.split("\nFROM ", 1)[0].rstrip().endswith("ARG BASE=python:3.11-slim")
    stages = re.findall(r"^FROM (\S+) AS (\S+)$", dockerfile, re.MULTILINE)
    assert [base for base, _ in stages][:2] == ["${BASE}", "${BASE}"]
    assert "pip wheel" in dockerfile and "pip uninstall -y pip setuptools" in dockerfile
