"""X → Slack through the real inbound path: polling, posting as the sender, exactly once, in order."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from adapters.sandbox.fake_slack import FakeSlack, PostLimits
from adapters.sandbox.fake_x import FakeX
from bridge.inbound import InboundConfig
from bridge.poster import METADATA_TYPE
from tests.harness import (
    ALICE,
    BOB,
    CAROL,
    FAST_INBOUND,
    ME,
    READ_WINDOW,
    Bridge,
    linked,
    running_bridge,
    settled,
    wait_until,
)

CONVERSATION = f"{ME}-{ALICE}"


async def ready(bridge: Bridge, conversation: str = CONVERSATION) -> None:
    """Linked, and the poller has taken its first read (its starting point)."""
    await linked(bridge, conversation)
    await wait_until(lambda: _polled(bridge.x), 10, "the first read")
    for _ in range(1000):  # the read's answer taken: the cursor is where new events start
        if await bridge.sql("SELECT newest_event_id FROM cursors"):
            return
        await asyncio.sleep(0.01)


def _polled(x: FakeX) -> bool:
    return any(r.path == "/2/dm_events" for r in x.all_requests)


def posts(bridge: Bridge, channel: str = "C100") -> list[dict[str, Any]]:
    """What the bridge posted as someone from X (not its own notes)."""
    return [
        m
        for m in bridge.slack.posted(channel)
        if (m.get("metadata") or {}).get("event_type") == METADATA_TYPE
    ]


async def wait_posts(bridge: Bridge, count: int, channel: str = "C100", timeout: float = 10.0) -> None:
    await wait_until(lambda: len(posts(bridge, channel)) >= count, timeout, f"{count} posts in {channel}")


async def test_replies_on_x_appear_as_their_sender_in_order_once(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await ready(bridge)
        sent = [bridge.x.add_event(CONVERSATION, ALICE, f"reply {i} <b> & co") for i in range(5)]
        await wait_posts(bridge, 5)
        await settled(bridge)  # more polls: nothing posted twice
        got = posts(bridge)
        assert [m["text"] for m in got] == [f"reply {i} &lt;b&gt; &amp; co" for i in range(5)]
        assert {m["username"] for m in got} == {"Alice (@alice)"}
        assert got[0]["icons"]["image_48"].endswith(f"/{ALICE}/avatar_normal.png")
        assert [m["metadata"]["event_payload"]["dm_event_id"] for m in got] == [e.id for e in sent]
        assert bridge.x.read_rate_limited_count == 0


async def test_only_the_bridged_conversation_is_posted(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await ready(bridge)
        bridge.x.add_event(f"{ME}-{BOB}", BOB, "not bridged")
        bridge.x.add_event(CONVERSATION, ALICE, "bridged")
        await wait_posts(bridge, 1)
        await settled(bridge)
        assert [m["text"] for m in bridge.slack.posted()] == [
            m["text"] for m in bridge.slack.posted() if "bridged" in m["text"]
        ]
        assert [m["text"] for m in posts(bridge)] == ["bridged"]


async def test_what_the_bridge_sent_is_never_posted_back(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await ready(bridge)
        for i in range(3):
            _, ts = await bridge.post(f"from slack {i}")
            await bridge.wait_reaction("C100", ts, "white_check_mark")
        bridge.x.add_event(CONVERSATION, ALICE, "an answer")
        await wait_posts(bridge, 1)
        await settled(bridge)
        assert [m["text"] for m in posts(bridge)] == ["an answer"]
        states = await bridge.sql("SELECT state, COUNT(*) FROM inbound GROUP BY state ORDER BY state")
        assert dict(states) == {"posted": 1, "skipped": 3}
        # Slack tells the bridge about its own post (bot_message with a username): not relayed.
        echo = {k: v for k, v in posts(bridge)[0].items() if k != "metadata"}
        result = await bridge.sender.event({**echo, "channel": "C100"})
        assert result.status == 200
        _, ts = await bridge.post("a last one")
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        # X has what people wrote in Slack, and the answer: nothing went round twice.
        assert bridge.texts(CONVERSATION) == [
            "Ada: from slack 0",
            "Ada: from slack 1",
            "Ada: from slack 2",
            "an answer",
            "Ada: a last one",
        ]


async def test_a_dm_the_account_sends_from_x_itself_appears_marked(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await ready(bridge)
        bridge.x.add_event(CONVERSATION, ME, "typed on my phone")
        await wait_posts(bridge, 1)
        [post] = posts(bridge)
        assert post["text"] == "typed on my phone\n(sent from X)"
        assert post["username"] == "Bridge Owner (@bridge_owner)"
        status, _ = await bridge.command("status")
        assert "From X: polling; last X event seen " in status.text
        assert "; next read " in status.text and "reads left " in status.text


async def test_people_joining_and_leaving_a_group_is_one_short_line(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        group = bridge.x.create_group(ME, [ALICE, BOB])
        await ready(bridge, group)
        bridge.x.add_event(group, ME, event_type="ParticipantsJoin", participant_ids=(CAROL,))
        bridge.x.add_event(group, CAROL, event_type="ParticipantsLeave", participant_ids=(CAROL,))
        await wait_posts(bridge, 2)
        assert [m["text"] for m in posts(bridge)] == [
            "\N{BUSTS IN SILHOUETTE} @carol joined the conversation on X.",
            "\N{BUSTS IN SILHOUETTE} @carol left the conversation on X.",
        ]


async def test_slack_429_holds_the_channel_back_in_order_and_drops_nothing(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await ready(bridge)
        # More 429s than the Slack client retries by itself, so the bridge must hold the channel.
        bridge.slack.ratelimit_next("chat.postMessage", count=5, retry_after=1)
        for i in range(4):
            bridge.x.add_event(CONVERSATION, ALICE, f"m{i}")
        await wait_posts(bridge, 4, timeout=20.0)
        await settled(bridge)
        assert [m["text"] for m in posts(bridge)] == ["m0", "m1", "m2", "m3"]


async def test_posts_keep_to_slacks_pace_per_channel_without_meeting_its_429(tmp_path: Path) -> None:
    """Slack allows about one post a second per channel, with short bursts: a burst of replies
    goes out at that pace (a burst, then one a second), in order, and Slack never answers 429."""
    paced = InboundConfig(**{**FAST_INBOUND.__dict__, "post_rate": 1.0, "post_burst": 2})
    async with running_bridge(tmp_path, inbound=paced) as bridge:
        bridge.slack.post_limits = PostLimits(per_channel_per_s=1.0, channel_burst=2)
        await ready(bridge)
        for i in range(4):
            bridge.x.add_event(CONVERSATION, ALICE, f"m{i}")
        await wait_posts(bridge, 4, timeout=20.0)
        await settled(bridge)
        assert [m["text"] for m in posts(bridge)] == ["m0", "m1", "m2", "m3"]
        calls = bridge.slack.calls_to("chat.postMessage")
        assert [c.status for c in calls] == [200] * 4
        # The two after the burst each waited for Slack's second.
        assert calls[3].at - calls[1].at >= 1.9


async def test_429s_slack_could_not_wait_out_on_two_channels_hold_the_workspace(tmp_path: Path) -> None:
    """Slack's posting limit is workspace-wide as well as per channel: one channel's 429 that
    Slack's client could not wait out holds that channel only, but a second channel meeting one
    says the limit is the workspace's, and no channel of it is posted to before its Retry-After
    (each posting on into the limit would meet 429 after 429)."""
    one_at_a_time = InboundConfig(**{**FAST_INBOUND.__dict__, "post_channels": 1})

    def third_channel(slack: FakeSlack) -> None:
        slack.add_channel("C300", "ops")

    async with running_bridge(tmp_path, inbound=one_at_a_time, before_start=third_channel) as bridge:
        await ready(bridge)
        for channel in ("C200", "C300"):
            await bridge.map_link(CONVERSATION, channel=channel)
        # Two channels' first posts, each with the client's three retries of it.
        bridge.slack.ratelimit_next("chat.postMessage", count=8, retry_after=1)
        bridge.x.add_event(CONVERSATION, ALICE, "hello")
        for channel in ("C100", "C200", "C300"):
            await wait_posts(bridge, 1, channel, timeout=30.0)
        calls = bridge.slack.calls_to("chat.postMessage")
        assert [c.status for c in calls] == [429] * 8 + [200] * 3
        assert [c.params["channel"] for c in calls[:8]] == ["C100"] * 4 + ["C200"] * 4
        # C100's 429 held C100 only (C200 was tried at once); C200's held the workspace.
        assert calls[4].at - calls[3].at < 0.9
        assert calls[8].at - calls[7].at >= 0.9


async def test_a_post_whose_answer_is_lost_is_found_in_history_not_posted_twice(tmp_path: Path) -> None:
    """Slack posts it but the connection drops before the answer: the row stays "posting" and
    the next attempt finds the post by its metadata in conversations.history."""
    async with running_bridge(tmp_path) as bridge:
        await ready(bridge)
        bridge.slack.drop_after("chat.postMessage")
        event = bridge.x.add_event(CONVERSATION, ALICE, "only once")
        for _ in range(1000):
            if await bridge.sql("SELECT state FROM inbound") == [("posted",)]:
                break
            await asyncio.sleep(0.01)
        await settled(bridge)
        assert [m["text"] for m in posts(bridge)] == ["only once"]
        assert len(bridge.slack.calls_to("chat.postMessage")) == 1
        [lookup] = bridge.slack.calls_to("conversations.history")
        assert lookup.params["channel"] == "C100"
        ts = await bridge.sql("SELECT slack_ts FROM message_map WHERE dm_event_id = ?", event.id)
        assert ts == [(posts(bridge)[0]["ts"],)]


@pytest.mark.parametrize("history", ["rate limited", "not_in_channel"])
async def test_a_lost_answer_whose_history_lookup_fails_is_still_looked_up_not_posted_twice(
    tmp_path: Path, history: str
) -> None:
    """Slack posts it but its answer is lost, then the history lookup before a repost fails: a
    429 (conversations.history is Tier 3, the first call to hit it) or a refusal (the bot
    removed from the channel, a workspace that removed the app). Either left the row "queued",
    so the next attempt posted again without looking: Alice's message twice in the channel."""
    async with running_bridge(tmp_path) as bridge:
        await ready(bridge)
        bridge.slack.drop_after("chat.postMessage")
        if history == "rate limited":  # more 429s than the Slack client retries by itself
            bridge.slack.ratelimit_next("conversations.history", count=5, retry_after=1)
        else:
            bridge.slack.fail_next("conversations.history", history)
        bridge.x.add_event(CONVERSATION, ALICE, "only once")
        for _ in range(3000):
            if await bridge.sql("SELECT state FROM inbound") == [("posted",)]:
                break
            await asyncio.sleep(0.01)
        await settled(bridge)
        assert [m["text"] for m in posts(bridge)] == ["only once"]
        assert len(bridge.slack.calls_to("chat.postMessage")) == 1
        assert await bridge.sql("SELECT state FROM inbound") == [("posted",)]


