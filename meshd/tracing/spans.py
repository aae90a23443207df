"""Spans and the tracer: the part of tracing that runs on the request path (compiled).

A `Span` is a plain record: ids, timestamps and the few facts meshd knows about a request or
an attempt. Nothing is encoded here: a finished span goes on the tracer's bounded queue
(`Tracer.record`, O(1)), and the exporter task (meshd/tracing/exporter.py, interpreted) encodes
and sends batches off the request path. A full queue drops the span and counts it; the request
never waits for the collector.

Only sampled requests have spans. An unsampled request costs the header handling of the trace
filter (meshd/pipeline/tracing.py) and nothing here but, for a new trace, its ids.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable
from typing import Final

#: OTLP span kinds (opentelemetry.proto.trace.v1.Span.SpanKind)
SERVER: Final = 2
CLIENT: Final = 3

#: spans waiting for the exporter at most; past this a finished span is dropped (`queue_full`)
MAX_QUEUE_SPANS: Final = 2048
#: random bytes drawn at a time for trace and span ids (256 trace ids' worth)
_POOL_BYTES: Final = 4096
_ZERO_TRACE: Final = "0" * 32
_ZERO_SPAN: Final = "0" * 16
#: spans in one export request: bounds the time one encode holds the event loop (about 1 ms)
BATCH_SPANS: Final = 128


class Span:
    """One request through a router (kind SERVER) or one attempt of it (kind CLIENT)."""

    __slots__ = (
        "tracer",
        "trace_id",
        "span_id",
        "parent_id",
        "kind",
        "start_ns",
        "end_ns",
        "router",
        "method",
        "target",
        "client_ip",
        "reqid",
        "logical_name",
        "bound_name",
        "endpoint",
        "attempt",
        "status",
        "error_kind",
        "error_text",
    )

    def __init__(
        self,
        tracer: Tracer,
        trace_id: str,
        span_id: str,
        parent_id: str,
        kind: int,
        router: str,
        method: str,
    ) -> None:
        self.tracer = tracer
        self.trace_id = trace_id
        self.span_id = span_id
        #: "" for the root span of a trace
        self.parent_id = parent_id
        self.kind = kind
        self.start_ns = time.time_ns()
        self.end_ns = 0
        self.router = router
        self.method = method
        self.target = ""
        self.client_ip = ""
        self.reqid = ""
        self.logical_name = ""
        #: the client (bound name, `/#/fs/accounts`) of the attempt; on a SERVER span, the last attempt's
        self.bound_name = ""
        #: the endpoint an attempt went to (`127.0.0.1:41001`); "" on SERVER spans
        self.endpoint = ""
        #: SERVER: attempts made; CLIENT: this attempt's number, 1 for the first
        self.attempt = 0
        #: the HTTP status of the response (0: none, the attempt failed without one)
        self.status = 0
        #: meshd's error kind (`connect_failed`, ...) and its `l5d-err` text, "" when none
        self.error_kind = ""
        self.error_text = ""

    def child(self, bound_name: str, endpoint: str, attempt: int) -> Span:
        """The span of one attempt of this request (a CLIENT span whose parent is this one)."""
        tracer = self.tracer
        span = Span(tracer, self.trace_id, tracer.new_span_id(), self.span_id, CLIENT, self.router, self.method)
        span.logical_name = self.logical_name
        span.bound_name = bound_name
        span.endpoint = endpoint
        span.attempt = attempt
        self.bound_name = bound_name
        return span

    def traceparent_value(self) -> bytes:
        """The `traceparent` value that makes this span the parent of the upstream's work (HTTP/2)."""
        return ("00-" + self.trace_id + "-" + self.span_id + "-01").encode("ascii")

    def traceparent_line(self) -> bytes:
        """The `traceparent` header line that makes this span the parent of the upstream's work."""
        return ("traceparent: 00-" + self.trace_id + "-" + self.span_id + "-01\r\n").encode("ascii")

    def end(self, status: int, error_kind: str = "", error_text: str = "") -> None:
        """The span is over: timestamp it and queue it for export (once; a second call is ignored)."""
        if self.end_ns:
            return
        self.end_ns = time.time_ns()
        self.status = status
        self.error_kind = error_kind
        self.error_text = error_text
        self.tracer.record(self)

    def __repr__(self) -> str:
        kind = "server" if self.kind == SERVER else "client"
        return f"<Span {kind} {self.trace_id}/{self.span_id} parent={self.parent_id or '-'}>"


