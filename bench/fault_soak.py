"""Soak the real server against X on a bad day: many seeds of the randomized fault-model run.

Each seed is the run of tests/process/chaos.py (fake X answering from a seeded fault mix, Slack
retrying, editing and deleting, the server SIGKILLed and restarted), larger and longer than in
the suite. Prints one block of figures per seed and a total; exits 1 if any promise broke.

    python bench/fault_soak.py --seeds 20 --minutes 10
    python bench/fault_soak.py --seed 1234 --messages 200 --kills 5   # replay one seed
    python bench/fault_soak.py --postgres --seeds 5   # on PostgreSQL (a fresh database per seed)

``--postgres`` uses the server ``TEST_DATABASE_URL`` names (it must let us create databases), or
starts a throwaway one from this machine's PostgreSQL binaries as the tests do (tests/pg.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.sandbox.fake_x import RATE_LIMIT_SHAPES
from bridge.model import MappingKind
from tests import pg
from tests.process.chaos import CHANNELS, ChannelSpec, Report, run_seed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=10, help="how many seeds to run (from --first)")
    parser.add_argument("--first", type=int, default=1000, help="the first seed")
    parser.add_argument("--seed", type=int, action="append", help="run exactly this seed (repeatable)")
    parser.add_argument("--minutes", type=float, default=0.0, help="stop starting seeds after this long")
    parser.add_argument("--messages", type=int, default=120, help="Slack messages per seed")
    parser.add_argument("--kills", type=int, default=4, help="SIGKILLs per seed")
    parser.add_argument(
        "--settle", type=float, default=120.0, help="seconds allowed for the outbox to settle"
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="run on PostgreSQL: TEST_DATABASE_URL's server, else a throwaway one started here",
    )
    parser.add_argument(
        "--look-past",
        default="",
        help="comma-separated issue-11 cases to step around while their fix is not in: "
        "1 maps the 1-to-1 channel as a group, 3 sends no reset in ms or past 9999",
    )
    return parser.parse_args(argv)


@contextlib.contextmanager
def postgres_server(wanted: bool) -> Iterator[str | None]:
    """The admin URL of the server to create each seed's database on (None: SQLite)."""
    if not wanted:
        yield None
        return
    from bench.stores import postgres  # TEST_DATABASE_URL, else a throwaway server

    with postgres() as url:
        yield url


async def soak(args: argparse.Namespace, server: str | None = None) -> list[Report]:
    channels: tuple[ChannelSpec, ...] = CHANNELS
    past = set(filter(None, args.look_past.split(",")))
    shapes = RATE_LIMIT_SHAPES
    if "3" in past:
        shapes = tuple(s for s in RATE_LIMIT_SHAPES if s not in ("milliseconds", "past_9999"))
    if "1" in past:
        channels = tuple(
            ChannelSpec(c.channel, c.account, MappingKind.LINK, (*c.members, "2004"))
            if c.kind is MappingKind.DM and c.channel == "C03"
            else c
            for c in CHANNELS
        )
    seeds = args.seed or list(range(args.first, args.first + args.seeds))
    deadline = time.monotonic() + args.minutes * 60 if args.minutes else None
    reports = []
    for seed in seeds:
        if deadline is not None and time.monotonic() > deadline:
            break
        with tempfile.TemporaryDirectory(prefix=f"fault-soak-{seed}-") as tmp:
            database = await pg.create_database(server) if server else str(Path(tmp) / "bridge.db")
            try:
                report = await run_seed(
                    Path(tmp),
                    seed,
                    messages=args.messages,
                    kills=args.kills,
                    settle_timeout=args.settle,
                    channels=channels,
                    shapes=shapes,
                    env={"DATABASE_URL": database} if server else None,
                )
            except Exception as exc:  # a harness failure is a finding too: report it and go on
                report = Report(seed, problems=[f"the run itself failed: {exc!r}"])
            try:
                if report.problems:
                    keep = await _keep(seed, Path(tmp), database)
                    report.problems.append(f"log and database kept in {keep}")
            finally:
                if server:
                    await pg.drop_database(server, database)
        print(report.summary(), flush=True)
        reports.append(report)
    return reports


async def _keep(seed: int, tmp: Path, database: str) -> Path:
    """Copy what a failing seed left (its log, its SQLite file, its outbox as JSON) out of the way."""
    keep = Path(tempfile.mkdtemp(prefix=f"fault-soak-{seed}-kept-"))
    for name in ("server.log", "bridge.db"):
        source = tmp / name
        if source.exists():
            (keep / name).write_bytes(source.read_bytes())
    with contextlib.suppress(Exception):  # a database the run never created has no outbox to keep
        rows = await pg.records(database, "SELECT * FROM outbox ORDER BY seq, part, id")
        (keep / "outbox.json").write_text(json.dumps(rows, default=str, indent=1))
    return keep


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    with postgres_server(args.postgres) as server:
        reports = asyncio.run(soak(args, server))
    failed = [r.seed for r in reports if r.problems]
    faults: Counter[str] = Counter()
    for r in reports:
        faults.update(r.faults)
    messages = sum(r.messages for r in reports)
    store = "PostgreSQL" if args.postgres else "SQLite"
    print(
        f"\n{len(reports)} seeds on {store} in {time.monotonic() - started:.0f} s: {messages} messages, "
        f"{sum(r.edits for r in reports)} edits, {sum(r.deletes for r in reports)} deletes, "
        f"{sum(r.kills for r in reports)} kills, {sum(r.x_requests for r in reports)} requests to X, "
        f"peak {max((r.peak_per_second for r in reports), default=0)}/s, "
        f"{sum(faults.values())} faults ({len(faults)} kinds); failing seeds: {failed or 'none'}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
