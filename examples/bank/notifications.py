"""The notifications service: records the push messages the bank sends to customers' phones.

`PUT /notifications/{auth_id}` with `{"customer_id", "message"}` records one push; keyed by the authorisation
id, so a retried send never buzzes a phone twice. `GET /notifications[?customer_id=]` lists them.

Run `python -m examples.bank.notifications --port P --db notifications.db --replica notifications-1`.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Final

from aiohttp import web

from examples.bank.authorisation import ENRICHED_TOPIC, event_decision, notification_text, request_of_event
from examples.bank.consumer import Event, Handler, attach_consumer
from examples.bank.mesh import attach_mesh
from examples.bank.options import ServiceOptions
from examples.bank.payloads import field_str, read_object
from examples.bank.replica import create_replica_app
from examples.bank.serve import serve
from examples.bank.storage import DATABASE, Database, attach_database

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS pushes (
    auth_id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    message TEXT NOT NULL,
    sent_at REAL NOT NULL
);
"""


def create_app(options: ServiceOptions) -> web.Application:
    app = create_replica_app(options)
    attach_database(app, options.db, SCHEMA)
    app.router.add_put("/notifications/{auth_id}", _push)
    app.router.add_get("/notifications", _list)
    if options.events:
        attach_mesh(app, options.meshd)
        attach_consumer(app, ENRICHED_TOPIC, "notifications", _push_handler)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    serve("notifications", create_app, argv)


async def _push(request: web.Request) -> web.Response:
    auth_id = request.match_info["auth_id"]
    body = await read_object(request)
    push = (auth_id, field_str(body, "customer_id"), field_str(body, "message"), time.time())
    created = await record_push(request.app[DATABASE], push)
    return web.json_response({"auth_id": auth_id, "created": created}, status=201 if created else 200)


async def record_push(database: Database, push: tuple[str, str, str, float]) -> bool:
    """Record the push unless its authorisation id has one already; answers whether it was new."""

    def work(db: sqlite3.Connection) -> bool:
        cursor = db.execute(
            "INSERT OR IGNORE INTO pushes (auth_id, customer_id, message, sent_at) VALUES (?, ?, ?, ?)", push
        )
        return cursor.rowcount == 1

    return await database.write(work)


def _push_handler(app: web.Application) -> Handler:
    """Notifications as a consumer of enriched decisions: one push per approved or declined card payment."""

    async def handle(event: Event) -> bool:
        decision, reason = event_decision(event.payload)
        request = request_of_event(event.payload)
        merchant = event.payload.get("merchant_name")
        text = notification_text(request, decision, reason, merchant if isinstance(merchant, str) else None)
        return await record_push(app[DATABASE], (request.auth_id, request.account_id, text, time.time()))

    return handle


async def _list(request: web.Request) -> web.Response:
    customer_id = request.query.get("customer_id")
    query = "SELECT auth_id, customer_id, message, sent_at FROM pushes"

    def work(db: sqlite3.Connection) -> list[sqlite3.Row]:
        if customer_id is None:
            return db.execute(query + " ORDER BY sent_at").fetchall()
        return db.execute(query + " WHERE customer_id = ? ORDER BY sent_at", (customer_id,)).fetchall()

    rows = await request.app[DATABASE].read(work)
    return web.json_response({"notifications": [dict(row) for row in rows]})


if __name__ == "__main__":
    main()
