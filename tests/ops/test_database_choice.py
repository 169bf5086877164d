"""DATABASE_URL picks PostgreSQL (sslmode honoured), else SQLite; `migrate` applies either."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from adapters.store.crypto import TokenCipher, generate_key
from adapters.store.postgres import PostgresStore
from adapters.store.select import describe, make_store
from adapters.store.sqlite import SqliteStore
from bridge.errors import ConfigError
from bridge.model import ChannelMapping, IncomingMessage, MappingKind, TokenSet, XUser
from bridge.settings import Settings
from migrations.postgres import MIGRATIONS
from tests import pg
from tests.ops.support import run

BASE = {
    "SLACK_SIGNING_SECRET": "s",
    "SLACK_BOT_TOKEN": "xoxb-1",
    "X_CLIENT_ID": "c",
    "BRIDGE_ENCRYPTION_KEY": generate_key(),
}


def test_database_url_selects_postgresql_and_its_absence_sqlite(tmp_path: Path) -> None:
    for url in ("postgres://u:hunter2@db.example:5432/x", "postgresql://u@db.example/x?sslmode=require"):
        settings = Settings.from_env({**BASE, "DATABASE_URL": url})
        assert isinstance(make_store(settings), PostgresStore)
        assert "hunter2" not in describe(settings) and "hunter2" not in repr(settings)
    path = str(tmp_path / "b.db")
    settings = Settings.from_env({**BASE, "DATABASE_PATH": path})
    assert isinstance(make_store(settings), SqliteStore) and describe(settings) == path


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("mysql://u@h/x", "must be a postgres:// or postgresql:// URL"),
        ("sqlite:///bridge.db", "must be a postgres:// or postgresql:// URL"),
        ("postgres:///x", "names no host"),
        ("postgres://h/x?sslmode=always", "sslmode='always' must be one of"),
    ],
)
def test_an_unusable_database_url_is_one_line_naming_the_variable(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**BASE, "DATABASE_URL": url})
    assert problem in str(caught.value) and "DATABASE_URL" in str(caught.value)


async def test_sslmode_is_honoured(pg_url: str) -> None:
    """The test server speaks no TLS: sslmode=require must refuse it, sslmode=disable must not."""
    cipher = TokenCipher([generate_key()])
    strict = PostgresStore(f"{pg_url}?sslmode=require", cipher)
    with pytest.raises(ConnectionError):
        await strict.open()
    plain = PostgresStore(f"{pg_url}?sslmode=disable", cipher)
    await plain.open()
    try:
        assert await plain.ping()
    finally:
        await plain.close()


def test_migrate_applies_postgresql_migrations_once(
    pg_server: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = asyncio.run(pg.create_database(pg_server))
    try:
        monkeypatch.setenv("DATABASE_URL", url)
        for _ in range(2):  # the release phase runs on every deploy
            code, out = run(capsys, "migrate")
            assert code == 0 and "is up to date" in out

        async def applied() -> list[str]:
            conn = await asyncpg.connect(url)
            try:
                return [r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")]
            finally:
                await conn.close()

        assert asyncio.run(applied()) == [name for name, _ in MIGRATIONS]
        monkeypatch.setenv("DATABASE_URL", "mysql://h/x")
        code, out = run(capsys, "migrate")
        assert code == 2 and "DATABASE_URL must be a postgres://" in out
    finally:
        asyncio.run(pg.drop_database(pg_server, url))


def test_litestream_replicates_sqlite_only() -> None:
    settings = Settings.from_env({**BASE, "LITESTREAM_REPLICA_URL": "s3://bucket/bridge"})
    assert settings.litestream_replica_url == "s3://bucket/bridge"
    assert "bucket" not in repr(settings)
    with pytest.raises(ConfigError, match="DATABASE_URL selects PostgreSQL: unset one of them"):
        Settings.from_env({**BASE, "LITESTREAM_REPLICA_URL": "s3://b/p", "DATABASE_URL": "postgres://h/x"})
    with pytest.raises(ConfigError, match="is not a replica URL"):
        Settings.from_env({**BASE, "LITESTREAM_REPLICA_URL": "bucket/path"})


async def test_a_role_without_the_temporary_privilege_runs_the_bridge(pg_url: str) -> None:
    """The hot path's functions are created once by a migration (0024), not in each connection's
    temporary schema: a role that may not create temporary objects (hosted databases that revoke
    it) opens the store and takes messages."""
    cipher = TokenCipher([generate_key()])
    store = PostgresStore(pg_url, cipher)
    await store.open()  # migrated by its owner
    await store.close()
    role = f"r_{uuid.uuid4().hex[:12]}"
    database = urlsplit(pg_url).path.lstrip("/")
    admin = await asyncpg.connect(pg_url)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN")
        await admin.execute(f"REVOKE TEMPORARY ON DATABASE {database} FROM PUBLIC")
        await admin.execute(f"GRANT USAGE, CREATE ON SCHEMA public TO {role}")
        await admin.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
        await admin.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
        parts = urlsplit(pg_url)
        as_role = urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))
        limited = PostgresStore(as_role, cipher)
        await limited.open()
        try:
            async with limited.pool.acquire() as pooled:
                with pytest.raises(asyncpg.InsufficientPrivilegeError):  # the premise holds
                    await pooled.execute("CREATE TEMPORARY TABLE t (x int)")
            account = await limited.save_account("T1", "U1", XUser("1000", "me"), TokenSet("a", "r", None))
            await limited.create_mapping(
                ChannelMapping("T1", "C1", MappingKind.LINK, account.id, "1000-2001", None, "U1", 0.0)
            )
            message = IncomingMessage("T1", "C1", "1.000", "U1", "m1", event_id="E1")
            accepted = await limited.accept_if_mapped(message, 1.0)
            assert accepted is not None and accepted.new and accepted.head is not None
        finally:
            await limited.close()
    finally:
        await admin.execute(f"REASSIGN OWNED BY {role} TO CURRENT_USER")
        await admin.execute(f"DROP OWNED BY {role}")
        await admin.close()
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute(f"DROP ROLE IF EXISTS {role}")
        finally:
            await conn.close()
