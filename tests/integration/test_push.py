"""X's push (XAA webhook) into Slack: CRC, signatures, registration, push + poll meeting once, replay."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from adapters.ops import doctor, webhook
from adapters.sandbox.fake_x import FakeX, sign
from adapters.store.crypto import generate_key
from adapters.web.app import METRICS, SERVICES
from bridge.inbound import InboundConfig
from tests.harness import ALICE, BOB, ME, Bridge, free_port, linked, running_bridge, wait_until
from tests.integration.test_inbound import CONVERSATION, posts, wait_posts

# Polling as a safety net only every few seconds once push works, so a post that arrives
# quickly came by push: never "active" (active_for=0), which would read at the budget's pace
# (here a read window is 2 s, so a read every ~0.15 s could race a push).
PUSHED = InboundConfig(
    min_interval=0.05,
    idle_interval=0.2,
    push_interval=5.0,
    active_for=0.0,
    retry_base=0.05,
    retry_cap=0.5,
    post_rate=0.0,  # bursts reach the fake Slack at once (test_inbound.py tests Slack's pace)
)


def push_env(x: FakeX) -> dict[str, str]:
    return {"X_CONSUMER_SECRET": x.consumer_secret, "X_BEARER_TOKEN": x.app_bearer_token}


@asynccontextmanager
async def pushing(
    tmp_path: Path, *, fake_x: FakeX | None = None, port: int | None = None, key: str | None = None
) -> AsyncIterator[Bridge]:
    x = fake_x or FakeX()
    env = push_env(x) | ({"BRIDGE_ENCRYPTION_KEY": key} if key else {})
    async with running_bridge(tmp_path, inbound=PUSHED, env=env, fake_x=x, port=port) as bridge:
        # The bridge registers its webhook just after start-up (X calls it back for the CRC);
        # no test should end in the middle of that.
        await wait_until(lambda: any(w["valid"] for w in x.webhooks.values()), 10, "the webhook registered")
        yield bridge
        await x.wait_pushes()


async def origins(bridge: Bridge) -> dict[str, str]:
    return dict(await bridge.sql("SELECT dm_event_id, origin FROM inbound WHERE state = 'posted'"))


async def settled(bridge: Bridge, count: int) -> dict[str, str]:
    """How the posted events came in, once ``count`` rows are marked posted."""
    for _ in range(1000):
        if len(found := await origins(bridge)) >= count:
            return found
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {count} rows posted")


async def subscribed(bridge: Bridge) -> None:
    """Linked, the webhook valid and the account subscribed to both DM event types."""
    await linked(bridge, CONVERSATION)
    await wait_until(
        lambda: (
            {(s["event_type"], s["filter"]["user_id"]) for s in bridge.x.subscriptions.values()}
            == {("dm.received", ME), ("dm.sent", ME)}
        ),
        10,
        "subscriptions",
    )
    [webhook] = bridge.x.webhooks.values()
    assert webhook["valid"] and webhook["url"] == f"{bridge.url}/x/webhook"
    # A read scheduled before push was active may still come within the idle interval and race
    # the push of a new event: wait until the poller has slowed down to its safety-net pace.
    inbound = bridge.app[SERVICES].inbound
    await wait_until(
        lambda: (inbound.next_poll_at(1) or 0.0) > time.time() + PUSHED.push_interval / 2,
        10,
        "polling slowed to a safety net",
    )


async def test_crc_answers_with_the_hmac_of_the_token(tmp_path: Path) -> None:
    token = "Xk2b_9q-ZtR4vWc8LmN0pQ7sUy1AeFh3"  # as X sends them: a few dozen base64url characters
    async with (
        pushing(tmp_path) as bridge,
        bridge.session.get(f"{bridge.url}/x/webhook", params={"crc_token": token}) as response,
    ):
        assert response.status == 200
        assert await response.json() == {"response_token": sign(bridge.x.consumer_secret, token.encode())}


async def test_the_crc_answer_never_signs_a_delivery(tmp_path: Path) -> None:
    """The CRC answer and a delivery's signature are the same HMAC under the same secret: asked to
    answer a CRC whose token is a whole delivery body, the bridge would sign that body for anyone."""
    async with pushing(tmp_path) as bridge:
        await subscribed(bridge)
        event = bridge.x.add_event(f"{ME}-{BOB}", BOB, "not bridged")
        forged = bridge.x.payload_for(event, "dm.received", ME, None)
        dm = forged["data"]["payload"]["direct_message_events"][0]
        dm["id"] = "1999999999999999999"
        dm["message_create"]["sender_id"] = ALICE
        dm["message_create"]["message_data"]["text"] = "wire the money to acct 666"
        raw = json.dumps(forged).encode()
        # The attack: have the bridge "answer a CRC" for the body, then push the body so signed.
        async with bridge.session.get(f"{bridge.url}/x/webhook", params={"crc_token": raw.decode()}) as crc:
            answer = await crc.json()
        headers = {
            "Content-Type": "application/json",
            "x-twitter-webhooks-signature": str(answer.get("response_token")),
        }
        async with bridge.session.post(f"{bridge.url}/x/webhook", data=raw, headers=headers) as response:
            assert response.status == 401
        assert crc.status == 400 and "response_token" not in answer
        # Nothing shaped otherwise than X's tokens is signed either.
        tokens = (" " + raw.decode(), "a" * 129, "abc def", "{}", "short")
        for token in tokens:
            async with bridge.session.get(f"{bridge.url}/x/webhook", params={"crc_token": token}) as answer:
                assert answer.status == 400
                assert "response_token" not in await answer.json()
        await asyncio.sleep(0.3)
        assert posts(bridge) == []
        assert await bridge.sql("SELECT COUNT(*) FROM inbound WHERE dm_event_id = '1999999999999999999'") == [
            (0,)
        ]
        metrics = bridge.app[METRICS]
        assert metrics.crc_refused._value.get() == len(tokens) + 1


async def test_a_pushed_reply_is_posted_and_polling_slows_but_goes_on(tmp_path: Path) -> None:
    async with pushing(tmp_path) as bridge:
        await subscribed(bridge)
        event = bridge.x.add_event(CONVERSATION, ALICE, "pushed to you")
        await wait_posts(bridge, 1, timeout=3.0)
        assert await settled(bridge, 1) == {event.id: "push"}
        assert [m["text"] for m in posts(bridge)] == ["pushed to you"]
        status, _ = await bridge.command("status")
        assert "From X: push (polling as a safety net)" in status.text
        # Placed by one read of the 1-to-1 with its sender, from that endpoint's own window.
        assert "placing pushes: 1-to-1 reads left 14/15, lookups by id left 15/15" in status.text
        # Groups are not pushed (as X may not): the safety net still brings them in.
        reads = sum(r.path == "/2/dm_events" for r in bridge.x.all_requests)
        await wait_until(
            lambda: sum(r.path == "/2/dm_events" for r in bridge.x.all_requests) > reads,
            10,
            "a safety-net read",
        )


async def test_push_and_poll_of_the_same_event_and_duplicates_post_once(tmp_path: Path) -> None:
    async with pushing(tmp_path) as bridge:
        await subscribed(bridge)
        bridge.x.push_duplicate = 3
        for i in range(3):
            bridge.x.add_event(CONVERSATION, ALICE, f"twice {i}")
        await wait_posts(bridge, 3)
        # The safety-net poll reads the same events again: nothing more is posted.
        reads = sum(r.path == "/2/dm_events" for r in bridge.x.all_requests)
        await wait_until(
            lambda: sum(r.path == "/2/dm_events" for r in bridge.x.all_requests) > reads, 10, "a poll"
        )
        await bridge.x.wait_pushes()
        await asyncio.sleep(0.3)
        assert [m["text"] for m in posts(bridge)] == ["twice 0", "twice 1", "twice 2"]


async def test_a_dropped_push_is_caught_by_polling(tmp_path: Path) -> None:
    async with pushing(tmp_path) as bridge:
        await subscribed(bridge)
        bridge.x.push_drop = 1
        event = bridge.x.add_event(CONVERSATION, ALICE, "lost on the way")
        await wait_posts(bridge, 1, timeout=15.0)
        assert await settled(bridge, 1) == {event.id: "poll"}


async def test_a_forged_push_is_refused_and_nothing_is_posted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with pushing(tmp_path) as bridge:
        await subscribed(bridge)
        event = bridge.x.add_event(f"{ME}-{BOB}", BOB, "not bridged")
        other_body = b'{"data": {}}'
        forged = bridge.x.payload_for(event, "dm.received", ME, None)
        forged["data"]["payload"]["direct_message_events"][0]["id"] = "1999999999999999999"
        forged["data"]["payload"]["direct_message_events"][0]["message_create"]["sender_id"] = ALICE
        raw = json.dumps(forged).encode()
        # No signature, garbage, the wrong key, and a real signature of another body.
        for signature in (
            None,
            "sha256=AAAA",
            sign("not-the-secret", raw),
            sign(bridge.x.consumer_secret, other_body),
        ):
            headers = {"Content-Type": "application/json"}
            if signature is not None:
                headers["x-twitter-webhooks-signature"] = signature
            async with bridge.session.post(f"{bridge.url}/x/webhook", data=raw, headers=headers) as response:
                assert response.status == 401
        # A flood of them: each counted, one log line a minute (not one each).
        with caplog.at_level(logging.WARNING, "adapters.web.app"):
            for _ in range(50):
                async with bridge.session.post(f"{bridge.url}/x/webhook", data=raw) as response:
                    assert response.status == 401
        assert bridge.app[METRICS].push_refused._value.get() == 54
        assert len([r for r in caplog.records if "signature does not verify" in r.getMessage()]) == 1
        await asyncio.sleep(0.3)
        assert posts(bridge) == []
        assert await bridge.sql("SELECT COUNT(*) FROM inbound WHERE dm_event_id = '1999999999999999999'") == [
            (0,)
        ]


async def test_what_was_pushed_while_the_bridge_was_down_is_replayed(tmp_path: Path) -> None:
    x = FakeX()
    port, key = free_port(), generate_key()
    async with pushing(tmp_path, fake_x=x, port=port, key=key) as bridge:
        await subscribed(bridge)
        bridge.x.add_event(CONVERSATION, ALICE, "before")
        await wait_posts(bridge, 1, timeout=3.0)
    # Down: X tries to push (and fails), then the bridge comes back on the same URL.
    missed = x.add_event(CONVERSATION, ALICE, "while down")
    await x.wait_pushes()
    async with pushing(tmp_path, fake_x=x, port=port, key=key) as again:
        await wait_until(lambda: bool(x.replays), 10, "a replay request")
        [replay] = x.replays
        assert replay["webhook_id"] in x.webhooks
        await wait_posts(again, 1, timeout=10.0)
        assert [m["text"] for m in posts(again)] == ["while down"]
        assert missed.id in await settled(again, 1)


async def test_operator_sees_registers_and_replays_the_webhook(tmp_path: Path) -> None:
    async with pushing(tmp_path) as bridge:
        await subscribed(bridge)
        report = await webhook.status(bridge.settings)
        assert report["webhook"]["valid"] is True
        assert sorted(s["event_type"] for s in report["subscriptions"]) == ["dm.received", "dm.sent"]
        assert "valid" in webhook.status_text(report)
        [hook] = bridge.x.webhooks.values()
        hook["valid"] = False  # X turned it off (a missed CRC)
        checks: list[doctor.Check] = []
        await doctor.push(bridge.settings, bridge.session, checks)
        assert [(c.status, "invalid" in c.detail) for c in checks] == [("warn", True)]
        assert (await webhook.register(bridge.settings))["action"] == "revalidated"
        assert hook["valid"] is True
        replay = await webhook.replay(bridge.settings, 30)
        assert replay["job_id"] and bridge.x.replays[-1]["webhook_id"] == hook["id"]
        checks.clear()
        await doctor.push(bridge.settings, bridge.session, checks)
        assert [c.status for c in checks] == ["ok"]


async def test_without_the_secrets_push_is_off_and_the_route_says_so(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        async with bridge.session.get(f"{bridge.url}/x/webhook", params={"crc_token": "t"}) as response:
            assert response.status == 404
        checks: list[doctor.Check] = []
        await doctor.push(bridge.settings, bridge.session, checks)
        assert [c.status for c in checks] == ["ok"] and "not configured" in checks[0].detail
        assert bridge.x.webhooks == {}


# Idle, groups are read slowly (and the safety net slower still): a reply in them that took
# longer than a few seconds here waited for the idle pace, not the read budget's.
PACED = InboundConfig(
    min_interval=0.05,
    idle_interval=30.0,
    push_interval=60.0,
    active_for=600.0,
    retry_base=0.05,
    retry_cap=0.5,
    post_rate=0.0,  # bursts reach the fake Slack at once (test_inbound.py tests Slack's pace)
)


@asynccontextmanager
async def group_beside_a_pushed_dm(
    tmp_path: Path, *, fake_x: FakeX | None = None, key: str | None = None
) -> AsyncIterator[tuple[Bridge, str]]:
    """C100 bridged to a pushed 1-to-1, C200 to a group (never pushed), the account idle: the
    poller's next read is the idle pace away."""
    x = fake_x or FakeX()
    env = push_env(x) | ({"BRIDGE_ENCRYPTION_KEY": key} if key else {})
    async with running_bridge(tmp_path, inbound=PACED, env=env, fake_x=x) as bridge:
        await wait_until(lambda: any(w["valid"] for w in x.webhooks.values()), 10, "the webhook registered")
        await linked(bridge, CONVERSATION)
        await wait_until(lambda: len(x.subscriptions) == 2, 10, "subscriptions")
        group = x.create_group(ME, [ALICE, BOB])
        await bridge.map_link(group, channel="C200")
        inbound = bridge.app[SERVICES].inbound
        await wait_until(
            lambda: (inbound.next_poll_at(1) or 0.0) > time.time() + 10, 10, "the idle pace after the link"
        )
        yield bridge, group
        await x.wait_pushes()


