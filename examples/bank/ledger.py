"""The ledger service: double-entry transactions posted exactly once under an idempotency key.

`PUT /transactions/{key}` with `{"legs": [{"account", "direction": "debit"|"credit", "amount"}, ...]}` posts the
transaction if the key is new (201), answers with the recorded one if the same content comes again (200, nothing
posted twice), and refuses different content under a used key (409). The key check and the posting happen in
one write transaction, so two replicas racing on the same key cannot both post it. PUT, not POST: meshd
retries PUTs after a replica dies mid-request, and the key makes that retry harmless.

`GET /balances` answers every account's balance, their total (always 0 in double entry) and whether the
running balances still equal the sum of all postings.

With `--grpc-port G` the ledger also serves the posting as the gRPC call `bank.Ledger/Post` on port G
(ledger_grpc.py), the bank's gRPC hop.

Run `python -m examples.bank.ledger --port P --db ledger.db --replica ledger-1 [--grpc-port G]`.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from typing import Final

from aiohttp import web

from examples.bank.authorisation import DECISIONS_TOPIC, event_decision, request_of_event
from examples.bank.consumer import Event, Handler, attach_consumer
from examples.bank.ledger_book import Leg, balance_changes, fingerprint, parse_legs
from examples.bank.ledger_grpc import attach_grpc_server
from examples.bank.mesh import attach_mesh
from examples.bank.options import ServiceOptions
from examples.bank.payloads import read_object
from examples.bank.replica import create_replica_app
from examples.bank.serve import serve
from examples.bank.storage import DATABASE, Database, attach_database

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS transactions (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    legs TEXT NOT NULL,
    posted_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS postings (
    key TEXT NOT NULL REFERENCES transactions (key),
    seq INTEGER NOT NULL,
    account TEXT NOT NULL,
    delta INTEGER NOT NULL,
    PRIMARY KEY (key, seq)
);
CREATE TABLE IF NOT EXISTS balances (
    account TEXT PRIMARY KEY,
    balance INTEGER NOT NULL
);
"""


def create_app(options: ServiceOptions) -> web.Application:
    app = create_replica_app(options)
    attach_database(app, options.db, SCHEMA)
    app.router.add_put("/transactions/{key}", _post_transaction)
    app.router.add_get("/transactions/{key}", _get_transaction)
    app.router.add_get("/transactions", _list_transactions)
    app.router.add_get("/balances", _balances)
    app.router.add_get("/balances/{account}", _balance)
    if options.events:
        attach_mesh(app, options.meshd)
        attach_consumer(app, DECISIONS_TOPIC, "ledger", _catch_up_handler)
    if options.grpc_port is not None:
        attach_grpc_server(app, options.host, options.grpc_port, _post_in)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    serve("ledger", create_app, argv)


async def _post_transaction(request: web.Request) -> web.Response:
    key = request.match_info["key"]
    legs = parse_legs((await read_object(request)).get("legs"))
    status, payload = await post_transaction(request.app[DATABASE], key, legs)
    return web.json_response(payload, status=status)


async def post_transaction(
    database: Database, key: str, legs: Sequence[Leg]
) -> tuple[int, dict[str, object]]:
    """Post under `key` once: 201 posted, 200 the same legs again (nothing posted), 409 other legs."""
    digest = fingerprint(legs)

    def work(db: sqlite3.Connection) -> tuple[int, dict[str, object]]:
        row = db.execute("SELECT fingerprint, legs FROM transactions WHERE key = ?", (key,)).fetchone()
        if row is not None:
            if row["fingerprint"] != digest:
                return 409, {"error": f"transaction {key} exists with different legs", "key": key}
            return 200, {"key": key, "status": "replayed", "legs": json.loads(row["legs"])}
        document = [leg.to_json() for leg in legs]
        db.execute(
            "INSERT INTO transactions (key, fingerprint, legs, posted_at) VALUES (?, ?, ?, ?)",
            (key, digest, json.dumps(document), time.time()),
        )
        db.executemany(
            "INSERT INTO postings (key, seq, account, delta) VALUES (?, ?, ?, ?)",
            [(key, seq, leg.account, leg.delta) for seq, leg in enumerate(legs)],
        )
        db.executemany(
            "INSERT INTO balances (account, balance) VALUES (?, ?) "
            "ON CONFLICT (account) DO UPDATE SET balance = balance + excluded.balance",
            sorted(balance_changes(legs).items()),
        )
        return 201, {"key": key, "status": "posted", "legs": document}

    return await database.write(work)


async def _post_in(app: web.Application, key: str, legs: Sequence[Leg]) -> tuple[int, dict[str, object]]:
    """The posting as the gRPC hop calls it (ledger_grpc.py)."""
    return await post_transaction(app[DATABASE], key, legs)


def _catch_up_handler(app: web.Application) -> Handler:
    """Ledger catch-up, as a consumer of decisions: an approval whose posting could not be made while the card
    network waited is posted now, under the same key (so a posting that did land after all is not doubled)."""

    async def handle(event: Event) -> bool:
        decision, _ = event_decision(event.payload)
        if decision != "approved" or event.payload.get("ledger_posted") is True:
            return True
        request = request_of_event(event.payload)
        status, answer = await post_transaction(app[DATABASE], request.ledger_key, request.ledger_legs())
        if status == 409:
            raise ValueError(str(answer["error"]))
        return status == 201

    return handle


async def _get_transaction(request: web.Request) -> web.Response:
    key = request.match_info["key"]
    row = await request.app[DATABASE].read(
        lambda db: db.execute(
            "SELECT key, legs, posted_at FROM transactions WHERE key = ?", (key,)
        ).fetchone()
    )
    if row is None:
        return web.json_response({"error": f"no transaction {key}"}, status=404)
    return web.json_response(
        {"key": row["key"], "legs": json.loads(row["legs"]), "posted_at": row["posted_at"]}
    )


async def _list_transactions(request: web.Request) -> web.Response:
    """Every transaction whose key starts with `?prefix=` (all of them by default), oldest first."""
    prefix = request.query.get("prefix", "")
    pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    rows = await request.app[DATABASE].read(
        lambda db: db.execute(
            "SELECT key, legs FROM transactions WHERE key LIKE ? ESCAPE '\\' ORDER BY posted_at, key",
            (pattern,),
        ).fetchall()
    )
    return web.json_response(
        {"transactions": [{"key": row["key"], "legs": json.loads(row["legs"])} for row in rows]}
    )


async def _balances(request: web.Request) -> web.Response:
    def work(db: sqlite3.Connection) -> tuple[dict[str, int], dict[str, int]]:
        running = {
            str(r["account"]): int(r["balance"]) for r in db.execute("SELECT account, balance FROM balances")
        }
        summed = {
            str(r["account"]): int(r["total"])
            for r in db.execute("SELECT account, SUM(delta) AS total FROM postings GROUP BY account")
        }
        return running, summed

    running, summed = await request.app[DATABASE].read(work)
    return web.json_response(
        {
            "balances": dict(sorted(running.items())),
            "total": sum(running.values()),
            "consistent": running == summed,
        }
    )


async def _balance(request: web.Request) -> web.Response:
    account = request.match_info["account"]
    row = await request.app[DATABASE].read(
        lambda db: db.execute("SELECT balance FROM balances WHERE account = ?", (account,)).fetchone()
    )
    return web.json_response({"account": account, "balance": 0 if row is None else int(row["balance"])})


if __name__ == "__main__":
    main()
