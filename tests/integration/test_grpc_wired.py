"""gRPC semantics on meshd's HTTP/2 request path, with a scripted HTTP/2 peer on each side.

What is checked here frame by frame (the grpcio end-to-end tests are in test_grpc_e2e.py):
meshd's own errors reach a gRPC client as trailers-only responses, `grpc-timeout` becomes the
request's deadline and goes upstream reduced, and the `grpc.*` classifiers retry on the
`grpc-status` of a trailers-only head or of the trailers.
"""

from __future__ import annotations

from meshd.grpc.status import decode_message
from tests.support.h2peer import H2Client

GRPC = [(b"content-type", b"application/grpc"), (b"te", b"trailers")]
ROUTER = {"protocol": "h2", "identifier": {"kind": "grpc"}}


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
