"""A trace across two meshd processes: application -> meshd A (outgoing) -> meshd B (incoming) -> service.

Both export to one OTLP receiver in this process (tests/support/otlp.py, decoding the official
protobuf). A samples every request (rate 1); B samples none of its own (rate 0) but follows A,
which it trusts (loopback), so one request makes four spans in one trace, linked across the
process boundary by the `traceparent` A's attempt sent: B's request span is the child of A's
attempt span, and the service sees B's attempt span as its parent.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import socket
import sys

import pytest
import yaml

from tests.support.client import RawConnection
from tests.support.otlp import OtlpReceiver, ReceivedSpan
from tests.support.process import MeshdProcess, process_config
from tests.support.upstreams import Upstream
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(60)

ROOT = pathlib.Path(__file__).resolve().parents[2]

APP_TRACE = "0af7651916cd43dd8448eb211c80319c"
APP_SPAN = "b7ad6b7169203331"


def tracing(receiver: OtlpReceiver, rate: float, name: str) -> dict[str, object]:
    return {"collector": receiver.url, "sampleRate": rate, "serviceName": name}


async def test_spans_link_across_two_meshds(tmp_path: pathlib.Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with OtlpReceiver() as receiver, Upstream(name="accounts") as service:
        incoming = process_config({"label": "incoming"}, tracing=tracing(receiver, 0.0, "meshd-b"))
        async with MeshdProcess(tmp_path / "b", incoming, name="b") as b:
            b.register("accounts", service.address_line)
            outgoing = process_config(
                {"dtab": f"/svc => /$/inet/127.0.0.1/{b.port};"}, tracing=tracing(receiver, 1.0, "meshd-a")
            )
            async with MeshdProcess(tmp_path / "a", outgoing, name="a") as a:
                conn = await RawConnection.open(a.port)
                try:
                    fresh = await asyncio.wait_for(conn.request("GET", "/balance", host="accounts"), 10)
                    # an application that traces itself: its trace (and its span as the parent) goes on
                    joined = await asyncio.wait_for(
                        conn.request("GET", "/balance", [("traceparent", f"00-{APP_TRACE}-{APP_SPAN}-01")],
                                     host="accounts"),
                        10,
                    )
                finally:
                    await conn.close()
                assert fresh.status == 200 and joined.status == 200
                spans = await receiver.wait_spans(8, timeout=15)
    assert len(spans) == 8
    by_trace: dict[str, list[ReceivedSpan]] = {}
    for span in spans:
        by_trace.setdefault(span.trace_id, []).append(span)
    assert len(by_trace) == 2 and APP_TRACE in by_trace
    for trace_id, trace in by_trace.items():
        (a_server,) = [s for s in trace if s.service == "meshd-a" and s.is_server]
        (a_attempt,) = [s for s in trace if s.service == "meshd-a" and s.is_client]
        (b_server,) = [s for s in trace if s.service == "meshd-b" and s.is_server]
        (b_attempt,) = [s for s in trace if s.service == "meshd-b" and s.is_client]
        assert a_server.parent_id == (APP_SPAN if trace_id == APP_TRACE else "")
        assert a_attempt.parent_id == a_server.span_id
        assert b_server.parent_id == a_attempt.span_id  # the link across the process boundary
        assert b_attempt.parent_id == b_server.span_id
        assert a_server.attributes["meshd.router"] == "outgoing" and b_server.attributes["meshd.router"] == "incoming"
        assert a_attempt.attributes["meshd.bound_name"] == f"/$/inet/127.0.0.1/{b.port}"
        assert b_attempt.attributes["meshd.endpoint"] == f"127.0.0.1:{service.port}"
        assert all(s.attributes["http.response.status_code"] == 200 for s in trace)
        # the service saw B's attempt as its parent, and the trace as sampled
        assert f"00-{trace_id}-{b_attempt.span_id}-01" in [
            r.header("traceparent") for r in service.received
        ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def get(port: int, target: str, host: str) -> tuple[int, str]:
    conn = await RawConnection.open(port)
    try:
        response = await asyncio.wait_for(conn.request("GET", target, host=host), 10)
    finally:
        await conn.close()
    return response.status, response.body.decode(errors="replace")


async def test_every_worker_exports_its_spans(tmp_path: pathlib.Path) -> None:
    """`--workers 2`: each worker samples and exports on its own; /metrics sums their counts."""
    port, admin = free_port(), free_port()  # workers share the port: it cannot be 0
    (tmp_path / "disco").mkdir()
    async with OtlpReceiver() as receiver, Upstream(name="accounts") as service:
        (tmp_path / "disco" / "accounts").write_text(service.address_line + "\n")
        config = process_config({"servers": [{"ip": "127.0.0.1", "port": port}]},
                                admin={"ip": "127.0.0.1", "port": admin}, tracing=tracing(receiver, 1.0, "meshd"))
        (tmp_path / "meshd.yaml").write_text(yaml.safe_dump(config))
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        with (tmp_path / "meshd.log").open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "meshd", "run", "-c", "meshd.yaml", "--workers", "2",
                cwd=tmp_path, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            )
        try:

            async def ready() -> bool:
                try:
                    return (await get(admin, "/admin/ready", "admin"))[0] == 200
                except OSError:
                    return False

            await wait_until(ready, timeout=30, message="meshd --workers 2 to be ready")
            for _ in range(20):  # a connection each: the kernel spreads them over the workers
                assert (await get(port, "/", "accounts"))[0] == 200
            spans = await receiver.wait_spans(40, timeout=15)

            async def all_counted() -> bool:
                text = (await get(admin, "/metrics", "admin"))[1]
                return "\nmeshd_trace_spans_exported_total 40.0\n" in text

            await wait_until(all_counted, timeout=10, message="40 spans counted as exported across the workers")
        finally:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 30)
    assert len(spans) == 40
    assert len({s.trace_id for s in spans}) == 20
