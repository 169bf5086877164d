"""Every contract test runs against both stores: the behaviour they share is specified here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from adapters.store.crypto import TokenCipher, generate_key
from adapters.store.postgres import PostgresStore
from adapters.store.sqlite import SqliteStore
from tests import pg
from tests.memory_store import MemoryTablesEngine

ENGINES = ("sqlite", "postgres")


@dataclass
class Engine:
    """Which store, how to make another on the same database, and plain SQL beside it."""

    name: str
    location: str  # a file path or a PostgreSQL URL
    key: str

    def store(self) -> SqliteStore | PostgresStore:
        cipher = TokenCipher([self.key])
        if self.name == "sqlite":
            return SqliteStore(self.location, cipher)
        return PostgresStore(self.location, cipher)

    async def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        """Run plain SQL (``?`` placeholders) on the store's database, outside the store."""
        return await pg.query(self.location, query, *params)


@asynccontextmanager
async def engine_named(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Engine]:
    """A fresh database of engine ``name``: a file, or a database on the test server."""
    if name == "sqlite":
        yield Engine("sqlite", str(tmp_path / "store.db"), generate_key())
        return
    server = request.getfixturevalue("pg_server")  # started only when a PostgreSQL case runs
    url = await pg.create_database(server)
    yield Engine("postgres", url, generate_key())
    await pg.drop_database(server, url)


@pytest.fixture(params=ENGINES)
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Engine]:
    async with engine_named(request.param, request, tmp_path) as chosen:
        yield chosen


# -- the account-side roles on both engines and on their in-memory fake (tests/memory_accounts.py) --

# Imported here, not at the top, so that this section stays one addition to the file.
from tests.memory_accounts import AccountSideStore, AccountTables, MemoryAccountSide  # noqa: E402

ACCOUNT_SIDE = (*ENGINES, "memory")


class MemoryAccountEngine:
    """The account-side fake where a test takes an ``Engine``: ``store()`` is another store on the
    same tables (as another store on the same database). There is no SQL beside it: checks of the
    stored columns stay on the engines."""

    name = "memory"

    def __init__(self) -> None:
        self.tables = AccountTables()

    def store(self) -> MemoryAccountSide:
        return MemoryAccountSide(self.tables)


AccountSide = Engine | MemoryAccountEngine


@pytest.fixture(params=ACCOUNT_SIDE)
async def account_side(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AccountSide]:
    """Where the account-side roles (accounts, the connect flow, mappings and their lookups,
    budgets) are tested: each engine, and the fake the unit tests use, held to the same tests."""
    if request.param == "memory":
        yield MemoryAccountEngine()
        return
    async with engine_named(request.param, request, tmp_path) as chosen:
        yield chosen


@asynccontextmanager
async def opened_side(side: AccountSide) -> AsyncIterator[AccountSideStore]:
    """A store of ``side``, open for the block."""
    store: AccountSideStore = side.store()
    await store.open()
    try:
        yield store
    finally:
        await store.close()


# -- The in-memory fakes of the message-side roles (inbound, cursors, relay, outbox, upkeep) --------
# held to the same tests as the engines. A module of those roles only takes ``message_side_engine``
# as its ``engine``; a module mixing them with tests that read tables (``engine.sql``: the memory
# engine has no SQL) or of other roles defines its ``engine`` over ``engine_or_memory_named``
# (params ``ENGINES``) and marks the tests the fakes must pass too with ``@memory_too``.

MESSAGE_SIDE_ENGINES = (*ENGINES, "memory")

memory_too = pytest.mark.parametrize("engine", MESSAGE_SIDE_ENGINES, indirect=True)


@asynccontextmanager
async def engine_or_memory_named(
    name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Engine | MemoryTablesEngine]:
    """``engine_named``, or the in-memory fakes' tables for ``memory``."""
    if name == "memory":
        yield MemoryTablesEngine()
        return
    async with engine_named(name, request, tmp_path) as chosen:
        yield chosen


@pytest.fixture(params=MESSAGE_SIDE_ENGINES)
async def message_side_engine(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Engine | MemoryTablesEngine]:
    async with engine_or_memory_named(request.param, request, tmp_path) as chosen:
        yield chosen
