"""SSL contexts for meshd's servers and clients, handshake metering, and rotation without restart.

How this works:
- `server_context` and `client_context` build a hardened `ssl.SSLContext` from PEM files: TLS 1.2
  and 1.3 only, ECDHE with AES-GCM or ChaCha20 for TLS 1.2 (TLS 1.3's three suites are all
  AEAD), ALPN `http/1.1`, no renegotiation, no compression. A client always verifies the server
  (its CA file, else the system's trust store) and its name.
- `TlsFiles` holds the context built from one set of files and `poll()`s them: a changed file is
  read into a brand-new context; only if that succeeds (a key that does not match its
  certificate, an expired certificate or an unreadable file fails) does it become `current`.
  The last good one keeps serving otherwise, with a warning and `meshd_tls_cert_reloads_total
  {result="error"}`.
- The event loop is handed one `LiveContext` per server or client (a `TlsSide`), and uvloop
  calls its `wrap_bio` for every new connection: it makes the connection's `SSLObject` from the
  files' *current* context. So new handshakes use the new pair at once, and connections already
  open keep the context they were made with until they close.
- Every `SSLObject` made that way reports the end of its handshake to its side (do_handshake
  is what uvloop calls): a success counts in `meshd_tls_handshakes_total` (resumed or not), a
  failure in `meshd_tls_handshake_failures_total` with its reason (meshd/tls/reasons.py). A
  server handshake that never ends is noticed when its `SSLObject` is freed: after the handshake
  timeout that is `timeout` (uvloop cut it), before it `closed` (the peer left).
- A client side keeps its latest connection per server name and, when it dials that name again,
  offers that connection's TLS session (session resumption: no certificate exchange when the
  server accepts it). TLS 1.3 sends its tickets after the handshake, hence the session is read
  at the next dial rather than at the handshake.
- uvloop calls `read`, `write` and `pending` of the connection's `SSLObject` for every record;
  they are bound to the C object's own methods, skipping `ssl.SSLObject`'s Python wrappers (a
  client's `read` stays a Python method: it also watches for the server's alerts). uvloop asks
  `read` for 256 KiB, and CPython allocates the whole size asked for before it reads (then
  shrinks it to the record): glibc serves an allocation above its mmap threshold (128 KiB by
  default) with mmap, a page fault, mremap and munmap, for every record (10 µs and more per
  record, measured: docs/benchmarks-analysis.md, "tls"). So when TLS is first configured meshd
  raises glibc's mmap threshold to 512 KiB once (`tune_allocator`: glibc does the same by
  itself after it frees its first large block, the trim threshold with it); such a read is then
  a split of the heap's free top and a shrink in place, costing what a 16 KiB one does. Where
  that cannot be done (a C library without `mallopt`), `read` asks for at most one record's
  plaintext (16 KiB, `_record_reader`) whatever uvloop asks for: a record never holds more (RFC
  8446 section 5.1), and uvloop reads again while bytes are pending, so nothing is delivered
  differently either way.
"""

from __future__ import annotations

import ctypes
import logging
import pathlib
import ssl
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from meshd.tls.reasons import classify
from meshd.tls.stats import TlsStats

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

log = logging.getLogger("meshd.tls")

#: TLS 1.2 suites: forward secrecy (ECDHE) with an AEAD cipher only. TLS 1.3 needs no list.
TLS12_CIPHERS: Final = "ECDHE+AESGCM:ECDHE+CHACHA20"
ALPN: Final = ("http/1.1",)
#: TLS 1.3 session tickets a server sends after each full handshake (OpenSSL's default is 2)
SESSION_TICKETS: Final = 1
#: the most plaintext one TLS record carries (RFC 8446 5.1; RFC 5246 6.2.1): the most one
#: `SSLObject.read` asks for (see the module's docstring)
RECORD_MAX: Final = 16384
#: post-handshake failures worth counting on a client (the server's verdict on our certificate)
_ALERTS: Final = frozenset({"no_client_cert", "unknown_ca", "expired", "bad_certificate"})
#: glibc's mallopt parameters (malloc.h) and the values `tune_allocator` sets: allocations up to
#: 512 KiB (uvloop's 256 KiB reads) come from the heap, whose free top is kept up to 1 MiB
_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3
MMAP_THRESHOLD: Final = 512 * 1024
TRIM_THRESHOLD: Final = 2 * MMAP_THRESHOLD
_tuned: bool | None = None


def tune_allocator() -> bool:
    """Raise glibc's mmap threshold above uvloop's 256 KiB reads, once per process (see the
    module's docstring). True if it is raised (then a server's `read` is the C object's own)."""
    global _tuned
    if _tuned is None:
        _tuned = False
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):  # not glibc (musl, another OS): keep the record reader
            return False
        mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        mallopt.restype = ctypes.c_int
        # mallopt returns 1 on success; setting either turns glibc's own adjustment off
        _tuned = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _tuned


def _harden(ctx: ssl.SSLContext) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_alpn_protocols(list(ALPN))