async def test_zero_429s_under_a_tightened_read_budget(tmp_path: Path) -> None:
    config = InboundConfig(min_interval=0.01, idle_interval=0.01, retry_base=0.05, retry_cap=0.5, reserve=1)
    async with running_bridge(tmp_path, inbound=config) as bridge:
        bridge.x.read_limit_15m = 3
        await ready(bridge)
        for i in range(6):
            bridge.x.add_event(CONVERSATION, ALICE, f"busy {i}")
            await asyncio.sleep(0.3)
        await wait_posts(bridge, 6, timeout=20.0)
        assert bridge.x.read_rate_limited_count == 0
        reads = sorted(r.at for r in bridge.x.all_requests if r.path == "/2/dm_events")
        # However eager its configuration, it never read more than X's window allows.
        assert all(sum(1 for t in reads if start <= t < start + READ_WINDOW) <= 3 for start in reads), reads


async def test_media_in_an_x_message_is_brought_into_the_channel(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await ready(bridge)
        picture = b"\xff\xd8\xff" + bytes(range(256)) * 40
        media_id = bridge.x.add_media(ALICE, picture)
        event = bridge.x.add_event(CONVERSATION, ALICE, "look at this", media_ids=(media_id,))
        await wait_posts(bridge, 1)
        [shared] = bridge.slack.shared_files
        assert shared["channel"] == "C100" and shared["content"] == picture
        assert shared["title"] == "From @alice on X"
        [download] = [r for r in bridge.x.all_requests if r.path.startswith("/2/dm_conversations/media/")]
        assert download.path == f"/2/dm_conversations/media/{event.id}/{media_id}/m{media_id}.jpeg"
        assert [m["text"] for m in posts(bridge)] == ["look at this"]


async def test_media_that_cannot_be_fetched_still_lets_the_text_through_with_a_note(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await ready(bridge)
        media_id = bridge.x.add_media(ALICE, b"\xff\xd8\xff data")
        bridge.x.inject("403", path_contains="/2/dm_conversations/media/")
        bridge.x.add_event(CONVERSATION, ALICE, "see attached", media_ids=(media_id,))
        await wait_posts(bridge, 1)
        assert [m["text"] for m in posts(bridge)] == [
            "see attached\n(an attachment could not be brought over from X)"
        ]
        assert bridge.slack.shared_files == []


async def test_linking_a_conversation_with_history_posts_it_once_oldest_first(tmp_path: Path) -> None:
    config = InboundConfig(min_interval=0.05, idle_interval=0.2, retry_base=0.05, retry_cap=0.5, backfill=3)
    async with running_bridge(tmp_path, inbound=config) as bridge:
        for i in range(5):
            bridge.x.add_event(CONVERSATION, ALICE if i % 2 else ME, f"old {i}")
        await bridge.connect()
        await bridge.map_link(CONVERSATION)
        await wait_posts(bridge, 3)
        bridge.x.add_event(CONVERSATION, ALICE, "new")
        await wait_posts(bridge, 4)
        # Unlinking and linking again brings nothing twice.
        await bridge.confirmed("unlink")
        await bridge.map_link(CONVERSATION)
        await asyncio.sleep(0.6)
        assert [m["text"] for m in posts(bridge)] == [
            "old 2\n(sent from X; history)",
            "old 3\n(history)",
            "old 4\n(sent from X; history)",
            "new",
        ]
        history = [
            r for r in bridge.x.all_requests if r.path == f"/2/dm_conversations/{CONVERSATION}/dm_events"
        ]
        # `/xdm link` reads one event to check the conversation is readable; the history follows.
        assert [r.query["max_results"] for r in history[:2]] == ["1", "3"]


async def test_our_message_with_links_is_not_posted_back_though_x_rewrote_them(tmp_path: Path) -> None:
    """X stores links as t.co, so the text read back differs from what the bridge sent."""
    async with running_bridge(tmp_path) as bridge:
        await ready(bridge)
        _, ts = await bridge.post("see <https://example.com/a|the page> and example.org")
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        [event] = bridge.x.events
        assert event.stored_text is not None and "t.co/" in event.stored_text
        reads = sum(r.path == "/2/dm_events" for r in bridge.x.all_requests)
        await wait_until(
            lambda: sum(r.path == "/2/dm_events" for r in bridge.x.all_requests) > reads + 1,
            10,
            "two more reads",
        )
        await settled(bridge, reads=1)
        assert posts(bridge) == []
        assert len(bridge.x.events) == 1


async def test_links_read_by_polling_reach_slack_as_the_sender_wrote_them_not_as_t_co(tmp_path: Path) -> None:
    """X keeps a DM's links as t.co addresses; the read asks for the entities that carry the
    expanded URLs and puts them back (push shows them expanded already)."""
    async with running_bridge(tmp_path) as bridge:
        await ready(bridge)
        event = bridge.x.add_event(CONVERSATION, ALICE, "see https://example.com/a_b?x=1&y=2 and example.org")
        assert event.stored_text is not None and event.stored_text.count("https://t.co/") == 2
        await wait_posts(bridge, 1)
        [post] = posts(bridge)
        assert "t.co" not in post["text"]
        assert "https://example.com/a_b?x=1&amp;y=2" in post["text"]
        assert "http://example.org" in post["text"]
        [read, *_] = [r for r in bridge.x.all_requests if r.path == "/2/dm_events"]
        assert "entities" in read.query["dm_event.fields"].split(",")


async def test_x_text_reads_literally_in_slack_nothing_formats_nothing_pings(tmp_path: Path) -> None:
    """What the X author typed is what Slack shows: no bold, italics, strike, code or quote they
    did not see, no mention or broadcast, and links (with their ``_``) still links."""
    typed = (
        "*stars* _under_ ~tilde~ `code` ```block```\n"
        "> not a quote <@U100> <!channel> <!here|here> @channel & &amp; <b> https://example.com/a_b_c~d*e"
    )
    async with running_bridge(tmp_path) as bridge:
        await ready(bridge)
        bridge.x.add_event(CONVERSATION, ALICE, typed)
        await wait_posts(bridge, 1)
        [call] = [c for c in bridge.slack.calls_to("chat.postMessage") if c.params.get("metadata")]
        assert call.params["mrkdwn"] is False  # Slack's own switch: *_~` and > stay as typed
        text = str(call.params["text"])
        # Slack's control characters escaped, nothing else touched: byte for byte what was typed.
        assert text == typed.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        assert "<@" not in text and "<!" not in text
        assert "https://example.com/a_b_c~d*e" in text


async def test_dms_written_before_the_first_read_of_an_account_are_all_posted(tmp_path: Path) -> None:
    """The first read sets the account's starting point; when it comes late (X failed it here),
    everything written since the channel was bridged is read, not just the newest page's worth."""
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        bridge.x.inject("503", path_contains="/2/dm_events")  # the first read fails: read again later
        await bridge.map_link(CONVERSATION)
        for i in range(4):
            bridge.x.add_event(CONVERSATION, ALICE, f"early {i}")
        await wait_posts(bridge, 4)
        await settled(bridge)
        assert [m["text"] for m in posts(bridge)] == [f"early {i}" for i in range(4)]


async def test_status_shows_how_far_the_history_of_a_linked_conversation_is(tmp_path: Path) -> None:
    """Issue 21: long work the bridge does for a command shows its progress. While Slack holds the
    history's posts back, `/xdm status` says how many of them are posted; once all are, nothing."""
    config = InboundConfig(min_interval=0.05, idle_interval=0.2, retry_base=0.05, retry_cap=0.5, backfill=3)
    async with running_bridge(tmp_path, inbound=config) as bridge:
        for i in range(3):
            bridge.x.add_event(CONVERSATION, ALICE, f"old {i}")
        await bridge.connect()
        bridge.slack.ratelimit_next("chat.postMessage", count=6, retry_after=2)
        await bridge.map_link(CONVERSATION)
        for _ in range(500):
            if await bridge.sql("SELECT COUNT(*) FROM inbound WHERE origin = 'backfill'") == [(3,)]:
                break
            await asyncio.sleep(0.01)
        status, _ = await bridge.command("status")
        assert "History: 0 of 3 earlier messages posted; the rest follow." in status.text, status.text
        await wait_posts(bridge, 3, timeout=20.0)
        status, _ = await bridge.command("status")
        assert "History:" not in status.text
