"""The accounts service: customer accounts, their balances and the holds that card authorisations place on them.

Money is in integer minor units (cents). An account has an opening balance; `available` is that balance minus
every hold that is `held` or `captured`. A hold is keyed by the authorisation id and every write to it is
idempotent, so meshd may retry any of them:

- `PUT /holds/{auth_id}` places the hold if the money is there (`held`) and records a `declined` hold if not;
  the same body again answers with the recorded hold, a different body is a 409.
- `DELETE /holds/{auth_id}` releases it. Releasing an unknown id leaves a `released` tombstone, so a hold
  request still in flight somewhere cannot place the hold after its release.
- `PUT /holds/{auth_id}/capture` turns a `held` hold into a `captured` one.

Run `python -m examples.bank.accounts --port P --db accounts.db --replica accounts-1 [--version v2]`; the
canary `accounts-v2` is this same program with `--version v2` and the same database file.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Final, Literal

from aiohttp import web

from examples.bank.authorisation import FUNDING_ACCOUNT, INCOME_TOPIC, customer_ledger_account
from examples.bank.consumer import Event, Handler, Unavailable, attach_consumer
from examples.bank.ledger_book import transfer
from examples.bank.mesh import MESH, attach_mesh
from examples.bank.options import ServiceOptions
from examples.bank.payloads import field_int, field_str, read_object
from examples.bank.replica import create_replica_app
from examples.bank.serve import serve
from examples.bank.storage import DATABASE, attach_database

HoldStatus = Literal["held", "declined", "released", "captured"]

ACTIVE_HOLD_STATES: Final[frozenset[str]] = frozenset({"held", "captured"})

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS accounts (
    id TEXT PRIMARY KEY,
    opening_balance INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS holds (
    auth_id TEXT PRIMARY KEY,
    account_id TEXT,
    amount INTEGER NOT NULL,
    status TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS holds_by_account ON holds (account_id, status);
CREATE TABLE IF NOT EXISTS credits (
    credit_id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    amount INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS credits_by_account ON credits (account_id);
"""


def decide_hold(available: int, amount: int) -> HoldStatus:
    """A hold is placed only if it leaves the account at zero or above: no overdrafts."""
    return "held" if amount <= available else "declined"


@dataclass(frozen=True, slots=True)
class AccountView:
    id: str
    opening_balance: int
    held: int
    captured: int
    credited: int = 0
    """Income received (salary, top-ups): credited from the `income` topic with `--events`."""

    @property
    def available(self) -> int:
        return self.opening_balance + self.credited - self.held - self.captured

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "available": self.available}


@dataclass(frozen=True, slots=True)
class Hold:
    auth_id: str
    account_id: str | None
    amount: int
    status: str

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def create_app(options: ServiceOptions) -> web.Application:
    app = create_replica_app(options)
    attach_database(app, options.db, SCHEMA)
    app.router.add_get("/accounts", _list_accounts)
    app.router.add_get("/accounts/{account_id}", _get_account)
    app.router.add_put("/accounts/{account_id}", _open_account)
    app.router.add_get("/holds/{auth_id}", _get_hold)
    app.router.add_put("/holds/{auth_id}", _place_hold)
    app.router.add_delete("/holds/{auth_id}", _release_hold)
    app.router.add_put("/holds/{auth_id}/capture", _capture_hold)
    if options.events:
        attach_mesh(app, options.meshd)
        attach_consumer(app, INCOME_TOPIC, "accounts", _income_handler)
    return app


def _income_handler(app: web.Application) -> Handler:
    """Income as a consumer: an event `{"account_id", "amount"}` on `income` (id: the payment's own id) is
    posted to the ledger as `income:<id>` (from the bank's funding account, through meshd; the key makes a
    redelivery harmless) and then credited here under the same id, at most once. The ledger first: a crash in
    between is finished by the redelivery, and the account never shows money the ledger has not got."""

    async def handle(event: Event) -> bool:
        account_id = field_str(event.payload, "account_id")
        amount = field_int(event.payload, "amount", minimum=1)
        if await app[DATABASE].read(lambda db: _account(db, account_id)) is None:
            raise LookupError(f"income {event.id} for unknown account {account_id}")
        legs = transfer(FUNDING_ACCOUNT, customer_ledger_account(account_id), amount)
        body: dict[str, object] = {"legs": [leg.to_json() for leg in legs]}
        reply = await app[MESH].call("ledger", "PUT", f"/transactions/income:{event.id}", body=body)
        if reply.status >= 500:
            raise Unavailable(f"ledger answered {reply.status} for income {event.id}")
        if reply.status not in (200, 201):
            raise RuntimeError(f"ledger answered {reply.status} for income {event.id}: {reply.body}")

        def credit(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "INSERT OR IGNORE INTO credits (credit_id, account_id, amount, created_at) VALUES (?, ?, ?, ?)",
                (event.id, account_id, amount, time.time()),
            )
            return cursor.rowcount == 1

        return await app[DATABASE].write(credit)

    return handle


def main(argv: Sequence[str] | None = None) -> None:
    serve("accounts", create_app, argv)


async def _list_accounts(request: web.Request) -> web.Response:
    views = await request.app[DATABASE].read(_all_accounts)
    return web.json_response({"accounts": [view.to_json() for view in views]})


async def _get_account(request: web.Request) -> web.Response:
    account_id = request.match_info["account_id"]
    view = await request.app[DATABASE].read(lambda db: _account(db, account_id))
    if view is None:
        return web.json_response({"error": f"no account {account_id}"}, status=404)
    return web.json_response(view.to_json())


