"""X → Slack through SIGKILL: the real `xdm-bridge serve` killed mid-read and mid-post."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.sandbox.fake_x import FakeX
from bridge.poster import METADATA_TYPE
from tests.harness import ALICE, ME, wait_until
from tests.process.support import World, world

pytestmark = pytest.mark.usefixtures("on_both_stores")

CONVERSATION = f"{ME}-{ALICE}"
FAST = {"INBOUND_POLL_SECONDS": "0.2", "X_TIMEOUT_SECONDS": "30", "SLACK_POSTS_PER_SECOND": "0"}


def channel(x: FakeX) -> dict[str, str]:
    x.window_read_seconds = 2.0  # X's read window, shortened: the bridge paces by its headers
    x.enforce_read_limit = True
    return {"C100": CONVERSATION}


async def states(w: World) -> list[str]:
    return [r[0] for r in await w.sql("SELECT state FROM inbound ORDER BY seq")]


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """``wait_until`` for a check that reads the database (either store)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def read_once(w: World) -> bool:
    return bool(await w.sql("SELECT 1 FROM cursors"))


async def _is(found: Awaitable[list[str]], wanted: list[str]) -> bool:
    return await found == wanted


def texts(posts: list[dict[str, Any]]) -> list[str]:
    return [m["text"] for m in posts if (m.get("metadata") or {}).get("event_type") == METADATA_TYPE]


async def test_sigkill_mid_read_then_restart_posts_everything_once_in_order(tmp_path: Path) -> None:
    async with world(tmp_path, channel, **FAST) as w:
        server = w.server(tmp_path / "server.log")
        await server.start(w.url, w.session)
        await eventually(lambda: read_once(w), 20, "the first read")
        for i in range(3):
            w.x.add_event(CONVERSATION, ALICE, f"before {i}")
        await wait_until(lambda: len(texts(w.slack.posted("C100"))) == 3, 20, "three posts")
        # The next read hangs at X; the process dies while it is in flight.
        w.x.timeout_seconds = 30.0
        w.x.inject("timeout", path_contains="/2/dm_events")
        for i in range(3):
            w.x.add_event(CONVERSATION, ALICE, f"during {i}")
        await wait_until(lambda: any(k == "timeout" for k, _ in w.x.faults_served), 20, "a read in flight")
        await server.kill()
        await server.start(w.url, w.session)
        w.x.add_event(CONVERSATION, ALICE, "after")
        await wait_until(lambda: len(texts(w.slack.posted("C100"))) == 7, 30, "all seven posts")
        await asyncio.sleep(1.0)  # room for a duplicate to show up
        assert await server.terminate() == 0
        assert texts(w.slack.posted("C100")) == [
            *(f"before {i}" for i in range(3)),
            *(f"during {i}" for i in range(3)),
            "after",
        ]
        assert w.x.read_rate_limited_count == 0


async def test_sigkill_mid_post_to_slack_then_restart_does_not_post_twice(tmp_path: Path) -> None:
    async with world(tmp_path, channel, **FAST) as w:
        server = w.server(tmp_path / "server.log")
        await server.start(w.url, w.session)
        await eventually(lambda: read_once(w), 20, "the first read")
        gate = w.slack.hold("chat.postMessage")
        w.x.add_event(CONVERSATION, ALICE, "exactly once")
        await eventually(lambda: _is(states(w), ["posting"]), 20, "a post in flight")
        # "posting" is written before the call: kill only once Slack has the request.
        await wait_until(lambda: w.slack.held("chat.postMessage") == 1, 10, "the post at Slack")
        await server.kill()
        gate.set()  # Slack carries out the post the dead process sent
        await wait_until(lambda: len(texts(w.slack.posted("C100"))) == 1, 10, "Slack's copy")
        w.slack.calls.clear()
        await server.start(w.url, w.session)
        w.x.add_event(CONVERSATION, ALICE, "and then this")
        await eventually(lambda: _is(states(w), ["posted", "posted"]), 30, "both rows settled")
        await asyncio.sleep(0.5)
        assert await server.terminate() == 0
        assert texts(w.slack.posted("C100")) == ["exactly once", "and then this"]
        # After the restart it looked in the channel's history instead of posting again.
        assert [
            c.method for c in w.slack.calls if c.method in ("conversations.history", "chat.postMessage")
        ] == [
            "conversations.history",
            "chat.postMessage",
        ]


