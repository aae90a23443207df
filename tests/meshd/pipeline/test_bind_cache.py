"""The binder's caches: failed bindings are remembered, caches are bounded apart, and a local
dtab's binding is bounded in work (issue 13, bug 5)."""

from __future__ import annotations

import pytest

import meshd.pipeline.bind as bind_module
from meshd.errors import BadRequest, NoSuchService
from meshd.observable import Observable
from meshd.pipeline.bind import MAX_CACHED_LOCAL_BINDINGS, Binder
from routing.delegate import Binding, bind
from routing.dtab import Dtab
from routing.namer import BoundName
from routing.parser import parse_dtab
from routing.path import Path
from tests.routing.fakes import FakeNamer, namers

ACCOUNTS = Path.read("/svc/accounts")
#: A chain whose paths all differ (`/x1/a`, `/x1/b`, `/x2/a/a`, ...): reusing bound paths cannot
#: help, so only the work limit stops it.
DIVERGING = "/svc/accounts => /x0; " + "; ".join(f"/x{i} => /x{i + 1}/a | /x{i + 1}/b" for i in range(40))


class Counting:
    """Wraps `routing.delegate.bind` to count the bindings the binder makes."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *args: object, **kwargs: object) -> Binding:
        self.calls += 1
        return bind(*args, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> Counting:
    counter = Counting()
    monkeypatch.setattr(bind_module, "bind", counter)
    return counter


def make_binder() -> tuple[Binder, Observable[Dtab], Observable[int]]:
    base = Observable(parse_dtab("/svc => /#/fs"))
    version = Observable(0)
    binder = Binder(base, namers(FakeNamer("/#/fs", ["accounts"])), [version], binding_timeout_s=1.0)
    return binder, base, version


async def test_a_binding_past_the_work_limit_fails_once_then_from_the_cache(counting: Counting) -> None:
    binder, _, _ = make_binder()

    with pytest.raises(NoSuchService) as first:
        await binder.bind(ACCOUNTS, DIVERGING)
    with pytest.raises(NoSuchService) as second:
        await binder.bind(ACCOUNTS, DIVERGING)

    assert "steps of work, the limit for a binding with a per-request dtab" in first.value.message
    assert second.value.message == first.value.message
    assert counting.calls == 1
    assert (ACCOUNTS, DIVERGING) in binder.failures


async def test_a_malformed_local_dtab_fails_once_then_from_the_cache(counting: Counting) -> None:
    binder, _, _ = make_binder()
    for _ in range(2):
        with pytest.raises(BadRequest, match="malformed l5d-dtab / l5d-ctx-dtab header: line 1, column 18"):
            await binder.bind(ACCOUNTS, "/svc/accounts => ")
    assert (ACCOUNTS, "/svc/accounts => ") in binder.failures


@pytest.mark.parametrize("change", ["dtab", "namer"])
async def test_failures_are_forgotten_when_the_dtab_or_a_namer_changes(counting: Counting, change: str) -> None:
    binder, base, version = make_binder()
    with pytest.raises(NoSuchService):
        await binder.bind(ACCOUNTS, DIVERGING)

    if change == "dtab":
        base.set(parse_dtab("/svc => /#/fs;"))
    else:
        version.set(1)

    assert not binder.failures
    with pytest.raises(NoSuchService):
        await binder.bind(ACCOUNTS, DIVERGING)
    assert counting.calls == 2


async def test_local_dtab_bindings_are_bounded_without_evicting_base_bindings() -> None:
    binder, _, _ = make_binder()
    base_chooser = await binder.bind(ACCOUNTS, "")

    for i in range(MAX_CACHED_LOCAL_BINDINGS + 50):
        await binder.bind(ACCOUNTS, f"/svc/unused{i} => /#/fs/accounts")

    local_entries = [k for k in binder.cache if k[1]]
    assert len(local_entries) == MAX_CACHED_LOCAL_BINDINGS
    assert (ACCOUNTS, "/svc/unused0 => /#/fs/accounts") not in binder.cache  # the oldest went
    assert (ACCOUNTS, f"/svc/unused{MAX_CACHED_LOCAL_BINDINGS + 49} => /#/fs/accounts") in binder.cache
    assert binder.cache[(ACCOUNTS, "")] is base_chooser


async def test_a_base_binding_is_not_limited_like_a_local_one() -> None:
    """The operator's dtab keeps the node limit (10,000): the same rules that fail as a header
    bind when they are in the base dtab (here to `~`, after thousands of nodes)."""
    chain = "; ".join(f"/x{i} => /x{i + 1}/a | /x{i + 1}/b" for i in range(8))
    base = Observable(parse_dtab("/svc => /#/fs; /svc/accounts => /x0; " + chain))
    binder = Binder(base, namers(FakeNamer("/#/fs", ["accounts"])), [], binding_timeout_s=1.0)

    chooser = await binder.bind(ACCOUNTS, "")
    assert chooser.single == BoundName(Path.read("/#/fs/accounts"))

    with pytest.raises(NoSuchService, match="steps of work"):
        await binder.bind(ACCOUNTS, "/svc/accounts => /x0; " + chain)


async def test_negative_reasons_with_a_local_dtab_are_cached(counting: Counting) -> None:
    binder, _, _ = make_binder()
    local = "/svc/accounts => /#/fs/nope | ~"
    for _ in range(3):
        assert binder.negative_reasons(Path.read("/svc/x"), local) == ""
    assert counting.calls == 1
