"""Issue 18's ack target: the bridge's ack p50 at saturation within 3x a no-op Bolt app's.

    .venv/bin/python bench/ack_floor.py                     # 1,000 events, concurrency 20
    .venv/bin/python bench/ack_floor.py --events 2000 --reps 2
    .venv/bin/python bench/ack_floor.py --profile /tmp/prof   # py-spy on the bridge's loop too

What runs, on loopback, driven the same way:
- (a) a no-op slack-bolt ``AsyncApp`` on aiohttp (Bolt's own aiohttp adapter, ``app.web_app()``),
  an ``app.event("message")`` listener that does nothing, Bolt verifying each signature with the
  signing secret; this script started again with ``--serve-bolt``;
- (b) the bridge, ``xdm-bridge serve`` on a fresh SQLite database between the simulators, started
  as ``bench/run.py`` starts it (10 accounts, each mapping one channel; the events go to them and
  are relayed to the fake X; with ``--unmapped`` they go to channels with no mapping instead, so
  the figure is the ack path without the relay's work beside it).

Both talk to the same fake Slack (``bench/fakes.py``), so Bolt's ``auth.test`` is answered
alike. The load is a closed loop: ``--concurrency`` workers each send the next signed
``event_callback`` message envelope (built and signed with ``bench/run.py``'s helpers before the
loop) as soon as their previous one was answered, ``--events`` in all, after an unrecorded
warm-up. The ack is from handing a request to aiohttp until its response body is read. With
``--reps`` above 1 the two servers alternate (a, b, a, b, ...), each on a fresh process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

BENCH = Path(__file__).resolve().parent
if str(BENCH.parent) not in sys.path:
    sys.path.insert(0, str(BENCH.parent))

from adapters.sandbox.fake_slack import SlackSender  # noqa: E402
from adapters.store.crypto import generate_key  # noqa: E402
from bench.run import (  # noqa: E402
    SECRET,
    TEAM,
    Fakes,
    Proc,
    Server,
    Shot,
    build_shots,
    cpu_seconds,
    fmt,
    free_port,
    load_average,
    machine_info,
    note,
    pct,
    prepare_database,
    start_bridge,
    start_fakes,
    start_pyspy,
    summarise_profile,
    wait_healthy,
)

TARGET_RATIO = 3.0
DRAIN_LIMIT_S = 120.0

# ---------------------------------------------------------------------------------------------
# (a) The no-op Bolt app (this script run with --serve-bolt)
# ---------------------------------------------------------------------------------------------


def serve_bolt(port: int, slack_url: str) -> int:
    """A no-op slack-bolt AsyncApp on Bolt's aiohttp adapter; Bolt checks each signature."""
    from slack_bolt.async_app import AsyncApp
    from slack_sdk.web.async_client import AsyncWebClient

    app = AsyncApp(
        signing_secret=SECRET,
        client=AsyncWebClient(token="xoxb-test", base_url=slack_url),
        process_before_response=True,
    )

    handled = 0

    @app.event("message")
    async def on_message() -> None:
        """Nothing but a count: the floor is what Bolt costs to verify, parse, dispatch and ack."""
        nonlocal handled
        handled += 1

    async def healthz(request: web.Request) -> web.Response:
        # The count lets the bench check every event reached the listener (not a 200 short of it).
        return web.json_response({"status": "ok", "handled": handled})

    web_app = app.web_app(path="/slack/events")
    web_app.router.add_get("/healthz", healthz)
    web.run_app(web_app, host="127.0.0.1", port=port, access_log=None, print=None)
    return 0


async def start_bolt(session: aiohttp.ClientSession, tmp: Path, fakes: Fakes, label: str) -> Server:
    port = free_port()
    started = time.monotonic()
    argv = [sys.executable, str(BENCH / "ack_floor.py"), "--serve-bolt", str(port), "--slack-url"]
    argv.append(f"{fakes.slack_url}/api/")
    proc = Proc(f"bolt-{label}", argv, dict(os.environ), tmp / f"bolt-{label}.log", pipe=False)
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_healthy(session, url, proc)
    except BaseException:
        proc.stop()
        raise
    return Server(proc, url, time.monotonic() - started)


# ---------------------------------------------------------------------------------------------
# The closed loop
# ---------------------------------------------------------------------------------------------


@dataclass
class Loop:
    """One closed-loop run against one server."""

    label: str
    ack_ms: list[float]
    failures: int
    span_s: float
    cpu_s: float = 0.0  # the server process's CPU (user + system) during the loop
    cpu_main_s: float = 0.0  # of which its main thread's (the event loop; the rest is SQLite's)
    relayed_in_loop: int = 0  # the bridge's: messages on the fake X when the loop ended
    drain_s: float = 0.0  # the bridge's: from the loop's end until every message was on the fake X
    cpu_total_s: float = 0.0  # the bridge's CPU from the loop's start until then
    grouped: tuple[int, int] | None = None  # the bridge's: (calls, commits) of SQLite's group commit

    @property
    def cpu_us_per_ack(self) -> float:
        return self.cpu_s / len(self.ack_ms) * 1e6 if self.ack_ms else 0.0

    @property
    def rate(self) -> float:
        return len(self.ack_ms) / self.span_s if self.span_s else 0.0