async def test_sigkill_before_a_linked_channels_history_is_read_then_restart_posts_it_once(
    tmp_path: Path,
) -> None:
    def unbridged(x: FakeX) -> dict[str, str]:
        channel(x)
        for i in range(3):
            x.add_event(CONVERSATION, ALICE, f"old {i}")
        return {}  # the test links the channel itself: that asks for the history

    history = f"/2/dm_conversations/{CONVERSATION}/dm_events"
    async with world(tmp_path, unbridged, **FAST) as w:
        w.slack.add_channel("C100", "support")
        server = w.server(tmp_path / "server.log")
        await server.start(w.url, w.session)
        # `/xdm link`'s check of the conversation passes; the history read after it hangs at X,
        # and the process dies while it is in flight.
        w.x.timeout_seconds = 30.0
        w.x.inject("timeout", path_contains=history, after=1)
        response_url = w.slack.new_response_url()
        linked = await w.sender.command(
            f"link {CONVERSATION}", user_id="U100", channel_id="C100", response_url=response_url
        )
        assert linked.status == 200
        [told] = await w.slack.wait_for_response(response_url, timeout=20)
        assert "bridged this channel" in told["text"]
        await wait_until(lambda: any(k == "timeout" for k, _ in w.x.faults_served), 20, "the history read")
        await server.kill()
        assert texts(w.slack.posted("C100")) == []
        await server.start(w.url, w.session)
        await wait_until(lambda: len(texts(w.slack.posted("C100"))) == 3, 30, "the history")
        w.x.add_event(CONVERSATION, ALICE, "new")
        await wait_until(lambda: len(texts(w.slack.posted("C100"))) == 4, 30, "the new message")
        await asyncio.sleep(1.0)  # room for a duplicate to show up
        assert await server.terminate() == 0
        assert texts(w.slack.posted("C100")) == [
            "old 0\n(history)",
            "old 1\n(history)",
            "old 2\n(history)",
            "new",
        ]
        assert await w.sql("SELECT * FROM backfills") == []
        assert w.x.read_rate_limited_count == 0


async def test_sigkill_mid_burst_then_restart_reads_on_and_posts_it_whole_once_in_order(
    tmp_path: Path,
) -> None:
    """More new events than one poll reads (5 pages of 10): the process dies after the first
    part was read, in the middle of reading on; after the restart the read goes on from X's
    pagination token kept in the database, and Slack gets the whole burst in X's order."""
    burst = 64
    async with world(tmp_path, channel, **FAST) as w:
        server = w.server(tmp_path / "server.log")
        await server.start(w.url, w.session)
        await eventually(lambda: read_once(w), 20, "the first read")
        for i in range(burst):
            w.x.add_event(CONVERSATION, ALICE, f"burst {i}")
        await eventually(lambda: _gap_open(w), 30, "a read left unfinished")
        w.x.timeout_seconds = 30.0
        w.x.inject("timeout", count=1000, path_contains="/2/dm_events")
        await wait_until(lambda: any(k == "timeout" for k, _ in w.x.faults_served), 20, "a read in flight")
        await server.kill()
        assert await _gap_open(w)  # killed mid-gap
        assert texts(w.slack.posted("C100")) == []  # nothing newer went before the older ones
        w.x.clear_faults()
        await server.start(w.url, w.session)
        await wait_until(lambda: len(texts(w.slack.posted("C100"))) == burst, 60, "the whole burst")
        await asyncio.sleep(1.0)  # room for a duplicate to show up
        assert await server.terminate() == 0
        assert texts(w.slack.posted("C100")) == [f"burst {i}" for i in range(burst)]
        assert w.x.read_rate_limited_count == 0


async def _gap_open(w: World) -> bool:
    return bool(await w.sql("SELECT 1 FROM cursors WHERE gap_newest IS NOT NULL"))
