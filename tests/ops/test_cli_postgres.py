"""The operator commands on PostgreSQL: the same output and the same changes as on SQLite."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from adapters.store.crypto import TokenCipher, generate_key
from adapters.store.postgres import PostgresStore
from bridge.model import ChannelMapping, IncomingMessage, MappingKind, OutboxState, TokenSet, XUser
from tests import pg
from tests.ops.support import run
from tests.outbox import accepted


@pytest.fixture
def pg_database(pg_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    url = asyncio.run(pg.create_database(pg_server))
    monkeypatch.setenv("DATABASE_URL", url)
    yield url
    asyncio.run(pg.drop_database(pg_server, url))


async def fill(url: str) -> list[int]:
    store = PostgresStore(url, TokenCipher([generate_key()]))
    await store.open()
    try:
        account = await store.save_account("T1", "U1", XUser("1000", "me"), TokenSet("tok-a", "tok-r", None))
        mapping = ChannelMapping("T1", "C1", MappingKind.LINK, account.id, "1000-2001", None, "U1", 1.0)
        await store.create_mapping(mapping)
        for n in (1, 2, 3):
            await accepted(store, IncomingMessage("T1", "C1", f"{n}.0", "U1", f"m{n}", event_id=f"E{n}"), 1.0)
        [first, second, third] = await store.list_outbox([OutboxState.QUEUED])
        await store.mark_failed(first.id, "refused")
        await store.reschedule(second.id, OutboxState.WAITING, 1e15, "reconnect")
        return [first.id, second.id, third.id]
    finally:
        await store.close()


def test_operator_commands_read_and_change_postgresql(
    pg_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    failed, waiting, queued = asyncio.run(fill(pg_database))
    code, out = run(capsys, "mappings", "--json")
    assert code == 0 and [m["channel_id"] for m in json.loads(out)] == ["C1"]
    code, out = run(capsys, "accounts", "--json")
    assert code == 0 and "tok-" not in out
    [account] = json.loads(out)
    assert account["x_username"] == "me" and account["has_refresh_token"] is True and account["mappings"] == 1
    code, out = run(capsys, "outbox", "--json")
    listed = json.loads(out)
    assert code == 0 and sorted(i["id"] for i in listed["items"]) == [failed, waiting, queued]

    code, out = run(capsys, "outbox", "retry", "--all-failed")
    assert code == 0 and str(failed) in out
    code, out = run(capsys, "outbox", "drop", str(waiting), "99999")
    assert code == 1 and "no such outbox row" in out

    states = asyncio.run(pg.query(pg_database, "SELECT id, state, last_error FROM outbox ORDER BY id"))
    assert states == [
        (failed, "queued", "refused"),
        (waiting, "failed", "dropped by operator"),
        (queued, "queued", None),
    ]


def test_a_database_without_the_bridge_tables_says_to_migrate_and_stays_as_it_was(
    pg_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in (["outbox"], ["accounts"], ["workspaces"], ["outbox", "retry", "--all-failed"]):
        code, out = run(capsys, *command)
        assert code == 1 and "run `xdm-bridge migrate`" in out and "Traceback" not in out, command
    assert asyncio.run(pg.query(pg_database, "SELECT to_regclass('outbox') IS NULL")) == [(True,)]
