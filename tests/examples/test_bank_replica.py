"""What every bank service shares: identity headers, /healthz, the chaos knob, /_stats, and calls via meshd."""

from __future__ import annotations

import random
import socket
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from examples.bank import merchants
from examples.bank.chaos import Chaos, ChaosSettings
from examples.bank.harness import serving
from examples.bank.mesh import MeshClient, MeshUnavailable, context_headers
from examples.bank.options import ServiceOptions, parse_options


@pytest.fixture
async def merchant_api(tmp_path):
    options = ServiceOptions(service="merchants", db=tmp_path / "m.db", replica="merchants-7", version="v2")
    async with serving(merchants.create_app(options)) as [url], aiohttp.ClientSession() as session:

        async def call(method: str, path: str, body: dict[str, Any] | None = None) -> aiohttp.ClientResponse:
            async with session.request(method, url + path, json=body) as response:
                await response.read()
                return response

        yield call


async def stats_of(call) -> dict[str, Any]:
    response = await call("GET", "/_stats")
    body: dict[str, Any] = await response.json()
    return body


async def test_answers_carry_the_replica_and_version(merchant_api):
    response = await merchant_api("GET", "/merchants/m-001")
    assert (response.headers["x-replica"], response.headers["x-version"]) == ("merchants-7", "v2")
    assert (await response.json())["name"] == "Corner Coffee"
    missing = await merchant_api("GET", "/merchants/nope")
    assert (missing.status, missing.headers["x-replica"]) == (404, "merchants-7")


async def test_stats_count_business_requests_only(merchant_api):
    before = await stats_of(merchant_api)
    await merchant_api("GET", "/merchants/m-001")
    await merchant_api("GET", "/merchants/nope")
    await merchant_api("GET", "/healthz")
    after = await stats_of(merchant_api)
    assert after["requests"] - before["requests"] == 2
    assert after["responses"] == {"2xx": 1, "4xx": 1}
    assert after["boot_id"] == before["boot_id"]


async def test_chaos_fails_business_requests_but_not_health(merchant_api):
    assert (await merchant_api("POST", "/_chaos", {"fail_rate": 1.0})).status == 200
    assert (await merchant_api("GET", "/merchants/m-001")).status == 503
    assert (await merchant_api("GET", "/healthz")).status == 200
    await merchant_api("POST", "/_chaos", {})
    assert (await merchant_api("GET", "/merchants/m-001")).status == 200


async def test_bad_chaos_settings_are_refused(merchant_api):
    response = await merchant_api("POST", "/_chaos", {"fail_rate": 2})
    assert response.status == 422
    assert "fail_rate" in (await response.json())["error"]


async def test_chaos_delays_by_the_configured_latency():
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    chaos = Chaos(random.Random(1), sleep=sleep)
    chaos.set(ChaosSettings(latency_ms=100))
    await chaos.delay()
    assert slept == [0.1]


def test_chaos_fail_rate_is_honoured_with_an_injected_random_source():
    chaos = Chaos(random.Random(7))
    chaos.set(ChaosSettings(fail_rate=0.25))
    failures = sum(chaos.should_fail() for _ in range(4_000))
    assert 850 < failures < 1_150


def test_context_headers_copy_l5d_ctx_and_can_drop_the_deadline():
    incoming = {"L5d-Ctx-Deadline": "1 2", "l5d-ctx-dtab": "/svc/a=>/svc/b", "l5d-reqid": "x", "Host": "p"}
    assert context_headers(incoming) == {"l5d-ctx-deadline": "1 2", "l5d-ctx-dtab": "/svc/a=>/svc/b"}
    assert context_headers(incoming, keep_deadline=False) == {"l5d-ctx-dtab": "/svc/a=>/svc/b"}


async def test_mesh_client_names_the_service_in_host_and_forwards_context():
    seen: list[dict[str, str]] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({"path": request.path})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    async with serving(app) as [url], aiohttp.ClientSession() as session:
        reply = await MeshClient(session, url).call(
            "ledger", "GET", "/balances", context={"l5d-ctx-dtab": "d"}
        )
    assert (reply.status, reply.body) == (200, {"path": "/balances"})
    assert seen[0]["Host"] == "ledger"
    assert seen[0]["l5d-ctx-dtab"] == "d"


async def test_mesh_client_reports_no_answer_as_unavailable():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with aiohttp.ClientSession() as session:
        client = MeshClient(session, f"http://127.0.0.1:{port}")
        with pytest.raises(MeshUnavailable, match="GET accounts/accounts/x"):
            await client.call("accounts", "GET", "/accounts/x")


def test_options_parse_the_documented_command_line(tmp_path):
    argv = ["--port", "8081", "--db", str(tmp_path / "a.db"), "--replica", "accounts-v2-1", "--version", "v2"]
    options = parse_options("accounts", argv)
    assert (options.port, options.replica, options.version, options.meshd) == (
        8081,
        "accounts-v2-1",
        "v2",
        "http://127.0.0.1:4140",
    )
    with pytest.raises(SystemExit):
        parse_options("accounts", ["--port", "99999", "--db", "x", "--replica", "r"])
