"""The worker's leadership terms (adapters/web/worker.py) in virtual time: each term resumes the
leader jobs before their tasks start (their ``run`` does not: a stop that comes before the task
has begun must still end it), so a job stopped with a lost term runs again when the instance
leads again."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from adapters.web.worker import Job, Worker
from bridge.budget import Budget
from bridge.delivery import Delivery
from bridge.ports import SlackClient, Store, XClient, XOAuth
from bridge.scheduler import WakeLoop
from bridge.tokens import TokenManager
from tests.memory_outbox import MemoryOutbox
from tests.virtual_clock import VirtualClock


class Passes:
    """A leader job's loop (the scheduler's ``WakeLoop``), each pass's time kept."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.at: list[float] = []
        self.loop = WakeLoop("job", clock, self.step)

    async def step(self) -> float:
        self.at.append(self.clock.now())
        return 10.0

    def job(self) -> Job:
        async def stop(grace: float) -> None:
            self.loop.stop()

        return Job("passes", self.loop.run, stop, self.loop.resume)


def _worker(clock: VirtualClock, passes: Passes) -> Worker:
    outbox = MemoryOutbox()
    store = cast(Store, outbox)

    def make() -> Delivery:
        tokens = TokenManager(store, cast(XOAuth, object()), clock, on_revoked=lambda *_: asyncio.sleep(0))
        budget = Budget(store, user_15m=15, user_24h=1440, app_24h=1440)
        return Delivery(store, cast(XClient, None), cast(SlackClient, None), tokens, budget, clock)

    async def before_lead() -> None:
        pass

    return Worker(make, before_lead=before_lead, jobs=(passes.job(),))


async def test_a_term_after_a_lost_one_runs_the_jobs_again() -> None:
    clock = VirtualClock()
    passes = Passes(clock)
    worker = _worker(clock, passes)
    first = asyncio.create_task(worker._lead())
    await clock.advance(15)
    assert len(passes.at) == 2
    first.cancel()  # the lease lost: the term's jobs are stopped
    with pytest.raises(asyncio.CancelledError):
        await first
    passes.at.clear()

    again = asyncio.create_task(worker._lead())  # leading again
    await clock.advance(15)
    assert len(passes.at) == 2 and not again.done()
    stopping = asyncio.create_task(worker.stop(1.0))
    await clock.advance(1)
    await stopping
    assert again.done() and again.exception() is None
