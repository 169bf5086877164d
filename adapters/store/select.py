"""Which store the settings ask for: PostgreSQL when ``DATABASE_URL`` is set, else SQLite; and the
operator's engine on an existing database, for the CLI's commands."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import asyncpg
from sqlite_utils import Database

from adapters.store.crypto import TokenCipher
from adapters.store.engine import Engine, PostgresEngine, SqliteEngine, SqliteThread
from adapters.store.postgres import PostgresStore, instance_settings, is_postgres_url
from adapters.store.sqlite import SqliteStore
from bridge.errors import StoreUnavailable
from bridge.settings import Settings, redacted

AnyStore = SqliteStore | PostgresStore
# The CLI's SQLite connection waits this long for the running server's write transactions.
OPERATOR_BUSY_TIMEOUT = 10.0


def make_store(settings: Settings) -> AnyStore:
    """The store (not yet opened) for these settings."""
    cipher = TokenCipher(settings.encryption_keys)
    if settings.database_url:
        return PostgresStore(settings.database_url, cipher)
    return SqliteStore(settings.database_path, cipher)


def describe(settings: Settings) -> str:
    """Where the data lives, for logs and ``doctor`` (never a password)."""
    if settings.database_url:
        return redacted(settings.database_url)
    return settings.database_path


@asynccontextmanager
async def operator_engine(location: str) -> AsyncIterator[Engine]:
    """An engine on the existing bridge database at ``location`` (a PostgreSQL URL or a SQLite
    path), for an operator's command run beside ``serve``.

    Unlike a store's ``open`` it needs no encryption key, applies no migration (``migrate`` and
    ``serve`` do; ``doctor`` reports them pending) and never creates a database: a typo in
    ``DATABASE_PATH`` must not look like an empty bridge (``StoreUnavailable`` says so). SQLite's
    WAL lets it read and write while ``serve`` runs; it takes no single-instance lock.
    """
    if is_postgres_url(location):
        pool = await asyncpg.create_pool(
            location, min_size=1, max_size=2, server_settings=instance_settings(None)
        )
        try:
            yield PostgresEngine(lambda: pool)
        finally:
            await pool.close()
        return
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-operator")
    thread = SqliteThread(executor)
    try:
        db = await thread.run(_connect_existing, location)
        try:
            yield SqliteEngine(thread, lambda: db)
        finally:
            await thread.run(db.close)
    finally:
        executor.shutdown(wait=True)


def _connect_existing(path: str) -> Database:
    if path != ":memory:" and not os.path.exists(path):
        raise StoreUnavailable(
            f"no database at {path}: check DATABASE_PATH (run `xdm-bridge migrate` to create a new one)"
        )
    # Autocommit (the engine's transactions say BEGIN IMMEDIATE themselves); on the engine's thread.
    db = Database(sqlite3.connect(path, isolation_level=None, timeout=OPERATOR_BUSY_TIMEOUT))
    db.execute(f"PRAGMA busy_timeout = {int(OPERATOR_BUSY_TIMEOUT * 1000)}")
    db.execute("PRAGMA foreign_keys = ON")
    return db
