"""X → Slack per channel: paused and held channels wait, two channels on one conversation each
get everything once, history asked for survives a restart, and `/xdm status` says how X's
messages come in (on any instance, for groups too)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

from adapters.sandbox.fake_slack import FakeSlack
from adapters.sandbox.fake_x import DmEvent, FakeX, sign
from adapters.store.crypto import generate_key
from bridge.inbound import InboundConfig
from tests.harness import ALICE, BOB, DORA, FAST_INBOUND, ME, Bridge, running_bridge, settled, wait_until
from tests.integration.test_inbound import CONVERSATION, posts, ready, wait_posts
from tests.integration.test_push import pushing, subscribed

HISTORY = InboundConfig(min_interval=0.05, idle_interval=0.2, retry_base=0.05, retry_cap=0.5, backfill=3)


def texts(bridge: Bridge, channel: str = "C100") -> list[str]:
    return [m["text"] for m in posts(bridge, channel)]


async def deliver(bridge: Bridge, event: DmEvent) -> None:
    """X pushes ``event`` to the bridge's webhook, signed as X signs it."""
    body = json.dumps(bridge.x.payload_for(event, "dm.received", ME, None)).encode()
    headers = {
        "Content-Type": "application/json",
        "x-twitter-webhooks-signature": sign(bridge.x.consumer_secret, body),
    }
    async with bridge.session.post(f"{bridge.url}/x/webhook", data=body, headers=headers) as response:
        assert response.status == 200


async def test_a_paused_channel_shows_nothing_from_x_until_resumed_then_everything_in_order(
    tmp_path: Path,
) -> None:
    async with pushing(tmp_path) as bridge:
        await subscribed(bridge)
        bridge.x.add_event(CONVERSATION, ALICE, "before")
        await wait_posts(bridge, 1)
        _, url = await bridge.confirmed("disconnect")
        await bridge.follow_up(url, count=2)
        # Pushes X makes for the disconnected account: not kept (its owner took the bridge's
        # access back), not shown, not lost: the read from the kept cursor brings them back.
        for text in ("while paused 1", "while paused 2"):
            await deliver(bridge, bridge.x.add_event(CONVERSATION, ALICE, text))
        await asyncio.sleep(0.5)
        assert texts(bridge) == ["before"]
        assert await bridge.sql("SELECT COUNT(*) FROM inbound WHERE state = 'queued'") == [(0,)]
        await bridge.connect()
        await wait_posts(bridge, 3)
        await asyncio.sleep(0.3)  # pushed, with polls seconds apart: no read to settle on
        assert texts(bridge) == ["before", "while paused 1", "while paused 2"]


