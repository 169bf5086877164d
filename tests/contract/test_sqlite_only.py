"""What only the SQLite store has: its migration history and the trigger-kept pending_channels."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from adapters.store.crypto import TokenCipher, generate_key
from adapters.store.sqlite import TAKE_ROWS_PER_TRANSACTION, SqliteStore
from bridge.model import (
    ChannelMapping,
    EventKind,
    InboundEvent,
    IncomingMessage,
    MappingKind,
    OutboxItem,
    ReadGap,
    Sent,
    TokenSet,
    XUser,
)
from tests.outbox import accepted


async def test_migration_backfills_pending_channels(tmp_path: Path) -> None:
    """A database written before 0003 gets its pending channels when it migrates."""
    from sqlite_utils import Database

    from migrations import migrations

    db_path = tmp_path / "old.db"
    old = Database(sqlite3.connect(db_path))
    migrations.apply(old, stop_before="0003_pending_channels")
    old.execute(
        "INSERT INTO accounts (id, team_id, slack_user_id, x_user_id, x_username, access_token) "
        "VALUES (1, 'T1', 'U1', '1', 'me', 'x')"
    )
    for i, state in enumerate(("queued", "sent", "waiting")):
        old.execute(
            "INSERT INTO outbox (seq, part, team_id, channel_id, slack_ts, account_id, target_conversation, "
            "state, created_at) VALUES (?, 0, 'T1', ?, ?, 1, '1-2', ?, 0)",
            [i + 1, f"C{i}", f"{i}.0", state],
        )
    old.close()
    store = SqliteStore(str(db_path), TokenCipher([generate_key()]))
    await store.open()
    try:
        heads = await store.outbox_heads()
        assert sorted(h.channel_id for h in heads) == ["C0", "C2"]
    finally:
        await store.close()


async def test_pending_channels_is_exactly_the_channels_with_unfinished_rows(tmp_path: Path) -> None:
    db_path = tmp_path / "store.db"
    store = SqliteStore(str(db_path), TokenCipher([generate_key()]))
    await store.open()
    try:
        account = await store.save_account("T1", "U1", XUser("1000", "me"), TokenSet("a", "r", None))
        for channel in ("C1", "C2"):
            mapping = ChannelMapping(
                "T1", channel, MappingKind.LINK, account.id, "1000-2001", None, "U1", 0.0
            )
            await store.create_mapping(mapping)
            await accepted(store, IncomingMessage("T1", channel, "1.000", "U1", "m", event_id=channel), 1.0)
        [first, _] = sorted(await store.outbox_heads(), key=lambda h: h.channel_id)
        await store.mark_sent(first.id, Sent("1000-2001", "9001"), 2.0)
        with sqlite3.connect(db_path) as db:
            db.execute("UPDATE outbox SET state = 'failed' WHERE channel_id = 'C2'")
            assert db.execute("SELECT team_id, channel_id FROM pending_channels").fetchall() == []
            db.execute("UPDATE outbox SET state = 'queued' WHERE channel_id = 'C2'")
            assert db.execute("SELECT team_id, channel_id FROM pending_channels").fetchall() == [("T1", "C2")]
    finally:
        await store.close()


async def test_migration_keeps_one_target_on_rows_an_old_version_wrote_with_two(tmp_path: Path) -> None:
    """Before 0004 a sent 1-to-1 row got its conversation beside its participant, and edit and
    delete rows copied both: unreadable, they stopped every channel. 0004 keeps the participant."""
    from sqlite_utils import Database

    from migrations import migrations

    db_path = tmp_path / "old.db"
    old = Database(sqlite3.connect(db_path))
    migrations.apply(old, stop_before="0004_outbox_deleted_and_one_target")
    old.execute(
        "INSERT INTO accounts (id, team_id, slack_user_id, x_user_id, x_username, access_token) "
        "VALUES (1, 'T1', 'U1', '1000', 'me', 'x')"
    )
    old.execute(
        "INSERT INTO outbox (seq, part, team_id, channel_id, slack_ts, ref_ts, account_id, "
        "target_participant, target_conversation, state, created_at, kind, source) "
        "VALUES (1, 0, 'T1', 'C1', '2.000:delete', '1.000', 1, '2001', '1000-2001', 'queued', 0, "
        "'delete', '{}')"
    )
    old.close()
    store = SqliteStore(str(db_path), TokenCipher([generate_key()]))
    await store.open()
    try:
        [head] = await store.outbox_heads()
        assert isinstance(head, OutboxItem) and head.target.participant_id == "2001"
        assert head.target.conversation_id is None and not head.deleted
    finally:
        await store.close()


HOLDER = """
import asyncio, sys
from adapters.store.crypto import TokenCipher, generate_key
from adapters.store.sqlite import SqliteStore
from tests.outbox import accepted

