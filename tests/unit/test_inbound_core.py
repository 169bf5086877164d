"""The pure parts of X → Slack: the read budget's arithmetic and how an event reads in Slack."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import pytest

from bridge.budget import Budget
from bridge.errors import RateFacts, XRateLimited
from bridge.inbound import MAX_TEXT, Inbound, InboundConfig, render
from bridge.model import InboundItem, InboundState
from bridge.ports import Clock as ClockPort
from bridge.ports import SlackClient, Store, XClient
from bridge.tokens import TokenManager


class BudgetRows:
    """The two Store methods a Budget uses, in memory."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[str, int, int, float]] = {}

    async def load_budgets(self) -> list[dict[str, Any]]:
        return [{"key": k, "limit_": v[1], "remaining": v[2], "reset_at": v[3]} for k, v in self.rows.items()]

    async def save_budgets(self, windows: Sequence[tuple[str, int, int, float]]) -> None:
        for window in windows:
            self.rows[window[0]] = window


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
    budget = Budget(cast(Store, BudgetRows()), user_15m=200, user_24h=1000, app_24h=15000, reads_15m=15)
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


async def test_another_endpoints_headers_never_raise_what_is_left() -> None:
    clock = Clock()
    budget = Budget(cast(Store, BudgetRows()), user_15m=200, user_24h=1000, app_24h=15000, reads_15m=15)
    await budget.read(1, clock.now, answer(4, 1500.0))  # GET /2/dm_events: 4 left
    await budget.read(1, clock.now, answer(14, 1600.0))  # one conversation's events: its own 14
    remaining, _, reset = budget.reads_left(1, clock.now())
    assert remaining == 3 and reset == 1600.0  # the stricter count, the later reset


def item(kind: str = "MessageCreate", **payload: Any) -> InboundItem:
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
        origin="poll",
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
    text, username, icon = render(item("ParticipantsLeave", participants=people))
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


async def test_reads_rung_by_pushes_go_at_once_then_the_last_ones_spread_to_the_windows_end() -> None:
    """Pushes come in bursts: the reads they ring go at once, but the last quarter of the window's
    spare reads are spread to its end, and the reserve is never spent."""
    clock = Clock()
    budget = Budget(cast(Store, BudgetRows()), user_15m=200, user_24h=1000, app_24h=15000, reads_15m=15)
    config = InboundConfig(reserve=2, min_interval=0.0)
    store, x, slack = cast(Store, None), cast(XClient, None), cast(SlackClient, None)
    inbound = Inbound(store, x, slack, cast(TokenManager, None), budget, cast(ClockPort, clock), config)
    inbound.rang(1, ["10"])
    assert inbound.next_poll_at(1) == 1000.0  # nothing read yet in this window
    reset = 1900.0
    for remaining in range(14, 1, -1):  # reads made, X's headers counting down
        clock.t += 10
        await budget.read(1, clock.now, answer(remaining, reset))
        inbound._next_poll.clear()
        inbound.rang(1, [str(remaining)])
        spare = remaining - config.reserve
        expected = clock.t if spare > 3 else (clock.t + (reset - clock.t) / spare if spare else reset)
        assert inbound.next_poll_at(1) == pytest.approx(expected), remaining
