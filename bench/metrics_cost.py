"""What one ``GET /metrics`` costs the store's thread, and what pruning costs, at a million rows.

    .venv/bin/python bench/metrics_cost.py              # 1,000,000 rows (about a minute to build)
    .venv/bin/python bench/metrics_cost.py --rows 100000

Before issue 11 the outbox gauges came from ``outbox_summary()``: a ``GROUP BY state`` over the
whole outbox, on the store's one thread, so a Prometheus scrape delayed Slack's acks. Now they
come from ``outbox_gauges()``, which reads only the partial index of unfinished rows. Both are
timed here on the same database (figures printed, nothing asserted), then one prune batch.

X → Slack's gauges (``inbound_waiting``, ``inbound_oldest_waiting_age_seconds``) come from
``inbound_gauges()``: one pass over the partial index ``inbound_pending`` (rows still to post),
each row classed queued / held / catching up. Timed with as many posted inbound rows as outbox
rows beside a backlog, against ``inbound_summary()`` (a ``GROUP BY state`` over the account's
rows, what a gauge read from the history would cost) and against its target.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
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
from bench.run import TEAM, bulk_insert  # noqa: E402
from bridge.model import (  # noqa: E402
    ChannelMapping,
    EventKind,
    InboundEvent,
    IncomingMessage,
    MappingKind,
    TokenSet,
    XUser,
)
from bridge.retention import DAY, PRUNE_BATCH  # noqa: E402
from tests.outbox import accepted  # noqa: E402

PENDING = 200  # a realistic backlog beside the history
# One scrape's X → Slack gauges must cost the store's thread no more than the outbox's did
# before issue 11 made them cheap by a wide margin: a scrape every 15 s then takes < 0.1 %.
INBOUND_TARGET_MS = 5.0


def bulk_inbound(path: Path, count: int, account_id: int, now: float) -> None:
    """``count`` X events already posted into Slack (the history the gauges must not scan)."""
    db = sqlite3.connect(path)
    try:
        with db:
            db.executemany(
                "INSERT INTO inbound (dm_event_id, seq, account_id, conversation_id, team_id, "
                "channel_id, event_type, sender_id, payload, origin, state, attempts, "
                "next_attempt_at, slack_ts, created_at, posted_at) "
                "VALUES (?, ?, ?, '1000-3003', ?, 'CINB', 'MessageCreate', '2001', "
                "'{\"text\":\"old\"}', 'poll', 'posted', 1, 0, ?, ?, ?)",
                (
                    (str(10**17 + i), 10**17 + i, account_id, TEAM, f"1.{i:06d}", now - DAY, now - DAY)
                    for i in range(count)
                ),
            )
    finally:
        db.close()


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
        bulk_inbound(path, args.rows, account.id, time.time())  # posted X events, a day old
        built = time.perf_counter() - started
        print(f"built {args.rows:,} sent + {args.rows:,} posted inbound rows in {built:.1f} s")
        store = SqliteStore(str(path), TokenCipher([key]))
        await store.open()
        try:
            mapping = ChannelMapping(
                TEAM, "CPEND", MappingKind.LINK, account.id, "1000-2001", None, "U1", 0.0
            )
            await store.create_mapping(mapping)
            now = time.time()
            for i in range(PENDING):
                await accepted(store, IncomingMessage(TEAM, "CPEND", f"{i}.000001", "U1", "waiting"), now)
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
            # A conversation of its own (the bulk outbox's channels all bridge 1000-2001).
            inbound_mapping = ChannelMapping(
                TEAM, "CINB", MappingKind.LINK, account.id, "1000-3003", None, "U1", 0.0
            )
            await store.create_mapping(inbound_mapping)
            events = [
                InboundEvent(
                    str(2 * 10**17 + i), EventKind.MESSAGE_CREATE, "1000-3003", "3003", {"text": "new"}
                )
                for i in range(PENDING)
            ]
            assert await store.take_inbound(account.id, events, events[-1].dm_event_id, now) == PENDING
            naive = await timed(args.repeat, lambda: store.inbound_summary(account.id))
            cheap = await timed(args.repeat, store.inbound_gauges)
            inbound = await store.inbound_gauges()
            assert inbound["queued"] == PENDING, inbound
            print(
                f"inbound gauges with {args.rows:,} posted + {PENDING} waiting X events "
                f"(ms, median / max of {args.repeat}):"
            )
            print(f"  history: inbound_summary() {statistics.median(naive):8.2f} / {max(naive):8.2f}")
            print(
                f"  gauges:  inbound_gauges()  {statistics.median(cheap):8.2f} / {max(cheap):8.2f}"
                f"   (target: median under {INBOUND_TARGET_MS:.0f} ms)"
            )
            # Everything is a day old: with one day of retention, a batch has PRUNE_BATCH rows to take.
            keep_after = now + DAY
            batch = await timed(
                5,
                lambda: store.prune_batch(
                    now, keep_after=keep_after, inbound_keep_after=keep_after, batch=PRUNE_BATCH
                ),
            )
            print(
                f"one prune batch ({PRUNE_BATCH} outbox rows + their maps): "
                f"median {statistics.median(batch):.2f} ms, max {max(batch):.2f} ms"
            )
        finally:
            await store.close()


if __name__ == "__main__":
    asyncio.run(main())
