"""A row of an encrypted conversation through X Chat (bridge/chat_sender.py, driven by Delivery),
in virtual time over an in-memory outbox and a stand-in of the account's X Chat session.

The message is made once and kept with the row, so a retry posts the very same message; a row
caught ``sending`` is read back for that message's signed id first; a 2xx that names no
sequence id is a send either way; without usable keys nothing goes, in the clear or otherwise.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any, cast

import pytest

from bridge.budget import Budget
from bridge.delivery import Delivery, DeliveryConfig
from bridge.errors import XSentUnconfirmed
from bridge.model import Account, OutboxItem, OutboxState, Target
from bridge.ports import AccountStore, SlackClient, Store, XClient, XOAuth
from bridge.tokens import TokenManager
from bridge.xchat import (
    ChatEvent,
    ChatEventKind,
    ChatPage,
    ChatPosted,
    ChatSend,
    ChatSessions,
    NoChatIdentity,
)
from tests.memory_store import MemoryStore
from tests.recording_slack import RecordingSlack
from tests.virtual_clock import VirtualClock

ME = "1001"  # MemoryStore.account(1)'s X user
CONVERSATION = f"{ME}-2001"
TEXT = "Ada: sealed"


class Chat:
    """The account's X Chat session: messages made, posted and read back (never encrypted here)."""

    user_id = ME

    def __init__(self) -> None:
        self.events: list[ChatEvent] = []  # oldest first
        self.made: list[str] = []  # message ids of the messages prepared
        self.posted: list[ChatSend] = []
        self.reads = 0
        self.identity = True
        self.unnamed = False  # a post's 2xx does not say which sequence id it got
        self.listed = True  # a posted message shows in the reads

    async def session(self, account: Account) -> Chat:
        if not self.identity:
            raise NoChatIdentity(f"no X Chat identity is set up for @{account.x_username}")
        return self

    async def flag_mismatch(self, account: Account, detail: str) -> bool:
        raise AssertionError("the keys match in these tests")

    async def check_keys(self, token: str) -> None:
        return None

    async def prepare_text(
        self, token: str, conversation_id: str, text: str, attachments: list[dict[str, Any]] | None = None
    ) -> ChatSend:
        self.made.append(f"m{len(self.made) + 1}")
        return ChatSend(self.made[-1], {"text": text})

    async def send(self, token: str, conversation_id: str, message: ChatSend) -> ChatPosted:
        self.posted.append(message)
        sequence_id = f"s{len(self.posted)}"
        if self.listed:
            text = str(message.body["text"])
            self.events.append(
                ChatEvent(sequence_id, message.message_id, ME, conversation_id, ChatEventKind.TEXT, text)
            )
        if self.unnamed:
            raise XSentUnconfirmed("X answered 200 without a sequence id", status=200)
        return ChatPosted(sequence_id)

    async def read(
        self, token: str, conversation_id: str, *, max_results: int = 50, pagination_token: str | None = None
    ) -> ChatPage:
        self.reads += 1
        return ChatPage(tuple(self.events[::-1]), refused=0)


def encrypted(outbox: MemoryStore, clock: VirtualClock, **changes: Any) -> OutboxItem:
    outbox.account()
    row = outbox.add("C1", TEXT, at=clock.now())
    row = replace(row, target=Target(conversation_id=CONVERSATION), encrypted=True, **changes)
    outbox.rows[row.id] = row
    return row


@asynccontextmanager
async def delivering(outbox: MemoryStore, clock: VirtualClock, chat: Chat) -> AsyncIterator[RecordingSlack]:
    slack = RecordingSlack(tell_authors=False)
    tokens = TokenManager(
        cast(AccountStore, outbox), cast(XOAuth, object()), clock, on_revoked=lambda *_: asyncio.sleep(0)
    )
    delivery = Delivery(
        cast(Store, outbox),
        cast(XClient, object()),  # an encrypted row never goes near the legacy DM API
        cast(SlackClient, slack),
        tokens,
        Budget(outbox, user_15m=15, user_24h=1440, app_24h=1440),
        clock,
        DeliveryConfig(retry_base=1.0, retry_cap=4.0, chat_wait=300.0),
        chats=cast(ChatSessions, chat),
    )
    task = asyncio.create_task(delivery.run())
    try:
        yield slack
    finally:
        stopping = asyncio.create_task(delivery.stop(grace=1.0))
        await clock.advance(1.0)
        await stopping
        await task


