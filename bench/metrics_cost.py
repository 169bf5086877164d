"""What one ``GET /metrics`` costs the store's thread, and what pruning costs, at a million rows.

    .venv/bin/python bench/metrics_cost.py              # 1,000,000 rows (about a minute to build)
    .venv/bin/python bench/metrics_cost.py --rows 100000

Before issue 11 the outbox gauges came from ``outbox_summary()``: a ``GROUP BY state`` over the
whole outbox, on the store's one thread, so a Prometheus scrape delayed Slack's acks. Now they
come from ``outbox_gauges()``, which reads only the partial index of unfinished rows. Both are
timed here on the same database (figures printed, nothing asserted), then one prune batch.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from run import TEAM, bulk_insert  # noqa: E402

from adapters.store.crypto import TokenCipher, generate_key  # noqa: E402
from adapters.store.sqlite import SqliteStore  # noqa: E402
from bridge.model import IncomingMessage, Mapping, MappingKind, TokenSet, XUser  # noqa: E402
from bridge.retention import DAY, PRUNE_BATCH  # noqa: E402

PENDING = 200  # a realistic backlog beside the history


async def timed(repeat: int, call: object) -> list[float]:
    results = []
    for _ in range(repeat):
        started = time.perf_counter()
        await call()  # type: ignore[operator]
        results.append((time.perf_counter() - started) * 1000)
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    key = generate_key()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        store = SqliteStore(str(path), TokenCipher([key]))
        await store.open()
        account = await store.save_account(TEAM, "U100", XUser("1000", "bench"), TokenSet("a", "r", None))
        await store.close()
        started = time.perf_counter()
        bulk_insert(path, args.rows)  # sent rows, a day old
        print(f"built {args.rows:,} sent rows in {time.perf_counter() - started:.1f} s")
        store = SqliteStore(str(path), TokenCipher([key]))
        await store.open()
        try:
            mapping = Mapping(TEAM, "CPEND", MappingKind.LINK, account.id, "1000-2001", None, "U1", 0.0)
            await store.create_mapping(mapping)
            now = time.time()
            for i in range(PENDING):
                await store.accept(
                    IncomingMessage(TEAM, "CPEND", f"{i}.000001", "U1", "waiting"), mapping, now
                )
            before = await timed(args.repeat, store.outbox_summary)
            after = await timed(args.repeat, store.outbox_gauges)
            summary, gauges = await store.outbox_summary(), await store.outbox_gauges()
            assert summary["pending"] == gauges["pending"] == PENDING
            print(
                f"outbox gauges with {args.rows:,} sent + {PENDING} pending rows "
                f"(ms, median / max of {args.repeat}):"
            )
            print(f"  before: outbox_summary()  {statistics.median(before):8.2f} / {max(before):8.2f}")
            print(f"  after:  outbox_gauges()   {statistics.median(after):8.2f} / {max(after):8.2f}")
            # Everything is a day old: with one day of retention, a batch has PRUNE_BATCH rows to take.
            keep_after = now + DAY
            batch = await timed(5, lambda: store.prune_batch(now, keep_after=keep_after, batch=PRUNE_BATCH))
            print(
                f"one prune batch ({PRUNE_BATCH} outbox rows + their maps): "
                f"median {statistics.median(batch):.2f} ms, max {max(batch):.2f} ms"
            )
        finally:
            await store.close()


if __name__ == "__main__":
    asyncio.run(main())
