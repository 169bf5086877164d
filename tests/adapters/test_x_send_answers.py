"""A send's 2xx is a send, however its body ends: X on a bad day cuts or stalls the answer
after its status line, and the bridge must not take that for no answer at all."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from adapters.x.api import XApiClient
from bridge.errors import XSentUnconfirmed
from bridge.model import Target

HEAD = (
    b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 200\r\n"
    b"x-rate-limit-limit: 15\r\nx-rate-limit-remaining: 14\r\nx-rate-limit-reset: 4102444800\r\n\r\n"
)
PART = b'{"data": {"dm_conversation_id": "1000-2001", "dm_ev'

Answer = Callable[[asyncio.StreamWriter], Awaitable[None]]


async def cut(writer: asyncio.StreamWriter) -> None:
    writer.write(HEAD + PART)
    await writer.drain()  # and the connection ends (the handler closes it): the rest never comes


async def stalled(writer: asyncio.StreamWriter) -> None:
    writer.write(HEAD + PART)
    await writer.drain()
    await asyncio.sleep(5)  # past the client's timeout


@pytest.fixture
async def answering() -> AsyncIterator[Callable[[Answer], Awaitable[str]]]:
    servers: list[asyncio.Server] = []
    handlers: set[asyncio.Task[None]] = set()

    async def start(answer: Answer) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            handlers.add(task)
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in lines
                        if line.lower().startswith(b"content-length")
                    ),
                    0,
                )
                await reader.readexactly(length)
                await answer(writer)
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    yield start
    for server in servers:
        server.close()
    for task in handlers:
        task.cancel()
    await asyncio.gather(*handlers, return_exceptions=True)
    for server in servers:
        await server.wait_closed()


@pytest.mark.parametrize("answer", [cut, stalled], ids=["cut", "stalled"])
async def test_a_2xx_whose_body_never_arrives_whole_is_a_send(
    answering: Callable[[Answer], Awaitable[str]], answer: Answer
) -> None:
    """X said 201 (status line and headers arrived) and then the body was cut or stalled: the DM
    was made. Taken as no answer at all (status unknown), a read-back that does not list it yet
    (X's reads lag) let the send go again: the DM twice."""
    base_url = await answering(answer)
    async with aiohttp.ClientSession() as session:
        x = XApiClient(session, base_url, timeout=1.0)
        with pytest.raises(XSentUnconfirmed) as raised:
            await x.send("token", Target(participant_id="2001"), "hello")
        assert raised.value.status == 201
