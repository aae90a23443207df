"""gRPC semantics on meshd's HTTP/2 request path, with a scripted HTTP/2 peer on each side.

What is checked here frame by frame (the grpcio end-to-end tests are in test_grpc_e2e.py):
meshd's own errors reach a gRPC client as trailers-only responses, `grpc-timeout` becomes the
request's deadline and goes upstream reduced, and the `grpc.*` classifiers retry on the
`grpc-status` of a trailers-only head or of the trailers.
"""

from __future__ import annotations

import asyncio

from meshd.grpc.status import decode_message
from meshd.grpc.timeout import parse_timeout
from tests.support.client import RawConnection
from tests.support.h2peer import H2Client, H2Reply, H2Server
from tests.support.waiting import wait_until

GRPC = [(b"content-type", b"application/grpc"), (b"te", b"trailers")]
ROUTER = {"protocol": "h2", "identifier": {"kind": "grpc"}}


async def _metrics(mesh: object) -> str:
    conn = await RawConnection.open(mesh.admin_port)  # type: ignore[attr-defined]
    try:
        response = await conn.request("GET", "/metrics", host="localhost")
    finally:
        await conn.close()
    return response.body.decode()


def _one_message(payload: bytes) -> bytes:
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


async def test_an_unbound_grpc_service_is_answered_unavailable_trailers_only(make_mesh):
    mesh = await make_mesh(**ROUTER)
    client = await H2Client.open(mesh.port)
    try:
        result = await client.request("POST", "/bank.Nowhere/Post", "x", headers=GRPC, body=_one_message(b"hi"))
        # one HEADERS frame with END_STREAM: no DATA, no separate trailers
        assert result.status == 200
        assert result.trailers is None and result.body == b"" and result.reset is None
        assert result.header(b"grpc-status") == b"14"
        assert result.header(b"content-type") == b"application/grpc"
        err = result.header(b"l5d-err")
        assert err is not None and b"/svc/bank.Nowhere" in err
        message = result.header(b"grpc-message")
        assert message is not None and decode_message(message) == err.decode()
    finally:
        client.close()


async def test_a_path_that_names_no_method_is_unimplemented_and_plain_http_keeps_its_status(make_mesh):
    mesh = await make_mesh(**ROUTER)
    client = await H2Client.open(mesh.port)
    try:
        bad = await client.request("POST", "/not-a-method", "x", headers=GRPC, body=_one_message(b""))
        assert bad.status == 200 and bad.header(b"grpc-status") == b"12"
        # the same error to a request that is not gRPC: the HTTP status, as before
        plain = await client.request("POST", "/not-a-method", "x", body=b"{}")
        assert plain.status == 400 and plain.header(b"grpc-status") is None
        assert plain.header(b"l5d-err") is not None
    finally:
        client.close()
    # meshd's own gRPC errors are counted under the HTTP status they stand for (4xx here), not 2xx
    stats = mesh.daemon.routers[0].stats
    assert stats is not None
    assert stats.services["_unidentified"].by_class[4] == 2
    assert sum(s.by_class[2] for s in stats.services.values()) == 0


# -- deadlines: grpc-timeout ----------------------------------------------------------------------


def _ms(value: bytes) -> float:
    return parse_timeout(value) / 1e6  # type: ignore[operator]


async def _ok(reply: H2Reply) -> None:
    reply.head(200, [(b"content-type", b"application/grpc")])
    await reply.data(_one_message(b"done"))
    reply.trailers([(b"grpc-status", b"0")])


async def test_grpc_timeout_is_the_deadline_and_goes_upstream_reduced(make_mesh):
    up = await H2Server(_ok).start()
    mesh = await make_mesh(**ROUTER)
    mesh.register("bank.Ledger", up.address_line)
    client = await H2Client.open(mesh.port)
    try:
        result = await client.request(
            "POST", "/bank.Ledger/Post", "x", headers=GRPC + [(b"grpc-timeout", b"2S")], body=_one_message(b"a")
        )
        assert result.status == 200 and result.trailers == [(b"grpc-status", b"0")]
        sent = [v for n, v in up.received[-1].headers if n == b"grpc-timeout"]
        assert len(sent) == 1  # replaced, not added
        assert 0 < _ms(sent[0]) < 2000  # the time left when the attempt went out
        # l5d-ctx-deadline goes along, as for HTTP/1
        assert up.received[-1].header(b"l5d-ctx-deadline") is not None
        # a malformed value is ignored (the call goes on) and counted
        result = await client.request(
            "POST", "/bank.Ledger/Post", "x", headers=GRPC + [(b"grpc-timeout", b"1.5S")], body=_one_message(b"b")
        )
        assert result.trailers == [(b"grpc-status", b"0")]
        assert up.received[-1].header(b"grpc-timeout") == b"1.5S"  # no deadline: passed on untouched
    finally:
        client.close()
        await up.close()
    stats = mesh.daemon.routers[0].grpc_stats
    assert stats is not None
    assert (stats.timeouts.applied, stats.timeouts.malformed) == (1, 1)
    metrics = await _metrics(mesh)
    assert 'meshd_grpc_timeouts_total{result="applied",router="outgoing"} 1.0' in metrics
    assert 'meshd_grpc_timeouts_total{result="malformed",router="outgoing"} 1.0' in metrics


