"""A test OTLP/HTTP trace receiver, and collectors that misbehave.

`OtlpReceiver` is a small aiohttp server with `POST /v1/traces`: it decodes each body as the
official `ExportTraceServiceRequest` (opentelemetry-proto) and keeps every span with its
resource's `service.name`, so tests assert on what a real collector would have stored. Its
`mode` makes it answer badly: `hang` (never answers), `error` (HTTP 500), `reject` (200 with an
OTLP partial success rejecting every span).

`GarbageCollector` answers every connection with bytes that are not HTTP and closes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.support.waiting import wait_until


@dataclass
class ReceivedSpan:
    """One span as the collector stored it: ids as hex text, attributes as plain values."""

    service: str
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    attributes: dict[str, object]
    status_code: int
    status_message: str
    start_ns: int
    end_ns: int

    @property
    def is_server(self) -> bool:
        return self.kind == Span.SPAN_KIND_SERVER

    @property
    def is_client(self) -> bool:
        return self.kind == Span.SPAN_KIND_CLIENT


def _value(any_value: object) -> object:
    which = any_value.WhichOneof("value")  # type: ignore[attr-defined]
    return getattr(any_value, which) if which is not None else None


@dataclass
class OtlpReceiver:
    mode: str = "ok"
    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: int = 0
    content_types: list[str] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    port: int = 0
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> OtlpReceiver:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def close(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> OtlpReceiver:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _traces(self, request: web.Request) -> web.Response:
        self.requests += 1
        self.content_types.append(request.headers.get("Content-Type", ""))
        body = await request.read()
        if self.mode == "hang":
            await self._release.wait()
        if self.mode == "error":
            return web.Response(status=500, text="collector broken")
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        count = 0
        for resource_spans in message.resource_spans:
            service = ""
            for kv in resource_spans.resource.attributes:
                if kv.key == "service.name":
                    service = kv.value.string_value
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    count += 1
                    self.spans.append(
                        ReceivedSpan(
                            service=service,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            name=span.name,
                            kind=span.kind,
                            attributes={kv.key: _value(kv.value) for kv in span.attributes},
                            status_code=span.status.code,
                            status_message=span.status.message,
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                        )
                    )
        answer = ExportTraceServiceResponse()
        if self.mode == "reject":
            answer.partial_success.rejected_spans = count
            answer.partial_success.error_message = "rejected by the test"
        return web.Response(body=answer.SerializeToString(), content_type="application/x-protobuf")

    async def wait_spans(self, count: int, *, timeout: float = 10.0) -> list[ReceivedSpan]:
        await wait_until(lambda: len(self.spans) >= count, timeout=timeout, message=f"{count} spans at the receiver")
        return self.spans

    def find(self, predicate: Callable[[ReceivedSpan], bool]) -> list[ReceivedSpan]:
        return [s for s in self.spans if predicate(s)]


class GarbageCollector:
    """Accepts connections and answers each with bytes that are not HTTP, then closes it."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0
        self._server: asyncio.base_events.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> GarbageCollector:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            await reader.read(1024)
            writer.write(b"\x00\xffgarbage, not HTTP\r\n\r\n\x16\x03")
            await writer.drain()
            writer.close()

        self._server = await asyncio.start_server(answer, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
