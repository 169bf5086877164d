"""Retention: what Slack retries and X edits no longer need is pruned, in bounded batches."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.store.crypto import TokenCipher, generate_key
from adapters.store.engine import Dialect
from adapters.store.sqlite import SqliteStore
from adapters.store.upkeep import outbox_gauges_sql
from bridge.model import (
    ChannelMapping,
    EventKind,
    InboundEvent,
    IncomingMessage,
    MappingKind,
    OutboxState,
    Sent,
    TokenSet,
    XUser,
)
from bridge.retention import prune
from tests.contract.conftest import ENGINES, Engine, engine_or_memory_named, memory_too
from tests.memory_store import MemoryEngine
from tests.outbox import accepted

DAY = 86_400.0


@pytest.fixture(params=ENGINES)
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Engine | MemoryEngine]:
    """Both engines; the in-memory fakes too for the tests marked ``@memory_too``."""
    async with engine_or_memory_named(request.param, request, tmp_path) as chosen:
        yield chosen


def count(db_path: Path, table: str) -> int:
    with sqlite3.connect(db_path) as db:
        (n,) = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
    return int(n)


async def test_prune_keeps_what_edits_deletes_and_retries_need(engine: Engine) -> None:
    """On both stores."""
    store = engine.store()
    await store.open()
    try:
        account = await store.save_account("T1", "U1", XUser("1000", "me"), TokenSet("a", "r", None))
        mapping = ChannelMapping("T1", "C1", MappingKind.LINK, account.id, "1000-2001", None, "U1", 0.0)
        await store.create_mapping(mapping)
        now = 100 * DAY
        # 40 old messages (35 days), sent; 1 old one still waiting; 5 recent sent ones.
        for i in range(46):
            at = now - 35 * DAY if i < 41 else now - DAY
            message = IncomingMessage("T1", "C1", f"{1000 + i}.000100", "U1", f"m{i}", event_id=f"Ev{i}")
            assert await accepted(store, message, at)
        rows = await store.list_outbox([OutboxState.QUEUED], limit=100)
        for row in rows:
            if row.slack_ts != "1040.000100":
                await store.mark_sent(row.id, Sent("1000-2001", f"90{row.id}"), row.created_at + 1)
        waiting = next(r for r in rows if r.slack_ts == "1040.000100")
        await store.reschedule(waiting.id, OutboxState.WAITING, 1e15, "held")

        deleted = await prune(store, now, retention_days=30, batch=7)

        assert await engine.sql("SELECT COUNT(*) FROM outbox") == [(6,)]  # the waiting row stays
        assert await engine.sql("SELECT COUNT(*) FROM message_map") == [(5,)]
        assert await engine.sql("SELECT COUNT(*) FROM seen_events") == [(5,)]
        assert deleted == 40 + 40 + 41
        # A recent message can still be edited or deleted: its map is there.
        assert await store.relayed_events("T1", "C1", "1045.000100") == ["90" + str(rows[-1].id)]
        assert await store.relayed_events("T1", "C1", "1000.000100") == []
        assert (await store.outbox_gauges())["pending"] == 1
    finally:
        await store.close()


async def test_gauges_read_only_the_pending_index(tmp_path: Path) -> None:
    db_path = tmp_path / "store.db"
    store = SqliteStore(str(db_path), TokenCipher([generate_key()]))
    await store.open()
    try:
        account = await store.save_account("T1", "U1", XUser("1000", "me"), TokenSet("a", "r", None))
        mapping = ChannelMapping("T1", "C1", MappingKind.LINK, account.id, "1000-2001", None, "U1", 0.0)
        await store.create_mapping(mapping)
        for i in range(4):
            assert await accepted(store, IncomingMessage("T1", "C1", f"{i}.1", "U1", "m"), 10.0 + i)
        first = (await store.list_outbox([OutboxState.QUEUED]))[0]
        await store.mark_sent(first.id, Sent("1000-2001", "9"), 20.0)
        assert await store.outbox_gauges() == {"pending": 3, "oldest_pending_at": 11.0}
    finally:
        await store.close()
    with sqlite3.connect(db_path) as db:
        plan = " ".join(
            str(r[-1])
            for r in db.execute(f"EXPLAIN QUERY PLAN {outbox_gauges_sql(Dialect.SQLITE)}").fetchall()
        )
    assert "INDEX outbox_pending" in plan, plan  # the backlog's index, not a scan of the history


async def test_finished_x_events_go_after_x_window_and_waiting_ones_stay(engine: Engine) -> None:
    """On both stores: the inbound table is bounded too, but never below X's 30-day window
    (a replayed push or a history read of an event whose row is gone would post it again)."""
    store = engine.store()
    await store.open()
    try:
        account = await store.save_account("T1", "U1", XUser("1000", "me"), TokenSet("a", "r", None))
        mapping = ChannelMapping("T1", "C1", MappingKind.LINK, account.id, "1000-2001", None, "U1", 0.0)
        await store.create_mapping(mapping)
        now = 100 * DAY

        other = ChannelMapping("T1", "C2", MappingKind.LINK, account.id, "1000-2002", None, "U1", 0.0)
        await store.create_mapping(other)

        def event(event_id: str, conversation: str = "1000-2001") -> InboundEvent:
            return InboundEvent(event_id, EventKind.MESSAGE_CREATE, conversation, "2001", {"text": event_id})

        async def post_head(channel: str, at: float) -> None:
            head = next(h for h in await store.inbound_heads() if h.channel_id == channel)
            assert await store.mark_posting(head.id, at) is not None
            await store.mark_posted(head.id, f"17{head.id}.000100", at)

        # Taken 40 days ago: three posted, one still waiting (its channel is refused, say).
        taken = await store.take_inbound(
            account.id, [event(str(i)) for i in (1, 2, 3, 4)], "4", now - 40 * DAY
        )
        assert taken == 4
        for _ in range(3):
            await post_head("C1", now - 40 * DAY)
        # Taken 10 days ago and posted: inside X's window, so kept even with RETENTION_DAYS=1.
        assert await store.take_inbound(account.id, [event("5", "1000-2002")], "5", now - 10 * DAY) == 1
        await post_head("C2", now - 10 * DAY)

        deleted = await prune(store, now, retention_days=1, batch=2)

        left = await engine.sql("SELECT dm_event_id, state FROM inbound ORDER BY dm_event_id")
        assert left == [("4", "queued"), ("5", "posted")], left
        assert deleted >= 3
        # What was pruned is not news again when X serves it inside its window: the cursor holds.
        assert await store.take_inbound(account.id, [event("5", "1000-2002")], "5", now) == 0
    finally:
        await store.close()


@memory_too
async def test_what_retention_prunes_is_gone_from_every_listing_and_what_waits_stays(engine: Engine) -> None:
    """Through the port only (so the in-memory fakes are held to it too): old finished rows of
    both directions, their message maps and old Slack event ids go, batch by batch; rows still
    to send or post stay, however old, and so does everything recent."""
    store = engine.store()
    await store.open()
    try:
        account = await store.save_account("T1", "U1", XUser("1000", "me"), TokenSet("a", "r", None))
        for channel, conversation in (("C1", "1000-2001"), ("C2", "1000-2002")):
            await store.create_mapping(
                ChannelMapping("T1", channel, MappingKind.LINK, account.id, conversation, None, "U1", 0.0)
            )
        now = 100 * DAY
        for n, at in ((1, now - 35 * DAY), (2, now - 35 * DAY), (3, now - 35 * DAY), (4, now - DAY / 2)):
            message = IncomingMessage("T1", "C1", f"{n}.000100", "U1", f"m{n}", event_id=f"Ev{n}")
            assert await accepted(store, message, at)
        rows = await store.list_outbox([OutboxState.QUEUED])
        for row in rows:
            if row.slack_ts != "3.000100":
                await store.mark_sent(row.id, Sent("1000-2001", f"90{row.slack_ts[0]}"), row.created_at + 1)
        waiting = next(r for r in rows if r.slack_ts == "3.000100")
        await store.reschedule(waiting.id, OutboxState.WAITING, 1e15, "held")

        def event(event_id: str, conversation: str = "1000-2001") -> InboundEvent:
            return InboundEvent(event_id, EventKind.MESSAGE_CREATE, conversation, "2001", {"text": event_id})

        old = [event(str(i)) for i in (11, 12, 13, 14)]
        assert await store.take_inbound(account.id, old, "14", now - 40 * DAY) == 4
        for _ in range(3):
            head = next(h for h in await store.inbound_heads() if h.channel_id == "C1")
            assert await store.mark_posting(head.id, now - 40 * DAY) is not None
            await store.mark_posted(head.id, f"17{head.dm_event_id}.000100", now - 40 * DAY)
        assert await store.take_inbound(account.id, [event("15", "1000-2002")], "15", now - 10 * DAY) == 1
        [recent] = [h for h in await store.inbound_heads() if h.channel_id == "C2"]
        await store.mark_posting(recent.id, now - 10 * DAY)
        await store.mark_posted(recent.id, "1715.000100", now - 10 * DAY)

        # 3 Slack event ids, 2 outbox rows sent, 5 message maps (those 2 sends and 3 posts), and
        # 3 inbound rows posted.
        assert await prune(store, now, retention_days=30, batch=2) == 13
        assert await prune(store, now, retention_days=30, batch=2) == 0

        assert [r.slack_ts for r in await store.list_outbox([OutboxState.SENT])] == ["4.000100"]
        assert [r.slack_ts for r in await store.list_outbox([OutboxState.WAITING])] == ["3.000100"]
        assert await store.outbox_gauges() == {"pending": 1, "oldest_pending_at": now - 35 * DAY}
        assert await store.relayed_events("T1", "C1", "1.000100") == []
        assert await store.relayed_events("T1", "C1", "4.000100") == ["904"]
        assert await store.known_event_ids(["901", "902", "904", "11", "15"]) == {"904", "15"}
        assert (await store.inbound_summary(account.id))["counts"] == {"queued": 1, "posted": 1}
        [left] = await store.inbound_heads()
        assert left.dm_event_id == "14"
        # Slack retrying the recent message is still known; X serving event 15 again is not news.
        retried = IncomingMessage("T1", "C1", "9.000100", "U1", "m4", event_id="Ev4")
        assert not await accepted(store, retried, now)
        assert await store.take_inbound(account.id, [event("15", "1000-2002")], "15", now) == 0
    finally:
        await store.close()
