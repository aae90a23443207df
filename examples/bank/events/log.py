"""The event log behind the `events` service: one interface, two engines (SQLite, NATS JetStream).

The interface is deliberately small, so that a third engine (Kafka) is a module and not a redesign:

- a **topic** is an append-only sequence of events numbered from 1 (its *offsets*);
- `publish` appends events, each under an **id** chosen by the publisher; publishing an id the topic already
  holds stores nothing and answers the offset it got the first time (`duplicate=True`), so a retried publish
  is stored once;
- a **consumer group** reads a topic through `fetch`: every event goes to one member of the group at a time,
  stays *in flight* until it is acknowledged (`ack`), and is handed out again when it was refused (`nack`) or
  when `ack_wait_secs` passed without an answer. Each delivery says how many times the event has been
  delivered to the group, which is what the service's dead-letter rule counts;
- `reset` moves a group to an offset or to the first event published at or after a time; what it had in
  flight is forgotten, and everything from that point on is delivered again;
- `lag` is how many events the group has not acknowledged yet (never delivered, plus in flight).

A `receipt` is what a consumer hands back to acknowledge one delivery. It is an opaque string so that any
replica of the events service can take the acknowledgement (SQLite: the offset; NATS: the JetStream ack subject).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

NAME: Final = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
"""Topic and group names: lower-case letters, digits and '-', at most 63 characters."""

DEAD_LETTER_PREFIX: Final = "dlq."


def dead_letter_topic(topic: str, group: str) -> str:
    """Where a group's dead letters from `topic` go: `dlq.<topic>.<group>` (dots never occur in plain names)."""
    return f"{DEAD_LETTER_PREFIX}{topic}.{group}"


def is_dead_letter_topic(topic: str) -> bool:
    return topic.startswith(DEAD_LETTER_PREFIX)


def valid_topic(topic: str) -> bool:
    if is_dead_letter_topic(topic):
        parts = topic[len(DEAD_LETTER_PREFIX) :].split(".")
        return len(parts) == 2 and all(NAME.match(part) for part in parts)
    return NAME.match(topic) is not None


def valid_group(group: str) -> bool:
    return NAME.match(group) is not None


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to publish: the publisher's id (the idempotency key) and a JSON object.

    `origin` is set only on dead letters: the topic, group and offset the event failed on, and how often.
    """

    id: str
    payload: Mapping[str, object]
    origin: Mapping[str, object] | None = None


@dataclass(frozen=True, slots=True)
class Published:
    id: str
    offset: int
    duplicate: bool

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "offset": self.offset, "duplicate": self.duplicate}


@dataclass(frozen=True, slots=True)
class StoredEvent:
    topic: str
    offset: int
    id: str
    payload: Mapping[str, object]
    published_at: float
    origin: Mapping[str, object] | None = None

    def to_json(self) -> dict[str, object]:
        document: dict[str, object] = {
            "id": self.id,
            "offset": self.offset,
            "payload": dict(self.payload),
            "published_at": self.published_at,
        }
        if self.origin is not None:
            document["origin"] = dict(self.origin)
        return document


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event handed to one member of a group; `deliveries` counts this one (1 the first time)."""

    event: StoredEvent
    deliveries: int
    receipt: str

    def to_json(self) -> dict[str, object]:
        return self.event.to_json() | {"deliveries": self.deliveries, "receipt": self.receipt}


@dataclass(frozen=True, slots=True)
class GroupLag:
    topic: str
    group: str
    pending: int
    """Published, not yet delivered to the group."""
    in_flight: int
    """Delivered, not yet acknowledged."""
    last_offset: int

    @property
    def lag(self) -> int:
        return self.pending + self.in_flight

    def to_json(self) -> dict[str, object]:
        return {
            "topic": self.topic,
            "group": self.group,
            "lag": self.lag,
            "pending": self.pending,
            "in_flight": self.in_flight,
            "last_offset": self.last_offset,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class LogSettings:
    """What every engine is configured with (the service's command line sets these)."""

    ack_wait_secs: float = 30.0
    retention_secs: float = 7 * 24 * 3600.0
    duplicate_window_secs: float = 3600.0
    max_fetch: int = 100

    def __post_init__(self) -> None:
        if self.ack_wait_secs <= 0:
            raise ValueError(f"ack_wait_secs must be positive, got {self.ack_wait_secs}")
        if self.retention_secs <= 0:
            raise ValueError(f"retention_secs must be positive, got {self.retention_secs}")
        if self.duplicate_window_secs <= 0:
            raise ValueError(f"duplicate_window_secs must be positive, got {self.duplicate_window_secs}")


class LogUnavailable(Exception):
    """The engine could not be reached or did not answer in time (the service answers 503)."""


class UnknownReceipt(ValueError):
    """A receipt this group never issued (the service answers 400)."""


class EventLog(Protocol):
    """What the events service needs from an engine. Every method may raise LogUnavailable."""

    async def publish(self, topic: str, events: Sequence[NewEvent]) -> list[Published]:
        """Append the events in order; an id already in the topic is not stored again."""

    async def fetch(self, topic: str, group: str, *, limit: int, wait_secs: float) -> list[Delivery]:
        """Up to `limit` deliveries for one member of the group, redeliveries first; waits up to `wait_secs`
        for the first one when there is none yet. A group is created on its first fetch, at offset 1."""

    async def ack(self, topic: str, group: str, receipts: Sequence[str]) -> int:
        """Acknowledge deliveries; answers how many were taken (SQLite: how many were still in flight).
        Acknowledging twice is harmless."""

    async def nack(self, topic: str, group: str, receipts: Sequence[str]) -> int:
        """Give deliveries back: they are delivered again at once (and count as failed deliveries)."""

    async def reset(self, topic: str, group: str, *, offset: int | None, at_time: float | None) -> int:
        """Start the group again at `offset`, or at the first event published at or after `at_time`;
        answers the offset the group's next delivery will have (the topic's next offset if none is left)."""

    async def read(self, topic: str, *, from_offset: int, limit: int) -> list[StoredEvent]:
        """Events from `from_offset` on, without any group: what an operator or a check reads."""

    async def lag(self, topic: str, group: str) -> GroupLag:
        """The group's lag (a group never fetched from counts every retained event as pending)."""

    async def groups(self) -> list[GroupLag]:
        """Every group the log knows, with its lag."""

    async def close(self) -> None:
        """Release connections and files."""
