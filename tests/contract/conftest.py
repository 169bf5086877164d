"""Every contract test runs against both stores: the behaviour they share is specified here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest

from adapters.store.crypto import TokenCipher, generate_key
from adapters.store.postgres import PostgresStore
from adapters.store.sqlite import SqliteStore
from bridge.model import OutboxItem
from bridge.ports import Store
from tests import pg
from tests.memory_store import MemoryEngine

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


# -- Every role on both engines and on its in-memory fake (tests/memory_store.py) -------------------
# A module of roles only takes ``engine_or_memory``; a module mixing them with tests that read
# tables (``engine.sql``: the memory engine has no SQL) defines its ``engine`` over
# ``engine_or_memory_named`` (params ``ENGINES``) and marks the tests the fake must pass too with
# ``@memory_too``.

STORES = (*ENGINES, "memory")

memory_too = pytest.mark.parametrize("engine", STORES, indirect=True)

AnyEngine = Engine | MemoryEngine


class ContractStore(Store, Protocol):
    """What both engines' stores and ``MemoryStore`` offer alike: every role's port, and the few
    calls beside them the contract tests make."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def usernames_needing_reconnect(self) -> list[str]: ...
    async def get_item(self, item_id: int) -> OutboxItem | None: ...
    async def set_held_since(self, item_id: int, since: float | None) -> None: ...


@asynccontextmanager
async def engine_or_memory_named(
    name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[AnyEngine]:
    """``engine_named``, or the in-memory fake's tables for ``memory``."""
    if name == "memory":
        yield MemoryEngine()
        return
    async with engine_named(name, request, tmp_path) as chosen:
        yield chosen


@pytest.fixture(params=STORES)
async def engine_or_memory(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AnyEngine]:
    """Where a role is tested: each engine, and the fake the unit tests use, held to the same tests."""
    async with engine_or_memory_named(request.param, request, tmp_path) as chosen:
        yield chosen


@asynccontextmanager
async def opened(side: AnyEngine) -> AsyncIterator[ContractStore]:
    """A store of ``side``, open for the block."""
    store: ContractStore = side.store()
    await store.open()
    try:
        yield store
    finally:
        await store.close()