async def test_two_channels_on_one_conversation_each_get_each_message_once(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await ready(bridge)
        await bridge.map_link(CONVERSATION, channel="C200")
        bridge.x.add_event(CONVERSATION, ALICE, "to both")
        await wait_posts(bridge, 1, "C100")
        await wait_posts(bridge, 1, "C200")
        # Sent from C100: news in C200 (marked as from C100), never back in C100.
        _, ts = await bridge.post("from support", channel="C100")
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        await wait_posts(bridge, 2, "C200")
        bridge.x.add_event(CONVERSATION, ALICE, "to both again")
        await wait_posts(bridge, 2, "C100")
        await wait_posts(bridge, 3, "C200")
        await settled(bridge)  # more reads: nothing twice
        assert texts(bridge, "C100") == ["to both", "to both again"]
        [first, relayed, last] = posts(bridge, "C200")
        assert (first["text"], last["text"]) == ("to both", "to both again")
        assert relayed["text"].endswith("from support\n(sent from Slack in <#C100>)")
        assert relayed["username"] == "Bridge Owner (@bridge_owner)"


async def test_history_asked_for_just_before_a_restart_is_posted_once_after_it(tmp_path: Path) -> None:
    x = FakeX()
    env = {"BRIDGE_ENCRYPTION_KEY": generate_key()}  # the same for both runs: one database
    for i in range(5):
        x.add_event(CONVERSATION, ALICE, f"old {i}")
    history = f"/2/dm_conversations/{CONVERSATION}/dm_events"
    async with running_bridge(tmp_path, inbound=HISTORY, env=env, fake_x=x) as bridge:
        await bridge.connect()
        # `/xdm link`'s check that the conversation is readable passes; the history read after it
        # hangs, and the bridge stops meanwhile.
        x.inject("timeout", path_contains=history, after=1)
        await bridge.map_link(CONVERSATION)
        await wait_until(lambda: any(k == "timeout" for k, _ in x.faults_served), 10, "the history read")
    assert texts(bridge) == []
    reads = sum(r.path == history for r in x.all_requests)
    async with running_bridge(tmp_path, inbound=HISTORY, env=env, fake_x=x) as again:
        await wait_posts(again, 3)
        x.add_event(CONVERSATION, ALICE, "new")
        await wait_posts(again, 4)
        await asyncio.sleep(0.5)
        assert texts(again) == ["old 2\n(history)", "old 3\n(history)", "old 4\n(history)", "new"]
        assert await again.sql("SELECT * FROM backfills") == []
        # Read once more after the restart, then never again (the request is finished).
        assert sum(r.path == history for r in x.all_requests) == reads + 1


async def test_a_live_dm_right_after_linking_does_not_push_the_oldest_history_out(tmp_path: Path) -> None:
    """The history read shows the newest events, and a DM written after the link is among them
    (the poller's, not history): the read pages back until it has the ``backfill`` messages
    from before the link."""
    history = f"/2/dm_conversations/{CONVERSATION}/dm_events"
    async with running_bridge(tmp_path, inbound=HISTORY) as bridge:
        for i in range(5):
            bridge.x.add_event(CONVERSATION, ALICE, f"old {i}")
        await bridge.connect()
        # The link's own check reads through; the first history read fails: read again later.
        bridge.x.inject("503", path_contains=history, after=1)
        await bridge.map_link(CONVERSATION)
        bridge.x.add_event(CONVERSATION, ALICE, "live")  # before the history is read again
        await wait_posts(bridge, 4)
        await asyncio.sleep(0.5)
        assert sorted(texts(bridge)) == [
            "live",
            "old 2\n(history)",
            "old 3\n(history)",
            "old 4\n(history)",
        ]
        assert await bridge.sql("SELECT * FROM backfills") == []


async def test_status_of_a_group_channel_says_it_comes_by_polling_even_with_push(tmp_path: Path) -> None:
    async with pushing(tmp_path) as bridge:
        await subscribed(bridge)  # C100: a 1-to-1, pushed
        group = bridge.x.create_group(ME, [ALICE, BOB])
        await bridge.map_link(group, channel="C200")
        status, _ = await bridge.command("status", channel="C200")
        said = json.loads(status.text)["text"]
        line = next(n for n in said.splitlines() if n.startswith("From X:"))
        assert line.startswith("From X: polling (X does not push group conversations); ")
        assert re.search(r"; next read (\d\d:\d\d UTC|soon);", line), line
        status, _ = await bridge.command("status")
        assert "From X: push (polling as a safety net)" in status.text


async def test_unlinking_a_paused_channel_posts_what_waited_for_it(tmp_path: Path) -> None:
    """As messages already accepted for X still go after an unlink, what X people wrote while the
    channel was bridged (and paused) is not lost: it is posted once the channel stops waiting."""
    async with pushing(tmp_path) as bridge:
        await subscribed(bridge)
        bridge.slack.channel_errors["C100"] = "not_in_channel"  # taken, but not posted yet
        await deliver(bridge, bridge.x.add_event(CONVERSATION, ALICE, "while paused"))
        for _ in range(1000):  # the push's read has taken it (the 200 only says X was heard)
            if await bridge.sql("SELECT 1 FROM inbound"):
                break
            await asyncio.sleep(0.01)
        _, url = await bridge.confirmed("disconnect")
        await bridge.follow_up(url, count=2)
        del bridge.slack.channel_errors["C100"]
        await asyncio.sleep(0.3)
        assert texts(bridge) == []
        unlinked, _ = await bridge.confirmed("unlink")
        assert "1 message(s) from X that waited are posted here now." in unlinked.text
        await wait_posts(bridge, 1)
        assert texts(bridge) == ["while paused"]


async def test_what_the_previous_account_got_while_its_channel_was_held_arrives_when_it_is_back(
    tmp_path: Path,
) -> None:
    """The read cursor belongs to the X account it was read with: the new account's newer events
    must not make the old account's skip what it got meanwhile."""
    async with running_bridge(tmp_path) as bridge:
        await ready(bridge)
        await bridge.connect(x_user=DORA)  # C100 is held for @bridge_owner
        held = bridge.x.add_event(CONVERSATION, ALICE, "while held")
        newer = bridge.x.add_event(f"{ALICE}-{DORA}", ALICE, "to dora")
        assert int(newer.id) > int(held.id)
        for _ in range(1000):  # the new account's read has moved its cursor past that
            if await bridge.sql("SELECT 1 FROM cursors WHERE newest_event_id = ?", newer.id):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the new account never read its DMs")
        assert texts(bridge) == []
        await bridge.connect(x_user=ME)  # the previous account again: released
        await wait_posts(bridge, 1)
        await settled(bridge)
        assert texts(bridge) == ["while held"]


async def test_a_thread_reply_to_an_x_message_in_the_second_channel_quotes_it(tmp_path: Path) -> None:
    """Both channels on one conversation map the X message to their own post, so a Slack thread
    reply to it in either finds what it answers."""
    async with running_bridge(tmp_path) as bridge:
        await ready(bridge)
        await bridge.map_link(CONVERSATION, channel="C200")
        bridge.x.add_event(CONVERSATION, ALICE, "Is the outage over?")
        await wait_posts(bridge, 1, "C100")
        await wait_posts(bridge, 1, "C200")
        # The post shows in Slack a moment before the bridge records where it went: a reply
        # sooner than that quotes "a thread" (the fallback), which is not what this test is about.
        for _ in range(500):
            if await bridge.sql("SELECT COUNT(*) FROM inbound WHERE state = 'posted'") == [(2,)]:
                break
            await asyncio.sleep(0.01)
        for channel in ("C200", "C100"):
            [post] = posts(bridge, channel)
            _, reply = await bridge.post(
                f"Yes, since noon ({channel})", channel=channel, thread_ts=post["ts"]
            )
            await bridge.wait_reaction(channel, reply, "white_check_mark")
            quoted = bridge.texts(CONVERSATION)[-1]
            assert "Is the outage over?" in quoted and quoted.endswith(f"Yes, since noon ({channel})"), quoted
        rows = await bridge.sql(
            "SELECT channel_id FROM message_map WHERE dm_event_id IN "
            "(SELECT dm_event_id FROM inbound WHERE origin = 'poll') ORDER BY channel_id"
        )
        assert rows == [("C100",), ("C200",)]


async def test_sent_from_x_is_marked_only_in_the_channel_of_the_account_that_sent_it(tmp_path: Path) -> None:
    """Two Slack users bridge one X group with their own X accounts: a message one of them typed
    in X's app is "sent from X" in their channel, and simply news in the other's, whichever
    account's read took it."""
    async with running_bridge(tmp_path) as bridge:
        group = bridge.x.create_group(ME, [ALICE, DORA])
        await bridge.connect()
        await bridge.map_link(group, channel="C100")
        await bridge.connect(user="U200", channel="C200", x_user=DORA)
        await bridge.map_link(group, user="U200", channel="C200")
        await wait_until(
            lambda: sum(r.path == "/2/dm_events" for r in bridge.x.all_requests) >= 2, 10, "both first reads"
        )
        for _ in range(1000):
            if len(await bridge.sql("SELECT newest_event_id FROM cursors")) == 2:
                break
            await asyncio.sleep(0.01)
        bridge.x.add_event(group, ME, "from my phone")
        bridge.x.add_event(group, DORA, "from hers")
        await wait_posts(bridge, 2, "C100")
        await wait_posts(bridge, 2, "C200")
        await settled(bridge)
        assert texts(bridge, "C100") == ["from my phone\n(sent from X)", "from hers"]
        assert texts(bridge, "C200") == ["from my phone", "from hers\n(sent from X)"]


async def test_more_channels_than_are_posted_to_at_once_each_get_everything_in_order(
    tmp_path: Path,
) -> None:
    # One channel at a time: the poster walks the channels waiting, a window at a time, and
    # comes back to the first when it reaches the last.
    one_at_a_time = InboundConfig(**{**FAST_INBOUND.__dict__, "post_channels": 1})

    def third_channel(slack: FakeSlack) -> None:
        slack.add_channel("C300", "ops")

    async with running_bridge(tmp_path, inbound=one_at_a_time, before_start=third_channel) as bridge:
        await ready(bridge)
        for channel in ("C200", "C300"):
            await bridge.map_link(CONVERSATION, channel=channel)
        for text in ("first", "second", "third"):
            bridge.x.add_event(CONVERSATION, ALICE, text)
        for channel in ("C100", "C200", "C300"):
            await wait_posts(bridge, 3, channel)
        await settled(bridge)  # more walks: nothing twice
        for channel in ("C100", "C200", "C300"):
            assert texts(bridge, channel) == ["first", "second", "third"]
