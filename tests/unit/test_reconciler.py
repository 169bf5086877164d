"""The read-back before a resend (bridge/reconcile.Reconciler, and Delivery acting on it), in
virtual time over an in-memory outbox and a stand-in of X's conversation read.

Its decisions: the attempt found on X is the row's DM (never posted again); read back to the
attempt without finding it, the row goes again; X refusing the read, paging in circles or the
read budget running out decide nothing (the row waits, still ``sending``). A 2xx that names no
DM is read back for its id, and is a send either way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import cast

import pytest

from bridge.budget import Budget
from bridge.delivery import Delivery, DeliveryConfig
from bridge.errors import RateFacts, XRateLimited, XRefused, XSentUnconfirmed, XTransient
from bridge.model import DmEvent, EventPage, OutboxItem, OutboxState, Sent, Target
from bridge.ports import AccountStore, SlackClient, Store, XClient, XOAuth
from bridge.reconcile import Reconciler
from bridge.tokens import TokenManager
from tests.memory_store import MemoryStore
from tests.memory_tables import MapEntry
from tests.recording_slack import RecordingSlack
from tests.virtual_clock import VirtualClock

ME = "1001"  # MemoryStore.account(1)'s X user
PEER = "2001"
CONVERSATION = f"{ME}-{PEER}"
TEXT = "Ada: did it arrive"


class XReads:
    """X's events of one conversation (newest first, ``per_page`` a page) and its DM POST."""

    def __init__(self, clock: VirtualClock, per_page: int = 2) -> None:
        self.clock = clock
        self.per_page = per_page
        self.events: list[DmEvent] = []  # oldest first
        self.reads: list[str | None] = []  # the pagination token of each read asked for
        self.sent: list[str] = []  # texts POSTed
        self.refuse_reads = False
        self.circle = False  # every page points at the same next page
        self.remaining: int | None = None  # what each read's headers say is left of the window
        self.reset: float | None = None
        self.unnamed = False  # a POST's 2xx does not say which DM it made
        self.listed = True  # a DM POSTed shows in the reads

    def dm(self, text: str, at: float, sender: str = ME) -> DmEvent:
        event = DmEvent(
            str(len(self.events) + 1),
            conversation_id=CONVERSATION,
            sender_id=sender,
            text=text,
            created_at=at,
        )
        self.events.append(event)
        return event

    async def event_page(
        self, token: str, target: Target, *, pagination_token: str | None = None, max_results: int = 100
    ) -> EventPage:
        self.reads.append(pagination_token)
        if self.refuse_reads:
            raise XRefused("Forbidden", status=403)
        newest_first = self.events[::-1]
        start = 0 if pagination_token in (None, "loop") else int(pagination_token)
        end = start + self.per_page
        next_token = "loop" if self.circle else (str(end) if end < len(newest_first) else None)
        facts = RateFacts(window_limit=15, window_remaining=self.remaining, window_reset=self.reset)
        return EventPage(tuple(newest_first[start:end]), next_token, facts=facts)

    async def send(
        self, token: str, target: Target, text: str, *, media_id: str | None = None
    ) -> tuple[Sent, RateFacts]:
        self.sent.append(text)
        event = self.dm(text, self.clock.now())
        if not self.listed:
            self.events.remove(event)
        if self.unnamed:
            raise XSentUnconfirmed("X answered 201 without a dm_event_id", status=201)
        return Sent(CONVERSATION, event.id), RateFacts()


def in_doubt(outbox: MemoryStore, clock: VirtualClock) -> OutboxItem:
    """A row claimed for its POST just now, whose answer never came: X may or may not have it."""
    row = outbox.add("C1", TEXT, at=clock.now() - 5)
    row = replace(
        row,
        target=Target(conversation_id=CONVERSATION),
        state=OutboxState.SENDING,
        attempts=1,
        sending_since=clock.now(),
    )
    outbox.rows[row.id] = row
    return row


def parts(outbox: MemoryStore, clock: VirtualClock, x: XReads) -> tuple[TokenManager, Budget]:
    tokens = TokenManager(
        cast(AccountStore, outbox), cast(XOAuth, object()), clock, on_revoked=lambda *_: asyncio.sleep(0)
    )
    return tokens, Budget(outbox, user_15m=15, user_24h=1440, app_24h=1440)