async def test_a_push_makes_the_groups_of_its_account_read_at_the_budgets_pace(tmp_path: Path) -> None:
    async with group_beside_a_pushed_dm(tmp_path) as (bridge, group):
        bridge.x.add_event(CONVERSATION, ALICE, "pushed")
        await wait_posts(bridge, 1)
        bridge.x.add_event(group, BOB, "in the group")
        await wait_posts(bridge, 1, "C200", timeout=5.0)
        assert [m["text"] for m in posts(bridge, "C200")] == ["in the group"]


async def test_a_send_makes_the_groups_of_its_account_read_at_the_budgets_pace(tmp_path: Path) -> None:
    async with group_beside_a_pushed_dm(tmp_path) as (bridge, group):
        _, ts = await bridge.post("hello group", channel="C200")
        await bridge.wait_reaction("C200", ts, "white_check_mark")
        bridge.x.add_event(group, BOB, "an answer")
        await wait_posts(bridge, 1, "C200", timeout=5.0)
        assert [m["text"] for m in posts(bridge, "C200")] == ["an answer"]


def _signed(x: FakeX, body: bytes) -> dict[str, str]:
    return {"Content-Type": "application/json", "x-twitter-webhooks-signature": sign(x.consumer_secret, body)}


async def test_signed_but_malformed_pushes_are_refused_and_the_next_is_taken(tmp_path: Path) -> None:
    """X's signature on a body we cannot read (X changed its format, say): one 400 each, counted by
    reason, never a 500; nothing of it is taken, and the deliveries after it are."""
    async with pushing(tmp_path) as bridge:
        await subscribed(bridge)
        event = bridge.x.add_event(f"{ME}-{BOB}", BOB, "not bridged")  # pushed, taken for nothing

        def shaped(change: Callable[[dict[str, Any]], object]) -> bytes:
            body = bridge.x.payload_for(event, "dm.received", ME, None)
            change(body["data"]["payload"]["direct_message_events"][0])
            return json.dumps(body).encode()

        def events(value: object) -> bytes:
            body = bridge.x.payload_for(event, "dm.received", ME, None)
            body["data"]["payload"]["direct_message_events"] = value
            return json.dumps(body).encode()

        bodies = [
            ("not_json", b"\xff{"),
            ("not_json", b"[" * 100_000),  # nested too deep for Python's parser
            ("envelope", b'{"data": {"filter": {"user_id": 1000}, "event_type": "dm.received"}}'),
            ("events", events(5)),
            ("event", events([7])),
            ("event", shaped(lambda e: e.pop("message_create"))),
            ("event", shaped(lambda e: e["message_create"]["message_data"].update(text={"a": 1}))),
            ("event", shaped(lambda e: e["message_create"].update(sender_id=[1]))),
            ("event_id", shaped(lambda e: e.update(id="99999999999999999999"))),  # above 2^63-1
            ("event_id", shaped(lambda e: e.update(id="12ab"))),
        ]
        for reason, body in bodies:
            headers = _signed(bridge.x, body)
            async with bridge.session.post(f"{bridge.url}/x/webhook", data=body, headers=headers) as response:
                assert response.status == 400, (reason, body[:80])
        counted = bridge.app[METRICS].push_malformed
        for reason in {r for r, _ in bodies}:
            assert counted.labels(reason)._value.get() == sum(r == reason for r, _ in bodies), reason
        await bridge.x.wait_pushes()
        reply = bridge.x.add_event(CONVERSATION, ALICE, "still pushed")
        await wait_posts(bridge, 1, timeout=3.0)
        assert await settled(bridge, 1) == {reply.id: "push"}