class Tracer:
    """Sampling, ids, and the bounded queue of finished spans; the counters metrics export.

    `sample_rate`, `service_name` and `collector` may change at a config reload (`configure`).
    The exporter task takes batches from `queue`; `wake` (set by it) is called when a batch is
    ready, so a busy meshd sends full batches without waiting for the flush interval.
    """

    __slots__ = (
        "sample_rate",
        "service_name",
        "collector",
        "queue",
        "max_queue",
        "batch_size",
        "wake",
        "exported",
        "dropped",
        "malformed",
        "_random",
        "_bytes",
        "_pool",
        "_pool_at",
    )

    def __init__(
        self,
        sample_rate: float,
        service_name: str = "meshd",
        collector: str = "",
        *,
        max_queue: int = MAX_QUEUE_SPANS,
        batch_size: int = BATCH_SPANS,
        rng: random.Random | None = None,
    ) -> None:
        self.sample_rate = sample_rate
        self.service_name = service_name
        self.collector = collector
        self.queue: deque[Span] = deque()
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.wake: Callable[[], None] | None = None
        #: spans the collector accepted
        self.exported = 0
        #: spans dropped, by reason (meshd_trace_spans_dropped_total)
        self.dropped: dict[str, int] = {}
        #: trace context headers that could not be parsed, by header (a new trace was started)
        self.malformed: dict[str, int] = {}
        source = rng if rng is not None else random.Random()
        self._random: Callable[[], float] = source.random
        self._bytes: Callable[[int], bytes] = source.randbytes
        self._pool = ""
        self._pool_at = 0

    def configure(self, sample_rate: float, service_name: str, collector: str) -> None:
        self.sample_rate = sample_rate
        self.service_name = service_name
        self.collector = collector

    def decide(self, rate: float) -> bool:
        """Sample a request at `rate` (0 to 1)."""
        return rate >= 1.0 or (rate > 0.0 and self._random() < rate)

    def _random_hex(self, digits: int) -> str:
        """`digits` random hex digits, cut from a pool made of 4 KiB of random bytes at a time (a
        slice costs about a third of making and formatting a 128-bit number per id)."""
        at = self._pool_at
        if at + digits > len(self._pool):
            self._pool = self._bytes(_POOL_BYTES).hex()
            at = 0
        self._pool_at = at + digits
        return self._pool[at : at + digits]

    def new_trace_id(self) -> str:
        trace_id = self._random_hex(32)
        while trace_id == _ZERO_TRACE:  # invalid in W3C; one chance in 2**128
            trace_id = self._random_hex(32)
        return trace_id

    def new_span_id(self) -> str:
        span_id = self._random_hex(16)
        while span_id == _ZERO_SPAN:
            span_id = self._random_hex(16)
        return span_id

    def count_malformed(self, header: str) -> None:
        self.malformed[header] = self.malformed.get(header, 0) + 1

    def drop(self, reason: str, count: int) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count

    def record(self, span: Span) -> None:
        """Queue a finished span for export; a full queue drops it (counted as `queue_full`)."""
        queue = self.queue
        if len(queue) >= self.max_queue:
            self.drop("queue_full", 1)
            return
        queue.append(span)
        if len(queue) == self.batch_size:
            wake = self.wake
            if wake is not None:
                wake()

    def take(self, limit: int) -> list[Span]:
        """Up to `limit` queued spans, oldest first (the exporter's side)."""
        queue = self.queue
        batch: list[Span] = []
        while queue and len(batch) < limit:
            batch.append(queue.popleft())
        return batch

    def __repr__(self) -> str:
        return f"<Tracer rate={self.sample_rate} queued={len(self.queue)} exported={self.exported}>"
