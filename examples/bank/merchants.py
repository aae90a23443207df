"""The merchants service: enrichment data (display name, category) for the merchant ids on card authorisations.

The catalogue is written into the service's database when a replica starts (idempotently), so every replica
answers the same. `GET /merchants/{id}` answers the record or 404; `PUT /merchants/{id}` adds or changes one.

Run `python -m examples.bank.merchants --port P --db merchants.db --replica merchants-1`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Sequence
from typing import Final

from aiohttp import web

from examples.bank.authorisation import DECISIONS_TOPIC, ENRICHED_TOPIC
from examples.bank.consumer import Event, Handler, Unavailable, attach_consumer
from examples.bank.mesh import MESH, attach_mesh
from examples.bank.options import ServiceOptions
from examples.bank.payloads import field_str, read_object
from examples.bank.replica import create_replica_app
from examples.bank.serve import serve
from examples.bank.storage import DATABASE, attach_database

CATALOGUE: Final[tuple[tuple[str, str, str], ...]] = (
    ("m-001", "Corner Coffee", "cafe"),
    ("m-002", "Green Grocer", "groceries"),
    ("m-003", "City Metro", "transport"),
    ("m-004", "Page & Spine Books", "books"),
    ("m-005", "Harbour Fuel", "fuel"),
    ("m-006", "Northside Pharmacy", "health"),
    ("m-007", "Pixel Arcade", "entertainment"),
    ("m-008", "Blue Door Bistro", "restaurants"),
    ("m-009", "Volt Electronics", "electronics"),
    ("m-010", "Stitch & Thread", "clothing"),
    ("m-011", "Fresh Bakes", "cafe"),
    ("m-012", "Summit Outdoors", "sport"),
)
"""(merchant id, display name, category) for every merchant the card-network simulator pays."""

MERCHANT_IDS: Final[tuple[str, ...]] = tuple(merchant_id for merchant_id, _, _ in CATALOGUE)

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS merchants (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    category TEXT NOT NULL
);
"""


def create_app(options: ServiceOptions) -> web.Application:
    app = create_replica_app(options)
    attach_database(app, options.db, SCHEMA)
    app.cleanup_ctx.append(_load_catalogue)
    app.router.add_get("/merchants/{merchant_id}", _get_merchant)
    app.router.add_put("/merchants/{merchant_id}", _put_merchant)
    if options.events:
        attach_mesh(app, options.meshd)
        attach_consumer(app, DECISIONS_TOPIC, "merchants", _enrichment_handler)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    serve("merchants", create_app, argv)


async def _load_catalogue(app: web.Application) -> AsyncIterator[None]:
    await app[DATABASE].write(
        lambda db: db.executemany(
            "INSERT OR IGNORE INTO merchants (id, name, category) VALUES (?, ?, ?)", CATALOGUE
        )
    )
    yield


async def _get_merchant(request: web.Request) -> web.Response:
    merchant_id = request.match_info["merchant_id"]
    row = await request.app[DATABASE].read(
        lambda db: db.execute(
            "SELECT id, name, category FROM merchants WHERE id = ?", (merchant_id,)
        ).fetchone()
    )
    if row is None:
        return web.json_response({"error": f"no merchant {merchant_id}"}, status=404)
    return web.json_response({"id": row["id"], "name": row["name"], "category": row["category"]})


def _enrichment_handler(app: web.Application) -> Handler:
    """Enrichment, as a consumer of decisions: each decision is published again on the enriched topic with the
    merchant's name and category (an unknown merchant keeps its raw id, category `unknown`), under the same
    event id, so a redelivered decision is stored there once."""

    async def handle(event: Event) -> bool:
        merchant_id = field_str(event.payload, "merchant_id")
        row = await app[DATABASE].read(
            lambda db: db.execute(
                "SELECT name, category FROM merchants WHERE id = ?", (merchant_id,)
            ).fetchone()
        )
        name, category = (merchant_id, "unknown") if row is None else (str(row["name"]), str(row["category"]))
        enriched = dict(event.payload) | {"merchant_name": name, "category": category}
        body: dict[str, object] = {"events": [{"id": event.id, "payload": enriched}]}
        reply = await app[MESH].call("events", "POST", f"/topics/{ENRICHED_TOPIC}", body=body)
        if reply.status >= 500:
            raise Unavailable(f"publishing the enriched event answered {reply.status}")
        if not reply.ok:
            raise RuntimeError(f"publishing the enriched event answered {reply.status}: {reply.body}")
        published = reply.body.get("published")
        return not (isinstance(published, list) and published and published[0].get("duplicate") is True)

    return handle


async def _put_merchant(request: web.Request) -> web.Response:
    merchant_id = request.match_info["merchant_id"]
    body = await read_object(request)
    name, category = field_str(body, "name"), field_str(body, "category")

    def work(db: sqlite3.Connection) -> None:
        db.execute(
            "INSERT INTO merchants (id, name, category) VALUES (?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET name = excluded.name, category = excluded.category",
            (merchant_id, name, category),
        )

    await request.app[DATABASE].write(work)
    return web.json_response({"id": merchant_id, "name": name, "category": category})


if __name__ == "__main__":
    main()
