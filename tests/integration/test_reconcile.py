"""A send whose answer was lost is read back from X before any resend: never twice, never lost.

Each test loses the answer to one POST that X did record (``record_then_hang``), so the row
stays ``sending`` and the worker must find the DM among the conversation's events.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from adapters.sandbox.fake_x import FakeX
from tests.harness import ALICE, ME, Bridge, linked, note, running_bridge
from tests.integration.test_fidelity import GIF, PNG

CONVERSATION = "1000-2001"
LOSE_ANSWERS = {"X_TIMEOUT_SECONDS": "0.5"}


def dm_reads(bridge: Bridge) -> list[dict[str, str]]:
    """Delivery's read-backs (not the inbound poller's GET /2/dm_events, nor history on linking)."""
    return [
        r.query
        for r in bridge.x.all_requests
        if r.method == "GET"
        and r.path.startswith("/2/dm_conversations/")
        and r.path.endswith("/dm_events")
        and r.query.get("event_types") == "MessageCreate"
    ]


def dm_posts(bridge: Bridge) -> int:
    return sum(1 for r in bridge.x.all_requests if r.method == "POST" and r.path.endswith("/messages"))


def flood_while_hung(bridge: Bridge, count: int) -> None:
    """While the lost POST hangs, ``count`` DMs land in the conversation (Alice, and us from X's app)."""

    def hook(request: web.Request, response: web.StreamResponse) -> None:
        if request.method == "POST" and request.path.endswith("/messages") and bridge.x.response_hook:
            bridge.x.response_hook = None
            for i in range(count):
                sender = ME if i % 10 == 0 else ALICE
                bridge.x.add_message(CONVERSATION, sender, f"meanwhile {i}")

    bridge.x.response_hook = hook


async def lose_one_answer(bridge: Bridge, text: str) -> str:
    bridge.x.timeout_seconds = 3.0
    bridge.x.inject("record_then_hang")
    _, ts = await bridge.post(text, blocks=[])
    await bridge.wait_reaction("C100", ts, "white_check_mark", timeout=20.0)
    await asyncio.sleep(0.3)  # room for a duplicate to show up
    return ts


async def state_of(bridge: Bridge, ts: str) -> tuple[Any, ...]:
    [row] = await bridge.sql("SELECT state, dm_event_id FROM outbox WHERE slack_ts = ?", ts)
    return row


async def test_more_than_a_page_of_dms_after_the_lost_send_is_no_duplicate(tmp_path: Path) -> None:
    async with running_bridge(tmp_path, env=LOSE_ANSWERS) as bridge:
        await linked(bridge)
        flood_while_hung(bridge, 150)  # X pages hold at most 100 events
        ts = await lose_one_answer(bridge, "before the flood")
        ours = [e for e in bridge.x.events if e.text == "Ada: before the flood"]
        assert len(ours) == 1 and dm_posts(bridge) == 1
        assert (await state_of(bridge, ts)) == ("sent", ours[0].id)
        reads = dm_reads(bridge)
        assert len(reads) == 2 and "pagination_token" in reads[1]  # paged back, and no further


async def test_read_budget_spent_mid_read_back_waits_then_reads_on(tmp_path: Path) -> None:
    async with running_bridge(tmp_path, env=LOSE_ANSWERS) as bridge:
        # X's read limit from the start: the inbound poller shares the budget from its first read.
        bridge.x.enforce_read_limit = True
        bridge.x.read_limit_15m = 1
        bridge.x.window_15m_seconds = bridge.x.window_read_seconds = 1.0
        await linked(bridge)
        flood_while_hung(bridge, 250)
        ts = await lose_one_answer(bridge, "before a bigger flood")
        assert [e.text for e in bridge.x.events].count("Ada: before a bigger flood") == 1
        assert dm_posts(bridge) == 1 and (await state_of(bridge, ts))[0] == "sent"
        assert bridge.x.rate_limited_count == 0  # it waited for the window instead of hitting it
        reads = dm_reads(bridge)
        assert len(reads) == 3 and all("pagination_token" in r for r in reads[1:])


async def test_bridge_clock_ahead_of_x_is_no_duplicate(tmp_path: Path) -> None:
    x_behind = FakeX(clock=lambda: time.time() - 300.0)  # X's clock 5 minutes behind the bridge's
    async with running_bridge(tmp_path, env=LOSE_ANSWERS, fake_x=x_behind) as bridge:
        await linked(bridge)
        ts = await lose_one_answer(bridge, "clocks disagree")
        assert bridge.texts() == ["Ada: clocks disagree"] and dm_posts(bridge) == 1
        assert (await state_of(bridge, ts)) == ("sent", bridge.x.events[0].id)


async def test_a_message_with_links_is_recognised_though_x_rewrote_them(tmp_path: Path) -> None:
    async with running_bridge(tmp_path, env=LOSE_ANSWERS) as bridge:
        await linked(bridge)
        text = "docs at <https://Example.com/a/b?c=1> and <http://example.org/|the site>, or example.net"
        ts = await lose_one_answer(bridge, text)
        [event] = bridge.x.events
        assert event.stored_text is not None and "https://t.co/" in event.stored_text
        assert "example" not in event.stored_text  # X keeps only t.co addresses
        assert dm_posts(bridge) == 1 and (await state_of(bridge, ts)) == ("sent", event.id)


async def test_the_same_text_sent_by_hand_long_before_is_not_taken_for_ours(tmp_path: Path) -> None:
    async with running_bridge(tmp_path, env={"X_TIMEOUT_SECONDS": "0.5"}) as bridge:
        await linked(bridge)
        await bridge.post("warm up", blocks=[])
        await bridge.wait_dms(1)
        earlier = bridge.x.add_message(CONVERSATION, ME, "Ada: again")
        earlier.created_at -= 3600.0  # typed in X's app an hour ago
        bridge.x.timeout_seconds = 3.0
        bridge.x.inject("timeout")  # this time X did not take it
        _, ts = await bridge.post("again", blocks=[])
        await bridge.wait_reaction("C100", ts, "white_check_mark", timeout=20.0)
        resent = [e for e in bridge.x.events if e.text == "Ada: again" and e is not earlier]
        assert len(resent) == 1 and (await state_of(bridge, ts)) == ("sent", resent[0].id)


async def test_a_file_only_dm_whose_answer_was_lost_is_not_sent_twice(tmp_path: Path) -> None:
    async with running_bridge(tmp_path, env=LOSE_ANSWERS) as bridge:
        await linked(bridge)
        bridge.x.media_check_after_secs = 0
        bridge.x.timeout_seconds = 3.0
        photo = bridge.slack.add_file("F1", name="a.png", mimetype="image/png", filetype="png", content=PNG)
        anim = bridge.slack.add_file("F2", name="b.gif", mimetype="image/gif", filetype="gif", content=GIF)

        def lose_the_second(request: web.Request, response: web.StreamResponse) -> None:
            if request.method == "POST" and request.path.endswith("/messages") and response.status == 201:
                bridge.x.response_hook = None
                bridge.x.inject("record_then_hang")  # the file-only part's answer is lost

        bridge.x.response_hook = lose_the_second
        _, ts = await bridge.post("two files", files=[photo, anim], blocks=[])
        await bridge.wait_reaction("C100", ts, "white_check_mark", timeout=20.0)
        await asyncio.sleep(0.3)
        first, second = bridge.x.events
        assert first.text == "Ada: two files" and not second.text and len(second.media_ids) == 1
        assert dm_posts(bridge) == 2 and len(dm_reads(bridge)) == 1


async def test_a_reading_x_sends_in_circles_never_resends_and_decides_once_x_pages_right(
    tmp_path: Path,
) -> None:
    async with running_bridge(tmp_path, env=LOSE_ANSWERS) as bridge:
        await linked(bridge)
        first_page: list[bytes] = []
        circled: list[str] = []

        def hook(request: web.Request, response: web.StreamResponse) -> None:
            if request.method == "POST" and request.path.endswith("/messages"):
                for i in range(150):  # our lost DM ends up on the second page
                    bridge.x.add_message(CONVERSATION, ALICE, f"meanwhile {i}")
            elif request.method == "GET" and request.path.startswith("/2/dm_conversations/"):
                # Delivery's read-back of the conversation; the inbound poller reads /2/dm_events.
                assert isinstance(response, web.Response) and isinstance(response.body, bytes)
                if "pagination_token" not in request.query:
                    first_page.append(response.body)
                elif first_page:  # X hands the first page out again, with the same token
                    response.body = first_page[0]
                    circled.append(request.query["pagination_token"])

        bridge.x.timeout_seconds = 3.0
        bridge.x.inject("record_then_hang")
        bridge.x.response_hook = hook
        _, ts = await bridge.post("lost in the loop", blocks=[])
        for _ in range(400):  # until X went round in circles three readings running, or a resend
            if len(circled) >= 3 or dm_posts(bridge) > 1:
                break
            await asyncio.sleep(0.05)
        assert dm_posts(bridge) == 1 and (await state_of(bridge, ts))[0] == "sending"
        assert len(circled) >= 3  # it read again each time, and each time decided nothing
        bridge.x.response_hook = None  # X pages properly again
        await bridge.wait_reaction("C100", ts, "white_check_mark", timeout=20.0)
        ours = [e for e in bridge.x.events if e.text == "Ada: lost in the loop"]
        assert len(ours) == 1 and dm_posts(bridge) == 1
        assert (await state_of(bridge, ts)) == ("sent", ours[0].id)


async def test_a_page_token_x_refuses_mid_read_back_is_not_taken_for_not_sent(tmp_path: Path) -> None:
    async with running_bridge(tmp_path, env=LOSE_ANSWERS) as bridge:
        await linked(bridge)
        refused: list[str] = []

        def hook(request: web.Request, response: web.StreamResponse) -> None:
            if request.method == "POST" and request.path.endswith("/messages"):
                for i in range(150):  # our lost DM ends up on the second page
                    bridge.x.add_message(CONVERSATION, ALICE, f"meanwhile {i}")
            elif request.method == "GET" and "pagination_token" in request.query and not refused:
                # The token went stale while the reading waited (for the read budget, say).
                assert isinstance(response, web.Response)
                refused.append(request.query["pagination_token"])
                response.set_status(400)
                response.body = json.dumps(
                    {
                        "errors": [{"parameters": {"pagination_token": ["x"]}, "message": "Invalid token"}],
                        "title": "Invalid Request",
                        "detail": "One or more parameters to your request was invalid.",
                        "type": "https://api.twitter.com/2/problems/invalid-request",
                    }
                ).encode()

        bridge.x.timeout_seconds = 3.0
        bridge.x.inject("record_then_hang")
        bridge.x.response_hook = hook
        _, ts = await bridge.post("token went stale", blocks=[])
        await bridge.wait_reaction("C100", ts, "white_check_mark", timeout=20.0)
        await asyncio.sleep(0.3)  # room for a duplicate to show up
        ours = [e for e in bridge.x.events if e.text == "Ada: token went stale"]
        assert refused and len(ours) == 1 and dm_posts(bridge) == 1
        assert (await state_of(bridge, ts)) == ("sent", ours[0].id)
        assert not [c for c in bridge.slack.calls if note(c)]


async def test_a_5xx_after_x_recorded_the_dm_is_read_back_not_resent(tmp_path: Path) -> None:
    # X's front end answering 503/504 after the back end took the DM is a well-known way to
    # post twice: a 5xx does not prove X did not act.
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)

        def fail_after_recording(request: web.Request, response: web.StreamResponse) -> None:
            if request.method == "POST" and request.path.endswith("/messages") and response.status == 201:
                bridge.x.response_hook = None
                assert isinstance(response, web.Response)
                response.set_status(504)
                response.body = json.dumps(
                    {
                        "title": "Gateway Timeout",
                        "detail": "Gateway Timeout",
                        "type": "about:blank",
                        "status": 504,
                    }
                ).encode()

        bridge.x.response_hook = fail_after_recording
        _, ts = await bridge.post("answered 504", blocks=[])
        await bridge.wait_reaction("C100", ts, "white_check_mark", timeout=20.0)
        await asyncio.sleep(0.3)  # room for a duplicate to show up
        ours = [e for e in bridge.x.events if e.text == "Ada: answered 504"]
        assert len(ours) == 1 and dm_posts(bridge) == 1
        assert (await state_of(bridge, ts)) == ("sent", ours[0].id)


