"""Hygiene: decide which l5d-* context to trust, and add the forwarding headers.

`l5d-*` request headers steer routing (`l5d-dtab` overrides) and bound the work (deadlines), so
they are honoured only from trusted sources (by default loopback: the services on this host);
from anyone else they are stripped. Trusted context is folded into the route context (local
dtab; the incoming deadline is read by the timeouts stage) and re-emitted downstream as `l5d-ctx-*`, so it follows the whole call tree;
a trusted but malformed `l5d-dtab` or `l5d-ctx-dtab` is a 400 naming the header, line and column.
A per-request dtab is also bounded in size, because binding it costs CPU on the event loop: each
header at most `MAX_LOCAL_DTAB_BYTES` (4096) bytes, 431 otherwise, and at most
`MAX_LOCAL_DENTRIES` (100) dentries in all, 400 otherwise (the binder then bounds the work).
Every request gets an `l5d-reqid` (kept from a trusted caller), `Via` and `X-Forwarded-For`.
`l5d-client-id` (the caller's workload identity, docs/tls.md) is never taken from a header: the
codec sets it apart with the other `l5d-*` headers, it is not forwarded, and a trusted caller's
is dropped here too, so that only the identity filter, from a TLS certificate, sets it.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from typing import Final

from meshd.errors import BadRequest, HeadersTooLarge, LoopDetected
from meshd.http.headers import L5D_CTX_DTAB, L5D_DTAB, L5D_REQID, append_forwarded_for, append_via
from meshd.pipeline.context import RouteContext
from meshd.pipeline.stack import Filter
from routing.delegate import MAX_LOCAL_DENTRIES, MAX_LOCAL_DTAB_BYTES, parse_dtab_header
from routing.parser import DtabSyntaxError

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: More meshd hops than this in `Via` means the request is going round in circles (a DaemonSet
#: hop makes two; a service's own downstream calls start new requests with no Via).
MAX_MESHD_HOPS: Final = 8
_VIA_11: Final = (b"Via", b"1.1 meshd")
_VIA_10: Final = (b"Via", b"1.0 meshd")
#: a request that arrived over HTTP/2 (meshd/http2/convert.py: version "2")
_VIA_2: Final = (b"Via", b"2 meshd")


class TrustPolicy:
    """Which client addresses may steer routing with l5d-* headers (cached per address)."""

    __slots__ = ("_networks", "_cache")

    def __init__(self, cidrs: Sequence[str]) -> None:
        self._networks: tuple[_Network, ...] = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)
        self._cache: dict[str, bool] = {}

    def is_trusted(self, ip: str) -> bool:
        trusted = self._cache.get(ip)
        if trusted is None:
            try:
                addr = ipaddress.ip_address(ip.split("%", 1)[0])
            except ValueError:
                trusted = False
            else:
                if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
                    addr = addr.ipv4_mapped
                trusted = any(addr in net for net in self._networks)
            if len(self._cache) > 10000:
                self._cache.clear()
            self._cache[ip] = trusted
        return trusted


#: the two hex digits of each byte value, for `RequestIds`
_HEX2: Final = tuple(f"{i:02x}" for i in range(256))


class RequestIds:
    """Cheap unique request ids: a random per-process prefix and a counter, 16 hex digits in all.

    The first id is the prefix's 8 hex digits then `00000001`. The prefix's digits are formatted
    once; each id adds the counter's four bytes from a table of two-digit strings in one string
    build: about half the CPU of `hex()` of one 65-bit int and a slice (itself half of formatting
    `f"{prefix}{n:08x}"`), with no int allocated per id. After 2**32 ids (a day at 50,000 req/s)
    the counter carries into the prefix: ids stay unique within the process and 16 digits long.
    """

    __slots__ = ("_high", "_prefix", "_count")

    def __init__(self, prefix: int | None = None) -> None:
        if prefix is None:
            prefix = int.from_bytes(os.urandom(4), "big")
        self._high = prefix & 0xFFFFFFFF
        self._prefix = f"{self._high:08x}"
        self._count = 0

    def next(self) -> str:
        n = self._count + 1
        if n > 0xFFFFFFFF:
            n = 0
            self._high = (self._high + 1) & 0xFFFFFFFF
            self._prefix = f"{self._high:08x}"
        self._count = n
        digits = _HEX2
        return f"{self._prefix}{digits[n >> 24]}{digits[(n >> 16) & 255]}{digits[(n >> 8) & 255]}{digits[n & 255]}"


def hygiene_filter(trust: TrustPolicy, ids: RequestIds) -> Filter:
    #: the X-Forwarded-For header of each client address, built once (a node's clients are few)
    xff_values: dict[str, tuple[bytes, bytes]] = {}

    def clean(ctx: RouteContext) -> None:
        request = ctx.request
        l5d = request.l5d
        headers = request.headers
        reqid = ""
        if l5d:
            if trust.is_trusted(request.client_ip):
                inherited = l5d.get(L5D_CTX_DTAB)
                local = l5d.get(L5D_DTAB)
                if inherited is not None or local is not None:
                    ctx.local_dtab = local_dtab(inherited, local)
                given = l5d.get("l5d-reqid")
                if given:
                    reqid = given.decode("latin-1")
                if "l5d-client-id" in l5d:
                    # the caller's identity comes from its TLS certificate only (the identity
                    # filter), never from a header, however trusted the sender
                    del l5d["l5d-client-id"]
                for name, value in l5d.items():
                    if name.startswith("l5d-ctx-") and name not in (L5D_CTX_DTAB, "l5d-ctx-deadline"):
                        headers.append((name.encode("latin-1"), value))
            else:
                request.l5d = {}
        if not reqid:
            reqid = ids.next()
        ctx.reqid = reqid
        headers.append((L5D_REQID, reqid.encode("latin-1")))
        if ctx.local_dtab:
            headers.append((L5D_CTX_DTAB.encode("latin-1"), ctx.local_dtab.encode("latin-1")))
        if request.forwarded:
            hops = sum(v.count(b"meshd") for n, v in headers if n.lower() == b"via")
            if hops >= MAX_MESHD_HOPS:
                raise LoopDetected(
                    f"routing loop: the request already passed through {hops} meshd hops (Via); not forwarded"
                )
            append_via(headers, request.version, b"meshd")
            append_forwarded_for(headers, request.client_ip)
        else:
            version = request.version
            headers.append(_VIA_11 if version == "1.1" else _VIA_2 if version == "2" else _VIA_10)
            xff = xff_values.get(request.client_ip)
            if xff is None:
                if len(xff_values) >= 4096:
                    xff_values.clear()
                xff = xff_values[request.client_ip] = (b"X-Forwarded-For", request.client_ip.encode("ascii"))
            headers.append(xff)

    return clean


def local_dtab(ctx: bytes | None, local: bytes | None) -> str:
    """A trusted request's local dtab: `l5d-ctx-dtab`'s dentries, then `l5d-dtab`'s (which win).

    Each header is parsed on its own (parses are cached by text), so a malformed one is a 400
    whose one-line `l5d-err` names that header and the line and column in it. With both headers
    the result is printed canonically rather than joined as text: a `#` comment at the end of
    the first value would otherwise swallow the second, and the result travels on downstream
    as one `l5d-ctx-dtab` header value.

    Limits (checked before parsing where they can be): each value at most
    `MAX_LOCAL_DTAB_BYTES`, and the combined value too, since it is forwarded as one header
    that the next meshd checks (431); at most `MAX_LOCAL_DENTRIES` dentries in all (400).
    """
    texts: list[str] = []
    given: list[str] = []
    dentries = 0
    for name, value in ((L5D_CTX_DTAB, ctx), (L5D_DTAB, local)):
        if value is None:
            continue
        if len(value) > MAX_LOCAL_DTAB_BYTES:
            raise HeadersTooLarge(
                f"{name} header is {len(value)} bytes; a per-request dtab may have at most "
                f"{MAX_LOCAL_DTAB_BYTES} bytes"
            )
        text = value.decode("latin-1")
        try:
            dentries += len(parse_dtab_header(text))
        except DtabSyntaxError as exc:
            raise BadRequest(f"malformed {name} header: {exc.short}") from None
        texts.append(text)
        given.append(name)
    if dentries > MAX_LOCAL_DENTRIES:
        names = f"{given[0]} and {given[1]} have" if len(given) == 2 else f"{given[0]} header has"
        raise BadRequest(
            f"{names} {dentries} dentries; a per-request dtab may have at most {MAX_LOCAL_DENTRIES}"
        )
    if len(texts) == 1:
        return texts[0]
    combined = (parse_dtab_header(texts[0]) + parse_dtab_header(texts[1])).show()
    if len(combined) > MAX_LOCAL_DTAB_BYTES:
        raise HeadersTooLarge(
            f"{L5D_CTX_DTAB} and {L5D_DTAB} together are {len(combined)} bytes as forwarded; a per-request "
            f"dtab may have at most {MAX_LOCAL_DTAB_BYTES} bytes"
        )
    return combined
