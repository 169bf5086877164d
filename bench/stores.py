"""The two stores side by side: Slack ack and relay figures on SQLite and on PostgreSQL, and how long
a standby takes to lead when the PostgreSQL leader is SIGKILLed.

    .venv/bin/python bench/stores.py             # about 70 s on 2 cores
    .venv/bin/python bench/stores.py --quick     # about 20 s
    .venv/bin/python bench/stores.py --keep      # keep the temp dir (the bridges' logs)

The same harness as ``bench/run.py`` (its fakes, load generator and figures): ``xdm-bridge
serve`` as a subprocess, driven open-loop with signed Slack events; relay is from handing an
event to aiohttp until the fake X receives the DM. PostgreSQL is ``TEST_DATABASE_URL`` when set,
else a throwaway server started here from the machine's binaries with PostgreSQL's durable
defaults (fsync and synchronous_commit on: what Heroku Postgres runs).

Takeover: two instances on one database; the leader (found through ``/healthz``) is SIGKILLed;
measured until the standby reports itself leader, and until a message posted to the standby
right after the kill reaches X.

Partition: the leader reaches PostgreSQL through a TCP proxy that freezes (stops forwarding,
keeps the sockets open: a dead network, no reset); measured from the freeze until the cut-off
leader stops its work (its log), until the standby leads, and until a message posted to the
standby right after the freeze reaches X.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from adapters.sandbox.fake_slack import SlackSender  # noqa: E402
from adapters.store.crypto import TokenCipher, generate_key  # noqa: E402
from adapters.store.postgres import PostgresStore  # noqa: E402
from adapters.store.sqlite import SqliteStore  # noqa: E402
from bench import run as harness  # noqa: E402
from bridge.model import ChannelMapping, MappingKind, TokenSet, XUser  # noqa: E402
from tests import pg  # noqa: E402

METRICS_TOKEN = "bench-operator"


async def prepare(
    session: aiohttp.ClientSession, store: SqliteStore | PostgresStore, fakes: harness.Fakes
) -> None:
    """One X account per Slack user and one mapped channel each, as ``bench/run.py`` does."""
    await store.open()
    try:
        for index in range(harness.ACCOUNTS):
            x_user = str(1000 + index)
            async with session.post(f"{fakes.control_url}/issue", params={"user_id": x_user}) as r:
                grant = await r.json()
            account = await store.save_account(
                harness.TEAM,
                f"U{100 + index}",
                XUser(id=x_user, username=f"bench{index}"),
                TokenSet(grant["access_token"], grant["refresh_token"], grant["expires_at"], grant["scope"]),
            )
            channel = f"C{100 + index}"
            await store.create_mapping(
                ChannelMapping(harness.TEAM, channel, MappingKind.LINK, account.id,
                               f"{x_user}-{harness.PEER}", None, f"U{100 + index}", time.time())
            )  # fmt: skip
    finally:
        await store.close()


async def start(
    session: aiohttp.ClientSession, tmp: Path, fakes: harness.Fakes, key: str, label: str, url: str | None
) -> harness.Server:
    port = harness.free_port()
    env = harness.bridge_env(port, tmp / "bridge.db", fakes, key)
    env["METRICS_TOKEN"] = METRICS_TOKEN  # /healthz tells who leads only to the operator
    if url:
        env["DATABASE_URL"] = url
    started = time.monotonic()
    proc = harness.Proc(
        f"bridge-{label}", harness.bridge_argv(), env, tmp / f"bridge-{label}.log", pipe=False
    )
    server_url = f"http://127.0.0.1:{port}"
    await harness.wait_healthy(session, server_url, proc)
    return harness.Server(proc, server_url, time.monotonic() - started)


async def loads(
    session: aiohttp.ClientSession,
    tmp: Path,
    fakes: harness.Fakes,
    url: str | None,
    rates: Sequence[int],
    seconds: float,
) -> dict[int, harness.Run]:
    key = generate_key()
    cipher = TokenCipher([key])
    store = PostgresStore(url, cipher) if url else SqliteStore(str(tmp / "bridge.db"), cipher)
    await prepare(session, store, fakes)
    label = "postgres" if url else "sqlite"
    server = await start(session, tmp, fakes, key, label, url)
    sender = SlackSender(session, f"{server.url}/slack/events", harness.SECRET, team_id=harness.TEAM)
    runs = {}
    try:
        await harness.run_load(session, sender, server, fakes, 100, 1.0, f"{label}-warm", relay=True)
        for rate in rates:
            harness.note(f"{label}: {rate} events/s for {seconds:.0f} s")
            runs[rate] = await harness.run_load(
                session, sender, server, fakes, rate, seconds, f"{label}-{rate}", relay=True
            )
    finally:
        server.proc.stop()
    return runs


async def takeover(
    session: aiohttp.ClientSession, tmp: Path, fakes: harness.Fakes, url: str, rounds: int
) -> list[tuple[float, float]]:
    """(seconds until the standby leads, seconds until a message posted after the kill reaches X)."""
    key = generate_key()
    await prepare(session, PostgresStore(url, TokenCipher([key])), fakes)
    figures = []
    servers = [await start(session, tmp, fakes, key, f"takeover-{i}", url) for i in range(2)]
    try:
        for n in range(rounds):
            leader = await leading(session, servers)
            [standby] = [s for s in servers if s is not leader]
            sender = SlackSender(session, f"{standby.url}/slack/events", harness.SECRET, team_id=harness.TEAM)
            [shot] = harness.build_shots(sender, 1, f"takeover{n}")
            killed = time.monotonic()
            leader.proc.popen.kill()
            leader.proc.popen.wait()
            async with session.post(f"{standby.url}/slack/events", data=shot.body, headers=shot.headers) as r:
                assert r.status == 200, await r.text()
            await leading(session, [standby])
            led = time.monotonic() - killed
            while shot.marker not in fakes.arrivals:
                await fakes.pull(session)
                await asyncio.sleep(0.01)
            figures.append((led, fakes.arrivals[shot.marker] - killed))
            harness.note(f"takeover {n + 1}: leading after {led:.2f} s")
            # The killed one comes back as the standby for the next round.
            servers = [standby, await start(session, tmp, fakes, key, f"takeover-r{n}", url)]
    finally:
        for server in servers:
            server.proc.stop()
    return figures


async def partition(
    session: aiohttp.ClientSession, tmp: Path, fakes: harness.Fakes, url: str, rounds: int
) -> list[tuple[float, float, float]]:
    """(seconds until the cut-off leader stopped, until the standby leads, until the message reached X)."""
    from tests.freezing_proxy import FreezingProxy

    key = generate_key()
    await prepare(session, PostgresStore(url, TokenCipher([key])), fakes)
    direct = urlsplit(url)
    assert direct.hostname is not None and direct.port is not None
    figures = []
    for n in range(rounds):
        proxy = FreezingProxy(direct.hostname, direct.port)
        await proxy.start()
        via = urlunsplit(direct._replace(netloc=f"{direct.username}@127.0.0.1:{proxy.port}"))
        servers = [await start(session, tmp, fakes, key, f"partition-cut-{n}", via)]
        try:
            await leading(session, servers)
            standby = await start(session, tmp, fakes, key, f"partition-standby-{n}", url)
            servers.append(standby)
            sender = SlackSender(session, f"{standby.url}/slack/events", harness.SECRET, team_id=harness.TEAM)
            [shot] = harness.build_shots(sender, 1, f"partition{n}")
            frozen_at, frozen = time.time(), time.monotonic()
            proxy.freeze()
            async with session.post(f"{standby.url}/slack/events", data=shot.body, headers=shot.headers) as r:
                assert r.status == 200, await r.text()
            await leading(session, [standby])
            led = time.monotonic() - frozen
            while shot.marker not in fakes.arrivals:
                await fakes.pull(session)
                await asyncio.sleep(0.01)
            stopped = _logged_at(tmp / f"bridge-partition-cut-{n}.log", "stopped leading") - frozen_at
            figures.append((stopped, led, fakes.arrivals[shot.marker] - frozen))
            harness.note(
                f"partition {n + 1}: stopped after {stopped:.2f} s, standby leading after {led:.2f} s"
            )
        finally:
            for server in servers:
                server.proc.stop(timeout=30.0)
            await proxy.close()
    return figures


def _logged_at(log: Path, message: str) -> float:
    """The wall-clock time of the first JSON log line whose message starts with ``message``."""
    for line in log.read_text().splitlines():
        if line.startswith("{") and json.loads(line).get("msg", "").startswith(message):
            return datetime.fromisoformat(json.loads(line)["ts"]).timestamp()
    raise RuntimeError(f"no {message!r} in {log}")


async def leading(session: aiohttp.ClientSession, servers: Sequence[harness.Server]) -> harness.Server:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for server in servers:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                headers = {"Authorization": f"Bearer {METRICS_TOKEN}"}
                async with session.get(f"{server.url}/healthz", headers=headers) as r:
                    if (await r.json())["worker"] in ("ok", "starting"):
                        return server
        await asyncio.sleep(0.01)
    raise RuntimeError("no instance leads")


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    import os

    given = os.environ.get("TEST_DATABASE_URL", "").strip()
    if given:
        yield given
        return
    with pg.throwaway_server(durable=True) as url:
        yield url


async def main_async(quick: bool, keep: bool = False) -> int:
    rates = (50, 200) if quick else (50, 200, 500)
    seconds = 3.0 if quick else 8.0
    rounds = 2 if quick else 5
    tmp = Path(tempfile.mkdtemp(prefix="xdm-bench-stores-"))
    fakes = await harness.start_fakes(tmp, validate=False)
    try:
        async with aiohttp.ClientSession() as session:
            with postgres() as server_url:
                db = await pg.create_database(server_url)
                lite_tmp, pg_tmp = tmp / "sqlite", tmp / "postgres"
                lite_tmp.mkdir()
                pg_tmp.mkdir()
                results = {
                    "SQLite": await loads(session, lite_tmp, fakes, None, rates, seconds),
                    "PostgreSQL": await loads(session, pg_tmp, fakes, db, rates, seconds),
                }
                takeover_db = await pg.create_database(server_url)
                (tmp / "takeover").mkdir()
                taken = await takeover(session, tmp / "takeover", fakes, takeover_db, rounds)
                partition_db = await pg.create_database(server_url)
                (tmp / "partition").mkdir()
                cut = await partition(session, tmp / "partition", fakes, partition_db, 1 if quick else 3)
    finally:
        fakes.proc.stop()
        if keep:
            harness.note(f"kept {tmp} (logs, SQLite databases)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print("\n".join(report(results, taken, cut, rates, seconds)))
    return 0


def report(
    results: dict[str, dict[int, harness.Run]],
    taken: list[tuple[float, float]],
    cut: list[tuple[float, float, float]],
    rates: Sequence[int],
    seconds: float,
) -> list[str]:
    lines = [*harness.machine_info(), ""]
    lines.append(f"Ack and relay, open loop, {seconds:.0f} s per rate, 10 accounts and channels (ms):")
    lines.append(
        "| rate/s | store | ack p50 | ack p99 | relay p50 | relay p99 | delivered/s | lost | failed "
        "| bridge CPU µs/event |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for rate in rates:
        for store, runs in results.items():
            r = runs[rate]
            cells = [
                *(harness.fmt(harness.pct(values, q)) for values in (r.ack_ms, r.relay_ms) for q in (50, 99)),
                harness.fmt(r.delivered_rate, 0),
                str(r.lost),
                str(sum(r.failures.values())),
                harness.fmt(r.server_us_per_event, 0),
            ]
            lines.append(f"| {rate} | {store} | {' | '.join(cells)} |")
    lines.append("")
    lines.extend(targets(results, taken, rates))
    lines.extend(partition_targets(cut))
    return lines


RATIO_TARGET = 2.0  # PostgreSQL's p50 within this multiple of SQLite's, at the rates both keep up with
ACK_P99_TARGET_MS = 50.0  # at 200 events/s, both stores (as bench/run.py's ack target)
RELAY_P50_TARGET_MS = 10.0  # at 200 events/s, both stores (as bench/run.py's relay target)
KEEP_UP_RATE = 200  # both stores deliver every event as it comes, up to this rate
TAKEOVER_TARGET_S = 5.0  # "another instance takes over within a few seconds"
PARTITION_TARGET_S = 30.0  # a leader cut off without a reset: another leads within 30 s (issue 17)


def targets(
    results: dict[str, dict[int, harness.Run]], taken: list[tuple[float, float]], rates: Sequence[int]
) -> list[str]:
    """Each figure beside its target, with a verdict."""

    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**missed**"

    lines = ["| figure | SQLite | PostgreSQL | PostgreSQL / SQLite | target |", "|---|---|---|---|---|"]
    for rate in rates:
        lite, post = results["SQLite"][rate], results["PostgreSQL"][rate]
        for name, lite_ms, post_ms in (
            ("ack", lite.ack_ms, post.ack_ms),
            ("relay", lite.relay_ms, post.relay_ms),
        ):
            a, b = harness.pct(lite_ms, 50), harness.pct(post_ms, 50)
            ratio = b / a if a else float("nan")
            goal = (
                f"within {RATIO_TARGET:g}x: {verdict(ratio <= RATIO_TARGET)}"
                if rate <= KEEP_UP_RATE
                else "(past what either keeps up with on 2 cores; not a target)"
            )
            lines.append(
                f"| {name} p50 at {rate}/s | {harness.fmt(a)} ms | {harness.fmt(b)} ms "
                f"| {harness.fmt(ratio, 2)}x | {goal} |"
            )
        # Keeping up: a backlog that grows during the run shows as fewer DMs/s than events/s.
        kept = [r.delivered_rate >= 0.95 * rate and not r.lost for r in (lite, post)]
        goal = (
            f"keeps up, nothing lost: {verdict(all(kept))}"
            if rate <= KEEP_UP_RATE
            else "(past both stores' delivery on 2 cores; not a target)"
        )
        lines.append(
            f"| delivered at {rate}/s | {harness.fmt(lite.delivered_rate, 0)}/s | "
            f"{harness.fmt(post.delivered_rate, 0)}/s | | {goal} |"
        )
    if 200 in rates:
        lite, post = results["SQLite"][200], results["PostgreSQL"][200]
        acks = [harness.pct(r.ack_ms, 99) for r in (lite, post)]
        relays = [harness.pct(r.relay_ms, 50) for r in (lite, post)]
        lines.append(
            f"| ack p99 at 200/s | {harness.fmt(acks[0])} ms | {harness.fmt(acks[1])} ms | | "
            f"< {ACK_P99_TARGET_MS:g} ms: {verdict(max(acks) < ACK_P99_TARGET_MS)} |"
        )
        lines.append(
            f"| relay p50 at 200/s | {harness.fmt(relays[0])} ms | {harness.fmt(relays[1])} ms | | "
            f"< {RELAY_P50_TARGET_MS:g} ms: {verdict(max(relays) < RELAY_P50_TARGET_MS)} |"
        )
    leads = [t for t, _ in taken]
    arrivals = [a for _, a in taken]
    lines.append(
        f"| leader takeover after SIGKILL ({len(taken)} rounds): standby leads | (one instance) | "
        f"{', '.join(f'{t:.2f}' for t in leads)} s | | < {TAKEOVER_TARGET_S:g} s: "
        f"{verdict(max(leads) < TAKEOVER_TARGET_S)} |"
    )
    lines.append(
        f"| a message posted to the standby right after the kill reaches X | | "
        f"{', '.join(f'{a:.2f}' for a in arrivals)} s | | < {TAKEOVER_TARGET_S:g} s: "
        f"{verdict(max(arrivals) < TAKEOVER_TARGET_S)} |"
    )
    return lines


def partition_targets(cut: list[tuple[float, float, float]]) -> list[str]:
    """The partition rounds' figures, after the others' table."""
    if not cut:
        return []

    def listed(values: list[float]) -> str:
        return ", ".join(f"{v:.2f}" for v in values)

    stopped, led, arrived = ([c[i] for c in cut] for i in range(3))
    fenced = all(s < t for s, t in zip(stopped, led, strict=True))
    return [
        f"| leader cut off without a reset ({len(cut)} rounds): it stops its work | | {listed(stopped)} s "
        f"| | before the standby leads: {'**met**' if fenced else '**missed**'} |",
        f"| the standby leads | | {listed(led)} s | | < {PARTITION_TARGET_S:g} s: "
        f"{'**met**' if max(led) < PARTITION_TARGET_S else '**missed**'} |",
        f"| a message posted to the standby right after the cut reaches X | | {listed(arrived)} s | | "
        f"< {PARTITION_TARGET_S:g} s: {'**met**' if max(arrived) < PARTITION_TARGET_S else '**missed**'} |",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="shorter runs, fewer takeovers")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, SQLite databases)")
    args = parser.parse_args(argv)
    return asyncio.run(main_async(args.quick, args.keep))


if __name__ == "__main__":
    raise SystemExit(main())
