"""gRPC status codes, content-type detection, grpc-status reading and grpc-message encoding."""

from __future__ import annotations

import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.grpc.status import (
    StatusCode,
    decode_message,
    encode_message,
    http_status_to_grpc,
    is_grpc_content_type,
    is_grpc_request,
    parse_status,
    status_label,
    status_of,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"application/grpc", True),
        (b"application/grpc+proto", True),
        (b"application/grpc+json", True),
        (b"Application/GRPC", True),
        (b"application/grpc; charset=utf-8", True),
        (b"application/grpc-web", False),
        (b"application/grpc-web+proto", False),
        (b"application/grpcx", False),
        (b"application/json", False),
        (b"", False),
        (None, False),
    ],
)
def test_grpc_content_types(value: bytes | None, expected: bool) -> None:
    assert is_grpc_content_type(value) is expected


def test_a_request_is_grpc_by_its_first_content_type() -> None:
    assert is_grpc_request([(b":path", b"/a.B/C"), (b"Content-Type", b"application/grpc+proto")])
    assert not is_grpc_request([(b"content-type", b"text/plain"), (b"content-type", b"application/grpc")])
    assert not is_grpc_request([])


@pytest.mark.parametrize(
    ("value", "code"),
    [(b"0", 0), (b"14", 14), (b" 4 ", 4), (b"016", 16), (b"999", 999), (b"", None), (b"-1", None), (b"1 4", None), (b"x", None), (b"1000", None)],
)
def test_parse_status(value: bytes, code: int | None) -> None:
    assert parse_status(value) == code


def test_status_of_reads_the_first_grpc_status_and_takes_unknown_codes_as_unknown() -> None:
    assert status_of(None) is None
    assert status_of([(b"grpc-message", b"x")]) is None
    assert status_of([(b"Grpc-Status", b"14"), (b"grpc-status", b"0")]) == StatusCode.UNAVAILABLE
    assert status_of([(b"grpc-status", b"17")]) == StatusCode.UNKNOWN
    assert status_of([(b"grpc-status", b"oops")]) == StatusCode.UNKNOWN


@given(st.lists(st.tuples(st.binary(max_size=12), st.binary(max_size=12)), max_size=5))
def test_status_of_never_raises(headers: list[tuple[bytes, bytes]]) -> None:
    code = status_of(headers)
    assert code is None or 0 <= code <= 16


@pytest.mark.parametrize(
    ("http", "code"),
    [(400, 13), (401, 16), (403, 7), (404, 12), (429, 14), (502, 14), (503, 14), (504, 14), (500, 2), (418, 2), (200, 2)],
)
def test_http_status_mapping_is_the_specs(http: int, code: int) -> None:
    assert http_status_to_grpc(http) == code


def test_encode_message_escapes_percent_controls_and_non_ascii() -> None:
    assert encode_message("no endpoints for /svc/bank.Ledger") == b"no endpoints for /svc/bank.Ledger"
    assert encode_message("100% done") == b"100%25 done"
    assert encode_message("a\r\nb\t") == b"a%0D%0Ab%09"
    assert encode_message("café ☃") == b"caf%C3%A9 %E2%98%83"
    assert encode_message("\ud800") == b"?"  # a lone surrogate cannot be UTF-8: replaced


@given(st.text())
def test_encoded_message_is_a_valid_header_value_and_round_trips(text: str) -> None:
    encoded = encode_message(text)
    assert all(0x20 <= b <= 0x7E for b in encoded)
    expected = text.encode("utf-8", "replace").decode("utf-8")
    assert decode_message(encoded) == expected
    # the same as any standard percent-decoder reads it
    assert urllib.parse.unquote(encoded.decode("ascii"), errors="replace") == expected


@given(st.binary())
def test_decode_message_never_raises(value: bytes) -> None:
    assert isinstance(decode_message(value), str)


def test_decode_message_keeps_a_stray_percent() -> None:
    assert decode_message(b"50% off %4") == "50% off %4"
    assert decode_message(b"%zz%41") == "%zzA"


def test_status_labels_are_bounded() -> None:
    assert status_label(0) == "OK" and status_label(14) == "UNAVAILABLE" and status_label(None) == "NONE"
    assert status_label(999) == "UNKNOWN"
    assert {status_label(status_of([(b"grpc-status", str(n).encode())])) for n in range(1000)} == {
        code.name for code in StatusCode
    }
