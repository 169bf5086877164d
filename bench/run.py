"""xdm-bridge benchmark: the real ``xdm-bridge serve`` on loopback, driven like Slack drives it.

    .venv/bin/python bench/run.py            # full run, about 10 minutes on 2 cores
    .venv/bin/python bench/run.py --quick    # smoke run, about 1 minute
    .venv/bin/python bench/run.py --profile  # full run, then py-spy on the bridge at 1,000 ev/s

What runs:
- ``bench/fakes.py`` (a helper process): the fake X API (requests and responses checked against
  X's OpenAPI spec, rate limits raised out of the way) and the fake Slack Web API. A middleware
  stamps every DM POST with ``time.monotonic()`` before the fake does any work, so relay overhead
  excludes X's own latency (and X answers at once anyway);
- ``xdm-bridge serve`` as a subprocess with a temporary SQLite database, pre-populated before
  start: one X account per Slack user (tokens minted by the fake X, no OAuth round trip) and one
  ``link`` mapping per channel; logging as in production (``info``, JSON, to a file);
- ``bench/floor.py``: a bare aiohttp server whose handler only reads the body and returns 200,
  driven identically in the same run; the floor is what aiohttp plus this load generator cost;
- the load generator (this process): one asyncio loop, one aiohttp session with a keep-alive
  connection pool, open loop (each event is sent at its scheduled time whether or not earlier
  ones were answered), signed ``event_callback`` message envelopes built and signed before each
  phase so the timed loop only sends. ``gen lag`` is how late the generator itself sent.

Latency is measured from the moment a request is handed to aiohttp until its response body is
read. Relay overhead is from that same moment to the fake X receiving the DM POST.

The cost phase (``--only-cost`` runs it alone) compares 10 with 100,000 mappings and outbox
rows, the big database's inbound backlog growing as its first reads fan out to 10,000 channels a
conversation. Before each load an idle window as long measures the backlog's own work (the
bridge's CPU, Slack posts, rows taken), so a net CPU per event is printed beside the raw one;
``--profile-cost`` splits each window's py-spy samples by work (``bench/cost_split.py``). The fake
Slack enforces Slack's posting limits unless ``--no-slack-limits``.

This runs the bridge on SQLite. ``bench/stores.py`` drives the same harness against SQLite and
PostgreSQL side by side, each figure beside its target, and times the leader takeover.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from adapters.sandbox.fake_slack import SlackSender  # noqa: E402
from adapters.store.crypto import TokenCipher, generate_key  # noqa: E402
from adapters.store.sqlite import SqliteStore, open_database  # noqa: E402
from bench import cost_split  # noqa: E402
from bridge.model import ChannelMapping, MappingKind, TokenSet, XUser  # noqa: E402
from migrations import PENDING_STATES  # noqa: E402

BENCH = Path(__file__).resolve().parent
PYSPY = Path(sys.executable).with_name("py-spy")
TEAM = "T0001"
SECRET = "bench-signing-secret"
PEER = "2001"
ACCOUNTS = 10  # Slack users, each with an X account, each mapping one channel
SLACK_ACK_LIMIT_MS = 3000.0
# The fake Slack's workspace-wide chat.postMessage limit, posts a minute: Slack documents one a
# second per channel and "a workspace-wide limit" without its number; several hundred a minute
# is the usual reading. Backlogs are posted at this pace, as production would see them.
SLACK_WORKSPACE_POSTS = 300.0


# ---------------------------------------------------------------------------------------------
# Plans
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    name: str
    rates: tuple[int, ...]
    seconds: float  # per rate, bridge and floor
    ramp: tuple[int, ...]
    ramp_seconds: float
    cost_rate: int
    cost_seconds: float
    cost_reps: int
    startups: int
    big: int
    warmup_seconds: float


FULL = Plan(
    name="full",
    rates=(50, 200, 1000),
    seconds=15.0,
    ramp=(400, 500, 600, 800, 1000, 1250, 1500, 2000),
    ramp_seconds=8.0,
    cost_rate=200,
    cost_seconds=15.0,
    cost_reps=2,
    startups=3,
    big=100_000,
    warmup_seconds=2.0,
)
QUICK = Plan(
    name="quick",
    rates=(50, 200, 1000),
    seconds=3.0,
    ramp=(500,),
    ramp_seconds=3.0,
    cost_rate=200,
    cost_seconds=3.0,
    cost_reps=1,
    startups=1,
    big=100_000,
    warmup_seconds=1.0,
)


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def fmt(value: float, digits: int = 1) -> str:
    return "-" if value != value else f"{value:.{digits}f}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def machine_info() -> list[str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    load = load_average()
    return [
        f"machine: nproc={os.cpu_count()} ({len(os.sched_getaffinity(0))} usable), CPU {cpu}, "
        f"RAM {mem_kb / 1024 / 1024:.1f} GiB, {platform.system()} {platform.release()}",
        f"software: Python {platform.python_version()} ({platform.python_implementation()}), "
        f"aiohttp {aiohttp.__version__}, SQLite {sqlite3.sqlite_version}; load average now {load}",
    ]


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------


class Proc:
    """A child process we started; stopped with SIGTERM (then SIGKILL), never by name."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path, *, pipe: bool) -> None:
        self.name = name
        self.log_path = log
        self._log: TextIO = log.open("w")
        self.popen = subprocess.Popen(
            argv,
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE if pipe else self._log,
            stderr=self._log,
            text=True,
        )
        self.pid = self.popen.pid

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()
        return self.popen.returncode

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None


@dataclass
class Fakes:
    proc: Proc
    x_url: str
    slack_url: str
    control_url: str
    arrivals: dict[str, float] = field(default_factory=dict)
    duplicates: int = 0
    cursor: int = 0

    async def pull(self, session: aiohttp.ClientSession) -> None:
        async with session.get(f"{self.control_url}/arrivals", params={"since": str(self.cursor)}) as r:
            data = await r.json()
        self.cursor = data["next"]
        for marker, at in data["arrivals"]:
            if marker in self.arrivals:
                self.duplicates += 1
            else:
                self.arrivals[marker] = at

    async def stats(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        async with session.get(f"{self.control_url}/stats") as r:
            result: dict[str, Any] = await r.json()
            return result


async def start_fakes(tmp: Path, validate: bool, workspace_posts: float | None = None) -> Fakes:
    """The fakes' process; with ``workspace_posts`` its Slack enforces Slack's posting limits
    (a second per channel, and that many posts a minute in the workspace)."""
    argv = [sys.executable, str(BENCH / "fakes.py"), "--users", str(ACCOUNTS)]
    if not validate:
        argv.append("--no-validate")
    if workspace_posts is not None:
        argv += ["--slack-workspace-posts", str(workspace_posts)]
    proc = Proc("fakes", argv, dict(os.environ), tmp / "fakes.log", pipe=True)
    assert proc.popen.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(proc.popen.stdout.readline), timeout=60)
    if not line:
        proc.stop()
        raise RuntimeError(f"fakes did not start; see {proc.log_path}:\n{proc.log_path.read_text()[-2000:]}")
    urls = json.loads(line)
    return Fakes(proc, urls["x_url"], urls["slack_url"], urls["control_url"])


