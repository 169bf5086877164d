"""``xdm-bridge copy-db --to <url or path>``: move a deployment between SQLite and PostgreSQL.

Copies every bridge table from the configured database (``DATABASE_URL``, else
``DATABASE_PATH``) into an empty target, migrated first, in one transaction on the
target, then counts every table on both sides and fails unless they agree. The source is
counted again just before the target commits: one written to meanwhile (a bridge still
running on it) stops the copy with nothing written. Into
PostgreSQL, each value is converted to its column's type as information_schema names it
(SQLite's 0/1 into a BOOLEAN); a type with no conversion stops the copy. Tokens are
copied as they are stored (Fernet ciphertext), so the target needs the same
``BRIDGE_ENCRYPTION_KEY``. The target's triggers that fill in a new row from other rows are
off while rows are written: a copied row is copied as it was (the outbox's ``encrypted`` would
otherwise be taken from the channel's mapping of now, not of when the row was written). Stop the
bridge while copying: rows written meanwhile would not be copied (the source's second count
refuses the copy then).

SQLite is read and written here in plain blocking calls: this is a short-lived command
with no event loop serving anyone.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlite_utils import Database

from adapters.store import postgres
from adapters.store.sqlite import open_database
from bridge.errors import StoreUnavailable
from migrations.postgres import TABLES

Table = tuple[list[str], list[tuple[Any, ...]]]

# Tables only one engine has, derived from the others or about the running instances: never copied.
DERIVED = {"pending_channels", "_sqlite_migrations", "schema_migrations", "sqlite_sequence", "leader_lease"}

# Triggers that fill in an inserted row from other rows, (table, trigger) on both engines: a copied
# row is already complete, and these are off while the copy writes. (SQLite's pending_channels
# triggers stay on: they derive a table the copy does not write.)
FILLING_TRIGGERS = (("outbox", "outbox_encrypted"),)


class CopyError(Exception):
    """The copy was refused or did not verify; the message says why (exit code 1)."""


@dataclass(frozen=True)
class Copied:
    counts: dict[str, int]


Progress = Callable[[str], None]
CHUNK = 10_000  # rows written between two progress lines of one table


def copy(source: str, target: str, progress: Progress = lambda _: None) -> Copied:
    """Copy ``source`` into the empty ``target`` (each a PostgreSQL URL or a SQLite path).

    ``progress`` is told what is happening, a line at a time (each table read, every
    ``CHUNK`` rows written), so a copy of a large database is seen to move."""
    if source == target:
        raise CopyError("the source and the target are the same database")
    if not postgres.is_postgres_url(source) and not os.path.exists(source):
        raise CopyError(f"no database at {source}: check DATABASE_PATH")
    data = _read(source)  # refusals come before any progress: a bad input is one line
    ours = {table: len(rows) for table, (_, rows) in data.items()}
    _write(target, data, progress, Unchanged(source, ours))
    theirs = _counts(target, list(data))
    if theirs != ours:
        raise CopyError(f"counts differ after the copy: source {ours}, target {theirs}")
    return Copied(ours)


@dataclass(frozen=True)
class Unchanged:
    """The source as it was read (rows per table): checked again before the target commits."""

    source: str
    counts: dict[str, int]

    def check(self, now: dict[str, int]) -> None:
        changed = {t: (n, now.get(t)) for t, n in self.counts.items() if now.get(t) != n}
        if changed:
            listed = ", ".join(f"{t} ({was} read, {is_} now)" for t, (was, is_) in changed.items())
            raise CopyError(
                f"the source changed while it was copied: {listed}; stop every xdm-bridge serve on it "
                "and copy again (nothing was written to the target)"
            )

    def check_now(self) -> None:
        self.check(_counts(self.source, list(self.counts)))

    async def check_async(self) -> None:
        if postgres.is_postgres_url(self.source):
            self.check(await _pg_counts(self.source, list(self.counts)))
        else:
            self.check(_sqlite_counts(self.source, list(self.counts)))


# -- reading ----------------------------------------------------------------------


def _read(location: str) -> dict[str, Table]:
    if postgres.is_postgres_url(location):
        return asyncio.run(_read_postgres(location))
    return _read_sqlite(location)


def _read_sqlite(path: str) -> dict[str, Table]:
    _open_sqlite(path, f"the source, DATABASE_PATH={path}").close()  # migrated: its columns are the target's
    db = sqlite3.connect(path, isolation_level=None)
    try:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        _check_tables(names, path)
        data: dict[str, Table] = {}
        db.execute("BEGIN")  # one snapshot of every table, as PostgreSQL's read has
        for table in TABLES:
            cursor = db.execute(f"SELECT * FROM {table}")
            data[table] = ([d[0] for d in cursor.description], [tuple(r) for r in cursor.fetchall()])
        db.execute("COMMIT")
        return data
    finally:
        db.close()


async def _read_postgres(url: str) -> dict[str, Table]:
    await postgres.migrate(url)
    conn = await postgres.connect(url)
    try:
        names = [
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
        ]
        _check_tables(names, "the PostgreSQL database")
        data: dict[str, Table] = {}
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            for table in TABLES:
                columns = await _pg_columns(conn, table)
                rows = await conn.fetch(f"SELECT {', '.join(columns)} FROM {table}")
                data[table] = (columns, [tuple(r) for r in rows])
        return data
    finally:
        await conn.close()


def _check_tables(names: Sequence[str], where: str) -> None:
    unknown = sorted(set(names) - set(TABLES) - DERIVED)
    if unknown:
        raise CopyError(f"{where} has tables this copy does not know: {', '.join(unknown)}")


# -- writing ----------------------------------------------------------------------


def _write(location: str, data: dict[str, Table], progress: Progress, source: Unchanged) -> None:
    if postgres.is_postgres_url(location):
        asyncio.run(_write_postgres(location, data, progress, source))
    else:
        _write_sqlite(location, data, progress, source)


def _writing(data: dict[str, Table], progress: Progress) -> None:
    """Both sides are usable (refusals come first, each one line): the copy starts."""
    total = sum(len(rows) for _, rows in data.values())
    progress(f"read {total} rows from {len(data)} tables; writing them into the target…")


def _chunks(table: str, rows: Sequence[Any], progress: Progress) -> Iterator[Sequence[Any]]:
    """``rows`` a chunk at a time, saying how far a table has got."""
    for start in range(0, len(rows), CHUNK):
        yield rows[start : start + CHUNK]
        if len(rows) > CHUNK:
            progress(f"  {table}: {min(start + CHUNK, len(rows))} of {len(rows)} rows")
    progress(f"  {table}: {len(rows)} rows written")


def _open_sqlite(path: str, what: str) -> Database:
    """``open_database``, its refusal said in one line naming which side it is."""
    try:
        return open_database(path)
    except StoreUnavailable as exc:
        # Its reason without the ``DATABASE_PATH=`` it names for ``serve``: here it may be ``--to``.
        reason = str(exc).removeprefix(f"DATABASE_PATH={path!r}: ")
        raise CopyError(f"{what}: {reason}") from None


def _write_sqlite(path: str, data: dict[str, Table], progress: Progress, source: Unchanged) -> None:
    db = _open_sqlite(path, f"--to {path}")  # creates and migrates
    try:
        conn = db.conn
        _refuse_non_empty({t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in data})
        _writing(data, progress)
        conn.execute("BEGIN IMMEDIATE")
        try:
            # SQLite cannot disable a trigger: it is dropped and made again in the same transaction.
            marks = ", ".join("?" * len(FILLING_TRIGGERS))
            triggers = conn.execute(
                f"SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND name IN ({marks})",
                [name for _, name in FILLING_TRIGGERS],
            ).fetchall()
            for name, _ in triggers:
                conn.execute(f"DROP TRIGGER {name}")
            for table, (columns, rows) in data.items():
                marks = ", ".join("?" * len(columns))
                for chunk in _chunks(table, rows, progress):
                    conn.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", chunk)
            for _, sql in triggers:
                conn.execute(sql)
            source.check_now()
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    finally:
        db.close()


async def _write_postgres(url: str, data: dict[str, Table], progress: Progress, source: Unchanged) -> None:
    await postgres.migrate(url)
    conn = await postgres.connect(url)
    try:
        _refuse_non_empty({t: await conn.fetchval(f"SELECT COUNT(*) FROM {t}") for t in data})
        _writing(data, progress)
        async with conn.transaction():
            for table, name in FILLING_TRIGGERS:  # as the tables' owner (it migrated them)
                await conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER {name}")
            for table, (columns, rows) in data.items():
                converters = _converters(table, columns, await _pg_types(conn, table))
                for chunk in _chunks(table, rows, progress):
                    records = [_converted(row, converters) for row in chunk]
                    await conn.copy_records_to_table(table, records=records, columns=columns)
            for table, (columns, _) in data.items():
                # Ids were copied as they were; new rows continue after them. Which tables number
                # their rows is the schema's to say (a serial ``id``), not a list kept here.
                if "id" not in columns:
                    continue
                sequence = await conn.fetchval("SELECT pg_get_serial_sequence($1, 'id')", table)
                if sequence is not None:
                    await conn.execute(
                        f"SELECT setval($1, COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)", sequence
                    )
            for table, name in FILLING_TRIGGERS:
                await conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER {name}")
            await source.check_async()
    finally:
        await conn.close()


def _refuse_non_empty(counts: dict[str, int]) -> None:
    filled = {t: n for t, n in counts.items() if n}
    if filled:
        listed = ", ".join(f"{t} ({n})" for t, n in filled.items())
        raise CopyError(f"the target already holds rows in {listed}: copy only into an empty database")


async def _pg_columns(conn: asyncpg.Connection, table: str) -> list[str]:
    return list(await _pg_types(conn, table))


async def _pg_types(conn: asyncpg.Connection, table: str) -> dict[str, str]:
    rows = await conn.fetch(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
        table,
    )
    return {r["column_name"]: r["data_type"] for r in rows}


def _to_bool(value: Any) -> bool:
    # The SQLite store writes booleans as 0/1 (sqlite-utils' ``int`` columns).
    return bool(int(value))


# PostgreSQL's binary COPY wants each column's own Python type, where SQLite keeps what it was
# given: one conversion per type the schema uses, and a type not listed here stops the copy
# (a new column type must be taught here, never copied by guess).
_CONVERT: dict[str, Callable[[Any], Any]] = {
    "bigint": int,
    "integer": int,
    "smallint": int,
    "double precision": float,
    "real": float,
    "text": str,
    "boolean": _to_bool,
}


def _converters(table: str, columns: Sequence[str], types: dict[str, str]) -> list[Callable[[Any], Any]]:
    """The conversion of each copied column, from the target's types (information_schema)."""
    missing = [c for c in columns if c not in types]
    if missing:
        raise CopyError(f"PostgreSQL's {table} has no column(s) {', '.join(missing)}")
    unknown = sorted({f"{c} ({types[c]})" for c in columns if types[c] not in _CONVERT})
    if unknown:
        raise CopyError(f"copy-db cannot convert {table}'s column(s) {', '.join(unknown)}")
    return [_CONVERT[types[c]] for c in columns]


def _converted(row: tuple[Any, ...], converters: Sequence[Callable[[Any], Any]]) -> tuple[Any, ...]:
    return tuple(None if v is None else convert(v) for convert, v in zip(converters, row, strict=True))


# -- verifying --------------------------------------------------------------------


def _counts(location: str, tables: Sequence[str]) -> dict[str, int]:
    if postgres.is_postgres_url(location):
        return asyncio.run(_pg_counts(location, tables))
    return _sqlite_counts(location, tables)


def _sqlite_counts(location: str, tables: Sequence[str]) -> dict[str, int]:
    db = sqlite3.connect(location)
    try:
        return {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables}
    finally:
        db.close()


async def _pg_counts(url: str, tables: Sequence[str]) -> dict[str, int]:
    conn = await postgres.connect(url)
    try:
        return {t: await conn.fetchval(f"SELECT COUNT(*) FROM {t}") for t in tables}
    finally:
        await conn.close()
