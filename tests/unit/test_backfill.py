"""The backfill (bridge/backfill.py) over in-memory requests and an in-memory X conversation.

What a newly bridged channel gets of its conversation's past: the last messages written before
it was bridged, oldest first, marked as history; when a request is finished (queued, or X shows
nothing) and when it is kept to be read again (X's window spent, X failing).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

from bridge.backfill import Backfill
from bridge.errors import RateFacts, XRateLimited, XRefused, XTransient
from bridge.inbound import InboundConfig
from bridge.model import Account, DmEvent, EventKind, EventPage, InboundEvent, InboundOrigin, TokenSet, XUser
from bridge.ports import AccountStore, XClient, XOAuth
from bridge.tokens import TokenManager
from tests.virtual_clock import VirtualClock

CONVERSATION = "100-200"
OTHER = "100-300"
BRIDGED_AT = 5_000.0


class Requests:
    """The history requests as the store keeps them (``BackfillRequests``)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[int, str], float] = {}

    async def request_backfill(self, account_id: int, conversation_id: str, bridged_at: float) -> None:
        self.rows[(account_id, conversation_id)] = bridged_at

    async def pending_backfills(self) -> list[tuple[int, str, float]]:
        return [(a, c, at) for (a, c), at in sorted(self.rows.items())]

    async def finish_backfill(self, account_id: int, conversation_id: str, bridged_at: float) -> None:
        if self.rows.get((account_id, conversation_id)) == bridged_at:  # a newer request stays
            del self.rows[(account_id, conversation_id)]


class X:
    """``GET /2/dm_conversations/{id}/dm_events``: each conversation's events newest first, in
    pages; what it should raise instead, per conversation."""

    def __init__(self) -> None:
        self.events: dict[str, list[DmEvent]] = {}
        self.fail: dict[str, Exception] = {}
        self.refuse_tokens = False
        self.reads: list[tuple[str, str | None]] = []

    def write(self, conversation: str, count: int, *, first_id: int = 1, at: float = 1_000.0) -> None:
        for n in range(count):
            event_id = first_id + n
            self.events.setdefault(conversation, []).append(
                DmEvent(
                    str(event_id),
                    conversation_id=conversation,
                    sender_id="200",
                    text=f"m{event_id}",
                    created_at=at + n,
                )
            )

    async def dm_events(
        self,
        token: str,
        *,
        max_results: int,
        pagination_token: str | None = None,
        conversation_id: str | None = None,
        participant_id: str | None = None,
    ) -> tuple[EventPage, RateFacts]:
        assert conversation_id is not None
        self.reads.append((conversation_id, pagination_token))
        if conversation_id in self.fail:
            raise self.fail[conversation_id]
        if pagination_token is not None and self.refuse_tokens:
            raise XRefused("invalid pagination token", status=400)
        newest_first = sorted(self.events.get(conversation_id, []), key=lambda e: -int(e.id))
        start = int(pagination_token or 0)
        page = newest_first[start : start + max_results]
        more = start + max_results < len(newest_first)
        users = {"200": XUser("200", "bob", "Bob")}
        return EventPage(tuple(page), str(start + max_results) if more else None, users), RateFacts()


async def _read(account: Account, call: Callable[[], Awaitable[tuple[EventPage, Any]]]) -> EventPage:
    page, _ = await call()
    return page


def _backfill(
    requests: Requests, x: X, clock: VirtualClock, taken: list[InboundEvent], **config: Any
) -> Backfill:
    async def take(account_id: int, events: list[InboundEvent]) -> int:
        taken.extend(events)
        return len(events)

    tokens = TokenManager(
        cast(AccountStore, None), cast(XOAuth, None), clock, on_revoked=lambda *_: asyncio.sleep(0)
    )
    settings = InboundConfig(**{"backfill": 3, "max_pages": 5, "min_interval": 5.0, **config})
    return Backfill(requests, cast(XClient, x), tokens, clock, settings, _read, take)


def _account() -> Account:
    return Account(1, "T1", "U1", "100", "me", TokenSet("access", None, None))


