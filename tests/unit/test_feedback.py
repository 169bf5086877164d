"""Slack's side of delivery (bridge/feedback.py), in memory: what an author and a channel see."""

from __future__ import annotations

from dataclasses import replace
from typing import cast

from bridge.errors import Failure
from bridge.feedback import Feedback, not_sent
from bridge.model import OutboxItem, OutboxKind, OutboxState, Target, Unreadable
from bridge.ports import SlackClient
from tests.virtual_clock import VirtualClock


class Slack:
    """The three Slack calls feedback makes, recorded; ``broken`` ones raise."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.broken: set[str] = set()

    async def add_reaction(self, team_id: str, channel_id: str, ts: str, name: str) -> None:
        self._call("react", name)

    async def remove_reaction(self, team_id: str, channel_id: str, ts: str, name: str) -> None:
        self._call("unreact", name)

    async def post_ephemeral(self, team_id: str, channel_id: str, user_id: str, text: str) -> None:
        self._call("ephemeral", text)

    def _call(self, kind: str, what: str) -> None:
        if kind in self.broken:
            raise RuntimeError("slack is down")
        self.calls.append((kind, what))


class Outbox:
    """The outbox rows feedback reads, in memory."""

    def __init__(self) -> None:
        self.untold: dict[int, tuple[OutboxItem | Unreadable, Failure]] = {}
        self.sent: list[OutboxItem] = []

    async def failures_to_tell(self, limit: int = 100) -> list[tuple[OutboxItem | Unreadable, Failure]]:
        return [self.untold[k] for k in sorted(self.untold)][:limit]

    async def failure_told(self, item_id: int) -> None:
        self.untold.pop(item_id, None)

    async def recently_sent(self, since: float, limit: int) -> list[OutboxItem]:
        return [i for i in self.sent if i.created_at >= since][:limit]


def item(item_id: int, **kw: object) -> OutboxItem:
    base = OutboxItem(
        id=item_id,
        seq=item_id,
        part=0,
        parts_total=1,
        team_id="T1",
        channel_id="C1",
        slack_ts=f"{item_id}.000",
        author_id="U1",
        account_id=1,
        target=Target(conversation_id="1000-2001"),
        text="hello",
        source={},
        state=OutboxState.FAILED,
        attempts=1,
        next_attempt_at=0.0,
        last_error="X refused",
        dm_event_id=None,
        created_at=1_800_000_000.0,
        sending_since=None,
        held_since=None,
        hourglass=False,
        ref_ts=f"{item_id}.000",
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def feedback(outbox: Outbox, slack: Slack) -> Feedback:
    return Feedback(outbox, cast(SlackClient, slack), 300.0, 50, VirtualClock())


async def test_a_failure_a_stopped_process_did_not_tell_is_told_once() -> None:
    outbox, slack = Outbox(), Slack()
    told: list[tuple[int, Failure]] = []
    fb = feedback(outbox, slack)

    async def on_failed(row: OutboxItem, failure: Failure) -> None:
        told.append((row.id, failure))

    fb.on_failed = on_failed
    outbox.untold[1] = (item(1, hourglass=True), Failure.RECIPIENT_REFUSES_DMS)
    await fb.tell_untold_failures()
    assert slack.calls == [
        ("unreact", "hourglass_flowing_sand"),
        ("react", "warning"),
        ("ephemeral", not_sent("X refused")),
    ]
    assert told == [(1, Failure.RECIPIENT_REFUSES_DMS)] and outbox.untold == {}
    await fb.tell_untold_failures()
    assert len(slack.calls) == 3  # told, so never again


async def test_a_row_being_failed_now_is_left_to_the_worker_failing_it() -> None:
    outbox, slack = Outbox(), Slack()
    fb = feedback(outbox, slack)
    outbox.untold[1] = (item(1), Failure.OTHER)
    outbox.untold[2] = (item(2), Failure.OTHER)
    fb.failing.add(1)
    await fb.tell_untold_failures()
    assert [c for c in slack.calls if c[0] == "ephemeral"] == [("ephemeral", not_sent("X refused"))]
    assert list(outbox.untold) == [1]


async def test_slack_down_never_stops_the_telling_and_an_unreadable_row_is_told_too() -> None:
    outbox, slack = Outbox(), Slack()
    fb = feedback(outbox, slack)
    slack.broken.add("react")
    unreadable = Unreadable(2, "T1", "C1", "2.000", "2.000", "U2", 1, "its stored copy could not be read")
    outbox.untold[1] = (item(1), Failure.OTHER)
    outbox.untold[2] = (unreadable, Failure.OTHER)
    await fb.tell_untold_failures()
    assert slack.calls == [
        ("ephemeral", not_sent("X refused")),
        ("ephemeral", not_sent("its stored copy could not be read")),
    ]
    assert outbox.untold == {}


async def test_recent_sends_get_their_check_mark_again_but_not_deleted_ones() -> None:
    outbox, slack = Outbox(), Slack()
    fb = feedback(outbox, slack)
    outbox.sent = [
        item(2, state=OutboxState.SENT),
        item(1, state=OutboxState.SENT, hourglass=True, deleted=True),
    ]
    await fb.recheck_recent_sends()
    assert slack.calls == [("unreact", "hourglass_flowing_sand"), ("react", "white_check_mark")]


async def test_only_a_messages_last_part_gets_the_check_mark() -> None:
    outbox, slack = Outbox(), Slack()
    fb = feedback(outbox, slack)
    await fb.acknowledge(item(1, parts_total=2, part=0, state=OutboxState.SENT))
    await fb.acknowledge(item(2, parts_total=2, part=1, state=OutboxState.SENT))
    await fb.acknowledge(item(3, kind=OutboxKind.EDIT, state=OutboxState.SENT))
    assert slack.calls == [("react", "white_check_mark")]
