"""Soak: thousands of messages through faults, Slack retries and two SIGKILLs, exactly once, in order.

Bounded: 2,000 messages over 20 channels, about a minute on two cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from pathlib import Path

import pytest

from adapters.sandbox.fake_x import FakeX, FaultKind
from tests.harness import ALICE, BOB, ME, wait_until
from tests.process.support import Server, World, world

CHANNELS = 20
MESSAGES = 2_000
FAULT_KINDS: tuple[FaultKind, ...] = ("503", "timeout", "lost_response", "429")
FAULT_WEIGHTS = (3, 2, 3, 1)  # a 429 pauses the whole account, so it is the rarest
FAULT_EVERY = 0.5  # seconds


async def post_all(w: World, server: Server, start: int, stop: int, expected: dict[str, list[str]]) -> int:
    """Post messages ``start``..``stop``; a third are retried by "Slack" (same event id). Returns retries."""
    rng = random.Random(start)
    retries = 0
    for i in range(start, stop):
        channel = f"C{i % CHANNELS:02d}"
        text = f"{channel} #{i}"
        event = w.sender.message_event(channel, "U100", text, blocks=[])
        event_id = f"Ev{i:06d}"
        result = await w.sender.event(event, event_id=event_id)
        assert result.status == 200, result.text
        expected[channel].append(f"Ada: {text}")
        if rng.random() < 1 / 3:
            retry = await w.sender.event(event, event_id=event_id, retry_num=1, retry_reason="http_timeout")
            assert retry.status == 200
            retries += 1
    return retries


async def inject_faults(x: FakeX, stop: asyncio.Event) -> Counter[str]:
    """Every so often, make X misbehave in one of the ways it does."""
    rng = random.Random(7)
    injected: Counter[str] = Counter()
    while not stop.is_set():
        kind = rng.choices(FAULT_KINDS, FAULT_WEIGHTS)[0]
        x.inject(kind)
        injected[kind] += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), FAULT_EVERY)
    return injected


@pytest.mark.usefixtures("on_both_stores")
async def test_soak_with_faults_retries_and_two_kills(tmp_path: Path) -> None:
    def mappings(x: FakeX) -> dict[str, str]:
        return {f"C{i:02d}": x.create_group(ME, [ALICE, BOB]) for i in range(CHANNELS)}

    big = str(10**6)
    limits = {"X_USER_LIMIT_15M": big, "X_USER_LIMIT_24H": big, "X_APP_LIMIT_24H": big}
    async with world(tmp_path, mappings, X_TIMEOUT_SECONDS="1", LOG_LEVEL="warning", **limits) as w:
        # X's documented 15 per 15 minutes would make this a day-long test; the budget
        # itself is proven in tests/integration/test_delivery.py.
        w.x.user_limit_15m = w.x.user_limit_24h = w.x.app_limit_24h = 10**6
        # Reading back after a lost answer spends X's read budget (15 per 15 minutes, shared with
        # inbound polling); a 2-second window keeps the same pacing logic and a short test.
        w.x.window_read_seconds = 2.0
        w.x.timeout_seconds = 2.0
        w.x.injected_reset_seconds = 1.0
        w.x.rate_limit_body = "code88"
        server = w.server(tmp_path / "server.log")
        await server.start(w.url, w.session)
        expected: dict[str, list[str]] = {f"C{i:02d}": [] for i in range(CHANNELS)}

        stop = asyncio.Event()
        faults = asyncio.create_task(inject_faults(w.x, stop))
        retries = await post_all(w, server, 0, MESSAGES // 2, expected)
        await wait_until(lambda: len(w.x.events) >= MESSAGES // 6, 60, "a sixth delivered")
        await server.kill()
        await server.start(w.url, w.session)
        retries += await post_all(w, server, MESSAGES // 2, MESSAGES, expected)
        await wait_until(lambda: len(w.x.events) >= MESSAGES // 2, 90, "half delivered")
        await server.kill()
        await server.start(w.url, w.session)
        await asyncio.sleep(3)
        stop.set()
        injected = await faults
        w.x.clear_faults()
        await wait_until(lambda: len(w.x.events) >= MESSAGES, 120, "every message delivered")
        await asyncio.sleep(1.5)  # time for a duplicate to show, if there were one
        assert await server.terminate() == 0

        conversations = {c: w.x.messages_in(conv) for c, conv in zip(expected, _groups(w.x), strict=True)}
        for channel, events in conversations.items():
            assert [e.text for e in events] == expected[channel], channel
        assert len(w.x.events) == MESSAGES
        states = dict(await w.sql("SELECT state, COUNT(*) FROM outbox GROUP BY state"))
        assert states == {"sent": MESSAGES}
        assert retries > MESSAGES // 4
        assert all(injected[k] > 0 for k in FAULT_KINDS), injected


def _groups(x: FakeX) -> list[str]:
    groups = sorted((c for c in x.conversations.values() if c.kind == "Group"), key=lambda c: c.created_at)
    return [c.id for c in groups]
