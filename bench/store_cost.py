"""The SQLite store's cost per relayed message, with 10 and with 100,000 mappings.

    .venv/bin/python bench/store_cost.py            # 3,000 messages, 3 alternating repetitions
    .venv/bin/python bench/store_cost.py --postgres # the same three calls on PostgreSQL

``bench/run.py`` compares whole-bridge ack latency on the two databases; at 200 events/s that is
2–3 ms, so a fraction of a millisecond of machine noise moves the ratio by tens of percent. This
isolates the database's share: the three store calls a relayed message makes (accept, claim with
render, mark sent), timed on the store's own owner thread with no HTTP and no other process. The
big database is filled exactly as ``bench/run.py`` fills it (``bulk_insert``).

``--postgres``: the same calls on the PostgreSQL store (``TEST_DATABASE_URL``, else a throwaway
durable server started here), 10 mappings only: wall time per message, and the CPU this process
spends on it (asyncpg's side; the server's is its own).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from adapters.store.crypto import TokenCipher, generate_key  # noqa: E402
from adapters.store.postgres import PostgresStore  # noqa: E402
from adapters.store.sqlite import SqliteStore  # noqa: E402
from bench.run import TEAM, bulk_insert  # noqa: E402
from bridge.model import ChannelMapping, IncomingMessage, MappingKind, RenderedPart, Sent, TokenSet, XUser  # noqa: E402

CHANNELS = 10


def store_at(location: Path | str, key: str) -> SqliteStore | PostgresStore:
    if isinstance(location, str):
        return PostgresStore(location, TokenCipher([key]))
    return SqliteStore(str(location), TokenCipher([key]))


async def build(location: Path | str, key: str, bulk: int) -> None:
    store = store_at(location, key)
    await store.open()
    try:
        for i in range(CHANNELS):
            user = XUser(str(1000 + i), f"bench{i}")
            account = await store.save_account(TEAM, f"U{100 + i}", user, TokenSet("a", "r", None))
            conversation = f"{1000 + i}-2001"
            mapping = ChannelMapping(
                TEAM, f"C{100 + i}", MappingKind.LINK, account.id, conversation, None, "U1", 0.0
            )
            await store.create_mapping(mapping)
    finally:
        await store.close()
    if bulk:
        assert isinstance(location, Path), "bulk_insert fills a SQLite file"
        bulk_insert(location, bulk)


async def relay(location: Path | str, key: str, count: int, run: int) -> tuple[float, float]:
    """Microseconds per message: wall time, and CPU time of the store's owner thread (SQLite) or
    of this process (PostgreSQL: asyncpg's share)."""
    store = store_at(location, key)
    await store.open()
    loop = asyncio.get_running_loop()

    async def owner_cpu() -> float:
        if isinstance(store, PostgresStore):
            return time.process_time()
        # The owner thread's own CPU clock, read on that thread (the executor is private: bench only).
        return await loop.run_in_executor(store._executor, time.thread_time)

    try:
        thread_cpu = await owner_cpu()
        started = time.perf_counter()
        for i in range(count):
            channel = f"C{100 + i % CHANNELS}"
            message = IncomingMessage(
                TEAM,
                channel,
                f"{1_800_000_000 + run * count + i}.000100",
                "U100",
                f"hello {i}",
                event_id=f"E{run}-{i}",
            )
            accepted = await store.accept_if_mapped(message, time.time())
            assert accepted is not None and accepted.head is not None, "each channel is idle"
            head = accepted.head
            parts = [RenderedPart(f"Bench: hello {i}")]
            assert await store.mark_sending(head.id, time.time(), parts=parts, source=head.source)
            await store.mark_sent(head.id, Sent(f"{1000 + i % CHANNELS}-2001", str(10**18 + i)), time.time())
        wall = time.perf_counter() - started
        thread_cpu = await owner_cpu() - thread_cpu
    finally:
        await store.close()
    return wall * 1e6 / count, thread_cpu * 1e6 / count


async def main_async(count: int, reps: int, bulk: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="xdm-store-cost-"))
    key = generate_key()
    try:
        small, big = tmp / "small.db", tmp / "big.db"
        await build(small, key, 0)
        await build(big, key, bulk)
        await relay(small, key, 200, -1)  # warm-up: WAL files, page cache
        await relay(big, key, 200, -1)
        figures: dict[str, list[tuple[float, float]]] = {"small": [], "big": []}
        for rep in range(reps):
            for name, path in (("small", small), ("big", big)):
                figures[name].append(await relay(path, key, count, rep))
        print(f"store cost per relayed message (accept + claim + mark sent), {count:,} messages x {reps}")
        for name, label in (("small", f"{CHANNELS} mappings"), ("big", f"{bulk:,} mappings + outbox rows")):
            walls = ", ".join(f"{w:.0f}" for w, _ in figures[name])
            cpus = ", ".join(f"{c:.0f}" for _, c in figures[name])
            print(f"  {label:<36} wall {walls} µs; owner-thread CPU {cpus} µs")
        mean = {name: sum(c for _, c in runs) / len(runs) for name, runs in figures.items()}
        print(f"  owner-thread CPU, big vs small: {(mean['big'] / mean['small'] - 1) * 100:+.1f} %")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def postgres_async(count: int, reps: int) -> None:
    from bench.stores import postgres
    from tests import pg

    key = generate_key()
    with postgres() as server:
        url = await pg.create_database(server)
        await build(url, key, 0)
        await relay(url, key, 200, -1)  # warm-up
        figures = [await relay(url, key, count, rep) for rep in range(reps)]
    print(
        f"PostgreSQL store cost per relayed message (accept + claim + mark sent), {count:,} messages x {reps}"
    )
    walls = ", ".join(f"{w:.0f}" for w, _ in figures)
    cpus = ", ".join(f"{c:.0f}" for _, c in figures)
    print(f"  {CHANNELS} mappings: wall {walls} µs; this process's CPU {cpus} µs")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--bulk", type=int, default=100_000)
    parser.add_argument("--postgres", action="store_true", help="the PostgreSQL store, 10 mappings")
    args = parser.parse_args()
    if args.postgres:
        asyncio.run(postgres_async(args.messages, args.reps))
    else:
        asyncio.run(main_async(args.messages, args.reps, args.bulk))
    return 0


if __name__ == "__main__":
    sys.exit(main())
