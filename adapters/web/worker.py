"""This instance's workers that talk to X: always on SQLite; on PostgreSQL only while it leads.

A leadership term gets a fresh ``Delivery`` (its budgets re-read first: the previous
leader spent them) and runs the other leader jobs beside it: the inbound poller and
poster, and push upkeep. Until then, or after losing the lease, the instance is a standby:
what it accepts (an outbox row, a pushed X event) reaches the leader through a ``NOTIFY``
at commit, and a wake-up (a reconnection, a new mapping) is passed on the same way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

from adapters.store.leader import Leadership
from bridge.delivery import Delivery
from bridge.model import OutboxItem

log = logging.getLogger("adapters.web.worker")

Role = Literal["leader", "standby"]


@dataclass(frozen=True)
class Job:
    """Leader-only work beside delivery: ``run`` until ``stop(grace)`` is called.

    ``run`` may be called again after ``stop`` (a later leadership term): ``resume``, if any, is
    called first, when the term begins, before the task running ``run`` is created (a ``stop``
    coming before that task starts must still end it)."""

    name: str
    run: Callable[[], Coroutine[Any, Any, None]]
    stop: Callable[[float], Awaitable[None]]
    resume: Callable[[], None] | None = None


class Worker:
    """Starts, stops and forwards to the current ``Delivery``, if this instance has one."""

    def __init__(
        self,
        make: Callable[[], Delivery],
        *,
        before_lead: Callable[[], Awaitable[None]],
        after_lead: Callable[[], None] | None = None,
        leadership: Leadership | None = None,
        notify: Callable[[], Awaitable[None]] | None = None,
        jobs: tuple[Job, ...] = (),
    ) -> None:
        self._make = make
        self._jobs = jobs
        self._running: dict[str, asyncio.Task[None]] = {}
        self._before_lead = before_lead
        self._after_lead = after_lead
        self._leadership = leadership
        self._notify = notify
        self._stopping = False
        self._notifying: set[asyncio.Task[None]] = set()
        self.current: Delivery | None = None

    @property
    def role(self) -> Role:
        return "leader" if self._leadership is None or self._leadership.leading else "standby"

    def leader_heartbeat_age(self) -> float | None:
        """Seconds since any instance last renewed the leader's lease (None: no election, SQLite)."""
        return None if self._leadership is None else self._leadership.heartbeat_age()

    @property
    def heartbeat(self) -> float:
        return self.current.heartbeat if self.current is not None else 0.0

    def offer(self, head: OutboxItem | None) -> None:
        if self.current is not None:
            self.current.offer(head)
        # A standby has nothing to do: the accept's NOTIFY reaches the leader at commit.

    def wake(self) -> None:
        if self.current is not None:
            self.current.wake()
        elif self._notify is not None:
            self.pass_on(self._notify)

    def pass_on(self, notify: Callable[[], Awaitable[None]]) -> None:
        """Send a wake-up to the leader in the background (a standby has no worker of its own)."""
        task = asyncio.create_task(self._pass_on(notify), name="notify-leader")
        self._notifying.add(task)
        task.add_done_callback(self._notifying.discard)

    @staticmethod
    async def _pass_on(notify: Callable[[], Awaitable[None]]) -> None:
        try:
            await notify()
        except Exception:  # the leader's periodic rescan still finds the rows
            log.exception("could not wake the leader")

    async def run(self) -> None:
        if self._leadership is None:
            await self._lead()
        else:
            await self._leadership.run(self._lead)

    async def _lead(self) -> None:
        await self._before_lead()
        if self._stopping:
            return
        delivery = self._make()
        self.current = delivery
        for job in self._jobs:
            if job.resume is not None:
                job.resume()
        self._running = {job.name: asyncio.create_task(job.run(), name=job.name) for job in self._jobs}
        try:
            await delivery.run()
            await asyncio.gather(*self._running.values())
        except asyncio.CancelledError:
            # Leadership lost: another instance may be sending already, so nothing more may go
            # out from here. Cut-off sends stay ``sending`` and cut-off posts ``posting``; the new
            # leader reads X (or Slack) back first.
            await asyncio.gather(delivery.stop(0.0), *(job.stop(0.0) for job in self._jobs))
            for task in self._running.values():
                task.cancel()
            await asyncio.gather(*self._running.values(), return_exceptions=True)
            raise
        finally:
            self.current = None
            self._running = {}
            if self._after_lead is not None:
                self._after_lead()

    async def stop(self, grace: float) -> None:
        """Finish in-flight sends and posts (up to ``grace``), then give up the leadership."""
        self._stopping = True
        if self._leadership is not None:
            self._leadership.stop()
        # A term that lost its lease has been cancelled already; what is left of it may be stuck
        # on the database that cut it off, and there is nothing of it to finish.
        if self.current is not None and self.role == "leader":
            await asyncio.gather(self.current.stop(grace), *(job.stop(grace) for job in self._jobs))
