"""What a durable accept costs: the SQLite store's accept (the commit before Slack's 200) with
``synchronous = NORMAL`` (the old setting) and ``FULL`` (now), side by side.

    .venv/bin/python bench/durability.py                  # 500 accepts per setting, 3 rounds
    .venv/bin/python bench/durability.py --dir /var/data  # on the disk the bridge will use

In WAL mode NORMAL syncs only at checkpoints (a power loss may roll back the last commits);
FULL syncs the WAL at every commit, so the figure is mostly the disk's fsync latency. Run it on
the deployment's own disk: a tmpfs or a disk cache that lies about fsync shows no cost at all.
The accept is timed on its own (``accept_if_mapped``, one trip to the store's owner thread),
each setting on a fresh database, alternating rounds so machine noise falls on both.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from adapters.store.crypto import TokenCipher, generate_key  # noqa: E402
from adapters.store.sqlite import SqliteStore  # noqa: E402
from bridge.model import ChannelMapping, IncomingMessage, MappingKind, TokenSet, XUser  # noqa: E402

TEAM = "T0001"
TARGET_P99_MS = 50.0  # the ack's p99 target at 200 events/s (docs/performance.md)
SETTINGS = ("NORMAL", "FULL")


async def accepts(folder: Path, setting: str, count: int, run: int) -> list[float]:
    """Milliseconds per accept, ``count`` accepts on a fresh database with ``setting``."""
    store = SqliteStore(str(folder / f"{setting}-{run}.db"), TokenCipher([generate_key()]))
    await store.open()
    try:
        # The bench's one reach into the store: the setting under test, on its own connection.
        await store.engine.execute(f"PRAGMA synchronous = {setting}")
        assert await store.commit_durability() == setting
        account = await store.save_account(TEAM, "U100", XUser("1000", "bench"), TokenSet("a", "r", None))
        await store.create_mapping(
            ChannelMapping(TEAM, "C100", MappingKind.LINK, account.id, "1000-2001", None, "U100", 0.0)
        )
        times = []
        for i in range(count):
            message = IncomingMessage(
                TEAM, "C100", f"{1_800_000_000 + i}.000100", "U100", f"m{i}", event_id=f"E{i}"
            )
            started = time.perf_counter()
            accepted = await store.accept_if_mapped(message, time.time())
            times.append((time.perf_counter() - started) * 1000)
            assert accepted is not None
        return times
    finally:
        await store.close()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def main_async(folder: Path, count: int, rounds: int) -> None:
    figures: dict[str, list[float]] = {s: [] for s in SETTINGS}
    for run in range(rounds):
        for setting in SETTINGS:
            figures[setting].extend(await accepts(folder, setting, count, run))
    print(f"SQLite accept (commit before Slack's 200), {count} accepts x {rounds} rounds, in {folder}")
    for setting in SETTINGS:
        times = figures[setting]
        p50, p99 = statistics.median(times), percentile(times, 0.99)
        verdict = "met" if p99 < TARGET_P99_MS else "NOT met"
        print(
            f"  synchronous = {setting:<6} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  "
            f"(target: p99 < {TARGET_P99_MS:.0f} ms: {verdict})"
        )
    extra = statistics.median(figures["FULL"]) - statistics.median(figures["NORMAL"])
    print(f"  FULL costs {extra:+.2f} ms per accept at p50")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accepts", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where the databases go (default: a temp dir)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="xdm-durability-", dir=args.dir))
    try:
        asyncio.run(main_async(folder, args.accepts, args.rounds))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