async def test_a_grpc_deadline_that_passes_upstream_is_deadline_exceeded_and_cancels_the_stream(make_mesh):
    never = asyncio.Event()

    async def hang(reply: H2Reply) -> None:
        await never.wait()

    up = await H2Server(hang).start()
    mesh = await make_mesh(**ROUTER)
    mesh.register("bank.Ledger", up.address_line)
    client = await H2Client.open(mesh.port)
    try:
        result = await client.request(
            "POST", "/bank.Ledger/Post", "x", headers=GRPC + [(b"grpc-timeout", b"200m")], body=_one_message(b"a")
        )
        assert result.status == 200 and result.header(b"grpc-status") == b"4"
        assert b"grpc-timeout" in (result.header(b"l5d-err") or b"")
        await wait_until(lambda: any(code == 8 for _, code in up.resets), timeout=5, message="CANCEL upstream")
        # an already-expired deadline: refused before any upstream is called
        before = len(up.heads)
        result = await client.request(
            "POST", "/bank.Ledger/Post", "x", headers=GRPC + [(b"grpc-timeout", b"0n")], body=_one_message(b"a")
        )
        assert result.header(b"grpc-status") == b"4" and len(up.heads) == before
    finally:
        client.close()
        never.set()
        await up.close()


async def test_an_http1_only_router_does_not_read_grpc_timeout(make_mesh, make_upstream):
    upstream = await make_upstream()
    mesh = await make_mesh()
    mesh.register("svc", upstream.address_line)
    conn = await RawConnection.open(mesh.port)
    try:
        response = await conn.request("POST", "/", [("content-type", "application/grpc"), ("grpc-timeout", "0n")],
                                      body=b"x", host="svc")
    finally:
        await conn.close()
    assert response.status == 200  # an expired grpc-timeout would have been refused on an h2 router
    assert mesh.daemon.routers[0].grpc_stats is None


# -- classification and retries: grpc-status ------------------------------------------------------

CLASSIFIED = {**ROUTER, "service": {"responseClassifier": {"kind": "grpc.default"}}}


def _scripted(*answers: str) -> tuple[H2Server, list[str]]:
    """An upstream that answers each call with the next of `answers` (the last one repeats):
    `only:N` trailers-only grpc-status N; `unary:N` one message then trailers N; `stream:N` two
    messages, then trailers N."""
    used: list[str] = []

    async def handler(reply: H2Reply) -> None:
        kind = answers[min(len(used), len(answers) - 1)]
        used.append(kind)
        shape, code = kind.split(":")
        if shape == "only":
            reply.head(200, [(b"content-type", b"application/grpc"), (b"grpc-status", code.encode())], end_stream=True)
            return
        reply.head(200, [(b"content-type", b"application/grpc")])
        await reply.data(_one_message(b"first-%d" % len(used)))
        if shape == "stream":
            await reply.data(_one_message(b"second"))
        reply.trailers([(b"grpc-status", code.encode())])

    return H2Server(handler), used


def _failures(mesh: object) -> int:
    router = mesh.daemon.routers[0]  # type: ignore[attr-defined]
    return sum(stats.failures for client in router.clients.values() for _, stats in client.endpoint_stats())


def _retries(mesh: object) -> int:
    router = mesh.daemon.routers[0]  # type: ignore[attr-defined]
    return sum(state.retries.response for state in router.services.values())


async def test_unavailable_in_a_trailers_only_head_or_in_the_trailers_is_retried(make_mesh):
    up, used = _scripted("only:14", "unary:14", "unary:0")
    await up.start()
    mesh = await make_mesh(**CLASSIFIED)
    mesh.register("bank.Ledger", up.address_line)
    client = await H2Client.open(mesh.port)
    try:
        result = await client.request("POST", "/bank.Ledger/Post", "x", headers=GRPC, body=_one_message(b"a"))
        assert result.status == 200 and result.trailers == [(b"grpc-status", b"0")]
        assert result.body == _one_message(b"first-3")  # the held answers of the retried attempts are gone
        assert used == ["only:14", "unary:14", "unary:0"]
        # the request was replayed whole each time
        assert [r.body for r in up.received] == [_one_message(b"a")] * 3
    finally:
        client.close()
        await up.close()
    assert _retries(mesh) == 2
    assert _failures(mesh) == 2  # failure accrual saw both UNAVAILABLEs, whichever way they came


