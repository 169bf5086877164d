"""The Store port's inbound methods (X → Slack), through the port only: any store must pass these."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable

import pytest

from adapters.store.sqlite import TAKE_ROWS_PER_TRANSACTION
from bridge.model import (
    Account,
    ChannelMapping,
    EventKind,
    InboundEvent,
    InboundItem,
    InboundOrigin,
    InboundState,
    IncomingMessage,
    MappingKind,
    ReadGap,
    RenderedPart,
    Sent,
    TokenSet,
    XUser,
)
from bridge.ports import Store
from tests.contract.conftest import Engine
from tests.memory_store import MemoryEngine

ME, ALICE = "1000", "2001"
CONVERSATION = f"{ME}-{ALICE}"


@pytest.fixture
def engine(engine_or_memory: Engine | MemoryEngine) -> Engine | MemoryEngine:
    """Both engines and the in-memory fakes (tests/memory_store.py): any store must pass these."""
    return engine_or_memory


@pytest.fixture
async def store(engine: Engine) -> AsyncIterator[Store]:
    opened = engine.store()
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def bridged(store: Store, channel: str = "C1", conversation: str = CONVERSATION) -> Account:
    account = await store.save_account("T1", "U1", XUser(ME, "me"), TokenSet("a", "r", None))
    await store.create_mapping(
        ChannelMapping("T1", channel, MappingKind.LINK, account.id, conversation, None, "U1", 0.0)
    )
    return account


def event(
    event_id: str, text: str = "hi", sender: str = ALICE, conversation: str = CONVERSATION
) -> InboundEvent:
    return InboundEvent(event_id, EventKind.MESSAGE_CREATE, conversation, sender, {"text": text})


async def test_events_queue_once_in_x_order_and_the_cursor_only_moves_forward(store: Store) -> None:
    account = await bridged(store)
    assert await store.get_cursor(account.id) is None
    assert await store.take_inbound(account.id, [event("12"), event("9")], "12", 1.0) == 2
    assert await store.get_cursor(account.id) == "12"
    # The same events again (push and poll, or a re-read): nothing new.
    assert await store.take_inbound(account.id, [event("9"), event("12")], "11", 2.0) == 0
    assert await store.get_cursor(account.id) == "12"
    [head] = await store.inbound_heads()
    assert head.dm_event_id == "9" and head.channel_id == "C1" and head.state is InboundState.QUEUED


async def test_a_conversation_no_channel_bridges_is_kept_but_not_queued(store: Store) -> None:
    account = await bridged(store)
    assert await store.take_inbound(account.id, [event("5", conversation=f"{ME}-2002")], "5", 1.0) == 0
    assert await store.inbound_heads() == []
    assert (await store.inbound_summary(account.id))["counts"] == {"skipped": 1}


async def test_what_the_bridge_sent_is_never_queued(store: Store) -> None:
    account = await bridged(store)
    # Sent through the outbox and recorded (the message map knows its dm_event_id).
    message = IncomingMessage("T1", "C1", "1.0001", "U1", "hello")
    accepted = await store.accept_if_mapped(message, 1.0)
    assert accepted is not None and accepted.head is not None
    item = await store.mark_sending(
        accepted.head.id, 1.0, parts=[RenderedPart("Ada: hello")], source=accepted.head.source
    )
    assert item is not None
    await store.mark_sent(item.id, Sent(CONVERSATION, "20"), 2.0)
    # Sent through the outbox, POST still in flight (X has it, the outbox does not know yet).
    second = await store.accept_if_mapped(IncomingMessage("T1", "C1", "1.0002", "U1", "again"), 3.0)
    assert second is not None and second.head is not None
    in_flight = await store.mark_sending(
        second.head.id, 3.0, parts=[RenderedPart("Ada: again")], source=second.head.source
    )
    assert in_flight is not None
    events = [event("20", "Ada: hello", ME), event("21", "Ada: again", ME)]
    tally: dict[str, int] = {}
    assert await store.take_inbound(account.id, events, "21", 4.0, tally=tally) == 0
    assert tally == {"echoes": 2}  # both counted as echoes (for the operator's metric)
    again: dict[str, int] = {}
    await store.take_inbound(account.id, events, "21", 4.5, tally=again)
    assert again.get("echoes", 0) == 0  # read again: already known, not counted twice
    # The account's own DM typed on X (nothing of ours matches) is queued.
    assert await store.take_inbound(account.id, [event("23", "from my phone", ME)], "23", 5.0) == 1
    [head] = await store.inbound_heads()
    assert head.dm_event_id == "23" and head.payload["from_self"] is True


async def test_posting_then_posted_maps_the_message_and_hands_over_the_next(store: Store) -> None:
    account = await bridged(store)
    await store.take_inbound(account.id, [event("1"), event("2")], "2", 1.0)
    [head] = await store.inbound_heads()
    claimed = await store.mark_posting(head.id, 5.0)
    assert claimed is not None and claimed.state is InboundState.POSTING and claimed.posting_since == 5.0
    following = await store.mark_posted(head.id, "1700.000100", 6.0)
    assert following is not None and following.dm_event_id == "2"
    assert await store.known_event_ids(["1", "2"]) == {"1"}
    assert await store.mark_posting(head.id, 7.0) is None  # finished: cannot be claimed again
    summary = await store.inbound_summary(account.id)
    assert summary["counts"] == {"posted": 1, "queued": 1} and summary["pending"] == 1
    assert summary["newest_event_id"] == "2"


async def test_rescheduling_and_holding_a_channel(store: Store) -> None:
    account = await bridged(store)
    await store.take_inbound(account.id, [event("1"), event("2")], "2", 1.0)
    [head] = await store.inbound_heads()
    await store.mark_posting(head.id, 2.0)
    await store.reschedule_inbound(head.id, InboundState.POSTING, 10.0, "no answer")
    [again] = await store.inbound_heads()
    assert (
        again.state is InboundState.POSTING and again.posting_since == 2.0 and again.next_attempt_at == 10.0
    )
    await store.reschedule_inbound(head.id, InboundState.QUEUED, 12.0, "429")
    await store.hold_channel("T1", "C1", 30.0)
    [held] = await store.inbound_heads()
    assert held.state is InboundState.QUEUED and held.posting_since is None and held.next_attempt_at == 30.0


async def test_a_failed_row_is_done_for_good_and_its_channel_flows_on(store: Store) -> None:
    """Slack refused a message for what it is (and the line in its place): the row fails with
    Slack's reason, cannot be claimed again, and the channel's next row is its head."""
    account = await bridged(store)
    await store.take_inbound(account.id, [event("1"), event("2")], "2", 1.0)
    [head] = await store.inbound_heads()
    await store.mark_posting(head.id, 2.0)
    await store.reschedule_inbound(head.id, InboundState.FAILED, 0.0, "Slack refused it (msg_too_long)")
    [following] = await store.inbound_heads()
    assert following.dm_event_id == "2"
    assert await store.mark_posting(head.id, 3.0) is None
    summary = await store.inbound_summary(account.id, "T1", "C1")
    assert summary["counts"] == {"failed": 1, "queued": 1}
    assert summary["pending"] == 1 and summary["channel_pending"] == 1
    # The same event read again (push and poll) is not queued again.
    assert await store.take_inbound(account.id, [event("1")], "2", 4.0) == 0


async def test_history_of_a_conversation_read_before_it_was_bridged_can_still_be_queued(store: Store) -> None:
    account = await bridged(store, conversation="other")
    # Read while nothing bridged it: kept, not queued.
    assert await store.take_inbound(account.id, [event("7")], "7", 1.0) == 0
    await store.create_mapping(
        ChannelMapping("T1", "C2", MappingKind.LINK, account.id, CONVERSATION, None, "U1", 2.0)
    )
    history = InboundEvent(
        "7",
        EventKind.MESSAGE_CREATE,
        CONVERSATION,
        ALICE,
        {"text": "hi", "history": True},
        InboundOrigin.BACKFILL,
    )
    assert await store.take_inbound(account.id, [history], None, 3.0) == 1
    assert await store.take_inbound(account.id, [history], None, 4.0) == 0  # once
    [head] = await store.inbound_heads()
    assert head.channel_id == "C2" and head.origin == "backfill" and head.payload["history"] is True
    await store.set_inbound_payload(head.id, {**head.payload, "media_done": ["3_1"]})
    [again] = await store.inbound_heads()
    assert again.payload["media_done"] == ["3_1"]


async def test_latest_inbound_at_by_origin(store: Store) -> None:
    account = await bridged(store)
    assert await store.latest_inbound_at(InboundOrigin.PUSH) is None
    pushed = InboundEvent(
        "3", EventKind.MESSAGE_CREATE, CONVERSATION, ALICE, {"text": "x"}, InboundOrigin.PUSH
    )
    await store.take_inbound(account.id, [pushed], None, 50.0)
    await store.take_inbound(account.id, [event("4")], "4", 60.0)
    assert await store.latest_inbound_at(InboundOrigin.PUSH) == 50.0
    assert await store.latest_inbound_at(InboundOrigin.POLL) == 60.0


async def test_a_backfill_request_survives_a_restart_until_it_is_finished(engine: Engine) -> None:
    first = engine.store()
    await first.open()
    try:
        account = await bridged(first)
        await first.request_backfill(account.id, CONVERSATION, 5.0)
        await first.request_backfill(account.id, "other", 6.0)
    finally:
        await first.close()
    second = engine.store()  # another process on the same database: the request is still there
    await second.open()
    try:
        assert await second.pending_backfills() == [
            (account.id, CONVERSATION, 5.0),
            (account.id, "other", 6.0),
        ]
        # Linked again while the first backfill ran: that one finishing does not drop the new one.
        await second.request_backfill(account.id, CONVERSATION, 9.0)
        await second.finish_backfill(account.id, CONVERSATION, 5.0)
        await second.finish_backfill(account.id, "other", 6.0)
        assert await second.pending_backfills() == [(account.id, CONVERSATION, 9.0)]
        await second.finish_backfill(account.id, CONVERSATION, 9.0)
        assert await second.pending_backfills() == []
    finally:
        await second.close()


async def test_a_paused_channel_keeps_its_events_until_it_is_resumed(store: Store) -> None:
    account = await bridged(store)
    await store.take_inbound(account.id, [event("1")], "1", 1.0)
    await store.disconnect_account(account.id, 2.0, "U1")
    # Read while paused (a push, or a read made before the disconnect): kept, not posted.
    await store.take_inbound(account.id, [event("2")], "2", 3.0)
    assert await store.inbound_heads() == []
    summary = await store.inbound_summary(account.id, "T1", "C1")
    assert summary["channel_pending"] == 2
    await store.resume_mappings(account.id)
    [head] = await store.inbound_heads()
    assert head.dm_event_id == "1"


async def test_a_channel_paused_while_it_posts_hands_over_no_next_row(store: Store) -> None:
    account = await bridged(store)
    await store.take_inbound(account.id, [event("1"), event("2")], "2", 1.0)
    [head] = await store.inbound_heads()
    await store.mark_posting(head.id, 2.0)
    await store.disconnect_account(account.id, 3.0, "U1")
    assert await store.mark_posted(head.id, "1700.000100", 4.0) is None  # "2" waits for the resume
    await store.resume_mappings(account.id)
    [following] = await store.inbound_heads()
    assert following.dm_event_id == "2"


async def test_a_channel_held_for_a_previous_account_keeps_its_events_until_released(store: Store) -> None:
    account = await bridged(store)
    await store.take_inbound(account.id, [event("1")], "1", 1.0)
    await store.hold_for_previous_account(account.id, XUser(ME, "me"), XUser("3000", "other"), 2.0)
    assert await store.inbound_heads() == []
    # The previous account connected again: released and resumed, the events go in order.
    await store.hold_for_previous_account(account.id, XUser("3000", "other"), XUser(ME, "me"), 3.0)
    await store.resume_mappings(account.id)
    [head] = await store.inbound_heads()
    assert head.dm_event_id == "1"


async def test_two_channels_on_one_conversation_each_get_each_event_once(store: Store) -> None:
    account = await bridged(store)
    await store.create_mapping(
        ChannelMapping("T1", "C2", MappingKind.LINK, account.id, CONVERSATION, None, "U1", 0.0)
    )
    assert await store.take_inbound(account.id, [event("1"), event("2")], "2", 1.0) == 4
    assert await store.take_inbound(account.id, [event("1"), event("2")], "2", 2.0) == 0  # push + poll
    heads = sorted((h.channel_id, h.dm_event_id) for h in await store.inbound_heads())
    assert heads == [("C1", "1"), ("C2", "1")]
    # A push replayed later is not news in a channel bridged after the event was written.
    await store.create_mapping(
        ChannelMapping("T1", "C3", MappingKind.LINK, account.id, CONVERSATION, None, "U1", 50.0)
    )
    old = InboundEvent(
        "1",
        EventKind.MESSAGE_CREATE,
        CONVERSATION,
        ALICE,
        {"text": "hi", "created_at": 10.0},
        InboundOrigin.PUSH,
    )
    assert await store.take_inbound(account.id, [old], None, 60.0) == 0


async def test_a_message_sent_from_one_channel_is_news_in_the_other_but_not_in_its_own(store: Store) -> None:
    account = await bridged(store)
    await store.create_mapping(
        ChannelMapping("T1", "C2", MappingKind.LINK, account.id, CONVERSATION, None, "U1", 0.0)
    )
    accepted = await store.accept_if_mapped(IncomingMessage("T1", "C1", "1.0001", "U1", "hello"), 1.0)
    assert accepted is not None and accepted.head is not None
    item = await store.mark_sending(
        accepted.head.id, 1.0, parts=[RenderedPart("Ada: hello")], source=accepted.head.source
    )
    assert item is not None
    await store.mark_sent(item.id, Sent(CONVERSATION, "20"), 2.0)
    assert await store.sent_from("20") == ("T1", "C1")
    assert await store.take_inbound(account.id, [event("20", "Ada: hello", ME)], "20", 3.0) == 1
    [head] = await store.inbound_heads()
    assert head.channel_id == "C2" and head.payload["from_self"] is True
    assert head.payload["sent_from_channel"] == "C1"
    # Posted into C2: that makes it no message sent from C2.
    await store.mark_posting(head.id, 4.0)
    await store.mark_posted(head.id, "1700.000200", 5.0)
    assert await store.sent_from("20") == ("T1", "C1")
    assert await store.sent_from("21") is None


async def test_the_next_read_is_kept_for_every_instance(engine: Engine) -> None:
    first = engine.store()
    await first.open()
    try:
        account = await bridged(first)
        assert (await first.inbound_summary(account.id))["next_read_at"] is None
        await first.set_next_read(account.id, 123.5)
        await first.set_next_read(account.id, 130.0, pushed=True)
    finally:
        await first.close()
    second = engine.store()
    await second.open()
    try:
        summary = await second.inbound_summary(account.id)
        assert summary["next_read_at"] == 130.0 and summary["pushed"] is True
    finally:
        await second.close()


async def test_linking_with_history_writes_the_request_with_the_mapping_in_one_step(engine: Engine) -> None:
    store = engine.store()
    await store.open()
    try:
        account = await store.save_account("T1", "U1", XUser(ME, "me"), TokenSet("a", "r", None))
        linked = ChannelMapping("T1", "C1", MappingKind.LINK, account.id, CONVERSATION, None, "U1", 7.0)
        assert await store.create_mapping(linked, history=True) == linked
        assert await store.pending_backfills() == [(account.id, CONVERSATION, 7.0)]
        # The channel was mapped already: neither the mapping nor a request is written.
        again = ChannelMapping("T1", "C1", MappingKind.LINK, account.id, "other", None, "U1", 8.0)
        assert await store.create_mapping(again, history=True) is None
        assert await store.pending_backfills() == [(account.id, CONVERSATION, 7.0)]
        # Without history (a new group, or backfill off): no request.
        plain = ChannelMapping("T1", "C2", MappingKind.LINK, account.id, "third", None, "U1", 9.0)
        assert await store.create_mapping(plain) == plain
        assert await store.pending_backfills() == [(account.id, CONVERSATION, 7.0)]
    finally:
        await store.close()


async def test_a_post_into_a_second_channel_is_mapped_there_too(store: Store) -> None:
    account = await bridged(store)
    await store.create_mapping(
        ChannelMapping("T1", "C2", MappingKind.LINK, account.id, CONVERSATION, None, "U1", 0.0)
    )
    await store.take_inbound(account.id, [event("1", "is the outage over?")], "1", 1.0)
    for head, ts in zip(
        sorted(await store.inbound_heads(), key=lambda h: h.channel_id),
        ("1700.000100", "1700.000200"),
        strict=True,
    ):
        await store.mark_posting(head.id, 2.0)
        await store.mark_posted(head.id, ts, 3.0)
    # A Slack thread reply to either post finds the X message it answers.
    assert await store.message_text("T1", "C1", "1700.000100") == "is the outage over?"
    assert await store.message_text("T1", "C2", "1700.000200") == "is the outage over?"
    assert await store.known_event_ids(["1"]) == {"1"}
    assert await store.sent_from("1") is None  # posted from X, not sent from Slack


async def test_from_self_is_judged_by_each_channels_own_account(store: Store) -> None:
    group = "1500000000000000001"
    mine = await store.save_account("T1", "U1", XUser(ME, "me"), TokenSet("a", "r", None))
    dora = await store.save_account("T1", "U2", XUser("3000", "dora"), TokenSet("b", "r", None))
    await store.create_mapping(ChannelMapping("T1", "C1", MappingKind.LINK, mine.id, group, None, "U1", 0.0))
    await store.create_mapping(ChannelMapping("T1", "C2", MappingKind.LINK, dora.id, group, None, "U2", 0.0))
    # Sent by @me from X's app, read with @dora's token: from self in C1 only.
    assert await store.take_inbound(dora.id, [event("5", "from my phone", ME, group)], "5", 1.0) == 2
    heads = {h.channel_id: h for h in await store.inbound_heads()}
    assert {c: h.payload["from_self"] for c, h in heads.items()} == {"C1": True, "C2": False}
    for head in heads.values():
        await store.mark_posting(head.id, 2.0)
        await store.mark_posted(head.id, f"1700.00010{head.channel_id[-1]}", 3.0)
    # Sent by @dora, read with @me's token: from self in C2 only.
    assert await store.take_inbound(mine.id, [event("6", "hers", "3000", group)], "6", 4.0) == 2
    heads = {h.channel_id: h for h in await store.inbound_heads()}
    assert {c: h.payload["from_self"] for c, h in heads.items()} == {"C1": False, "C2": True}


async def test_an_unfinished_read_holds_the_accounts_channels_and_survives_a_restart(engine: Engine) -> None:
    first = engine.store()
    await first.open()
    try:
        account = await bridged(first)
        await first.take_inbound(account.id, [event("10")], "10", 1.0)
        [head] = await first.inbound_heads()
        await first.mark_posting(head.id, 1.5)
        await first.mark_posted(head.id, "1700.000100", 1.5)
        # X had more new events than one poll reads: the newest are taken, the rest is a gap.
        gap = ReadGap(token="tok-1", newest="60", oldest="51", opened_at=2.0)
        assert await first.take_inbound(account.id, [event("51"), event("60")], None, 2.0, gap=gap) == 2
        assert await first.get_cursor(account.id) == "10"  # not moved: the gap is not closed
        assert await first.inbound_heads() == []  # nothing newer goes before the older ones
        pushed = InboundEvent(
            "61", EventKind.MESSAGE_CREATE, CONVERSATION, ALICE, {"text": "p"}, InboundOrigin.PUSH
        )
        assert await first.take_inbound(account.id, [pushed], None, 2.5) == 1
        assert await first.inbound_heads() == []  # a push meanwhile waits too
    finally:
        await first.close()
    second = engine.store()  # a restart mid-gap: the read goes on where it stopped
    await second.open()
    try:
        assert await second.read_gap(account.id) == gap
        further = ReadGap(token="tok-2", newest="60", oldest="31", restarts=1, opened_at=2.0)
        await second.take_inbound(account.id, [event("31"), event("40")], None, 3.0, gap=further)
        assert await second.read_gap(account.id) == further
        # Back at the cursor: the gap is closed, the cursor moves to the newest, posting resumes
        # with the oldest event.
        assert await second.take_inbound(account.id, [event("11"), event("20")], "60", 4.0) == 2
        assert await second.read_gap(account.id) is None
        assert await second.get_cursor(account.id) == "60"
        [head] = await second.inbound_heads()
        assert head.dm_event_id == "11"
    finally:
        await second.close()


async def test_an_unfinished_read_is_parked_with_its_x_account_and_read_again_when_it_is_back(
    store: Store,
) -> None:
    account = await bridged(store)
    await store.take_inbound(account.id, [event("10")], "10", 1.0)
    gap = ReadGap(token="tok-1", newest="60", oldest="51", opened_at=2.0)
    await store.take_inbound(account.id, [event("51"), event("60")], None, 2.0, gap=gap)
    await store.hold_for_previous_account(account.id, XUser(ME, "me"), XUser("3000", "other"), 3.0)
    assert await store.read_gap(account.id) is None and await store.get_cursor(account.id) is None
    # Back: the cursor and the unfinished read return; the token (long expired) does not.
    await store.hold_for_previous_account(account.id, XUser("3000", "other"), XUser(ME, "me"), 4.0)
    await store.resume_mappings(account.id)
    assert await store.get_cursor(account.id) == "10"
    assert await store.read_gap(account.id) == ReadGap(None, "60", "51", 0, 4.0)
    assert await store.inbound_heads() == []  # still waiting for the older events
    # Unlinked: nothing more comes for the channel, so what it has is posted (in order).
    await store.delete_mapping("T1", "C1")
    [head] = await store.inbound_heads()
    assert head.dm_event_id == "10"


async def test_inbound_gauges_class_what_waits_queued_held_or_catching_up(store: Store) -> None:
    """What ``/metrics`` shows of X → Slack's backlog: rows still to post, each counted once as
    queued, held by a paused channel, or waiting for an unfinished read; the oldest one's age."""
    assert await store.inbound_gauges() == {
        "queued": 0,
        "held": 0,
        "catching_up": 0,
        "oldest_waiting_at": None,
    }
    account = await bridged(store)
    await store.take_inbound(account.id, [event("1"), event("2")], "2", 10.0)
    [head] = await store.inbound_heads()
    await store.mark_posting(head.id, 11.0)  # in flight still waits
    gauges = await store.inbound_gauges()
    assert gauges == {"queued": 2, "held": 0, "catching_up": 0, "oldest_waiting_at": 10.0}
    await store.mark_posted(head.id, "1.1", 12.0)  # posted no longer waits
    assert (await store.inbound_gauges())["queued"] == 1
    # Another account's channel, held by an unfinished read.
    other = await store.save_account("T1", "U2", XUser("3000", "other"), TokenSet("a", "r", None))
    await store.create_mapping(
        ChannelMapping("T1", "C2", MappingKind.LINK, other.id, "3000-2001", None, "U2", 0.0)
    )
    gap = ReadGap("tok", "60", "51", 0, 13.0)
    await store.take_inbound(
        other.id,
        [event("51", conversation="3000-2001"), event("60", conversation="3000-2001")],
        None,
        13.0,
        gap=gap,
    )
    assert await store.inbound_gauges() == {
        "queued": 1,
        "held": 0,
        "catching_up": 2,
        "oldest_waiting_at": 10.0,
    }
    # The first account disconnected: its channel is paused, its row held.
    await store.disconnect_account(account.id, 14.0, "U1")
    assert await store.inbound_gauges() == {
        "queued": 0,
        "held": 1,
        "catching_up": 2,
        "oldest_waiting_at": 10.0,
    }


