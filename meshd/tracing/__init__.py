"""Distributed tracing (docs/tracing.md): trace context in and out, spans, and their export.

- `propagation` (compiled with the hot path): parses W3C `traceparent` and B3 headers.
- `spans` (compiled): the `Span` record and the `Tracer` (sampling, ids, the bounded queue).
- `otlp` and `exporter` (interpreted, off the request path): encode finished spans as OTLP
  protobuf and POST them to the collector from a background task.

The request path's part is `meshd/pipeline/tracing.py` (the trace filter), the listener (which
ends the request's span) and the client (one child span per attempt).
"""
