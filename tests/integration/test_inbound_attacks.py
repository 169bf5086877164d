"""X → Slack on X's bad days and a hostile user's: an unfinished read whose account goes away,
pagination that goes round in circles, pages out of X's order, nonsense events, and Slack
refusing one row or one channel. Each holds the promise: every event once, in X's order, and
one bad row, channel or account never stops anyone else."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web

from adapters.sandbox.fake_x import FakeX
from adapters.store.crypto import generate_key
from bridge.poster import METADATA_TYPE
from tests.harness import ALICE, BOB, DORA, ME, Bridge, running_bridge, wait_until
from tests.harness import settled as read_and_settled
from tests.integration.test_inbound import CONVERSATION, posts, ready, wait_posts
from tests.integration.test_inbound_gaps import SMALL_READS, gap_open
from tests.integration.test_push import pushing, subscribed

BURST = 20


def texts(bridge: Bridge, channel: str = "C100") -> list[str]:
    return [m["text"] for m in posts(bridge, channel)]


def reader(x: FakeX, request: web.Request) -> str | None:
    """The X user a request reads DMs as (from its Bearer token)."""
    token = request.headers.get("Authorization", "").removeprefix("Bearer ")
    found = x.access_tokens.get(token)
    return found.user_id if found is not None else None


def on_reads(x: FakeX, rewrite: Callable[[web.Request, web.Response], None]) -> None:
    """Rewrite X's answers to ``GET /2/dm_events`` (after the fake checked them against the spec)."""

    def hook(request: web.Request, response: web.StreamResponse) -> None:
        if request.path == "/2/dm_events" and isinstance(response, web.Response):
            rewrite(request, response)

    x.response_hook = hook


def refuse_reads_of(x: FakeX, users: set[str]) -> None:
    """X answers 503 to the DM reads of ``users`` (changed in place to start and stop)."""

    def rewrite(request: web.Request, response: web.Response) -> None:
        if reader(x, request) in users:
            response.set_status(503)
            response.body = json.dumps({"title": "Service Unavailable", "type": "about:blank"}).encode()

    on_reads(x, rewrite)


async def settled(bridge: Bridge) -> None:
    """No read left unfinished, nothing left to post."""
    for _ in range(3000):
        gaps = await bridge.sql("SELECT 1 FROM cursors WHERE gap_newest IS NOT NULL")
        if not gaps and not await bridge.sql("SELECT 1 FROM inbound WHERE state IN ('queued', 'posting')"):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("still reading or posting")


async def two_accounts_on_one_group(bridge: Bridge) -> str:
    """U100 (X account ME) bridges C100 and U200 (DORA) bridges C200 to one group; both first
    reads taken."""
    group = bridge.x.create_group(ME, [ALICE, DORA])
    await bridge.connect()
    await bridge.map_link(group, channel="C100")
    await bridge.connect(user="U200", channel="C200", x_user=DORA)
    await bridge.map_link(group, user="U200", channel="C200")
    for _ in range(2000):
        if len(await bridge.sql("SELECT 1 FROM cursors WHERE newest_event_id IS NOT NULL")) == 2:
            return group
        await asyncio.sleep(0.01)
    raise AssertionError("both accounts' first reads")


async def test_an_unfinished_read_of_a_disconnected_account_does_not_hold_another_accounts_channel(
    tmp_path: Path,
) -> None:
    """ME's read of a burst is cut short (a gap) after it took rows for both channels; then U100
    disconnects ME. ME is never read again, so its gap never closes: DORA's channel must not wait
    on it. DORA's own reads bring the rest, and C200 gets the whole burst once, in X's order."""
    async with running_bridge(tmp_path, inbound=SMALL_READS) as bridge:
        group = await two_accounts_on_one_group(bridge)
        blocked = {DORA}
        refuse_reads_of(bridge.x, blocked)
        sent = [bridge.x.add_event(group, ALICE, f"m{i}") for i in range(BURST)]
        await gap_open(bridge)
        _, response_url = await bridge.confirmed("disconnect")
        await bridge.follow_up(response_url, count=2)
        blocked.clear()  # X answers DORA again
        await wait_posts(bridge, BURST, "C200", timeout=30.0)
        await asyncio.sleep(0.3)
        assert texts(bridge, "C200") == [f"m{i}" for i in range(BURST)]
        assert [m["metadata"]["event_payload"]["dm_event_id"] for m in posts(bridge, "C200")] == [
            e.id for e in sent
        ]
        assert texts(bridge, "C100") == []  # paused: it waits for ME to be connected again


