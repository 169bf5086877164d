"""The poster's pace for Slack's chat.postMessage (bridge.poster._Pace), in plain numbers."""

from __future__ import annotations

from bridge.poster import _Pace

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


def test_forget_keeps_only_what_still_holds_back() -> None:
    pace = _Pace(rate=1.0, burst=2)
    pace.posting(C1, 100.0)
    pace.posting(C1, 100.0)
    pace.posting(C2, 100.0)
    pace.hold_team("T2", 101.0)
    pace.forget(100.5)
    assert pace.ready_at(C1, 100.5) == 101.0  # still empty: kept
    pace.forget(103.0)
    assert pace._channels == {}
    assert pace._teams == {}
