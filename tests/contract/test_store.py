"""The stores' outbox bookkeeping, checked against plain SQL over the same rows, on both engines."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.store.postgres import PostgresStore
from adapters.store.sqlite import SqliteStore
from bridge.model import (
    Accepted,
    ChannelMapping,
    IncomingMessage,
    MappingKind,
    OutboxItem,
    OutboxState,
    RenderedPart,
    Sent,
    TokenSet,
    XUser,
)
from tests.contract.conftest import ENGINES, Engine, engine_or_memory_named, memory_too
from tests.memory_store import MemoryEngine
from tests.outbox import accepted, readable

PENDING = ("queued", "sending", "waiting")


@pytest.fixture(params=ENGINES)
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Engine | MemoryEngine]:
    """Both engines; the in-memory fakes too for the tests marked ``@memory_too``."""
    async with engine_or_memory_named(request.param, request, tmp_path) as chosen:
        yield chosen


async def naive_heads(engine: Engine) -> set[int]:
    """The oldest unfinished row of each channel, by a full scan (the definition)."""
    rows = await engine.sql(
        "SELECT id, team_id, channel_id, seq, part FROM outbox WHERE state IN (?, ?, ?)", *PENDING
    )
    heads: dict[tuple[str, str], tuple[int, int, int]] = {}
    for row_id, team, channel, seq, part in rows:
        key = (team, channel)
        if key not in heads or (seq, part) < heads[key][1:]:
            heads[key] = (row_id, seq, part)
    return {v[0] for v in heads.values()}


async def test_heads_match_a_full_scan_through_random_transitions(engine: Engine) -> None:
    store = engine.store()
    await store.open()
    try:
        account = await store.save_account("T1", "U1", XUser("1000", "me"), TokenSet("a", "r", None))
        channels = [f"C{i}" for i in range(6)]
        mappings = {}
        for channel in channels:
            mapping = ChannelMapping(
                "T1", channel, MappingKind.LINK, account.id, "1000-2001", None, "U1", 0.0
            )
            await store.create_mapping(mapping)
            mappings[channel] = mapping
        rng = random.Random(42)
        ts = 0
        for step in range(400):
            action = rng.random()
            heads = await store.outbox_heads()
            assert {h.id for h in heads} == await naive_heads(engine), f"step {step}"
            if action < 0.45 or not heads:
                ts += 1
                channel = rng.choice(channels)
                message = IncomingMessage("T1", channel, f"{ts}.000", "U1", f"m{ts}", event_id=f"E{ts}")
                assert await accepted(store, message, float(ts))
                continue
            head = rng.choice(heads)
            if action < 0.65:
                await store.mark_sent(head.id, Sent("1000-2001", str(10**15 + step)), float(ts))
            elif action < 0.75:
                await store.mark_failed(head.id, "refused")
            elif action < 0.85:
                await store.reschedule(head.id, OutboxState.WAITING, 0.0, "budget")
            elif action < 0.92:
                await store.accept_delete("T1", head.channel_id, head.slack_ts, f"{ts}.999", float(ts))
            else:
                # What `xdm-bridge outbox retry` does to a failed row, straight in SQL.
                await engine.sql("UPDATE outbox SET state = 'queued' WHERE state = 'failed'")
        heads = await store.outbox_heads()
        assert {h.id for h in heads} == await naive_heads(engine)
    finally:
        await store.close()


# -- the worker's trips: accept hands back a head, mark_sending claims, mark_sent hands on -------


@contextlib.asynccontextmanager
async def one_channel(engine: Engine) -> AsyncIterator[tuple[SqliteStore | PostgresStore, ChannelMapping]]:
    store = engine.store()
    await store.open()
    try:
        account = await store.save_account("T1", "U1", XUser("1000", "me"), TokenSet("a", "r", None))
        mapping = ChannelMapping("T1", "C1", MappingKind.LINK, account.id, "1000-2001", None, "U1", 0.0)
        await store.create_mapping(mapping)
        yield store, mapping
    finally:
        await store.close()


def message(n: int, text: str | None = None) -> IncomingMessage:
    return IncomingMessage("T1", "C1", f"{n}.000", "U1", text or f"m{n}", event_id=f"E{n}")


@memory_too
async def test_accept_hands_back_the_row_only_when_it_is_next_to_send(engine: Engine) -> None:
    async with one_channel(engine) as (store, _):
        first = await store.accept_if_mapped(message(1), 1.0)
        assert first is not None and first.new and first.head is not None
        assert first.head.slack_ts == "1.000" and first.head.source["text"] == "m1"
        second = await store.accept_if_mapped(message(2), 2.0)
        assert second is not None and second.new and second.head is None  # behind m1
        again = await store.accept_if_mapped(message(2), 3.0)
        assert again is not None and not again.new
        unmapped = IncomingMessage("T1", "C9", "4.000", "U1", "x", event_id="E4")
        assert await store.accept_if_mapped(unmapped, 4.0) is None


async def test_concurrent_accepts_each_commit_their_own_row_and_a_bad_one_fails_alone(
    engine: Engine,
) -> None:
    """Accepts arriving together (SQLite commits them as one group, one fsync): every caller is
    answered only once its row is committed, with its own row, and the one message that cannot be
    stored fails its own accept only."""
    async with one_channel(engine) as (store, mapping):
        for channel in ("C2", "C3"):
            await store.create_mapping(dataclasses.replace(mapping, channel_id=channel))
        messages = [
            IncomingMessage("T1", f"C{1 + n % 3}", f"{n}.000", "U1", f"m{n}", event_id=f"E{n}")
            for n in range(30)
        ]
        # Its blocks cannot be written down (not JSON): this accept must fail, alone.
        bad = IncomingMessage("T1", "C2", "99.000", "U1", "bad", event_id="E99", blocks=({"x": object()},))

        async def accept(message: IncomingMessage) -> Accepted | None:
            result = await store.accept_if_mapped(message, 1.0)
            # Answered only once the row is committed: another connection sees it already.
            found = await engine.sql(
                "SELECT COUNT(*) FROM outbox WHERE channel_id = ? AND slack_ts = ?",
                message.channel_id,
                message.ts,
            )
            assert found == [(1,)], message
            return result

        outcomes = await asyncio.gather(
            *(accept(m) for m in messages[:15]),
            accept(bad),
            *(accept(m) for m in messages[15:]),
            return_exceptions=True,
        )
        assert isinstance(outcomes[15], TypeError)
        results = [r for i, r in enumerate(outcomes) if i != 15]
        assert all(isinstance(r, Accepted) and r.new for r in results), results
        stored = await engine.sql("SELECT channel_id, slack_ts, id FROM outbox ORDER BY id")
        assert sorted((c, ts) for c, ts, _ in stored) == sorted((m.channel_id, m.ts) for m in messages)
        # One head per channel: the accept that found its channel idle, and it is the oldest row.
        heads = [r.head for r in results if isinstance(r, Accepted) and r.head is not None]
        assert sorted(h.channel_id for h in heads) == ["C1", "C2", "C3"]
        first = {c: min(i for ch, _, i in stored if ch == c) for c in ("C1", "C2", "C3")}
        assert {h.channel_id: h.id for h in heads} == first


@memory_too
async def test_mark_sent_hands_on_the_channels_next_row(engine: Engine) -> None:
    async with one_channel(engine) as (store, _):
        for n in (1, 2):
            await store.accept_if_mapped(message(n), float(n))
        [head] = readable(await store.outbox_heads())
        claimed = await store.mark_sending(head.id, 5.0, parts=[RenderedPart("Me: m1")], source=head.source)
        assert claimed is not None and claimed.state is OutboxState.SENDING and claimed.text == "Me: m1"
        following = await store.mark_sent(head.id, Sent("1000-2001", "9001"), 6.0)
        assert following is not None and following.slack_ts == "2.000"
        assert [h.id for h in await store.outbox_heads()] == [following.id]
        assert await store.mark_sent(following.id, Sent("1000-2001", "9002"), 7.0) is None


async def test_claim_renders_every_part_and_saves_budgets_in_one_write(engine: Engine) -> None:
    async with one_channel(engine) as (store, _):
        await store.accept_if_mapped(message(1), 1.0)
        [head] = readable(await store.outbox_heads())
        parts = [RenderedPart("(1/2) Me: a"), RenderedPart("(2/2) Me: b")]
        budget = ("user:1:15m", 200, 199, 900.0)
        claimed = await store.mark_sending(head.id, 5.0, [budget], parts=parts, source=head.source)
        assert claimed is not None
        assert (claimed.text, claimed.parts_total, claimed.attempts) == ("(1/2) Me: a", 2, 1)
        rows = await engine.sql("SELECT part, text, state FROM outbox ORDER BY part")
        assert rows == [(0, "(1/2) Me: a", "sending"), (1, "(2/2) Me: b", "queued")]
        saved = [(r["key"], r["remaining"]) for r in await store.load_budgets()]
        assert ("user:1:15m", 199) in saved


async def test_claim_refuses_a_row_deleted_in_slack_since_it_was_read(engine: Engine) -> None:
    async with one_channel(engine) as (store, _):
        await store.accept_if_mapped(message(1), 1.0)
        [head] = readable(await store.outbox_heads())
        assert await store.accept_delete("T1", "C1", "1.000", "2.000", 2.0) == "cancelled"
        budget = ("user:1:15m", 200, 199, 900.0)
        claim = await store.mark_sending(
            head.id, 3.0, [budget], parts=[RenderedPart("Me: m1")], source=head.source
        )
        assert claim is None
        assert await engine.sql("SELECT state, text, attempts FROM outbox") == [("cancelled", None, 0)]
        assert await store.load_budgets() == []  # nothing written


@memory_too
async def test_claim_refuses_a_render_of_text_edited_since_it_was_read(engine: Engine) -> None:
    async with one_channel(engine) as (store, _):
        await store.accept_if_mapped(message(1, "tpyo"), 1.0)
        [stale] = readable(await store.outbox_heads())
        edit = {"text": "typo", "blocks": [], "user_id": "U1"}
        assert await store.accept_edit("T1", "C1", "1.000", "2.000", edit, 2.0) == "updated"
        assert (
            await store.mark_sending(stale.id, 3.0, parts=[RenderedPart("Me: tpyo")], source=stale.source)
            is None
        )
        [fresh] = readable(await store.outbox_heads())
        assert fresh.text is None and fresh.source["text"] == "typo"
        claimed = await store.mark_sending(
            fresh.id, 4.0, parts=[RenderedPart("Me: typo")], source=fresh.source
        )
        assert claimed is not None and claimed.text == "Me: typo"


def test_the_sql_and_the_model_agree_on_what_is_pending() -> None:
    from migrations import PENDING_STATES
    from migrations.postgres import PENDING_STATES as PG_PENDING_STATES

    for states in (PENDING_STATES, PG_PENDING_STATES):
        in_sql = {s.strip(" '") for s in states.strip("()").split(",")}
        assert in_sql == {s.value for s in OutboxState if s.pending}


# -- issue 11: deletes mid-send, edits before any send, reconnection releases everything --------


async def test_a_sending_row_deleted_in_slack_is_never_claimed_or_requeued(engine: Engine) -> None:
    async with one_channel(engine) as (store, _):
        await store.accept_if_mapped(message(1), 1.0)
        [head] = readable(await store.outbox_heads())
        claimed = await store.mark_sending(head.id, 2.0, parts=[RenderedPart("Me: m1")], source=head.source)
        assert claimed is not None
        assert await store.accept_delete("T1", "C1", "1.000", "3.000", 3.0) == "queued"
        [sending] = [h for h in await store.outbox_heads() if h.id == head.id]
        assert isinstance(sending, OutboxItem) and sending.deleted and sending.state is OutboxState.SENDING
        assert await store.mark_sending(head.id, 4.0) is None
        await store.reschedule(head.id, OutboxState.QUEUED, 5.0, "X said 503: it does not have it")
        assert await engine.sql("SELECT state FROM outbox WHERE id = ?", head.id) == [("cancelled",)]


async def test_an_edit_before_any_part_reached_x_replaces_a_rendered_message(engine: Engine) -> None:
    async with one_channel(engine) as (store, _):
        await store.accept_if_mapped(message(1, "long and wrong"), 1.0)
        [head] = await store.outbox_heads()
        await store.render(head.id, [RenderedPart("(1/2) Me: long"), RenderedPart("(2/2) Me: wrong")])
        await store.reschedule(head.id, OutboxState.WAITING, 0.0, "waiting for X's rate limit")
        edit = {"text": "short and right", "blocks": [], "user_id": "U1"}
        assert await store.accept_edit("T1", "C1", "1.000", "2.000", edit, 2.0) == "updated"
        [fresh] = await store.outbox_heads()
        assert isinstance(fresh, OutboxItem)
        assert fresh.text is None and fresh.parts_total == 1 and fresh.source["text"] == "short and right"
        assert await engine.sql("SELECT COUNT(*) FROM outbox") == [(1,)]
        assert await store.mark_sending(fresh.id, 3.0) is None  # must be rendered again first


async def test_reconnecting_releases_every_unfinished_row_of_the_account(engine: Engine) -> None:
    async with one_channel(engine) as (store, mapping):
        for n in (1, 2, 3):
            other = ChannelMapping(
                "T1", f"C{n}0", MappingKind.LINK, mapping.account_id, "1000-2001", None, "U1", 0.0
            )
            await store.create_mapping(other)
            accepted = await store.accept_if_mapped(
                IncomingMessage("T1", f"C{n}0", f"{n}.000", "U1", "m", event_id=f"E{n}"), 1.0
            )
            assert accepted is not None and accepted.head is not None
            if n == 1:
                await store.reschedule(accepted.head.id, OutboxState.WAITING, 1e15, "reconnect")
            elif n == 2:
                await store.mark_sending(
                    accepted.head.id, 2.0, parts=[RenderedPart("x")], source=accepted.head.source
                )
                await store.reschedule(accepted.head.id, OutboxState.SENDING, 1e15, "reconnect")
            else:
                await store.reschedule(accepted.head.id, OutboxState.QUEUED, 500.0, "backing off")
        assert await store.release_account(mapping.account_id, 10.0) == 3
        rows = await engine.sql("SELECT channel_id, state, next_attempt_at FROM outbox ORDER BY channel_id")
        assert rows == [("C10", "queued", 10.0), ("C20", "sending", 10.0), ("C30", "queued", 10.0)]
