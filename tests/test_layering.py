"""The import contracts in pyproject.toml (docs/architecture.md, "Layers"): they hold, and they fail
when an import breaks them. `make lint` runs the same command (`lint-imports`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
ROOT_PACKAGES: list[str] = CONFIG["root_packages"]
CONTRACTS = {c["id"]: c["name"] for c in CONFIG["contracts"]}


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on the tree at `cwd`, with the pyproject.toml there."""
    run = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run(
        [sys.executable, "-c", run, "--no-cache"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def copy_of_the_tree(tmp_path: Path) -> Path:
    """The root packages and pyproject.toml, sources only, in a fresh directory."""
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.pyc", "results", "dashboard")
    for package in ROOT_PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_contracts_hold() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in CONTRACTS.values():
        assert f"{name} KEPT" in result.stdout


def test_an_import_of_meshd_in_routing_breaks_the_libraries_contract_even_for_type_checking_only(
    tmp_path: Path,
) -> None:
    tree = copy_of_the_tree(tmp_path)
    path_py = tree / "routing" / "path.py"
    # only under TYPE_CHECKING: such imports count (exclude_type_checking_imports = false)
    path_py.write_text(
        path_py.read_text()
        + "\n\nfrom typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from meshd.errors import MeshdError\n"
    )
    result = lint_imports(tree)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{CONTRACTS['libraries']} BROKEN" in result.stdout
    assert "routing.path -> meshd.errors" in result.stdout
    assert f"{CONTRACTS['admin-view']} KEPT" in result.stdout  # only what was broken is reported


def test_an_import_cycle_breaks_the_cycle_and_layer_contracts(tmp_path: Path) -> None:
    tree = copy_of_the_tree(tmp_path)
    # the cycle issue #14 found: the upstream side reaching back into the pipeline that uses it
    connection_py = tree / "meshd" / "pool" / "connection.py"
    connection_py.write_text(connection_py.read_text() + "\n\nfrom meshd.pipeline import dispatch  # noqa: E402\n")
    result = lint_imports(tree)
    assert result.returncode == 1, result.stdout + result.stderr
    for broken in ("no-cycles", "wire-below-pipeline", "meshd-layers"):
        assert f"{CONTRACTS[broken]} BROKEN" in result.stdout
    assert "No cycles are allowed in meshd" in result.stdout
    assert "meshd.pool.connection -> meshd.pipeline.dispatch" in result.stdout


def test_routing_state_on_the_wire_message_breaks_the_wire_without_routing_contract(tmp_path: Path) -> None:
    tree = copy_of_the_tree(tmp_path)
    messages_py = tree / "meshd" / "http" / "messages.py"
    # what issue #14 found: the wire Request typed its routing fields with routing's and retry's
    # classes (TYPE_CHECKING only); that state is the pipeline's RouteContext now
    messages_py.write_text(
        messages_py.read_text()
        + "\n\nfrom typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
        + "    from meshd.retry.classifiers import ResponseClassifier\n"
        + "    from routing.delegate import Chooser\n"
    )
    result = lint_imports(tree)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{CONTRACTS['wire-without-routing']} BROKEN" in result.stdout
    assert "meshd.http.messages -> routing.delegate" in result.stdout
    assert "meshd.http.messages -> meshd.retry.classifiers" in result.stdout
    assert f"{CONTRACTS['wire-below-pipeline']} KEPT" in result.stdout
