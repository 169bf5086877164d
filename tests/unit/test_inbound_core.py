"""The pure parts of X → Slack: the read budget's arithmetic and how an event reads in Slack."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from bridge.budget import Budget, ReadEndpoint
from bridge.errors import RateFacts, XRateLimited
from bridge.inbound import RUNG_TRIES, Inbound, InboundConfig, _Step
from bridge.model import Account, DmEvent, EventKind, InboundItem, InboundOrigin, InboundState, TokenSet
from bridge.ports import Clock as ClockPort
from bridge.ports import SlackClient, Store, XClient
from bridge.poster import MAX_TEXT, render
from bridge.scheduler import SystemClock
from bridge.tokens import TokenManager
from tests.memory_accounts import MemoryBudgets


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t


def answer(remaining: int, reset: float, limit: int = 15) -> Any:
    async def call() -> tuple[str, RateFacts]:
        return "page", RateFacts(window_limit=limit, window_remaining=remaining, window_reset=reset)

    return call


async def test_reads_stop_before_x_would_refuse_and_resume_at_its_reset() -> None:
    clock = Clock()
    budget = Budget(MemoryBudgets(), user_15m=200, user_24h=1000, app_24h=15000, reads_15m=15)
    # X says this endpoint allows 3 in a window ending at 1010 (tighter than configured).
    assert await budget.read(1, clock.now, answer(2, 1010.0, limit=3)) == "page"
    assert budget.reads_left(1, clock.now()) == (2, 3, 1010.0)
    await budget.read(1, clock.now, answer(1, 1010.0, limit=3))
    # One left, kept back for others: refused locally, X never asked.
    with pytest.raises(XRateLimited) as refused:
        await budget.read(1, clock.now, answer(0, 1010.0, limit=3), keep=1)
    assert refused.value.reset_at == 1010.0
    assert budget.reads_made == 2
    clock.t = 1010.0
    assert budget.read_blocked_until(1, clock.now(), keep=1) is None


async def test_each_endpoints_headers_correct_its_own_window() -> None:
    """X counts each DM event GET apart (15 per 15 minutes each): one endpoint spent leaves the
    others' reads, and an answer's headers correct only the window of the endpoint that gave them."""
    clock = Clock()
    budget = Budget(MemoryBudgets(), user_15m=200, user_24h=1000, app_24h=15000, reads_15m=15)
    await budget.read(1, clock.now, answer(4, 1500.0))  # GET /2/dm_events: 4 left
    conversation = ReadEndpoint.CONVERSATION
    await budget.read(1, clock.now, answer(14, 1600.0), endpoint=conversation)  # its own 14
    assert budget.reads_left(1, clock.now()) == (4, 15, 1500.0)
    assert budget.reads_left(1, clock.now(), conversation) == (14, 15, 1600.0)
    await budget.read(1, clock.now, answer(0, 1500.0))
    with pytest.raises(XRateLimited):
        await budget.read(1, clock.now, answer(3, 1500.0))
    assert await budget.read(1, clock.now, answer(13, 1600.0), endpoint=ReadEndpoint.EVENT) == "page"
    assert budget.reads_by_endpoint == {
        ReadEndpoint.EVENTS: 2,
        ReadEndpoint.EVENT: 1,
        ReadEndpoint.CONVERSATION: 1,
        ReadEndpoint.WITH: 0,
        ReadEndpoint.CHAT: 0,
    }


def item(kind: EventKind = EventKind.MESSAGE_CREATE, **payload: Any) -> InboundItem:
    return InboundItem(
        id=1,
        dm_event_id="9",
        seq=9,
        account_id=1,
        conversation_id="1-2",
        team_id="T",
        channel_id="C",
        kind=kind,
        sender_id="2",
        payload=payload,
        origin=InboundOrigin.POLL,
        state=InboundState.QUEUED,
        attempts=0,
        next_attempt_at=0.0,
        posting_since=None,
        slack_ts=None,
        created_at=0.0,
    )


def test_a_message_is_posted_as_its_sender_with_notes() -> None:
    sender = {"id": "2", "username": "alice", "name": "Alice", "avatar": "https://a/b.png"}
    assert render(item(text="a<b", sender=sender)) == ("a&lt;b", "Alice (@alice)", "https://a/b.png")
    text, _, _ = render(item(text="mine", sender=sender, from_self=True, history=True))
    assert text == "mine\n(sent from X; history)"
    unnamed = {"id": "2", "username": "", "name": "", "avatar": ""}
    assert render(item(text="", sender=unnamed)) == ("(empty message)", "X user 2", None)


def test_joins_and_leaves_are_one_line() -> None:
    people = [{"id": "3", "username": "carol"}, {"id": "4", "username": ""}]
    text, username, icon = render(item(EventKind.PARTICIPANTS_LEAVE, participants=people))
    assert text == "\N{BUSTS IN SILHOUETTE} @carol, X user 4 left the conversation on X."
    assert (username, icon) == ("X", None)


def test_the_longest_dm_x_allows_fits_slacks_limit_with_its_notes() -> None:
    """X allows 10,000 characters; escaped for Slack, 10,000 "&" are 50,000, past the 40,000 Slack
    keeps. The text is cut (never inside an escape) with a visible count, and the notes survive."""
    sender = {"id": "2", "username": "alice", "name": "Alice", "avatar": ""}
    text, _, _ = render(item(text="&" * 10_000, sender=sender, from_self=True, history=True))
    assert len(text) <= MAX_TEXT
    assert text.endswith("\n(sent from X; history)")
    body = text.removesuffix("\n(sent from X; history)")
    kept, marker = body.split("…", 1)
    assert kept == "&amp;" * (len(kept) // 5)
    assert marker == f"(cut: {10_000 - len(kept) // 5} more characters)"
    plain, _, _ = render(item(text="a" * 10_000, sender=sender))
    assert plain == "a" * 10_000  # what fits is never cut


def test_a_message_slack_refused_is_one_line_in_its_place() -> None:
    sender = {"id": "2", "username": "alice", "name": "Alice", "avatar": "https://a/b.png"}
    text, username, icon = render(item(text="whatever", sender=sender, refused="msg_too_long"))
    assert text == "A message from @alice on X could not be shown here: Slack refused it (msg_too_long)."
    # Not as the sender: their name or avatar may be what Slack refused.
    assert (username, icon) == ("X", None)


def _inbound(clock: Clock, budget: Budget, config: InboundConfig) -> Inbound:
    store, x, slack = cast(Store, None), cast(XClient, None), cast(SlackClient, None)
    return Inbound(store, x, slack, cast(TokenManager, None), budget, cast(ClockPort, clock), config)


@pytest.mark.parametrize(
    ("endpoint", "reserve"), [(ReadEndpoint.EVENTS, 2), (ReadEndpoint.WITH, 2), (ReadEndpoint.EVENT, 0)]
)
async def test_reads_for_pushes_go_at_once_then_the_last_ones_spread_to_the_windows_end(
    endpoint: ReadEndpoint, reserve: int
) -> None:
    """Pushes come in bursts: the reads placing them go at once, but the last quarter of each
    window's spare reads are spread to its end, and the reserve (delivery's read-back) is never
    spent; the single-event lookup has no other use, so no reserve."""
    clock = Clock()
    budget = Budget(MemoryBudgets(), user_15m=200, user_24h=1000, app_24h=15000, reads_15m=15)
    config = InboundConfig(reserve=2, min_interval=0.0)
    inbound = _inbound(clock, budget, config)
    assert inbound._bell_delay(1, endpoint) == 0.0  # nothing read yet in this window
    reset = 1900.0
    for remaining in range(14, -1, -1):  # reads made, X's headers counting down
        clock.t += 10
        await budget.read(1, clock.now, answer(remaining, reset), endpoint=endpoint)
        spare = remaining - reserve
        quarter = (15 - reserve) // 4
        expected = 0.0 if spare > quarter else ((reset - clock.t) / spare if spare > 0 else reset - clock.t)
        assert inbound._bell_delay(1, endpoint) == pytest.approx(expected), remaining
        if endpoint is not ReadEndpoint.EVENTS:  # the others' windows are untouched
            assert inbound._bell_delay(1, ReadEndpoint.EVENTS) == 0.0


ME_ID = "100"


def _account() -> Account:
    return Account(1, "T", "U", ME_ID, "me", TokenSet("a", "r", None))


async def test_a_pushed_dm_is_placed_from_its_one_to_one_first_then_by_its_id_then_by_the_list() -> None:
    clock = Clock()
    budget = Budget(MemoryBudgets(), user_15m=200, user_24h=1000, app_24h=15000, reads_15m=15)
    inbound = _inbound(clock, budget, InboundConfig(reserve=2, min_interval=0.0))
    account = _account()
    inbound.rang(
        1,
        [
            DmEvent("11", sender_id="7", recipient_id=ME_ID),
            DmEvent("12", sender_id="8", recipient_id=ME_ID),
            DmEvent("13", sender_id="7", recipient_id=ME_ID),
        ],
    )
    inbound.rang(
        1,
        [DmEvent("14", sender_id=ME_ID, recipient_id="7"), DmEvent("15", sender_id=ME_ID, recipient_id=None)],
    )  # sent from X itself
    # One read of the 1-to-1 with 7 places every pushed DM in it, its own too (11, 13, 14).
    assert inbound._next_step(account) == _Step(ReadEndpoint.WITH, "7", ("11", "13", "14"))
    inbound._pushed[1]["11"].alone = True  # that read did not show it (a group's, say)
    assert inbound._next_step(account) == _Step(ReadEndpoint.EVENT, "11", ("11",))
    del inbound._pushed[1]["11"]
    assert inbound._next_step(account) == _Step(ReadEndpoint.WITH, "8", ("12",))
    del inbound._pushed[1]["12"]
    # No peer named: looked up by its id.
    inbound._pushed[1]["13"].misses = inbound._pushed[1]["14"].misses = RUNG_TRIES
    assert inbound._next_step(account) == _Step(ReadEndpoint.EVENT, "13", ("13",))
    # Both windows spent: nothing goes (the poller's list read places them, _plan_next).
    for endpoint in (ReadEndpoint.WITH, ReadEndpoint.EVENT):
        await budget.read(1, clock.now, answer(0, 1900.0), endpoint=endpoint)
    assert inbound._next_step(account) is None
    inbound._plan_next(1)
    assert inbound.next_poll_at(1) == clock.t


class _StuckStore:
    """A store whose accounts never come (a poll pass stuck taking a big backlog) and that has no
    channel waiting: the two calls ``run`` makes before it is stopped."""

    def __init__(self) -> None:
        self.polling = asyncio.Event()

    async def account_ids_to_read(self) -> list[int]:
        self.polling.set()
        await asyncio.Event().wait()  # never answered
        return []

    async def inbound_heads(
        self, after: tuple[str, str] | None = None, limit: int | None = None
    ) -> list[InboundItem]:
        return []


async def test_a_shutdown_cuts_a_poll_pass_short_after_the_grace() -> None:
    """A read taking a big backlog into the store (many transactions) must not hold a shutdown:
    its cursor has not moved, so the next start reads it again."""
    store = _StuckStore()
    inbound = Inbound(
        cast(Store, store),
        cast(XClient, None),
        cast(SlackClient, None),
        cast(TokenManager, None),
        cast(Budget, None),
        SystemClock(),
        InboundConfig(),
    )
    running = asyncio.create_task(inbound.run())
    await asyncio.wait_for(store.polling.wait(), 5.0)
    await asyncio.wait_for(inbound.stop(grace=0.05), 5.0)
    await asyncio.wait_for(running, 5.0)  # ``run`` ends too, without an error
