"""The loop and lanes both workers run on (bridge/scheduler.py), in virtual time."""

from __future__ import annotations

import asyncio
import logging

import pytest

from bridge.scheduler import AcksFirst, Lanes, WakeLoop, backoff
from tests.virtual_clock import VirtualClock


class Passes:
    """A step that records when it ran and asks to be run again after ``delay``."""

    def __init__(self, clock: VirtualClock, delay: float = 30.0) -> None:
        self.clock = clock
        self.delay = delay
        self.at: list[float] = []
        self.fail_next = 0

    async def __call__(self) -> float:
        self.at.append(self.clock.now() - 1_800_000_000.0)
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("the database went away")
        return self.delay


async def test_a_pass_runs_at_start_then_when_it_asked() -> None:
    clock = VirtualClock()
    step = Passes(clock, delay=30.0)
    loop = WakeLoop("test", clock, step)
    task = asyncio.create_task(loop.run())
    await clock.advance(0)
    assert step.at == [0.0]
    await clock.advance(29)
    assert step.at == [0.0]
    await clock.advance(1)
    assert step.at == [0.0, 30.0]
    assert loop.heartbeat == clock.now()
    loop.stop()
    await task


async def test_a_wake_cuts_the_wait_short_and_a_burst_costs_one_pass() -> None:
    clock = VirtualClock()
    step = Passes(clock, delay=300.0)
    loop = WakeLoop("test", clock, step, min_gap=0.05)
    task = asyncio.create_task(loop.run())
    await clock.advance(10)
    for _ in range(100):
        loop.wake()
    await clock.settle()
    assert step.at == [0.0, 10.0]  # at once: the last pass was long enough ago
    for _ in range(100):
        loop.wake()
    await clock.settle()
    assert step.at == [0.0, 10.0]  # within min_gap of the last: it waits
    await clock.advance(0.05)
    assert step.at == [0.0, 10.0, pytest.approx(10.05)]
    loop.stop()
    await task


async def test_a_failing_pass_is_logged_and_retried_and_the_loop_lives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = VirtualClock()
    step = Passes(clock, delay=60.0)
    step.fail_next = 2
    loop = WakeLoop("delivery scheduling", clock, step, retry_after=1.0)
    task = asyncio.create_task(loop.run())
    with caplog.at_level(logging.ERROR, logger="bridge.scheduler"):
        await clock.advance(2)
    assert step.at == [0.0, 1.0, 2.0]
    assert [r.getMessage() for r in caplog.records] == ["delivery scheduling failed; retrying"] * 2
    await clock.advance(59)
    assert step.at == [0.0, 1.0, 2.0]
    await clock.advance(1)
    assert step.at[-1] == 62.0
    loop.stop()
    await task


async def test_stop_during_the_gap_ends_the_loop_without_another_pass() -> None:
    clock = VirtualClock()
    step = Passes(clock, delay=0.0)
    loop = WakeLoop("test", clock, step, min_gap=5.0)
    task = asyncio.create_task(loop.run())
    await clock.advance(1)
    assert step.at == [0.0]
    loop.stop()
    await clock.advance(10)
    await task
    assert step.at == [0.0]
    # And it may run again (an instance that leads again).
    loop.resume()
    again = asyncio.create_task(loop.run())
    await clock.advance(0)
    assert step.at == [0.0, 11.0]
    loop.stop()
    await clock.advance(5)
    await again


async def test_one_task_per_lane_and_done_is_told() -> None:
    clock = VirtualClock()
    lanes: Lanes[str, int] = Lanes("post")
    ended: list[int] = []

    async def work(seconds: float, result: int) -> int:
        await clock.sleep(seconds)
        return result

    lanes.start("C1", work(5, 1), lambda t: ended.append(t.result()))
    lanes.start("C2", work(1, 2), lambda t: ended.append(t.result()))
    assert lanes.busy("C1") and lanes.busy("C2") and len(lanes) == 2
    with pytest.raises(RuntimeError, match="busy"):
        lanes.start("C1", work(1, 3))
    await clock.advance(1)
    assert ended == [2] and not lanes.busy("C2") and lanes.busy("C1")
    lanes.start("C2", work(1, 4), lambda t: ended.append(t.result()))
    await clock.advance(4)
    assert ended == [2, 4, 1] and len(lanes) == 0


