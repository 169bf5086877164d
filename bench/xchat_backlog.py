"""An encrypted X Chat conversation's backlog: how many reads, and events asked for, until all of it
is posted, once and in the conversation's order.

    .venv/bin/python bench/xchat_backlog.py                        # 2,500 events, about 20 seconds
    .venv/bin/python bench/xchat_backlog.py --events 500 --max-pages 2

The real bridge (in this process), the fake X (its X Chat encrypting and signing for real) and
the fake Slack run on loopback, SQLite, with the tests' short read window (15 reads per 2 s).
Someone writes ``--events`` messages into a bridged encrypted 1-to-1 at once; a read takes at
most ``--max-pages`` pages (10, then 100 each), so a bigger backlog is read on over the next
reads from X's pagination token. Figures: the time from the last message written until all are
posted, the page requests made for it (with a token: going on from where a read stopped), and
the events they asked for (X bills each event read).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.harness import ALICE, FAST_INBOUND, running_bridge  # noqa: E402
from tests.integration.test_xchat_inbound import (  # noqa: E402
    CONVERSATION,
    encrypted_channel,
    first_read,
    posts,
    wait_posts,
)


async def run(events: int, max_pages: int) -> None:
    config = replace(FAST_INBOUND, chat_max_pages=max_pages)
    with tempfile.TemporaryDirectory() as directory:
        async with running_bridge(Path(directory), inbound=config) as bridge:
            conversation = await encrypted_channel(bridge)
            await first_read(bridge)
            before = len(bridge.x.all_requests)
            for i in range(events):
                bridge.x.chat.person_says(ALICE, conversation, f"m{i}")
            written = time.monotonic()
            await wait_posts(bridge, events, timeout=600)
            took = time.monotonic() - written
            await asyncio.sleep(1.0)  # more reads: anything posted twice shows
            texts = [m["text"] for m in posts(bridge)]
            whole = texts == [f"m{i}" for i in range(events)]
            path = f"/2/chat/conversations/{CONVERSATION}/events"
            reads = [r for r in bridge.x.all_requests[before:] if r.path == path]
            with_token = sum("pagination_token" in r.query for r in reads)
            asked = sum(int(r.query.get("max_results", "10")) for r in reads)
    print(
        f"backlog of {events} events, reads of at most {max_pages} pages: "
        f"{'all posted once, in order' if whole else 'NOT whole, once and in order'}, "
        f"{took:.1f} s after the last was written; {len(reads)} page requests "
        f"({with_token} going on with a token), {asked} events asked for"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=2500)
    parser.add_argument("--max-pages", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(run(args.events, args.max_pages))


if __name__ == "__main__":
    main()