async def test_the_last_messages_before_the_link_are_queued_oldest_first_as_history() -> None:
    clock, requests, x = VirtualClock(), Requests(), X()
    taken: list[InboundEvent] = []
    x.write(CONVERSATION, 8)  # before the link
    x.write(CONVERSATION, 2, first_id=20, at=BRIDGED_AT + 1)  # after it: the poller's
    x.events[CONVERSATION].append(
        DmEvent("9", kind=EventKind.PARTICIPANTS_JOIN, conversation_id=CONVERSATION, created_at=1_010.0)
    )
    await requests.request_backfill(1, CONVERSATION, BRIDGED_AT)
    backfill = _backfill(requests, x, clock, taken, backfill=3)

    retry = await backfill.account(_account(), (await backfill.requests())[1])

    assert retry is None
    assert [e.dm_event_id for e in taken] == ["6", "7", "8"]
    assert all(e.origin is InboundOrigin.BACKFILL for e in taken)
    assert taken[0].payload["history"] is True and taken[0].payload["bridged_at"] == BRIDGED_AT
    assert taken[0].payload["sender"]["username"] == "bob"
    assert await requests.pending_backfills() == []  # finished once queued
    assert len(x.reads) == 2  # paged back past what came after the link, no further


async def test_a_spent_window_keeps_every_request_of_the_account_until_its_reset() -> None:
    clock, requests, x = VirtualClock(), Requests(), X()
    taken: list[InboundEvent] = []
    x.write(CONVERSATION, 2)
    x.write(OTHER, 2, first_id=50)
    reset = clock.now() + 600.0
    x.fail[CONVERSATION] = XRateLimited("429", reset_at=reset)
    for conversation in (CONVERSATION, OTHER):
        await requests.request_backfill(1, conversation, BRIDGED_AT)
    backfill = _backfill(requests, x, clock, taken)

    retry = await backfill.account(_account(), (await backfill.requests())[1])

    assert retry == reset
    assert taken == [] and [c for c, _ in x.reads] == [CONVERSATION]  # the other waits too
    assert len(await requests.pending_backfills()) == 2


async def test_x_refusing_finishes_a_request_and_x_failing_keeps_it_while_the_rest_go_on() -> None:
    clock, requests, x = VirtualClock(), Requests(), X()
    taken: list[InboundEvent] = []
    x.write("100-400", 2, first_id=70)
    x.fail[CONVERSATION] = XRefused("not a participant", status=403)
    x.fail[OTHER] = XTransient("X answered 503")
    for conversation in (CONVERSATION, OTHER, "100-400"):
        await requests.request_backfill(1, conversation, BRIDGED_AT)
    backfill = _backfill(requests, x, clock, taken, min_interval=5.0)

    retry = await backfill.account(_account(), (await backfill.requests())[1])

    assert retry == clock.now() + 20.0  # four poll intervals
    assert [e.dm_event_id for e in taken] == ["70", "71"]
    assert await requests.pending_backfills() == [(1, OTHER, BRIDGED_AT)]


async def test_a_refused_pagination_token_ends_the_history_with_what_was_read() -> None:
    clock, requests, x = VirtualClock(), Requests(), X()
    taken: list[InboundEvent] = []
    x.write(CONVERSATION, 6)
    x.refuse_tokens = True
    await requests.request_backfill(1, CONVERSATION, BRIDGED_AT)
    backfill = _backfill(requests, x, clock, taken, backfill=3)
    x.write(CONVERSATION, 1, first_id=20, at=BRIDGED_AT + 1)  # the first page: 20, 6, 5

    assert await backfill.account(_account(), [(CONVERSATION, BRIDGED_AT)]) is None
    assert [e.dm_event_id for e in taken] == ["5", "6"]
    assert x.reads == [(CONVERSATION, None), (CONVERSATION, "3")]
    assert await requests.pending_backfills() == []


async def test_no_history_wanted_finishes_the_requests_without_reading_x() -> None:
    clock, requests, x = VirtualClock(), Requests(), X()
    taken: list[InboundEvent] = []
    x.write(CONVERSATION, 2)
    await requests.request_backfill(1, CONVERSATION, BRIDGED_AT)
    backfill = _backfill(requests, x, clock, taken, backfill=0)

    assert not backfill.wanted
    assert await backfill.account(_account(), [(CONVERSATION, BRIDGED_AT)]) is None
    assert x.reads == [] and await requests.pending_backfills() == []


async def test_a_newer_request_for_the_conversation_stays_after_the_older_is_queued() -> None:
    """A channel unlinked and linked again while its history was read: the history asked for
    later is read again (for the new channel), not finished by the older one's."""
    clock, requests, x = VirtualClock(), Requests(), X()
    taken: list[InboundEvent] = []
    x.write(CONVERSATION, 2)
    await requests.request_backfill(1, CONVERSATION, BRIDGED_AT)
    backfill = _backfill(requests, x, clock, taken)
    wanted = (await backfill.requests())[1]
    await requests.request_backfill(1, CONVERSATION, BRIDGED_AT + 60)

    await backfill.account(_account(), wanted)

    assert await backfill.requests() == {1: [(CONVERSATION, BRIDGED_AT + 60)]}
