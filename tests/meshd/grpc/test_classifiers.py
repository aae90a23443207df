"""gRPC classifiers: kinds, config, and classifying what a real grpcio server sends."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import grpc
import h2.config
import h2.connection
import h2.events
import pytest

from meshd.config import ConfigError, load_config
from meshd.config.model import MeshdConfig, ServiceOverride
from meshd.grpc.classifiers import (
    GRPC_CLASSIFIERS,
    GrpcAlwaysRetryableConfig,
    GrpcClassifier,
    GrpcDefaultConfig,
    GrpcNeverRetryableConfig,
    GrpcRetryableStatusCodesConfig,
)
from meshd.retry.classifiers import ResponseClass, RetryableIdempotent5XXConfig
from tests.meshd.grpc.h2_stub import grpc_frame

SUCCESS, RETRY, FAIL = ResponseClass.SUCCESS, ResponseClass.RETRYABLE_FAILURE, ResponseClass.FAILURE


def trailers(code: int) -> list[tuple[bytes, bytes]]:
    return [(b"grpc-status", str(code).encode()), (b"grpc-message", b"x")]


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        # codes:                      OK  CANCELLED UNKNOWN DEADLINE NOT_FOUND RESOURCE_EXH INTERNAL UNAVAILABLE DATA_LOSS
        (GrpcDefaultConfig(), [SUCCESS, SUCCESS, FAIL, FAIL, SUCCESS, SUCCESS, FAIL, RETRY, FAIL]),
        (GrpcNeverRetryableConfig(), [SUCCESS, SUCCESS, FAIL, FAIL, SUCCESS, SUCCESS, FAIL, FAIL, FAIL]),
        (GrpcAlwaysRetryableConfig(), [SUCCESS, RETRY, RETRY, RETRY, RETRY, RETRY, RETRY, RETRY, RETRY]),
        (
            GrpcRetryableStatusCodesConfig(retryable_status_codes=(4, 8)),
            [SUCCESS, SUCCESS, FAIL, RETRY, SUCCESS, RETRY, FAIL, FAIL, FAIL],
        ),
        (
            GrpcDefaultConfig(failure_status_codes=(13,)),
            [SUCCESS, SUCCESS, SUCCESS, SUCCESS, SUCCESS, SUCCESS, FAIL, RETRY, SUCCESS],
        ),
    ],
    ids=["default", "never", "always", "codes-4-8", "failures-13-only"],
)
def test_codes_by_kind(config: GrpcDefaultConfig, expected: list[ResponseClass]) -> None:
    classifier = config.build()
    codes = [0, 1, 2, 4, 5, 8, 13, 14, 15]
    assert [classifier.classify_trailers(trailers(c)) for c in codes] == expected
    # a trailers-only response (grpc-status in the head) decides at the head, the same way
    assert [classifier.classify_head(200, [(b"content-type", b"application/grpc"), *trailers(c)]) for c in codes] == expected


def test_a_200_head_without_grpc_status_waits_for_the_trailers() -> None:
    classifier = GrpcDefaultConfig().build()
    assert classifier.reads_trailers is True
    assert RetryableIdempotent5XXConfig().build().reads_trailers is False
    assert classifier.classify_head(200, [(b"content-type", b"application/grpc")]) is None
    # a stream that ends without grpc-status is INTERNAL: a failure, not retried
    assert classifier.classify_trailers(None) is FAIL
    assert classifier.classify_trailers([(b"x", b"y")]) is FAIL
    assert classifier.classify_trailers([(b"grpc-status", b"bogus")]) is FAIL  # UNKNOWN


@pytest.mark.parametrize(
    ("status", "expected"),
    [(503, RETRY), (502, RETRY), (429, RETRY), (504, RETRY), (404, SUCCESS), (400, FAIL), (500, FAIL), (508, FAIL)],
)
def test_a_non_200_head_is_mapped_as_grpc_clients_map_it(status: int, expected: ResponseClass) -> None:
    classifier = GrpcDefaultConfig().build()
    assert classifier.classify_head(status, [(b"content-type", b"text/plain")]) is expected
    assert classifier.classify_response("POST", status, False) is expected


def test_l5d_retryable_is_honoured_only_when_asked() -> None:
    hinted = [(b"grpc-status", b"13"), (b"l5d-retryable", b"true")]
    assert GrpcDefaultConfig().build().classify_head(200, hinted) is FAIL
    assert GrpcDefaultConfig(honor_retryable_header=True).build().classify_head(200, hinted) is RETRY


def test_errors_after_writing_are_retryable_when_unavailable_is() -> None:
    assert GrpcDefaultConfig().build().classify_error("POST", True) is RETRY
    assert GrpcNeverRetryableConfig().build().classify_error("POST", True) is FAIL
    assert GrpcNeverRetryableConfig().build().classify_error("POST", False) is RETRY  # never reached the upstream


def router_with(classifier_yaml: str) -> str:
    return f"routers:\n  - label: grpc\n    service:\n      responseClassifier: {classifier_yaml}\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{kind: grpc.default}", GrpcDefaultConfig()),
        ("{kind: grpc.neverRetryable}", GrpcNeverRetryableConfig()),
        ("{kind: grpc.alwaysRetryable, failureStatusCodes: [13]}", GrpcAlwaysRetryableConfig(failure_status_codes=(13,))),
        ("{kind: grpc.retryableStatusCodes, retryableStatusCodes: [14, 4]}", GrpcRetryableStatusCodesConfig(retryable_status_codes=(14, 4))),
    ],
)
def test_kinds_load_from_yaml(text: str, expected: object) -> None:
    config = load_config(router_with(text), MeshdConfig)
    assert config.routers[0].service.response_classifier == expected
    assert isinstance(config.routers[0].service.response_classifier.build(), GrpcClassifier)


def test_per_service_override_takes_a_grpc_kind() -> None:
    text = "routers:\n  - label: r\n    services:\n      - prefix: /svc/bank.Ledger\n        responseClassifier: {kind: grpc.default}\n"
    override = load_config(text, MeshdConfig).routers[0].services[0]
    assert override == ServiceOverride(prefix="/svc/bank.Ledger", response_classifier=GrpcDefaultConfig())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{kind: grpc.retryableStatusCodes, retryableStatusCodes: [14, 17]}", "retryableStatusCodes: must be a list of gRPC status codes"),
        ("{kind: grpc.retryableStatusCodes, retryableStatusCodes: [0]}", "retryableStatusCodes: must be a list"),
        ("{kind: grpc.default, failureStatusCodes: [99]}", "failureStatusCodes: must be a list"),
        ("{kind: grpc.retryableStatusCodes}", "retryableStatusCodes"),
        ("{kind: grpc.defualt}", "grpc.default"),
    ],
)
def test_bad_classifier_config_is_refused_with_its_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(router_with(text), MeshdConfig)
    problems = info.value.problems
    assert any(message in f"{p.path.rsplit('.', 1)[-1]}: {p.message}" for p in problems), problems
    assert all(p.line == 4 for p in problems), problems


def test_registry_names_are_the_kinds() -> None:
    assert {cls.KIND for cls in GRPC_CLASSIFIERS.values()} == set(GRPC_CLASSIFIERS)


# -- what a real grpcio server sends --------------------------------------------------------------


def _handler(request: bytes, context: grpc.ServicerContext) -> bytes:
    if request == b"unavailable":
        context.abort(grpc.StatusCode.UNAVAILABLE, "replica draining")
    if request == b"not-found":
        context.set_code(grpc.StatusCode.NOT_FOUND)
        context.set_details("no such account")
        return b""
    return b"ok:" + request


@pytest.fixture
def grpcio_port() -> Iterator[int]:
    from concurrent import futures

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("bank.Ledger", {"Post": grpc.unary_unary_rpc_method_handler(_handler)})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port
    server.stop(None)


def _exchange(port: int, message: bytes) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]] | None]:
    """One unary call over h2c with the `h2` library: the response head and trailers (None when the
    response was trailers-only)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sid = conn.get_next_available_stream_id()
        conn.send_headers(
            sid,
            [
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", b"/bank.Ledger/Post"),
                (b":authority", b"ledger"),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
            ],
        )
        conn.send_data(sid, grpc_frame(message), end_stream=True)
        sock.sendall(conn.data_to_send())
        head: list[tuple[bytes, bytes]] | None = None
        tail: list[tuple[bytes, bytes]] | None = None
        while True:
            data = sock.recv(65536)
            assert data, "grpcio closed the connection"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    head = [(bytes(n), bytes(v)) for n, v in event.headers]
                elif isinstance(event, h2.events.TrailersReceived):
                    tail = [(bytes(n), bytes(v)) for n, v in event.headers]
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, sid)
                elif isinstance(event, h2.events.StreamEnded):
                    assert head is not None
                    return head, tail
            sock.sendall(conn.data_to_send())


@pytest.mark.parametrize(
    ("message", "trailers_only", "expected"),
    [(b"hello", False, SUCCESS), (b"not-found", None, SUCCESS), (b"unavailable", True, RETRY)],
)
def test_classifies_grpcio_responses(grpcio_port: int, message: bytes, trailers_only: bool | None, expected: ResponseClass) -> None:
    head, tail = _exchange(grpcio_port, message)
    classifier = GrpcDefaultConfig().build()
    if trailers_only is not None:  # grpcio chooses the trailers-only form for some errors
        assert (tail is None) is trailers_only
    decided = classifier.classify_head(200, head)
    if tail is None:
        assert decided is expected
    else:
        assert decided is None
        assert classifier.classify_trailers(tail) is expected
