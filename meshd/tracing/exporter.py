"""The exporter: a background task that POSTs batches of finished spans to the OTLP collector.

The request path only appends to the tracer's bounded queue (meshd/tracing/spans.py). This task
wakes when a batch is ready or every `FLUSH_INTERVAL_S`, takes up to `BATCH_SPANS` spans,
encodes them (meshd/tracing/otlp.py) and sends them as one `POST <collector>/v1/traces`
(`Content-Type: application/x-protobuf`), one request at a time, each bounded by
`EXPORT_TIMEOUT_S`. Nothing is retried: a batch that fails is dropped and counted, and the next
attempt waits for the next flush interval, so a collector that is down costs one failed
connection a second. Meanwhile spans pile up to `MAX_QUEUE_SPANS` and then are dropped as they
finish (`queue_full`). Requests never wait for any of this.

Drop reasons (`meshd_trace_spans_dropped_total{reason}`):
- `queue_full`: the queue was full when the span ended (collector slow, down or hanging);
- `unreachable`: the collector could not be connected to;
- `timeout`: no complete answer within `EXPORT_TIMEOUT_S`;
- `bad_response`: an answer that is not HTTP, a non-2xx status, or a 2xx body that is not an
  OTLP response;
- `rejected`: the collector accepted the request but said it rejected that many spans;
- `shutdown`: still queued when meshd stopped and the last flush could not send them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

import aiohttp

from meshd.clock import MONOTONIC, Clock
from meshd.tracing.otlp import encode_spans, rejected_spans
from meshd.tracing.spans import Tracer

log = logging.getLogger("meshd.tracing")

#: a partial batch waits at most this long before it is sent
FLUSH_INTERVAL_S: Final = 1.0
#: one export request (connect, send, answer) may take at most this long
EXPORT_TIMEOUT_S: Final = 2.0
#: at shutdown, the last flush may take at most this long in all
SHUTDOWN_FLUSH_S: Final = 2.0


class Exporter:
    """Sends a tracer's spans to its collector (`Tracer.collector`, read at every batch)."""

    def __init__(
        self,
        tracer: Tracer,
        *,
        flush_interval_s: float = FLUSH_INTERVAL_S,
        timeout_s: float = EXPORT_TIMEOUT_S,
        clock: Clock = MONOTONIC,
    ) -> None:
        self.tracer = tracer
        #: the flush interval and the export timeout are waited on meshd's clock (meshd/clock.py)
        self._clock = clock
        self._flush_interval_s = flush_interval_s
        self._timeout_s = timeout_s
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        #: export requests by outcome (for tests and the log): ok, or a drop reason
        self.batches: dict[str, int] = {}
        self._last_error = ""

    def start(self) -> None:
        self.tracer.wake = self._ready.set
        self._task = asyncio.get_running_loop().create_task(self._run(), name="trace exporter")

    async def close(self) -> None:
        """Stop the task, try one last flush (bounded), and count what is left as dropped."""
        self.tracer.wake = None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            async with self._clock.timeout(SHUTDOWN_FLUSH_S):
                while self.tracer.queue:
                    if not await self.export_batch():
                        break
        except TimeoutError:
            pass
        left = len(self.tracer.queue)
        if left:
            self.tracer.queue.clear()
            self.tracer.drop("shutdown", left)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        ready = self._ready
        while True:
            with contextlib.suppress(TimeoutError):
                async with self._clock.timeout(self._flush_interval_s):
                    await ready.wait()
            ready.clear()
            while self.tracer.queue:
                if not await self.export_batch():
                    break  # the collector failed: try again at the next interval
                if len(self.tracer.queue) < self.tracer.batch_size:
                    break  # a partial batch waits for the interval (or for a full one)

    async def export_batch(self) -> bool:
        """Send one batch; True when the collector took it. Failures are counted, never raised."""
        tracer = self.tracer
        batch = tracer.take(tracer.batch_size)
        if not batch:
            return True
        url = tracer.collector
        try:
            body = encode_spans(batch, tracer.service_name)
        except Exception as exc:  # a bug, not the collector's fault: never let it stop the task
            log.exception("encoding %d spans failed", len(batch))
            return self._failed("bad_response", len(batch), f"encode: {exc}")
        session = self._session
        if session is None or session.closed:
            session = self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=1),
                timeout=aiohttp.ClientTimeout(total=None),
                skip_auto_headers=("User-Agent",),
            )
        try:
            async with self._clock.timeout(self._timeout_s):
                async with session.post(
                    url, data=body, headers={"Content-Type": "application/x-protobuf"}
                ) as response:
                    answer = await response.read()
                    status = response.status
        except TimeoutError:
            return self._failed("timeout", len(batch), f"no answer from {url} within {self._timeout_s:g} s")
        except aiohttp.ClientConnectorError as exc:
            return self._failed("unreachable", len(batch), f"{url}: {exc}")
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return self._failed("bad_response", len(batch), f"{url}: {type(exc).__name__}: {exc}")
        if not 200 <= status < 300:
            return self._failed("bad_response", len(batch), f"{url} answered {status}")
        try:
            rejected = min(rejected_spans(answer), len(batch))
        except ValueError as exc:
            return self._failed("bad_response", len(batch), f"{url}: {exc}")
        if rejected:
            tracer.drop("rejected", rejected)
        tracer.exported += len(batch) - rejected
        self.batches["ok"] = self.batches.get("ok", 0) + 1
        if self._last_error:
            log.info("trace collector %s accepts spans again", url)
            self._last_error = ""
        return True

    def _failed(self, reason: str, count: int, message: str) -> bool:
        self.tracer.drop(reason, count)
        self.batches[reason] = self.batches.get(reason, 0) + 1
        if message != self._last_error:  # once per distinct failure, not once a second
            log.warning("trace export failed, %d spans dropped (%s): %s", count, reason, message)
            self._last_error = message
        return False