def reconciler(per_page: int = 2) -> tuple[Reconciler, MemoryStore, VirtualClock, XReads]:
    clock, outbox = VirtualClock(), MemoryStore()
    outbox.account()
    x = XReads(clock, per_page)
    tokens, budget = parts(outbox, clock, x)
    return Reconciler(outbox, cast(XClient, x), tokens, budget, clock), outbox, clock, x


def history(x: XReads, clock: VirtualClock) -> None:
    """Older messages, the same text among them: sent long before this attempt, so not it."""
    x.dm(TEXT, clock.now() - 3600)
    x.dm("hi", clock.now() - 3000, sender=PEER)
    x.dm("hello", clock.now() - 2400)


async def test_the_attempt_found_on_x_is_the_rows_dm() -> None:
    reconciling, outbox, clock, x = reconciler()
    history(x, clock)
    row = in_doubt(outbox, clock)
    ours = x.dm(TEXT, clock.now() + 0.2)
    x.dm("got it", clock.now() + 1, sender=PEER)
    account = outbox.accounts[1]
    found = await reconciling.find(row, account)
    assert found == Sent(dm_conversation_id=CONVERSATION, dm_event_id=ours.id)
    assert x.reads == [None, "2"]  # read back until the events were older than the attempt


async def test_read_back_to_the_attempt_without_it_means_send_again() -> None:
    reconciling, outbox, clock, x = reconciler()
    history(x, clock)
    x.dm("anyone there?", clock.now() + 1, sender=PEER)
    row = in_doubt(outbox, clock)
    assert await reconciling.find(row, outbox.accounts[1]) is None
    assert x.reads == [None]  # its first page already went back past the attempt


async def test_an_event_another_row_claimed_is_not_this_attempt() -> None:
    reconciling, outbox, clock, x = reconciler()
    history(x, clock)
    row = in_doubt(outbox, clock)
    before = x.dm(TEXT, clock.now() - 1)  # the same words, sent by the row before
    outbox.tables.map_event(MapEntry("T1", row.channel_id, "0.000", 0, None, before.id, clock.now()))
    assert await reconciling.find(row, outbox.accounts[1]) is None


async def test_x_paging_in_circles_decides_nothing() -> None:
    reconciling, outbox, clock, x = reconciler(per_page=1)
    x.dm("newer", clock.now() + 1, sender=PEER)
    x.circle = True
    row = in_doubt(outbox, clock)
    with pytest.raises(XTransient, match="before the attempt"):
        await reconciling.find(row, outbox.accounts[1])


async def test_a_spent_read_budget_pauses_the_reading_which_goes_on_where_it_stopped() -> None:
    reconciling, outbox, clock, x = reconciler(per_page=1)
    history(x, clock)
    row = in_doubt(outbox, clock)
    ours = x.dm(TEXT, clock.now() + 0.2)
    x.dm("got it", clock.now() + 1, sender=PEER)
    x.remaining, x.reset = 0, clock.now() + 300
    with pytest.raises(XRateLimited) as paused:
        await reconciling.find(row, outbox.accounts[1])
    assert paused.value.reset_at == clock.now() + 300  # X's reset (X's clock is ours here)
    assert x.reads == [None]
    await clock.advance(301)
    x.remaining, x.reset = None, None
    found = await reconciling.find(row, outbox.accounts[1])
    assert found is not None and found.dm_event_id == ours.id
    assert x.reads[:2] == [None, "1"]  # on from the second page, not the newest again


async def test_a_refused_read_decides_nothing_and_the_next_reading_starts_from_the_newest() -> None:
    reconciling, outbox, clock, x = reconciler(per_page=1)
    history(x, clock)
    row = in_doubt(outbox, clock)
    x.dm("got it", clock.now() + 1, sender=PEER)
    x.remaining, x.reset = 0, clock.now() + 60
    with pytest.raises(XRateLimited):
        await reconciling.find(row, outbox.accounts[1])  # paused after the first page
    await clock.advance(61)
    x.remaining, x.reset, x.refuse_reads = None, None, True
    with pytest.raises(XTransient, match="did not let the bridge check"):
        await reconciling.find(row, outbox.accounts[1])
    x.refuse_reads = False
    assert await reconciling.find(row, outbox.accounts[1]) is None
    assert x.reads[:3] == [None, "1", None]


