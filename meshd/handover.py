"""Zero-downtime upgrade: a new meshd process takes the listening sockets over from the running one.

How this works. The running meshd (`meshd run --handover-socket PATH`) listens on a Unix socket.
A new meshd started with `--takeover PATH` connects to it before it starts and asks for the
sockets; the old one sends every listening socket it has (`SCM_RIGHTS`: the same kernel sockets,
with their accept queues, not copies) with a description of each (router, server index, address,
port). The new meshd serves on the sockets it was given (for the servers its own config still
has; new ones it opens itself) and, once ready, says so on the same connection. Only then does
the old one stop accepting and drain, exactly as on SIGTERM: it closes its own descriptors, but
the sockets live on in the new process, so a connection waiting in an accept queue is accepted
by the new process rather than reset. If the new process fails before it is ready, the old one
sees the connection close without the word and goes on serving as if nothing happened.

Why not `SO_REUSEPORT` alone: two processes can bind the same port with it, but each socket has
its own accept queue, and when the old process closes its socket, the connections queued on it
are reset. Envoy's hot restart and HAProxy's `-x` pass the sockets for the same reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
import pathlib
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Final

log = logging.getLogger("meshd.handover")

TAKEOVER: Final = b"TAKEOVER\n"
READY: Final = b"READY\n"
#: the most sockets one hand-over carries (servers of every router)
MAX_SOCKETS: Final = 250


@dataclass(frozen=True, slots=True)
class Listening:
    """One listening socket as handed over: which router's server, and where it listens."""

    router: str
    index: int
    ip: str
    port: int
    configured_port: int


class HandoverError(Exception):
    """The takeover could not be done (no running meshd at the path, a protocol error)."""


class Inherited:
    """The new process's side: the sockets it was given, and the word it owes the old process."""

    def __init__(self, conn: socket.socket, sockets: dict[tuple[str, int], tuple[Listening, socket.socket]]) -> None:
        self._conn = conn
        self.sockets = sockets

    def take(self, router: str, index: int, ip: str, configured_port: int) -> socket.socket | None:
        """The handed-over socket for this server, if the old process had one at the same address."""
        entry = self.sockets.get((router, index))
        if entry is None:
            for (label, _), candidate in self.sockets.items():
                if label == router and candidate[0].ip == ip and candidate[0].configured_port == configured_port != 0:
                    entry = candidate
                    break
        if entry is None:
            return None
        listening, sock = entry
        if listening.ip != ip or listening.configured_port != configured_port:
            return None
        del self.sockets[(listening.router, listening.index)]
        return sock

    def ready(self) -> None:
        """Tell the old process to drain (the new one serves), and close what was not taken."""
        try:
            self._conn.sendall(READY)
        finally:
            self._conn.close()
            for _, sock in self.sockets.values():
                sock.close()
            self.sockets.clear()

    def abandon(self) -> None:
        """The new process failed to start: the old one goes on serving."""
        self._conn.close()
        for _, sock in self.sockets.values():
            sock.close()
        self.sockets.clear()


def take_over(path: pathlib.Path, timeout_s: float = 10.0) -> Inherited:
    """Connect to the running meshd at `path` and receive its listening sockets (blocking; at start)."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(timeout_s)
    try:
        conn.connect(str(path))
        conn.sendall(TAKEOVER)
        data, fds, _, _ = socket.recv_fds(conn, 64 * 1024, MAX_SOCKETS)
    except OSError as exc:
        conn.close()
        raise HandoverError(f"cannot take over from {path}: {exc}") from exc
    try:
        described = [Listening(**item) for item in json.loads(data.decode())]
    except (ValueError, TypeError) as exc:
        conn.close()
        for fd in fds:
            socket.close(fd)
        raise HandoverError(f"cannot take over from {path}: malformed answer: {exc}") from exc
    if len(described) != len(fds):
        conn.close()
        for fd in fds:
            socket.close(fd)
        raise HandoverError(f"cannot take over from {path}: {len(described)} sockets described, {len(fds)} sent")
    sockets = {(d.router, d.index): (d, socket.socket(fileno=fd)) for d, fd in zip(described, fds, strict=True)}
    log.info("took over %d listening sockets from %s", len(sockets), path)
    return Inherited(conn, sockets)


async def serve_handover(
    path: pathlib.Path,
    listening: Callable[[], Sequence[tuple[Listening, int]]],
    on_ready: Callable[[], Awaitable[None] | None],
) -> asyncio.AbstractServer:
    """The running process's side: answer one takeover at a time at `path`.

    `listening()` gives the sockets to hand over now (with their descriptors); `on_ready` runs once
    a new process said it serves (the caller drains and stops there).
    """
    path.unlink(missing_ok=True)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 10.0)
            if request != TAKEOVER:
                return
            entries = listening()
            raw = writer.get_extra_info("socket")
            payload = json.dumps([asdict(d) for d, _ in entries]).encode()
            # one small message with the descriptors attached; the socket is a Unix stream socket
            # whose send buffer holds it at once
            fds = [fd for _, fd in entries]
            sock = socket.socket(fileno=raw.fileno()) if not isinstance(raw, socket.socket) else raw
            try:
                socket.send_fds(sock, [payload], fds)
            finally:
                if sock is not raw:
                    sock.detach()
            log.info("handed %d listening sockets over; waiting for the new process to be ready", len(fds))
            word = await reader.readline()  # no timeout: the new process may take a while to start
            if word == READY:
                log.info("the new process serves: draining")
                result = on_ready()
                if result is not None:
                    await result
            else:
                log.warning("the new process went away before it was ready: serving on")
        except (OSError, TimeoutError) as exc:
            log.warning("handover failed: %s; serving on", exc)
        finally:
            writer.close()

    return await asyncio.start_unix_server(handle, path=str(path))
