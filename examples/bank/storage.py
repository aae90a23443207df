"""SQLite access for a bank service: one database file per service, shared by all of its replicas.

How this works: every replica process opens the same file in WAL mode with a busy timeout, so replicas read
while one of them writes, and a writer that finds the lock taken waits instead of failing. Write transactions
start with `BEGIN IMMEDIATE`, taking the write lock before the first read: a deferred transaction that reads
and then upgrades can fail with SQLITE_BUSY at once (the busy handler cannot help a reader that holds a
snapshot), and a retried request would turn that into a spurious 5xx. `synchronous=NORMAL` is enough here:
a commit is in the WAL before the call returns, so a SIGKILLed replica loses nothing that it acknowledged.

sqlite3 blocks, so every call runs on one worker thread per process and the event loop never waits on a lock.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final, TypeVar

from aiohttp import web

T = TypeVar("T")

DEFAULT_BUSY_TIMEOUT_MS: Final = 10_000


class Database:
    """One connection to a service's SQLite file, used from a single worker thread."""

    def __init__(self, connection: sqlite3.Connection, executor: ThreadPoolExecutor, path: Path) -> None:
        self._connection = connection
        self._executor = executor
        self._path = path

    def __repr__(self) -> str:
        return f"Database({str(self._path)!r})"

    @classmethod
    async def open(
        cls, path: Path, schema: str, *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS
    ) -> Database:
        """Open (creating if needed) the file and its tables; safe when several replicas start at once."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sqlite-{path.name}")
        loop = asyncio.get_running_loop()
        try:
            connection = await loop.run_in_executor(executor, _connect, path, schema, busy_timeout_ms)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(connection, executor, path)

    async def read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` in a read transaction: it sees one consistent snapshot."""
        return await self._run(work, "BEGIN")

    async def write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` in a write transaction; it commits if `work` returns and rolls back if it raises."""
        return await self._run(work, "BEGIN IMMEDIATE")

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._connection.close)
        self._executor.shutdown(wait=True)

    async def _run(self, work: Callable[[sqlite3.Connection], T], begin: str) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, _transaction, self._connection, work, begin)


def _connect(path: Path, schema: str, busy_timeout_ms: int) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: we issue BEGIN ourselves, so the module never opens a transaction behind our back.
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.row_factory = sqlite3.Row
    connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = NORMAL")
    connection.execute("PRAGMA foreign_keys = ON")
    connection.executescript(schema)
    return connection


def _transaction(connection: sqlite3.Connection, work: Callable[[sqlite3.Connection], T], begin: str) -> T:
    connection.execute(begin)
    try:
        result = work(connection)
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")
    return result


DATABASE: Final = web.AppKey("database", Database)


def attach_database(app: web.Application, path: Path, schema: str) -> None:
    """Open the database when the app starts and close it when the app stops; handlers use `app[DATABASE]`."""

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        app[DATABASE] = await Database.open(path, schema)
        yield
        await app[DATABASE].close()

    app.cleanup_ctx.append(lifecycle)
