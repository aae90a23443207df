"""Finished spans as an OTLP `ExportTraceServiceRequest` (the `opentelemetry-proto` messages).

Runs in the exporter task, never on the request path; one call encodes one batch (at most
`BATCH_SPANS`, about 1 ms for 128 spans), so it holds the event loop only that long.

What a span carries (docs/tracing.md, "What the spans look like"):
- request span (kind SERVER), named `<method> <logical name>` (`GET /svc/accounts`; the method
  alone when the request was never identified): `http.request.method`, `url.path`,
  `client.address`, `http.response.status_code`, `meshd.router`, `meshd.logical_name`,
  `meshd.bound_name` (the last attempt's), `meshd.attempts`, `meshd.request_id`;
- attempt span (kind CLIENT), named `<method> <bound name>`: `http.request.method`,
  `meshd.router`, `meshd.logical_name`, `meshd.bound_name`, `meshd.endpoint`, `meshd.attempt`
  (1 for the first), `meshd.retry` (0 for the first), `http.response.status_code` when a
  response came, `error.type` (meshd's error kind) when it failed without one.
Status: ERROR with the `l5d-err` text as its message for a 5xx or a failed attempt, else UNSET.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Status

import meshd
from meshd.tracing.spans import SERVER, Span

SCOPE_NAME = "meshd"
_INSTANCE = f"{socket.gethostname()}:{os.getpid()}"


def _path(target: str) -> str:
    cut = target.find("?")
    return target if cut < 0 else target[:cut]


def encode_spans(spans: Sequence[Span], service_name: str) -> bytes:
    """One export request holding `spans`, serialised.

    Each span and attribute is added in place (`add()`, then its fields set), which costs about
    a third of building `KeyValue` and `Span` objects and appending them."""
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource = resource_spans.resource.attributes
    resource.add(key="service.name").value.string_value = service_name
    resource.add(key="service.instance.id").value.string_value = _INSTANCE
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = SCOPE_NAME
    scope_spans.scope.version = meshd.__version__
    out = scope_spans.spans
    for span in spans:
        server = span.kind == SERVER
        if server:
            name = f"{span.method} {span.logical_name}" if span.logical_name else span.method
        else:
            name = f"{span.method} {span.bound_name}"
        message = out.add(
            trace_id=bytes.fromhex(span.trace_id),
            span_id=bytes.fromhex(span.span_id),
            parent_span_id=bytes.fromhex(span.parent_id) if span.parent_id else b"",
            name=name,
            kind=span.kind,  # SERVER and CLIENT are the enum SpanKind's values
            start_time_unix_nano=span.start_ns,
            end_time_unix_nano=span.end_ns,
        )
        attributes = message.attributes
        for key, text in (
            ("http.request.method", span.method),
            ("meshd.router", span.router),
            ("meshd.logical_name", span.logical_name),
            ("meshd.bound_name", span.bound_name),
            ("error.type", span.error_kind),
        ):
            if text:
                attributes.add(key=key).value.string_value = text
        if server:
            for key, text in (
                ("url.path", _path(span.target)),
                ("client.address", span.client_ip),
                ("meshd.request_id", span.reqid),
            ):
                if text:
                    attributes.add(key=key).value.string_value = text
            attributes.add(key="meshd.attempts").value.int_value = span.attempt
        else:
            if span.endpoint:
                attributes.add(key="meshd.endpoint").value.string_value = span.endpoint
            attributes.add(key="meshd.attempt").value.int_value = span.attempt
            attributes.add(key="meshd.retry").value.int_value = max(span.attempt - 1, 0)
        if span.status:
            attributes.add(key="http.response.status_code").value.int_value = span.status
        if span.status >= 500 or span.status == 0 or span.error_kind:
            message.status.code = Status.STATUS_CODE_ERROR
            message.status.message = span.error_text
    encoded: bytes = request.SerializeToString()
    return encoded


def rejected_spans(body: bytes) -> int:
    """How many spans a collector's 2xx answer says it rejected (OTLP partial success); a body
    that is not an `ExportTraceServiceResponse` raises `ValueError`."""
    if not body:
        return 0
    response = ExportTraceServiceResponse()
    try:
        response.ParseFromString(body)
    except Exception as exc:  # protobuf's DecodeError; its module path differs between backends
        raise ValueError(f"not an OTLP ExportTraceServiceResponse: {exc}") from None
    return int(response.partial_success.rejected_spans)
