"""The in-memory outbox Delivery's unit tests run on (tests/memory_outbox.py, in MemoryStore) is
held to the same rules as both engines, by the same assertions and the same setup through the
ports, so the fast tests cannot drift from the SQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from bridge.errors import Failure
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
from tests.contract.conftest import AnyEngine, ContractStore, opened
from tests.outbox import accepted, readable

Add = Callable[[str, str], Awaitable[None]]
Outbox = tuple[ContractStore, Add]


@pytest.fixture
async def outbox(engine_or_memory: AnyEngine) -> AsyncIterator[Outbox]:
    """The outbox under test, and how to queue a message in one of its channels (as the relay
    does: mapped, accepted, then rendered as Delivery does before the first claim)."""
    async with opened(engine_or_memory) as store:
        account = await store.save_account("T1", "U1", XUser("1001", "me"), TokenSet("a", "r", None))
        mapped: set[str] = set()
        count = 0

        async def add(channel: str, text: str) -> None:
            nonlocal count
            if channel not in mapped:
                mapping = ChannelMapping(
                    "T1", channel, MappingKind.LINK, account.id, "1001-2001", None, "U1", 0.0
                )
                await store.create_mapping(mapping)
                mapped.add(channel)
            count += 1
            message = IncomingMessage("T1", channel, f"{count}.000", "U1", text, event_id=f"E{count}")
            assert await accepted(store, message, float(count))
            [row] = [r for r in await store.list_outbox([OutboxState.QUEUED]) if r.slack_ts == message.ts]
            await store.render(row.id, [RenderedPart(text)])

        yield store, add


async def heads(store: ContractStore) -> dict[str, OutboxItem]:
    return {h.channel_id: h for h in readable(await store.outbox_heads())}


async def test_a_channel_sends_its_oldest_unfinished_row_one_at_a_time(
    outbox: Outbox,
) -> None:
    store, add = outbox
    await add("C1", "first")
    await add("C1", "second")
    await add("C2", "other")
    first = (await heads(store))["C1"]
    assert set(await heads(store)) == {"C1", "C2"}
    claimed = await store.mark_sending(first.id, 10.0)
    assert claimed is not None and claimed.state is OutboxState.SENDING and claimed.attempts == 1
    # Still the channel's head while sending: nothing behind it may overtake it.
    assert (await heads(store))["C1"].id == first.id
    following = await store.mark_sent(first.id, Sent("1001-2001", "900"), 11.0)
    assert following is not None and following.id != first.id
    assert (await heads(store))["C1"].id == following.id
    # A finished row is claimed, rescheduled and failed no more.
    assert await store.mark_sending(first.id, 12.0) is None
    await store.reschedule(first.id, OutboxState.QUEUED, 50.0, "late")
    await store.mark_failed(first.id, "late", Failure.OTHER)
    assert await store.failures_to_tell() == []


async def test_a_reschedule_keeps_when_the_hold_began_and_a_failure_waits_to_be_told(
    outbox: Outbox,
) -> None:
    store, add = outbox
    await add("C1", "held")
    await add("C1", "behind")
    head = (await heads(store))["C1"]
    await store.reschedule(head.id, OutboxState.WAITING, 100.0, "budget", held_since=20.0)
    await store.reschedule(head.id, OutboxState.WAITING, 200.0, "budget", held_since=30.0)
    held = (await heads(store))["C1"]
    assert (held.state, held.next_attempt_at, held.held_since, held.last_error) == (
        OutboxState.WAITING,
        200.0,
        20.0,
        "budget",
    )
    await store.set_hourglass(head.id, True)
    assert (await heads(store))["C1"].hourglass
    await store.mark_failed(head.id, "refused", Failure.RECIPIENT_REFUSES_DMS)
    [(told, failure)] = await store.failures_to_tell()
    assert (told.id, failure) == (head.id, Failure.RECIPIENT_REFUSES_DMS)
    assert (await heads(store))["C1"].id != head.id  # the next row is the head now
    await store.failure_told(head.id)
    assert await store.failures_to_tell() == []


async def test_the_events_of_sent_rows_are_known_and_no_others(outbox: Outbox) -> None:
    store, add = outbox
    await add("C1", "first")
    head = (await heads(store))["C1"]
    assert await store.known_event_ids(["900"]) == set()
    await store.mark_sending(head.id, 10.0)
    await store.mark_sent(head.id, Sent("1001-2001", "900"), 11.0)
    assert await store.known_event_ids(["900", "901"]) == {"900"}
    assert await store.known_event_ids([]) == set()


async def test_an_x_chat_message_is_kept_once_for_the_text_it_was_made_from(outbox: Outbox) -> None:
    store, add = outbox
    await add("C1", "sealed")
    head = (await heads(store))["C1"]
    first = {"message_id": "m1", "body": {"n": 1}}
    second = {"message_id": "m2", "body": {"n": 2}}
    assert await store.keep_chat(head.id, "edited since", first) is None  # made from other words
    kept = await store.keep_chat(head.id, "sealed", first)
    assert kept is not None and kept.chat == first
    again = await store.keep_chat(head.id, "sealed", second)  # a retry keeps the first message
    assert again is not None and again.chat == first
    await store.drop_chat(head.id)  # X refused it: made again with the next keys
    remade = await store.keep_chat(head.id, "sealed", second)
    assert remade is not None and remade.chat == second