async def test_a_read_back_x_keeps_refusing_is_retried_ever_more_slowly(tmp_path: Path) -> None:
    async with running_bridge(tmp_path, env=LOSE_ANSWERS) as bridge:
        await linked(bridge)
        bridge.x.timeout_seconds = 3.0
        bridge.x.inject("record_then_hang")
        bridge.x.inject("403", count=100_000, path_contains="/dm_events")
        _, ts = await bridge.post("read me back", blocks=[])
        await asyncio.sleep(4.0)  # the harness retries from 50 ms, capped at 0.5 s
        refused = len(dm_reads(bridge))
        # Reading back adds no attempt (no new claim), so the wait must grow by itself:
        # not a read every 50 ms (dozens by now), but a few, then one per cap.
        assert 2 <= refused <= 25, refused
        assert dm_posts(bridge) == 1 and (await state_of(bridge, ts))[0] == "sending"
        bridge.x.clear_faults()
        await bridge.wait_reaction("C100", ts, "white_check_mark", timeout=20.0)
        assert [e.text for e in bridge.x.events] == ["Ada: read me back"] and dm_posts(bridge) == 1


# -- a 2xx is a send, whatever its answer lacks ---------------------------------------------------


async def test_a_2xx_without_an_event_id_that_no_read_back_finds_is_sent_once(tmp_path: Path) -> None:
    """X (an emulator of it, seen so) answers the send 201 without ``dm_event_id``, and its reads do
    not list the DM yet: recorded as sent without an id, never sent again."""
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        bridge.x.sent_answer_omits = frozenset({"dm_event_id"})
        bridge.x.read_lag_seconds = 3600.0
        _, ts = await bridge.post("only once", blocks=[])
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        await asyncio.sleep(0.5)  # room for a resend to show up
        assert dm_posts(bridge) == 1 and bridge.texts(CONVERSATION) == ["Ada: only once"]
        assert await state_of(bridge, ts) == ("sent", None)
        assert dm_reads(bridge), "it tried to read the DM's id back"


