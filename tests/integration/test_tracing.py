"""Tracing in a running meshd: spans at a real OTLP receiver, and collectors that misbehave.

meshd runs in-process on real sockets with real upstreams; the receiver (tests/support/otlp.py)
decodes the official `ExportTraceServiceRequest` protobuf. The span links across two meshd
processes are in tests/system/test_tracing_two_hop.py.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from tests.conftest import base_config
from tests.integration.test_retries import metric, refused_port, scrape
from tests.support.client import RawConnection, RawResponse
from tests.support.h2peer import H2Client, H2Server, echo
from tests.support.otlp import GarbageCollector, OtlpReceiver
from tests.support.upstreams import Received, Reply
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(60)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
NO_BACKOFF = {"kind": "constant", "ms": 0}


def traced_config(collector: str, rate: float = 1.0, **router: object) -> dict[str, object]:
    config = base_config(**router)
    config["tracing"] = {"collector": collector, "sampleRate": rate, "serviceName": "meshd-test"}
    return config


async def get(port: int, headers: list[tuple[str, str]] | None = None, host: str = "accounts") -> RawResponse:
    conn = await RawConnection.open(port)
    try:
        return await asyncio.wait_for(conn.request("GET", "/balance?id=7", headers, host=host), 10)
    finally:
        await conn.close()


async def test_a_retried_request_has_one_server_span_and_two_attempt_spans(make_mesh, make_upstream):
    seen: list[Received] = []

    async def flaky(request: Received) -> Reply:
        seen.append(request)
        return Reply(503 if len(seen) == 1 else 200, body=b"x")

    up = await make_upstream(flaky)
    async with OtlpReceiver() as receiver:
        mesh = await make_mesh(traced_config(receiver.url, service={"retries": {"backoff": NO_BACKOFF}}))
        mesh.register("accounts", up)
        response = await get(mesh.port, [("traceparent", f"00-{TRACE}-{SPAN}-01")])
        assert response.status == 200
        spans = await receiver.wait_spans(3)
        # (the receiver stores them before it answers: the count follows its answer)
        await wait_until(lambda: mesh.daemon.runtime.tracer.exported == 3, message="3 spans counted as exported")
        assert exported(await scrape(mesh.admin_port)) == 3.0
    assert len(spans) == 3 and {s.service for s in spans} == {"meshd-test"}
    assert receiver.content_types == ["application/x-protobuf"] * receiver.requests
    (server,) = [s for s in spans if s.is_server]
    attempts = sorted((s for s in spans if s.is_client), key=lambda s: s.attributes["meshd.attempt"])  # type: ignore[arg-type,return-value]
    # all in the caller's trace; the request span is the caller's child, the attempts are its children
    assert {s.trace_id for s in spans} == {TRACE}
    assert server.parent_id == SPAN
    assert [a.parent_id for a in attempts] == [server.span_id, server.span_id]
    assert server.name == "GET /svc/accounts"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["meshd.attempts"] == 2
    assert server.attributes["meshd.router"] == "outgoing"
    assert server.attributes["meshd.logical_name"] == "/svc/accounts"
    assert server.attributes["meshd.bound_name"] == "/#/fs/accounts"
    assert server.attributes["url.path"] == "/balance"
    assert server.attributes["http.request.method"] == "GET"
    assert server.status_code == 0  # UNSET
    endpoint = f"127.0.0.1:{up.port}"
    assert [(a.attributes["meshd.attempt"], a.attributes["meshd.retry"]) for a in attempts] == [(1, 0), (2, 1)]
    assert [a.attributes["http.response.status_code"] for a in attempts] == [503, 200]
    assert [a.attributes["meshd.endpoint"] for a in attempts] == [endpoint, endpoint]
    assert [a.status_code for a in attempts] == [2, 0]  # ERROR for the 503, UNSET for the 200
    assert all(a.start_ns >= server.start_ns and a.end_ns <= server.end_ns for a in attempts)
    # each attempt told the upstream that its own span is the parent
    assert [r.headers_named("traceparent") for r in seen] == [[f"00-{TRACE}-{a.span_id}-01"] for a in attempts]


async def test_errors_and_the_access_log_carry_the_trace_id(make_mesh, caplog):
    async with OtlpReceiver() as receiver:
        mesh = await make_mesh(traced_config(receiver.url, accessLog=True))
        with caplog.at_level(logging.INFO, logger="meshd.access"):
            response = await get(mesh.port, [("traceparent", f"00-{TRACE}-{SPAN}-01")], host="nowhere")
            fresh = await get(mesh.port, host="nowhere")  # no context: a new trace, its id shown
        assert response.status == 502 and response.header("l5d-err")
        assert response.header("l5d-trace-id") == TRACE
        assert fresh.header("l5d-trace-id") not in (None, TRACE) and len(fresh.header("l5d-trace-id") or "") == 32
        (server, *_) = await receiver.wait_spans(2)
    assert server.trace_id == TRACE and server.status_code == 2
    assert server.status_message == response.header("l5d-err")
    lines = [r.getMessage() for r in caplog.records if r.name == "meshd.access"]
    assert lines and lines[0].endswith(f" trace_id={TRACE}")


async def test_hygiene_errors_carry_the_trace_id_too(make_mesh):
    async with OtlpReceiver() as receiver:
        mesh = await make_mesh(traced_config(receiver.url, rate=0.0))
        response = await get(mesh.port, [("traceparent", f"00-{TRACE}-{SPAN}-00"), ("l5d-dtab", "/svc => ;;;")])
    assert response.status == 400 and "l5d-dtab" in (response.header("l5d-err") or "")
    assert response.header("l5d-trace-id") == TRACE


async def test_unsampled_requests_export_nothing_and_pass_context_on(make_mesh, make_upstream):
    up = await make_upstream()
    async with OtlpReceiver() as receiver:
        # a rate above 0 that samples nothing in 20 draws (one chance in 50 million)
        mesh = await make_mesh(traced_config(receiver.url, rate=1e-9))
        mesh.register("accounts", up)
        for _ in range(20):
            assert (await get(mesh.port)).status == 200
        assert (await get(mesh.port, [("traceparent", f"00-{TRACE}-{SPAN}-00")])).status == 200
        tracer = mesh.daemon.runtime.tracer
        assert tracer is not None and not tracer.queue
        await mesh.daemon.exporter.export_batch()
    assert receiver.spans == [] and tracer.exported == 0
    # each new trace went on with the flag off; the caller's context went on as it was
    parents = [r.headers_named("traceparent") for r in up.received]
    assert all(len(p) == 1 and p[0].startswith("00-") and p[0].endswith("-00") for p in parents)
    assert len({p[0][3:35] for p in parents[:20]}) == 20
    assert parents[20] == [f"00-{TRACE}-{SPAN}-00"]


async def test_at_rate_zero_only_context_that_came_in_goes_on(make_mesh, make_upstream):
    up = await make_upstream()
    async with OtlpReceiver() as receiver:
        mesh = await make_mesh(traced_config(receiver.url, rate=0.0))
        mesh.register("accounts", up)
        plain = await get(mesh.port)
        assert (await get(mesh.port, [("traceparent", f"00-{TRACE}-{SPAN}-00")])).status == 200
        error = await get(mesh.port, host="nowhere")
        await mesh.daemon.exporter.export_batch()
    assert plain.status == 200 and receiver.spans == []
    assert up.received[0].headers_named("traceparent") == []  # as through a meshd without tracing
    assert up.received[1].headers_named("traceparent") == [f"00-{TRACE}-{SPAN}-00"]
    # not traced at all: meshd's own error names no trace id (l5d-err still says why)
    assert error.status == 502 and error.header("l5d-trace-id") is None and error.header("l5d-err")


async def test_tracing_off_adds_nothing(make_mesh, make_upstream):
    up = await make_upstream()
    mesh = await make_mesh()
    mesh.register("accounts", up)
    assert mesh.daemon.runtime.tracer is None and mesh.daemon.exporter is None
    assert "trace" not in mesh.daemon.routers[0].stack.roles()
    assert (await get(mesh.port, [("b3", f"{TRACE}-{SPAN}-1")])).status == 200
    assert up.received[0].headers_named("traceparent") == []
    assert up.received[0].headers_named("b3") == [f"{TRACE}-{SPAN}-1"]  # not meshd's business when off
    error = await get(mesh.port, host="nowhere")
    assert error.status == 502 and error.header("l5d-trace-id") is None
    text = await scrape(mesh.admin_port)
    assert "\nmeshd_trace_spans_exported_total " not in text  # the family is described, with no sample


async def test_b3_in_w3c_out_through_meshd(make_mesh, make_upstream):
    up = await make_upstream()
    async with OtlpReceiver() as receiver:
        mesh = await make_mesh(traced_config(receiver.url, rate=0.0))
        mesh.register("accounts", up)
        assert (await get(mesh.port, [("b3", f"{TRACE}-{SPAN}-1")])).status == 200
        (server, attempt) = sorted(await receiver.wait_spans(2), key=lambda s: s.kind)
    received = up.received[0]
    assert received.headers_named("b3") == []
    assert received.headers_named("traceparent") == [f"00-{TRACE}-{attempt.span_id}-01"]
    assert server.trace_id == TRACE and server.parent_id == SPAN and attempt.parent_id == server.span_id


async def test_malformed_traceparent_is_a_new_trace_and_counted(make_mesh, make_upstream):
    up = await make_upstream()
    async with OtlpReceiver() as receiver:
        mesh = await make_mesh(traced_config(receiver.url, rate=0.0))
        mesh.register("accounts", up)
        response = await get(mesh.port, [("traceparent", "00-garbage-01"), ("tracestate", "a=1")])
        assert response.status == 200
        text = await scrape(mesh.admin_port)
    assert metric(text, "meshd_trace_malformed_headers_total", header="traceparent") == 1.0
    (sent,) = up.received[0].headers_named("traceparent")
    assert sent != "00-garbage-01" and len(sent) == 55
    assert up.received[0].headers_named("tracestate") == []


async def test_an_untrusted_caller_cannot_force_sampling(make_mesh, make_upstream):
    up = await make_upstream()
    async with OtlpReceiver() as receiver:
        # loopback is not trusted here: the test client is "someone else"
        mesh = await make_mesh(traced_config(receiver.url, rate=0.0, trustedSources=["10.9.9.0/24"]))
        mesh.register("accounts", up)
        for headers in ([("l5d-sample", "1")], [("traceparent", f"00-{TRACE}-{SPAN}-01")]):
            assert (await get(mesh.port, headers)).status == 200
        await mesh.daemon.exporter.export_batch()
        assert receiver.spans == []
        assert up.received[1].headers_named("traceparent") == [f"00-{TRACE}-{SPAN}-00"]
        # the same headers from a trusted caller do force it
        trusting = await make_mesh(traced_config(receiver.url, rate=0.0))
        trusting.register("accounts", up)
        assert (await get(trusting.port, [("l5d-sample", "1")])).status == 200
        await receiver.wait_spans(2)


def unlabelled(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


def exported(text: str) -> float:
    return unlabelled(text, "meshd_trace_spans_exported_total")


async def send_many(port: int, count: int) -> list[float]:
    """`count` requests on one connection; the seconds each took (all must succeed)."""
    conn = await RawConnection.open(port)
    took: list[float] = []
    try:
        for _ in range(count):
            start = time.monotonic()
            response = await asyncio.wait_for(conn.request("GET", "/", host="accounts"), 10)
            took.append(time.monotonic() - start)
            assert response.status == 200
    finally:
        await conn.close()
    return took


async def dropped(mesh, reason: str) -> float:
    return metric(await scrape(mesh.admin_port), "meshd_trace_spans_dropped_total", reason=reason)


async def some_dropped(mesh, reason: str) -> bool:
    return await dropped(mesh, reason) > 0


async def dropped_exactly(mesh, reason: str, count: int) -> bool:
    now = await dropped(mesh, reason)
    assert now <= count, f"{now} spans dropped ({reason}), more than the {count} made"
    return now == count


async def test_collector_refusing_connections(make_mesh, make_upstream):
    up = await make_upstream()
    mesh = await make_mesh(traced_config(f"http://127.0.0.1:{refused_port()}"))
    mesh.register("accounts", up)
    await send_many(mesh.port, 30)
    # a request span and an attempt span each (in one batch or more: a failed one is not retried)
    await wait_until(lambda: dropped_exactly(mesh, "unreachable", 60), message="60 spans dropped as unreachable")
    assert exported(await scrape(mesh.admin_port)) == 0.0


async def test_collector_answering_garbage(make_mesh, make_upstream):
    up = await make_upstream()
    garbage = await GarbageCollector().start()
    try:
        mesh = await make_mesh(traced_config(garbage.url))
        mesh.register("accounts", up)
        await send_many(mesh.port, 10)
        await wait_until(lambda: dropped_exactly(mesh, "bad_response", 20), message="20 spans dropped as bad responses")
        assert garbage.connections >= 1
    finally:
        await garbage.close()


@pytest.mark.parametrize("mode", ["error", "reject"])
async def test_collector_answering_an_error_or_rejecting(make_mesh, make_upstream, mode):
    up = await make_upstream()
    async with OtlpReceiver(mode=mode) as receiver:
        mesh = await make_mesh(traced_config(receiver.url))
        mesh.register("accounts", up)
        await send_many(mesh.port, 5)
        reason = "bad_response" if mode == "error" else "rejected"
        await wait_until(lambda: dropped_exactly(mesh, reason, 10), message=f"10 spans dropped ({reason})")
        assert exported(await scrape(mesh.admin_port)) == 0.0


async def test_a_hanging_collector_never_slows_requests(make_mesh, make_upstream):
    up = await make_upstream()
    async with OtlpReceiver(mode="hang") as receiver:
        mesh = await make_mesh(traced_config(receiver.url))
        mesh.register("accounts", up)
        tracer = mesh.daemon.runtime.tracer
        tracer.max_queue = 20  # a small queue, so that it fills while the export hangs
        await send_many(mesh.port, 5)
        await wait_until(lambda: receiver.requests == 1, message="the first export to hang")
        took = await send_many(mesh.port, 100)  # while the collector holds the export
        assert max(took) < 0.5, max(took)
        assert await dropped(mesh, "queue_full") > 0 and len(tracer.queue) == 20
        assert unlabelled(await scrape(mesh.admin_port), "meshd_trace_spans_queued") == 20.0
        # the hung batch (whatever the first requests had finished when the exporter took it)
        await wait_until(lambda: some_dropped(mesh, "timeout"), timeout=10, message="the hung export to time out")


async def test_spans_left_at_shutdown_are_flushed(make_mesh, make_upstream):
    up = await make_upstream()
    async with OtlpReceiver() as receiver:
        mesh = await make_mesh(traced_config(receiver.url))
        mesh.register("accounts", up)
        await send_many(mesh.port, 3)
        await mesh.daemon.shutdown(drain_timeout_s=1.0)
        assert len(receiver.spans) == 6


async def test_a_reload_turns_tracing_on_changes_it_and_turns_it_off(make_mesh, make_upstream):
    import yaml

    from meshd.config.loader import load_config
    from meshd.config.model import MeshdConfig

    up = await make_upstream()
    async with OtlpReceiver() as receiver:
        mesh = await make_mesh()
        mesh.register("accounts", up)
        daemon = mesh.daemon
        assert daemon.runtime.tracer is None
        outcome = await daemon.reload(load_config(yaml.safe_dump(traced_config(receiver.url)), MeshdConfig))
        assert outcome.result == "applied" and "outgoing" in outcome.message  # rebuilt with the filter
        tracer = daemon.runtime.tracer
        assert tracer is not None and daemon.exporter is not None and tracer.sample_rate == 1.0
        assert daemon.routers[0].stack.roles()[0] == "trace"
        assert (await get(mesh.port)).status == 200
        await receiver.wait_spans(2)
        # a new rate applies in place: same tracer (its counters go on), same routers
        router = daemon.routers[0]
        outcome = await daemon.reload(load_config(yaml.safe_dump(traced_config(receiver.url, rate=0.0)), MeshdConfig))
        assert outcome.result == "applied" and daemon.runtime.tracer is tracer and tracer.sample_rate == 0.0
        assert daemon.routers[0] is router
        assert (await get(mesh.port)).status == 200
        # off again: no filter, no exporter
        outcome = await daemon.reload(load_config(yaml.safe_dump(base_config()), MeshdConfig))
        assert outcome.result == "applied" and daemon.runtime.tracer is None and daemon.exporter is None
        assert "trace" not in daemon.routers[0].stack.roles()
        assert (await get(mesh.port)).status == 200
        assert up.received[-1].headers_named("traceparent") == []
    assert len(receiver.spans) == 2


async def test_a_client_that_leaves_ends_the_request_span_as_499(make_mesh, make_upstream):
    release = asyncio.Event()

    async def slow(request: Received) -> Reply:
        await release.wait()
        return Reply(200)

    up = await make_upstream(slow)
    async with OtlpReceiver() as receiver:
        mesh = await make_mesh(traced_config(receiver.url))
        mesh.register("accounts", up)
        conn = await RawConnection.open(mesh.port)
        await conn.send(b"GET / HTTP/1.1\r\nHost: accounts\r\n\r\n")
        await wait_until(lambda: up.requests == 1, message="the request to reach the upstream")
        await conn.close()
        spans = await receiver.wait_spans(2)
        release.set()
    (server,) = [s for s in spans if s.is_server]
    (attempt,) = [s for s in spans if s.is_client]
    assert server.attributes["http.response.status_code"] == 499 and server.status_code == 2
    assert server.attributes["meshd.logical_name"] == "/svc/accounts"
    assert attempt.attributes["error.type"] == "cancelled" and attempt.parent_id == server.span_id


async def test_an_http2_stream_is_traced_like_an_http1_request(make_mesh):
    # the same trace filter and client spans on a `protocol: h2` router: the HTTP/2 upstream sees
    # the attempt span as its parent in `traceparent`, and meshd's own error carries l5d-trace-id
    up = await H2Server(echo).start()
    try:
        async with OtlpReceiver() as receiver:
            mesh = await make_mesh(traced_config(receiver.url, protocol="h2"))
            mesh.register("accounts", up.address_line)
            client = await H2Client.open(mesh.port)
            try:
                ok = await client.request("GET", "/balance", "accounts",
                                          headers=[(b"traceparent", f"00-{TRACE}-{SPAN}-01".encode())])
                missing = await client.request("GET", "/x", "nobody")
            finally:
                client.close()
            spans = await receiver.wait_spans(3)
        assert ok.status == 200
        assert missing.status >= 400 and missing.header(b"l5d-trace-id") is not None
        (server,) = [s for s in spans if s.is_server and s.trace_id == TRACE]
        (attempt,) = [s for s in spans if s.is_client]
        assert server.parent_id == SPAN and attempt.parent_id == server.span_id
        sent = up.received[0].header(b"traceparent")
        assert sent == f"00-{TRACE}-{attempt.span_id}-01".encode()
    finally:
        await up.close()
