"""Retention: the database keeps only what the bridge may still need.

* ``seen_events`` (Slack event ids, for deduplication) only past Slack's retry horizon;
* finished outbox rows and the message map only ``RETENTION_DAYS`` (X's own event window):
  after that an edit or a delete in Slack is no longer carried to X;
* finished inbound rows (X events posted, skipped or failed) only while X may still serve
  the event again (a replayed push, a history read): ``RETENTION_DAYS``, never under X's
  30-day window, since a row pruned earlier would let that event be posted a second time.

Rows still to send are never pruned, however old. Pruning goes in small batches on the
store's thread, so the requests and the worker that share that thread wait one batch at most.
"""

from __future__ import annotations

import asyncio
import logging

from bridge.ports import Clock, UpkeepStore

log = logging.getLogger("bridge.retention")

DAY = 86_400.0
PRUNE_BATCH = 500  # rows of each kind per store call
PRUNE_EVERY = 3600.0  # seconds between prunes
X_EVENT_WINDOW_DAYS = 30  # X serves DM events this long (GET /2/dm_events, replay)


async def prune(store: UpkeepStore, now: float, *, retention_days: int, batch: int = PRUNE_BATCH) -> int:
    """Delete, batch by batch, what is past its keeping; returns how many rows went."""
    total = 0
    while True:
        deleted = await store.prune_batch(
            now,
            keep_after=now - retention_days * DAY,
            inbound_keep_after=now - max(retention_days, X_EVENT_WINDOW_DAYS) * DAY,
            batch=batch,
        )
        total += deleted
        if deleted == 0:
            return total
        await asyncio.sleep(0)  # let the loop's other work reach the store between batches


async def prune_forever(
    store: UpkeepStore, clock: Clock, *, retention_days: int, every: float = PRUNE_EVERY
) -> None:
    """Prune at start and then every ``every`` seconds; a failed prune is retried next time."""
    while True:
        try:
            deleted = await prune(store, clock.now(), retention_days=retention_days)
        except Exception:
            log.exception("pruning old rows failed; trying again later")
        else:
            if deleted:
                log.info("pruned old rows", extra={"rows": deleted, "retention_days": retention_days})
        await asyncio.sleep(every)
