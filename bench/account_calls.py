"""Wall time per call of the accounts and mappings roles, on SQLite and PostgreSQL side by side.

    .venv/bin/python bench/account_calls.py              # 2,000 calls of each, 3 repetitions
    BENCH_ROOT=/path/to/other/checkout .venv/bin/python bench/account_calls.py   # compare a checkout

The calls a running bridge makes of these roles: an account read per send and per poll
(``get_account``), a mapping read per command and inbound event (``get_mapping``), the token
refresh's read and write under its lock (``refresh_lock``), the poller's ``list_accounts``, and
the connect flow's writes (``save_account``, ``create_mapping`` + ``delete_mapping``). PostgreSQL
is ``TEST_DATABASE_URL`` (else a throwaway server started here).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(os.environ.get("BENCH_ROOT") or Path(__file__).resolve().parents[1])
sys.path.insert(0, str(ROOT))

from adapters.store.crypto import TokenCipher, generate_key  # noqa: E402
from adapters.store.postgres import PostgresStore  # noqa: E402
from adapters.store.sqlite import SqliteStore  # noqa: E402
from bridge.model import ChannelMapping, MappingKind, TokenSet, XUser  # noqa: E402

Call = Callable[[int], Awaitable[object]]


def calls(store: SqliteStore | PostgresStore, account_id: int) -> dict[str, Call]:
    mapping = ChannelMapping("T1", "C1", MappingKind.LINK, account_id, "1000-2001", None, "U1", 0.0)

    async def refresh(i: int) -> None:
        async with store.refresh_lock(account_id) as row:
            await row.read()
            await row.save_tokens(TokenSet(f"a{i}", f"r{i}", None))

    async def link_unlink(i: int) -> None:
        other = ChannelMapping("T1", f"X{i}", MappingKind.LINK, account_id, "1000-2002", None, "U1", 0.0)
        await store.create_mapping(other)
        await store.delete_mapping("T1", f"X{i}")

    return {
        "get_account": lambda i: store.get_account(account_id),
        "get_mapping": lambda i: store.get_mapping(mapping.team_id, mapping.channel_id),
        "list_accounts": lambda i: store.list_accounts(),
        "refresh_lock (read + save)": refresh,
        "save_account": lambda i: store.save_account(
            "T1", "U1", XUser("1000", "me"), TokenSet("a", "r", None)
        ),
        "create + delete mapping": link_unlink,
    }


async def measure(store: SqliteStore | PostgresStore, count: int, reps: int) -> dict[str, list[float]]:
    await store.open()
    try:
        account = await store.save_account("T1", "U1", XUser("1000", "me"), TokenSet("a", "r", None))
        await store.create_mapping(
            ChannelMapping("T1", "C1", MappingKind.LINK, account.id, "1000-2001", None, "U1", 0.0)
        )
        figures: dict[str, list[float]] = {}
        for name, call in calls(store, account.id).items():
            for i in range(50):  # warm-up
                await call(-i - 1)
            for rep in range(reps):
                started = time.perf_counter()
                for i in range(count):
                    await call(rep * count + i)
                figures.setdefault(name, []).append((time.perf_counter() - started) * 1e6 / count)
        return figures
    finally:
        await store.close()


async def main_async(count: int, reps: int) -> None:
    from bench.stores import postgres
    from tests import pg

    key = generate_key()
    tmp = Path(tempfile.mkdtemp(prefix="xdm-account-calls-"))
    try:
        sqlite = await measure(SqliteStore(str(tmp / "store.db"), TokenCipher([key])), count, reps)
        with postgres() as server:
            url = await pg.create_database(server)
            postgresql = await measure(PostgresStore(url, TokenCipher([key])), count, reps)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"µs per call (median of {reps} x {count:,}), checkout {ROOT}")
    print(f"  {'call':<28} {'SQLite':>8} {'PostgreSQL':>11}")
    for name in sqlite:
        lite, pg_median = statistics.median(sqlite[name]), statistics.median(postgresql[name])
        print(f"  {name:<28} {lite:>8.0f} {pg_median:>11.0f}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main_async(args.calls, args.reps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
