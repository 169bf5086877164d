"""The upkeep role, written once over the ``Engine`` seam for both stores: retention, the gauges
``/metrics`` serves, and the outbox as the operator and ``/xdm status`` list it.

SQLite is told which index to use (``INDEXED BY``) where its planner picked a scan; PostgreSQL's
planner needs no hint. Each such difference is chosen beside the statement.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from adapters.store import inbound, rows
from adapters.store.engine import Dialect, Engine, indexed_by, marks, where
from adapters.store.roles import StoreBase
from bridge.model import OutboxItem, OutboxState
from migrations import PENDING_STATES

SEEN_EVENTS_KEEP_SECONDS = 24 * 3600.0  # Slack retries within minutes; a day is plenty


# The inbound gauges: one pass over the partial index of rows still to post (X's ids compared as
# numbers in each dialect's way; SQLite told which index, as its planner would not pick it).
_INBOUND_GAUGES_SQL = {
    Dialect.SQLITE: rows.inbound_gauges_sql(inbound.NUMBER[Dialect.SQLITE], "INDEXED BY inbound_pending"),
    Dialect.POSTGRES: rows.inbound_gauges_sql(inbound.NUMBER[Dialect.POSTGRES]),
}


class UpkeepRole(StoreBase):
    """Pruning and counting the outbox and the inbound rows."""

    async def inbound_gauges(self) -> dict[str, Any]:
        return rows.inbound_gauges(await self.engine.fetchone(_INBOUND_GAUGES_SQL[self.engine.dialect]))

    async def prune_batch(
        self, now: float, *, keep_after: float, inbound_keep_after: float, batch: int
    ) -> int:
        """Delete at most ``batch`` rows of each kind past retention, in one transaction."""
        dialect = self.engine.dialect
        sqlite = dialect is Dialect.SQLITE
        # SQLite deletes by rowid; PostgreSQL by each table's key.
        seen_key = "rowid" if sqlite else "event_id"
        map_key = "rowid" if sqlite else "team_id, channel_id, slack_ts, part"
        statements = (
            (
                f"DELETE FROM seen_events WHERE {seen_key} IN (SELECT {seen_key} FROM seen_events "
                "WHERE seen_at < ? ORDER BY seen_at LIMIT ?)",
                now - SEEN_EVENTS_KEEP_SECONDS,
            ),
            (
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox"
                f"{indexed_by(dialect, 'outbox_created_at')} "
                f"WHERE created_at < ? AND state NOT IN {PENDING_STATES} AND state != 'held' "
                "ORDER BY created_at LIMIT ?)",
                keep_after,
            ),
            (
                f"DELETE FROM message_map WHERE ({map_key}) IN (SELECT {map_key} FROM message_map"
                f"{indexed_by(dialect, 'message_map_created_at')} WHERE created_at < ? "
                "ORDER BY created_at LIMIT ?)",
                keep_after,
            ),
            (
                f"DELETE FROM inbound WHERE id IN (SELECT id FROM inbound"
                f"{indexed_by(dialect, 'inbound_finished_created_at')} WHERE {rows.INBOUND_FINISHED} "
                "AND created_at < ? ORDER BY created_at LIMIT ?)",
                inbound_keep_after,
            ),
        )

        async def work(tx: Engine) -> int:
            deleted = 0
            for sql, before in statements:
                deleted += await tx.execute(sql, before, batch)
            return deleted

        return await self.engine.atomic(work)

    async def outbox_gauges(self) -> dict[str, Any]:
        """``pending`` and ``oldest_pending_at``, from the partial index of unfinished rows: the
        cost follows the backlog, not the history (a scan of a million sent rows took 138 ms)."""
        row = await self.engine.fetchone(outbox_gauges_sql(self.engine.dialect)) or {}
        return {"pending": int(row.get("pending") or 0), "oldest_pending_at": row.get("oldest")}

    async def outbox_summary(
        self, team_id: str | None = None, channel_id: str | None = None
    ) -> dict[str, Any]:
        counts, oldest = await outbox_counts(self.engine, team_id=team_id, channel_id=channel_id)
        return {
            "counts": counts,
            "pending": sum(counts.get(s, 0) for s in ("queued", "sending", "waiting")),
            "oldest_pending_at": oldest,
        }

    async def list_outbox(self, states: Sequence[OutboxState], limit: int = 100) -> list[OutboxItem]:
        if not states:
            return []
        return [rows.item(r) for r in await outbox_in(self.engine, [s.value for s in states], limit)]

    async def recently_sent(self, since: float, limit: int) -> list[OutboxItem]:
        # created_at bounds the scan to the retention index: a row sent since ``since`` was
        # created at most a day of rate-limit holds before it (older ones are not worth a scan).
        found = await self.engine.fetch(
            "SELECT * FROM outbox WHERE created_at >= ? AND state = 'sent' AND kind = 'message' "
            "AND sent_at >= ? AND part = parts_total - 1 ORDER BY sent_at DESC LIMIT ?",
            since - 86_400,
            since,
            limit,
        )
        return [item for item in map(rows.readable, found) if isinstance(item, OutboxItem)]


def outbox_gauges_sql(dialect: Dialect) -> str:
    """The gauges' one statement, over the partial index of unfinished rows."""
    return (
        f"SELECT COUNT(*) AS pending, MIN(created_at) AS oldest FROM outbox"
        f"{indexed_by(dialect, 'outbox_pending')} WHERE state IN {PENDING_STATES}"
    )


async def outbox_in(engine: Engine, states: Sequence[str], limit: int) -> list[dict[str, Any]]:
    """Rows in ``states``, oldest first (for ``list_outbox`` and the operator's ``outbox``)."""
    return await engine.fetch(
        f"SELECT * FROM outbox WHERE state IN ({marks(states)}) ORDER BY seq, part LIMIT ?", *states, limit
    )


async def outbox_counts(engine: Engine, **equal: Any) -> tuple[dict[str, int], float | None]:
    """Rows per state (of the team or channel ``equal`` names, if any), and when the oldest
    unfinished one was written."""
    filtered, params = where(**equal)
    pending, _ = where(f"state IN {PENDING_STATES}", **equal)
    found = await engine.fetch(f"SELECT state, COUNT(*) AS n FROM outbox{filtered} GROUP BY state", *params)
    oldest = await engine.fetchone(f"SELECT MIN(created_at) AS t FROM outbox{pending}", *params)
    return {str(r["state"]): int(r["n"]) for r in found}, oldest["t"] if oldest else None
