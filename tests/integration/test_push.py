"""X's push (XAA webhook) into Slack: CRC, signatures, registration, push + poll meeting once, replay."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from adapters.ops import doctor, webhook
from adapters.sandbox.fake_x import FakeX, sign
from adapters.store.crypto import generate_key
from adapters.web.app import SERVICES
from bridge.inbound import InboundConfig
from tests.harness import ALICE, BOB, ME, Bridge, free_port, linked, running_bridge, wait_until
from tests.integration.test_inbound import CONVERSATION, posts, wait_posts

pytestmark = pytest.mark.usefixtures("on_both_stores")

# Polling as a safety net only every few seconds once push works, so a post that arrives
# quickly came by push: never "active" (active_for=0), which would read at the budget's pace
# (here a read window is 2 s, so a read every ~0.15 s could race a push).
PUSHED = InboundConfig(
    min_interval=0.05, idle_interval=0.2, push_interval=5.0, active_for=0.0, retry_base=0.05, retry_cap=0.5
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
    async with (
        pushing(tmp_path) as bridge,
        bridge.session.get(f"{bridge.url}/x/webhook", params={"crc_token": "abc123"}) as response,
    ):
        assert response.status == 200
        assert await response.json() == {"response_token": sign(bridge.x.consumer_secret, b"abc123")}


async def test_a_pushed_reply_is_posted_and_polling_slows_but_goes_on(tmp_path: Path) -> None:
    async with pushing(tmp_path) as bridge:
        await subscribed(bridge)
        event = bridge.x.add_event(CONVERSATION, ALICE, "pushed to you")
        await wait_posts(bridge, 1, timeout=3.0)
        assert await settled(bridge, 1) == {event.id: "push"}
        assert [m["text"] for m in posts(bridge)] == ["pushed to you"]
        status, _ = await bridge.command("status")
        assert "From X: push (polling as a safety net)" in status.text
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


async def test_a_forged_push_is_refused_and_nothing_is_posted(tmp_path: Path) -> None:
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