async def test_drain_lets_work_finish_within_grace_and_cancels_the_rest() -> None:
    lanes: Lanes[str, None] = Lanes("send")
    finished: list[str] = []

    async def work(name: str, seconds: float) -> None:
        await asyncio.sleep(seconds)
        finished.append(name)

    lanes.start("quick", work("quick", 0.01))
    lanes.start("stuck", work("stuck", 60))
    assert await lanes.drain(0.5) == 1
    assert finished == ["quick"] and len(lanes) == 0


def test_backoff_grows_with_jitter_and_stays_under_its_cap() -> None:
    for attempts, low, high in ((1, 1, 2), (2, 2, 4), (3, 4, 8), (20, 30, 60)):
        for _ in range(50):
            assert low <= backoff(attempts, 2.0, 60.0) <= high


async def test_a_stop_before_the_loop_has_started_still_ends_it() -> None:
    """A bridge stopped right after it started: the task running the loop had not begun yet
    when ``stop`` came (it used to reset the flag and run forever, hanging the shutdown)."""
    clock = VirtualClock()
    step = Passes(clock, delay=30.0)
    loop = WakeLoop("test", clock, step)
    task = asyncio.create_task(loop.run())
    loop.stop()
    await clock.advance(60)
    assert task.done() and step.at == []


async def test_the_relay_goes_at_once_while_no_acks_are_queued() -> None:
    clock = VirtualClock()
    acks = AcksFirst(clock, busy_at=2, floor_gap=0.02)
    with acks.acking():  # one ack being answered is not a queue
        turn = asyncio.create_task(acks.turn())
        await clock.settle()
        assert turn.done()


async def test_queued_acks_hold_the_relay_until_they_are_answered() -> None:
    clock = VirtualClock()
    acks = AcksFirst(clock, busy_at=2, floor_gap=10.0, linger=0.0)
    started = clock.now()
    with acks.acking():
        first = asyncio.create_task(acks.turn())
        await clock.settle()
        assert first.done()
        with acks.acking():
            held = asyncio.create_task(acks.turn())  # its floor slot is 10 s after the last step
            await clock.advance(1.0)
            assert not held.done()
        await clock.settle()  # down to one ack: no longer a queue
        assert held.done()
    assert clock.now() - started == 1.0


async def test_under_acks_that_never_stop_the_relay_still_gets_one_step_per_floor_gap() -> None:
    clock = VirtualClock()
    acks = AcksFirst(clock, busy_at=2, floor_gap=0.02)
    granted: list[float] = []
    started = clock.now()

    async def step() -> None:
        await acks.turn()
        granted.append(round(clock.now() - started, 3))

    with acks.acking(), acks.acking(), acks.acking():
        steps = [asyncio.create_task(step()) for _ in range(5)]
        await clock.advance(0.05)
        # Steps waiting together are spread out, one per gap, never all at once, never none.
        assert granted == [0.0, 0.02, 0.04]
        await clock.advance(0.05)
        assert granted == [0.0, 0.02, 0.04, 0.06, 0.08]
    await asyncio.gather(*steps)


async def test_a_step_waits_a_moment_after_the_last_ack_in_case_more_follow() -> None:
    clock = VirtualClock()
    acks = AcksFirst(clock, busy_at=1, floor_gap=10.0, linger=0.002)
    started = clock.now()
    with acks.acking():
        await acks.turn()  # the floor's first step
        held = asyncio.create_task(acks.turn())
        await clock.advance(0.001)
    await clock.advance(0.001)  # 1 ms after the ack: the next request may be on its way
    assert not held.done()
    with acks.acking():  # and it was
        await clock.advance(0.005)
        assert not held.done()
    await clock.advance(0.0019)
    assert not held.done()
    await clock.advance(0.0002)  # 2 ms after the last ack, none since: the relay's turn
    assert held.done()
    assert round(clock.now() - started, 4) == 0.0091
