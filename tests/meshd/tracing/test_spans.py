"""The tracer (meshd/tracing/spans.py): ids, the bounded queue, waking the exporter."""

from __future__ import annotations

import random

from meshd.tracing.spans import SERVER, Span, Tracer


def test_ids_are_random_hex_of_the_right_length_and_never_repeat() -> None:
    tracer = Tracer(0.0, rng=random.Random(9))
    traces = [tracer.new_trace_id() for _ in range(2000)]  # several pool refills, spans in between
    spans = [tracer.new_span_id() for _ in range(2000)]
    for ids, digits in ((traces, 32), (spans, 16)):
        assert len(set(ids)) == len(ids)
        assert all(len(i) == digits and not i.strip("0123456789abcdef") and i.strip("0") for i in ids)


def span(tracer: Tracer) -> Span:
    return Span(tracer, tracer.new_trace_id(), tracer.new_span_id(), "", SERVER, "outgoing", "GET")


def test_a_full_queue_drops_and_counts_and_a_full_batch_wakes_the_exporter() -> None:
    woken: list[int] = []
    tracer = Tracer(1.0, max_queue=5, batch_size=3)
    tracer.wake = lambda: woken.append(len(tracer.queue))
    for _ in range(7):
        span(tracer).end(200)
    assert len(tracer.queue) == 5 and tracer.dropped == {"queue_full": 2}
    assert woken == [3]  # once, when the third span made a batch
    assert len(tracer.take(3)) == 3 and len(tracer.take(3)) == 2 and tracer.take(3) == []


def test_a_span_ends_once() -> None:
    tracer = Tracer(1.0)
    s = span(tracer)
    s.end(503, "upstream_failed", "closed")
    s.end(200)
    assert len(tracer.queue) == 1 and s.status == 503 and s.error_kind == "upstream_failed"
