"""The operator's role (``xdm-bridge accounts | mappings | outbox``, ``doctor``): one SQL on both
engines, on the operator's own engine (no store opened, no migration, no key), held to one contract."""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlite_utils import Database

from adapters.store.operator import DROPPED, OperatorStore, table_exists
from adapters.store.select import operator_engine
from bridge.errors import StoreUnavailable
from bridge.model import (
    ChannelMapping,
    IncomingMessage,
    MappingKind,
    OutboxState,
    RenderedPart,
    Sent,
    TokenSet,
    XUser,
)
from migrations import migrations
from tests.contract.conftest import Engine
from tests.outbox import accepted

NOW = 1_800_000_000.0


@dataclass
class Rows:
    sent: int
    failed: int
    waiting: int
    queued: int
    sending: int


async def fill(engine: Engine) -> Rows:
    """One account, a mapping, and an outbox row in each state, written by the real store."""
    store = engine.store()
    await store.open()
    try:
        account = await store.save_account(
            "T1", "U1", XUser("1000", "me"), TokenSet("tok-a", "tok-r", NOW + 60)
        )
        await store.create_mapping(
            ChannelMapping("T1", "C1", MappingKind.LINK, account.id, "1000-2001", None, "U1", NOW)
        )
        for n in range(5):
            message = IncomingMessage("T1", "C1", f"{n}.0", "U1", f"m{n}", event_id=f"E{n}")
            assert await accepted(store, message, NOW - 600 + n)
        ids = [item.id for item in await store.list_outbox([OutboxState.QUEUED])]
        await store.mark_sent(ids[0], Sent("1000-2001", "9001"), NOW)
        await store.mark_failed(ids[1], "refused")
        await store.reschedule(ids[2], OutboxState.WAITING, 1e15, "reconnect")
        [last] = [i for i in await store.list_outbox([OutboxState.QUEUED]) if i.id == ids[4]]
        await store.mark_sending(ids[4], NOW, parts=[RenderedPart("m4")], source=last.source)
        return Rows(sent=ids[0], failed=ids[1], waiting=ids[2], queued=ids[3], sending=ids[4])
    finally:
        await store.close()


async def states(engine: Engine) -> dict[int, tuple[str, str | None, float]]:
    found = await engine.sql("SELECT id, state, last_error, next_attempt_at FROM outbox")
    return {r[0]: (r[1], r[2], r[3]) for r in found}


async def test_reads_list_accounts_mappings_and_the_outbox_without_tokens(engine: Engine) -> None:
    rows = await fill(engine)
    async with operator_engine(engine.location) as on_database:
        store = OperatorStore(on_database)
        [account] = await store.accounts(NOW)
        assert (account["x_username"], account["mappings"], account["has_refresh_token"]) == ("me", 1, True)
        assert account["token_expired"] is False and account["needs_reconnect"] is False
        assert "tok-" not in repr(account)
        [mapping] = await store.mappings()
        assert (mapping["channel_id"], mapping["kind"], mapping["x_username"]) == ("C1", "link", "me")
        assert await store.mapped_teams() == {"T1"}
        [workspace] = await store.workspaces()
        assert (workspace["team_id"], workspace["installed"], workspace["accounts"]) == ("T1", False, 1)

        listed = {i["id"]: i for i in await store.outbox(NOW)}
        assert set(listed) == {rows.failed, rows.waiting, rows.queued, rows.sending}  # not the sent one
        assert listed[rows.waiting]["waiting_for_reconnect"] is True
        assert listed[rows.waiting]["next_attempt_at"] is None
        assert listed[rows.failed]["age_seconds"] == 599.0 and listed[rows.failed]["text"] == "m1"
        assert [i["id"] for i in await store.outbox(NOW, ("failed",))] == [rows.failed]
        assert len(await store.outbox(NOW, limit=2)) == 2
        summary = await store.outbox_summary(NOW)
        assert summary["counts"] == {"sent": 1, "failed": 1, "waiting": 1, "queued": 1, "sending": 1}
        assert (summary["pending"], summary["failed"], summary["oldest_pending_age_seconds"]) == (3, 1, 598.0)


