"""The locks service: named leases, so that exactly one replica of a service does a job at a time.

`PUT /locks/{name}` with `{"holder": "payments-1", "ttl_ms": 3000}` takes the lock if it is free, expired, or
already this holder's (then it is a renewal), and answers 200 with the lease: `{"name", "holder", "term",
"expires_in_ms"}`. If someone else holds a live lease the answer is 409 with the same fields describing theirs.
`term` grows every time the lock changes hands and never on a renewal: a fencing token a holder can attach to
its writes. `DELETE /locks/{name}?holder=H` gives the lock up (only its holder can); `GET /locks/{name}` reads
it (404 when free).

A holder keeps its lock by renewing well within the TTL (the relay renews every third of it). A holder that
crashes simply stops renewing, and its lease expires: another replica takes over within one TTL.

Two engines (`--backend`):

- `sqlite` (default): one file shared by the locks replicas; leases compared on wall-clock time, because
  replicas in different processes read them; the term counts hand-overs (1, 2, 3, ...);
- `etcd` (Debian's `etcd-server`, through its v3 JSON gateway): a lock is a key attached to an etcd lease of
  the TTL (rounded up to whole seconds, at least 2), written only if absent (a transaction comparing the
  key's create revision with 0); a renewal is a lease keep-alive; the term is the key's create revision,
  which also only grows. A crashed holder's key disappears with its lease, on etcd's own clock.

Run `python -m examples.bank.locks --port P --db locks.db --replica locks-1 [--backend etcd --etcd URL]`.
"""

from __future__ import annotations

import argparse
import base64
import math
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import aiohttp
from aiohttp import web

from examples.bank.options import ServiceOptions, parse_options
from examples.bank.payloads import InvalidPayload, field_int, field_str, read_object
from examples.bank.replica import create_replica_app
from examples.bank.storage import DATABASE, Database, attach_database

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS locks (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    term INTEGER NOT NULL,
    expires_at REAL NOT NULL
);
"""

MIN_TTL_MS: Final = 100
MAX_TTL_MS: Final = 600_000
ETCD_MIN_TTL_SECS: Final = 2
ETCD_TIMEOUT: Final = aiohttp.ClientTimeout(total=2.0)
ETCD_PREFIX: Final = "/bank/locks/"


@dataclass(frozen=True, slots=True)
class Lease:
    name: str
    holder: str
    term: int
    expires_in_secs: float

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "holder": self.holder,
            "term": self.term,
            "expires_in_ms": max(0, round(self.expires_in_secs * 1000)),
        }


class LockEngine(Protocol):
    async def acquire(self, name: str, holder: str, ttl_secs: float) -> tuple[bool, Lease]:
        """Take or renew the lock; answers (granted, the lease that stands)."""

    async def read(self, name: str) -> Lease | None:
        """The live lease, or None when the lock is free."""

    async def release(self, name: str, holder: str) -> bool:
        """Give the lock up if `holder` has it."""

    async def close(self) -> None: ...


class LocksUnavailable(Exception):
    """The engine did not answer (the service answers 503)."""


async def acquire(db: Database, name: str, holder: str, ttl_secs: float, now: float) -> tuple[bool, Lease]:
    """The SQLite engine's acquire, on an explicit clock (the property test drives it)."""

    def work(connection: sqlite3.Connection) -> tuple[bool, Lease]:
        row = connection.execute(
            "SELECT holder, term, expires_at FROM locks WHERE name = ?", (name,)
        ).fetchone()
        if row is not None and row["holder"] != holder and float(row["expires_at"]) > now:
            return False, Lease(name, str(row["holder"]), int(row["term"]), float(row["expires_at"]) - now)
        if row is None:
            term = 1
        elif row["holder"] == holder and float(row["expires_at"]) > now:
            term = int(row["term"])  # a renewal keeps the term
        else:
            term = int(row["term"]) + 1  # a new holder, or the same one after its lease lapsed
        connection.execute(
            "INSERT INTO locks (name, holder, term, expires_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, term = excluded.term, "
            "expires_at = excluded.expires_at",
            (name, holder, term, now + ttl_secs),
        )
        return True, Lease(name, holder, term, ttl_secs)

    return await db.write(work)