def server_context(
    cert: pathlib.Path, key: pathlib.Path, ca: pathlib.Path | None, require_client_cert: bool,
    alpn: tuple[str, ...] = (),
) -> ssl.SSLContext:
    """A server context; with `ca`, client certificates are verified (required if asked).
    `alpn`: the protocols offered by ALPN, most preferred first (`h2` on an HTTP/2 router)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(ctx)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    ctx.load_cert_chain(cert, key)
    if ca is not None:
        ctx.load_verify_locations(cafile=str(ca))
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    # TLS 1.3: one session ticket per handshake, not OpenSSL's two (each is a serialised, encrypted
    # session and a record more): a client resumes with its latest ticket, as meshd's own do
    ctx.num_tickets = SESSION_TICKETS
    return ctx


def client_context(
    ca: pathlib.Path | None, cert: pathlib.Path | None, key: pathlib.Path | None, alpn: tuple[str, ...] = (),
) -> ssl.SSLContext:
    """A client context that always verifies the server's certificate and name (`alpn`: the
    protocols offered instead of the default, `h2` on an HTTP/2 router)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname on, CERT_REQUIRED
    _harden(ctx)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if ca is not None:
        ctx.load_verify_locations(cafile=str(ca))
    else:
        ctx.load_default_certs()
    if cert is not None and key is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


