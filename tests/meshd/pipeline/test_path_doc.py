"""The path of one request written in meshd/pipeline/__init__.py names code that exists.

Every `module:function` (or `module:Class.method`) there is imported and looked up, and every
closure named after an arrow (`factory` -> `closure`) is defined inside that factory, so renaming
or moving a step of the path fails here until the written path is updated too.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import meshd.pipeline

DOC = meshd.pipeline.__doc__ or ""
ROOT = Path(__file__).resolve().parents[3]
#: `module:qualname`, optionally followed by ` -> `closure``
NAMED = re.compile(r"`([a-z_][\w.]*):([A-Za-z_][\w.]*)`(?: -> `(\w+)`)?")
#: a numbered step: its number and the function it starts with
STEP = re.compile(r"^(\d+)\. `([a-z_][\w.]*):([A-Za-z_][\w.]*)`", re.MULTILINE)


def resolve(module_name: str, qualname: str) -> object:
    target: object = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def function_node(module_name: str, qualname: str) -> ast.FunctionDef | ast.AsyncFunctionDef:
    """The definition of `qualname` in the module's source (compiled or not, the .py is read)."""
    source = ROOT.joinpath(*module_name.split(".")).with_suffix(".py")
    scope: list[ast.stmt] = ast.parse(source.read_text()).body
    node: ast.stmt | None = None
    for part in qualname.split("."):
        node = next(
            n
            for n in scope
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and n.name == part
        )
        scope = node.body
    assert isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    return node


def test_the_path_is_numbered_in_order_from_the_listener_to_the_upstream_connection() -> None:
    steps = STEP.findall(DOC)
    assert [int(number) for number, _, _ in steps] == list(range(1, len(steps) + 1))
    assert steps[0][1:] == ("meshd.listener", "ServerProtocol.data_received")
    assert steps[-1][1:] == ("meshd.pool.connection", "UpstreamConnection.send")


def test_every_function_named_on_the_path_exists() -> None:
    named = NAMED.findall(DOC)
    assert len(named) >= 19
    for module_name, qualname, _ in named:
        assert callable(resolve(module_name, qualname)), f"{module_name}:{qualname}"


def test_every_closure_named_on_the_path_is_defined_in_its_factory() -> None:
    closures = [(m, q, c) for m, q, c in NAMED.findall(DOC) if c]
    assert len(closures) >= 8
    for module_name, qualname, closure in closures:
        factory = function_node(module_name, qualname)
        inner = {n.name for n in ast.walk(factory) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
        assert closure in inner, f"{module_name}:{qualname} defines no {closure}()"


def test_a_wrong_name_would_be_caught() -> None:
    # the checks above can fail: a name that is not there is not found
    try:
        resolve("meshd.listener", "ServerProtocol.no_such_step")
    except AttributeError:
        pass
    else:
        raise AssertionError("resolve() found a step that does not exist")
    factory = function_node("meshd.pipeline.hygiene", "hygiene_filter")
    assert "identify" not in {n.name for n in ast.walk(factory) if isinstance(n, ast.FunctionDef)}