def bridge_env(port: int, db_path: Path, fakes: Fakes, key: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "X_", "BRIDGE_", "LOG_"))}
    env.update(
        {
            "PORT": str(port),
            "DATABASE_PATH": str(db_path),
            "SLACK_SIGNING_SECRET": SECRET,
            "SLACK_BOT_TOKEN": "xoxb-test",
            "SLACK_API_URL": f"{fakes.slack_url}/api/",
            "PUBLIC_URL": f"http://127.0.0.1:{port}",
            "X_CLIENT_ID": "test-client",
            "X_CLIENT_SECRET": "test-secret",
            "X_API_URL": fakes.x_url,
            "X_AUTHORIZE_URL": f"{fakes.x_url}/i/oauth2/authorize",
            "BRIDGE_ENCRYPTION_KEY": key,
            "X_USER_LIMIT_15M": "1000000",
            "X_USER_LIMIT_24H": "10000000",
            "X_APP_LIMIT_24H": "100000000",
            "LOG_LEVEL": "info",
            "LOG_FORMAT": "json",
        }
    )
    return env


def bridge_argv() -> list[str]:
    script = Path(sys.executable).with_name("xdm-bridge")
    if script.exists():
        return [str(script), "serve", "--host", "127.0.0.1"]
    return [sys.executable, "-m", "adapters.ops.cli", "serve", "--host", "127.0.0.1"]


async def wait_healthy(session: aiohttp.ClientSession, url: str, proc: Proc, limit_s: float = 120.0) -> None:
    deadline = time.monotonic() + limit_s
    while True:
        if not proc.alive:
            raise RuntimeError(
                f"{proc.name} exited; see {proc.log_path}:\n{proc.log_path.read_text()[-3000:]}"
            )
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with session.get(f"{url}/healthz", timeout=aiohttp.ClientTimeout(total=2)) as r:
                if r.status == 200:
                    return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.name} not healthy after {limit_s}s; see {proc.log_path}")
        await asyncio.sleep(0.005)


@dataclass
class Server:
    proc: Proc
    url: str
    startup_s: float


async def start_bridge(
    session: aiohttp.ClientSession,
    tmp: Path,
    db_path: Path,
    fakes: Fakes,
    key: str,
    label: str,
    *,
    trace_out: Path | None = None,
) -> Server:
    port = free_port()
    env = bridge_env(port, db_path, fakes, key)
    argv = bridge_argv()
    if trace_out is not None:
        env["BENCH_TRACE_OUT"] = str(trace_out)
        argv = [sys.executable, str(BENCH / "instrument.py"), "serve", "--host", "127.0.0.1"]
    started = time.monotonic()
    proc = Proc(f"bridge-{label}", argv, env, tmp / f"bridge-{label}.log", pipe=False)
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_healthy(session, url, proc)
    except BaseException:
        proc.stop()  # not left running (and writing its database) after the bench gives up
        raise
    return Server(proc, url, time.monotonic() - started)


async def start_floor(session: aiohttp.ClientSession, tmp: Path) -> Server:
    port = free_port()
    started = time.monotonic()
    argv = [sys.executable, str(BENCH / "floor.py"), "--port", str(port)]
    proc = Proc("floor", argv, dict(os.environ), tmp / "floor.log", pipe=False)
    url = f"http://127.0.0.1:{port}"
    await wait_healthy(session, url, proc)
    return Server(proc, url, time.monotonic() - started)


# ---------------------------------------------------------------------------------------------
# Database preparation
# ---------------------------------------------------------------------------------------------


async def prepare_database(
    session: aiohttp.ClientSession, db_path: Path, fakes: Fakes, key: str, bulk: int
) -> float:
    """Accounts and the live mappings through the store; ``bulk`` extra mappings and outbox
    rows straight into SQLite. Returns the seconds the bulk insert took."""
    store = SqliteStore(str(db_path), TokenCipher([key]))
    await store.open()  # applies the migrations
    try:
        now = time.time()
        for index in range(ACCOUNTS):
            x_user = str(1000 + index)
            async with session.post(f"{fakes.control_url}/issue", params={"user_id": x_user}) as r:
                grant = await r.json()
            account = await store.save_account(
                TEAM,
                f"U{100 + index}",
                XUser(id=x_user, username=f"bench{index}"),
                TokenSet(grant["access_token"], grant["refresh_token"], grant["expires_at"], grant["scope"]),
            )
            await store.create_mapping(
                ChannelMapping(
                    team_id=TEAM,
                    channel_id=f"C{100 + index}",
                    kind=MappingKind.LINK,
                    account_id=account.id,
                    conversation_id=f"{x_user}-{PEER}",
                    participant_id=None,
                    created_by=f"U{100 + index}",
                    created_at=now,
                )
            )
    finally:
        await store.close()
    if not bulk:
        return 0.0
    started = time.monotonic()
    await asyncio.to_thread(bulk_insert, db_path, bulk)
    return time.monotonic() - started


def database_mb(folder: Path, name: str) -> float:
    """Size of an SQLite database with its WAL and shared-memory files."""
    return sum(p.stat().st_size for p in folder.glob(name + "*") if p.is_file()) / (1024 * 1024)


def bulk_insert(db_path: Path, count: int) -> None:
    """``count`` more linked channels, each with one delivered message in the outbox."""
    db = open_database(str(db_path))
    try:
        account_ids = [row["id"] for row in db.query("SELECT id FROM accounts ORDER BY id")]
        now = time.time()

        def mappings() -> Iterator[dict[str, Any]]:
            for i in range(count):
                account = account_ids[i % len(account_ids)]
                yield {
                    "team_id": TEAM,
                    "channel_id": f"CB{i:07d}",
                    "kind": "link",
                    "account_id": account,
                    "conversation_id": f"{999 + account}-{PEER}",
                    "participant_id": None,
                    "created_by": "UBULK",
                    "created_at": now - 86_400,
                }

        def outbox() -> Iterator[dict[str, Any]]:
            for i in range(count):
                account = account_ids[i % len(account_ids)]
                yield {
                    "id": i + 1,
                    "seq": i + 1,
                    "part": 0,
                    "parts_total": 1,
                    "team_id": TEAM,
                    "channel_id": f"CB{i:07d}",
                    "slack_ts": f"{1_690_000_000 + i // 1000}.{i % 1000:06d}",
                    "author_id": "UBULK",
                    "account_id": account,
                    "target_participant": None,
                    "target_conversation": f"{999 + account}-{PEER}",
                    "text": f"Bulk Author: historical message {i}",
                    "source": json.dumps({"user_id": "UBULK", "text": f"historical message {i}"}),
                    "state": "sent",
                    "attempts": 1,
                    "next_attempt_at": 0.0,
                    "last_error": None,
                    "dm_event_id": str(1_700_000_000_000_000_000 + i),
                    "created_at": now - 86_400 + i * 0.01,
                    "sending_since": now - 86_400 + i * 0.01,
                    "held_since": None,
                    "hourglass": 0,
                    "sent_at": now - 86_400 + i * 0.01 + 0.2,
                }

        with db.atomic():
            db.table("mappings").insert_all(mappings(), batch_size=2000)
            db.table("outbox").insert_all(outbox(), batch_size=1000)
    finally:
        db.close()


# ---------------------------------------------------------------------------------------------
# Load generation
# ---------------------------------------------------------------------------------------------


@dataclass
class Shot:
    marker: str
    body: bytes
    headers: dict[str, str]


