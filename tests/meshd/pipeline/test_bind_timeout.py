"""The binding timeout runs on meshd's clock: a binding a namer leaves pending fails at the exact
instant of `bindingTimeoutMs` on the test's fake clock, and not a moment before."""

from __future__ import annotations

import asyncio

import pytest

from meshd.errors import RequestTimeout
from meshd.observable import Observable
from meshd.pipeline.bind import Binder
from routing.parser import parse_dtab
from routing.path import Path
from tests.routing.fakes import FakeNamer, namers
from tests.support.clock import FakeClock


async def test_a_pending_binding_times_out_exactly_at_the_binding_timeout() -> None:
    clock = FakeClock(start=0.0)
    binder = Binder(
        Observable(parse_dtab("/svc => /#/fs")),
        namers(FakeNamer("/#/fs", pending=["accounts"])),
        [Observable(0)],
        binding_timeout_s=0.25,
        clock=clock,
    )
    binding = asyncio.create_task(binder.bind(Path.read("/svc/accounts"), ""))
    await asyncio.sleep(0)
    assert clock.next_due() == 0.25  # the binding's timer, on the fake clock
    clock.advance(0.25 - 1 / 1024)
    await asyncio.sleep(0)
    assert not binding.done()  # still waiting for the namer
    clock.advance(1 / 1024)
    with pytest.raises(RequestTimeout) as failed:
        await asyncio.wait_for(binding, 5)
    assert failed.value.message.startswith("binding /svc/accounts did not complete within 250 ms")
    assert clock.pending == []
