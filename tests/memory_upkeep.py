"""Retention, gauges and listings of the outbox in memory (the outbox side of ``UpkeepStore``; its
inbound gauges are tests/memory_inbound.py's): the rules of ``adapters/store/upkeep.py``, held to
the same contract tests (tests/contract)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bridge.model import InboundState, OutboxItem, OutboxKind, OutboxState
from tests.memory_tables import OUTBOX_PENDING, MemoryRole

SEEN_EVENTS_KEEP_SECONDS = 24 * 3600.0  # as adapters/store/upkeep.py


class MemoryUpkeep(MemoryRole):
    """Pruning, counting and listing the outbox (and pruning the inbound rows and Slack ids)."""

    async def prune_batch(
        self, now: float, *, keep_after: float, inbound_keep_after: float, batch: int
    ) -> int:
        tables = self.tables
        seen = sorted((at, e) for e, at in tables.seen_events.items() if at < now - SEEN_EVENTS_KEEP_SECONDS)
        for _, event_id in seen[:batch]:
            del tables.seen_events[event_id]
        finished = sorted(
            (r.created_at, r.id)
            for r in tables.outbox.values()
            if r.created_at < keep_after and r.state not in OUTBOX_PENDING and r.state is not OutboxState.HELD
        )
        for _, row_id in finished[:batch]:
            del tables.outbox[row_id]
            tables.outbox_extra.pop(row_id, None)
        old_maps = sorted(
            (m for m in tables.message_map if m.created_at < keep_after), key=lambda m: m.created_at
        )
        gone = old_maps[:batch]
        tables.message_map = [m for m in tables.message_map if m not in gone]
        done = (InboundState.POSTED, InboundState.SKIPPED, InboundState.FAILED)
        old_inbound = sorted(
            (r.created_at, r.id)
            for r in tables.inbound.values()
            if r.state in done and r.created_at < inbound_keep_after
        )
        for _, row_id in old_inbound[:batch]:
            del tables.inbound[row_id]
        return min(len(seen), batch) + min(len(finished), batch) + len(gone) + min(len(old_inbound), batch)

    async def outbox_gauges(self) -> dict[str, Any]:
        pending = [r.created_at for r in self.tables.outbox.values() if r.state in OUTBOX_PENDING]
        return {"pending": len(pending), "oldest_pending_at": min(pending, default=None)}

    async def outbox_summary(
        self, team_id: str | None = None, channel_id: str | None = None
    ) -> dict[str, Any]:
        chosen = [
            r
            for r in self.tables.outbox.values()
            if (team_id is None or r.team_id == team_id)
            and (channel_id is None or r.channel_id == channel_id)
        ]
        counts: dict[str, int] = {}
        for row in chosen:
            counts[row.state.value] = counts.get(row.state.value, 0) + 1
        return {
            "counts": counts,
            "pending": sum(counts.get(s, 0) for s in ("queued", "sending", "waiting")),
            "oldest_pending_at": min(
                (r.created_at for r in chosen if r.state in OUTBOX_PENDING), default=None
            ),
        }

    async def list_outbox(self, states: Sequence[OutboxState], limit: int = 100) -> list[OutboxItem]:
        found = sorted(
            (r for r in self.tables.outbox.values() if r.state in states), key=lambda r: (r.seq, r.part)
        )
        return found[:limit]

    async def recently_sent(self, since: float, limit: int) -> list[OutboxItem]:
        sent = [
            (sent_at, r)
            for r in self.tables.outbox.values()
            if r.created_at >= since - 86_400
            and r.state is OutboxState.SENT
            and r.kind is OutboxKind.MESSAGE
            and (sent_at := self._extra(r.id).sent_at) is not None
            and sent_at >= since
            and r.part == r.parts_total - 1
        ]
        sent.sort(key=lambda pair: pair[0], reverse=True)
        return [r for _, r in sent[:limit]]
