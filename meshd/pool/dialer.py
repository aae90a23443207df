"""Dialer: how a pool opens a TCP connection; a small interface so pool tests can script connections."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Protocol, TypeVar

from meshd.clock import MONOTONIC, Clock
from meshd.errors import ConnectFailed

P = TypeVar("P", bound=asyncio.Protocol)


class Dialer(Protocol):
    async def dial(self, host: str, port: int, factory: Callable[[], P]) -> P: ...


class TcpDialer:
    """The real dialer: `loop.create_connection` with a connect timeout (on `clock`), TCP_NODELAY on."""

    __slots__ = ("connect_timeout_s", "clock")

    def __init__(self, connect_timeout_s: float = 1.0, clock: Clock = MONOTONIC) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.clock = clock

    async def dial(self, host: str, port: int, factory: Callable[[], P]) -> P:
        loop = asyncio.get_running_loop()
        try:
            async with self.clock.timeout(self.connect_timeout_s):
                transport, protocol = await loop.create_connection(factory, host, port)
        except TimeoutError as exc:
            raise ConnectFailed(f"connect to {host}:{port} timed out after {self.connect_timeout_s:g} s") from exc
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise ConnectFailed(f"connect to {host}:{port} failed: {reason.lower()}") from exc
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # pragma: no cover - platform specific
                pass
        return protocol
