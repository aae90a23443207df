"""The outbox relay: publishes the events payments wrote with its decisions, through meshd, to `events`.

How this works: `payments` writes each decision and its event in one transaction (the event_outbox table), so
an event exists exactly when its decision does, and answering the card network never waits for the log. The
relay, a background task in every payments replica, reads unpublished rows in order and publishes them in
batches (`POST /topics/{topic}` with `Host: events`); a row is marked published only after the log answered.
When the log is unreachable or answers 5xx the rows stay and the relay tries again with backoff (50 ms
doubling to 2 s), so publishing never blocks a payment and the relay catches up once the log is back. A
batch the log refuses as malformed (400/413) is marked `rejected` with the answer, shown in `GET /outbox`,
and never blocks the rows after it.

Every row carries its event id (the authorisation id), so two replicas relaying the same row, or a publish
retried after a lost answer, store the event once. With a `Leadership` (the demo and the harness on the log),
only the replica holding the `outbox-relay` lock of the locks service relays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Final

from examples.bank.mesh import MeshClient, MeshUnavailable
from examples.bank.payments_store import OutgoingEvent, PaymentsStore

Sleep = Callable[[float], Awaitable[None]]

BATCH: Final = 100
RELAY_LOCK: Final = "outbox-relay"
LOCK_TTL_SECS: Final = 3.0
IDLE_POLL_SECS: Final = 1.0
FIRST_BACKOFF_SECS: Final = 0.05
MAX_BACKOFF_SECS: Final = 2.0

_log = logging.getLogger(__name__)


class Leadership:
    """Leader election for the relay through the locks service: only the holder of the `outbox-relay` lock
    publishes, so with several payments replicas exactly one relays at a time, and a killed leader is replaced
    within one TTL (3 s) plus one renewal interval (1 s).

    The lock is renewed every third of its TTL. If the locks service cannot be reached, this replica relays
    anyway: election only saves duplicate work, since a publish is idempotent by event id, and an outage of
    the locks service must not stop the bank's asynchronous side.
    """

    def __init__(
        self,
        mesh: MeshClient,
        holder: str,
        *,
        name: str = RELAY_LOCK,
        ttl_secs: float = LOCK_TTL_SECS,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self._mesh = mesh
        self.holder = holder
        self._name = name
        self._ttl_secs = ttl_secs
        self._now = now
        self._checked_at = float("-inf")
        self.leader = False
        self.term = 0
        self.terms_led: list[int] = []

    def __repr__(self) -> str:
        return f"Leadership({self._name}, holder={self.holder}, leader={self.leader}, term={self.term})"

    @property
    def renew_every_secs(self) -> float:
        return self._ttl_secs / 3

    async def is_leader(self) -> bool:
        if self._now() - self._checked_at < self.renew_every_secs:
            return self.leader
        self._checked_at = self._now()
        body: dict[str, object] = {"holder": self.holder, "ttl_ms": round(self._ttl_secs * 1000)}
        try:
            reply = await self._mesh.call("locks", "PUT", f"/locks/{self._name}", body=body)
        except MeshUnavailable as exc:
            _log.warning("relay: locks unreachable (%s); relaying without a lock", exc)
            self.leader = True
            return True
        if reply.status not in (200, 409):
            _log.warning("relay: locks answered %s; relaying without a lock", reply.status)
            self.leader = True
            return True
        term = reply.body.get("term")
        self.term = term if isinstance(term, int) else 0
        self.leader = reply.status == 200
        if self.leader and (not self.terms_led or self.terms_led[-1] != self.term):
            self.terms_led.append(self.term)
            _log.info("relay: %s leads the outbox relay (term %d)", self.holder, self.term)
        return self.leader

    def to_json(self) -> dict[str, object]:
        return {
            "holder": self.holder,
            "leader": self.leader,
            "term": self.term,
            "terms_led": list(self.terms_led),
        }


class EventRelay:
    """One relay per payments replica. `wake()` after writing a decision makes it publish at once; with a
    `leadership`, only the replica holding the relay lock publishes."""

    def __init__(
        self, store: PaymentsStore, mesh: MeshClient, *, leadership: Leadership | None = None
    ) -> None:
        self._store = store
        self._mesh = mesh
        self.leadership = leadership
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.published = 0
        self.failures = 0

    def __repr__(self) -> str:
        return f"EventRelay(published={self.published}, failures={self.failures})"

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="event-relay")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def wake(self) -> None:
        self._wake.set()

    async def relay_once(self) -> int:
        """Publish what is unpublished, batch by batch; answers how many rows were published. Raises
        MeshUnavailable or RelayFailed when the log could not take a batch (the rows stay)."""
        total = 0
        while rows := await self._store.unpublished_events(BATCH):
            by_topic: dict[str, list[OutgoingEvent]] = defaultdict(list)
            for row in rows:
                by_topic[row.topic].append(row)
            for topic, batch in by_topic.items():
                total += await self._publish(topic, batch)
        return total

    async def _publish(self, topic: str, batch: list[OutgoingEvent]) -> int:
        body: dict[str, object] = {"events": [{"id": row.event_id, "payload": row.payload} for row in batch]}
        reply = await self._mesh.call("events", "POST", f"/topics/{topic}", body=body)
        seqs = [row.seq for row in batch]
        if reply.ok:
            await self._store.mark_events(seqs, "published")
            self.published += len(seqs)
            return len(seqs)
        if reply.status in (400, 413):
            await self._store.mark_events(seqs, "rejected", f"HTTP {reply.status}: {reply.body}")
            _log.error("the event log refused %d events on %s: %s", len(seqs), topic, reply.body)
            return 0
        error = f"HTTP {reply.status}: {reply.headers.get('l5d-err') or reply.body}"
        await self._store.mark_events(seqs, "pending", error)
        raise RelayFailed(error)

    async def _run(self) -> None:
        backoff = FIRST_BACKOFF_SECS
        while True:
            self._wake.clear()
            if self.leadership is not None and not await self.leadership.is_leader():
                await asyncio.sleep(self.leadership.renew_every_secs)  # a follower waits for its next try
                continue
            try:
                await self.relay_once()
            except (MeshUnavailable, RelayFailed) as exc:
                self.failures += 1
                _log.warning("relay: publish failed, retrying in %.2fs: %s", backoff, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECS)
                continue
            backoff = FIRST_BACKOFF_SECS
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(IDLE_POLL_SECS):
                    await self._wake.wait()  # a new decision, or a poll for rows another replica left


class RelayFailed(Exception):
    """The log answered, but not with success: the rows stay pending with this error."""
