"""Identifiers end to end: how a request's logical name is chosen, and what reaches the upstream.

The identifiers' parsing rules have unit tests in tests/routing/test_identifiers.py; here a real
meshd routes real requests by them: the Host header (port stripped, lower-cased; an absolute-form
target's authority wins), a configured header, and the first path segment(s).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.client import RawConnection, build_request
from tests.support.upstreams import Received, Reply, Upstream


async def _echo_target(req: Received) -> Reply:
    return Reply(200, [], f"{req.target} {req.header('l5d-dst-service')}".encode())


async def _setup(
    make_mesh, make_upstream, services: tuple[str, ...], **router: object
) -> tuple[Any, dict[str, Upstream]]:
    mesh = await make_mesh(**router)
    ups = {}
    for name in services:
        ups[name] = await make_upstream(_echo_target, name=name)
        mesh.register(name, ups[name])
    return mesh, ups


@pytest.mark.parametrize(
    ("host", "service"),
    [
        ("billing", "billing"),
        ("BILLING", "billing"),
        ("Billing:8080", "billing"),
        ("billing:", "billing"),
        ("  billing  ", "billing"),
    ],
)
async def test_host_header_names_the_service_lower_cased_without_port(
    make_mesh, make_upstream, host, service
):
    mesh, ups = await _setup(make_mesh, make_upstream, ("billing",))
    conn = await RawConnection.open(mesh.port)
    resp = await conn.request("GET", "/x", host=host)
    assert (resp.status, resp.body) == (200, b"/x /svc/billing")
    assert (ups[service].received[0].header("host") or "").strip() == host.strip()  # Host travels unchanged
    await conn.close()


async def test_absolute_form_target_names_the_service_by_its_authority(make_mesh, make_upstream):
    mesh, ups = await _setup(make_mesh, make_upstream, ("billing", "other"))
    conn = await RawConnection.open(mesh.port)
    resp = await conn.request("GET", "http://Billing:80/pay?x=1", host="other")
    assert resp.status == 200
    assert resp.body.endswith(b" /svc/billing")
    assert ups["other"].requests == 0
    # a proxy replaces Host with the target's authority (RFC 9112 §3.2.2)
    assert ups["billing"].received[0].header("host") == "Billing:80"
    no_host = await conn.request("GET", "http://billing/x", host=None)
    assert no_host.status == 200
    assert ups["billing"].received[1].header("host") == "billing"
    await conn.close()


async def test_http10_request_without_host_cannot_be_named(make_mesh, make_upstream):
    mesh, ups = await _setup(make_mesh, make_upstream, ("billing",))
    conn = await RawConnection.open(mesh.port)
    await conn.send(build_request("GET", "/", host=None, version="1.0"))
    resp = await conn.read_response()
    assert resp.status == 400
    assert resp.header("l5d-err") == "cannot identify the destination service: host header is absent"
    assert await conn.is_closed_by_peer()
    await conn.close()
    assert ups["billing"].connections == 0


async def test_empty_host_cannot_be_named(make_mesh, make_upstream):
    mesh, ups = await _setup(make_mesh, make_upstream, ("billing",))
    conn = await RawConnection.open(mesh.port)
    resp = await conn.request("GET", "/", host=":8080")
    assert resp.status == 400
    assert "host header is empty" in (resp.header("l5d-err") or "")
    await conn.close()
    assert ups["billing"].connections == 0


async def test_configured_header_names_the_service(make_mesh, make_upstream):
    mesh, ups = await _setup(
        make_mesh, make_upstream, ("billing", "decoy"), identifier={"kind": "header", "header": "x-service"}
    )
    conn = await RawConnection.open(mesh.port)
    resp = await conn.request("GET", "/x", [("X-Service", "Billing")], host="decoy")
    assert (resp.status, resp.body) == (200, b"/x /svc/billing")
    assert ups["billing"].received[0].header("x-service") == "Billing"  # the header itself travels on
    absent = await conn.request("GET", "/x", host="decoy")
    assert absent.status == 400
    assert absent.header("l5d-err") == "cannot identify the destination service: x-service header is absent"
    await conn.close()
    assert ups["decoy"].connections == 0


async def test_configured_header_with_another_prefix_and_dtab(make_mesh, make_upstream):
    mesh, ups = await _setup(
        make_mesh,
        make_upstream,
        ("billing",),
        identifier={"kind": "header", "header": "x-service", "prefix": "/http"},
        dtab="/http => /#/fs;",
    )
    conn = await RawConnection.open(mesh.port)
    resp = await conn.request("GET", "/x", [("X-Service", "billing")])
    assert (resp.status, resp.body) == (200, b"/x /http/billing")
    await conn.close()


async def test_path_identifier_names_the_service_by_the_first_segment(make_mesh, make_upstream):
    mesh, ups = await _setup(make_mesh, make_upstream, ("billing", "decoy"), identifier={"kind": "path"})
    conn = await RawConnection.open(mesh.port)
    resp = await conn.request("GET", "/billing/invoices/7?full=1", host="decoy")
    assert (resp.status, resp.body) == (200, b"/billing/invoices/7?full=1 /svc/billing")
    root = await conn.request("GET", "/", host="decoy")
    assert root.status == 400
    assert root.header("l5d-err") == (
        "cannot identify the destination service: request path / has fewer than 1 non-empty segments"
    )
    await conn.close()
    assert ups["decoy"].connections == 0


async def test_path_identifier_with_consume_strips_the_segments_it_used(make_mesh, make_upstream):
    mesh, ups = await _setup(
        make_mesh, make_upstream, ("billing",), identifier={"kind": "path", "segments": 1, "consume": True}
    )
    conn = await RawConnection.open(mesh.port)
    resp = await conn.request("GET", "/billing/invoices?full=1")
    assert (resp.status, resp.body) == (200, b"/invoices?full=1 /svc/billing")
    bare = await conn.request("GET", "/billing")
    assert bare.body == b"/ /svc/billing"
    await conn.close()


async def test_path_identifier_with_two_segments(make_mesh, make_upstream):
    mesh = await make_mesh(identifier={"kind": "path", "segments": 2}, dtab="/svc/api => /#/fs;")
    up = await make_upstream(_echo_target)
    mesh.register("v2", up)
    conn = await RawConnection.open(mesh.port)
    resp = await conn.request("GET", "/api/v2/users")
    assert (resp.status, resp.body) == (200, b"/api/v2/users /svc/api/v2")
    await conn.close()


async def test_http10_request_without_host_reaches_the_upstream_with_the_endpoints_address(
    make_mesh, make_upstream
):
    # HTTP/1.0 lets a client omit Host; meshd talks HTTP/1.1 upstream, where Host is required
    # (an nginx upstream answers 400 without it), so the attempt carries the endpoint's address
    mesh, ups = await _setup(make_mesh, make_upstream, ("billing",), identifier={"kind": "path"})
    conn = await RawConnection.open(mesh.port)
    await conn.send(b"GET /billing/x HTTP/1.0\r\n\r\n")
    resp = await conn.read_response()
    assert resp.status == 200
    [received] = ups["billing"].received
    assert received.header("host") == f"127.0.0.1:{ups['billing'].port}"
    await conn.close()
