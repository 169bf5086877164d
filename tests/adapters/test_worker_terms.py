"""The worker's leadership terms (adapters/web/worker.py) in virtual time: each term resumes the
leader jobs before their tasks start (their ``run`` does not: a stop that comes before the task
has begun must still end it), so a job stopped with a lost term runs again when the instance
leads again."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import pytest

from adapters.web.worker import Job, Worker
from bridge.budget import Budget
from bridge.delivery import Delivery
from bridge.errors import XTransient
from bridge.inbound import Inbound
from bridge.model import InboundOrigin
from bridge.ports import SlackClient, Store, XApp, XClient, XOAuth
from bridge.push import Push, PushStore
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


class NoWebhooks:
    """X's webhook API failing (push is then not set up, and polling carries on)."""

    async def list_webhooks(self) -> list[dict[str, Any]]:
        raise XTransient("X answered 503")


class NothingPushed:
    async def latest_inbound_at(self, origin: InboundOrigin) -> float | None:
        return None


async def test_push_stopped_before_its_term_began_ends_once_set_up() -> None:
    """Push upkeep's ``run`` cleared its stop as it began, so a stop before that ran on to the
    hourly re-check and held the shutdown; resuming is the worker's, when a term begins."""
    clock = VirtualClock()
    pushed: list[int] = []
    inbound = cast(Inbound, SimpleNamespace(rang=lambda account_id, dms: pushed.append(account_id)))
    tokens = cast(TokenManager, None)
    push = Push(
        cast(PushStore, NothingPushed()), cast(XApp, NoWebhooks()), tokens, inbound, clock, "https://b/x"
    )
    push.resume()
    push.stop()
    await asyncio.wait_for(push.run(), 5.0)
    assert push.state.last_error == "X answered 503"  # it did set up (and failed to) first
