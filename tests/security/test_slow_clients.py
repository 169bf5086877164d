"""Slow and half-open clients cannot starve Slack's events, nor flood the log."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.web import edge
from adapters.web.edge import GUARD
from tests.harness import running_bridge, wait_until
from tests.process.support import world

SLACK_DEADLINE = 3.0  # Slack gives up on an event not acknowledged within 3 s, and retries


@contextlib.asynccontextmanager
async def slowloris(port: int, count: int, *, silent: int = 0) -> AsyncIterator[list[asyncio.StreamWriter]]:
    """``count`` connections that trickle a header line now and then, ``silent`` that send nothing."""
    writers: list[asyncio.StreamWriter] = []
    stop = asyncio.Event()

    async def one(index: int) -> None:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return
        writers.append(writer)
        if index < silent:
            await stop.wait()
            return
        with contextlib.suppress(OSError, ConnectionError):
            writer.write(b"POST /slack/events HTTP/1.1\r\nHost: bridge\r\n")
            while not stop.is_set():
                writer.write(b"X-Slow: a\r\n")
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)

    tasks = [asyncio.create_task(one(i)) for i in range(count + silent)]
    await wait_until(lambda: len(writers) >= (count + silent) * 0.9, 20.0, "the slow connections")
    try:
        yield writers
    finally:
        stop.set()
        for writer in writers:
            writer.transport.abort()
        await asyncio.gather(*tasks, return_exceptions=True)


async def acked_in_time(w: object, count: int) -> list[float]:
    """Send ``count`` real signed message events; each must be acknowledged within Slack's 3 s."""
    loop = asyncio.get_running_loop()
    took = []
    for i in range(count):
        started = loop.time()
        async with asyncio.timeout(SLACK_DEADLINE):  # what Slack allows, not a speed target
            result, _, _ = await w.sender.message("C100", "U100", f"real event {i}")  # type: ignore[attr-defined]
        assert result.status == 200, result.text
        took.append(loop.time() - started)
    return took


async def test_hundreds_of_slow_connections_do_not_stop_real_events(tmp_path: Path) -> None:
    async with world(tmp_path, lambda x: {"C100": "1000-2001"}) as w:
        server = w.server(tmp_path / "server.log")
        await server.start(w.url, w.session)
        port = int(w.url.rsplit(":", 1)[1])
        async with slowloris(port, 300, silent=100):
            took = await acked_in_time(w, 10)
        print(f"acks under slowloris (300 trickling + 100 silent): max {max(took):.3f}s")
        await wait_until(lambda: len(w.x.events) == 10, 20.0, "the 10 real messages at X")


async def test_running_out_of_descriptors_neither_starves_events_nor_floods_the_log(tmp_path: Path) -> None:
    async with world(tmp_path, lambda x: {"C100": "1000-2001"}) as w:
        log_path = tmp_path / "server.log"
        server = w.server(log_path, max_files=128)  # the guard keeps connections under 64
        await server.start(w.url, w.session)
        port = int(w.url.rsplit(":", 1)[1])
        async with slowloris(port, 300, silent=100):
            await asyncio.sleep(2.0)  # let the flood run against the limit for a while
            await acked_in_time(w, 5)
        lines = log_path.read_text().splitlines()
        assert len(lines) < 60, f"{len(lines)} log lines:\n" + "\n".join(lines[-20:])
        dropped = [json.loads(line) for line in lines if "connections dropped" in line]
        assert dropped and dropped[0]["cap"] == 64
        await wait_until(lambda: len(w.x.events) == 5, 20.0, "the real messages at X")


async def test_a_connection_that_never_finishes_its_head_is_closed(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        port = int(bridge.url.rsplit(":", 1)[1])
        guard = bridge.app[GUARD]
        guard.head_timeout = 0.3
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /slack/events HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 10.0) == b""  # closed by the bridge, no answer
        writer.close()

        # At the cap, the oldest connection still without a head makes room for a new one.
        guard.head_timeout = 60.0
        guard.max_connections = 3
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        await wait_until(lambda: len(guard.open) == 3, 5.0, "three idle connections")
        async with bridge.session.get(f"{bridge.url}/healthz") as response:
            assert response.status == 200
        assert await asyncio.wait_for(idle[0][0].read(), 5.0) == b""  # the oldest was evicted
        for _, w in idle:
            w.close()


async def test_a_body_that_does_not_arrive_in_time_gets_408(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(edge, "BODY_TIMEOUT", 0.3)
    async with running_bridge(tmp_path) as bridge:
        port = int(bridge.url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /slack/events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        await writer.drain()
        answer = await asyncio.wait_for(reader.readline(), 10.0)
        assert answer.startswith(b"HTTP/1.1 408")
        writer.close()
        result, _ = await bridge.post("still fine")
        assert result.status == 200


async def test_connections_trickling_a_body_cannot_shut_out_a_real_event(tmp_path: Path) -> None:
    """A slow body (R.U.D.Y.): heads sent at once, bodies a byte at a time. At the connection
    cap those are no more deserving than a slow head: a real event must still get in."""
    async with running_bridge(tmp_path) as bridge:
        port = int(bridge.url.rsplit(":", 1)[1])
        guard = bridge.app[GUARD]
        guard.max_connections = 4
        slow = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
        for _, writer in slow:
            writer.write(b"POST /slack/events HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
            await writer.drain()
        await wait_until(lambda: sum(c.head_done for c in guard.open) == 4, 5.0, "four heads in")
        async with asyncio.timeout(SLACK_DEADLINE):  # what Slack allows, not a speed target
            result, _ = await bridge.post("a real event")
        assert result.status == 200, result.text
        for _, writer in slow:
            writer.transport.abort()


async def test_a_kept_alive_connection_must_send_its_next_head_in_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After its answer, a kept-alive connection is timed again: one that trickles its next head
    is closed (the guard learns from the request's middleware that the answer went out)."""
    async with running_bridge(tmp_path) as bridge:
        port = int(bridge.url.rsplit(":", 1)[1])
        guard = bridge.app[GUARD]
        guard.head_timeout = 0.3
        monkeypatch.setattr(edge, "KEEPALIVE_TIMEOUT", 0.0)  # the guard's, not aiohttp's (15 s)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        assert (await asyncio.wait_for(reader.readline(), 10.0)).startswith(b"HTTP/1.1 200")
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
        (connection,) = guard.open
        assert not connection.handling and not connection.head_done
        writer.write(b"POST /slack/events HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        await writer.drain()
        # The body of the first answer, then the close: no answer to the unfinished head.
        assert b"HTTP/1.1" not in await asyncio.wait_for(reader.read(), 10.0)
        assert not guard.open
        writer.close()