async def test_a_message_is_made_once_kept_with_its_row_and_sent_with_its_sequence_id() -> None:
    clock, outbox, chat = VirtualClock(), MemoryStore(), Chat()
    row = encrypted(outbox, clock)
    async with delivering(outbox, clock, chat) as slack:
        await clock.until(lambda: outbox.state(row.id) is OutboxState.SENT, limit=5)
    assert [m.message_id for m in chat.posted] == ["m1"]
    assert outbox.rows[row.id].chat == {"message_id": "m1", "body": {"text": TEXT}}
    assert outbox.rows[row.id].dm_event_id == "s1"
    assert chat.reads == 0  # nothing was in doubt
    assert (row.ref_ts, "white_check_mark") in slack.reactions


async def test_a_send_in_doubt_that_x_has_is_sent_without_posting_it_again() -> None:
    clock, outbox, chat = VirtualClock(), MemoryStore(), Chat()
    kept = {"message_id": "m0", "body": {"text": TEXT}}
    row = encrypted(
        outbox, clock, state=OutboxState.SENDING, attempts=1, sending_since=clock.now(), chat=kept
    )
    chat.events.append(ChatEvent("s9", "m0", ME, CONVERSATION, ChatEventKind.TEXT, TEXT))
    async with delivering(outbox, clock, chat):
        await clock.until(lambda: outbox.state(row.id) is OutboxState.SENT, limit=5)
    assert chat.posted == [] and chat.made == []
    assert outbox.rows[row.id].dm_event_id == "s9"


async def test_a_send_in_doubt_that_x_lacks_posts_the_same_message_once_more() -> None:
    clock, outbox, chat = VirtualClock(), MemoryStore(), Chat()
    kept = {"message_id": "m0", "body": {"text": TEXT}}
    row = encrypted(
        outbox, clock, state=OutboxState.SENDING, attempts=1, sending_since=clock.now(), chat=kept
    )
    async with delivering(outbox, clock, chat):
        await clock.until(lambda: outbox.state(row.id) is OutboxState.SENT, limit=5)
        await clock.advance(60)
    assert chat.reads >= 1
    assert chat.posted == [ChatSend("m0", {"text": TEXT})]  # the kept bytes, not a new message
    assert chat.made == []


@pytest.mark.parametrize("listed", [True, False])
async def test_a_2xx_without_a_sequence_id_is_a_send_found_or_not(listed: bool) -> None:
    clock, outbox, chat = VirtualClock(), MemoryStore(), Chat()
    chat.unnamed, chat.listed = True, listed
    row = encrypted(outbox, clock)
    async with delivering(outbox, clock, chat):
        await clock.until(lambda: outbox.state(row.id) is OutboxState.SENT, limit=5)
        await clock.advance(60)
    assert len(chat.posted) == 1
    assert outbox.rows[row.id].dm_event_id == ("s1" if listed else None)


async def test_without_an_identity_the_row_waits_and_nothing_is_sent() -> None:
    clock, outbox, chat = VirtualClock(), MemoryStore(), Chat()
    chat.identity = False
    row = encrypted(outbox, clock)
    async with delivering(outbox, clock, chat):
        await clock.advance(120)
        assert outbox.state(row.id) is OutboxState.WAITING
        assert "no X Chat identity is set up for @me" in str(outbox.rows[row.id].last_error)
        assert chat.posted == []
        chat.identity = True  # set up meanwhile: the row goes at its next look
        await clock.until(lambda: outbox.state(row.id) is OutboxState.SENT, limit=300)
    assert len(chat.posted) == 1