@dataclass
class Outcome:
    intended: float
    sent: float = 0.0
    acked: float = 0.0
    status: int = 0
    error: str = ""


def build_shots(sender: SlackSender, count: int, prefix: str, channels: int = ACCOUNTS) -> list[Shot]:
    shots = []
    for i in range(count):
        index = i % channels
        marker = f"{prefix}-{i}"
        event = sender.message_event(
            f"C{100 + index}", f"U{100 + index}", f"bench {marker} hello from the load generator :wave:"
        )
        body = json.dumps(sender.envelope(event)).encode()
        shots.append(Shot(marker, body, {"Content-Type": "application/json", **sender.sign(body)}))
    return shots


async def drive(session: aiohttp.ClientSession, url: str, shots: list[Shot], rate: float) -> list[Outcome]:
    """Open loop: shot i is due at start + i/rate, sent then whatever happened to earlier ones."""
    outcomes = [Outcome(0.0) for _ in shots]
    timeout = aiohttp.ClientTimeout(total=15)
    target = f"{url}/slack/events"

    async def fire(index: int, intended: float) -> None:
        shot = shots[index]
        outcome = outcomes[index]
        outcome.intended = intended
        outcome.sent = time.monotonic()
        try:
            async with session.post(target, data=shot.body, headers=shot.headers, timeout=timeout) as r:
                await r.read()
                outcome.status = r.status
        except Exception as exc:  # every failure counts; the kind is reported
            outcome.error = type(exc).__name__
        outcome.acked = time.monotonic()

    tasks: list[asyncio.Task[None]] = []
    start = time.monotonic() + 0.01
    sent = 0
    while sent < len(shots):
        due = min(len(shots), int((time.monotonic() - start) * rate) + 1)
        while sent < due:
            tasks.append(asyncio.create_task(fire(sent, start + sent / rate)))
            sent += 1
        await asyncio.sleep(max(0.0, start + sent / rate - time.monotonic()))
    await asyncio.gather(*tasks)
    return outcomes


@dataclass
class Run:
    label: str
    rate: int
    outcomes: list[Outcome]
    cpu_server_s: float
    cpu_fakes_s: float
    cpu_bench_s: float
    relay_ms: list[float] = field(default_factory=list)
    delivered: int = 0
    lost: int = 0
    drain_s: float = 0.0
    last_arrival: float = 0.0
    window: cost_split.Window | None = None

    def cpu_share(self, seconds: float) -> float:
        """CPU seconds as a share of one core over the run."""
        return seconds / self.span_s if self.outcomes else 0.0

    @property
    def ok(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == 200]

    @property
    def ack_ms(self) -> list[float]:
        return [(o.acked - o.sent) * 1000 for o in self.ok]

    @property
    def lag_ms(self) -> list[float]:
        return [(o.sent - o.intended) * 1000 for o in self.outcomes]

    @property
    def failures(self) -> Counter[str]:
        return Counter(o.error or str(o.status) for o in self.outcomes if o.status != 200)

    @property
    def span_s(self) -> float:
        return max(o.acked for o in self.outcomes) - min(o.sent for o in self.outcomes)

    @property
    def acked_rate(self) -> float:
        return len(self.ok) / self.span_s if self.outcomes else 0.0

    @property
    def delivered_rate(self) -> float:
        if not self.delivered:
            return 0.0
        return self.delivered / (self.last_arrival - min(o.sent for o in self.outcomes))

    @property
    def server_us_per_event(self) -> float:
        return self.cpu_server_s / len(self.outcomes) * 1e6


async def run_load(
    session: aiohttp.ClientSession,
    sender: SlackSender,
    server: Server,
    fakes: Fakes | None,
    rate: int,
    seconds: float,
    label: str,
    *,
    relay: bool,
    backlog_of: Path | None = None,
    spy: Path | None = None,
) -> Run:
    """One open-loop phase. With ``backlog_of`` (the bridge's database) the run's ``window``
    also counts the inbound backlog's progress over the load (Slack posts, rows taken); with
    ``spy`` py-spy records the bridge over the load into that file."""
    shots = build_shots(sender, max(1, int(rate * seconds)), label)
    progress = await backlog_progress(session, fakes, backlog_of) if fakes and backlog_of else (0, 0)
    pyspy = start_pyspy(PYSPY, server.proc.pid, seconds, spy) if spy else None
    cpu_server = cpu_seconds(server.proc.pid)
    cpu_fakes = cpu_seconds(fakes.proc.pid) if fakes else 0.0
    cpu_bench = time.process_time()
    started = time.monotonic()
    outcomes = await drive(session, server.url, shots, rate)
    run = Run(
        label,
        rate,
        outcomes,
        cpu_seconds(server.proc.pid) - cpu_server,
        (cpu_seconds(fakes.proc.pid) - cpu_fakes) if fakes else 0.0,
        time.process_time() - cpu_bench,
    )
    run.window = cost_split.Window(time.monotonic() - started, run.cpu_server_s)
    if fakes and backlog_of:
        posts, taken = await backlog_progress(session, fakes, backlog_of)
        run.window.posts, run.window.taken = posts - progress[0], taken - progress[1]
    if pyspy is not None:
        await asyncio.to_thread(pyspy.communicate)
    if relay and fakes is not None:
        await drain(session, fakes, shots, outcomes, run)
    return run


async def drain(
    session: aiohttp.ClientSession, fakes: Fakes, shots: list[Shot], outcomes: list[Outcome], run: Run
) -> None:
    """Wait until every accepted event reached X, or until X stops seeing progress for 10 s."""
    wanted = {s.marker: o for s, o in zip(shots, outcomes, strict=True) if o.status == 200}
    started = time.monotonic()
    deadline = started + max(60.0, len(wanted) / 50)
    last_progress, last_count = started, -1
    while True:
        await fakes.pull(session)
        arrived = sum(1 for m in wanted if m in fakes.arrivals)
        now = time.monotonic()
        if arrived != last_count:
            last_progress, last_count = now, arrived
        if arrived == len(wanted) or now - last_progress > 10.0 or now > deadline:
            break
        await asyncio.sleep(0.1)
    run.drain_s = time.monotonic() - started
    run.delivered = arrived
    run.lost = len(wanted) - arrived
    run.relay_ms = [(fakes.arrivals[m] - o.sent) * 1000 for m, o in wanted.items() if m in fakes.arrivals]
    run.last_arrival = max((fakes.arrivals[m] for m in wanted if m in fakes.arrivals), default=0.0)


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------


@dataclass
class Results:
    floor: dict[int, Run] = field(default_factory=dict)
    bridge: dict[int, Run] = field(default_factory=dict)
    ramp: list[Run] = field(default_factory=list)
    cost_small: list[Run] = field(default_factory=list)
    cost_big: list[Run] = field(default_factory=list)
    startup_small: list[float] = field(default_factory=list)
    startup_big: list[float] = field(default_factory=list)
    floor_startup: float = 0.0
    rss_small_kb: int = 0
    rss_big_kb: int = 0
    rss_big_idle_kb: int = 0
    bulk_insert_s: float = 0.0
    db_big_mb: float = 0.0
    x_stats: dict[str, Any] = field(default_factory=dict)
    exit_codes: list[tuple[str, int | None]] = field(default_factory=list)
    profile: list[str] = field(default_factory=list)
    load_at_start: str = ""
    # The big database: inbound rows waiting when each of its servers started, and every /healthz
    # answer while it ran (ms, status; 0 for none within 2 s).
    waiting_big: list[int] = field(default_factory=list)
    health_big: list[tuple[float, int]] = field(default_factory=list)
    # Each cost run's idle window (no events, just before the load) and its load window, by size.
    windows: dict[str, list[tuple[cost_split.Window, cost_split.Window]]] = field(
        default_factory=lambda: {"small": [], "big": []}
    )
    cost_profile: list[str] = field(default_factory=list)
    nets: dict[str, list[float]] = field(default_factory=lambda: {"small": [], "big": []})
    slack_limits: str = ""