class TlsFiles:
    """One set of PEM files and the context built from them; rebuilt when they change (`poll`)."""

    def __init__(
        self,
        paths: dict[str, pathlib.Path],
        build: Callable[[], ssl.SSLContext],
        stats: TlsStats,
        *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        #: role ("certPath", "keyPath", "caPath") -> file
        self.paths = paths
        self._build = build
        self._stats = stats
        self._wall = wall
        self._seen = self._read()
        self.current: ssl.SSLContext = self._checked_build()
        self.last_error: str | None = None

    def _read(self) -> dict[str, bytes | None]:
        out: dict[str, bytes | None] = {}
        for role, path in self.paths.items():
            try:
                out[role] = path.read_bytes()
            except OSError:
                out[role] = None
        return out

    def _checked_build(self) -> ssl.SSLContext:
        """Build a context from the files; ValueError/OSError/SSLError if they are not a usable set."""
        from meshd.tls.certs import not_after  # cryptography is imported only when TLS is configured

        cert = self.paths.get("certPath")
        expiry: float | None = None
        if cert is not None:
            expiry = not_after(cert.read_bytes())
            if expiry <= self._wall():
                raise ValueError(f"{cert}: the certificate expired at {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(expiry))}")
        ctx = self._build()
        if cert is not None and expiry is not None:
            self._stats.expiry[str(cert)] = expiry
        return ctx

    def poll(self) -> bool:
        """Read the files again; if any changed, try the new set. True if a new context is in use."""
        seen = self._read()
        if seen == self._seen:
            return False
        self._seen = seen
        key = str(self.paths.get("certPath") or self.paths.get("caPath"))
        try:
            ctx = self._checked_build()
        except (OSError, ValueError, ssl.SSLError) as exc:
            self.last_error = f"{exc}"
            self._stats.reloads[(key, "error")] += 1
            log.warning("TLS files changed but cannot be used (the last good ones keep serving): %s: %s",
                        ", ".join(str(p) for p in self.paths.values()), exc)
            return False
        self.current = ctx
        self.last_error = None
        self._stats.reloads[(key, "success")] += 1
        log.info("TLS files reloaded: %s", ", ".join(str(p) for p in self.paths.values()))
        return True


class TlsSide:
    """One server's or one client's use of a `TlsFiles`: the loop's context, metering, sessions."""

    def __init__(
        self,
        files: TlsFiles,
        stats: TlsStats,
        *,
        server: bool,
        router: str,
        client: str = "",
        handshake_timeout_s: float = 10.0,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.files = files
        self._stats = stats
        self.router = router
        self.client = client
        self.handshake_timeout_s = handshake_timeout_s
        self._now = now
        self.context = LiveContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
        self.context.side = self
        #: a server connection's `read` is the C object's own (else `_record_reader`'s)
        self._direct_read = server and tune_allocator()
        #: server side: handshakes under way, by id of their SSLObject -> (start, weak reference)
        self._pending: dict[int, tuple[float, weakref.ref[ssl.SSLObject]]] = {}
        #: client side: the context the sessions belong to, the latest session per server name,
        #: and the latest connection per server name (whose session is not read yet)
        self._session_ctx: ssl.SSLContext | None = None
        self._sessions: dict[str, ssl.SSLSession] = {}
        self._latest: dict[str, ssl.SSLObject] = {}

    # -- called by LiveContext / the SSLObject ----------------------------------------------------
    def wrap(
        self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool, server_hostname: str | bytes | None
    ) -> ssl.SSLObject:
        ctx = self.files.current
        session = None
        if not server_side and isinstance(server_hostname, str):
            session = self._session_for(ctx, server_hostname)
        ctx.sslobject_class = _ClientSSLObject if not server_side else _MeteredSSLObject
        obj = ctx.wrap_bio(incoming, outgoing, server_side=server_side, server_hostname=server_hostname, session=session)
        obj._meshd_side = self  # type: ignore[attr-defined]
        # uvloop calls read, write and pending for every record; `ssl.SSLObject`'s own are Python
        # wrappers around the C object's: bind the C methods themselves (one frame less per call).
        # A server's `read` is the C one once glibc's mmap threshold is raised, else clamped to
        # one record (RECORD_MAX, see the module's docstring); a client's stays ours (it also
        # watches for the server's alerts).
        inner = obj._sslobj  # type: ignore[attr-defined]
        obj.write = inner.write  # type: ignore[method-assign]
        obj.pending = inner.pending  # type: ignore[method-assign]
        if server_side:
            obj.read = inner.read if self._direct_read else _record_reader(inner.read)  # type: ignore[method-assign]
        if server_side:
            key = id(obj)
            self._pending[key] = (self._now(), weakref.ref(obj, lambda _ref: self._gone(key)))
        return obj

    def completed(self, obj: ssl.SSLObject) -> None:
        self._pending.pop(id(obj), None)
        self._stats.handshakes[(self.router, self.client, "true" if obj.session_reused else "false")] += 1
        name = obj.server_hostname
        if not obj.server_side and name:
            # its session is read when the next connection to this name is made: TLS 1.3 sends
            # session tickets after the handshake, so it has none yet (one object kept per name)
            if len(self._latest) >= 1024:
                self._latest.clear()
            self._latest[name] = obj

    def failed(self, obj: ssl.SSLObject | None, exc: BaseException) -> None:
        if obj is not None:
            self._pending.pop(id(obj), None)
        self.count(classify(exc))

    def failed_after(self, exc: BaseException) -> None:
        reason = classify(exc)
        if reason in _ALERTS:
            self.count(reason)

    def count(self, reason: str) -> None:
        self._stats.failures[(self.router, self.client, reason)] += 1

    def _gone(self, key: int) -> None:
        entry = self._pending.pop(key, None)
        if entry is None:
            return
        elapsed = self._now() - entry[0]
        self.count("timeout" if elapsed >= self.handshake_timeout_s * 0.9 else "closed")

    def _session_for(self, ctx: ssl.SSLContext, name: str) -> ssl.SSLSession | None:
        if self._session_ctx is not ctx:  # rotated: sessions of the old context cannot be offered
            self._session_ctx = ctx
            self._sessions.clear()
            self._latest.clear()
        latest = self._latest.pop(name, None)
        if latest is not None and latest.context is ctx:
            session = latest.session
            if session is not None and (session.has_ticket or latest.version() != "TLSv1.3"):
                if len(self._sessions) >= 1024:
                    self._sessions.clear()
                self._sessions[name] = session
        return self._sessions.get(name)


def _record_reader(read: Callable[..., bytes]) -> Callable[..., bytes]:
    """`read` (the C object's) asking for at most RECORD_MAX bytes when it allocates the result."""

    def read_record(len: int = 1024, buffer: WriteableBuffer | None = None) -> bytes:  # noqa: A002
        if buffer is None:
            return read(len if len < RECORD_MAX else RECORD_MAX)
        return read(len, buffer)

    return read_record


class LiveContext(ssl.SSLContext):
    """The context the event loop is given: each new connection is wrapped by its side's current
    context (so rotated files take effect at the next handshake). Its own settings are unused."""

    side: TlsSide

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        return self.side.wrap(incoming, outgoing, server_side, server_hostname)


class _MeteredSSLObject(ssl.SSLObject):
    """Reports the end of its handshake to its side (uvloop calls `do_handshake` until it ends)."""

    _meshd_side: TlsSide | None = None

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as exc:
            if self._meshd_side is not None:
                self._meshd_side.failed(self, exc)
            raise
        if self._meshd_side is not None:
            self._meshd_side.completed(self)


class _ClientSSLObject(_MeteredSSLObject):
    """A client connection also counts the server's verdict on its certificate, which TLS 1.3
    delivers after the handshake, as an alert on the first read (no client certificate, ...)."""

    #: the TLS error that ended this connection after its handshake (a server's alert), if any
    meshd_error: ssl.SSLError | None = None

    def read(self, len: int = 1024, buffer: WriteableBuffer | None = None) -> bytes:  # noqa: A002
        # the C object's read, as `ssl.SSLObject.read` calls it (no extra frame over the stock one),
        # asking for at most one record when it allocates (RECORD_MAX, see the module's docstring)
        try:
            if buffer is None:
                return self._sslobj.read(len if len < RECORD_MAX else RECORD_MAX)  # type: ignore[attr-defined, no-any-return]
            return self._sslobj.read(len, buffer)  # type: ignore[attr-defined, no-any-return]
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, ssl.SSLZeroReturnError):
            raise
        except ssl.SSLError as exc:
            self.meshd_error = exc  # the pool's connection reads it when the connection is lost
            if self._meshd_side is not None:
                self._meshd_side.failed_after(exc)
            raise
