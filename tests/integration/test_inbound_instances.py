"""X → Slack with two instances on one PostgreSQL database: any instance takes X's pushes,
only the leader reads X and posts into Slack."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from adapters.sandbox.fake_x import FakeX, sign
from adapters.store.crypto import generate_key
from adapters.web.app import SERVICES
from bridge.inbound import InboundConfig
from tests.harness import ALICE, BOB, ME, Bridge, running_bridge
from tests.integration.test_inbound import CONVERSATION, posts, wait_posts
from tests.integration.test_push import (
    PUSHED,
    group_beside_a_pushed_dm,
    push_env,
    pushing,
    settled,
    subscribed,
)

pytestmark = pytest.mark.usefixtures("on_postgres")


async def test_a_push_the_standby_takes_is_posted_by_the_leader_at_once(tmp_path: Path) -> None:
    x, key = FakeX(), generate_key()
    async with pushing(tmp_path / "a", fake_x=x, key=key) as leader:
        await subscribed(leader)
        env = push_env(x) | {"BRIDGE_ENCRYPTION_KEY": key}
        async with running_bridge(tmp_path / "b", inbound=PUSHED, env=env, fake_x=x) as standby:
            x.push_drop = 1  # X's own push (to the leader's URL) is lost: this one reaches the standby
            event = x.add_event(CONVERSATION, ALICE, "pushed to the standby")
            body = json.dumps(x.payload_for(event, "dm.received", ME, None)).encode()
            headers = {
                "Content-Type": "application/json",
                "x-twitter-webhooks-signature": sign(x.consumer_secret, body),
            }
            async with standby.session.post(
                f"{standby.url}/x/webhook", data=body, headers=headers
            ) as response:
                assert response.status == 200  # committed by the standby before the 200
            # The leader's poster waits up to 30 s between scans and its safety-net read comes
            # every 5 s (and would find the row already taken): only the NOTIFY wakes it sooner.
            await wait_posts(leader, 1, timeout=4.0)
            assert await settled(leader, 1) == {event.id: "push"}
            assert [m["text"] for m in posts(leader)] == ["pushed to the standby"]
            # The NOTIFY carried who wrote it: the leader read the 1-to-1 with its sender.
            assert any(r.path == f"/2/dm_conversations/with/{ALICE}/dm_events" for r in x.all_requests)
            assert not any(r.path == f"/2/dm_events/{event.id}" for r in x.all_requests)
            assert posts(standby) == []  # the standby never posts
            assert standby.app[SERVICES].worker.role == "standby"
            assert standby.app[SERVICES].worker.current is None  # no delivery, no poller, no upkeep
            # The standby does no push upkeep, yet its status says what the leader's does.
            for _ in range(1000):
                if await leader.sql("SELECT 1 FROM read_schedule WHERE pushed"):
                    break
                await asyncio.sleep(0.01)
            status, _ = await standby.command("status")
            assert "From X: push (polling as a safety net)" in status.text


async def test_history_a_standby_links_is_read_and_posted_by_the_leader(tmp_path: Path) -> None:
    config = InboundConfig(min_interval=0.05, idle_interval=0.2, retry_base=0.05, retry_cap=0.5, backfill=3)
    x, key = FakeX(), generate_key()
    env = {"BRIDGE_ENCRYPTION_KEY": key}
    async with running_bridge(tmp_path / "a", inbound=config, env=env, fake_x=x) as leader:
        for i in range(5):
            x.add_event(CONVERSATION, ALICE, f"old {i}")
        async with running_bridge(tmp_path / "b", inbound=config, env=env, fake_x=x) as standby:
            assert standby.app[SERVICES].worker.role == "standby"
            await standby.connect()
            await standby.map_link(CONVERSATION)  # the standby's command: only the leader reads X
            await wait_posts(leader, 3)
            x.add_event(CONVERSATION, ALICE, "new")
            await wait_posts(leader, 4)
            assert [m["text"] for m in posts(leader)] == [
                "old 2\n(history)",
                "old 3\n(history)",
                "old 4\n(history)",
                "new",
            ]
            assert posts(standby) == []


async def test_status_on_the_standby_shows_the_leaders_next_read_and_reads_left(tmp_path: Path) -> None:
    # One read, then the next a while off: both instances must say the same.
    config = InboundConfig(min_interval=0.05, idle_interval=600.0, retry_base=0.05, retry_cap=0.5, backfill=0)
    x, key = FakeX(), generate_key()
    env = {"BRIDGE_ENCRYPTION_KEY": key}
    async with running_bridge(tmp_path / "a", inbound=config, env=env, fake_x=x) as leader:
        x.window_read_seconds = 600.0  # the harness shortens it; this test wants one window
        async with running_bridge(tmp_path / "b", inbound=config, env=env, fake_x=x) as standby:
            await standby.connect()
            await standby.map_link(CONVERSATION)
            # The leader reads once the channel is mapped (after the link's own check of the
            # conversation): then nothing reads for a while, and both instances say the same.
            [(mapped_at,)] = await leader.sql("SELECT created_at FROM mappings")
            for _ in range(1000):
                if await leader.sql("SELECT 1 FROM read_schedule WHERE next_read_at > ?", mapped_at + 300):
                    break
                await asyncio.sleep(0.01)

            async def inbound_line(bridge: Bridge) -> str:
                status, _ = await bridge.command("status")
                said: str = json.loads(status.text)["text"]
                return next(n for n in said.splitlines() if n.startswith("From X:"))

            on_standby = await inbound_line(standby)
            assert "next read soon" not in on_standby
            assert re.search(r"; next read \d\d:\d\d UTC; reads left (\d+)/(\d+)", on_standby)
            assert on_standby == await inbound_line(leader)
            reads = re.search(r"reads left (\d+)/(\d+)", on_standby)
            assert reads is not None and int(reads[1]) < int(reads[2])  # the leader's read counted


async def test_a_push_the_standby_takes_makes_the_leader_read_groups_at_the_budgets_pace(
    tmp_path: Path,
) -> None:
    x, key = FakeX(), generate_key()
    async with group_beside_a_pushed_dm(tmp_path / "a", fake_x=x, key=key) as (leader, group):
        env = push_env(x) | {"BRIDGE_ENCRYPTION_KEY": key}
        async with running_bridge(tmp_path / "b", inbound=PUSHED, env=env, fake_x=x) as standby:
            x.push_drop = 1  # X's own push (to the leader's URL) is lost: this one reaches the standby
            event = x.add_event(CONVERSATION, ALICE, "pushed to the standby")
            body = json.dumps(x.payload_for(event, "dm.received", ME, None)).encode()
            headers = {
                "Content-Type": "application/json",
                "x-twitter-webhooks-signature": sign(x.consumer_secret, body),
            }
            async with standby.session.post(f"{standby.url}/x/webhook", data=body, headers=headers) as answer:
                assert answer.status == 200
            await wait_posts(leader, 1, timeout=4.0)
            x.add_event(group, BOB, "in the group")
            await wait_posts(leader, 1, "C200", timeout=5.0)
            assert [m["text"] for m in posts(leader, "C200")] == ["in the group"]
