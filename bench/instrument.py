"""Diagnostic launcher: ``xdm-bridge serve`` with timers around its ports, for ``--trace``.

    python bench/instrument.py serve --host 127.0.0.1     (env as for xdm-bridge serve,
                                                            plus BENCH_TRACE_OUT=path.json)

Before handing over to ``adapters.ops.cli.main`` it wraps, at run time and without editing them,
the coroutine methods of the SQLite store, the X and Slack clients, the token manager, the
budget, the relay and the delivery worker, and each hop to the SQLite owner thread
(``SqliteThread._run``, split into time queued for the thread, an open transaction's included,
time running on it, and time until the event loop resumed the caller). A monitor task records
event-loop lag. On exit the figures are written as JSON.

Timers perturb what they measure a little; use them to see *where* time goes, not for the
headline figures (``bench/run.py`` without ``--trace`` runs the bridge untouched).
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import inspect
import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TIMINGS: dict[str, list[float]] = defaultdict(list)


def _timed(name: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            TIMINGS[name].append(time.perf_counter() - started)

    return wrapper


def _wrap_class(cls: type, prefix: str, skip: frozenset[str] = frozenset()) -> None:
    for name, member in list(vars(cls).items()):
        if name in skip or name.startswith("__") or not inspect.iscoroutinefunction(member):
            continue
        setattr(cls, name, _timed(f"{prefix}.{name}", member))


def _wrap_store_call() -> None:
    from adapters.store.engine import SqliteThread

    hop = SqliteThread._run

    async def _run(self: Any, call: Callable[[], Any]) -> Any:
        submitted = time.perf_counter()
        marks: list[float] = []

        def work() -> Any:
            marks.append(time.perf_counter())
            try:
                return call()
            finally:
                marks.append(time.perf_counter())

        result = await hop(self, work)
        resumed = time.perf_counter()
        TIMINGS["sqlite thread: queued"].append(marks[0] - submitted)
        TIMINGS["sqlite thread: running"].append(marks[1] - marks[0])
        TIMINGS["sqlite thread: back on loop"].append(resumed - marks[1])
        return result

    SqliteThread._run = _run  # type: ignore[method-assign]


async def _loop_lag_monitor() -> None:
    while True:
        started = time.perf_counter()
        await asyncio.sleep(0.01)
        TIMINGS["event loop lag (10 ms sleep overshoot)"].append(time.perf_counter() - started - 0.01)


def _dump() -> None:
    out = os.environ.get("BENCH_TRACE_OUT")
    if not out:
        return
    summary = {}
    for name, values in TIMINGS.items():
        ordered = sorted(values)
        summary[name] = {
            "count": len(ordered),
            "total_s": sum(ordered),
            "p50_ms": ordered[len(ordered) // 2] * 1000,
            "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        }
    Path(out).write_text(json.dumps(summary, indent=1))


def install() -> None:
    from adapters.slack.api import SlackApi
    from adapters.store.sqlite import SqliteStore
    from adapters.web import app as web
    from adapters.x.api import XApiClient
    from bridge.budget import Budget
    from bridge.chat_sender import ChatSender
    from bridge.delivery import Delivery
    from bridge.outcomes import Outcomes
    from bridge.reconcile import Reconciler
    from bridge.relay import Relay
    from bridge.render import Renderer
    from bridge.sender import Sender
    from bridge.tokens import TokenManager

    _wrap_class(SqliteStore, "store", skip=frozenset({"open", "close"}))
    _wrap_store_call()
    _wrap_class(XApiClient, "x")
    _wrap_class(SlackApi, "slack")
    _wrap_class(TokenManager, "tokens")
    _wrap_class(Budget, "budget")
    _wrap_class(Relay, "relay")
    _wrap_class(Delivery, "delivery", skip=frozenset({"run", "stop"}))
    # One row's delivery, split out of Delivery: timed under the names its parts have now.
    _wrap_class(Sender, "sender")
    _wrap_class(ChatSender, "chat_sender")
    _wrap_class(Reconciler, "reconcile")
    _wrap_class(Outcomes, "outcomes")
    _wrap_class(Renderer, "render")
    web.slack_events = _timed("web.slack_events (whole request)", web.slack_events)  # type: ignore[assignment]

    original_services = web._services

    async def services(app: Any) -> Any:
        monitor = asyncio.get_running_loop().create_task(_loop_lag_monitor())
        try:
            async for value in original_services(app):
                yield value
        finally:
            monitor.cancel()

    web._services = services
    atexit.register(_dump)


def main() -> int:
    install()
    interval = os.environ.get("BENCH_SWITCH_INTERVAL")
    if interval:  # experiment: how much of the SQLite thread's queueing is GIL hand-off
        sys.setswitchinterval(float(interval))
    from adapters.ops.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