async def test_a_pushed_group_message_goes_to_the_group_never_to_its_senders_one_to_one(
    tmp_path: Path,
) -> None:
    """X's push names no conversation, and a group's message pushed to a member names that member
    as its one recipient, exactly as a 1-to-1 would: only a read of X says where it belongs."""
    async with pushing(tmp_path) as bridge:
        await subscribed(bridge)  # C100: ME and Alice, 1-to-1
        group = bridge.x.create_group(ME, [ALICE, BOB])
        await bridge.map_link(group, channel="C200")
        for _ in range(1000):  # its history (none) read: what comes now is news
            if not await bridge.sql("SELECT 1 FROM backfills"):
                break
            await asyncio.sleep(0.01)
        bridge.x.push_groups = True
        in_group = bridge.x.add_event(group, ALICE, "to the group")
        await bridge.x.wait_pushes()
        assert any(in_group.id.encode() in d["body"] and d["status"] == 200 for d in bridge.x.deliveries)
        alone = bridge.x.add_event(CONVERSATION, ALICE, "to you alone")
        await wait_posts(bridge, 1, channel="C200", timeout=3.0)
        await wait_posts(bridge, 1, timeout=3.0)
        await asyncio.sleep(0.3)
        assert [m["text"] for m in posts(bridge, "C200")] == ["to the group"]
        assert [m["text"] for m in posts(bridge)] == ["to you alone"]
        # Its push was taken too (which read placed it first, the push's or the poller's, is a
        # race on a busy machine; either posts it once, in its own channel).
        await bridge.x.wait_pushes()
        assert any(alone.id.encode() in d["body"] and d["status"] == 200 for d in bridge.x.deliveries)


