"""meshd/sockets.py binds a listening socket as uvloop would from an address string, without
loading the idna codec; the event loop serves on it (real sockets on the loopback)."""

from __future__ import annotations

import asyncio
import errno
import socket
import subprocess
import sys

import pytest

from meshd.sockets import listening_socket


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


async def _serve_and_echo(sock: socket.socket, family: int, host: str) -> bytes:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Echo, sock=sock, backlog=16)
    try:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(host, port, family=family)
        writer.write(b"ping")
        answer = await asyncio.wait_for(reader.readexactly(4), 5)
        writer.close()
        await writer.wait_closed()
        return answer
    finally:
        server.close()
        await server.wait_closed()


async def test_an_ipv4_socket_is_bound_with_reuse_address_and_served() -> None:
    sock = listening_socket("127.0.0.1", 0)
    assert sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
    assert sock.getblocking() is False
    assert await _serve_and_echo(sock, socket.AF_INET, "127.0.0.1") == b"ping"


async def test_reuse_port_lets_two_sockets_share_a_port() -> None:
    first = listening_socket("127.0.0.1", 0, reuse_port=True)
    try:
        port = first.getsockname()[1]
        second = listening_socket("127.0.0.1", port, reuse_port=True)
        assert second.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        second.close()
    finally:
        first.close()


async def test_an_ipv6_socket_is_ipv6_only() -> None:
    if not _has_ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    sock = listening_socket("::1", 0)
    assert sock.family == socket.AF_INET6
    assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    assert await _serve_and_echo(sock, socket.AF_INET6, "::1") == b"ping"


def test_a_port_in_use_is_refused_with_the_address_in_the_message() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(OSError) as caught:
            listening_socket("127.0.0.1", port)
    assert caught.value.errno == errno.EADDRINUSE
    assert str(caught.value) == (
        f"[Errno {errno.EADDRINUSE}] error while attempting to bind on address ('127.0.0.1', {port}): "
        "address already in use"
    )


def test_binding_does_not_load_the_idna_codec() -> None:
    code = (
        "import sys, asyncio, uvloop\n"
        "from meshd.sockets import listening_socket\n"
        "async def main():\n"
        "    server = await asyncio.get_running_loop().create_server(asyncio.Protocol,"
        " sock=listening_socket('127.0.0.1', 0))\n"
        "    server.close()\n"
        "uvloop.run(main())\n"
        "print('encodings.idna' in sys.modules, 'unicodedata' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["False", "False"]
