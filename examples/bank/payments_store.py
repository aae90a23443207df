"""The payments service's database: authorisation records, the claims that serialise duplicates, and the outbox.

How this works: an authorisation id is first *claimed* by inserting its row with decision `pending`. A second
request with the same id (a retry, or a duplicate on another replica) finds the row and waits for the decision
instead of running the flow a second time beside the first. A claim is a lease: if the replica holding it
dies, another request takes it over once `lease_secs` have passed and runs the flow again, which is safe
because every downstream write is idempotent by the authorisation id.

The decision and its after-response steps (the outbox rows) are written in one transaction, and only by the
request that still holds the claim. A step row stays `pending` until the step is known to be done; nothing is
ever deleted, so a failed step is visible in `GET /outbox` and `POST /outbox/replay` finishes it later.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from examples.bank.authorisation import STEP_ORDER, AuthRequest, Outcome, Step
from examples.bank.payloads import JsonObject
from examples.bank.storage import Database

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS authorisations (
    auth_id TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    account_id TEXT NOT NULL,
    merchant_id TEXT NOT NULL,
    amount INTEGER NOT NULL,
    decision TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    merchant_name TEXT,
    category TEXT,
    claimed_at REAL NOT NULL,
    decided_at REAL
);
CREATE TABLE IF NOT EXISTS outbox (
    auth_id TEXT NOT NULL REFERENCES authorisations (auth_id),
    step TEXT NOT NULL,
    position INTEGER NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL,
    PRIMARY KEY (auth_id, step)
);
CREATE INDEX IF NOT EXISTS outbox_by_status ON outbox (status, auth_id);
CREATE TABLE IF NOT EXISTS event_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    event_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    published_at REAL,
    UNIQUE (topic, event_id)
);
CREATE INDEX IF NOT EXISTS event_outbox_by_status ON event_outbox (status, seq);
"""

PENDING: Final = "pending"
DEFAULT_LEASE_SECS: Final = 5.0
CLAIM_POLL_SECS: Final = 0.02

ClaimKind = Literal["claimed", "decided", "conflict"]


@dataclass(frozen=True, slots=True)
class AuthorisationRecord:
    request: AuthRequest
    decision: str
    reason: str
    merchant_name: str | None
    category: str | None

    @property
    def is_decided(self) -> bool:
        return self.decision != PENDING


@dataclass(frozen=True, slots=True)
class Claim:
    kind: ClaimKind
    record: AuthorisationRecord | None = None


@dataclass(frozen=True, slots=True)
class OutgoingEvent:
    """An event written with the decision, for the relay to publish: `seq` orders them."""

    seq: int
    topic: str
    event_id: str
    payload: dict[str, object]


@dataclass(frozen=True, slots=True)
class OutboxRow:
    auth_id: str
    step: Step
    status: str
    attempts: int
    last_error: str

    def to_json(self) -> dict[str, object]:
        return {
            "auth_id": self.auth_id,
            "step": self.step,
            "status": self.status,
            "attempts": self.attempts,
            "last_error": self.last_error,
        }