async def test_pushes_that_arrive_out_of_order_are_posted_in_xs_order(tmp_path: Path) -> None:
    async with pushing(tmp_path) as bridge:
        await subscribed(bridge)
        bridge.x.push_delays = [0.5]  # the older DM's push arrives after the newer one's
        older = bridge.x.add_event(CONVERSATION, ALICE, "first")
        newer = bridge.x.add_event(CONVERSATION, ALICE, "second")
        await wait_posts(bridge, 2, timeout=3.0)
        await bridge.x.wait_pushes()
        await asyncio.sleep(0.3)
        assert [m["text"] for m in posts(bridge)] == ["first", "second"]
        assert [m["metadata"]["event_payload"]["dm_event_id"] for m in posts(bridge)] == [older.id, newer.id]


async def test_a_pushed_attachment_is_brought_over_at_once_and_before_what_follows(tmp_path: Path) -> None:
    async with pushing(tmp_path) as bridge:
        await subscribed(bridge)
        # The poller's first read done, its window spent: only the push places these (on a busy
        # machine a read still in flight could otherwise list them first).
        for _ in range(1000):
            if await bridge.sql("SELECT 1 FROM cursors"):
                break
            await asyncio.sleep(0.01)
        window = bridge.app[SERVICES].inbound._budget._read_window(1)
        window.remaining, window.reset_at = 0, time.time() + 3600.0
        picture = b"\xff\xd8\xff" + bytes(range(256)) * 40
        media_id = bridge.x.add_media(ALICE, picture)
        photo = bridge.x.add_event(CONVERSATION, ALICE, "look at this", media_ids=(media_id,))
        await bridge.x.wait_pushes()
        assert b"media_url_https" in bridge.x.deliveries[-1]["body"]  # pushed as X's legacy shape does
        after = bridge.x.add_event(CONVERSATION, ALICE, "and after it")
        await wait_posts(bridge, 2, timeout=3.0)  # the safety-net poll comes every 5 s only
        [shared] = bridge.slack.shared_files
        assert shared["channel"] == "C100" and shared["content"] == picture
        assert [m["text"] for m in posts(bridge)] == ["look at this", "and after it"]
        # The photo came by its push. The DM after it may be placed by the same 1-to-1 read
        # before its own push arrives (origin "poll" then): either way after the photo, once.
        origins = await settled(bridge, 2)
        assert origins[photo.id] == "push" and set(origins) == {photo.id, after.id}


