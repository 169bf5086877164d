"""The operator commands (``mappings``, ``accounts``, ``outbox``) on PostgreSQL.

``adapters/ops/admin.py`` speaks portable SQL through the little of sqlite-utils'
``Database`` it uses (``query``, ``execute``, ``db[table].exists()``); this gives it the
same surface over one asyncpg connection, driven synchronously: the CLI is a short-lived
process with no event loop of its own. ``BEGIN IMMEDIATE`` (SQLite's "I am the writer")
becomes a serializable transaction: a change racing a running bridge fails rather than
interleaves, as SQLite's write lock would have made it wait.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import asyncpg

T = TypeVar("T")


def _numbered(sql: str) -> str:
    """``?`` placeholders (sqlite3's) as ``$1, $2, …`` (PostgreSQL's); SQLite's ``unixepoch()``
    (the shared key checks use it) as PostgreSQL's clock."""
    counter = iter(range(1, 10_000))
    sql = sql.replace("unixepoch()", "extract(epoch from now())")
    return re.sub(r"\?", lambda _: f"${next(counter)}", sql)


class _Table:
    def __init__(self, db: PgAdminDb, name: str) -> None:
        self._db = db
        self._name = name

    def exists(self) -> bool:
        rows = list(self._db.query("SELECT to_regclass(?) IS NOT NULL AS found", [self._name]))
        return bool(rows[0]["found"])


class PgAdminDb:
    """What ``admin`` needs of a database, on PostgreSQL."""

    def __init__(self, url: str) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._conn: asyncpg.Connection = self._run(asyncpg.connect(url))
        except BaseException:
            self._loop.close()
            raise

    def _run(self, work: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(work)

    def query(self, sql: str, params: Sequence[Any] = ()) -> Iterator[dict[str, Any]]:
        rows = self._run(self._conn.fetch(_numbered(sql), *params))
        return iter([dict(row) for row in rows])

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        statement = sql.strip().upper()
        if statement.startswith("PRAGMA"):
            return  # SQLite's connection settings; nothing to set here
        if statement == "BEGIN IMMEDIATE":
            sql = "BEGIN ISOLATION LEVEL SERIALIZABLE"
        self._run(self._conn.execute(_numbered(sql), *params))

    def __getitem__(self, table: str) -> _Table:
        return _Table(self, table)

    def close(self) -> None:
        try:
            self._run(self._conn.close())
        finally:
            self._loop.close()


@contextmanager
def connect(url: str) -> Iterator[PgAdminDb]:
    db = PgAdminDb(url)
    try:
        yield db
    finally:
        db.close()
