"""The embedded engine: the event log in one SQLite file, shared by every replica of the events service.

How this works: `events` holds each topic's events under consecutive offsets (a per-topic counter in `topics`),
with a unique index on (topic, id) that makes a retried publish land on the event stored the first time.
A group is a row in `groups` holding the next offset it has not been given yet, and a row in `inflight` per
event delivered and not acknowledged, with its delivery count and the time it becomes visible again. A fetch
is one write transaction (`BEGIN IMMEDIATE`): it takes the in-flight events whose time is up, then new events
from the group's next offset, so two replicas fetching at once never hand out the same event. Acknowledging
deletes the in-flight row. Times are wall-clock seconds, because replicas in different processes compare them.

Retention: events older than `retention_secs` are deleted (checked at most once a minute, on publish), and
with them their ids, so a publish of the same id after that is stored again.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from examples.bank.events.log import (
    Delivery,
    GroupLag,
    LogSettings,
    NewEvent,
    Published,
    StoredEvent,
    UnknownReceipt,
)
from examples.bank.storage import Database

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS topics (
    topic TEXT PRIMARY KEY,
    last_offset INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    topic TEXT NOT NULL,
    seq INTEGER NOT NULL,
    id TEXT NOT NULL,
    payload TEXT NOT NULL,
    origin TEXT,
    published_at REAL NOT NULL,
    PRIMARY KEY (topic, seq)
);
CREATE UNIQUE INDEX IF NOT EXISTS events_by_id ON events (topic, id);
CREATE INDEX IF NOT EXISTS events_by_time ON events (topic, published_at);
CREATE TABLE IF NOT EXISTS groups (
    topic TEXT NOT NULL,
    grp TEXT NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, grp)
);
CREATE TABLE IF NOT EXISTS inflight (
    topic TEXT NOT NULL,
    grp TEXT NOT NULL,
    seq INTEGER NOT NULL,
    deliveries INTEGER NOT NULL,
    visible_at REAL NOT NULL,
    PRIMARY KEY (topic, grp, seq)
);
"""

POLL_SECS: Final = 0.05
PRUNE_EVERY_SECS: Final = 60.0
_COLUMNS: Final = "topic, seq, id, payload, origin, published_at"