async def test_a_pushed_message_shows_its_senders_avatar_as_a_polled_one_does(tmp_path: Path) -> None:
    async with pushing(tmp_path) as bridge:
        await subscribed(bridge)
        event = bridge.x.add_event(CONVERSATION, ALICE, "hello")
        await wait_posts(bridge, 1, timeout=3.0)
        assert await settled(bridge, 1) == {event.id: "push"}
        [post] = posts(bridge)
        assert post["username"] == "Alice (@alice)"
        assert post["icons"]["image_48"].endswith(f"/{ALICE}/avatar_normal.png")


async def test_the_push_of_the_bridges_own_send_costs_no_read(tmp_path: Path) -> None:
    """X pushes what the bridge sent (dm.sent): its place is known, and X allows 15 reads in 15
    minutes; reading for it would take one from the other side's replies."""
    async with pushing(tmp_path) as bridge:
        await subscribed(bridge)
        reads = sum(r.path == "/2/dm_events" for r in bridge.x.all_requests)
        # After X's 201 is recorded (a push that comes first rings a read: the send is in doubt).
        bridge.x.push_delays = [0.5]
        await bridge.post("from Slack")
        await bridge.wait_dms(1)
        await bridge.x.wait_pushes()
        assert any(b'"dm.sent"' in d["body"] and d["status"] == 200 for d in bridge.x.deliveries)
        await asyncio.sleep(0.3)
        assert sum(r.path == "/2/dm_events" for r in bridge.x.all_requests) == reads


