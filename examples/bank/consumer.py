"""A consumer of the event log: one member of a consumer group, running in a service's own process.

How this works: the loop asks `events` (through meshd, `Host: events`) for a batch of its group's events,
long-polling up to a second when there are none, hands each to the service's handler, then acknowledges the
batch. A handler that finds a peer down (the log, the ledger: it raises `Unavailable`) is retried in place with
backoff, and if the peer stays down the rest of the batch is left to come back after the ack wait: an outage
never spends an event's deliveries. A handler that fails otherwise (the event itself is bad) refuses it
(`nack`): it is delivered again, and after `--max-deliveries` failures it goes to the dead-letter topic
instead of stalling the group. A consumer that dies mid-batch loses nothing: whatever it did not acknowledge is
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
TRANSIENT_ATTEMPTS: Final = 6

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Event:
    topic: str
    id: str
    offset: int
    deliveries: int
    payload: JsonObject


Handler = Callable[[Event], Awaitable[bool]]
"""Does the event's work; answers True if it was new, False if it had been done before. Raises Unavailable
when a peer is down (retried in place), anything else to refuse the event (it counts toward dead-lettering)."""


class ConsumerStats:
    def __init__(self) -> None:
        self.handled = 0
        self.duplicates = 0
        self.redelivered = 0
        self.failures = 0
        self.retries = 0

    def __repr__(self) -> str:
        return f"ConsumerStats({self.to_json()})"

    def to_json(self) -> dict[str, int]:
        return {
            "handled": self.handled,
            "duplicates": self.duplicates,
            "redelivered": self.redelivered,
            "failures": self.failures,
            "retries": self.retries,
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
                new = await self._handle_retrying(event)
            except Unavailable as exc:
                # A peer or the log is down, not the event at fault: leave this event and the rest of the batch
                # unsettled (they come back after the ack wait) rather than spend their deliveries.
                _log.warning("%s/%s: giving up on the batch for now: %s", self.topic, self.group, exc)
                break
            except (
                Exception
            ) as exc:  # the event itself fails: refused, it comes back, and dead-letters in the end
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

    async def _handle_retrying(self, event: Event) -> bool:
        """Run the handler; while it reports Unavailable (or cannot reach meshd), retry in place with backoff
        (50 ms doubling, TRANSIENT_ATTEMPTS tries, about 6 s), then raise Unavailable."""
        backoff = FIRST_BACKOFF_SECS
        for attempt in range(1, TRANSIENT_ATTEMPTS + 1):
            try:
                return await self._handler(event)
            except (Unavailable, MeshUnavailable) as exc:
                self.stats.retries += 1
                if attempt == TRANSIENT_ATTEMPTS:
                    raise Unavailable(str(exc)) from exc
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECS)
        raise AssertionError("unreachable")

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


class Unavailable(Exception):
    """Raised by a handler when a peer it needs (the log, the ledger) is down or answered 5xx: the event is
    retried in place, and never counted as a failed delivery."""


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
