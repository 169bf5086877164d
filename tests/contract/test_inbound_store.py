"""The Store port's inbound methods (X → Slack), through the port only: any store must pass these."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bridge.model import (
    Account,
    InboundEvent,
    InboundState,
    IncomingMessage,
    Mapping,
    MappingKind,
    RenderedPart,
    Sent,
    TokenSet,
    XUser,
)
from bridge.ports import Store
from tests.contract.conftest import Engine

ME, ALICE = "1000", "2001"
CONVERSATION = f"{ME}-{ALICE}"


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
        Mapping("T1", channel, MappingKind.LINK, account.id, conversation, None, "U1", 0.0)
    )
    return account


def event(
    event_id: str, text: str = "hi", sender: str = ALICE, conversation: str = CONVERSATION
) -> InboundEvent:
    return InboundEvent(event_id, "MessageCreate", conversation, sender, {"text": text})


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
    assert await store.take_inbound(account.id, events, "21", 4.0) == 0
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


async def test_history_of_a_conversation_read_before_it_was_bridged_can_still_be_queued(store: Store) -> None:
    account = await bridged(store, conversation="other")
    # Read while nothing bridged it: kept, not queued.
    assert await store.take_inbound(account.id, [event("7")], "7", 1.0) == 0
    await store.create_mapping(
        Mapping("T1", "C2", MappingKind.LINK, account.id, CONVERSATION, None, "U1", 2.0)
    )
    history = InboundEvent(
        "7", "MessageCreate", CONVERSATION, ALICE, {"text": "hi", "history": True}, "backfill"
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
    assert await store.latest_inbound_at("push") is None
    pushed = InboundEvent("3", "MessageCreate", CONVERSATION, ALICE, {"text": "x"}, "push")
    await store.take_inbound(account.id, [pushed], None, 50.0)
    await store.take_inbound(account.id, [event("4")], "4", 60.0)
    assert await store.latest_inbound_at("push") == 50.0
    assert await store.latest_inbound_at("poll") == 60.0