async def test_a_pushed_dm_x_lists_after_a_newer_one_is_never_lost(tmp_path: Path) -> None:
    """X's lists are not consistent: a read may show a newer DM and not yet the older pushed one,
    and the cursor moves past it. The pushed DM is placed all the same (looked up by its id) and
    posted before the newer one."""
    async with pushing(tmp_path) as bridge:
        await subscribed(bridge)
        older = bridge.x.add_event(CONVERSATION, ALICE, "first")
        bridge.x.unlisted_until[older.id] = bridge.x.clock() + 3600.0
        newer = bridge.x.add_event(CONVERSATION, ALICE, "second")
        await wait_posts(bridge, 2, timeout=5.0)
        await bridge.x.wait_pushes()
        await asyncio.sleep(0.3)
        assert [m["metadata"]["event_payload"]["dm_event_id"] for m in posts(bridge)] == [older.id, newer.id]
        assert [m["text"] for m in posts(bridge)] == ["first", "second"]
        assert (await settled(bridge, 2))[older.id] == "push"


async def test_a_pushed_dm_no_read_lists_is_rescued_by_its_id_not_dropped(tmp_path: Path) -> None:
    """A pushed DM X's lists never show (within the tries a list read gets) is looked up by its
    id, and posted: it was let go, and lost once a newer DM moved the cursor past it."""
    async with pushing(tmp_path) as bridge:
        await subscribed(bridge)
        hidden = bridge.x.add_event(CONVERSATION, ALICE, "never listed")
        bridge.x.unlisted_until[hidden.id] = bridge.x.clock() + 3600.0
        await wait_posts(bridge, 1, timeout=5.0)
        later = bridge.x.add_event(CONVERSATION, ALICE, "listed")
        await wait_posts(bridge, 2, timeout=5.0)
        assert [m["text"] for m in posts(bridge)] == ["never listed", "listed"]
        assert (await settled(bridge, 2)) == {hidden.id: "push", later.id: "push"}
        lookups = [r for r in bridge.x.all_requests if r.path == f"/2/dm_events/{hidden.id}"]
        assert len(lookups) == 1