class PaymentsStore:
    """All reads and writes of the payments database. `now` is wall-clock time: leases are compared across
    processes."""

    def __init__(
        self, db: Database, *, now: Callable[[], float] = time.time, lease_secs: float = DEFAULT_LEASE_SECS
    ) -> None:
        self._db = db
        self._now = now
        self._lease_secs = lease_secs

    def __repr__(self) -> str:
        return f"PaymentsStore({self._db!r}, lease_secs={self._lease_secs})"

    async def claim(self, request: AuthRequest) -> Claim:
        """Claim the id, or learn its decision; waits while another live request holds the claim."""
        async with asyncio.timeout(self._lease_secs * 2 + 1):
            while True:
                claim = await self._db.write(lambda db: self._try_claim(db, request))
                if claim is not None:
                    return claim
                await asyncio.sleep(CLAIM_POLL_SECS)

    async def finish(
        self, request: AuthRequest, outcome: Outcome, *, events: Sequence[tuple[str, str, JsonObject]] = ()
    ) -> AuthorisationRecord:
        """Record the decision and queue its steps and its events (topic, id, payload), unless another request
        finished first; answers the record that stands. All of it is one transaction: the transactional
        outbox, so an event exists exactly when its decision does."""
        now = self._now()

        def work(db: sqlite3.Connection) -> AuthorisationRecord:
            cursor = db.execute(
                "UPDATE authorisations SET decision = ?, reason = ?, decided_at = ? "
                "WHERE auth_id = ? AND decision = ?",
                (outcome.decision, outcome.reason, now, request.auth_id, PENDING),
            )
            if cursor.rowcount == 1:
                db.executemany(
                    "INSERT INTO outbox (auth_id, step, position, status, updated_at) VALUES (?, ?, ?, ?, ?)",
                    [(request.auth_id, step, STEP_ORDER.index(step), PENDING, now) for step in outcome.steps],
                )
                db.executemany(
                    "INSERT OR IGNORE INTO event_outbox (topic, event_id, payload, status, created_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [
                        (topic, event_id, json.dumps(payload), PENDING, now)
                        for topic, event_id, payload in events
                    ],
                )
            record = _record(db, request.auth_id)
            if record is None:
                raise LookupError(f"authorisation {request.auth_id} vanished while being decided")
            return record

        return await self._db.write(work)

    async def abandon(self, auth_id: str) -> None:
        """Forget a claim whose flow wrote nothing anywhere, so the same id may be tried again."""
        await self._db.write(
            lambda db: db.execute(
                "DELETE FROM authorisations WHERE auth_id = ? AND decision = ?", (auth_id, PENDING)
            )
        )

    async def get(self, auth_id: str) -> AuthorisationRecord | None:
        return await self._db.read(lambda db: _record(db, auth_id))

    async def set_enrichment(self, auth_id: str, merchant_name: str, category: str) -> None:
        await self._db.write(
            lambda db: db.execute(
                "UPDATE authorisations SET merchant_name = ?, category = ? WHERE auth_id = ?",
                (merchant_name, category, auth_id),
            )
        )

    async def pending_steps(self, auth_id: str) -> list[OutboxRow]:
        return await self._db.read(
            lambda db: _rows(db, "WHERE auth_id = ? AND status = ? ORDER BY position", (auth_id, PENDING))
        )

    async def auth_ids_with_pending_steps(self, limit: int) -> list[str]:
        rows = await self._db.read(
            lambda db: db.execute(
                "SELECT DISTINCT auth_id FROM outbox WHERE status = ? ORDER BY auth_id LIMIT ?",
                (PENDING, limit),
            ).fetchall()
        )
        return [str(row["auth_id"]) for row in rows]

    async def all_pending(self, limit: int) -> list[OutboxRow]:
        return await self._db.read(
            lambda db: _rows(db, "WHERE status = ? ORDER BY auth_id, position LIMIT ?", (PENDING, limit))
        )

    async def mark_done(self, auth_id: str, step: Step, attempts: int) -> None:
        await self._update_step(auth_id, step, "done", attempts, "")

    async def mark_failed(self, auth_id: str, step: Step, attempts: int, error: str) -> None:
        await self._update_step(auth_id, step, PENDING, attempts, error)

    async def unpublished_events(self, limit: int) -> list[OutgoingEvent]:
        rows = await self._db.read(
            lambda db: db.execute(
                "SELECT seq, topic, event_id, payload FROM event_outbox WHERE status = ? ORDER BY seq LIMIT ?",
                (PENDING, limit),
            ).fetchall()
        )
        return [
            OutgoingEvent(int(r["seq"]), str(r["topic"]), str(r["event_id"]), json.loads(r["payload"]))
            for r in rows
        ]

    async def mark_events(self, seqs: Sequence[int], status: str, error: str = "") -> None:
        """`published`, `rejected` (the log refused them as malformed: kept, shown, never retried), or still
        `pending` with the error of a failed attempt."""
        now = self._now()
        await self._db.write(
            lambda db: db.executemany(
                "UPDATE event_outbox SET status = ?, attempts = attempts + 1, last_error = ?, "
                "published_at = CASE WHEN ? = 'published' THEN ? ELSE published_at END WHERE seq = ?",
                [(status, error, status, now, seq) for seq in seqs],
            )
        )

    async def event_outbox_counts(self) -> dict[str, int]:
        rows = await self._db.read(
            lambda db: db.execute("SELECT status, COUNT(*) AS n FROM event_outbox GROUP BY status").fetchall()
        )
        return {str(row["status"]): int(row["n"]) for row in rows}

    async def outbox_counts(self) -> dict[str, int]:
        rows = await self._db.read(
            lambda db: db.execute("SELECT status, COUNT(*) AS n FROM outbox GROUP BY status").fetchall()
        )
        return {str(row["status"]): int(row["n"]) for row in rows}

    def _try_claim(self, db: sqlite3.Connection, request: AuthRequest) -> Claim | None:
        now = self._now()
        row = db.execute(
            "SELECT fingerprint, decision, claimed_at FROM authorisations WHERE auth_id = ?",
            (request.auth_id,),
        ).fetchone()
        if row is None:
            db.execute(
                "INSERT INTO authorisations (auth_id, fingerprint, account_id, merchant_id, amount, decision, "
                "claimed_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    request.auth_id,
                    request.fingerprint,
                    request.account_id,
                    request.merchant_id,
                    request.amount,
                    PENDING,
                    now,
                ),
            )
            return Claim("claimed")
        if row["fingerprint"] != request.fingerprint:
            return Claim("conflict", _record(db, request.auth_id))
        if row["decision"] != PENDING:
            return Claim("decided", _record(db, request.auth_id))
        if now - float(row["claimed_at"]) >= self._lease_secs:
            db.execute("UPDATE authorisations SET claimed_at = ? WHERE auth_id = ?", (now, request.auth_id))
            return Claim("claimed")  # the holder died (or stalled past its lease): take over
        return None

    async def _update_step(self, auth_id: str, step: Step, status: str, attempts: int, error: str) -> None:
        now = self._now()
        await self._db.write(
            lambda db: db.execute(
                "UPDATE outbox SET status = ?, attempts = attempts + ?, last_error = ?, updated_at = ? "
                "WHERE auth_id = ? AND step = ?",
                (status, attempts, error, now, auth_id, step),
            )
        )


