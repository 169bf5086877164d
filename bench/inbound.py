"""X → Slack figures: inbound latency with push and with polling, reads against X's budget.

    .venv/bin/python bench/inbound.py              # about 2 minutes
    .venv/bin/python bench/inbound.py --window 30  # the simulated read window, in seconds
    .venv/bin/python bench/inbound.py --window 900 --events 10 --push-only 20  # a chat, push only

The bridge (the real web application, in this process), the fake X and the fake Slack run
on loopback. Latency is from the moment the fake X records a DM (its ``created_at``) to the
moment the fake Slack receives the ``chat.postMessage`` carrying that ``dm_event_id`` in its
metadata. The same clock (``time.time()``) stamps both.

Polling is bounded by X's read budget: 15 reads per 15 minutes per account. Fifteen minutes
per run is too long, so the fake X runs the same budget on a ``--window``-second window and
the bridge paces itself from X's headers exactly as it would against the real one; latencies
are then also shown scaled to X's 900-second window (the bridge's pacing is linear in it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from adapters.sandbox.fake_slack import run_fake_slack  # noqa: E402
from adapters.sandbox.fake_x import run_fake_x  # noqa: E402
from adapters.store.crypto import TokenCipher, generate_key  # noqa: E402
from adapters.store.sqlite import SqliteStore  # noqa: E402
from adapters.web.app import create_app  # noqa: E402
from bridge.model import ChannelMapping, MappingKind, TokenSet, XUser  # noqa: E402
from bridge.poster import METADATA_TYPE  # noqa: E402
from bridge.settings import Settings  # noqa: E402

ME, ALICE = "1000", "2001"
CONVERSATION = f"{ME}-{ALICE}"
X_WINDOW = 900.0
READ_LIMIT = 15


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


READ_ENDPOINTS = (  # X's DM event GETs, each its own 15 per 15 minutes per user
    ("/2/dm_events", re.compile(r"/2/dm_events")),
    ("/2/dm_events/{id}", re.compile(r"/2/dm_events/[0-9]+")),
    ("/2/dm_conversations/with/{id}/dm_events", re.compile(r"/2/dm_conversations/with/[0-9]+/dm_events")),
    ("/2/dm_conversations/{id}/dm_events", re.compile(r"/2/dm_conversations/[0-9g-]+/dm_events")),
)
PUSH_TARGET_P50 = 2.0  # seconds (issue 17, item 8)


def endpoint_of(path: str) -> str | None:
    for name, pattern in READ_ENDPOINTS:
        if pattern.fullmatch(path):
            return name
    return None


def windows(times: Sequence[float], length: float) -> list[int]:
    """Requests per window, anchored the way X anchors them (at the first request after expiry)."""
    counts: list[int] = []
    start: float | None = None
    for t in sorted(times):
        if start is None or t >= start + length:
            start = t
            counts.append(0)
        counts[-1] += 1
    return counts


class Run:
    """Fakes, a prepared database and the bridge app, on loopback."""

    def __init__(self, tmp: Path, *, push: bool, window: float, poll_seconds: float) -> None:
        self.tmp, self.push, self.window, self.poll_seconds = tmp, push, window, poll_seconds
        self.events_read = 0

    async def __aenter__(self) -> Run:
        self._x_cm = run_fake_x()
        self.x, x_url = await self._x_cm.__aenter__()
        self._slack_cm = run_fake_slack()
        self.slack, slack_url = await self._slack_cm.__aenter__()
        self.slack.add_channel("C100", "bench")
        self.x.add_user(ME, "bridge_owner", "Bridge Owner")
        self.x.add_user(ALICE, "alice", "Alice")
        self.x.window_read_seconds = self.window
        self.x.enforce_read_limit = True
        self.x.response_hook = self._count_reads
        db_path = self.tmp / f"bench-{'push' if self.push else 'poll'}.db"
        key = generate_key()
        store = SqliteStore(str(db_path), TokenCipher([key]))
        await store.open()
        grant = self.x.issue_token(ME)
        account = await store.save_account(
            "T0001",
            "U100",
            XUser(ME, "bridge_owner"),
            TokenSet(grant.access_token, grant.refresh_token, grant.expires_at),
        )
        await store.create_mapping(
            ChannelMapping(
                "T0001", "C100", MappingKind.LINK, account.id, CONVERSATION, None, "U100", time.time()
            )
        )
        await store.close()
        port = _free_port()
        env = {
            "PORT": str(port),
            "DATABASE_PATH": str(db_path),
            "SLACK_SIGNING_SECRET": "bench",
            "SLACK_BOT_TOKEN": "xoxb-test",
            "SLACK_API_URL": f"{slack_url}/api/",
            "PUBLIC_URL": f"http://127.0.0.1:{port}",
            "X_CLIENT_ID": "test-client",
            "X_CLIENT_SECRET": "test-secret",
            "X_API_URL": x_url,
            "BRIDGE_ENCRYPTION_KEY": key,
            "INBOUND_POLL_SECONDS": str(self.poll_seconds),
            "LOG_LEVEL": "warning",
            "LOG_FORMAT": "text",
        }
        if self.push:
            env |= {"X_CONSUMER_SECRET": self.x.consumer_secret, "X_BEARER_TOKEN": self.x.app_bearer_token}
        self.runner = web.AppRunner(create_app(Settings.from_env(env)), access_log=None, shutdown_timeout=2.0)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()
        await self._slack_cm.__aexit__(None, None, None)
        await self._x_cm.__aexit__(None, None, None)

    def _count_reads(self, request: web.Request, response: web.StreamResponse) -> None:
        if request.path == "/2/dm_events" and isinstance(response, web.Response) and response.body:
            body = response.body if isinstance(response.body, bytes) else b"{}"
            self.events_read += len(json.loads(body).get("data") or [])

    async def wait(self, predicate: Any, limit_s: float, what: str) -> None:
        deadline = time.monotonic() + limit_s
        while not predicate():
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out waiting for {what}")
            await asyncio.sleep(0.01)

    def post_times(self) -> dict[str, float]:
        """dm_event_id -> when chat.postMessage carrying it reached Slack."""
        out: dict[str, float] = {}
        for call in self.slack.calls_to("chat.postMessage"):
            raw = call.params.get("metadata")
            metadata = json.loads(raw) if isinstance(raw, str) else raw or {}
            if metadata.get("event_type") == METADATA_TYPE:
                out.setdefault(str(metadata["event_payload"]["dm_event_id"]), call.at)
        return out


async def measure(
    tmp: Path, *, push: bool, count: int, spacing: float, window: float, poll_seconds: float = 0.2
) -> dict[str, Any]:
    async with Run(tmp, push=push, window=window, poll_seconds=poll_seconds) as run:
        if push:
            await run.wait(lambda: len(run.x.subscriptions) == 2, 20, "push subscriptions")
        await run.wait(lambda: any(r.path == "/2/dm_events" for r in run.x.all_requests), 20, "a first read")
        await asyncio.sleep(0.5)
        started = time.time()
        sent = []
        for i in range(count):
            sent.append(run.x.add_event(CONVERSATION, ALICE, f"bench {i}"))
            await asyncio.sleep(spacing)
        await run.wait(lambda: len(run.post_times()) >= count, window * 3 + 30, "every post")
        posted = run.post_times()
        latencies = [posted[e.id] - e.created_at for e in sent]
        reads = [r.at for r in run.x.all_requests if r.path == "/2/dm_events" and r.at >= started]
        by_endpoint = {name: 0 for name, _ in READ_ENDPOINTS}
        for request in run.x.all_requests:
            endpoint = endpoint_of(request.path) if request.method == "GET" else None
            if endpoint is not None and request.at >= started:
                by_endpoint[endpoint] += 1
        return {
            "reads_by_endpoint": by_endpoint,
            "latencies": latencies,
            "reads_per_window": windows(reads, window),
            "events_read": run.events_read,
            "new_events": count,
            "read_429s": run.x.read_rate_limited_count,
            "duration": time.time() - started,
        }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--window", type=float, default=30.0, help="simulated read window, seconds (X: 900)")
    parser.add_argument("--events", type=int, default=40)
    parser.add_argument(
        "--push-only",
        type=float,
        metavar="SPACING",
        help="only a push run, one DM every SPACING seconds, polling paced as in production "
        "(with --window 900: what a conversation sees at X's real budget)",
    )
    args = parser.parse_args(argv)
    if args.push_only is not None:
        return _push_only(args.window, args.events, args.push_only)
    with tempfile.TemporaryDirectory(prefix="xdm-bench-inbound-") as folder:
        tmp = Path(folder)
        push = asyncio.run(measure(tmp, push=True, count=args.events, spacing=0.25, window=args.window))
        # Polling: events arrive over two read windows, so the budget, not the load, sets the pace.
        spacing = 2 * args.window / args.events
        poll = asyncio.run(measure(tmp, push=False, count=args.events, spacing=spacing, window=args.window))
    scale = X_WINDOW / args.window
    print(f"inbound latency, X event → chat.postMessage ({args.events} events each)")
    for name, figures in (("push", push), ("poll", poll)):
        lat = figures["latencies"]
        target = f" (target < {PUSH_TARGET_P50:g} s)" if name == "push" else ""
        print(
            f"  {name}: p50 {pct(lat, 50) * 1000:.0f} ms{target}, p90 {pct(lat, 90) * 1000:.0f} ms, "
            f"p99 {pct(lat, 99) * 1000:.0f} ms, "
            f"max {max(lat) * 1000:.0f} ms, mean {statistics.mean(lat) * 1000:.0f} ms"
        )
    lat = poll["latencies"]
    print(
        f"  poll scaled to X's 900 s window (x{scale:.0f}): p50 {pct(lat, 50) * scale:.0f} s, "
        f"p99 {pct(lat, 99) * scale:.0f} s"
    )
    per_window = poll["reads_per_window"]
    print(
        f"reads of GET /2/dm_events per {args.window:g} s window while polling: {per_window} "
        f"(budget {READ_LIMIT}, 2 of them kept for read-back and backfill; 429s: {poll['read_429s']})"
    )
    print(
        f"  push run (polling as a safety net): {push['reads_per_window']} reads per window, "
        f"429s: {push['read_429s']}"
    )
    for name, figures in (("push", push), ("poll", poll)):
        print(f"reads by endpoint ({name} run): {_by_endpoint(figures)}")
    for name, figures in (("poll", poll), ("push", push)):
        ratio = figures["events_read"] / figures["new_events"]
        print(
            f"events read per new event ({name} run): {ratio:.2f} "
            f"({figures['events_read']} read, {figures['new_events']} new)"
        )
    return 0


def _push_only(window: float, events: int, spacing: float) -> int:
    """Push latency with the production pace (a read at most every 5 s, 180 s when idle)."""
    with tempfile.TemporaryDirectory(prefix="xdm-bench-inbound-") as folder:
        figures = asyncio.run(
            measure(Path(folder), push=True, count=events, spacing=spacing, window=window, poll_seconds=180.0)
        )
    lat = figures["latencies"]
    print(f"push latency, X event → chat.postMessage: {events} DMs {spacing:g} s apart, {window:g} s window")
    print(
        f"  p50 {pct(lat, 50) * 1000:.0f} ms (target < {PUSH_TARGET_P50:g} s), "
        f"p90 {pct(lat, 90) * 1000:.0f} ms, "
        f"max {max(lat) * 1000:.0f} ms; GET /2/dm_events per window {figures['reads_per_window']}, "
        f"429s {figures['read_429s']}"
    )
    print(f"  reads by endpoint (each 15 per 15 min): {_by_endpoint(figures)}")
    return 0


def _by_endpoint(figures: dict[str, Any]) -> str:
    return ", ".join(f"{name} {count}" for name, count in figures["reads_by_endpoint"].items())


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


if __name__ == "__main__":
    raise SystemExit(main())
