"""meshd's own errors as trailers-only gRPC responses, and a real grpcio client reading them."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from meshd.errors import (
    BadRequest,
    BodyTimeout,
    CircuitOpen,
    ConnectFailed,
    FaultInjected,
    Forbidden,
    HeadersTooLarge,
    IdentificationFailed,
    LoopDetected,
    MeshdError,
    NoEndpoints,
    NoSuchService,
    NotImplementedMethod,
    Overloaded,
    PoolExhausted,
    QueueTimeout,
    RequestTimeout,
    ResponseHeadTimeout,
    ShuttingDown,
    UpstreamFailed,
    VersionNotSupported,
)
from meshd.grpc.errors import HTTP_STATUS, grpc_error_headers, grpc_status_for
from meshd.grpc.status import StatusCode
from meshd.grpc.timeout import parse_timeout
from tests.meshd.grpc.h2_stub import Answer, H2Stub

CASES: list[tuple[MeshdError, StatusCode]] = [
    (RequestTimeout("request exceeded totalTimeoutMs (100 ms)"), StatusCode.DEADLINE_EXCEEDED),
    (ResponseHeadTimeout("no head"), StatusCode.DEADLINE_EXCEEDED),
    (ConnectFailed("connection refused"), StatusCode.UNAVAILABLE),
    (UpstreamFailed("upstream reset"), StatusCode.UNAVAILABLE),
    (NoSuchService("no route"), StatusCode.UNAVAILABLE),
    (NoEndpoints("none"), StatusCode.UNAVAILABLE),
    (PoolExhausted("busy"), StatusCode.UNAVAILABLE),
    (QueueTimeout("waited"), StatusCode.UNAVAILABLE),
    (Overloaded("shed"), StatusCode.UNAVAILABLE),
    (CircuitOpen("open"), StatusCode.UNAVAILABLE),
    (ShuttingDown(), StatusCode.UNAVAILABLE),
    (Forbidden("not allowed"), StatusCode.PERMISSION_DENIED),
    (IdentificationFailed("not a gRPC path"), StatusCode.UNIMPLEMENTED),
    (NotImplementedMethod("upgrade"), StatusCode.UNIMPLEMENTED),
    (HeadersTooLarge("too big"), StatusCode.RESOURCE_EXHAUSTED),
    (BadRequest("malformed"), StatusCode.INTERNAL),
    (BodyTimeout("slow body"), StatusCode.INTERNAL),
    (VersionNotSupported("0.9"), StatusCode.INTERNAL),
    (LoopDetected("loop"), StatusCode.INTERNAL),
    (FaultInjected("game day", 503), StatusCode.UNAVAILABLE),
    (FaultInjected("game day", 403), StatusCode.PERMISSION_DENIED),
    (FaultInjected("game day", 500), StatusCode.UNKNOWN),
]


@pytest.mark.parametrize(("error", "code"), CASES, ids=[f"{type(e).__name__}-{e.status}" for e, _ in CASES])
def test_each_error_maps_to_its_grpc_status(error: MeshdError, code: StatusCode) -> None:
    assert grpc_status_for(error) == code
    headers = grpc_error_headers(error)
    assert headers[0] == (b"content-type", b"application/grpc")
    assert (b"grpc-status", str(int(code)).encode()) in headers
    assert (b"l5d-err", error.l5d_err.encode()) in headers
    assert all(name == name.lower() for name, _ in headers)


def test_the_errors_own_headers_go_along_lower_cased() -> None:
    headers = grpc_error_headers(Overloaded("router busy"))
    assert (b"retry-after", b"1") in headers


def test_text_that_cannot_go_in_a_header_is_made_safe() -> None:
    headers = dict(grpc_error_headers(UpstreamFailed("bad\r\nthing 100% ☃")))
    assert headers[b"l5d-err"] == b"bad  thing 100% ?"
    assert headers[b"grpc-message"] == b"bad%0D%0Athing 100%25 %E2%98%83"


@pytest.fixture
def channel_to() -> Iterator[object]:
    stubs: list[H2Stub] = []
    channels: list[grpc.Channel] = []

    def make(stub: H2Stub) -> grpc.Channel:
        stubs.append(stub)
        channel = grpc.insecure_channel(f"127.0.0.1:{stub.port}", options=[("grpc.enable_http_proxy", 0)])
        channels.append(channel)
        return channel

    yield make
    for channel in channels:
        channel.close()
    for stub in stubs:
        stub.close()


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (NoEndpoints("no endpoints for /svc/bank.Ledger: 100% down ☃"), grpc.StatusCode.UNAVAILABLE),
        (RequestTimeout("the caller's deadline (l5d-ctx-deadline) had expired"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (Forbidden("spiffe://bank/payments may not call /svc/bank.Ledger"), grpc.StatusCode.PERMISSION_DENIED),
    ],
)
def test_a_grpcio_client_reads_the_trailers_only_error(channel_to: object, error: MeshdError, code: grpc.StatusCode) -> None:
    stub = H2Stub(lambda _headers: Answer(grpc_error_headers(error)))
    channel = channel_to(stub)  # type: ignore[operator]
    call = channel.unary_unary("/bank.Ledger/Post")
    with pytest.raises(grpc.RpcError) as info:
        call(b"\x01\x02", timeout=5)
    failure = info.value
    assert failure.code() == code
    assert failure.details() == error.l5d_err  # percent-decoded by grpcio
    trailing = dict(failure.trailing_metadata())
    assert trailing["l5d-err"] == error.l5d_err.encode("latin-1", "replace").decode("latin-1")
    assert HTTP_STATUS == 200


def test_grpcio_timeouts_parse_as_the_deadline_the_caller_set(channel_to: object) -> None:
    stub = H2Stub(lambda _headers: Answer(grpc_error_headers(NoEndpoints("x"))))
    channel = channel_to(stub)  # type: ignore[operator]
    call = channel.unary_unary("/bank.Ledger/Post")
    for timeout_s in (0.75, 3.0, 120.0):
        with pytest.raises(grpc.RpcError):
            call(b"", timeout=timeout_s)
    sent = [dict(h)[b"grpc-timeout"] for h in stub.requests]
    parsed = [parse_timeout(v) for v in sent]
    assert all(p is not None for p in parsed), sent
    # grpcio sends the time left when the call starts: a little under what the caller set
    for value, timeout_s in zip(parsed, (0.75, 3.0, 120.0), strict=True):
        assert value is not None
        assert timeout_s * 0.9e9 <= value <= timeout_s * 1.01e9, (value, timeout_s)