def _record(db: sqlite3.Connection, auth_id: str) -> AuthorisationRecord | None:
    row = db.execute(
        "SELECT auth_id, account_id, merchant_id, amount, decision, reason, merchant_name, category "
        "FROM authorisations WHERE auth_id = ?",
        (auth_id,),
    ).fetchone()
    if row is None:
        return None
    request = AuthRequest(
        auth_id=str(row["auth_id"]),
        account_id=str(row["account_id"]),
        merchant_id=str(row["merchant_id"]),
        amount=int(row["amount"]),
    )
    name, category = row["merchant_name"], row["category"]
    return AuthorisationRecord(
        request,
        str(row["decision"]),
        str(row["reason"]),
        None if name is None else str(name),
        None if category is None else str(category),
    )


def _rows(db: sqlite3.Connection, where: str, parameters: tuple[object, ...]) -> list[OutboxRow]:
    rows = db.execute(f"SELECT auth_id, step, status, attempts, last_error FROM outbox {where}", parameters)
    return [
        OutboxRow(
            str(r["auth_id"]),
            _step(str(r["step"])),
            str(r["status"]),
            int(r["attempts"]),
            str(r["last_error"]),
        )
        for r in rows
    ]


def _step(name: str) -> Step:
    for step in STEP_ORDER:
        if step == name:
            return step
    raise ValueError(f"unknown outbox step {name!r}")