async def test_a_2xx_without_an_event_id_is_settled_by_reading_back(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        bridge.x.sent_answer_omits = frozenset({"dm_event_id", "dm_conversation_id"})
        _, ts = await bridge.post("read me back", blocks=[])
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        [event] = bridge.x.events
        assert await state_of(bridge, ts) == ("sent", event.id)
        assert dm_posts(bridge) == 1


async def test_a_group_created_with_a_2xx_naming_nothing_is_never_created_again(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        bridge.x.sent_answer_omits = frozenset({"dm_event_id", "dm_conversation_id"})
        bridge.x.read_lag_seconds = 3600.0
        _, url = await bridge.command("new-group @alice @bob Welcome aboard")
        await bridge.follow_up(url)
        [told] = await bridge.slack.wait_for(
            lambda c: c.method == "chat.postMessage" and "/xdm link" in str(c.params.get("text")),
            timeout=10.0,
        )
        assert "did not say which conversation" in str(told.params["text"])
        await bridge.post("after the group", blocks=[])  # the channel is no longer bridged
        await asyncio.sleep(0.5)
        groups = [c for c in bridge.x.conversations.values() if c.kind == "Group"]
        assert len(groups) == 1 and bridge.texts(groups[0].id) == ["Ada: Welcome aboard"]
        creates = [r for r in bridge.x.all_requests if r.method == "POST" and r.path == "/2/dm_conversations"]
        assert len(creates) == 1
        assert await bridge.sql("SELECT COUNT(*) FROM mappings") == [(0,)]


async def test_a_group_created_with_a_2xx_naming_nothing_is_found_by_reading_back(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        bridge.x.sent_answer_omits = frozenset({"dm_event_id", "dm_conversation_id"})
        _, url = await bridge.command("new-group @alice @bob Welcome aboard")
        await bridge.follow_up(url)
        for _ in range(500):
            if await bridge.sql("SELECT conversation_id FROM mappings WHERE conversation_id IS NOT NULL"):
                break
            await asyncio.sleep(0.02)
        [group] = [c for c in bridge.x.conversations.values() if c.kind == "Group"]
        assert await bridge.sql("SELECT conversation_id FROM mappings") == [(group.id,)]
        _, ts = await bridge.post("to the same group", blocks=[])
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        assert bridge.texts(group.id) == ["Ada: Welcome aboard", "Ada: to the same group"]
        assert len([c for c in bridge.x.conversations.values() if c.kind == "Group"]) == 1


async def test_a_dm_recorded_without_an_id_is_known_when_x_shows_it_later_not_posted_back(
    tmp_path: Path,
) -> None:
    """Sent without an id (X's reads lagged); when the poller reads it later it is our own DM:
    not posted back into the channel as "sent from X", and its id is recorded then."""
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        bridge.x.sent_answer_omits = frozenset({"dm_event_id"})
        bridge.x.read_lag_seconds = 3600.0
        _, ts = await bridge.post("see https://example.com/a and more", blocks=[])
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        assert await state_of(bridge, ts) == ("sent", None)
        bridge.x.read_lag_seconds = 0.0  # X lists it now
        [event] = bridge.x.events
        for _ in range(500):
            if await bridge.sql("SELECT state FROM inbound WHERE dm_event_id = ?", event.id):
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        assert await bridge.sql("SELECT state FROM inbound WHERE dm_event_id = ?", event.id) == [("skipped",)]
        assert [m for m in bridge.slack.posted("C100") if m.get("username")] == []
        assert await state_of(bridge, ts) == ("sent", event.id)
        assert dm_posts(bridge) == 1


async def test_a_group_created_with_a_2xx_naming_only_its_dm_is_never_created_again(tmp_path: Path) -> None:
    """X (on a bad day) answers the group's creation 201 with the DM's ``dm_event_id`` but no
    ``dm_conversation_id``: the next message in the channel must not create a second group."""
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        bridge.x.sent_answer_omits = frozenset({"dm_conversation_id"})
        _, url = await bridge.command("new-group @alice @bob Welcome aboard")
        await bridge.follow_up(url)
        for _ in range(500):
            if await bridge.sql("SELECT state FROM outbox WHERE state = 'sent'"):
                break
            await asyncio.sleep(0.02)
        bridge.x.sent_answer_omits = frozenset()
        _, ts = await bridge.post("to the same group", blocks=[])
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        creates = [r for r in bridge.x.all_requests if r.method == "POST" and r.path == "/2/dm_conversations"]
        assert len(creates) == 1
        [group] = [c for c in bridge.x.conversations.values() if c.kind == "Group"]
        assert bridge.texts(group.id) == ["Ada: Welcome aboard", "Ada: to the same group"]
        assert await bridge.sql("SELECT conversation_id FROM mappings") == [(group.id,)]


async def test_a_slack_delete_of_a_dm_sent_without_an_id_tells_its_author_it_stays_on_x(
    tmp_path: Path,
) -> None:
    """X took the DM without naming it and does not list it yet; its author deletes it in Slack.
    No id, nothing to delete: the delete was marked done without a word, and the author believed
    the DM gone from X."""
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        bridge.x.sent_answer_omits = frozenset({"dm_event_id"})
        bridge.x.read_lag_seconds = 3600.0
        _, ts = await bridge.post("oops, wrong channel", blocks=[])
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        deleted = bridge.sender.message_deleted_event("C100", "U100", ts, "oops, wrong channel")
        assert (await bridge.sender.event(deleted)).status == 200
        [told] = await bridge.slack.wait_for(note, timeout=10.0)
        assert "not deleted on X" in told.params["text"]
        assert not bridge.x.events[0].deleted
