"""The shape both directions' workers share: a loop that looks, then waits; lanes of work.

Delivery (Slack → X) and Inbound (X → Slack) each look at their queue's heads, start what may
start, and sleep until woken or until the earliest row is due. ``WakeLoop`` is that loop, and
``Lanes`` the tasks it starts, at most one per key (an account sending for one of its channels,
a channel posting its head). Time comes from the ``Clock`` port, so unit tests run them in
virtual time (tests/virtual_clock.py) instead of waiting for real seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Iterator
from typing import Any, Generic, TypeVar

from bridge.ports import Clock

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")


class SystemClock:
    """The wall clock, and the event loop's own timers."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def wait(self, event: asyncio.Event, seconds: float) -> bool:
        try:
            await asyncio.wait_for(event.wait(), timeout=max(0.0, seconds))
        except TimeoutError:
            return False
        return True


def backoff(attempts: int, base: float, cap: float) -> float:
    """Exponential backoff with jitter (half to full of the exponential step)."""
    step = min(cap, base * (2 ** max(0, attempts - 1)))
    return random.uniform(step / 2, step)


class WakeLoop:
    """Run ``step`` again and again: each pass says how long until it has more to do, and
    ``wake`` cuts that wait short. Passes are at least ``min_gap`` apart, so a burst of wake-ups
    (hundreds of accepted messages a second) costs one pass. A pass that raises is logged and
    tried again after ``retry_after``: one bad row or a database away for a moment never ends
    the loop."""

    def __init__(
        self,
        name: str,
        clock: Clock,
        step: Callable[[], Awaitable[float]],
        *,
        min_gap: float = 0.0,
        retry_after: float = 1.0,
    ) -> None:
        self.name = name
        self._clock = clock
        self._step = step
        self._min_gap = min_gap
        self._retry_after = retry_after
        self._wake = asyncio.Event()
        self.stopping = False
        self.heartbeat = 0.0  # when the last pass ended (health checks read it)

    def wake(self) -> None:
        """Something changed: look again now (or once ``min_gap`` has passed)."""
        self._wake.set()

    def stop(self) -> None:
        """End ``run`` after the pass under way, if any."""
        self.stopping = True
        self._wake.set()

    def _stopped(self) -> bool:
        # A method, not the attribute: ``stop`` is called from other tasks while ``run`` awaits.
        return self.stopping

    def resume(self) -> None:
        """Allow ``run`` again after ``stop`` (an instance that leads again). Not done by ``run``
        itself: a ``stop`` that comes before the task running it has started must still end it."""
        self.stopping = False

    async def run(self) -> None:
        """Passes until ``stop`` (at once, if ``stop`` came first)."""
        last = -math.inf
        while not self.stopping:
            gap = self._min_gap - (self._clock.now() - last)
            if gap > 0:
                await self._clock.sleep(gap)
                if self._stopped():
                    break  # ``stop`` may have come during the pause
            self._wake.clear()
            last = self._clock.now()
            try:
                delay = await self._step()
            except Exception:
                log.exception("%s failed; retrying", self.name)
                delay = self._retry_after
            self.heartbeat = self._clock.now()
            if not self.stopping:
                await self._clock.wait(self._wake, max(0.0, delay))


class AcksFirst:
    """Slack's acks before the relay's work, without starving the relay.

    The web edge counts the Slack requests it is answering (``acking``); the relay calls ``turn``
    before each step (a look at the outbox, a send, a reaction). With fewer than ``busy_at`` acks
    under way the step goes at once; with more, acks are queued (a flood: at 200 events/s an ack
    of a few milliseconds rarely has three others beside it), so the step waits until they drop
    below ``busy_at`` and ``linger`` has passed with no new queue, or until the relay's floor
    slot: one step every ``floor_gap`` seconds across all the relay's tasks. So a flood of Slack
    events slows the relay to that floor, it catches up after, and it never stops.
    """

    def __init__(
        self, clock: Clock, *, busy_at: int = 4, floor_gap: float = 0.02, linger: float = 0.002
    ) -> None:
        self._clock = clock
        self._busy_at = busy_at
        self._floor_gap = floor_gap
        self._linger = linger
        self._acking = 0
        self._calm = asyncio.Event()  # set while fewer than ``busy_at`` acks are under way
        self._calm.set()
        self._calm_since = -math.inf
        self._last_step = -math.inf

    @contextlib.contextmanager
    def acking(self) -> Iterator[None]:
        """Around the answering of one Slack request."""
        self._acking += 1
        if self._acking >= self._busy_at:
            self._calm.clear()
        try:
            yield
        finally:
            self._acking -= 1
            if self._acking < self._busy_at and not self._calm.is_set():
                self._calm_since = self._clock.now()
                self._calm.set()

    async def turn(self) -> None:
        """Return when the relay's next step may go: at once unless acks are queued, or were
        until less than ``linger`` ago (under a flood the next requests are a round trip away
        when the last ack goes out, and a step started in that gap holds the event loop for a
        send's or a reaction's worth of work while they wait)."""
        while True:
            now = self._clock.now()
            calm = self._calm.is_set()
            settled = self._calm_since + self._linger - now if calm else math.inf
            if settled <= 0:
                break
            floor = self._last_step + self._floor_gap - now
            if floor <= 0:
                break  # the floor: this step goes although acks are queued
            if calm:
                await self._clock.sleep(min(settled, floor))  # an ack may begin meanwhile
            else:
                await self._clock.wait(self._calm, floor)
        self._last_step = self._clock.now()


class Lanes(Generic[K, R]):
    """Tasks by key, at most one running per key; ``done`` is told each one's end."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._tasks: dict[K, asyncio.Task[R]] = {}

    def busy(self, key: K) -> bool:
        return key in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._tasks))

    def start(
        self,
        key: K,
        work: Coroutine[Any, Any, R],
        done: Callable[[asyncio.Task[R]], None] | None = None,
        *,
        label: str = "",
    ) -> asyncio.Task[R]:
        """Run ``work`` in ``key``'s lane (which must be free)."""
        if key in self._tasks:
            work.close()  # never started: closed, so it is not left unawaited
            raise RuntimeError(f"{self._name}: lane {key!r} is busy")
        task = asyncio.create_task(work, name=f"{self._name}-{label or key}")
        self._tasks[key] = task

        def ended(t: asyncio.Task[R]) -> None:
            if self._tasks.get(key) is t:
                del self._tasks[key]
            if done is not None:
                done(t)

        task.add_done_callback(ended)
        return task

    async def drain(self, grace: float) -> int:
        """Let the running tasks finish for up to ``grace`` seconds, then cancel the rest;
        how many were cut off."""
        return await drain(self._tasks.values(), grace)


async def drain(tasks: Any, grace: float) -> int:
    """Wait for ``tasks`` up to ``grace`` seconds, cancel what is left; how many were cut off."""
    running = set(tasks)
    if not running:
        return 0
    _, pending = await asyncio.wait(running, timeout=max(0.0, grace))
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    return len(pending)