async def test_pushes_are_placed_without_the_pollers_read_budget(tmp_path: Path) -> None:
    """Each DM event GET has its own 15 per 15 minutes: with the poller's (GET /2/dm_events)
    spent, a burst of pushed DMs is placed at once by reading the 1-to-1 and the events by id,
    every one in X's order and none of it a 429."""
    x = FakeX()
    x.enforce_read_limit = True
    async with pushing(tmp_path, fake_x=x) as bridge:
        await subscribed(bridge)
        # The poller's window spent (as X would say after 15 reads): pushes must not wait for it.
        window = bridge.app[SERVICES].inbound._budget._read_window(1)
        window.remaining, window.reset_at = 0, time.time() + 3600.0
        reads = sum(r.path == "/2/dm_events" for r in x.all_requests)
        sent = []
        for i in range(20):
            sent.append(x.add_event(CONVERSATION, ALICE, f"burst {i}"))
            await asyncio.sleep(0.05)
        await wait_posts(bridge, 20, timeout=10.0)
        assert [m["text"] for m in posts(bridge)] == [f"burst {i}" for i in range(20)]
        assert sum(r.path == "/2/dm_events" for r in x.all_requests) == reads
        assert x.read_rate_limited_count == 0
        placing = {r.path for r in x.all_requests if r.at >= sent[0].created_at and r.method == "GET"}
        assert f"/2/dm_conversations/with/{ALICE}/dm_events" in placing
        counted = bridge.app[METRICS].dm_endpoint_reads
        assert counted.labels("/2/dm_conversations/with/{participant_id}/dm_events")._value.get() > 0
        assert counted.labels("/2/dm_events")._value.get() == reads


async def test_the_pollers_read_after_placed_pushes_takes_them_in_one_page(tmp_path: Path) -> None:
    """DMs placed from pushes are newer than the poller's cursor, so its next read lists them
    again: it asks for them in its first page (billed once a day, already), not page after page,
    and never leaves an unfinished read that would hold the account's channels."""
    async with pushing(tmp_path) as bridge:
        await subscribed(bridge)
        sent = [bridge.x.add_event(CONVERSATION, ALICE, f"many {i}") for i in range(30)]
        await wait_posts(bridge, 30, timeout=10.0)
        await bridge.x.wait_pushes()
        reads = [r for r in bridge.x.all_requests if r.path == "/2/dm_events"]
        bridge.app[SERVICES].inbound.poll_soon(1)
        for _ in range(500):
            if await bridge.sql("SELECT 1 FROM cursors WHERE newest_event_id = ?", sent[-1].id):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the poller did not read up to the newest DM")
        now = [r for r in bridge.x.all_requests if r.path == "/2/dm_events"]
        [read] = now[len(reads) :]
        assert int(read.query["max_results"]) > 30 and "pagination_token" not in read.query
        assert await bridge.sql("SELECT gap_newest FROM cursors") == [(None,)]
        assert len(posts(bridge)) == 30


async def test_a_pushed_group_photo_placed_by_its_id_is_brought_over(tmp_path: Path) -> None:
    """A group's DM is not in the 1-to-1 its push names: it is looked up by its id, which names
    the group and its attachment; the photo reaches the group's channel, not the sender's 1-to-1."""
    async with pushing(tmp_path) as bridge:
        await subscribed(bridge)
        group = bridge.x.create_group(ME, [ALICE, BOB])
        await bridge.map_link(group, channel="C200")
        for _ in range(1000):  # its history (none) read: what comes now is news
            if not await bridge.sql("SELECT 1 FROM backfills"):
                break
            await asyncio.sleep(0.01)
        # A group is polled every idle interval: with the poller's window spent, the push alone places it.
        window = bridge.app[SERVICES].inbound._budget._read_window(1)
        window.remaining, window.reset_at = 0, time.time() + 3600.0
        bridge.x.push_groups = True
        picture = b"\xff\xd8\xff" + bytes(range(256)) * 20
        photo = bridge.x.add_event(group, ALICE, "our photo", media_ids=(bridge.x.add_media(ALICE, picture),))
        # X's lists leave it out (a read in flight when the window was spent may still list):
        # only the lookup by its id can place it.
        bridge.x.unlisted_until[photo.id] = bridge.x.clock() + 3600.0
        await wait_posts(bridge, 1, channel="C200", timeout=3.0)
        [shared] = bridge.slack.shared_files
        assert shared["channel"] == "C200" and shared["content"] == picture
        assert [m["text"] for m in posts(bridge, "C200")] == ["our photo"] and posts(bridge) == []
        assert (await settled(bridge, 1)) == {photo.id: "push"}
        assert any(r.path == f"/2/dm_events/{photo.id}" for r in bridge.x.all_requests)