class SqliteLog:
    """The EventLog on a SQLite file. `now` is wall-clock time (in-flight deadlines are compared across
    processes); tests inject a fake one."""

    def __init__(self, db: Database, settings: LogSettings, *, now: Callable[[], float] = time.time) -> None:
        self._db = db
        self._settings = settings
        self._now = now
        self._pruned_at = float("-inf")

    def __repr__(self) -> str:
        return f"SqliteLog({self._db!r})"

    @classmethod
    async def open(
        cls, path: Path, settings: LogSettings, *, now: Callable[[], float] = time.time
    ) -> SqliteLog:
        return cls(await Database.open(path, SCHEMA), settings, now=now)

    async def close(self) -> None:
        await self._db.close()

    async def publish(self, topic: str, events: Sequence[NewEvent]) -> list[Published]:
        now = self._now()
        if now - self._pruned_at >= PRUNE_EVERY_SECS:
            self._pruned_at = now
            await self.prune()

        def work(db: sqlite3.Connection) -> list[Published]:
            last = _last_offset(db, topic)
            answers = []
            for event in events:
                row = db.execute(
                    "SELECT seq FROM events WHERE topic = ? AND id = ?", (topic, event.id)
                ).fetchone()
                if row is not None:
                    answers.append(Published(event.id, int(row["seq"]), True))
                    continue
                last += 1
                db.execute(
                    f"INSERT INTO events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        topic,
                        last,
                        event.id,
                        json.dumps(dict(event.payload)),
                        None if event.origin is None else json.dumps(dict(event.origin)),
                        now,
                    ),
                )
                answers.append(Published(event.id, last, False))
            db.execute(
                "INSERT INTO topics (topic, last_offset) VALUES (?, ?) "
                "ON CONFLICT (topic) DO UPDATE SET last_offset = excluded.last_offset",
                (topic, last),
            )
            return answers

        return await self._db.write(work)

    async def fetch(self, topic: str, group: str, *, limit: int, wait_secs: float) -> list[Delivery]:
        deadline = time.monotonic() + wait_secs
        while True:
            # Look first in a read transaction: waiting consumers then poll without taking the write lock.
            if await self._db.read(lambda db: self._ready(db, topic, group)):
                deliveries = await self._db.write(lambda db: self._take(db, topic, group, limit))
                if deliveries:
                    return deliveries
            if time.monotonic() >= deadline:
                return []
            await asyncio.sleep(min(POLL_SECS, max(0.0, deadline - time.monotonic())))

    async def ack(self, topic: str, group: str, receipts: Sequence[str]) -> int:
        offsets = [_offset_of(receipt) for receipt in receipts]

        def work(db: sqlite3.Connection) -> int:
            return sum(
                db.execute(
                    "DELETE FROM inflight WHERE topic = ? AND grp = ? AND seq = ?", (topic, group, offset)
                ).rowcount
                for offset in offsets
            )

        return await self._db.write(work)

    async def nack(self, topic: str, group: str, receipts: Sequence[str]) -> int:
        offsets = [_offset_of(receipt) for receipt in receipts]
        now = self._now()

        def work(db: sqlite3.Connection) -> int:
            return sum(
                db.execute(
                    "UPDATE inflight SET visible_at = ? WHERE topic = ? AND grp = ? AND seq = ?",
                    (now, topic, group, offset),
                ).rowcount
                for offset in offsets
            )

        return await self._db.write(work)

    async def reset(self, topic: str, group: str, *, offset: int | None, at_time: float | None) -> int:
        def work(db: sqlite3.Connection) -> int:
            last = _last_offset(db, topic)
            if offset is not None:
                start = offset
            else:
                row = db.execute(
                    "SELECT MIN(seq) AS seq FROM events WHERE topic = ? AND published_at >= ?",
                    (topic, at_time),
                ).fetchone()
                start = last + 1 if row["seq"] is None else int(row["seq"])
            start = min(max(start, 1), last + 1)
            db.execute("DELETE FROM inflight WHERE topic = ? AND grp = ?", (topic, group))
            db.execute(
                "INSERT INTO groups (topic, grp, next_offset) VALUES (?, ?, ?) "
                "ON CONFLICT (topic, grp) DO UPDATE SET next_offset = excluded.next_offset",
                (topic, group, start),
            )
            return start

        return await self._db.write(work)

    async def read(self, topic: str, *, from_offset: int, limit: int) -> list[StoredEvent]:
        rows = await self._db.read(
            lambda db: db.execute(
                f"SELECT {_COLUMNS} FROM events WHERE topic = ? AND seq >= ? ORDER BY seq LIMIT ?",
                (topic, from_offset, limit),
            ).fetchall()
        )
        return [_event(row) for row in rows]

    async def lag(self, topic: str, group: str) -> GroupLag:
        return await self._db.read(lambda db: _lag(db, topic, group))

    async def groups(self) -> list[GroupLag]:
        def work(db: sqlite3.Connection) -> list[GroupLag]:
            names = db.execute("SELECT topic, grp FROM groups ORDER BY topic, grp").fetchall()
            return [_lag(db, str(row["topic"]), str(row["grp"])) for row in names]

        return await self._db.read(work)

    async def prune(self) -> int:
        """Delete events older than the retention (and in-flight rows pointing at them)."""
        cutoff = self._now() - self._settings.retention_secs

        def work(db: sqlite3.Connection) -> int:
            db.execute(
                "DELETE FROM inflight WHERE EXISTS (SELECT 1 FROM events e WHERE e.topic = inflight.topic "
                "AND e.seq = inflight.seq AND e.published_at < ?)",
                (cutoff,),
            )
            return db.execute("DELETE FROM events WHERE published_at < ?", (cutoff,)).rowcount

        return await self._db.write(work)

    def _ready(self, db: sqlite3.Connection, topic: str, group: str) -> bool:
        """Is there anything to deliver to the group now?"""
        row = db.execute(
            "SELECT next_offset FROM groups WHERE topic = ? AND grp = ?", (topic, group)
        ).fetchone()
        next_offset = 1 if row is None else int(row["next_offset"])
        if db.execute(
            "SELECT 1 FROM events WHERE topic = ? AND seq >= ? LIMIT 1", (topic, next_offset)
        ).fetchone():
            return True
        return (
            db.execute(
                "SELECT 1 FROM inflight WHERE topic = ? AND grp = ? AND visible_at <= ? LIMIT 1",
                (topic, group, self._now()),
            ).fetchone()
            is not None
        )

    def _take(self, db: sqlite3.Connection, topic: str, group: str, limit: int) -> list[Delivery]:
        now = self._now()
        visible_again = now + self._settings.ack_wait_secs
        db.execute("INSERT OR IGNORE INTO groups (topic, grp, next_offset) VALUES (?, ?, 1)", (topic, group))
        taken: list[tuple[int, int]] = []
        for row in db.execute(
            "SELECT seq, deliveries FROM inflight WHERE topic = ? AND grp = ? AND visible_at <= ? "
            "ORDER BY seq LIMIT ?",
            (topic, group, now, limit),
        ).fetchall():
            taken.append((int(row["seq"]), int(row["deliveries"]) + 1))
        db.executemany(
            "UPDATE inflight SET deliveries = ?, visible_at = ? WHERE topic = ? AND grp = ? AND seq = ?",
            [(count, visible_again, topic, group, seq) for seq, count in taken],
        )
        if len(taken) < limit:
            next_offset = int(
                db.execute(
                    "SELECT next_offset FROM groups WHERE topic = ? AND grp = ?", (topic, group)
                ).fetchone()["next_offset"]
            )
            fresh = [
                int(row["seq"])
                for row in db.execute(
                    "SELECT seq FROM events WHERE topic = ? AND seq >= ? ORDER BY seq LIMIT ?",
                    (topic, next_offset, limit - len(taken)),
                )
            ]
            if fresh:
                db.executemany(
                    "INSERT OR REPLACE INTO inflight (topic, grp, seq, deliveries, visible_at) VALUES (?, ?, ?, 1, ?)",
                    [(topic, group, seq, visible_again) for seq in fresh],
                )
                db.execute(
                    "UPDATE groups SET next_offset = ? WHERE topic = ? AND grp = ?",
                    (fresh[-1] + 1, topic, group),
                )
                taken.extend((seq, 1) for seq in fresh)
        deliveries = []
        for seq, count in taken:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM events WHERE topic = ? AND seq = ?", (topic, seq)
            ).fetchone()
            if row is None:  # pruned while in flight: nothing left to deliver
                db.execute(
                    "DELETE FROM inflight WHERE topic = ? AND grp = ? AND seq = ?", (topic, group, seq)
                )
                continue
            deliveries.append(Delivery(_event(row), count, f"{seq}:{count}"))
        return deliveries