async def test_status_counts_a_channels_failed_rows_and_says_the_last_reason(store: Store) -> None:
    account = await bridged(store)
    await store.create_mapping(
        ChannelMapping("T1", "C2", MappingKind.LINK, account.id, f"{ME}-2002", None, "U1", 0.0)
    )
    await store.take_inbound(
        account.id, [event("1"), event("2"), event("3"), event("4", conversation=f"{ME}-2002")], "4", 1.0
    )
    summary = await store.inbound_summary(account.id, "T1", "C1")
    assert summary["channel_failed"] == 0 and summary["channel_last_failure"] is None
    ids = {item.dm_event_id: item.id for item in await store.inbound_heads()}
    await store.reschedule_inbound(ids["1"], InboundState.FAILED, 0.0, "first (msg_too_long)")
    ids = {item.dm_event_id: item.id for item in await store.inbound_heads()}
    await store.reschedule_inbound(ids["2"], InboundState.FAILED, 0.0, "second (invalid_blocks)")
    await store.reschedule_inbound(ids["4"], InboundState.FAILED, 0.0, "elsewhere")
    summary = await store.inbound_summary(account.id, "T1", "C1")
    assert summary["channel_failed"] == 2
    assert summary["channel_last_failure"] == "second (invalid_blocks)"
    assert (await store.inbound_summary(account.id, "T1", "C2"))["channel_failed"] == 1


