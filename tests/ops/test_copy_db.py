"""`xdm-bridge copy-db`: SQLite into PostgreSQL and back, nothing lost, counts verified."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from adapters.store.consents import ConsentStore
from adapters.store.crypto import TokenCipher, generate_key
from adapters.store.postgres import PostgresStore, migrate
from adapters.store.sqlite import SqliteStore, open_database
from bridge.connect import Consent
from bridge.model import ChannelMapping, IncomingMessage, MappingKind, RenderedPart, Sent, TokenSet, XUser
from migrations.postgres import TABLES
from tests import pg
from tests.ops.support import run
from tests.outbox import accepted, readable

AnyStore = SqliteStore | PostgresStore


async def fill(store: AnyStore) -> None:
    await store.open()
    try:
        account = await store.save_account(
            "T1", "U1", XUser("1000", "me"), TokenSet("secret-a", "secret-r", 5.0)
        )
        mapping = ChannelMapping("T1", "C1", MappingKind.LINK, account.id, "1000-2001", None, "U1", 1.0)
        await store.create_mapping(mapping)
        for n in range(1, 4):
            await accepted(store, IncomingMessage("T1", "C1", f"{n}.0", "U1", f"m{n}", event_id=f"E{n}"), n)
        [head] = readable(await store.outbox_heads())
        await store.mark_sending(
            head.id,
            5.0,
            [("user:1:15m", 200, 199, 900.0)],
            parts=[RenderedPart("Me: m1")],
            source=head.source,
        )
        await store.mark_sent(head.id, Sent("1000-2001", "9001"), 6.0)
        await ConsentStore(store.engine).record_consent(Consent("T1", "U1", "1000", "me", "agreed", 2.0))
    finally:
        await store.close()


async def snapshot(store: AnyStore) -> tuple[object, ...]:
    await store.open()
    try:
        return (
            await store.list_accounts(),
            await store.list_mappings(),
            [(h.slack_ts, h.source, h.state) for h in readable(await store.outbox_heads())],
            await store.known_event_ids(["9001"]),
            await store.load_budgets(),
            (await store.outbox_summary())["counts"],
        )
    finally:
        await store.close()


def test_sqlite_to_postgresql_and_back(
    tmp_path: Path, pg_server: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    key = TokenCipher([generate_key()])
    original = tmp_path / "bridge.db"
    asyncio.run(fill(SqliteStore(str(original), key)))
    url = asyncio.run(pg.create_database(pg_server))
    try:
        monkeypatch.delenv("DATABASE_URL", raising=False)
        monkeypatch.setenv("DATABASE_PATH", str(original))
        code, out = run(capsys, "copy-db", "--to", url)
        assert code == 0, out
        assert "outbox: 3" in out and "accounts: 1" in out
        # Progress, a line at a time, before the result (on stderr: run() shows it after stdout).
        assert (
            "rows from" in out and "writing them into the target" in out and "  outbox: 3 rows written" in out
        )
        before = asyncio.run(snapshot(SqliteStore(str(original), key)))
        assert asyncio.run(snapshot(PostgresStore(url, key))) == before

        code, out = run(capsys, "copy-db", "--to", url)  # never into a database with rows
        assert code == 1 and "copy only into an empty database" in out

        monkeypatch.setenv("DATABASE_URL", url)
        back = tmp_path / "back.db"
        code, out = run(capsys, "copy-db", "--to", str(back))
        assert code == 0, out
        assert asyncio.run(snapshot(SqliteStore(str(back), key))) == before

        async def new_row_after_copied_ids() -> int:
            store = PostgresStore(url, key)
            await store.open()
            try:
                mapping = await store.get_mapping("T1", "C1")
                assert mapping is not None
                message = IncomingMessage("T1", "C1", "4.0", "U1", "m4", event_id="E4")
                accepted = await store.accept_if_mapped(message, 7.0)
                assert accepted is not None and accepted.new
                # Every table that numbers its rows goes on after the copied ids, not only the
                # ones a list named (consents' id 1 came over: a new one must not collide).
                await ConsentStore(store.engine).record_consent(
                    Consent("T1", "U1", "1000", "me", "again", 8.0)
                )
                rows = await pg.query(url, "SELECT MAX(id) FROM outbox")
                return int(rows[0][0])
            finally:
                await store.close()

        assert asyncio.run(new_row_after_copied_ids()) == 4  # the sequence continues after the copy
    finally:
        asyncio.run(pg.drop_database(pg_server, url))


def test_copy_db_from_a_missing_file_is_an_error_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("DATABASE_PATH", str(tmp_path / "nope.db"))
    code, out = run(capsys, "copy-db", "--to", str(tmp_path / "other.db"))
    assert code == 1 and "no database at" in out
    code, out = run(capsys, "copy-db", "--to", "postgres://h/x?sslmode=bogus")
    assert code == 2 and "sslmode" in out


def pg_types(url: str) -> dict[str, dict[str, str]]:
    """Each bridge table's PostgreSQL column types, as information_schema names them."""
    found = asyncio.run(
        pg.query(
            url,
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema()",
        )
    )
    types: dict[str, dict[str, str]] = {}
    for table, column, data_type in found:
        types.setdefault(table, {})[column] = data_type
    return types


