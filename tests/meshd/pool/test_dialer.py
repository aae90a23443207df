"""The TCP dialer's connect timeout runs on meshd's clock: a connect that never completes fails
with ConnectFailed at the exact instant of `connectTimeoutMs` on the test's fake clock."""

from __future__ import annotations

import asyncio
import types

import pytest

import meshd.pool.dialer as dialer_module
from meshd.errors import ConnectFailed
from meshd.pool.dialer import TcpDialer
from tests.support.clock import FakeClock


class HangingLoop:
    """Stands in for the running loop: its connects never complete (a SYN answered by nothing)."""

    def __init__(self) -> None:
        self.connects: list[tuple[str, int]] = []

    async def create_connection(self, factory: object, host: str, port: int) -> object:
        self.connects.append((host, port))
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_connect_that_never_completes_fails_exactly_at_the_connect_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = HangingLoop()
    monkeypatch.setattr(dialer_module, "asyncio", types.SimpleNamespace(get_running_loop=lambda: loop))
    clock = FakeClock(start=0.0)
    dial = asyncio.ensure_future(TcpDialer(0.25, clock).dial("10.0.0.1", 80, asyncio.Protocol))
    await asyncio.sleep(0)
    assert loop.connects == [("10.0.0.1", 80)] and clock.next_due() == 0.25
    clock.advance(0.25 - 1 / 1024)
    await asyncio.sleep(0)
    assert not dial.done()
    clock.advance(1 / 1024)
    with pytest.raises(ConnectFailed) as failed:
        await asyncio.wait_for(dial, 5)
    assert failed.value.message == "connect to 10.0.0.1:80 timed out after 0.25 s"
    assert clock.pending == []