def token_loops(x: FakeX) -> None:
    """X's pagination goes round in circles: a page asked for with a token names that same
    token as the next one (the same page again, for ever)."""

    def rewrite(request: web.Request, response: web.Response) -> None:
        asked = request.query.get("pagination_token")
        if asked is None or response.status != 200 or not isinstance(response.body, bytes):
            return
        body = json.loads(response.body)
        body.setdefault("meta", {})["next_token"] = asked
        response.body = json.dumps(body).encode()

    on_reads(x, rewrite)


async def test_a_pagination_token_that_loops_does_not_hold_the_channels_for_ever(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The burst's read never reaches the cursor: X keeps answering the same page. The bridge
    sees it goes nowhere, reads back from the newest a few times (as for an expired token), then
    gives the gap up with one warning: what it read is posted in X's order, and the account's
    later messages flow again."""
    caplog.set_level(logging.INFO, logger="bridge.inbound")
    async with running_bridge(tmp_path, inbound=SMALL_READS) as bridge:
        await ready(bridge)
        token_loops(bridge.x)
        [bridge.x.add_event(CONVERSATION, ALICE, f"m{i}") for i in range(BURST)]
        await gap_open(bridge)
        await wait_until(lambda: len(texts(bridge)) >= 5, 30.0, "the newest events")
        await settled(bridge)
        got = texts(bridge)
        assert got == [f"m{i}" for i in range(BURST - len(got), BURST)]
        bridge.x.response_hook = None  # X is itself again
        bridge.x.add_event(CONVERSATION, ALICE, "later")
        await wait_until(lambda: texts(bridge)[-1:] == ["later"], 30.0, "a later message")
        assert texts(bridge) == [*got, "later"]
        assert await bridge.sql("SELECT gap_newest FROM cursors") == [(None,)]
        assert bridge.x.read_rate_limited_count == 0
    assert [r for r in caplog.records if "given up" in r.getMessage()]


async def test_an_event_older_than_the_cursor_in_the_middle_of_a_page_does_not_hide_newer_ones(
    tmp_path: Path,
) -> None:
    """X's page is not in its own order: an event the bridge read long ago comes between two new
    ones. The read stops at the cursor, but not before taking the whole page: the new event after
    the old one is not lost (the cursor moves past it with the page)."""
    async with running_bridge(tmp_path) as bridge:
        old = bridge.x.add_event(CONVERSATION, ALICE, "old")
        await ready(bridge)
        await asyncio.sleep(0.3)  # idle: the next read asks for a small page
        old_json = {
            "id": old.id,
            "event_type": "MessageCreate",
            "text": "old",
            "dm_conversation_id": CONVERSATION,
            "sender_id": ALICE,
        }

        def rewrite(request: web.Request, response: web.Response) -> None:
            if request.query.get("pagination_token") or not isinstance(response.body, bytes):
                return
            body = json.loads(response.body)
            data = body.get("data") or []
            if len(data) >= 2 and old.id not in {e["id"] for e in data}:
                data.insert(1, old_json)
                response.body = json.dumps(body).encode()

        on_reads(bridge.x, rewrite)
        bridge.x.add_event(CONVERSATION, ALICE, "new 1")
        bridge.x.add_event(CONVERSATION, ALICE, "new 2")
        await wait_posts(bridge, 2, timeout=10.0)
        await read_and_settled(bridge)
        assert texts(bridge) == ["new 1", "new 2"]


async def test_nonsense_events_from_x_are_posted_sensibly_or_left_out(tmp_path: Path) -> None:
    """X's page has an event of a kind the bridge did not ask for, a message with neither text
    nor sender, one from someone X does not describe (not a participant), and a huge one. The
    unknown kind is left out; the rest are posted in order, each once, with a readable sender
    (the huge one cut to what Slack keeps); the message after them is posted too."""
    async with running_bridge(tmp_path) as bridge:
        await ready(bridge)
        odd = [bridge.x.add_event(CONVERSATION, ALICE, f"odd {i}") for i in range(4)]
        huge = "many words " * 20_000

        def rewrite(request: web.Request, response: web.Response) -> None:
            if not isinstance(response.body, bytes):
                return
            body = json.loads(response.body)
            for event in body.get("data") or []:
                if event["id"] == odd[0].id:
                    event["event_type"] = "MessageReactionCreate"
                elif event["id"] == odd[1].id:
                    event.pop("text", None)
                    event.pop("sender_id", None)
                elif event["id"] == odd[2].id:
                    event["sender_id"] = "999"
                elif event["id"] == odd[3].id:
                    event["text"] = huge
            response.body = json.dumps(body).encode()

        on_reads(bridge.x, rewrite)
        bridge.x.add_event(CONVERSATION, ALICE, "after")
        await wait_posts(bridge, 4, timeout=10.0)
        await read_and_settled(bridge)
        got = posts(bridge)
        shown = [m["text"] for m in got]
        assert [shown[0], shown[1], shown[3]] == ["(empty message)", "odd 2", "after"]
        # Far past what X allows, and past Slack's 40,000 characters: cut, with a visible count.
        kept, cut = shown[2].split("…", 1)
        assert len(shown[2]) <= 40_000 and huge.startswith(kept)
        assert cut == f"(cut: {len(huge) - len(kept)} more characters)"
        senders = ["someone on X", "X user 999", "Alice (@alice)", "Alice (@alice)"]
        assert [m["username"] for m in got] == senders


@pytest.mark.parametrize("error", ["is_archived", "not_in_channel", "channel_not_found"])
async def test_a_channel_slack_refuses_waits_alone_and_gets_everything_once_it_is_back(
    tmp_path: Path, error: str
) -> None:
    """Slack refuses every post to C100 (archived, the bot removed, gone): C200 keeps getting its
    messages meanwhile; C100's wait, text and attachment, and arrive once, in order, when Slack
    takes them again."""
    async with running_bridge(tmp_path) as bridge:
        await ready(bridge)
        await bridge.map_link(f"{ME}-{BOB}", channel="C200")
        bridge.slack.channel_errors["C100"] = error
        picture = b"\\xff\\xd8\\xff" + bytes(range(256)) * 8
        media_id = bridge.x.add_media(ALICE, picture)
        bridge.x.add_event(CONVERSATION, ALICE, "first", media_ids=(media_id,))
        bridge.x.add_event(CONVERSATION, ALICE, "second")
        bridge.x.add_event(f"{ME}-{BOB}", BOB, "elsewhere")
        await wait_posts(bridge, 1, "C200")
        refused = len(bridge.slack.calls)
        await wait_until(lambda: len(bridge.slack.calls) > refused + 2, 10.0, "more tries at C100")
        assert texts(bridge) == []
        del bridge.slack.channel_errors["C100"]
        await wait_posts(bridge, 2, timeout=10.0)
        await read_and_settled(bridge)
        assert texts(bridge) == ["first", "second"]
        assert [f["content"] for f in bridge.slack.shared_files if f["channel"] == "C100"] == [picture]
        assert texts(bridge, "C200") == ["elsewhere"]


async def test_a_send_left_in_doubt_by_a_disconnected_account_does_not_hold_another_accounts_own_messages(
    tmp_path: Path,
) -> None:
    """U100's send to the group is in doubt (X took it, the answer never came) when U100
    disconnects ME: it can never be settled. DORA then writes in the group from X's app. That
    cannot be an echo of ME's send (DORA sent it), so C200 gets it, marked as sent from X."""
    async with running_bridge(tmp_path) as bridge:
        group = await two_accounts_on_one_group(bridge)
        bridge.x.inject("record_then_hang")
        await bridge.post("hello from slack")
        await bridge.wait_dms(1)
        _, response_url = await bridge.confirmed("disconnect")
        await bridge.follow_up(response_url, count=2)
        for _ in range(1000):
            if await bridge.sql("SELECT 1 FROM outbox WHERE state = 'sending'"):
                break
            await asyncio.sleep(0.01)
        bridge.x.add_event(group, DORA, "from my phone")
        mine = "from my phone\n(sent from X)"
        await wait_until(lambda: mine in texts(bridge, "C200"), 10.0, "DORA's own message in C200")
        assert texts(bridge, "C200")[-1] == mine


async def test_a_push_for_a_disconnected_account_is_not_kept_and_nothing_is_lost_on_reconnect(
    tmp_path: Path,
) -> None:
    """U100 disconnected ME (the bridge may no longer read its DMs), but X still pushes ME's DMs
    to the webhook: the bridge keeps none of them. When U100 connects ME again, the read from
    the kept cursor brings the message into the channel, once."""
    async with pushing(tmp_path) as bridge:
        await subscribed(bridge)
        _, response_url = await bridge.confirmed("disconnect")
        await bridge.follow_up(response_url, count=2)
        event = bridge.x.add_event(CONVERSATION, ALICE, "while you were away")
        await bridge.x.wait_pushes()
        assert [d["status"] for d in bridge.x.deliveries][-1:] == [200]
        assert await bridge.sql("SELECT dm_event_id FROM inbound") == []
        await bridge.connect()
        await wait_posts(bridge, 1, timeout=10.0)
        await asyncio.sleep(0.3)
        assert [m["metadata"]["event_payload"]["dm_event_id"] for m in posts(bridge)] == [event.id]


async def test_unlinking_a_channel_held_by_an_unfinished_read_posts_what_it_has_at_once(
    tmp_path: Path,
) -> None:
    """C100 waits for ME's unfinished read (X hangs on the next pages). Unlinked, it gets nothing
    more, so what was taken for it is posted now, in X's order (not at the poster's next idle
    look), and the unlink says so."""
    async with running_bridge(tmp_path, inbound=SMALL_READS) as bridge:
        await ready(bridge)
        [bridge.x.add_event(CONVERSATION, ALICE, f"m{i}") for i in range(BURST)]
        await gap_open(bridge)
        bridge.x.inject("timeout", count=1000, path_contains="/2/dm_events")
        await asyncio.sleep(0.2)  # a read answered before the fault has landed
        taken = len(await bridge.sql("SELECT 1 FROM inbound WHERE state = 'queued'"))
        ack, _ = await bridge.confirmed("unlink")
        assert f"{taken} message(s) from X that waited are posted here now" in ack.text
        await wait_posts(bridge, taken, timeout=10.0)
        assert texts(bridge) == [f"m{i}" for i in range(BURST - taken, BURST)]


async def test_a_channel_held_by_slacks_429_at_a_restart_is_posted_once_in_order_after_it(
    tmp_path: Path,
) -> None:
    """A Slack 429 storm holds C100 when the bridge stops: the hold and the rows are in the
    store, so the next bridge waits out the rest of Retry-After and posts them all, in order."""
    x = FakeX()
    env = {"BRIDGE_ENCRYPTION_KEY": generate_key()}
    async with running_bridge(tmp_path, env=env, fake_x=x) as bridge:
        await ready(bridge)
        bridge.slack.ratelimit_next("chat.postMessage", count=50, retry_after=2)
        ids = [x.add_event(CONVERSATION, ALICE, f"m{i}").id for i in range(3)]
        for _ in range(1000):
            if await bridge.sql("SELECT 1 FROM inbound WHERE last_error LIKE '%rate limit%'"):
                break
            await asyncio.sleep(0.01)
        assert texts(bridge) == []
    async with running_bridge(tmp_path, env=env, fake_x=x) as again:
        await wait_posts(again, 3, timeout=10.0)
        await read_and_settled(again)
        assert texts(again) == ["m0", "m1", "m2"]
        assert [m["metadata"]["event_payload"]["dm_event_id"] for m in posts(again)] == ids


REFUSED_LINE = "A message from @alice on X could not be shown here: Slack refused it ({error})."


@pytest.mark.parametrize("error", ["msg_too_long", "invalid_blocks", "invalid_metadata_format"])
async def test_a_message_slack_refuses_for_itself_is_one_line_and_the_channel_flows_on(
    tmp_path: Path, error: str
) -> None:
    """Slack refuses one message for what it is: it is not tried again (it never would be
    taken), a short line stands in its place, and the messages after it follow in order."""
    async with running_bridge(tmp_path) as bridge:
        await ready(bridge)
        bridge.slack.text_errors["BOOM"] = error
        for text in ("first", "BOOM", "third"):
            bridge.x.add_event(CONVERSATION, ALICE, text)
        await wait_posts(bridge, 3)
        await asyncio.sleep(0.6)  # longer than the retry cap: nothing is tried again
        assert texts(bridge) == ["first", REFUSED_LINE.format(error=error), "third"]
        tried = [c for c in bridge.slack.calls_to("chat.postMessage") if "BOOM" in str(c.params.get("text"))]
        assert len(tried) == 1


async def test_a_refused_message_whose_line_is_refused_too_fails_alone(tmp_path: Path) -> None:
    """Slack refuses the message and the line standing in for it: the row fails for good, with
    Slack's reason kept, nothing more is posted for it, and the channel flows on."""
    async with running_bridge(tmp_path) as bridge:
        await ready(bridge)
        bridge.slack.text_errors["BOOM"] = "msg_too_long"
        bridge.slack.text_errors["could not be shown"] = "invalid_arguments"
        for text in ("first", "BOOM", "third"):
            bridge.x.add_event(CONVERSATION, ALICE, text)
        await wait_posts(bridge, 2)
        await settled(bridge)
        await asyncio.sleep(0.6)
        assert texts(bridge) == ["first", "third"]
        assert len(bridge.slack.calls_to("chat.postMessage")) == 4
        failed = await bridge.sql("SELECT last_error FROM inbound WHERE state = 'failed'")
        assert len(failed) == 1 and "msg_too_long" in str(failed[0])


async def test_the_longest_dm_x_allows_is_cut_for_slack_and_keeps_its_notes(tmp_path: Path) -> None:
    """10,000 "&" (what X's spec allows) are 50,000 characters escaped for Slack, past the
    40,000 Slack keeps: the bridge cuts the text with a visible count, so the note survives."""
    async with running_bridge(tmp_path) as bridge:
        await ready(bridge)
        bridge.x.add_event(CONVERSATION, ME, "&" * 10_000)
        await wait_posts(bridge, 1)
        text = texts(bridge)[0]
        assert text.endswith(" more characters)\n(sent from X)")
        assert "…(cut: " in text


async def test_a_refused_channel_does_not_fetch_the_attachment_from_x_again(tmp_path: Path) -> None:
    """X bills reads: while Slack refuses the channel, the attachment fetched once is kept for
    the retries, and shared once when the channel is back."""
    async with running_bridge(tmp_path) as bridge:
        await ready(bridge)
        bridge.slack.channel_errors["C100"] = "not_in_channel"
        picture = b"\xff\xd8\xff" + bytes(range(256)) * 8
        media_id = bridge.x.add_media(ALICE, picture)
        bridge.x.add_event(CONVERSATION, ALICE, "first", media_ids=(media_id,))
        await wait_until(
            lambda: len(bridge.slack.calls_to("files.completeUploadExternal")) >= 3, 10.0, "more tries"
        )
        del bridge.slack.channel_errors["C100"]
        await wait_posts(bridge, 1)
        fetched = [r for r in bridge.x.all_requests if r.path.startswith("/2/dm_conversations/media/")]
        assert len(fetched) == 1
        assert [f["content"] for f in bridge.slack.shared_files if f["channel"] == "C100"] == [picture]
        assert texts(bridge) == ["first"]


async def test_another_apps_message_carrying_the_bridges_metadata_does_not_pass_for_its_post(
    tmp_path: Path,
) -> None:
    """A post Slack failed is looked for in the channel's history before it is made again (it
    may have gone through). Any app in the workspace can post a message carrying the bridge's
    metadata type and an X event's id: taken for the bridge's post, the DM would never show
    (and its edits would follow the other app's message). Only the bridge's own bot's post is."""
    async with running_bridge(tmp_path) as bridge:
        await ready(bridge)
        bridge.slack.fail_next("chat.postMessage", "internal_error", status=500)
        event = bridge.x.add_event(CONVERSATION, ALICE, "the real message")
        ts = f"{time.time():.6f}"
        bridge.slack._messages[("C100", ts)] = {
            "type": "message",
            "ts": ts,
            "channel": "C100",
            "text": "a decoy",
            "bot_id": "BOTHERAPP",
            "app_id": "AOTHERAPP",
            "metadata": {"event_type": METADATA_TYPE, "event_payload": {"dm_event_id": event.id}},
        }
        await wait_until(lambda: "the real message" in texts(bridge), 10, "the DM posted by the bridge")
        [(posted_ts,)] = await bridge.sql("SELECT slack_ts FROM inbound WHERE dm_event_id = ?", event.id)
        assert posted_ts != ts
