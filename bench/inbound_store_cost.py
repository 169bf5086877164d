"""The store's cost per X event relayed to Slack: taken from a read, claimed, marked posted.

    .venv/bin/python bench/inbound_store_cost.py               # SQLite, 2,000 events, 3 repetitions
    .venv/bin/python bench/inbound_store_cost.py --postgres    # the same on TEST_DATABASE_URL

The three store calls an X event makes on its way to Slack (``take_inbound`` in pages of 50,
``mark_posting``, ``mark_posted``), on ten bridged channels, with no HTTP: wall time and this
process's CPU per event (on PostgreSQL the server's CPU is its own). Run it on another checkout
with ``PYTHONPATH=<checkout>`` to compare the same calls there.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from adapters.store.crypto import TokenCipher, generate_key  # noqa: E402
from adapters.store.postgres import PostgresStore  # noqa: E402
from adapters.store.sqlite import SqliteStore  # noqa: E402
from bridge.model import ChannelMapping, EventKind, InboundEvent, InboundItem, MappingKind, TokenSet, XUser  # noqa: E402
from tests import pg  # noqa: E402

CHANNELS = 10
PAGE = 50


async def relay(store: SqliteStore | PostgresStore, events: int, first_id: int) -> tuple[float, float]:
    """Seconds of wall time and of this process's CPU per event."""
    accounts = []
    for i in range(CHANNELS):
        account = await store.save_account(
            "T1", f"U{i}", XUser(str(1000 + i), f"b{i}"), TokenSet("a", "r", None)
        )
        await store.create_mapping(
            ChannelMapping("T1", f"C{i}", MappingKind.LINK, account.id, f"{1000 + i}-2001", None, "U1", 0.0)
        )
        accounts.append(account)
    wall, cpu = time.perf_counter(), time.process_time()
    for start in range(0, events, PAGE):
        account = accounts[(start // PAGE) % CHANNELS]
        conversation = f"{account.x_user_id}-2001"
        page = [
            InboundEvent(str(first_id + n), EventKind.MESSAGE_CREATE, conversation, "2001", {"text": f"m{n}"})
            for n in range(start, min(start + PAGE, events))
        ]
        await store.take_inbound(account.id, page, page[-1].dm_event_id, 1.0)
        [first] = await store.inbound_heads()  # the channel just read: the others are drained
        head: InboundItem | None = first
        while head is not None:
            await store.mark_posting(head.id, 2.0)
            head = await store.mark_posted(head.id, f"{head.dm_event_id}.0", 3.0)
    return (time.perf_counter() - wall) / events, (time.process_time() - cpu) / events


async def main_async(events: int, reps: int, postgres: bool) -> None:
    for rep in range(reps):
        key = generate_key()
        server = os.environ.get("TEST_DATABASE_URL", "")
        url = await pg.create_database(server) if postgres else ""
        store: SqliteStore | PostgresStore = (
            PostgresStore(url, TokenCipher([key]))
            if postgres
            else SqliteStore(str(Path(tempfile.mkdtemp()) / "bench.db"), TokenCipher([key]))
        )
        await store.open()
        try:
            wall, cpu = await relay(store, events, 10**15 + rep * events)
        finally:
            await store.close()
            if url:
                await pg.drop_database(server, url)
        print(
            f"{'postgres' if postgres else 'sqlite'} run {rep + 1}: "
            f"{wall * 1e6:.0f} µs wall, {cpu * 1e6:.0f} µs CPU per event"
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--postgres", action="store_true")
    args = parser.parse_args()
    asyncio.run(main_async(args.events, args.reps, args.postgres))
    return 0


if __name__ == "__main__":
    sys.exit(main())
