"""The feed service: each customer's list of card transactions, as their banking app shows it.

`PUT /feed/{customer_id}/{auth_id}` records one entry; the authorisation id is the key, so the payments
service may send the same entry again after a timeout without creating a second line (the first write wins
and a repeat is acknowledged with 200). `GET /feed/{customer_id}` lists a customer's entries, newest first;
`GET /feed` lists every entry (the demo's integrity check reads it).

Run `python -m examples.bank.feed --port P --db feed.db --replica feed-1`.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Final

from aiohttp import web

from examples.bank.authorisation import ENRICHED_TOPIC, event_decision, request_of_event
from examples.bank.consumer import Event, Handler, attach_consumer
from examples.bank.mesh import attach_mesh
from examples.bank.options import ServiceOptions
from examples.bank.payloads import field_int, field_str, read_object
from examples.bank.replica import create_replica_app
from examples.bank.serve import serve
from examples.bank.storage import DATABASE, Database, attach_database

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS entries (
    auth_id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    amount INTEGER NOT NULL,
    merchant_name TEXT NOT NULL,
    category TEXT NOT NULL,
    recorded_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_by_customer ON entries (customer_id, recorded_at);
"""

_COLUMNS: Final = "auth_id, customer_id, amount, merchant_name, category, recorded_at"


def create_app(options: ServiceOptions) -> web.Application:
    app = create_replica_app(options)
    attach_database(app, options.db, SCHEMA)
    app.router.add_put("/feed/{customer_id}/{auth_id}", _put_entry)
    app.router.add_get("/feed/{customer_id}", _customer_feed)
    app.router.add_get("/feed", _all_entries)
    if options.events:
        attach_mesh(app, options.meshd)
        attach_consumer(app, ENRICHED_TOPIC, "feed", _feed_handler)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    serve("feed", create_app, argv)


async def _put_entry(request: web.Request) -> web.Response:
    customer_id, auth_id = request.match_info["customer_id"], request.match_info["auth_id"]
    body = await read_object(request)
    entry = (
        auth_id,
        customer_id,
        field_int(body, "amount", minimum=0),
        field_str(body, "merchant_name"),
        field_str(body, "category"),
        time.time(),
    )
    created = await record_entry(request.app[DATABASE], entry)
    return web.json_response({"auth_id": auth_id, "created": created}, status=201 if created else 200)


async def record_entry(database: Database, entry: tuple[str, str, int, str, str, float]) -> bool:
    """Insert the entry unless its authorisation id has one already; answers whether it was new."""

    def work(db: sqlite3.Connection) -> bool:
        cursor = db.execute(f"INSERT OR IGNORE INTO entries ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", entry)
        return cursor.rowcount == 1

    return await database.write(work)


def _feed_handler(app: web.Application) -> Handler:
    """The feed as a consumer of enriched decisions: an approved card payment becomes one entry."""

    async def handle(event: Event) -> bool:
        decision, _ = event_decision(event.payload)
        if decision != "approved":
            return True
        request = request_of_event(event.payload)
        entry = (
            request.auth_id,
            request.account_id,
            request.amount,
            field_str(event.payload, "merchant_name"),
            field_str(event.payload, "category"),
            time.time(),
        )
        return await record_entry(app[DATABASE], entry)

    return handle


async def _customer_feed(request: web.Request) -> web.Response:
    customer_id = request.match_info["customer_id"]
    rows = await request.app[DATABASE].read(
        lambda db: db.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE customer_id = ? ORDER BY recorded_at DESC", (customer_id,)
        ).fetchall()
    )
    return web.json_response({"customer_id": customer_id, "entries": [dict(row) for row in rows]})


async def _all_entries(request: web.Request) -> web.Response:
    rows = await request.app[DATABASE].read(
        lambda db: db.execute(f"SELECT {_COLUMNS} FROM entries ORDER BY recorded_at").fetchall()
    )
    return web.json_response({"entries": [dict(row) for row in rows]})


if __name__ == "__main__":
    main()
