"""The bank's gRPC hop: the ledger posting as `bank.Ledger/Post` (grpcio on both sides, real sockets)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import grpc.aio
import pytest

from examples.bank import ledger
from examples.bank.chaos import ChaosSettings
from examples.bank.harness import running_bank, serving
from examples.bank.ledger_book import transfer
from examples.bank.ledger_grpc import GRPC_PORT, POST_PATH, GrpcLedger
from examples.bank.options import ServiceOptions, parse_options
from examples.bank.outbox import RetryPolicy
from examples.bank.payments import AFTER_WORK
from examples.bank.replica import CHAOS, IDENTITY, STATS

LEGS = transfer("customer:a", "merchant:m", 250)


@pytest.fixture
async def ledger_app(tmp_path: Path) -> AsyncIterator[tuple[str, Any]]:
    app = ledger.create_app(
        ServiceOptions(service="ledger", db=tmp_path / "ledger.db", replica="ledger-1", grpc_port=0)
    )
    async with serving(app) as [url]:
        yield url, app


@pytest.fixture
async def client(ledger_app: tuple[str, Any]) -> AsyncIterator[GrpcLedger]:
    _url, app = ledger_app
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app[GRPC_PORT]}") as channel:
        yield GrpcLedger(channel, timeout_secs=5)


async def test_post_replay_and_conflict(ledger_app: tuple[str, Any], client: GrpcLedger) -> None:
    url, app = ledger_app
    first = await client.post("auth:a-1", LEGS, {})
    assert first.status == 201 and first.body["status"] == "posted"
    assert first.headers["x-replica"] == "ledger-1"
    again = await client.post("auth:a-1", LEGS, {})
    assert again.status == 200 and again.body["status"] == "replayed"
    other = await client.post("auth:a-1", transfer("customer:a", "merchant:m", 999), {})
    assert other.status == 409 and other.body["grpc_status"] == "ALREADY_EXISTS"
    assert "different legs" in str(other.body["error"])
    # the HTTP side of the same ledger sees the one posting
    async with aiohttp.ClientSession() as session, session.get(f"{url}/transactions/auth:a-1") as response:
        assert response.status == 200
        assert [leg["amount"] for leg in (await response.json())["legs"]] == [250, 250]
    # two gRPC posts and the HTTP read answered, the conflict counted as the 409 it is
    assert app[STATS].snapshot(app[IDENTITY])["responses"] == {"2xx": 3, "4xx": 1}


async def test_invalid_messages_are_invalid_argument(ledger_app: tuple[str, Any]) -> None:
    _url, app = ledger_app
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app[GRPC_PORT]}") as channel:
        post = channel.unary_unary(POST_PATH)
        for message in (b"not json", b"[]", json.dumps({"key": "", "legs": []}).encode(),
                        json.dumps({"key": "k", "legs": [{"account": "a", "direction": "debit", "amount": 1}]}).encode()):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await post(message, timeout=5)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, message


async def test_chaos_fails_calls_as_unavailable(ledger_app: tuple[str, Any], client: GrpcLedger) -> None:
    _url, app = ledger_app
    app[CHAOS].set(ChaosSettings(fail_rate=1.0))
    reply = await client.post("auth:a-2", LEGS, {})
    assert reply.status == 503 and reply.body["grpc_status"] == "UNAVAILABLE"
    assert reply.body["error"] == "chaos: injected failure"
    app[CHAOS].set(ChaosSettings())
    assert (await client.post("auth:a-2", LEGS, {})).status == 201


async def test_context_headers_travel_as_metadata_and_timeout_as_grpc_timeout() -> None:
    seen: list[dict[str, str]] = []

    async def post(message: bytes, context: grpc.aio.ServicerContext) -> bytes:
        seen.append({k: v for k, v in context.invocation_metadata() if isinstance(v, str)})
        return json.dumps({"key": "k", "status": "posted", "legs": []}).encode()

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bank.Ledger", {"Post": grpc.unary_unary_rpc_method_handler(post)}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = await GrpcLedger(channel, timeout_secs=2).post("k", LEGS, {"l5d-ctx-deadline": "1 2", "L5d-Ctx-Dtab": "/svc/ledger => /x"})
    finally:
        await server.stop(None)
    assert reply.status == 201
    [metadata] = seen
    assert metadata["l5d-ctx-deadline"] == "1 2" and metadata["l5d-ctx-dtab"] == "/svc/ledger => /x"


async def test_nobody_listening_is_a_503_answer_not_an_exception(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await GrpcLedger(channel, timeout_secs=2).post("k", LEGS, {})
    assert reply.status in (503, 504)


async def test_payments_posts_to_the_ledger_over_grpc(tmp_path: Path) -> None:
    async with running_bank(tmp_path, ledger_grpc=True, retry_policy=RetryPolicy(attempts=1, first_backoff_ms=0)) as bank:
        async with aiohttp.ClientSession() as session:
            async with session.put(f"{bank.url('accounts')}/accounts/acc-1", json={"opening_balance": 10_000}) as r:
                assert r.status in (200, 201)
            body = {"auth_id": "g-1", "account_id": "acc-1", "merchant_id": "m-001", "amount": 1234}
            async with session.post(f"{bank.url('payments')}/authorisations", json=body) as response:
                answer = await response.json()
            assert response.status == 200 and answer["decision"] == "approved", answer
            await bank.app("payments")[AFTER_WORK].wait_idle()
            # the posting went over gRPC: the ledger served one call, and the stand-in router (HTTP/1.1)
            # saw no ledger call at all
            assert bank.app("ledger")[STATS].requests == 1
            assert [c for c in bank.router.calls if c.service == "ledger"] == []
            async with session.get(f"{bank.url('ledger')}/transactions/auth:g-1") as response:
                assert response.status == 200


def test_options_parse_the_grpc_switches(tmp_path: Path) -> None:
    options = parse_options("payments", ["--port", "0", "--db", str(tmp_path / "p.db"), "--replica", "p-1",
                                         "--ledger-grpc", "127.0.0.1:4142"])
    assert options.ledger_grpc == "127.0.0.1:4142" and options.grpc_port is None
    options = parse_options("ledger", ["--port", "0", "--db", str(tmp_path / "l.db"), "--replica", "l-1",
                                       "--grpc-port", "5000"])
    assert options.grpc_port == 5000
    with pytest.raises(ValueError, match="host:port"):
        ServiceOptions(service="payments", db=tmp_path / "p.db", replica="p-1", ledger_grpc="http://x/")


def test_the_demo_layout_with_the_grpc_hop(tmp_path: Path) -> None:
    from examples.bank.story.topology import GRPC_LEDGER_NAME, meshd_config, plan_layout, write_mesh_files
    from meshd.config import load_config
    from meshd.config.model import MeshdConfig

    plain = plan_layout(tmp_path / "plain")
    assert plain.grpc_port == 0 and all(r.grpc_port == 0 for r in plain.replicas)
    assert [r["label"] for r in meshd_config(plain)["routers"]] == ["outgoing", "incoming"]  # type: ignore[index]

    layout = plan_layout(tmp_path / "grpc", grpc=True)
    ledgers = layout.of("ledger")
    assert ledgers and all(r.grpc_port for r in ledgers)
    ports = [layout.router_port, layout.admin_port, layout.incoming_port, layout.grpc_port]
    ports += [r.port for r in layout.replicas] + [r.grpc_port for r in ledgers]
    assert len(set(ports)) == len(ports)
    assert ledgers[0].command(layout.meshd_url)[-2:] == ["--grpc-port", str(ledgers[0].grpc_port)]
    payments = layout.of("payments")[0].command(layout.meshd_url)
    assert payments[payments.index("--ledger-grpc") + 1] == layout.grpc_target
    write_mesh_files(layout)
    assert (layout.disco_dir / GRPC_LEDGER_NAME).read_text().split("\n")[:-1] == [
        f"127.0.0.1 {r.grpc_port}" for r in ledgers
    ]
    config = meshd_config(layout)
    grpc_router = config["routers"][-1]  # type: ignore[index]
    assert grpc_router["protocol"] == "h2" and grpc_router["identifier"] == {"kind": "grpc"}
    # the config the demo writes loads as it is: the gRPC router is meshd's HTTP/2 router
    loaded = load_config(layout.config_path.read_text(), MeshdConfig)
    assert loaded.routers[-1].protocol == "h2"
    assert loaded.routers[-1].identifier.KIND == "grpc"
    assert loaded.routers[-1].service.response_classifier.KIND == "grpc.default"


def test_the_demo_runs_its_grpc_hop_by_default_and_reports_it() -> None:
    from examples.bank.demo import _parse
    from examples.bank.story.grpc_hop import GrpcHopReport

    assert _parse([]).grpc is True
    assert _parse(["--no-grpc"]).grpc is False
    report = GrpcHopReport(by_status={"OK": 229, "UNAVAILABLE": 1}, retries={"response": 7, "error": 0, "requeue": 3})
    assert report.line() == (
        "gRPC: 230 ledger postings as bank.Ledger/Post through meshd's HTTP/2 router (OK 229, UNAVAILABLE 1); "
        "10 attempts retried by meshd (requeue 3, response 7)"
    )
