"""The relay role (Slack's edits and deletes into the outbox) through the ports only, on both
engines and the in-memory fakes (tests/memory_relay.py).

test_store.py and test_store_contract.py check the same rules by reading the outbox table
(``engine.sql``), which the fakes have not: here what is left is read as the ports show it
(``list_outbox`` over every state, ``outbox_heads``), so the fakes cannot drift from the SQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from bridge.model import (
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
from bridge.ports import Store
from tests.contract.conftest import Engine
from tests.memory_store import MemoryEngine
from tests.outbox import accepted, readable

EVERY_STATE = list(OutboxState)


@pytest.fixture
def engine(engine_or_memory: Engine | MemoryEngine) -> Engine | MemoryEngine:
    return engine_or_memory


@asynccontextmanager
async def linked(engine: Engine, *channels: str, encrypted: str = "") -> AsyncIterator[Store]:
    """A store with ``channels`` linked to one conversation (``encrypted``: that one over X Chat)."""
    store: Any = engine.store()
    await store.open()
    try:
        account = await store.save_account("T1", "U1", XUser("1000", "me"), TokenSet("a", "r", None))
        for channel in channels:
            await store.create_mapping(
                ChannelMapping(
                    "T1",
                    channel,
                    MappingKind.LINK,
                    account.id,
                    "1000-2001",
                    None,
                    "U1",
                    0.0,
                    encrypted=channel == encrypted,
                )
            )
        yield store
    finally:
        await store.close()


def msg(n: int, channel: str = "C1") -> IncomingMessage:
    return IncomingMessage("T1", channel, f"{n}.000", "U1", f"m{n}", event_id=f"E{channel}{n}")


async def send(store: Store, head: OutboxItem, event_id: str, now: float) -> OutboxItem | None:
    claimed = await store.mark_sending(
        head.id, now, parts=[RenderedPart(f"Me: {head.source['text']}")], source=head.source
    )
    assert claimed is not None
    return await store.mark_sent(head.id, Sent("1000-2001", event_id), now)


async def kinds(store: Store) -> list[tuple[str, str]]:
    return [(r.kind.value, r.state.value) for r in await store.list_outbox(EVERY_STATE)]


async def test_an_edit_before_x_replaces_the_text_after_it_corrects_and_a_delete_cancels_or_deletes(
    engine: Engine,
) -> None:
    async with linked(engine, "C1") as store:
        for n in (1, 2):
            await store.accept_if_mapped(msg(n), float(n))
        edit = {"text": "m1!", "blocks": [], "user_id": "U1"}
        assert await store.accept_edit("T1", "C1", "1.000", "5.000", edit, 5.0) == "updated"
        assert await store.accept_edit("T1", "C1", "7.000", "7.100", edit, 5.0) == "unknown"
        [head] = readable(await store.outbox_heads())
        assert head.source["text"] == "m1!"
        following = await send(store, head, "9001", 6.0)
        assert following is not None and following.slack_ts == "2.000"
        assert await store.accept_edit("T1", "C1", "1.000", "8.000", {"text": "m1?"}, 8.0) == "queued"
        assert await store.accept_delete("T1", "C1", "2.000", "9.000", 9.0) == "cancelled"
        assert await store.accept_delete("T1", "C1", "1.000", "9.500", 9.5) == "queued"
        assert await store.accept_delete("T1", "C1", "3.000", "9.600", 9.6) == "unknown"
        assert await kinds(store) == [
            ("message", "sent"),
            ("message", "cancelled"),
            ("edit", "cancelled"),  # the message is deleted: no point correcting it first
            ("delete", "queued"),
        ]
        [deletion] = readable(await store.outbox_heads())
        assert deletion.kind.value == "delete" and deletion.ref_ts == "1.000"


async def test_an_edit_of_a_message_split_in_parts_before_any_went_is_one_row_again(engine: Engine) -> None:
    async with linked(engine, "C1") as store:
        await store.accept_if_mapped(msg(1), 1.0)
        [head] = readable(await store.outbox_heads())
        await store.render(head.id, [RenderedPart("(1/2) Me: m"), RenderedPart("(2/2) Me: 1")])
        assert len(await store.list_outbox(EVERY_STATE)) == 2
        assert await store.accept_edit("T1", "C1", "1.000", "2.000", {"text": "one"}, 2.0) == "updated"
        [only] = await store.list_outbox(EVERY_STATE)
        assert (only.id, only.text, only.parts_total, only.source["text"]) == (head.id, None, 1, "one")


async def test_edits_and_deletes_of_messages_held_for_a_previous_account_wait_for_it(engine: Engine) -> None:
    async with linked(engine, "C1") as store:
        assert await accepted(store, msg(1), 1.0)
        [head] = readable(await store.outbox_heads())
        await send(store, head, "9001", 2.0)
        await store.accept_if_mapped(msg(2), 3.0)
        me, carol = XUser("1000", "me"), XUser("2003", "carol")
        [held] = await store.hold_for_previous_account(head.account_id, me, carol, 4.0)
        assert (held.channel_id, held.held_for) == ("C1", "1000")
        await store.accept_if_mapped(msg(3), 5.0)  # posted after the switch: held too
        assert await store.accept_edit("T1", "C1", "2.000", "6.000", {"text": "m2!"}, 6.0) == "updated"
        assert await store.accept_edit("T1", "C1", "1.000", "7.000", {"text": "m1!"}, 7.0) == "queued"
        assert await store.accept_delete("T1", "C1", "3.000", "8.000", 8.0) == "cancelled"
        assert await store.outbox_heads() == []  # nothing may go as @carol
        assert await kinds(store) == [
            ("message", "sent"),
            ("message", "held"),
            ("message", "cancelled"),
            ("edit", "held"),
        ]
        await store.hold_for_previous_account(head.account_id, carol, me, 9.0)  # 1000 is back
        heads = readable(await store.outbox_heads())
        assert [(h.kind.value, h.slack_ts, h.source.get("text")) for h in heads] == [
            ("message", "2.000", "m2!")
        ]
        assert await kinds(store) == [
            ("message", "sent"),
            ("message", "queued"),
            ("message", "cancelled"),
            ("edit", "queued"),
        ]


async def test_a_row_deleted_in_slack_stays_cancelled_whatever_a_stale_reader_writes(engine: Engine) -> None:
    async with linked(engine, "C1") as store:
        await store.accept_if_mapped(msg(1), 1.0)
        [stale] = readable(await store.outbox_heads())
        assert await store.accept_delete("T1", "C1", "1.000", "2.000", 2.0) == "cancelled"
        assert (
            await store.mark_sending(stale.id, 2.5, parts=[RenderedPart("Me: m1")], source=stale.source)
            is None
        )
        await store.reschedule(
            stale.id, OutboxState.WAITING, 9.0, "waiting for X's rate limit", held_since=3.0
        )
        await store.reschedule(stale.id, OutboxState.QUEUED, 9.0, "X failed with HTTP 503")
        await store.mark_failed(stale.id, "X refused it")
        assert await store.outbox_heads() == [] and await store.failures_to_tell() == []
        assert await kinds(store) == [("message", "cancelled")]
        # Deleted mid-send: read back, never sent again; once X is known not to have it, cancelled.
        await store.accept_if_mapped(msg(2), 4.0)
        [head] = readable(await store.outbox_heads())
        assert await store.mark_sending(head.id, 5.0, parts=[RenderedPart("Me: m2")], source=head.source)
        assert await store.accept_delete("T1", "C1", "2.000", "6.000", 6.0) == "queued"
        assert await store.mark_sending(head.id, 7.0) is None
        await store.reschedule(head.id, OutboxState.QUEUED, 8.0, "X said 503: it does not have it")
        assert [r.state for r in await store.list_outbox(EVERY_STATE) if r.id == head.id] == [
            OutboxState.CANCELLED
        ]


async def test_every_row_of_an_encrypted_channel_says_so_even_once_it_is_unlinked(engine: Engine) -> None:
    async with linked(engine, "C1", "C2", encrypted="C1") as store:
        await store.accept_if_mapped(msg(1), 1.0)
        await store.accept_if_mapped(msg(1, "C2"), 1.0)
        heads = {h.channel_id: h for h in readable(await store.outbox_heads())}
        assert heads["C1"].encrypted and not heads["C2"].encrypted
        head = heads["C1"]
        await store.mark_sending(
            head.id, 2.0, parts=[RenderedPart("Me: a"), RenderedPart("Me: b")], source=head.source
        )
        await store.mark_sent(head.id, Sent("1000-2001", "9001"), 2.0)
        await store.delete_mapping("T1", "C1")  # unlinked: its corrections still go encrypted
        assert await store.accept_edit("T1", "C1", "1.000", "4.000", {"text": "m1!"}, 4.0) == "queued"
        rows = [r for r in await store.list_outbox(EVERY_STATE) if r.channel_id == "C1"]
        assert [(r.kind.value, r.part, r.encrypted) for r in rows] == [
            ("message", 0, True),
            ("message", 1, True),
            ("edit", 0, True),
        ]


async def test_accepts_at_once_hand_each_channel_its_first_row_once(engine: Engine) -> None:
    async with linked(engine, "C1", "C2") as store:
        results = await asyncio.gather(
            *(
                store.accept_if_mapped(msg(n, channel), float(n))
                for n in range(1, 21)
                for channel in ("C1", "C2")
            )
        )
        assert all(r is not None and r.new for r in results)
        heads = [r.head for r in results if r is not None and r.head is not None]
        assert sorted(h.channel_id for h in heads) == ["C1", "C2"]
        every = await store.list_outbox(EVERY_STATE)
        for head in heads:
            assert head.seq == min(r.seq for r in every if r.channel_id == head.channel_id)