async def test_the_cursor_compares_x_ids_as_numbers_not_as_text(store: Store) -> None:
    """X's ids are snowflakes kept as text: "100" is newer than "99" though it sorts before it."""
    account = await bridged(store)
    await store.take_inbound(account.id, [event("99")], "99", 1.0)
    await store.take_inbound(account.id, [event("100")], "100", 2.0)
    assert await store.get_cursor(account.id) == "100"
    await store.take_inbound(account.id, [], "99", 3.0)  # an older read finishing late
    assert await store.get_cursor(account.id) == "100"
    [head] = await store.inbound_heads()
    assert head.dm_event_id == "99"  # X's order, not the text's


async def test_holding_a_channel_never_brings_a_later_retry_earlier(store: Store) -> None:
    account = await bridged(store)
    await store.take_inbound(account.id, [event("1")], "1", 1.0)
    [head] = await store.inbound_heads()
    await store.reschedule_inbound(head.id, InboundState.QUEUED, 40.0, "timeout")
    await store.hold_channel("T1", "C1", 30.0)
    [held] = await store.inbound_heads()
    assert held.next_attempt_at == 40.0


async def test_a_send_x_took_without_naming_it_is_recognised_in_its_echo(store: Store) -> None:
    """X answered 2xx without the event's id: the account's own DM with that text, read back, is
    the bridge's send (skipped, counted as an echo) and its id is recorded for edits and deletes."""
    account = await bridged(store)
    accepted = await store.accept_if_mapped(IncomingMessage("T1", "C1", "1.0001", "U1", "hello"), 1.0)
    assert accepted is not None and accepted.head is not None
    item = await store.mark_sending(
        accepted.head.id, 1.0, parts=[RenderedPart("Ada: hello")], source=accepted.head.source
    )
    assert item is not None
    await store.mark_sent(item.id, Sent(CONVERSATION, None), 2.0)
    assert await store.sent_from("30") is None
    tally: dict[str, int] = {}
    assert await store.take_inbound(account.id, [event("30", "Ada: hello", ME)], "30", 3.0, tally=tally) == 0
    assert tally == {"echoes": 1}
    assert await store.sent_from("30") == ("T1", "C1")
    assert await store.inbound_heads() == []


