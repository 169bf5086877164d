"""Virtual time for unit tests of the workers (bridge/scheduler.py, Delivery, Inbound).

Time moves only when the test says (``advance``): sleepers and waits due by then wake in order,
each seeing ``now()`` at its own due time, and the loop runs until everything woken is blocked
again. A worker that would sleep a 15-minute read window is tested in microseconds.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable

SETTLE_ROUNDS = 50  # loop iterations that let woken tasks run until they block again


class VirtualClock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.t = start
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self.t + max(0.0, seconds), next(self._order), future))
        await future

    async def wait(self, event: asyncio.Event, seconds: float) -> bool:
        if event.is_set():
            return True
        waiter = asyncio.ensure_future(event.wait())
        sleeper = asyncio.ensure_future(self.sleep(seconds))
        done, pending = await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return waiter in done

    @property
    def next_due(self) -> float | None:
        """When the earliest sleeper wakes (None: nobody sleeps)."""
        live = [due for due, _, future in self._timers if not future.done()]
        return min(live) if live else None

    async def settle(self) -> None:
        """Let every runnable task run until it blocks (on the clock or on an event)."""
        for _ in range(SETTLE_ROUNDS):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking each sleeper due meanwhile in order."""
        target = self.t + seconds
        await self.settle()
        while self._timers and self._timers[0][0] <= target:
            due, _, future = heapq.heappop(self._timers)
            if future.done():
                continue  # a wait that its event ended first
            self.t = max(self.t, due)
            future.set_result(None)
            await self.settle()
        self.t = target
        await self.settle()

    async def until(self, condition: Callable[[], bool], limit: float, step: float = 1.0) -> float:
        """Advance in ``step``s until ``condition`` holds; the virtual seconds it took."""
        began = self.t
        while not condition():
            if self.t - began >= limit:
                raise AssertionError(f"not true within {limit} virtual seconds")
            await self.advance(step)
        return self.t - began