async def main() -> None:
    store = SqliteStore(sys.argv[1], TokenCipher([generate_key()]))
    await store.open()
    async with store.refresh_lock(7):
        print("locked", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
    await store.close()

asyncio.run(main())
"""


@pytest.mark.process
async def test_refresh_lock_holds_across_processes_per_account(tmp_path: Path) -> None:
    """`serve` and an operator's command (xchat setup, accounts disconnect) share one SQLite file:
    only one of them may spend an account's single-use refresh token at a time."""
    import asyncio
    import sys

    db_path = str(tmp_path / "bridge.db")
    store = SqliteStore(db_path, TokenCipher([generate_key()]))
    await store.open()
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, db_path, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert (await asyncio.wait_for(holder.stdout.readline(), 30)).strip() == b"locked"

        async def take(account_id: int) -> None:
            async with store.refresh_lock(account_id):
                pass

        waiting = asyncio.create_task(take(7))
        await asyncio.wait_for(take(8), 5)  # another account is not held up
        await asyncio.sleep(0.3)
        assert not waiting.done()  # the other process holds account 7
        holder.stdin.write(b"release\n")
        await holder.stdin.drain()
        await asyncio.wait_for(waiting, 10)
    finally:
        if holder.returncode is None:
            holder.kill()
        await holder.wait()
        await store.close()


async def _fanned_out(tmp_path: Path) -> tuple[SqliteStore, int]:
    """A store whose account's conversation is bridged to three transactions' worth of channels."""
    store = SqliteStore(str(tmp_path / "store.db"), TokenCipher([generate_key()]))
    await store.open()
    account = await store.save_account("T1", "U1", XUser("1000", "me"), TokenSet("a", "r", None))
    for i in range(3 * TAKE_ROWS_PER_TRANSACTION):
        await store.create_mapping(
            ChannelMapping("T1", f"C{i}", MappingKind.LINK, account.id, "1000-2001", None, "U1", 0.0)
        )
    return store, account.id


async def test_a_take_of_many_rows_lets_other_calls_run_between_its_transactions(tmp_path: Path) -> None:
    """The store has one thread: a read fanned out to thousands of channels must not hold it
    while acks and /healthz wait (they run between its transactions, in the order they came)."""
    store, account_id = await _fanned_out(tmp_path)
    try:
        event = InboundEvent("5", EventKind.MESSAGE_CREATE, "1000-2001", "2001", {"text": "hi"})
        take = asyncio.create_task(store.take_inbound(account_id, [event], "5", 1.0))
        await asyncio.sleep(0)  # the take's first transaction is on the thread
        assert await store.ping()
        assert not take.done()  # the ping was answered between the take's transactions
        assert await store.get_cursor(account_id) is None  # the cursor moves with the last one
        assert await take == 3 * TAKE_ROWS_PER_TRANSACTION
        assert await store.get_cursor(account_id) == "5"
    finally:
        await store.close()


async def test_the_channels_of_an_unfinished_read_wait_from_the_first_of_its_transactions(
    tmp_path: Path,
) -> None:
    """X's order: rows a take wrote in its first transactions are not posted before the read's
    gap is kept (the older events still to come would land behind them)."""
    store, account_id = await _fanned_out(tmp_path)
    try:
        event = InboundEvent("5", EventKind.MESSAGE_CREATE, "1000-2001", "2001", {"text": "hi"})
        gap = ReadGap("next-page", "5", "5", 0, 1.0)
        take = asyncio.create_task(store.take_inbound(account_id, [event], None, 1.0, gap=gap))
        await asyncio.sleep(0)
        assert await store.inbound_heads() == []  # rows written, their channels waiting
        held = await store.read_gap(account_id)
        assert not take.done() and held is not None and held.token is None  # a crash: read again
        assert await take == 3 * TAKE_ROWS_PER_TRANSACTION
        assert await store.read_gap(account_id) == gap
        assert await store.inbound_heads() == []
    finally:
        await store.close()


async def test_the_pollers_accounts_with_groups_are_found_by_their_partial_index(tmp_path: Path) -> None:
    """The poller asks on every pass which accounts have a group bridged: the group mappings'
    partial index (0033) answers it, not a scan of every mapping (66 ms a pass at 100,000)."""
    store = SqliteStore(str(tmp_path / "groups.db"), TokenCipher([generate_key()]))
    await store.open()
    await store.close()
    sql = (
        "SELECT DISTINCT account_id FROM mappings WHERE kind = 'group' "
        "OR (conversation_id <> '' AND conversation_id NOT LIKE '%-%')"
    )
    with sqlite3.connect(tmp_path / "groups.db") as db:
        plan = " ".join(str(row[-1]) for row in db.execute(f"EXPLAIN QUERY PLAN {sql}"))
    assert "USING INDEX mappings_groups" in plan