# A SQLite value for each PostgreSQL type, as the SQLite store writes it (booleans as 0/1); two
# rows per table, so each boolean column holds both.
SQLITE_VALUE: dict[str, Callable[[int, str], object]] = {
    "bigint": lambda n, name: n,  # ids, and the account ids that refer to them
    "integer": lambda n, name: n,
    "double precision": lambda n, name: n + 0.5,
    "text": lambda n, name: f"{name}-{n}",
    "boolean": lambda n, name: n % 2,
}


def sqlite_rows(path: Path) -> dict[str, list[tuple[object, ...]]]:
    db = sqlite3.connect(path)
    try:
        return {t: db.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in TABLES}
    finally:
        db.close()


def test_every_column_of_every_table_survives_sqlite_to_postgresql_and_back(
    tmp_path: Path, pg_server: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rows made from the schema itself: a column added later is filled and copied too."""
    original = tmp_path / "bridge.db"
    open_database(str(original)).close()
    url = asyncio.run(pg.create_database(pg_server))
    try:
        asyncio.run(migrate(url))
        types = pg_types(url)
        db = sqlite3.connect(original)
        with db:
            for table in TABLES:
                columns = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
                assert set(columns) == set(types[table]), table  # the two schemas agree
                for n in (1, 2):
                    values = [SQLITE_VALUE[types[table][c]](n, c) for c in columns]
                    marks = ", ".join("?" * len(columns))
                    db.execute(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", values)
        db.close()
        before = sqlite_rows(original)
        assert all(len(rows) == 2 for rows in before.values())

        monkeypatch.delenv("DATABASE_URL", raising=False)
        monkeypatch.setenv("DATABASE_PATH", str(original))
        code, out = run(capsys, "copy-db", "--to", url)
        assert code == 0, out
        pushed = asyncio.run(pg.query(url, "SELECT account_id, pushed FROM read_schedule ORDER BY 1"))
        assert pushed == [(1, True), (2, False)]

        monkeypatch.setenv("DATABASE_URL", url)
        back = tmp_path / "back.db"
        code, out = run(capsys, "copy-db", "--to", str(back))
        assert code == 0, out
        assert sqlite_rows(back) == before
    finally:
        asyncio.run(pg.drop_database(pg_server, url))


def test_a_corrupt_source_or_a_target_that_is_no_database_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    junk = tmp_path / "notes.txt"
    junk.write_text("not a database\n" * 200)
    monkeypatch.setenv("DATABASE_PATH", str(junk))
    code, out = run(capsys, "copy-db", "--to", str(tmp_path / "new.db"))
    assert code == 1 and out.count("\n") == 1 and "not a database" in out, out

    good = tmp_path / "bridge.db"
    open_database(str(good)).close()
    monkeypatch.setenv("DATABASE_PATH", str(good))
    code, out = run(capsys, "copy-db", "--to", str(junk))
    assert code == 1 and out.count("\n") == 1 and f"--to {junk}" in out, out
    assert junk.read_text() == "not a database\n" * 200  # left as it was


def test_a_source_written_to_during_the_copy_is_refused_not_copied_short(tmp_path: Path) -> None:
    """The operator forgot to stop the bridge: Slack's events keep landing in the source while it
    is copied. The counts compared what was read with what was written, so they always agreed,
    and the rows written meanwhile were silently left behind."""
    from adapters.ops import copy_db

    key = TokenCipher([generate_key()])
    source = tmp_path / "bridge.db"
    asyncio.run(fill(SqliteStore(str(source), key)))
    target = tmp_path / "copy.db"
    written: list[str] = []

    def meanwhile(line: str) -> None:
        if not written:  # the running bridge takes an event as the copy writes
            with sqlite3.connect(source) as db:
                db.execute("INSERT INTO seen_events (event_id, seen_at) VALUES ('Ev-late', 9.0)")
        written.append(line)

    with pytest.raises(copy_db.CopyError, match="changed while it was copied"):
        copy_db.copy(str(source), str(target), meanwhile)
    with sqlite3.connect(target) as db:
        assert db.execute("SELECT COUNT(*) FROM outbox").fetchone() == (0,)  # nothing half-copied


def outbox_flags(location: str) -> list[tuple[str, bool]]:
    """Each outbox row's Slack ts and whether it goes only through X Chat, on either engine."""
    if location.startswith("postgres"):
        rows = asyncio.run(pg.query(location, "SELECT slack_ts, encrypted FROM outbox ORDER BY id"))
    else:
        with sqlite3.connect(location) as db:
            rows = db.execute("SELECT slack_ts, encrypted FROM outbox ORDER BY id").fetchall()
    return [(ts, bool(flag)) for ts, flag in rows]


def test_a_row_keeps_its_own_conversation_kind_through_the_copy(
    tmp_path: Path, pg_server: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Messages written to a legacy DM (one sent, two waiting), then the channel unlinked and
    bridged by the same account to an encrypted X Chat conversation: each row keeps saying it
    is a legacy one (it goes where and how its author wrote it). The outbox's insert trigger
    fills ``encrypted`` from the channel's mapping for a row that says 0, and it fired on every
    copied row: the copy turned legacy rows into X Chat ones (an edit of the sent one would
    then be sent through X Chat, the waiting ones wait for keys instead of going)."""
    key = TokenCipher([generate_key()])
    original = tmp_path / "bridge.db"
    asyncio.run(fill(SqliteStore(str(original), key)))
    with sqlite3.connect(original) as db:  # /xdm unlink, then /xdm dm with someone on X Chat
        db.execute("UPDATE mappings SET encrypted = 1, conversation_id = '1000-2002'")
    before = outbox_flags(str(original))
    assert before == [("1.0", False), ("2.0", False), ("3.0", False)]
    url = asyncio.run(pg.create_database(pg_server))
    try:
        monkeypatch.delenv("DATABASE_URL", raising=False)
        monkeypatch.setenv("DATABASE_PATH", str(original))
        code, out = run(capsys, "copy-db", "--to", url)
        assert code == 0, out
        assert outbox_flags(url) == before

        monkeypatch.setenv("DATABASE_URL", url)
        back = tmp_path / "back.db"
        code, out = run(capsys, "copy-db", "--to", str(back))
        assert code == 0, out
        assert outbox_flags(str(back)) == before
        with sqlite3.connect(back) as db:  # the trigger is back for the bridge's own inserts
            assert db.execute(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'outbox_encrypted'"
            ).fetchone() == (1,)
        triggers = asyncio.run(
            pg.query(url, "SELECT tgenabled::text FROM pg_trigger WHERE tgname = 'outbox_encrypted'")
        )
        assert triggers == [("O",)]  # enabled again
    finally:
        asyncio.run(pg.drop_database(pg_server, url))