class SqliteLocks:
    def __init__(self, db: Database, now: Callable[[], float] = time.time) -> None:
        self._db = db
        self._now = now

    def __repr__(self) -> str:
        return f"SqliteLocks({self._db!r})"

    async def acquire(self, name: str, holder: str, ttl_secs: float) -> tuple[bool, Lease]:
        return await acquire(self._db, name, holder, ttl_secs, self._now())

    async def read(self, name: str) -> Lease | None:
        row = await self._db.read(
            lambda db: db.execute(
                "SELECT holder, term, expires_at FROM locks WHERE name = ?", (name,)
            ).fetchone()
        )
        now = self._now()
        if row is None or float(row["expires_at"]) <= now:
            return None
        return Lease(name, str(row["holder"]), int(row["term"]), float(row["expires_at"]) - now)

    async def release(self, name: str, holder: str) -> bool:
        """Expire the holder's lease now; the row (and its term) stays, so the next holder gets a higher term."""
        released = await self._db.write(
            lambda db: (
                db.execute(
                    "UPDATE locks SET expires_at = 0 WHERE name = ? AND holder = ?", (name, holder)
                ).rowcount
            )
        )
        return bool(released)

    async def close(self) -> None:
        return None  # the database is closed with the app


class EtcdLocks:
    """Locks on etcd through its v3 JSON gateway (keys and values are base64 in that API)."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self._session = session
        self._url = url.rstrip("/")

    def __repr__(self) -> str:
        return f"EtcdLocks({self._url!r})"

    async def acquire(self, name: str, holder: str, ttl_secs: float) -> tuple[bool, Lease]:
        current = await self._get(name)
        if current is not None:
            value, create_revision, lease_id = current
            if value == holder:
                ttl = await self._keep_alive(lease_id)
                if ttl > 0:
                    return True, Lease(name, holder, create_revision, ttl)
            else:
                return False, Lease(name, value, create_revision, await self._ttl(lease_id))
        granted = await self._call("/v3/lease/grant", {"TTL": max(ETCD_MIN_TTL_SECS, math.ceil(ttl_secs))})
        lease_id = str(granted["ID"])
        key = _b64(ETCD_PREFIX + name)
        answer = await self._call(
            "/v3/kv/txn",
            {
                "compare": [{"target": "CREATE", "key": key, "result": "EQUAL", "create_revision": "0"}],
                "success": [{"request_put": {"key": key, "value": _b64(holder), "lease": lease_id}}],
            },
        )
        if answer.get("succeeded"):
            return True, Lease(name, holder, int(answer["header"]["revision"]), float(granted["TTL"]))
        await self._call("/v3/lease/revoke", {"ID": lease_id})
        current = await self._get(name)
        if current is None:  # lost a race with a holder that is already gone: try again next renewal
            return False, Lease(name, "", 0, 0.0)
        value, create_revision, other_lease = current
        return False, Lease(name, value, create_revision, await self._ttl(other_lease))

    async def read(self, name: str) -> Lease | None:
        current = await self._get(name)
        if current is None:
            return None
        value, create_revision, lease_id = current
        return Lease(name, value, create_revision, await self._ttl(lease_id))

    async def release(self, name: str, holder: str) -> bool:
        current = await self._get(name)
        if current is None or current[0] != holder:
            return False
        await self._call("/v3/lease/revoke", {"ID": current[2]})  # the key goes with its lease
        return True

    async def close(self) -> None:
        return None

    async def _get(self, name: str) -> tuple[str, int, str] | None:
        answer = await self._call("/v3/kv/range", {"key": _b64(ETCD_PREFIX + name)})
        kvs = answer.get("kvs") or []
        if not kvs:
            return None
        kv = kvs[0]
        return (
            base64.b64decode(kv["value"]).decode(),
            int(kv.get("create_revision", kv.get("createRevision", 0))),
            str(kv.get("lease", "0")),
        )

    async def _keep_alive(self, lease_id: str) -> float:
        answer = await self._call("/v3/lease/keepalive", {"ID": lease_id})
        return float(answer.get("result", answer).get("TTL", 0))

    async def _ttl(self, lease_id: str) -> float:
        answer = await self._call("/v3/lease/timetolive", {"ID": lease_id})
        return max(0.0, float(answer.get("TTL", 0)))

    async def _call(self, path: str, body: dict[str, object]) -> dict[str, Any]:
        try:
            async with self._session.post(self._url + path, json=body, timeout=ETCD_TIMEOUT) as response:
                answer: dict[str, Any] = await response.json(content_type=None)
                if response.status != 200:
                    raise LocksUnavailable(f"etcd {path} answered {response.status}: {answer}")
                return answer
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise LocksUnavailable(f"etcd {path}: {type(exc).__name__}: {exc}") from exc


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


ENGINE: Final = web.AppKey[LockEngine]("lock_engine")


def create_app(
    options: ServiceOptions,
    *,
    now: Callable[[], float] = time.time,
    backend: str = "sqlite",
    etcd_url: str = "http://127.0.0.1:2379",
) -> web.Application:
    app = create_replica_app(options)
    if backend == "etcd":

        async def etcd(app: web.Application) -> AsyncIterator[None]:
            async with aiohttp.ClientSession() as session:
                app[ENGINE] = EtcdLocks(session, etcd_url)
                yield

        app.cleanup_ctx.append(etcd)
    else:
        attach_database(app, options.db, SCHEMA)

        async def sqlite(app: web.Application) -> AsyncIterator[None]:
            app[ENGINE] = SqliteLocks(app[DATABASE], now)
            yield

        app.cleanup_ctx.append(sqlite)
    app.router.add_put("/locks/{name}", _acquire)
    app.router.add_get("/locks/{name}", _read)
    app.router.add_delete("/locks/{name}", _release)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.bank.locks", add_help=False)
    parser.add_argument("--backend", choices=("sqlite", "etcd"), default="sqlite")
    parser.add_argument("--etcd", default="http://127.0.0.1:2379", help="etcd's client URL (v3 JSON gateway)")
    args, rest = parser.parse_known_args(argv)
    options = parse_options("locks", rest)
    web.run_app(
        create_app(options, backend=args.backend, etcd_url=args.etcd),
        host=options.host,
        port=options.port,
        print=None,
        access_log=None,
        shutdown_timeout=2.0,
    )


async def _acquire(request: web.Request) -> web.Response:
    body = await read_object(request)
    holder = field_str(body, "holder")
    ttl_ms = field_int(body, "ttl_ms", minimum=MIN_TTL_MS)
    if ttl_ms > MAX_TTL_MS:
        raise InvalidPayload(f"ttl_ms must be at most {MAX_TTL_MS}, got {ttl_ms}")
    try:
        granted, lease = await request.app[ENGINE].acquire(request.match_info["name"], holder, ttl_ms / 1000)
    except LocksUnavailable as exc:
        return web.json_response({"error": str(exc)}, status=503)
    return web.json_response(lease.to_json(), status=200 if granted else 409)


async def _read(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    try:
        lease = await request.app[ENGINE].read(name)
    except LocksUnavailable as exc:
        return web.json_response({"error": str(exc)}, status=503)
    if lease is None:
        return web.json_response({"error": f"nobody holds {name}", "name": name}, status=404)
    return web.json_response(lease.to_json())


async def _release(request: web.Request) -> web.Response:
    name, holder = request.match_info["name"], request.query.get("holder", "")
    try:
        released = await request.app[ENGINE].release(name, holder)
    except LocksUnavailable as exc:
        return web.json_response({"error": str(exc)}, status=503)
    return web.json_response({"name": name, "released": released})


if __name__ == "__main__":
    main()
