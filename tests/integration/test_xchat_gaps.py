"""X → Slack for an encrypted X Chat conversation with more new events than one read takes.

X pages a conversation's events newest first only. A read that stops at its page limit before
the cursor keeps X's pagination token (a gap, in the store): the next reads go on from it until
they reach the cursor, nothing is lost or doubled, and the conversation's channel posts nothing
meanwhile, so Slack sees the conversation's order; across a restart and an expired token too.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from adapters.sandbox.fake_x import FakeX
from adapters.store.crypto import generate_key
from bridge.inbound import InboundConfig
from tests.harness import ALICE, BOB, ME, Bridge, running_bridge, settled, wait_until
from tests.integration.test_xchat_inbound import (
    CONVERSATION,
    encrypted_channel,
    first_read,
    posts,
    wait_posts,
)

# Two pages of three per read: a backlog of more than six new events leaves a gap.
SMALL_READS = InboundConfig(
    min_interval=0.05,
    idle_interval=0.2,
    push_interval=1.0,
    retry_base=0.05,
    retry_cap=0.5,
    backfill=0,
    page_size=3,
    chat_max_pages=2,
    chat_full_page=3,
    post_rate=0.0,  # bursts reach the fake Slack at once (test_inbound.py tests Slack's pace)
)
BACKLOG = 18  # three reads' worth
EVENTS = f"/2/chat/conversations/{CONVERSATION}/events"


def texts(bridge: Bridge) -> list[str]:
    return [m["text"] for m in posts(bridge)]


def sequence_ids(bridge: Bridge) -> list[str]:
    return [m["metadata"]["event_payload"]["dm_event_id"] for m in posts(bridge)]


def chat_events(x: FakeX) -> list[str]:
    return [e["id"] for e in x.chat.conversations[f"{ME}:{ALICE}"].events]


async def gap_open(bridge: Bridge) -> None:
    for _ in range(2000):
        if await bridge.sql("SELECT 1 FROM xchat_cursors WHERE gap_newest IS NOT NULL"):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no X Chat read was left unfinished")


async def test_a_backlog_bigger_than_one_read_arrives_whole_once_and_in_order(tmp_path: Path) -> None:
    async with running_bridge(tmp_path, inbound=SMALL_READS) as bridge:
        conversation = await encrypted_channel(bridge)
        await first_read(bridge)
        before = len(bridge.x.all_requests)
        for i in range(BACKLOG):
            bridge.x.chat.person_says(ALICE, conversation, f"m{i}")
        await gap_open(bridge)
        await wait_posts(bridge, BACKLOG, timeout=30.0)
        await settled(bridge)  # more reads: nothing twice
        assert texts(bridge) == [f"m{i}" for i in range(BACKLOG)]
        assert sequence_ids(bridge) == chat_events(bridge.x)
        kept = await bridge.sql("SELECT newest_sequence_id, gap_newest, gap_token FROM xchat_cursors")
        assert kept == [(chat_events(bridge.x)[-1], None, None)]
        assert bridge.x.read_rate_limited_count == 0
        # Read on from where each read stopped, not again from the newest: the backlog's events
        # were asked for about once (pages with the token, the newest pages aside).
        reads = [r for r in bridge.x.all_requests[before:] if r.path == EVENTS]
        assert sum("pagination_token" in r.query for r in reads) >= 2
        firsts = [r for r in reads if "pagination_token" not in r.query]
        assert (
            sum(int(r.query["max_results"]) for r in reads) - sum(int(r.query["max_results"]) for r in firsts)
            < 2 * BACKLOG
        )


async def test_an_unfinished_x_chat_read_holds_its_own_channel_only(tmp_path: Path) -> None:
    async with running_bridge(tmp_path, inbound=SMALL_READS) as bridge:
        conversation = await encrypted_channel(bridge)
        ack = await bridge.map_link(f"{ME}-{BOB}", channel="C200")  # a legacy DM, same account
        assert "bridged this channel" in ack.text, ack.text
        await first_read(bridge)
        bridge.x.inject("timeout", count=1000, path_contains=EVENTS, after=1)
        for i in range(BACKLOG):
            bridge.x.chat.person_says(ALICE, conversation, f"m{i}")
        await gap_open(bridge)
        bridge.x.add_event(f"{ME}-{BOB}", BOB, "meanwhile, a legacy DM")
        await wait_posts(bridge, 1, channel="C200")
        assert [m["text"] for m in posts(bridge, "C200")] == ["meanwhile, a legacy DM"]
        assert texts(bridge) == []
        bridge.x.clear_faults()
        await wait_posts(bridge, BACKLOG, timeout=30.0)
        assert texts(bridge) == [f"m{i}" for i in range(BACKLOG)]


async def stopped_mid_gap(tmp_path: Path, x: FakeX, env: dict[str, str]) -> list[str]:
    """A bridge that read part of a backlog and stopped: its reads after the first hang."""
    async with running_bridge(tmp_path, inbound=SMALL_READS, env=env, fake_x=x) as bridge:
        conversation = await encrypted_channel(bridge)
        await first_read(bridge)
        x.inject("timeout", count=1000, path_contains=EVENTS, after=1)
        for i in range(BACKLOG):
            x.chat.person_says(ALICE, conversation, f"m{i}")
        await gap_open(bridge)
        await asyncio.sleep(0.3)
        assert texts(bridge) == []  # nothing newer went before the older events still to come
        status, _ = await bridge.command("status")
        assert "catching up: X had more new messages than one read takes" in status.text
        [(token,)] = await bridge.sql("SELECT gap_token FROM xchat_cursors")
        assert token  # where the next read goes on from
    x.clear_faults()
    return chat_events(x)


async def test_a_restart_mid_gap_goes_on_where_the_read_stopped(tmp_path: Path) -> None:
    x = FakeX()
    env = {"BRIDGE_ENCRYPTION_KEY": generate_key()}
    ids = await stopped_mid_gap(tmp_path, x, env)
    before = len(x.all_requests)
    async with running_bridge(tmp_path, inbound=SMALL_READS, env=env, fake_x=x) as again:
        await wait_posts(again, BACKLOG, timeout=30.0)
        await settled(again)
        assert texts(again) == [f"m{i}" for i in range(BACKLOG)]
        assert sequence_ids(again) == ids
        # The first read after the restart went on with the saved token, not from the newest.
        first = next(r for r in x.all_requests[before:] if r.path == EVENTS)
        assert "pagination_token" in first.query
        assert await again.sql("SELECT gap_newest FROM xchat_cursors") == [(None,)]


async def test_an_expired_token_reads_back_from_the_newest_and_loses_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.chat_inbound")
    x = FakeX()
    env = {"BRIDGE_ENCRYPTION_KEY": generate_key()}
    ids = await stopped_mid_gap(tmp_path, x, env)
    x.expire_pagination_tokens()  # X let the saved token lapse while the bridge was down
    async with running_bridge(tmp_path, inbound=SMALL_READS, env=env, fake_x=x) as again:
        x.chat.person_says(ALICE, CONVERSATION, "later")
        await wait_posts(again, BACKLOG + 1, timeout=30.0)
        await settled(again)
        assert texts(again) == [f"m{i}" for i in range(BACKLOG)] + ["later"]
        assert sequence_ids(again) == [*ids, chat_events(x)[-1]]
        assert x.read_rate_limited_count == 0
    refused = [r for r in caplog.records if "refused the saved pagination token" in r.getMessage()]
    assert len(refused) == 1, [r.getMessage() for r in refused]


async def test_when_x_keeps_refusing_the_token_the_gap_is_given_up_and_the_channel_posts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.chat_inbound")
    x = FakeX()
    env = {"BRIDGE_ENCRYPTION_KEY": generate_key()}
    await stopped_mid_gap(tmp_path, x, env)
    x.expire_pagination_tokens()
    once = InboundConfig(**{**SMALL_READS.__dict__, "token_restarts": 0})
    async with running_bridge(tmp_path, inbound=once, env=env, fake_x=x) as again:
        await wait_until(lambda: len(posts(again)) >= 3, 30.0, "the newest events")
        await settled(again)
        got = texts(again)
        # What was read is posted, in order; the older part of the gap is not read again.
        assert len(got) < BACKLOG and got == [f"m{i}" for i in range(BACKLOG - len(got), BACKLOG)]
        assert await again.sql("SELECT gap_newest FROM xchat_cursors") == [(None,)]
    [given_up] = [r for r in caplog.records if "given up" in r.getMessage()]
    assert given_up.levelno == logging.WARNING