@asynccontextmanager
async def delivering(outbox: MemoryStore, clock: VirtualClock, x: XReads) -> AsyncIterator[RecordingSlack]:
    slack = RecordingSlack(tell_authors=False)
    tokens, budget = parts(outbox, clock, x)
    delivery = Delivery(
        cast(Store, outbox),
        cast(XClient, x),
        cast(SlackClient, slack),
        tokens,
        budget,
        clock,
        DeliveryConfig(retry_base=1.0, retry_cap=4.0),
    )
    task = asyncio.create_task(delivery.run())
    try:
        yield slack
    finally:
        stopping = asyncio.create_task(delivery.stop(grace=1.0))
        await clock.advance(1.0)
        await stopping
        await task


def sent_in_doubt(outbox: MemoryStore, clock: VirtualClock) -> tuple[OutboxItem, XReads]:
    outbox.account()
    x = XReads(clock)
    history(x, clock)
    return in_doubt(outbox, clock), x


async def test_delivery_marks_a_send_in_doubt_found_on_x_sent_without_posting_it_again() -> None:
    clock, outbox = VirtualClock(), MemoryStore()
    row, x = sent_in_doubt(outbox, clock)
    ours = x.dm(TEXT, clock.now() + 0.2)
    async with delivering(outbox, clock, x) as slack:
        await clock.until(lambda: outbox.state(row.id) is OutboxState.SENT, limit=5)
    assert x.sent == []
    assert outbox.rows[row.id].dm_event_id == ours.id
    assert (row.ref_ts, "white_check_mark") in slack.reactions


async def test_delivery_sends_a_send_in_doubt_not_on_x_once_more() -> None:
    clock, outbox = VirtualClock(), MemoryStore()
    row, x = sent_in_doubt(outbox, clock)
    async with delivering(outbox, clock, x):
        await clock.until(lambda: outbox.state(row.id) is OutboxState.SENT, limit=5)
        await clock.advance(60)
    assert x.sent == [TEXT]
    assert outbox.rows[row.id].dm_event_id == x.events[-1].id


async def test_delivery_keeps_a_send_in_doubt_waiting_while_x_refuses_the_read() -> None:
    clock, outbox = VirtualClock(), MemoryStore()
    row, x = sent_in_doubt(outbox, clock)
    ours = x.dm(TEXT, clock.now() + 0.2)
    x.refuse_reads = True
    async with delivering(outbox, clock, x):
        await clock.until(lambda: len(x.reads) >= 3, limit=30)  # read again, backing off
        assert outbox.state(row.id) is OutboxState.SENDING
        assert "did not let the bridge check" in str(outbox.rows[row.id].last_error)
        x.refuse_reads = False
        await clock.until(lambda: outbox.state(row.id) is OutboxState.SENT, limit=30)
    assert x.sent == []  # never posted again while it could not tell
    assert outbox.rows[row.id].dm_event_id == ours.id


def queued(outbox: MemoryStore, clock: VirtualClock) -> tuple[OutboxItem, XReads]:
    outbox.account()
    x = XReads(clock)
    history(x, clock)
    row = outbox.add("C1", TEXT, at=clock.now())
    row = replace(row, target=Target(conversation_id=CONVERSATION))
    outbox.rows[row.id] = row
    return row, x


async def test_a_2xx_that_names_no_dm_is_read_back_for_its_id_and_never_sent_again() -> None:
    clock, outbox = VirtualClock(), MemoryStore()
    row, x = queued(outbox, clock)
    x.unnamed = True
    async with delivering(outbox, clock, x):
        await clock.until(lambda: outbox.state(row.id) is OutboxState.SENT, limit=5)
        await clock.advance(60)
    assert x.sent == [TEXT]
    assert outbox.rows[row.id].dm_event_id == x.events[-1].id


async def test_a_2xx_that_names_no_dm_and_is_not_listed_yet_is_sent_without_an_id() -> None:
    clock, outbox = VirtualClock(), MemoryStore()
    row, x = queued(outbox, clock)
    x.unnamed, x.listed = True, False
    async with delivering(outbox, clock, x):
        await clock.until(lambda: outbox.state(row.id) is OutboxState.SENT, limit=5)
        await clock.advance(60)
    assert x.sent == [TEXT]  # a 2xx is a send: not again, though the read-back did not find it
    assert outbox.rows[row.id].dm_event_id is None