async def closed_loop(
    session: aiohttp.ClientSession, url: str, shots: list[Shot], concurrency: int, label: str
) -> Loop:
    """``concurrency`` workers, each sending its next shot once the previous one is answered."""
    target = f"{url}/slack/events"
    timeout = aiohttp.ClientTimeout(total=15)
    queue = iter(shots)
    acks: list[float] = []
    failures = 0

    async def worker() -> None:
        nonlocal failures
        for shot in queue:  # one shared iterator: each shot is taken by exactly one worker
            sent = time.monotonic()
            try:
                async with session.post(target, data=shot.body, headers=shot.headers, timeout=timeout) as r:
                    await r.read()
                    status = r.status
            except (aiohttp.ClientError, TimeoutError):
                status = 0
            if status == 200:
                acks.append((time.monotonic() - sent) * 1000)
            else:
                failures += 1

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Loop(label, acks, failures, time.monotonic() - started)


def shots_for(sender: SlackSender, count: int, prefix: str, *, unmapped: bool) -> list[Shot]:
    """``bench/run.py``'s signed events to the 10 mapped channels, or (``unmapped``) the same
    events to 10 channels with no mapping, which the bridge acks without relaying anything."""
    if not unmapped:
        return build_shots(sender, count, prefix)
    shots = []
    for i in range(count):
        event = sender.message_event(f"CUNMAPPED{i % 10}", f"U{100 + i % 10}", f"bench {prefix}-{i} hello")
        body = json.dumps(sender.envelope(event)).encode()
        shots.append(Shot(f"{prefix}-{i}", body, {"Content-Type": "application/json", **sender.sign(body)}))
    return shots


def thread_cpu_seconds(pid: int, tid: int) -> float:
    """User + system CPU of one thread of a process, from /proc."""
    fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def grouped_commits(log_path: Path) -> tuple[int, int] | None:
    """The SQLite store's group commits over the bridge's life, from its closing log line."""
    for line in reversed(log_path.read_text().splitlines()):
        if '"database closed"' in line:
            record = json.loads(line)
            return int(record["grouped_calls"]), int(record["group_commits"])
    return None


async def relayed(session: aiohttp.ClientSession, fakes: Fakes, shots: list[Shot], loop: Loop) -> None:
    """How many of the loop's messages the fake X had when it ended, and how long the rest took
    (the relay may fall behind under saturation; it must catch up, not stop)."""
    wanted = {shot.marker for shot in shots}
    await fakes.pull(session)
    loop.relayed_in_loop = len(wanted & fakes.arrivals.keys())
    started = time.monotonic()
    while not wanted <= fakes.arrivals.keys():
        if time.monotonic() - started > DRAIN_LIMIT_S:
            raise RuntimeError(
                f"{len(wanted - fakes.arrivals.keys())} messages not relayed after {DRAIN_LIMIT_S} s"
            )
        await asyncio.sleep(0.05)
        await fakes.pull(session)
    loop.drain_s = time.monotonic() - started


async def measure(
    session: aiohttp.ClientSession,
    sender: SlackSender,
    fakes: Fakes,
    server: Server,
    args: argparse.Namespace,
    label: str,
) -> Loop:
    """Warm-up (unrecorded, Bolt's auth.test and first-request costs), then the measured loop."""
    warm = shots_for(sender, args.warmup, f"w{label}", unmapped=args.unmapped)
    await closed_loop(session, server.url, warm, args.concurrency, f"warm-{label}")
    await asyncio.sleep(args.settle)  # the bridge's relay of the warm-up, not the measured acks
    shots = shots_for(sender, args.events, f"m{label}", unmapped=args.unmapped)
    raw = Path(args.profile or ".") / f"{label}.txt"
    spy = None
    if args.profile and not label.startswith("bolt"):
        spy = start_pyspy(Path(sys.executable).with_name("py-spy"), server.proc.pid, 600, raw)
    cpu_before = cpu_seconds(server.proc.pid)
    main_before = thread_cpu_seconds(server.proc.pid, server.proc.pid)
    loop = await closed_loop(session, server.url, shots, args.concurrency, label)
    loop.cpu_s = cpu_seconds(server.proc.pid) - cpu_before
    loop.cpu_main_s = thread_cpu_seconds(server.proc.pid, server.proc.pid) - main_before
    if spy is not None:  # the loop only, not the relay's catching up after it
        spy.send_signal(signal.SIGINT)  # py-spy writes what it sampled so far and exits
        await asyncio.to_thread(spy.communicate)
        note("\n".join(["  py-spy on " + label + f": {raw}", *summarise_profile(raw, top=40)]))
    if not label.startswith("bolt") and not args.unmapped:
        await relayed(session, fakes, shots, loop)
        loop.cpu_total_s = cpu_seconds(server.proc.pid) - cpu_before
    if label.startswith("bolt"):
        async with session.get(f"{server.url}/healthz") as r:
            handled = (await r.json())["handled"]
        if handled != args.warmup + args.events:
            raise RuntimeError(
                f"the no-op Bolt listener ran {handled} times for {args.warmup + args.events} events"
            )
    return loop