async def test_two_instances_taking_the_same_read_queue_each_event_once(engine: Engine) -> None:
    """A push and a poll (or two instances) take the same events at once: each lands once."""
    first, second = engine.store(), engine.store()
    await first.open()
    await second.open()
    try:
        account = await bridged(first)
        events = [event(str(n)) for n in range(1, 6)]
        taken = await asyncio.gather(
            first.take_inbound(account.id, events, "5", 1.0),
            second.take_inbound(account.id, events, "5", 1.0),
            first.take_inbound(account.id, events[:3], "3", 1.0),
        )
        assert sum(taken) == 5
        heads = await second.inbound_heads()
        assert [h.dm_event_id for h in heads] == ["1"]
        summary = await second.inbound_summary(account.id, "T1", "C1")
        assert summary["channel_pending"] == 5 and summary["newest_event_id"] == "5"
    finally:
        await first.close()
        await second.close()


async def test_heads_come_in_channel_order_a_window_at_a_time(store: Store) -> None:
    account = await bridged(store)
    for channel in ("C4", "C2", "C5"):
        await store.create_mapping(
            ChannelMapping("T1", channel, MappingKind.LINK, account.id, CONVERSATION, None, "U1", 0.0)
        )
    other = await store.save_account("T1", "U2", XUser("3000", "other"), TokenSet("a", "r", None))
    await store.create_mapping(
        ChannelMapping("T1", "C3", MappingKind.LINK, other.id, CONVERSATION, None, "U2", 0.0)
    )
    await store.take_inbound(account.id, [event("1"), event("2")], "2", 1.0)
    await store.disconnect_account(other.id, 2.0, "U2")  # C3 waits: neither a head nor counted

    def keys(heads: list[InboundItem]) -> list[tuple[str, str]]:
        return [(h.channel_id, h.dm_event_id) for h in heads]

    assert keys(await store.inbound_heads()) == [("C1", "1"), ("C2", "1"), ("C4", "1"), ("C5", "1")]
    assert keys(await store.inbound_heads(None, 2)) == [("C1", "1"), ("C2", "1")]
    assert keys(await store.inbound_heads(("T1", "C2"), 2)) == [("C4", "1"), ("C5", "1")]
    assert keys(await store.inbound_heads(("T1", "C4"), 2)) == [("C5", "1")]
    assert await store.inbound_heads(("T1", "C5"), 2) == []


