"""Delivery's scheduling (bridge/delivery.py) in virtual time, over an in-memory outbox.

What the integration tests show through three servers in real seconds, here in microseconds:
turns between channels, X's 15-minute send window honoured to the second, the ⏳ while a
message waits, a refusal that fails one message and not its channel.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

from bridge.budget import Budget
from bridge.delivery import Delivery, DeliveryConfig
from bridge.errors import Failure, RateFacts, XRateLimited, XRefused
from bridge.model import OutboxState, Sent, Target
from bridge.ports import SlackClient, Store, XClient, XOAuth
from bridge.scheduler import AcksFirst
from bridge.tokens import TokenManager
from tests.memory_store import MemoryStore
from tests.recording_slack import RecordingSlack
from tests.virtual_clock import VirtualClock

WINDOW = 900.0  # X's DM send window: 15 per 15 minutes per user


class X:
    """X's DM POST, with its per-user 15-minute window, in virtual time."""

    def __init__(self, clock: VirtualClock, per_window: int = 15) -> None:
        self.clock = clock
        self.per_window = per_window
        self.window_reset = clock.now() + WINDOW
        self.used = 0
        self.sent: list[tuple[float, str]] = []  # (virtual seconds since start, text)
        self.refuse: set[str] = set()
        self.start = clock.now()
        self.answered_429 = 0

    async def send(
        self, token: str, target: Target, text: str, *, media_id: str | None = None
    ) -> tuple[Sent, RateFacts]:
        now = self.clock.now()
        if now >= self.window_reset:
            self.window_reset, self.used = now + WINDOW, 0
        if text in self.refuse:
            raise XRefused(
                "the recipient does not accept DMs", status=403, failure=Failure.RECIPIENT_REFUSES_DMS
            )
        if self.used >= self.per_window:
            self.answered_429 += 1
            raise XRateLimited("429", reset_at=self.window_reset)
        self.used += 1
        self.sent.append((now - self.start, text))
        facts = RateFacts(
            window_limit=self.per_window,
            window_remaining=self.per_window - self.used,
            window_reset=self.window_reset,
        )
        return Sent(target.conversation_id, str(len(self.sent))), facts


@asynccontextmanager
async def delivering(
    outbox: MemoryStore,
    clock: VirtualClock,
    x: X,
    slack: RecordingSlack,
    acks: AcksFirst | None = None,
    **config: object,
) -> AsyncIterator[Delivery]:
    store: Store = outbox
    tokens = TokenManager(store, cast(XOAuth, object()), clock, on_revoked=lambda *_: asyncio.sleep(0))
    budget = Budget(store, user_15m=15, user_24h=1440, app_24h=1440)
    delivery = Delivery(
        store,
        cast(XClient, x),
        cast(SlackClient, slack),
        tokens,
        budget,
        clock,
        DeliveryConfig(**config),  # type: ignore[arg-type]
        acks=acks,
    )
    task = asyncio.create_task(delivery.run())
    try:
        yield delivery
    finally:
        stopping = asyncio.create_task(delivery.stop(grace=1.0))
        await clock.advance(1.0)
        await stopping
        await task


async def test_two_channels_of_one_account_take_turns() -> None:
    clock, outbox, slack = VirtualClock(), MemoryStore(), RecordingSlack()
    x = X(clock)
    outbox.account()
    for n in range(3):
        outbox.add("C1", f"one-{n}")
        outbox.add("C2", f"two-{n}")
    async with delivering(outbox, clock, x, slack):
        await clock.until(lambda: len(x.sent) == 6, limit=5)
    assert [text for _, text in x.sent] == ["one-0", "two-0", "one-1", "two-1", "one-2", "two-2"]
    assert {state for state in map(outbox.state, outbox.rows)} == {OutboxState.SENT}
    assert [name for _, name in slack.reactions] == ["white_check_mark"] * 6


async def test_queued_acks_slow_the_relay_to_its_floor_and_it_catches_up_after() -> None:
    clock, outbox, slack = VirtualClock(), MemoryStore(), RecordingSlack()
    x = X(clock, per_window=100)
    acks = AcksFirst(clock, busy_at=2, floor_gap=0.1)
    outbox.account()
    for n in range(10):
        outbox.add(f"C{n}", f"m{n}")
    with contextlib.ExitStack() as answering:
        for _ in range(3):  # Slack's requests being answered: acks are queued
            answering.enter_context(acks.acking())
        async with delivering(outbox, clock, x, slack, acks):
            await clock.advance(0.35)
            # A send and its ✅ are each a step: the floor lets a few through, not all, not none.
            assert 1 <= len(x.sent) <= 3
            answering.close()  # the acks are answered: the rest goes without waiting for the floor
            took = await clock.until(lambda: len(x.sent) == 10 and len(slack.reactions) == 10, 1.0, 0.01)
            assert took < 0.2  # at the floor the rest would take 1.4 s (7 sends, 7 ✅s)


async def test_past_xs_window_messages_wait_for_its_reset_with_an_hourglass_then_go() -> None:
    clock, outbox, slack = VirtualClock(), MemoryStore(), RecordingSlack()
    x = X(clock, per_window=15)
    outbox.account()
    for n in range(17):
        outbox.add("C1", f"m{n}")
    async with delivering(outbox, clock, x, slack, hourglass_after=5.0):
        await clock.until(lambda: len(x.sent) == 15, limit=5)
        # The 16th waits, without asking X (the window's headers said none were left).
        await clock.advance(60)
        assert len(x.sent) == 15
        assert outbox.state(16) is OutboxState.WAITING
        assert ("16.000", "hourglass_flowing_sand") in slack.reactions
        took = await clock.until(lambda: len(x.sent) == 17, limit=WINDOW)
    assert 60 + took >= WINDOW - 1  # not before X's reset
    assert x.sent[15][0] >= WINDOW
    assert ("16.000", "-hourglass_flowing_sand") in slack.reactions
    assert x.answered_429 == 0  # the bridge kept to the window; X never had to refuse


async def test_a_refused_message_fails_alone_and_its_author_is_told() -> None:
    clock, outbox, slack = VirtualClock(), MemoryStore(), RecordingSlack()
    x = X(clock)
    outbox.account()
    outbox.add("C1", "before")
    refused = outbox.add("C1", "to nobody")
    outbox.add("C1", "after")
    x.refuse.add("to nobody")
    async with delivering(outbox, clock, x, slack):
        await clock.until(lambda: len(x.sent) == 2, limit=5)
        await clock.until(lambda: not outbox.untold, limit=5)
    assert [text for _, text in x.sent] == ["before", "after"]
    assert outbox.state(refused.id) is OutboxState.FAILED
    assert slack.ephemerals == [":warning: Your message was not sent to X: the recipient does not accept DMs"]
    assert (refused.ref_ts, "warning") in slack.reactions


async def test_one_account_at_its_limit_never_holds_up_another() -> None:
    clock, outbox, slack = VirtualClock(), MemoryStore(), RecordingSlack()
    x = X(clock, per_window=15)
    outbox.account(1)
    outbox.account(2)
    for n in range(20):
        outbox.add("C1", f"busy-{n}", account_id=1)
    async with delivering(outbox, clock, x, slack):
        await clock.until(lambda: len(x.sent) == 15, limit=5)
        outbox.add("C2", "other account", account_id=2)
        x.per_window = 30  # the other user has their own window at X (one counter here)
        await clock.until(lambda: "other account" in [t for _, t in x.sent], limit=5)
    assert outbox.state(21) is OutboxState.SENT