def _last_offset(db: sqlite3.Connection, topic: str) -> int:
    row = db.execute("SELECT last_offset FROM topics WHERE topic = ?", (topic,)).fetchone()
    return 0 if row is None else int(row["last_offset"])


def _lag(db: sqlite3.Connection, topic: str, group: str) -> GroupLag:
    row = db.execute("SELECT next_offset FROM groups WHERE topic = ? AND grp = ?", (topic, group)).fetchone()
    next_offset = 1 if row is None else int(row["next_offset"])
    pending = db.execute(
        "SELECT COUNT(*) AS n FROM events WHERE topic = ? AND seq >= ?", (topic, next_offset)
    ).fetchone()["n"]
    in_flight = db.execute(
        "SELECT COUNT(*) AS n FROM inflight WHERE topic = ? AND grp = ?", (topic, group)
    ).fetchone()["n"]
    return GroupLag(topic, group, int(pending), int(in_flight), _last_offset(db, topic))


def _event(row: sqlite3.Row) -> StoredEvent:
    origin = row["origin"]
    return StoredEvent(
        topic=str(row["topic"]),
        offset=int(row["seq"]),
        id=str(row["id"]),
        payload=json.loads(row["payload"]),
        published_at=float(row["published_at"]),
        origin=None if origin is None else json.loads(origin),
    )


def _offset_of(receipt: str) -> int:
    head, _, _ = receipt.partition(":")
    if not head.isdigit():
        raise UnknownReceipt(f"not a receipt of this log: {receipt!r}")
    return int(head)
