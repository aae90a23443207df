"""A consumer of the event log: one member of a consumer group, running in a service's own process.

How this works: the loop asks `events` (through meshd, `Host: events`) for a batch of its group's events,
long-polling up to a second when there are none, hands each to the service's handler, then acknowledges the
batch. A handler that fails (raises) leaves its event unacknowledged and tells the log at once (`nack`), so it
is delivered again, and after `--max-deliveries` failures it goes to the dead-letter topic instead of
stalling the group. A consumer that dies mid-batch loses nothing: whatever it did not acknowledge is
delivered again after the ack wait. Deliveries are at least once, so every handler is idempotent by event id
(the authorisation id), and reports whether the event was new to it: `duplicates` counts the events that
were delivered again after their work was already done, which the demo shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from examples.bank.mesh import MESH, MeshClient, MeshUnavailable
from examples.bank.payloads import JsonObject

FETCH_BATCH: Final = 50
FETCH_WAIT_MS: Final = 1000
FIRST_BACKOFF_SECS: Final = 0.05
MAX_BACKOFF_SECS: Final = 2.0

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Event:
    topic: str
    id: str
    offset: int
    deliveries: int
    payload: JsonObject


Handler = Callable[[Event], Awaitable[bool]]
"""Does the event's work; answers True if it was new, False if it had been done before. Raises to refuse."""


class ConsumerStats:
    def __init__(self) -> None:
        self.handled = 0
        self.duplicates = 0
        self.redelivered = 0
        self.failures = 0

    def __repr__(self) -> str:
        return f"ConsumerStats({self.to_json()})"

    def to_json(self) -> dict[str, int]:
        return {
            "handled": self.handled,
            "duplicates": self.duplicates,
            "redelivered": self.redelivered,
            "failures": self.failures,
        }


class EventConsumer:
    def __init__(self, mesh: MeshClient, topic: str, group: str, handler: Handler) -> None:
        self._mesh = mesh
        self.topic = topic
        self.group = group
        self._handler = handler
        self.stats = ConsumerStats()

    def __repr__(self) -> str:
        return f"EventConsumer({self.topic}, {self.group})"

    async def poll_once(self, *, wait_ms: int = FETCH_WAIT_MS) -> int:
        """Fetch one batch, handle it, settle it; answers how many events were handled. Raises
        MeshUnavailable or ConsumeFailed when the log could not be asked."""
        base = f"/topics/{self.topic}/groups/{self.group}"
        reply = await self._mesh.call(
            "events", "POST", f"{base}/fetch", body={"max": FETCH_BATCH, "wait_ms": wait_ms}
        )
        if not reply.ok:
            raise ConsumeFailed(
                f"fetch answered {reply.status}: {reply.headers.get('l5d-err') or reply.body}"
            )
        raw = reply.body.get("events")
        events = [_event(self.topic, item) for item in raw] if isinstance(raw, list) else []
        done: list[str] = []
        refused: list[str] = []
        for event, receipt in events:
            try:
                new = await self._handler(event)
            except Exception as exc:  # the event is refused and comes back; the loop goes on
                self.stats.failures += 1
                _log.warning("%s/%s: event %s failed: %s", self.topic, self.group, event.id, exc)
                refused.append(receipt)
                continue
            self.stats.handled += 1
            self.stats.duplicates += not new
            self.stats.redelivered += event.deliveries > 1
            done.append(receipt)
        if done:
            await self._settle(f"{base}/ack", done)
        if refused:
            await self._settle(f"{base}/nack", refused)
        return len(done)

    async def run(self) -> None:
        backoff = FIRST_BACKOFF_SECS
        while True:
            try:
                await self.poll_once()
            except (MeshUnavailable, ConsumeFailed) as exc:
                _log.warning("%s/%s: %s; retrying in %.2fs", self.topic, self.group, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECS)
                continue
            backoff = FIRST_BACKOFF_SECS

    async def _settle(self, path: str, receipts: list[str]) -> None:
        reply = await self._mesh.call("events", "POST", path, body={"receipts": receipts})
        if not reply.ok:  # not settled: the events come back after the ack wait, and are done again
            raise ConsumeFailed(f"{path} answered {reply.status}")


class ConsumeFailed(Exception):
    """The log answered a fetch or an acknowledgement with an error."""


def _event(topic: str, item: object) -> tuple[Event, str]:
    if not isinstance(item, dict):
        raise ConsumeFailed(f"malformed delivery: {item!r}")
    payload, receipt = item.get("payload"), item.get("receipt")
    if not isinstance(payload, dict) or not isinstance(receipt, str):
        raise ConsumeFailed(f"malformed delivery: {item!r}")
    return (
        Event(
            topic, str(item.get("id")), int(item.get("offset", 0)), int(item.get("deliveries", 1)), payload
        ),
        receipt,
    )


CONSUMERS: Final = web.AppKey[list[EventConsumer]]("consumers")


def attach_consumer(
    app: web.Application, topic: str, group: str, make_handler: Callable[[web.Application], Handler]
) -> None:
    """Run a consumer for as long as the app runs (needs the app's MESH). `GET /_consumers` shows its stats."""
    if CONSUMERS not in app:
        app[CONSUMERS] = []
        app.router.add_get("/_consumers", _show_consumers)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        consumer = EventConsumer(app[MESH], topic, group, make_handler(app))
        app[CONSUMERS].append(consumer)
        task = asyncio.create_task(consumer.run(), name=f"consumer-{topic}-{group}")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(lifecycle)


async def _show_consumers(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "consumers": [
                {"topic": c.topic, "group": c.group, **c.stats.to_json()} for c in request.app[CONSUMERS]
            ]
        }
    )