def inbound_written(db_path: Path) -> int:
    """The highest inbound row id: how many rows were ever written (read beside the bridge)."""
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
        found = db.execute("SELECT MAX(id) FROM inbound").fetchone()
        return int(found[0] or 0)


async def backlog_progress(session: aiohttp.ClientSession, fakes: Fakes, db_path: Path) -> tuple[int, int]:
    """(Slack posts so far, inbound rows written so far)."""
    stats = await fakes.stats(session)
    return int(stats.get("posts", 0)), await asyncio.to_thread(inbound_written, db_path)


def outbox_pending(db_path: Path) -> int:
    """Accepted messages not delivered to X yet (read beside the bridge)."""
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
        found = db.execute(f"SELECT COUNT(*) FROM outbox WHERE state IN {PENDING_STATES}").fetchone()
        return int(found[0] or 0)


async def delivered_all(db_path: Path, limit_s: float = 60.0) -> None:
    """Until the bridge has delivered everything accepted (a load it could not keep up with
    leaves deliveries behind), at most ``limit_s``: an idle window measures the backlog's own
    work, not the relay's leftovers."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if not await asyncio.to_thread(outbox_pending, db_path):
            return
        await asyncio.sleep(0.5)


async def idle_window(
    session: aiohttp.ClientSession,
    server: Server,
    fakes: Fakes,
    db_path: Path,
    seconds: float,
    spy: Path,
) -> cost_split.Window:
    """The bridge's CPU over ``seconds`` with no events sent: the backlog's own work (and the
    bridge's timers), to be told from the load's. py-spy (when installed) samples it into
    ``spy``, which tells the take's share from the poster's. It starts once the outbox is
    delivered (at most a minute)."""
    await delivered_all(db_path)
    posts, taken = await backlog_progress(session, fakes, db_path)
    pyspy = start_pyspy(PYSPY, server.proc.pid, seconds, spy) if PYSPY.exists() else None
    cpu = cpu_seconds(server.proc.pid)
    started = time.monotonic()
    await asyncio.sleep(seconds)
    window = cost_split.Window(time.monotonic() - started, cpu_seconds(server.proc.pid) - cpu)
    if pyspy is not None:
        await asyncio.to_thread(pyspy.communicate)
        window.samples = (await asyncio.to_thread(cost_split.split, spy))[0] or None
    posts_after, taken_after = await backlog_progress(session, fakes, db_path)
    window.posts, window.taken = posts_after - posts, taken_after - taken
    return window


def inbound_waiting(db_path: Path) -> int:
    """Inbound rows still to post (read with the bridge stopped)."""
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        found = db.execute("SELECT COUNT(*) FROM inbound WHERE state IN ('queued', 'posting')").fetchone()
        return int(found[0])


async def probe_health(session: aiohttp.ClientSession, url: str, out: list[tuple[float, int]]) -> None:
    """GET /healthz every 100 ms until cancelled, as a load balancer would; each answer's time
    and status (0: none within 2 s) go to ``out``."""
    while True:
        started = time.monotonic()
        status = 0
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with session.get(f"{url}/healthz", timeout=aiohttp.ClientTimeout(total=2)) as r:
                await r.read()
                status = r.status
        out.append(((time.monotonic() - started) * 1000, status))
        await asyncio.sleep(0.1)


def note(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


_warmups = iter(range(1_000_000))


async def warm_up(
    session: aiohttp.ClientSession, sender: SlackSender, server: Server, fakes: Fakes | None, plan: Plan
) -> None:
    """A short unrecorded load (first-request costs, Bolt's auth.test), drained before measuring."""
    await run_load(
        session,
        sender,
        server,
        fakes,
        100,
        plan.warmup_seconds,
        f"w{next(_warmups)}",
        relay=fakes is not None,
    )


async def benchmark(
    plan: Plan,
    tmp: Path,
    validate: bool,
    profile: Sequence[int],
    only_profile: bool = False,
    trace: bool = False,
    only_cost: bool = False,
    profile_cost: bool = False,
    workspace_posts: float | None = None,
) -> Results:
    results = Results()
    results.load_at_start = load_average()
    key = generate_key()
    connector = aiohttp.TCPConnector(limit=256, limit_per_host=256)
    async with aiohttp.ClientSession(connector=connector) as session:
        fakes = await start_fakes(tmp, validate, workspace_posts)
        results.slack_limits = (
            "the fake Slack posts as fast as asked (no limits)"
            if workspace_posts is None
            else "the fake Slack enforces Slack's posting limits: 1 a second per channel (bursts of 3), "
            + (f"{workspace_posts:g} a minute in the workspace" if workspace_posts else "no workspace limit")
        )
        sender = SlackSender(session, "unused", SECRET, team_id=TEAM)
        try:
            if only_profile:
                small = tmp / "small.db"
                await prepare_database(session, small, fakes, key, 0)
                for rate in profile:
                    results.profile += await profile_bridge(
                        session, sender, tmp, small, fakes, key, plan, rate, trace=trace
                    )
                return results
            small = tmp / "small.db"
            await prepare_database(session, small, fakes, key, 0)
            if not only_cost:
                await small_phases(session, sender, tmp, small, fakes, key, plan, results)

            # 3. Per-event cost, 10 vs 100,000 mappings (fresh servers, alternating), RSS, start-up.
            big = tmp / "big.db"
            note(f"preparing {plan.big:,} mappings + {plan.big:,} outbox rows")
            results.bulk_insert_s = await prepare_database(session, big, fakes, key, plan.big)
            results.db_big_mb = database_mb(tmp, "big.db")
            for rep in range(plan.cost_reps):
                for size, db_path in (("small", small), ("big", big)):
                    if size == "big":
                        results.waiting_big.append(await asyncio.to_thread(inbound_waiting, db_path))
                    server = await start_bridge(session, tmp, db_path, fakes, key, f"cost-{size}-{rep}")
                    prober = (
                        asyncio.create_task(probe_health(session, server.url, results.health_big))
                        if size == "big"
                        else None
                    )
                    try:
                        if size == "big":
                            results.startup_big.append(server.startup_s)
                            results.rss_big_idle_kb = max(
                                results.rss_big_idle_kb, proc_status_kb(server.proc.pid, "VmHWM")
                            )
                        await warm_up(session, sender, server, fakes, plan)
                        spied = tmp / f"cost-{size}-{rep}"
                        idle = await idle_window(
                            session, server, fakes, db_path, plan.cost_seconds, spied.with_suffix(".idle.txt")
                        )
                        run = await run_load(
                            session,
                            sender,
                            server,
                            fakes,
                            plan.cost_rate,
                            plan.cost_seconds,
                            f"c{size}{rep}",
                            relay=True,
                            backlog_of=db_path,
                            spy=spied.with_suffix(".load.txt") if profile_cost else None,
                        )
                        (results.cost_small if size == "small" else results.cost_big).append(run)
                        assert run.window is not None
                        results.windows[size].append((idle, run.window))
                        if profile_cost:
                            results.cost_profile += profile_lines(
                                f"{size} #{rep}", spied, idle, run.window, len(run.outcomes)
                            )
                        if size == "big":
                            results.rss_big_kb = max(
                                results.rss_big_kb, proc_status_kb(server.proc.pid, "VmHWM")
                            )
                        note(
                            f"  cost {size} #{rep}: ack p50 {fmt(pct(run.ack_ms, 50), 2)} ms, "
                            f"CPU {run.server_us_per_event:.0f} µs/event, lost {run.lost}"
                        )
                    finally:
                        if prober is not None:
                            prober.cancel()
                            with contextlib.suppress(asyncio.CancelledError):
                                await prober
                        results.exit_codes.append((f"bridge-cost-{size}-{rep}", server.proc.stop()))

            # 4. Optional: where the time goes at 1,000 ev/s.
            for rate in profile:
                results.profile += await profile_bridge(
                    session, sender, tmp, small, fakes, key, plan, rate, trace=trace
                )

            results.x_stats = await fakes.stats(session)
            results.x_stats["duplicates"] = fakes.duplicates
        finally:
            results.exit_codes.append(("fakes", fakes.proc.stop()))
    return results


async def small_phases(
    session: aiohttp.ClientSession,
    sender: SlackSender,
    tmp: Path,
    small: Path,
    fakes: Fakes,
    key: str,
    plan: Plan,
    results: Results,
) -> None:
    """Phases 1 and 2: the floor, then the bridge with 10 mappings (start-up, rates, ramp)."""
    # 1. The floor.
    note("floor: bare aiohttp handler")
    floor = await start_floor(session, tmp)
    results.floor_startup = floor.startup_s
    try:
        await warm_up(session, sender, floor, None, plan)
        for rate in plan.rates:
            results.floor[rate] = await run_load(
                session, sender, floor, None, rate, plan.seconds, f"f{rate}", relay=False
            )
            note(f"  floor {rate} ev/s: p50 {fmt(pct(results.floor[rate].ack_ms, 50), 2)} ms")
    finally:
        results.exit_codes.append(("floor", floor.proc.stop()))

    # 2. The bridge with 10 mappings: start-up, rates, ramp.
    bridge: Server | None = None
    for attempt in range(plan.startups):
        if bridge is not None:
            results.exit_codes.append((f"bridge-startup-{attempt}", bridge.proc.stop()))
        bridge = await start_bridge(session, tmp, small, fakes, key, f"small-{attempt}")
        results.startup_small.append(bridge.startup_s)
    assert bridge is not None
    note(f"bridge (10 mappings) healthy after {bridge.startup_s * 1000:.0f} ms")
    try:
        await warm_up(session, sender, bridge, fakes, plan)
        for rate in plan.rates:
            run = await run_load(session, sender, bridge, fakes, rate, plan.seconds, f"b{rate}", relay=True)
            results.bridge[rate] = run
            note(
                f"  bridge {rate} ev/s: ack p50 {fmt(pct(run.ack_ms, 50), 2)} ms, "
                f"relay p50 {fmt(pct(run.relay_ms, 50), 2)} ms, lost {run.lost}"
            )
        for rate in plan.ramp:
            run = await run_load(
                session, sender, bridge, fakes, rate, plan.ramp_seconds, f"r{rate}", relay=True
            )
            results.ramp.append(run)
            note(
                f"  ramp {rate} ev/s: ok {len(run.ok)}/{len(run.outcomes)}, acked "
                f"{run.acked_rate:.0f}/s, p99 {fmt(pct(run.ack_ms, 99))} ms, lost {run.lost}, "
                f"delivered {run.delivered_rate:.0f}/s"
            )
            if not ramp_ok(run):
                break
        results.rss_small_kb = proc_status_kb(bridge.proc.pid, "VmHWM")
    finally:
        results.exit_codes.append(("bridge-small", bridge.proc.stop()))


def ramp_ok(run: Run) -> bool:
    return (
        len(run.ok) == len(run.outcomes)
        and run.lost == 0
        and pct(run.ack_ms, 99) < SLACK_ACK_LIMIT_MS
        and run.acked_rate >= 0.95 * run.rate
    )


# ---------------------------------------------------------------------------------------------
# Profiling (py-spy, sampling every thread of the bridge without stopping it)
# ---------------------------------------------------------------------------------------------


async def profile_bridge(
    session: aiohttp.ClientSession,
    sender: SlackSender,
    tmp: Path,
    db_path: Path,
    fakes: Fakes,
    key: str,
    plan: Plan,
    rate: int,
    *,
    trace: bool = False,
) -> list[str]:
    pyspy = Path(sys.executable).with_name("py-spy")
    if not pyspy.exists():
        return ["py-spy is not installed in this venv (pip install py-spy); no profile taken"]
    note(f"profiling the bridge at {rate} ev/s" + (" (with timers)" if trace else ""))
    trace_out = tmp / f"trace-{rate}.json" if trace else None
    server = await start_bridge(session, tmp, db_path, fakes, key, f"profile-{rate}", trace_out=trace_out)
    raw = tmp / f"profile-{rate}.txt"
    seconds = max(5.0, plan.seconds)
    lines: list[str] = []
    try:
        await warm_up(session, sender, server, fakes, plan)
        spy = start_pyspy(pyspy, server.proc.pid, seconds, raw)
        run = await run_load(session, sender, server, fakes, rate, seconds, f"p{rate}", relay=True)
        _, err = await asyncio.to_thread(spy.communicate)
        lines = [
            f"py-spy on the bridge at {rate} ev/s for {seconds:.0f} s: "
            f"ack p50 {fmt(pct(run.ack_ms, 50), 2)} ms, p99 {fmt(pct(run.ack_ms, 99))} ms, "
            f"relay p50 {fmt(pct(run.relay_ms, 50))} ms, "
            f"delivered {run.delivered_rate:.0f} ev/s, bridge CPU {run.cpu_share(run.cpu_server_s):.0%} "
            f"of a core; stacks: {raw}"
        ]
        if raw.exists():
            lines += summarise_profile(raw)
        else:
            lines.append(f"py-spy failed: {err.strip()[-500:]}")
    finally:
        server.proc.stop()
    if trace_out is not None and trace_out.exists():
        lines += summarise_trace(trace_out)
    return lines


def profile_lines(
    label: str, spied: Path, idle: cost_split.Window, load: cost_split.Window, events: int
) -> list[str]:
    """One cost run's py-spy samples split by what they were doing, for its idle and load windows."""
    out: list[str] = []
    for name, window, raw in (
        ("idle", idle, spied.with_suffix(".idle.txt")),
        ("load", load, spied.with_suffix(".load.txt")),
    ):
        if not raw.exists():
            out.append(f"{label} {name}: py-spy wrote nothing")
            continue
        counts, leaves = cost_split.split(raw)
        out.append(
            f"{label} {name} ({window.cpu_s:.2f} s CPU in {window.seconds:.1f} s, {window.posts} posts, "
            f"{window.taken:,} rows taken): {cost_split.split_line(counts, window.cpu_s, events)}"
        )
        total = sum(counts.values()) or 1
        for (cat, leaf), n in leaves.most_common(8):
            out.append(f"      {n / total:6.1%}  [{cat}] {leaf}")
    return out


def summarise_trace(path: Path, top: int = 40) -> list[str]:
    timings: dict[str, dict[str, float]] = json.loads(path.read_text())
    out = ["timers (wall time per call, includes waiting), by total time:"]
    out.append(f"  {'what':<48} {'calls':>7} {'total s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    ranked = sorted(timings.items(), key=lambda kv: kv[1]["total_s"], reverse=True)
    for name, t in ranked[:top]:
        out.append(
            f"  {name:<48} {int(t['count']):>7} {t['total_s']:>8.2f} {t['p50_ms']:>8.2f} {t['p99_ms']:>8.2f}"
        )
    return out


def start_pyspy(pyspy: Path, pid: int, seconds: float, output: Path) -> subprocess.Popen[str]:
    argv = [str(pyspy), "record", "--pid", str(pid), "--rate", "250", "--format", "raw"]
    argv += ["--nonblocking", "--threads", "--duration", str(int(seconds)), "--output", str(output)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def summarise_profile(raw: Path, top: int = 18) -> list[str]:
    """Share of samples per thread, then functions by inclusive and by self share."""
    per_thread: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = frames[0]
        funcs = [_short(f) for f in frames[1:]]
        if not funcs:
            continue
        total += count
        per_thread[_thread_name(thread)] += count
        for name in set(funcs):
            inclusive[name] += count
        own[funcs[-1]] += count
    if not total:
        return ["(no samples)"]
    out = ["samples by thread: " + ", ".join(f"{t} {n / total:.0%}" for t, n in per_thread.most_common(6))]
    out.append(f"top {top} by inclusive share of all samples (idle included):")
    out += [f"  {n / total:6.1%}  {name}" for name, n in inclusive.most_common(top)]
    out.append(f"top {top} by self share:")
    out += [f"  {n / total:6.1%}  {name}" for name, n in own.most_common(top)]
    return out


def _thread_name(frame: str) -> str:
    # py-spy --threads starts each stack with the thread, e.g. 'thread (0x7F3A…)'
    return frame.strip()[:40]


def _short(frame: str) -> str:
    """'func (path/to/file.py:123)' -> 'file.py:func' with the package directory kept."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    keep = "/".join(parts[-2:]) if len(parts) >= 2 else path
    return f"{keep}:{name}"


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def ms_list(seconds: Sequence[float]) -> str:
    return ", ".join(f"{s * 1000:.0f}" for s in seconds)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(plan: Plan, results: Results, validate: bool, started: float, command: str) -> str:
    out: list[str] = []
    out.append(f"load average at start: {results.load_at_start}")
    w = out.append
    w(
        f"xdm-bridge benchmark ({plan.name} run, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, "
        f"{time.monotonic() - started:.0f} s)"
    )
    w(f"command: {command}")
    out.extend(machine_info())
    w(
        f"setup: `xdm-bridge serve` subprocess, SQLite WAL in a temp dir, LOG_LEVEL=info json to a file; "
        f"{ACCOUNTS} X accounts, {ACCOUNTS} linked channels; fake X (OpenAPI checks "
        f"{'on' if validate else 'off'}) + fake Slack in one helper process; all on one machine"
    )
    w(
        "load: one asyncio loop, aiohttp pool of 256 keep-alive connections, signed event_callback "
        "message envelopes (pre-built), open loop with even spacing; latency from hand-off to aiohttp "
        "to body read"
    )
    w("")
    w(f"1. Ack latency (HTTP 200 back to Slack), ms; {plan.seconds:.0f} s per rate after a warm-up")
    w(
        "   offered | sent    ok      | bridge p50  p95     p99     | floor p50  p95    p99    "
        "| ratio p50 p99   | gen lag p99 | bridge CPU µs/ev"
    )
    for rate in plan.rates:
        b, f = results.bridge.get(rate), results.floor.get(rate)
        if b is None or f is None:
            continue
        bp = [pct(b.ack_ms, q) for q in (50, 95, 99)]
        fp = [pct(f.ack_ms, q) for q in (50, 95, 99)]
        w(
            f"   {rate:>5}/s | {len(b.outcomes):<7} {len(b.ok):<7} | {bp[0]:>9.2f} {bp[1]:>7.2f} "
            f"{bp[2]:>7.2f} | {fp[0]:>8.2f} {fp[1]:>6.2f} {fp[2]:>6.2f} | {bp[0] / fp[0]:>6.1f}x "
            f"{bp[2] / fp[2]:>6.1f}x | {pct(b.lag_ms, 99):>8.2f} ms | {b.server_us_per_event:>8.0f}"
        )
    w(
        "   (floor: bare aiohttp handler that reads the body and returns 200, same generator, same run;"
        " gen lag: how late the generator sent vs schedule)"
    )
    for rate in plan.rates:
        b, f = results.bridge.get(rate), results.floor.get(rate)
        if b is None or f is None:
            continue
        w(
            f"   CPU at {rate}/s, share of one core: bridge {b.cpu_share(b.cpu_server_s):.0%}, "
            f"fakes {b.cpu_share(b.cpu_fakes_s):.0%}, generator {b.cpu_share(b.cpu_bench_s):.0%} "
            f"(floor run: server {f.cpu_share(f.cpu_server_s):.0%}, "
            f"generator {f.cpu_share(f.cpu_bench_s):.0%})"
        )
    w("")
    w(
        "2. Relay overhead: event sent -> fake X receives the DM POST (X's own processing excluded: "
        "stamped on arrival), ms"
    )
    w("   offered | accepted delivered lost | p50     p99     max     | delivered ev/s")
    for rate in plan.rates:
        b = results.bridge.get(rate)
        if b is None:
            continue
        w(
            f"   {rate:>5}/s | {len(b.ok):<8} {b.delivered:<9} {b.lost:<4} | {pct(b.relay_ms, 50):>7.2f} "
            f"{pct(b.relay_ms, 99):>7.2f} {max(b.relay_ms, default=float('nan')):>7.1f} | "
            f"{b.delivered_rate:>8.0f}"
        )
    w("")
    w(
        f"3. Throughput ramp ({plan.ramp_seconds:.0f} s per step; pass = every ack 200, p99 < 3 s, "
        "acked >= 95% of offered, every accepted event delivered to X)"
    )
    w("   offered | ok/sent       | ack p50   p99      | acked ev/s | lost | delivered ev/s | drain s |")
    for run in results.ramp:
        fails = ", ".join(f"{k}x{v}" for k, v in run.failures.most_common(3))
        w(
            f"   {run.rate:>5}/s | {len(run.ok):>6}/{len(run.outcomes):<6} | {pct(run.ack_ms, 50):>7.2f} "
            f"{pct(run.ack_ms, 99):>8.1f} | {run.acked_rate:>10.0f} | {run.lost:>4} | "
            f"{run.delivered_rate:>14.0f} | {run.drain_s:>7.1f} | {verdict(ramp_ok(run))}"
            + (f" ({fails})" if fails else "")
        )
    passing = [r.rate for r in results.ramp if ramp_ok(r)]
    throughput = max(passing, default=0)
    w(
        f"   accepted throughput with zero loss: {throughput} ev/s"
        + ("" if len(passing) < len(plan.ramp) else " (the top of the ramp; the ceiling is higher)")
    )
    delivered = max((r.delivered_rate for r in [*results.bridge.values(), *results.ramp]), default=0.0)
    w(
        f"   delivery to X kept up to at most {delivered:.0f} ev/s in any step; above that the outbox "
        "backlog grows (nothing is lost, relay latency grows)"
    )
    w("")
    small_p50 = [pct(r.ack_ms, 50) for r in results.cost_small]
    big_p50 = [pct(r.ack_ms, 50) for r in results.cost_big]
    s50, b50 = (sum(small_p50) / len(small_p50), sum(big_p50) / len(big_p50)) if big_p50 else (0.0, 0.0)
    s_cpu = sum(r.server_us_per_event for r in results.cost_small) / max(1, len(results.cost_small))
    b_cpu = sum(r.server_us_per_event for r in results.cost_big) / max(1, len(results.cost_big))
    w(
        f"4. Per-event cost at {plan.cost_rate} ev/s for {plan.cost_seconds:.0f} s "
        f"(fresh server each, {plan.cost_reps} alternating repetition(s)); {results.slack_limits}"
    )
    w(
        f"   10 mappings:            ack p50 {', '.join(f'{v:.2f}' for v in small_p50)} ms; "
        f"p99 {', '.join(fmt(pct(r.ack_ms, 99), 2) for r in results.cost_small)} ms; "
        f"relay p50 {', '.join(fmt(pct(r.relay_ms, 50), 2) for r in results.cost_small)} ms; "
        f"bridge CPU {s_cpu:.0f} µs/event"
    )
    w(
        f"   {plan.big:,} mappings + {plan.big:,} outbox rows: ack p50 "
        f"{', '.join(f'{v:.2f}' for v in big_p50)} ms; "
        f"p99 {', '.join(fmt(pct(r.ack_ms, 99), 2) for r in results.cost_big)} ms; "
        f"relay p50 {', '.join(fmt(pct(r.relay_ms, 50), 2) for r in results.cost_big)} ms; "
        f"bridge CPU {b_cpu:.0f} µs/event"
    )
    for rep, (run, waiting) in enumerate(zip(results.cost_big, results.waiting_big, strict=False)):
        w(
            f"   big #{rep}: {waiting:,} inbound rows waiting at start, start-up "
            f"{results.startup_big[rep] * 1000:.0f} ms, bridge CPU {run.server_us_per_event:.0f} µs/event, "
            f"ack p50 {fmt(pct(run.ack_ms, 50), 2)} ms, accepted {len(run.ok)}, relayed {run.delivered}"
        )
    w(
        "   the backlog's own work: before each load (once the outbox is delivered, at most a minute) an "
        "idle window (no events) as long, its CPU above the "
        "10-mapping bridge's idle rate costed per unit of backlog work (row taken, Slack post; shared by "
        "py-spy's take/poster samples when both ran); net = (load CPU - idle base rate x span - rows taken "
        "x per-row cost - posts x per-post cost) / events"
    )
    nets: dict[str, list[float]] = {"small": [], "big": []}
    idles = [idle for idle, _ in results.windows["small"]]
    base = sum(i.cpu_s for i in idles) / max(1e-9, sum(i.seconds for i in idles)) if idles else 0.0
    for size, runs in (("small", results.cost_small), ("big", results.cost_big)):
        for rep, (run, (idle, load)) in enumerate(zip(runs, results.windows[size], strict=False)):
            costs = cost_split.unit_costs(idle, base)
            net = cost_split.net_us_per_event(load, costs, len(run.outcomes)) if costs else float("nan")
            nets[size].append(net)
            unit = (
                f"{costs.per_row * 1e6:.0f} µs/row, {costs.per_post * 1e6:.0f} µs/post ({costs.how})"
                if costs
                else "unit costs unknown (both kinds of work and no py-spy)"
            )
            w(
                f"   {size} #{rep}: idle {idle.cpu_s / idle.seconds * 1000:.0f} ms CPU/s, "
                f"{idle.posts} posts, {idle.taken:,} rows taken; load {load.cpu_s / load.seconds * 1000:.0f} "
                f"ms CPU/s, {load.posts} posts, {load.taken:,} rows taken; {unit}; "
                f"raw {run.server_us_per_event:.0f}, net {net:.0f} µs/event"
            )
    results.nets = nets
    ratio = b50 / s50 if s50 else float("nan")
    w(
        f"   ratio (mean p50): {ratio:.2f}x; DB with bulk rows {results.db_big_mb:.0f} MB, "
        f"bulk insert {results.bulk_insert_s:.1f} s (outbox rows are delivered history, state 'sent')"
    )
    w("")
    w("5. Memory and start-up")
    w(
        f"   peak RSS (VmHWM): 10 mappings after all of 1-3: {results.rss_small_kb / 1024:.1f} MB; "
        f"{plan.big:,} mappings + outbox rows: {results.rss_big_idle_kb / 1024:.1f} MB at start, "
        f"{results.rss_big_kb / 1024:.1f} MB after load"
    )
    w(
        f"   start-up, spawn -> healthy /healthz: 10 mappings {ms_list(results.startup_small)} ms; "
        f"{plan.big:,} mappings {ms_list(results.startup_big)} ms; "
        f"floor {results.floor_startup * 1000:.0f} ms"
    )
    xs = results.x_stats
    w(
        f"   fake X: {xs.get('dms', 0)} DMs accepted, {xs.get('violations', 0)} OpenAPI violations, "
        f"{xs.get('duplicates', 0)} duplicate deliveries; Slack reactions added: {xs.get('reactions', 0)}"
    )
    bad_exits = [(n, c) for n, c in results.exit_codes if c not in (0, None)]
    if bad_exits:
        w(f"   non-zero exits: {bad_exits}")
    w("")
    b200 = results.bridge.get(200)
    p99_200 = pct(b200.ack_ms, 99) if b200 else float("nan")
    relay_p50 = min((pct(r.relay_ms, 50) for r in results.bridge.values()), default=float("nan"))
    relay_p50_200 = pct(b200.relay_ms, 50) if b200 else float("nan")
    rss_mb = results.rss_big_kb / 1024
    w("Targets")
    w(f"   ack p99 < 50 ms at 200 ev/s             {fmt(p99_200, 2):>10} ms   {verdict(p99_200 < 50)}")
    w(
        f"   relay p50 < 10 ms (at 200 ev/s)         {fmt(relay_p50_200, 2):>10} ms   "
        f"{verdict(relay_p50_200 < 10)}   (best rate: {fmt(relay_p50, 2)} ms)"
    )
    w(f"   accepted throughput >= 500 ev/s         {throughput:>10} ev/s {verdict(throughput >= 500)}")
    w(
        f"   10 vs {plan.big:,} mappings within 20%     {(ratio - 1) * 100:>+9.1f} %    "
        f"{verdict(abs(ratio - 1) <= 0.2)}"
    )
    w(f"   peak RSS < 150 MB ({plan.big:,} + {plan.big:,})    {rss_mb:>10.1f} MB   {verdict(rss_mb < 150)}")
    # Issue 18: CPU per event flat from 10 to 100,000 mappings and with the inbound backlog waiting,
    # start-up with that database under 2 s, /healthz answering throughout.
    for rep, run in enumerate(results.cost_big):
        waiting = results.waiting_big[rep] if rep < len(results.waiting_big) else 0
        cpu_ratio = run.server_us_per_event / s_cpu if s_cpu else float("nan")
        w(
            f"   CPU/event big #{rep} vs 10 mappings within 10% {(cpu_ratio - 1) * 100:>+7.1f} %    "
            f"{verdict(abs(cpu_ratio - 1) <= 0.1)}   ({waiting:,} inbound rows waiting at start)"
        )
    s_net = sum(results.nets["small"]) / max(1, len(results.nets["small"]))
    for rep, net in enumerate(results.nets["big"]):
        net_ratio = net / s_net if s_net else float("nan")
        w(
            f"   net CPU/event big #{rep} vs 10 mappings within 10% {(net_ratio - 1) * 100:>+3.1f} %  "
            f"{verdict(abs(net_ratio - 1) <= 0.1)}   (the rows taken and posts made during the load "
            "out at their idle cost: the relay's own, without the backlog's work)"
        )
    backlog_starts = [s for s, n in zip(results.startup_big, results.waiting_big, strict=False) if n]
    slowest = max(backlog_starts, default=float("nan"))
    w(
        f"   start-up with the backlog < 2 s           {fmt(slowest * 1000, 0):>10} ms   "
        f"{verdict(slowest < 2)}"
    )
    answers = results.health_big
    late = sum(1 for ms, status in answers if status != 200)
    worst = max((ms for ms, _ in answers), default=float("nan"))
    if late:
        w(
            "   (/healthz answers not 200 within 2 s, as (ms, status): "
            f"{[a for a in answers if a[1] != 200][:5]})"
        )
    w(
        f"   /healthz answering throughout (big)     {late:>6} of {len(answers)} not 200 within 2 s, "
        f"slowest {fmt(worst, 0)} ms   {verdict(bool(answers) and late == 0)}"
    )
    total_dups = xs.get("duplicates", 0)
    w(
        f"   no loss, no duplicates                  "
        f"{sum(r.lost for r in [*results.bridge.values(), *results.cost_small, *results.cost_big]):>6} lost "
        f"{total_dups} dup {verdict(total_dups == 0 and all(r.lost == 0 for r in results.bridge.values()))}"
    )
    if results.cost_profile:
        w("")
        w("Cost phase by py-spy (samples of the bridge's busy threads, split by what they were doing)")
        out.extend("   " + line for line in results.cost_profile)
    if results.profile:
        w("")
        w("Profile")
        out.extend("   " + line for line in results.profile)
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a ~1 minute smoke run")
    parser.add_argument(
        "--profile",
        type=int,
        nargs="*",
        metavar="RATE",
        help="also py-spy the bridge under load at these rates (default 200 1000)",
    )
    parser.add_argument("--only-profile", action="store_true", help="skip the table, just profile")
    parser.add_argument(
        "--only-cost", action="store_true", help="skip the floor, rates and ramp: only the cost phase (4-5)"
    )
    parser.add_argument(
        "--cost-reps",
        type=int,
        help="repetitions of the cost phase (the second starts on the backlog the first left)",
    )
    parser.add_argument(
        "--big", type=int, help="mappings and outbox rows of the big database (default 100,000)"
    )
    parser.add_argument(
        "--trace", action="store_true", help="profile runs use bench/instrument.py (timers on the ports)"
    )
    parser.add_argument(
        "--profile-cost",
        action="store_true",
        help="py-spy the bridge over each cost run's idle and load windows, the samples split by work",
    )
    parser.add_argument(
        "--slack-workspace-posts",
        type=float,
        default=SLACK_WORKSPACE_POSTS,
        metavar="N",
        help="the fake Slack enforces Slack's posting limits: one post a second per channel (bursts "
        f"of 3) and N a minute in the workspace, a number Slack does not publish (default "
        f"{SLACK_WORKSPACE_POSTS:.0f}; 0: no workspace limit)",
    )
    parser.add_argument(
        "--no-slack-limits",
        action="store_true",
        help="the fake Slack posts as fast as it is asked (as before)",
    )
    parser.add_argument("--no-validate", action="store_true", help="fake X skips its OpenAPI checks")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, databases)")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.big is not None:
        plan = dataclasses.replace(plan, big=args.big)
    if args.cost_reps is not None:
        plan = dataclasses.replace(plan, cost_reps=args.cost_reps)
    profile: list[int] = [] if args.profile is None else (args.profile or [200, 1000])
    if args.only_profile and not profile:
        profile = [200, 1000]
    command = "python bench/run.py" + "".join(
        f" {flag}"
        for flag, on in (
            ("--quick", args.quick),
            ("--profile " + " ".join(map(str, profile)), bool(profile) and not args.only_profile),
            ("--only-profile", args.only_profile),
            ("--only-cost", args.only_cost),
            ("--profile-cost", args.profile_cost),
            ("--no-slack-limits", args.no_slack_limits),
            (
                f"--slack-workspace-posts {args.slack_workspace_posts:g}",
                args.slack_workspace_posts != SLACK_WORKSPACE_POSTS,
            ),
            (f"--big {args.big}", args.big is not None),
            (f"--cost-reps {args.cost_reps}", args.cost_reps is not None),
            ("--trace", args.trace),
            ("--no-validate", args.no_validate),
        )
        if on
    )
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="xdm-bench-"))
    try:
        results = asyncio.run(
            benchmark(
                plan,
                tmp,
                not args.no_validate,
                profile,
                args.only_profile,
                args.trace,
                args.only_cost,
                args.profile_cost,
                None if args.no_slack_limits else args.slack_workspace_posts,
            )
        )
        if args.only_profile:
            text = "\n".join([command, *machine_info(), *results.profile])
        else:
            text = report(plan, results, not args.no_validate, started, command)
        print(text, flush=True)
        if args.json:
            args.json.write_text(json.dumps(raw_figures(results), indent=1))
    finally:
        if args.keep:
            print(f"kept {tmp} (logs, databases, profiles)", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def raw_figures(results: Results) -> dict[str, Any]:
    def summary(run: Run) -> dict[str, Any]:
        return {
            "rate": run.rate,
            "sent": len(run.outcomes),
            "ok": len(run.ok),
            "ack_ms": {q: pct(run.ack_ms, q) for q in (50, 95, 99)},
            "relay_ms": {q: pct(run.relay_ms, q) for q in (50, 99)},
            "lost": run.lost,
            "acked_rate": run.acked_rate,
            "delivered_rate": run.delivered_rate,
            "server_cpu_us_per_event": run.server_us_per_event,
            "fakes_cpu_s": run.cpu_fakes_s,
            "bench_cpu_s": run.cpu_bench_s,
        }

    groups: dict[str, Any] = defaultdict(list)
    for rate, run in results.floor.items():
        groups["floor"].append(summary(run) | {"rate": rate})
    for run in results.bridge.values():
        groups["bridge"].append(summary(run))
    for run in results.ramp:
        groups["ramp"].append(summary(run))
    groups["cost_small"] = [summary(r) for r in results.cost_small]
    groups["cost_big"] = [summary(r) for r in results.cost_big]
    groups["rss_kb"] = {"small": results.rss_small_kb, "big": results.rss_big_kb}
    groups["startup_s"] = {"small": results.startup_small, "big": results.startup_big}
    return dict(groups)


if __name__ == "__main__":
    sys.exit(main())
