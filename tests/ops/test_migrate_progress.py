"""Long operator work shows progress: `migrate` says each migration before it runs it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlite_utils import Database

from migrations import migrations
from tests.ops.support import run


def test_migrate_says_each_pending_migration_before_applying_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "behind.db"
    db = Database(sqlite3.connect(path))
    names = [m.name for m in migrations.pending(db)]
    migrations.apply(db, stop_before=names[-2])  # two behind, as after an upgrade
    db.close()
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("DATABASE_PATH", str(path))

    code, out = run(capsys, "migrate")
    assert code == 0, out
    lines = out.splitlines()
    assert f"applying migration {names[-2]} (1 of 2)…" in lines
    assert f"applying migration {names[-1]} (2 of 2)…" in lines
    assert f"database {path} is up to date (version {len(names)})" in lines

    code, out = run(capsys, "migrate")  # nothing pending: nothing said but the result
    assert code == 0 and "applying" not in out


def test_migrate_on_postgresql_says_each_pending_migration_before_applying_it(
    pg_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same upgrade on PostgreSQL (a Heroku release phase, say) said nothing until the end,
    however long a migration over a big table took."""
    import asyncio

    import migrations.postgres as pg_migrations
    from adapters.store import postgres
    from adapters.store.crypto import generate_key

    names = [name for name, _ in pg_migrations.MIGRATIONS]
    with monkeypatch.context() as behind:
        behind.setattr(pg_migrations, "MIGRATIONS", pg_migrations.MIGRATIONS[:-2])  # two behind
        asyncio.run(postgres.migrate(pg_url))
    monkeypatch.setenv("DATABASE_URL", pg_url)
    monkeypatch.setenv("BRIDGE_ENCRYPTION_KEY", generate_key())
    code, out = run(capsys, "migrate")
    assert code == 0, out
    lines = out.splitlines()
    assert f"applying migration {names[-2]} (1 of 2)…" in lines, out
    assert f"applying migration {names[-1]} (2 of 2)…" in lines, out

    code, out = run(capsys, "migrate")  # nothing pending: nothing said but the result
    assert "applying" not in out
