"""Listening sockets, bound here and handed to the event loop (`create_server(sock=...)`).

Why not `loop.create_server(factory, ip, port)`: uvloop resolves a `host` string with
`getaddrinfo` and encodes it with Python's `idna` codec first, even an IP literal, and that codec
imports `encodings.idna`, `stringprep` and `unicodedata`: 0.35 MB of RSS in every meshd process for
nothing, since every address meshd listens on is an IP literal (the config checks `ip` with
`ipaddress`; docs/benchmarks-memory.md). This module does what uvloop does with such an address:
a socket of the address's family, `SO_REUSEADDR`, `SO_REUSEPORT` when asked, `IPV6_V6ONLY` for
IPv6 (no dual stack), and `bind`, with the same error message when the bind fails. The loop then
calls `listen(backlog)` itself.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any


def listening_socket(ip: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A bound (not yet listening) TCP socket on the IP literal `ip` and `port` (0: any free port)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        address = (ip, port)
        try:
            sock.bind(address)
        except OSError as err:
            reason = (err.strerror or str(err)).lower()
            raise OSError(err.errno, f"error while attempting to bind on address {address!r}: {reason}") from None
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


async def serve(
    factory: Callable[[], asyncio.BaseProtocol], ip: str, port: int, *, reuse_port: bool = False, **options: Any
) -> asyncio.Server:
    """`loop.create_server` on a socket bound here (`listening_socket`), closed again if the loop
    refuses it; `options` are `create_server`'s (backlog, ssl, ...)."""
    sock = listening_socket(ip, port, reuse_port=reuse_port)
    try:
        return await asyncio.get_running_loop().create_server(factory, sock=sock, **options)
    except BaseException:
        sock.close()
        raise