async def test_a_streaming_answer_is_passed_on_and_not_retried(make_mesh):
    up, used = _scripted("stream:14", "unary:0")
    await up.start()
    mesh = await make_mesh(**CLASSIFIED)
    mesh.register("bank.Ledger", up.address_line)
    client = await H2Client.open(mesh.port)
    try:
        result = await client.request("POST", "/bank.Ledger/Watch", "x", headers=GRPC, body=_one_message(b"a"))
        assert result.body == _one_message(b"first-1") + _one_message(b"second")
        assert result.trailers == [(b"grpc-status", b"14")]
        assert used == ["stream:14"]
        # a code that is not retryable (NOT_FOUND: the service answering) is not retried either,
        # nor counted against the endpoint
    finally:
        client.close()
        await up.close()
    assert _retries(mesh) == 0
    await wait_until(lambda: _failures(mesh) == 1, timeout=5, message="accrual to judge the stream's trailers")


async def test_non_retryable_codes_pass_through_and_only_failure_codes_count_against_the_endpoint(make_mesh):
    up, used = _scripted("unary:5", "only:13")
    await up.start()
    mesh = await make_mesh(**CLASSIFIED)
    mesh.register("bank.Ledger", up.address_line)
    client = await H2Client.open(mesh.port)
    try:
        first = await client.request("POST", "/bank.Ledger/Get", "x", headers=GRPC, body=_one_message(b"a"))
        assert first.trailers == [(b"grpc-status", b"5")]
        second = await client.request("POST", "/bank.Ledger/Get", "x", headers=GRPC, body=_one_message(b"a"))
        assert second.header(b"grpc-status") == b"13" and second.trailers is None
        assert used == ["unary:5", "only:13"]
    finally:
        client.close()
        await up.close()
    assert _retries(mesh) == 0
    assert _failures(mesh) == 1  # INTERNAL is a failure, NOT_FOUND is the service answering


async def test_an_answer_whose_trailers_do_not_follow_its_message_is_released_as_a_stream(make_mesh):
    go_on = asyncio.Event()
    calls = 0

    async def slow_trailers(reply: H2Reply) -> None:
        nonlocal calls
        calls += 1
        reply.head(200, [(b"content-type", b"application/grpc")])
        await reply.data(_one_message(b"tick"))
        await go_on.wait()  # released by the test once the client has the message
        reply.trailers([(b"grpc-status", b"14")])

    up = await H2Server(slow_trailers).start()
    mesh = await make_mesh(**CLASSIFIED)
    mesh.register("bank.Ledger", up.address_line)
    client = await H2Client.open(mesh.port)
    try:
        sid = client.start("POST", "/bank.Ledger/Watch", "x", headers=GRPC, end_stream=False)
        client.send(sid, _one_message(b"a"), end_stream=True)
        queue = client.queues[sid]
        seen = b""
        while len(seen) < len(_one_message(b"tick")):  # the message reaches the client before any trailers
            event = await asyncio.wait_for(queue.get(), 5)
            seen += getattr(event, "data", b"") or b""
            assert not hasattr(event, "error_code")
        go_on.set()
        rest = await client.response(sid)
        assert rest.trailers == [(b"grpc-status", b"14")]  # passed on, not retried: its bytes went out
        assert calls == 1
    finally:
        client.close()
        go_on.set()
        await up.close()


# -- metrics and access log: grpc_status -----------------------------------------------------------


async def test_calls_are_counted_and_logged_by_grpc_status(make_mesh, caplog):
    up, _ = _scripted("unary:0", "only:5", "stream:0")
    await up.start()
    mesh = await make_mesh(**ROUTER, accessLog=True)
    mesh.register("bank.Ledger", up.address_line)
    client = await H2Client.open(mesh.port)
    caplog.set_level("INFO", logger="meshd.access")
    try:
        for method in ("Post", "Get", "Watch"):
            await client.request("POST", f"/bank.Ledger/{method}", "x", headers=GRPC, body=_one_message(b"a"))
        await client.request("POST", "/bank.Nowhere/Post", "x", headers=GRPC, body=_one_message(b"a"))
    finally:
        client.close()
        await up.close()
    stats = mesh.daemon.routers[0].grpc_stats
    assert stats is not None
    await wait_until(lambda: sum(stats.responses.values()) == 4, timeout=5, message="four calls counted")
    assert stats.responses == {
        ("/svc/bank.Ledger", "OK"): 2,
        ("/svc/bank.Ledger", "NOT_FOUND"): 1,
        ("/svc/bank.Nowhere", "UNAVAILABLE"): 1,
    }
    metrics = await _metrics(mesh)
    assert 'meshd_grpc_responses_total{grpc_status="NOT_FOUND",router="outgoing",service="/svc/bank.Ledger"} 1.0' in metrics
    lines = [r.getMessage() for r in caplog.records if r.name == "meshd.access"]
    by_target = {line.split("target=")[1].split()[0]: line for line in lines}
    assert by_target["/bank.Ledger/Post"].endswith("proto=h2 grpc_status=OK")
    assert by_target["/bank.Ledger/Get"].endswith("grpc_status=NOT_FOUND")
    assert by_target["/bank.Ledger/Watch"].endswith("grpc_status=OK")
