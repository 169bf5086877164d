"""The seam under the role stores: run one statement, on whichever database is selected.

A role's SQL is written once against this, with ``?`` placeholders, and runs on SQLite (on the
store's one owner thread) and on PostgreSQL (asyncpg's pool, placeholders numbered here). Only
portable SQL goes through it: ``INSERT … ON CONFLICT``, ``RETURNING`` and plain types work on
both (SQLite 3.35+), and a role whose statement needs a dialect of its own says so where it is.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import asyncpg
from sqlite_utils import Database


class Engine(Protocol):
    """One statement at a time; rows as dicts."""

    async def fetch(self, sql: str, *params: Any) -> list[dict[str, Any]]: ...

    async def execute(self, sql: str, *params: Any) -> int:
        """Run a write; the number of rows it touched."""
        ...


class SqliteEngine:
    """Statements on the SQLite store's owner thread (``run`` is the store's ``_call``)."""

    def __init__(self, run: Callable[..., Any], db: Callable[[], Database]) -> None:
        self._run = run
        self._db = db

    async def fetch(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await self._run(lambda: list(self._db().query(sql, params)))
        return rows

    async def execute(self, sql: str, *params: Any) -> int:
        count: int = await self._run(lambda: self._db().execute(sql, params).rowcount)
        return count


_PLACEHOLDER = re.compile(r"\?")


def numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2, …`` (the role SQL has no ``?`` in a literal)."""
    counter = iter(range(1, 1_000_000))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)


class PostgresEngine:
    """Statements on the PostgreSQL store's pool, each in its own implicit transaction."""

    def __init__(self, pool: Callable[[], asyncpg.Pool]) -> None:
        self._pool = pool

    async def fetch(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        return [dict(r) for r in await self._pool().fetch(numbered(sql), *params)]

    async def execute(self, sql: str, *params: Any) -> int:
        status: str = await self._pool().execute(numbered(sql), *params)
        return _affected(status.split())


def _affected(words: Sequence[str]) -> int:
    """asyncpg's command tag (``UPDATE 3``, ``INSERT 0 1``, ``DELETE 0``): its last number."""
    return int(words[-1]) if words and words[-1].isdigit() else 0