async def test_retry_makes_rows_due_and_keeps_a_sending_row_sending(engine: Engine) -> None:
    rows = await fill(engine)
    async with operator_engine(engine.location) as on_database:
        store = OperatorStore(on_database)
        asked = [rows.failed, rows.waiting, rows.sending, rows.sent, 999, rows.failed]
        outcome = await store.retry(asked, now=NOW + 1)
    assert outcome.done == [rows.failed, rows.waiting, rows.sending]
    assert outcome.skipped == {rows.sent: "it is sent, not waiting or failed", 999: "no such outbox row"}
    after = await states(engine)
    assert after[rows.failed][0] == after[rows.waiting][0] == "queued"
    assert after[rows.sending][0] == "sending"  # its POST may have reached X: the worker checks first
    assert {after[i][2] for i in (rows.failed, rows.waiting, rows.sending)} == {NOW + 1}
    assert after[rows.sent][0] == "sent"
    # Retried, a failure is no longer one to tell its author about at the next start.
    assert await engine.sql("SELECT id FROM outbox WHERE untold_failure IS NOT NULL") == []


async def test_drop_fails_unsent_rows_and_retry_all_failed_undoes_it(engine: Engine) -> None:
    rows = await fill(engine)
    async with operator_engine(engine.location) as on_database:
        store = OperatorStore(on_database)
        dropped = await store.drop([rows.queued, rows.sending, rows.failed, rows.sent, 999])
        assert dropped.done == [rows.queued, rows.sending]
        assert dropped.skipped == {
            rows.failed: "it had already failed",
            rows.sent: "it is sent; only unsent rows can be dropped",
            999: "no such outbox row",
        }
        after = await states(engine)
        assert after[rows.queued][:2] == after[rows.sending][:2] == ("failed", DROPPED)
        assert after[rows.failed][:2] == ("failed", "refused")

        assert await engine.sql("SELECT id FROM outbox WHERE untold_failure IS NOT NULL") == [(rows.failed,)]
        retried = await store.retry(all_failed=True, now=NOW)
        assert await engine.sql("SELECT id FROM outbox WHERE untold_failure IS NOT NULL") == []
        assert retried.done == sorted([rows.queued, rows.sending, rows.failed]) and not retried.skipped
        assert [s for s in (await states(engine)).values() if s[0] == "failed"] == []
        assert (await store.retry(all_failed=True, now=NOW)).done == []


async def test_a_database_without_the_bridge_tables_says_to_migrate_and_is_not_migrated(
    engine: Engine,
) -> None:
    if engine.name == "sqlite":
        with closing(Database(engine.location)) as db:  # a file that is not the bridge's
            db.execute("CREATE TABLE unrelated (x)")
    async with operator_engine(engine.location) as on_database:
        assert not await table_exists(on_database, "outbox")
        with pytest.raises(StoreUnavailable, match="run `xdm-bridge migrate`"):
            await OperatorStore(on_database).accounts(NOW)
        assert not await table_exists(on_database, "outbox")


# SQLite only: a PostgreSQL URL names a server (which says itself what it lacks), and its
# migrations are checked by the table test above.


async def test_the_operator_engine_applies_no_migration_to_a_file_behind(tmp_path: Path) -> None:
    path = str(tmp_path / "behind.db")
    with closing(Database(path)) as db:
        last = migrations.pending(db)[-1].name
        migrations.apply(db, stop_before=last)
    async with operator_engine(path) as on_database:
        assert await OperatorStore(on_database).outbox(NOW) == []
    with closing(Database(path)) as db:
        assert [m.name for m in migrations.pending(db)] == [last]


async def test_a_missing_sqlite_file_is_refused_not_created(tmp_path: Path) -> None:
    path = tmp_path / "typo.db"
    with pytest.raises(StoreUnavailable, match=r"no database at .*DATABASE_PATH"):
        async with operator_engine(str(path)):
            pass
    assert not path.exists()
