"""The poster's pace for Slack's chat.postMessage (bridge.poster._Pace), in plain numbers."""

from __future__ import annotations

from typing import Any, cast

from bridge.inbound import InboundConfig
from bridge.model import EventKind, InboundItem, InboundOrigin, InboundState
from bridge.ports import Clock as ClockPort
from bridge.ports import SlackClient, Store, XClient
from bridge.poster import Poster, _Pace
from bridge.tokens import TokenManager

C1 = ("T1", "C1")
C2 = ("T1", "C2")
OTHER_TEAM = ("T2", "C1")


def test_a_channel_posts_a_burst_then_one_a_second() -> None:
    pace = _Pace(rate=1.0, burst=3)
    for _ in range(3):
        assert pace.ready_at(C1, 100.0) <= 100.0
        pace.posting(C1, 100.0)
    assert pace.ready_at(C1, 100.0) == 101.0
    assert pace.ready_at(C2, 100.0) <= 100.0  # each channel has its own
    pace.posting(C1, 101.0)
    assert pace.ready_at(C1, 101.0) == 102.0
    # A quiet channel fills up again, no further than its burst.
    assert pace.ready_at(C1, 200.0) <= 200.0


def test_no_rate_is_no_pacing() -> None:
    pace = _Pace(rate=0.0, burst=3)
    for _ in range(10):
        pace.posting(C1, 100.0)
    assert pace.ready_at(C1, 100.0) <= 100.0


def test_a_held_workspace_holds_its_channels_only_until_then() -> None:
    pace = _Pace(rate=1.0, burst=3)
    pace.hold_team("T1", 105.0)
    assert pace.ready_at(C1, 100.0) == 105.0
    assert pace.ready_at(C2, 100.0) == 105.0
    assert pace.ready_at(OTHER_TEAM, 100.0) <= 100.0
    pace.hold_team("T1", 103.0)  # an earlier end does not shorten the hold
    assert pace.ready_at(C1, 100.0) == 105.0
    assert pace.ready_at(C1, 106.0) <= 106.0


def test_a_429_on_one_channel_holds_no_other_but_on_a_second_holds_the_workspace() -> None:
    pace = _Pace(rate=0.0, burst=3)
    pace.limited(C1, 105.0, 100.0)
    assert pace.ready_at(C2, 100.0) <= 100.0  # one channel's limit, maybe its own
    pace.limited(C1, 110.0, 102.0)  # the same channel again: still its own
    assert pace.ready_at(C2, 102.0) <= 102.0
    pace.limited(C2, 112.0, 110.0)  # a second channel within a minute: the workspace's limit
    assert pace.ready_at(("T1", "C3"), 110.0) == 112.0
    assert pace.ready_at(OTHER_TEAM, 110.0) <= 110.0
    later = _Pace(rate=0.0, burst=3)
    later.limited(C1, 101.0, 100.0)
    later.limited(C2, 262.0, 161.0)  # more than a minute after: not taken for the workspace's
    assert later.ready_at(("T1", "C3"), 161.0) <= 161.0


def test_forget_keeps_only_what_still_holds_back() -> None:
    pace = _Pace(rate=1.0, burst=2)
    pace.posting(C1, 100.0)
    pace.posting(C1, 100.0)
    pace.posting(C2, 100.0)
    pace.hold_team("T2", 101.0)
    pace.forget(100.5)
    assert pace.ready_at(C1, 100.5) == 101.0  # still empty: kept
    pace.limited(C1, 101.0, 100.0)
    pace.forget(103.0)
    assert pace._channels == {}
    assert pace._teams == {}
    assert pace._limited == {"T1": ("C1", 100.0)}  # within the minute: kept
    pace.forget(161.0)
    assert pace._limited == {}


class Heads:
    """The one Store method the poster's walk uses (``inbound_heads``), over channels in memory,
    counting the windows asked for."""

    def __init__(self, channels: int) -> None:
        self.heads = [_head(i, f"C{i:05d}") for i in range(channels)]
        self.windows = 0

    async def inbound_heads(
        self, after: tuple[str, str] | None = None, limit: int | None = None
    ) -> list[Any]:
        self.windows += 1
        found = [h for h in self.heads if after is None or (h.team_id, h.channel_id) > after]
        return found[:limit]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t


def _head(row_id: int, channel: str) -> InboundItem:
    return InboundItem(
        id=row_id,
        dm_event_id=str(row_id),
        seq=row_id,
        account_id=1,
        conversation_id="1-2",
        team_id="T1",
        channel_id=channel,
        kind=EventKind.MESSAGE_CREATE,
        sender_id="2",
        payload={"text": "hi"},
        origin=InboundOrigin.POLL,
        state=InboundState.QUEUED,
        attempts=0,
        next_attempt_at=0.0,
        posting_since=None,
        slack_ts=None,
        created_at=0.0,
    )


async def test_a_held_workspace_is_not_walked_window_after_window_until_its_hold_ends() -> None:
    """10,000 channels waiting in a workspace Slack holds back: one window is read, and the
    walk sleeps until the hold ends instead of reading the other 624 windows for nothing."""
    store, clock = Heads(10_000), Clock()
    poster = Poster(
        cast(Store, store),
        cast(XClient, None),
        cast(SlackClient, None),
        cast(TokenManager, None),
        cast(ClockPort, clock),
        InboundConfig(post_channels=16),
        lambda item, now: None,
        lambda what, why: None,
    )
    poster._pace.hold_team("T1", clock.t + 5.0)
    assert await poster._schedule() == 5.0
    assert store.windows == 1