async def test_a_send_in_doubt_is_found_here_or_in_a_channel_the_writer_bridges_to_the_conversation(
    store: Store,
) -> None:
    account = await bridged(store)
    other = await store.save_account("T1", "U2", XUser("3000", "other"), TokenSet("a", "r", None))
    for channel, owner, conversation in (
        ("C2", account.id, CONVERSATION),
        ("C3", account.id, "1000-4004"),
        ("C4", other.id, CONVERSATION),
    ):
        await store.create_mapping(
            ChannelMapping("T1", channel, MappingKind.LINK, owner, conversation, None, "U1", 0.0)
        )

    async def in_flight(channel: str, ts: str) -> None:
        accepted = await store.accept_if_mapped(IncomingMessage("T1", channel, ts, "U1", "hi"), 1.0)
        assert accepted is not None and accepted.head is not None
        sending = await store.mark_sending(
            accepted.head.id, 1.0, parts=[RenderedPart("Ada: hi")], source=accepted.head.source
        )
        assert sending is not None

    def doubt(channel: str, accounts: list[int]) -> Awaitable[bool]:
        return store.send_in_doubt("T1", channel, CONVERSATION, accounts)

    assert not await doubt("C1", [account.id, other.id])
    await in_flight("C3", "1.1")  # another conversation: no doubt about this one
    await in_flight("C4", "1.2")  # the other account's channel on this conversation
    assert not await doubt("C1", [account.id])
    assert await doubt("C1", [other.id])
    assert await doubt("C4", [])  # in the channel itself, whoever wrote the DM
    assert not await store.send_in_doubt("T1", "C1", None, [other.id])  # no conversation: here only
    await in_flight("C2", "1.3")
    assert await doubt("C1", [account.id])


async def test_an_event_bridged_to_more_channels_than_one_transaction_writes_reaches_each_once(
    store: Store,
) -> None:
    account = await bridged(store)
    channels = [f"CB{i:04d}" for i in range(2 * TAKE_ROWS_PER_TRANSACTION + 50)]
    for channel in channels:
        await store.create_mapping(
            ChannelMapping("T1", channel, MappingKind.LINK, account.id, CONVERSATION, None, "U1", 0.0)
        )
    tally: dict[str, int] = {}
    taken = await store.take_inbound(account.id, [event("7"), event("8")], "8", 1.0, tally=tally)
    assert taken == 2 * (len(channels) + 1)
    assert tally == {"echoes": 0}
    assert await store.get_cursor(account.id) == "8"
    assert await store.take_inbound(account.id, [event("7"), event("8")], "8", 2.0) == 0
    heads = await store.inbound_heads()
    assert sorted(h.channel_id for h in heads) == sorted(["C1", *channels])
    assert {h.dm_event_id for h in heads} == {"7"}
