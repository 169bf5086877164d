"""The poster (bridge/poster.py) in virtual time over the in-memory inbound store: each X event
posted into each of its channels once, in X's order per channel, and a channel Slack holds back
waiting without reordering or holding up the others."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

from bridge.errors import SlackRateLimited
from bridge.inbound import InboundConfig
from bridge.model import ChannelMapping, EventKind, InboundEvent, InboundItem, InboundState, MappingKind
from bridge.ports import AccountStore, SlackClient, Store, XClient, XOAuth
from bridge.poster import Poster
from bridge.tokens import TokenManager
from tests.memory_store import MemoryStore
from tests.virtual_clock import VirtualClock

CONVERSATION = "1001-2001"


class Slack:
    """The Slack calls a poster makes, in memory: what was posted where, and 429s on demand."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.posts: list[tuple[str, str, float]] = []  # (channel, text, when)
        self.limited: dict[str, float] = {}  # channel -> Slack's Retry-After, for its next post

    async def post_as(self, team_id: str, channel_id: str, text: str, **_: Any) -> str:
        retry_after = self.limited.pop(channel_id, None)
        if retry_after is not None:
            raise SlackRateLimited("ratelimited", retry_after=retry_after)
        self.posts.append((channel_id, text, self.clock.now()))
        return f"{len(self.posts)}.000100"

    async def find_posted(self, team_id: str, channel_id: str, event_id: str, oldest: float) -> str | None:
        return None  # nothing was cut off mid-post in these tests

    def texts(self, channel: str) -> list[str]:
        return [text for posted_in, text, _ in self.posts if posted_in == channel]


async def bridged(store: MemoryStore, *channels: str) -> int:
    account = store.account(1)  # X user 1001
    for channel in channels:
        await store.create_mapping(
            ChannelMapping("T1", channel, MappingKind.LINK, account.id, CONVERSATION, None, "U1", 0.0)
        )
    return account.id


def event(event_id: str) -> InboundEvent:
    return InboundEvent(event_id, EventKind.MESSAGE_CREATE, CONVERSATION, "2001", {"text": f"dm {event_id}"})


@asynccontextmanager
async def posting(store: MemoryStore, slack: Slack, clock: VirtualClock) -> AsyncIterator[Poster]:
    # Tokens are asked for media only (none here): the account side is not the inbound fake's.
    accounts = cast(AccountStore, store)
    tokens = TokenManager(accounts, cast(XOAuth, object()), clock, on_revoked=lambda *_: asyncio.sleep(0))
    emitted: list[tuple[str, str]] = []
    poster = Poster(
        cast(Store, store),
        cast(XClient, object()),  # no media in these tests: X is never asked
        cast(SlackClient, slack),
        tokens,
        clock,
        InboundConfig(post_channels=2),
        lambda item, now: None,
        lambda kind, label: emitted.append((kind, label)),
    )
    task = asyncio.create_task(poster.run())
    try:
        yield poster
    finally:
        stopping = asyncio.create_task(poster.stop(grace=1.0))
        await clock.advance(1.0)
        await stopping
        await task


def states(store: MemoryStore) -> set[InboundState]:
    return {row.state for row in store.tables.inbound.values()}


async def test_each_event_is_posted_once_into_each_channel_in_x_order() -> None:
    clock, store = VirtualClock(), MemoryStore()
    slack = Slack(clock)
    account_id = await bridged(store, "C1", "C2", "C3")  # more channels than post at once (2)
    # Read out of order (a push before the poll that reads the older ones): X's order wins.
    await store.take_inbound(account_id, [event("30")], None, clock.now())
    await store.take_inbound(account_id, [event("10"), event("20")], "30", clock.now())
    async with posting(store, slack, clock) as poster:
        poster.wake()
        await clock.until(lambda: len(slack.posts) == 9, limit=60)
        await clock.advance(120)  # nothing more happens
    expected = ["dm 10", "dm 20", "dm 30"]
    assert {channel: slack.texts(channel) for channel in ("C1", "C2", "C3")} == dict.fromkeys(
        ("C1", "C2", "C3"), expected
    )
    assert len(slack.posts) == 9
    assert states(store) == {InboundState.POSTED}
    assert await store.inbound_heads() == []
    assert await store.known_event_ids(["10", "20", "30"]) == {"10", "20", "30"}  # mapped for replies


async def test_a_channel_slack_holds_back_waits_in_order_and_holds_up_no_other() -> None:
    clock, store = VirtualClock(), MemoryStore()
    slack = Slack(clock)
    account_id = await bridged(store, "C1", "C2")
    await store.take_inbound(account_id, [event("10"), event("20")], "20", clock.now())
    slack.limited["C1"] = 30.0  # Slack's 429 on C1's first post
    began = clock.now()
    async with posting(store, slack, clock) as poster:
        poster.wake()
        await clock.until(lambda: len(slack.texts("C2")) == 2, limit=10)
        assert slack.texts("C1") == []  # held: its head waits for Retry-After, the next row behind it
        [held] = [h for h in await store.inbound_heads() if h.channel_id == "C1"]
        assert held.dm_event_id == "10" and held.next_attempt_at >= began + 30.0
        await clock.until(lambda: len(slack.texts("C1")) == 2, limit=60)
    assert slack.texts("C1") == ["dm 10", "dm 20"]
    assert min(when for channel, _, when in slack.posts if channel == "C1") >= began + 30.0
    assert all(row.attempts == 1 for row in store.tables.inbound.values() if row.dm_event_id == "20")
    assert _posted_once(store.tables.inbound.values())


def _posted_once(rows: Any) -> bool:
    """Each event posted in each channel exactly once (one row each, posted)."""
    seen: set[tuple[str, str]] = set()
    for row in cast(list[InboundItem], list(rows)):
        key = (row.channel_id, row.dm_event_id)
        if key in seen or row.state is not InboundState.POSTED:
            return False
        seen.add(key)
    return True