async def bench(args: argparse.Namespace) -> list[tuple[Loop, Loop]]:
    pairs: list[tuple[Loop, Loop]] = []
    key = generate_key()
    connector = aiohttp.TCPConnector(limit=256, limit_per_host=256)
    with tempfile.TemporaryDirectory(prefix="ack-floor-") as folder:
        tmp = Path(folder)
        async with aiohttp.ClientSession(connector=connector) as session:
            fakes = await start_fakes(tmp, validate=not args.no_validate)
            sender = SlackSender(session, "unused", SECRET, team_id=TEAM)
            try:
                for rep in range(args.reps):
                    bolt = await start_bolt(session, tmp, fakes, str(rep))
                    try:
                        a = await measure(session, sender, fakes, bolt, args, f"bolt{rep}")
                    finally:
                        bolt.proc.stop()
                    note(f"  bolt #{rep}: ack p50 {fmt(pct(a.ack_ms, 50), 2)} ms, {a.rate:.0f}/s")
                    db = tmp / f"bridge{rep}.db"
                    await prepare_database(session, db, fakes, key, 0)
                    bridge = await start_bridge(session, tmp, db, fakes, key, f"ack-{rep}")
                    try:
                        b = await measure(session, sender, fakes, bridge, args, f"bridge{rep}")
                    finally:
                        bridge.proc.stop()
                    b.grouped = grouped_commits(bridge.proc.log_path)
                    note(f"  bridge #{rep}: ack p50 {fmt(pct(b.ack_ms, 50), 2)} ms, {b.rate:.0f}/s")
                    pairs.append((a, b))
            finally:
                fakes.proc.stop()
    return pairs


def report(pairs: list[tuple[Loop, Loop]], args: argparse.Namespace, load_start: str) -> str:
    where = "unmapped" if args.unmapped else "mapped"
    lines = [
        "# Ack at saturation: the bridge vs a no-op Bolt app (issue 18)",
        *machine_info(),
        f"load: {args.events:,} signed message events per server, closed loop at concurrency "
        f"{args.concurrency} (after {args.warmup} unrecorded), to 10 {where} channels; "
        f"load average at start {load_start}, "
        f"at end {load_average()}",
        "",
        "| rep | server | ack p50 | ack p90 | acks/s | server CPU per ack (event loop's) | failed "
        "| p50 ratio (target ≤ 3×) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rep, (a, b) in enumerate(pairs):
        ratio = pct(b.ack_ms, 50) / pct(a.ack_ms, 50)
        verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
        for loop, cell in ((a, ""), (b, f"{ratio:.2f}× — {verdict}")):
            name = "no-op Bolt" if loop is a else "xdm-bridge (SQLite)"
            main_us = loop.cpu_main_s / max(1, len(loop.ack_ms)) * 1e6
            lines.append(
                f"| {rep} | {name} | {fmt(pct(loop.ack_ms, 50), 2)} ms | {fmt(pct(loop.ack_ms, 90), 2)} ms "
                f"| {loop.rate:.0f} | {loop.cpu_us_per_ack:,.0f} µs ({main_us:,.0f}) "
                f"| {loop.failures} | {cell} |"
            )
    lines += ["", "The bridge's relay of the measured messages (to the fake X):", ""]
    header = "| rep | on X when the loop ended | the rest relayed within | bridge CPU per message"
    lines += [header + ", loop start to all relayed | hot-path calls per SQLite commit (whole run) |"]
    lines += ["|---|---|---|---|---|"]
    for rep, (_, b) in enumerate(pairs):
        if b.cpu_total_s:
            per_commit = f"{b.grouped[0] / max(1, b.grouped[1]):.1f}" if b.grouped else "?"
            lines.append(
                f"| {rep} | {b.relayed_in_loop:,} of {len(b.ack_ms) + b.failures:,} | {b.drain_s:.2f} s "
                f"| {b.cpu_total_s / len(b.ack_ms) * 1e6:,.0f} µs | {per_commit} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1000, help="measured events per server")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=200, help="unrecorded events before each run")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds after the warm-up")
    parser.add_argument("--reps", type=int, default=1, help="pairs (Bolt, bridge), alternating")
    parser.add_argument(
        "--unmapped",
        action="store_true",
        help="events to channels with no mapping: the bridge's ack path without the relay's work",
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="py-spy the bridge during each measured loop; raw stacks kept in DIR, a summary printed",
    )
    parser.add_argument("--no-validate", action="store_true", help="the fake X skips OpenAPI checks")
    parser.add_argument("--serve-bolt", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--slack-url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_bolt is not None:
        return serve_bolt(args.serve_bolt, args.slack_url)
    if args.events < 1 or args.concurrency < 1 or args.reps < 1:
        parser.error("--events, --concurrency and --reps must be at least 1")
    load_start = load_average()
    pairs = asyncio.run(bench(args))
    print(report(pairs, args, load_start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
