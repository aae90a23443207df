"""Dialer: how a pool opens a TCP (or TLS) connection; a small interface so pool tests can script connections."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from typing import Protocol, TypeVar

from meshd.clock import MONOTONIC, Clock
from meshd.errors import ConnectFailed, TlsHandshakeFailed
from meshd.tls.reasons import describe

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
        _no_delay(transport)
        return protocol


class TlsDialer:
    """Dials TCP, then TLS: the server's certificate is verified against `server_name` (or the
    endpoint's IP address when None). A failed handshake is a `TlsHandshakeFailed` (502, never
    written) saying what failed; the side (meshd/tls/contexts.py) counts it by reason."""

    __slots__ = ("connect_timeout_s", "clock", "context", "server_name", "handshake_timeout_s", "count")

    def __init__(
        self,
        context: ssl.SSLContext,
        server_name: str | None,
        *,
        connect_timeout_s: float = 1.0,
        handshake_timeout_s: float = 10.0,
        clock: Clock = MONOTONIC,
        count: Callable[[str], None] | None = None,
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.clock = clock
        #: counts a failure the handshake itself did not report (a timeout, a peer that hung up)
        self.count = count
        self.context = context
        self.server_name = server_name
        self.handshake_timeout_s = handshake_timeout_s

    async def dial(self, host: str, port: int, factory: Callable[[], P]) -> P:
        loop = asyncio.get_running_loop()
        name = self.server_name or host
        limit = self.connect_timeout_s + self.handshake_timeout_s
        try:
            async with self.clock.timeout(limit):
                transport, protocol = await loop.create_connection(
                    factory, host, port, ssl=self.context, server_hostname=name,
                    ssl_handshake_timeout=self.handshake_timeout_s,
                )
        except ssl.SSLError as exc:
            raise TlsHandshakeFailed(f"TLS handshake with {host}:{port} (as {name}) failed: {describe(exc)}") from exc
        except TimeoutError as exc:
            self._count("timeout")
            raise TlsHandshakeFailed(
                f"connect and TLS handshake with {host}:{port} did not finish within {limit:g} s"
            ) from exc
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            if isinstance(exc, ConnectionAbortedError) and "handshake" in reason.lower():
                self._count("timeout")
                raise TlsHandshakeFailed(
                    f"TLS handshake with {host}:{port} did not finish within {self.handshake_timeout_s:g} s"
                ) from exc
            if isinstance(exc, ConnectionResetError | BrokenPipeError):
                self._count("closed")
                raise TlsHandshakeFailed(
                    f"TLS handshake with {host}:{port} (as {name}) failed: the server closed the connection"
                ) from exc
            raise ConnectFailed(f"connect to {host}:{port} failed: {reason.lower()}") from exc
        _no_delay(transport)
        return protocol

    def _count(self, reason: str) -> None:
        if self.count is not None:
            self.count(reason)


def _no_delay(transport: asyncio.BaseTransport) -> None:
    """Send small writes at once (TCP_NODELAY): a request head must not wait for Nagle's timer."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # pragma: no cover - platform specific
            pass