async def _open_account(request: web.Request) -> web.Response:
    """Create an account; idempotent, so seeding the bank twice is harmless."""
    account_id = request.match_info["account_id"]
    opening = field_int(await read_object(request), "opening_balance", minimum=0)

    def work(db: sqlite3.Connection) -> tuple[int, AccountView]:
        existing = _account(db, account_id)
        if existing is not None:
            return (200 if existing.opening_balance == opening else 409), existing
        db.execute(
            "INSERT INTO accounts (id, opening_balance, created_at) VALUES (?, ?, ?)",
            (account_id, opening, time.time()),
        )
        return 201, AccountView(account_id, opening, held=0, captured=0)

    status, view = await request.app[DATABASE].write(work)
    return web.json_response(view.to_json(), status=status)


async def _get_hold(request: web.Request) -> web.Response:
    auth_id = request.match_info["auth_id"]
    hold = await request.app[DATABASE].read(lambda db: _hold(db, auth_id))
    if hold is None:
        return web.json_response({"error": f"no hold {auth_id}"}, status=404)
    return web.json_response(hold.to_json())


async def _place_hold(request: web.Request) -> web.Response:
    auth_id = request.match_info["auth_id"]
    body = await read_object(request)
    account_id = field_str(body, "account_id")
    amount = field_int(body, "amount", minimum=1)

    def work(db: sqlite3.Connection) -> tuple[int, dict[str, object]]:
        existing = _hold(db, auth_id)
        if existing is not None:
            if existing.status == "released" and existing.account_id is None:
                return 200, existing.to_json()  # released before it was placed: stays released
            if (existing.account_id, existing.amount) != (account_id, amount):
                return 409, {"error": f"hold {auth_id} exists with a different account or amount"}
            return 200, existing.to_json()
        account = _account(db, account_id)
        if account is None:
            return 404, {"error": f"no account {account_id}"}
        status = decide_hold(account.available, amount)
        db.execute(
            "INSERT INTO holds (auth_id, account_id, amount, status, updated_at) VALUES (?, ?, ?, ?, ?)",
            (auth_id, account_id, amount, status, time.time()),
        )
        return 201, Hold(auth_id, account_id, amount, status).to_json()

    status, payload = await request.app[DATABASE].write(work)
    return web.json_response(payload, status=status)


async def _release_hold(request: web.Request) -> web.Response:
    auth_id = request.match_info["auth_id"]

    def work(db: sqlite3.Connection) -> tuple[int, dict[str, object]]:
        existing = _hold(db, auth_id)
        if existing is None:
            db.execute(
                "INSERT INTO holds (auth_id, account_id, amount, status, updated_at) VALUES (?, NULL, 0, ?, ?)",
                (auth_id, "released", time.time()),
            )
            return 200, Hold(auth_id, None, 0, "released").to_json()
        if existing.status == "captured":
            return 409, {"error": f"hold {auth_id} is captured and cannot be released"}
        if existing.status == "held":
            _set_status(db, auth_id, "released")
            return 200, Hold(existing.auth_id, existing.account_id, existing.amount, "released").to_json()
        return 200, existing.to_json()  # declined or already released: nothing to give back

    status, payload = await request.app[DATABASE].write(work)
    return web.json_response(payload, status=status)


async def _capture_hold(request: web.Request) -> web.Response:
    auth_id = request.match_info["auth_id"]

    def work(db: sqlite3.Connection) -> tuple[int, dict[str, object]]:
        existing = _hold(db, auth_id)
        if existing is None:
            return 404, {"error": f"no hold {auth_id}"}
        if existing.status == "held":
            _set_status(db, auth_id, "captured")
            return 200, Hold(existing.auth_id, existing.account_id, existing.amount, "captured").to_json()
        if existing.status == "captured":
            return 200, existing.to_json()
        return 409, {"error": f"hold {auth_id} is {existing.status} and cannot be captured"}

    status, payload = await request.app[DATABASE].write(work)
    return web.json_response(payload, status=status)


_ACCOUNT_QUERY: Final = """
SELECT a.id, a.opening_balance,
       COALESCE(SUM(CASE WHEN h.status = 'held' THEN h.amount END), 0) AS held,
       COALESCE(SUM(CASE WHEN h.status = 'captured' THEN h.amount END), 0) AS captured,
       (SELECT COALESCE(SUM(c.amount), 0) FROM credits c WHERE c.account_id = a.id) AS credited
FROM accounts a LEFT JOIN holds h ON h.account_id = a.id
"""


def _account(db: sqlite3.Connection, account_id: str) -> AccountView | None:
    row = db.execute(_ACCOUNT_QUERY + " WHERE a.id = ? GROUP BY a.id", (account_id,)).fetchone()
    return None if row is None else _account_view(row)


def _all_accounts(db: sqlite3.Connection) -> list[AccountView]:
    return [_account_view(row) for row in db.execute(_ACCOUNT_QUERY + " GROUP BY a.id ORDER BY a.id")]


def _account_view(row: sqlite3.Row) -> AccountView:
    return AccountView(
        str(row["id"]),
        int(row["opening_balance"]),
        int(row["held"]),
        int(row["captured"]),
        int(row["credited"]),
    )


def _hold(db: sqlite3.Connection, auth_id: str) -> Hold | None:
    row = db.execute(
        "SELECT auth_id, account_id, amount, status FROM holds WHERE auth_id = ?", (auth_id,)
    ).fetchone()
    if row is None:
        return None
    account_id = row["account_id"]
    return Hold(
        str(row["auth_id"]),
        None if account_id is None else str(account_id),
        int(row["amount"]),
        str(row["status"]),
    )


def _set_status(db: sqlite3.Connection, auth_id: str, status: HoldStatus) -> None:
    db.execute(
        "UPDATE holds SET status = ?, updated_at = ? WHERE auth_id = ?", (status, time.time(), auth_id)
    )


if __name__ == "__main__":
    main()
