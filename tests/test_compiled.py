"""The compiled hot path: the modules `make install` compiles with mypyc, and the stale-build guard."""

from __future__ import annotations

import ast
import importlib
import os
import re
from pathlib import Path

import pytest

import meshd
from meshd import COMPILED_MODULES, _drop_stale_compiled_modules

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


def test_one_compiled_module_older_than_its_source_removes_them_all(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # They share one runtime and each other's native classes: a mix of builds and sources is unsafe.
    source, built, other = _checkout(tmp_path)
    os.utime(built, (source.stat().st_mtime - 10, source.stat().st_mtime - 10))
    assert sorted(_drop_stale_compiled_modules(tmp_path)) == sorted([built, other])
    assert not built.exists() and not other.exists()
    assert "older than listener.py" in capsys.readouterr().err


def test_fresh_compiled_modules_are_kept_and_installed_packages_are_left_alone(tmp_path: Path) -> None:
    source, built, other = _checkout(tmp_path)
    os.utime(built, (source.stat().st_mtime + 10, source.stat().st_mtime + 10))
    assert _drop_stale_compiled_modules(tmp_path) == []
    assert built.exists() and other.exists()
    os.utime(built, (source.stat().st_mtime - 10, source.stat().st_mtime - 10))
    (tmp_path / ".git").rmdir()
    assert _drop_stale_compiled_modules(tmp_path) == []  # not a checkout: never touched
    assert built.exists()
    assert meshd.__version__
