"""A TCP proxy on loopback that can "freeze": a silent network partition, for tests.

Frozen, it stops forwarding in both directions and keeps every socket open: neither end
sees a reset or a close, and the kernel still acknowledges what arrives, so a peer on the
other side (PostgreSQL) keeps the session as long as it would across a dead network. New
connections are accepted and then get nothing either.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class FreezingProxy:
    """Forwards ``127.0.0.1:port`` to ``upstream``; ``freeze()`` makes it a black hole."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._thawed = asyncio.Event()
        self._thawed.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    def freeze(self) -> None:
        self._thawed.clear()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accepted, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        current = asyncio.current_task()
        waiting = [task for task in self._tasks if task is not current and not task.done()]
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        accepting = asyncio.current_task()
        if accepting is not None:  # cancelled by ``close`` if it is still waiting for a thaw
            self._tasks.add(accepting)
        await self._thawed.wait()
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        self._writers.append(up_writer)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(source, sink))
            self._tasks.add(task)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                await self._thawed.wait()
                data = await source.read(65536)
                # Frozen while reading: what was read is held back, as a dead link would lose it.
                await self._thawed.wait()
                if not data:
                    sink.close()
                    return
                sink.write(data)
                await sink.drain()


@asynccontextmanager
async def freezing_proxy(upstream_host: str, upstream_port: int) -> AsyncIterator[FreezingProxy]:
    proxy = FreezingProxy(upstream_host, upstream_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
