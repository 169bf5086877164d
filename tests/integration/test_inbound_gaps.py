"""X → Slack when X has more new events than one poll reads: the next polls page on from where
the last stopped, the cursor moves only once the gap is closed, nothing is lost or doubled,
Slack sees X's order (the account's channels wait until the gap is closed), across a restart
and an expired pagination token."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from adapters.sandbox.fake_x import FakeX
from adapters.store.crypto import generate_key
from bridge.inbound import InboundConfig
from tests.harness import ALICE, Bridge, running_bridge, settled, wait_until
from tests.integration.test_inbound import CONVERSATION, posts, ready, wait_posts

# Two pages of three per poll: a burst of more than six new events leaves a gap.
SMALL_READS = InboundConfig(
    min_interval=0.05,
    idle_interval=0.2,
    retry_base=0.05,
    retry_cap=0.5,
    backfill=0,
    page_size=3,
    max_pages=2,
    post_rate=0.0,  # bursts reach the fake Slack at once (test_inbound.py tests Slack's pace)
)
BURST = 20


def texts(bridge: Bridge) -> list[str]:
    return [m["text"] for m in posts(bridge)]


async def gap_open(bridge: Bridge) -> None:
    for _ in range(2000):
        if await bridge.sql("SELECT 1 FROM cursors WHERE gap_newest IS NOT NULL"):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no read was left unfinished")


async def test_a_burst_bigger_than_one_poll_arrives_whole_once_and_in_order(tmp_path: Path) -> None:
    async with running_bridge(tmp_path, inbound=SMALL_READS) as bridge:
        await ready(bridge)
        sent = [bridge.x.add_event(CONVERSATION, ALICE, f"m{i}") for i in range(BURST)]
        await gap_open(bridge)
        await wait_posts(bridge, BURST, timeout=30.0)
        await settled(bridge)  # more polls: nothing twice
        assert texts(bridge) == [f"m{i}" for i in range(BURST)]
        assert [m["metadata"]["event_payload"]["dm_event_id"] for m in posts(bridge)] == [e.id for e in sent]
        assert await bridge.sql("SELECT newest_event_id, gap_newest FROM cursors") == [(sent[-1].id, None)]
        assert bridge.x.read_rate_limited_count == 0
        # X bills each event read: the burst was read on from where each poll stopped, not again
        # from the newest (the last reads asked for fewer events than twice the burst).
        read = [r for r in bridge.x.all_requests if r.path == "/2/dm_events"]
        assert sum(int(r.query.get("max_results", "0")) for r in read[-4:]) < 2 * BURST


async def stopped_mid_gap(tmp_path: Path, x: FakeX, env: dict[str, str]) -> list[str]:
    """A bridge that read part of a burst and stopped: its polls after the first hang."""
    async with running_bridge(tmp_path, inbound=SMALL_READS, env=env, fake_x=x) as bridge:
        await ready(bridge)
        ids = [x.add_event(CONVERSATION, ALICE, f"m{i}").id for i in range(BURST)]
        await gap_open(bridge)
        x.inject("timeout", count=1000, path_contains="/2/dm_events")
        await asyncio.sleep(0.2)
        assert texts(bridge) == []  # nothing newer went before the older events still to come
        status, _ = await bridge.command("status")
        assert "catching up: X had more new messages than one read takes" in status.text
    x.clear_faults()
    return ids


async def test_a_restart_mid_gap_goes_on_where_the_read_stopped(tmp_path: Path) -> None:
    x = FakeX()
    env = {"BRIDGE_ENCRYPTION_KEY": generate_key()}
    ids = await stopped_mid_gap(tmp_path, x, env)
    before = len(x.all_requests)
    async with running_bridge(tmp_path, inbound=SMALL_READS, env=env, fake_x=x) as again:
        await wait_posts(again, BURST, timeout=30.0)
        await settled(again)
        assert texts(again) == [f"m{i}" for i in range(BURST)]
        assert [m["metadata"]["event_payload"]["dm_event_id"] for m in posts(again)] == ids
        # The first read after the restart went on with the saved token, not from the newest.
        first = next(r for r in x.all_requests[before:] if r.path == "/2/dm_events")
        assert "pagination_token" in first.query


async def test_an_expired_token_reads_back_from_the_newest_and_loses_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.inbound")
    x = FakeX()
    env = {"BRIDGE_ENCRYPTION_KEY": generate_key()}
    ids = await stopped_mid_gap(tmp_path, x, env)
    x.expire_pagination_tokens()  # X let the saved token lapse while the bridge was down
    async with running_bridge(tmp_path, inbound=SMALL_READS, env=env, fake_x=x) as again:
        later = x.add_event(CONVERSATION, ALICE, "later")
        await wait_posts(again, BURST + 1, timeout=30.0)
        await settled(again)
        assert texts(again) == [f"m{i}" for i in range(BURST)] + ["later"]
        assert [m["metadata"]["event_payload"]["dm_event_id"] for m in posts(again)] == [*ids, later.id]
        assert x.read_rate_limited_count == 0
    refused = [r for r in caplog.records if "pagination token" in r.getMessage()]
    assert len(refused) == 1, [r.getMessage() for r in refused]


async def test_when_x_keeps_refusing_the_token_the_gap_is_given_up_and_the_log_says_what_is_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.inbound")
    x = FakeX()
    env = {"BRIDGE_ENCRYPTION_KEY": generate_key()}
    await stopped_mid_gap(tmp_path, x, env)
    x.expire_pagination_tokens()
    once = InboundConfig(**{**SMALL_READS.__dict__, "token_restarts": 0})
    async with running_bridge(tmp_path, inbound=once, env=env, fake_x=x) as again:
        await wait_until(lambda: len(posts(again)) >= 5, 30.0, "the newest events")
        await settled(again)
        got = texts(again)
        # What was read is posted, in order; the older part of the gap is not read again.
        assert len(got) < BURST and got == [f"m{i}" for i in range(BURST - len(got), BURST)]
        assert await again.sql("SELECT gap_newest FROM cursors") == [(None,)]
    [given_up] = [r for r in caplog.records if "given up" in r.getMessage()]
    assert given_up.levelno == logging.WARNING
