"""The SSLObjects meshd hands the event loop read at most one record's plaintext per call, and a
server sends one TLS 1.3 session ticket, with which meshd's client side resumes.

uvloop asks `SSLObject.read` for 256 KiB; CPython allocates that much before reading, which glibc
serves with mmap and munmap for every record unless its mmap threshold is above it. meshd raises
the threshold when TLS is configured (`tune_allocator`; a server then reads with the C object's
own `read`), and otherwise asks OpenSSL for at most 16 KiB (`RECORD_MAX`, the most a record
carries); the same bytes are delivered either way (docs/benchmarks-analysis.md).
"""

from __future__ import annotations

import ctypes
import pathlib
import ssl

import pytest

from meshd.tls.contexts import (
    RECORD_MAX,
    SESSION_TICKETS,
    TlsFiles,
    TlsSide,
    _record_reader,
    client_context,
    server_context,
    tune_allocator,
)
from meshd.tls.stats import TlsStats
from tests.support.tls import Pki

#: what uvloop asks for (its SSL_READ_MAX_SIZE)
UVLOOP_ASKS = 256 * 1024


def sides(tmp_path: pathlib.Path) -> tuple[TlsSide, TlsSide]:
    pki = Pki(tmp_path / "pki")
    server_pair = pki.issue("server", dns=("back.local",))
    client_pair = pki.issue("client", dns=("front.local",))
    stats = TlsStats()
    server_files = TlsFiles(
        {"certPath": server_pair.cert, "keyPath": server_pair.key, "caPath": pki.ca_path},
        lambda: server_context(server_pair.cert, server_pair.key, pki.ca_path, True), stats,
    )
    client_files = TlsFiles(
        {"certPath": client_pair.cert, "keyPath": client_pair.key, "caPath": pki.ca_path},
        lambda: client_context(pki.ca_path, client_pair.cert, client_pair.key), stats,
    )
    return (TlsSide(server_files, stats, server=True, router="r"),
            TlsSide(client_files, stats, server=False, router="r", client="c"))


class Wire:
    """A client and a server SSLObject made by meshd's sides, joined by memory BIOs."""

    def __init__(self, server: TlsSide, client: TlsSide) -> None:
        self.c_in, self.c_out, self.s_in, self.s_out = (ssl.MemoryBIO() for _ in range(4))
        self.client = client.context.wrap_bio(self.c_in, self.c_out, server_hostname="back.local")
        self.server = server.context.wrap_bio(self.s_in, self.s_out, server_side=True)
        pending = [self.client, self.server]
        for _ in range(10):
            for obj in list(pending):  # as uvloop does: until its handshake completes, once
                try:
                    obj.do_handshake()
                except ssl.SSLWantReadError:
                    continue
                pending.remove(obj)
            self.pump()
        assert self.client.version() == "TLSv1.3" and self.server.version() == "TLSv1.3"
        self.drain(self.client)  # the session tickets

    def pump(self) -> None:
        self.s_in.write(self.c_out.read())
        self.c_in.write(self.s_out.read())

    @staticmethod
    def drain(obj: ssl.SSLObject) -> list[bytes]:
        """Read as uvloop does: ask for 256 KiB until OpenSSL wants more bytes."""
        chunks: list[bytes] = []
        while True:
            try:
                chunk = obj.read(UVLOOP_ASKS)
            except ssl.SSLWantReadError:
                return chunks
            chunks.append(chunk)


@pytest.mark.parametrize("size", [1, 300, RECORD_MAX, RECORD_MAX + 1, 100_000])
def test_both_sides_deliver_every_byte_at_most_one_record_per_read(tmp_path: pathlib.Path, size: int) -> None:
    wire = Wire(*sides(tmp_path))
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    for writer, reader in ((wire.client, wire.server), (wire.server, wire.client)):
        assert writer.write(payload) == size
        wire.pump()
        chunks = wire.drain(reader)
        assert b"".join(chunks) == payload
        assert all(0 < len(chunk) <= RECORD_MAX for chunk in chunks)
        assert len(chunks) == -(-size // RECORD_MAX)  # one read per record


def test_the_reader_asks_openssl_for_at_most_one_record() -> None:
    asked: list[tuple[object, ...]] = []

    def inner(*args: object) -> bytes:
        asked.append(args)
        return b""

    read = _record_reader(inner)
    read(UVLOOP_ASKS)
    read(100)
    buffer = bytearray(UVLOOP_ASKS)
    read(UVLOOP_ASKS, buffer)  # into the caller's buffer: nothing allocated, passed on as asked
    assert asked == [(RECORD_MAX,), (100,), (UVLOOP_ASKS, buffer)]


def test_a_server_sends_one_ticket_and_the_next_connection_resumes_with_it(tmp_path: pathlib.Path) -> None:
    server, client = sides(tmp_path)
    assert server.files.current.num_tickets == SESSION_TICKETS == 1
    first = Wire(server, client)
    assert not first.client.session_reused
    session = first.client.session
    assert session is not None and session.has_ticket
    second = Wire(server, client)  # the client side offers the first connection's session
    assert second.client.session_reused and second.server.session_reused
    assert client._stats.handshakes[("r", "c", "true")] == 1


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mmapped_blocks() -> int:
    """glibc's count of blocks it serves with their own mmap (mallinfo2's `hblks`)."""
    mallinfo2 = ctypes.CDLL(None).mallinfo2
    mallinfo2.restype = _MallInfo2
    return int(mallinfo2().hblks)


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="glibc 2.33 or later only")
def test_with_tls_a_read_of_256_kib_is_served_from_the_heap_and_the_server_reads_directly(
    tmp_path: pathlib.Path,
) -> None:
    server, client = sides(tmp_path)  # a server side raises glibc's mmap threshold
    assert tune_allocator() and server._direct_read and not client._direct_read
    before = _mmapped_blocks()
    held = [bytearray(UVLOOP_ASKS) for _ in range(4)]  # what CPython allocates for uvloop's read
    assert _mmapped_blocks() == before
    del held
    wire = Wire(server, client)
    # the server's read is the C object's own: no Python frame per record, and one record per read
    assert wire.server.read.__self__ is wire.server._sslobj  # type: ignore[attr-defined]
    wire.client.write(b"x" * (RECORD_MAX + 5))
    wire.pump()
    assert [len(chunk) for chunk in wire.drain(wire.server)] == [RECORD_MAX, 5]
