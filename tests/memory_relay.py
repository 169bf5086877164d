"""Slack's messages, edits and deletes into the outbox in memory (``RelayStore``): the rules of
``adapters/store/relay.py``, held to the same contract tests (tests/contract)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from adapters.store import rows
from bridge.model import Accepted, IncomingMessage, OutboxItem, OutboxKind, OutboxState
from tests.memory_tables import MemoryRole, OutboxExtra, unsent_copy, unsent_row


class MemoryRelay(MemoryRole):
    """Accepts, edits and deletes from Slack, and what the relay asks of what it relayed."""

    async def accept_if_mapped(self, message: IncomingMessage, now: float) -> Accepted | None:
        mapping = self.tables.mappings.get((message.team_id, message.channel_id))
        if mapping is None:
            return None
        if message.event_id is not None:
            if message.event_id in self.tables.seen_events:
                return Accepted(new=False)
            self.tables.seen_events[message.event_id] = now
        busy_before = bool(self.tables.pending_outbox(message.team_id, message.channel_id))
        row_id = self.tables.next_id("outbox")
        held_for = mapping.held_for
        row = unsent_row(
            row_id,
            team_id=message.team_id,
            channel_id=message.channel_id,
            slack_ts=message.ts,
            author_id=message.user_id or "",
            account_id=mapping.account_id,
            target=mapping.target,
            text=None,
            source=json.loads(rows.message_source(message)),
            state=OutboxState.HELD if held_for else OutboxState.QUEUED,
            created_at=now,
            ref_ts=message.ts,
        )
        extra = OutboxExtra(
            held_for=held_for,
            held_state=OutboxState.QUEUED if held_for else None,
            target_group=mapping.target.new_group,
        )
        inserted = self._insert_row(row, extra)
        if inserted is None:
            return Accepted(new=False)
        return Accepted(new=True, head=None if busy_before else inserted)

    async def accept_edit(
        self, team_id: str, channel_id: str, ref_ts: str, edit_ts: str, source: dict[str, Any], now: float
    ) -> str:
        messages = [
            r
            for r in self.tables.outbox.values()
            if (r.team_id, r.channel_id, r.slack_ts, r.kind)
            == (team_id, channel_id, ref_ts, OutboxKind.MESSAGE)
        ]
        original = next((r for r in messages if r.part == 0), None)
        if original is None:
            return "unknown"
        untouched = all(self._was(r) in (OutboxState.QUEUED, OutboxState.WAITING) for r in messages)
        if not original.deleted and untouched:
            for part in messages:
                if part.part > 0:
                    del self.tables.outbox[part.id]
                    del self.tables.outbox_extra[part.id]
            self._set(
                original.id,
                source={**original.source, **source},
                text=None,
                chat=None,
                media=None,
                media_id=None,
                media_uploaded_at=None,
                parts_total=1,
            )
            return "updated"
        inserted = self._follow_up(original, OutboxKind.EDIT, edit_ts, source, now)
        return "queued" if inserted else "unknown"

    async def accept_delete(
        self, team_id: str, channel_id: str, ref_ts: str, delete_ts: str, now: float
    ) -> str:
        found = sorted(
            (
                r
                for r in self.tables.outbox.values()
                if (r.team_id, r.channel_id, r.ref_ts) == (team_id, channel_id, ref_ts)
                and r.kind in (OutboxKind.MESSAGE, OutboxKind.EDIT)
            ),
            key=lambda r: (r.seq, r.part),
        )
        if not found:
            return "unknown"
        reached_x = any(self._was(r) in (OutboxState.SENT, OutboxState.SENDING) for r in found)
        first, first_extra = found[0], replace(self._extra(found[0].id))
        for row in found:
            if self._was(row) in (OutboxState.QUEUED, OutboxState.WAITING):
                self._set(
                    row.id, state=OutboxState.CANCELLED, last_error="deleted in Slack before it was sent"
                )
                extra = self._extra(row.id)
                extra.held_for, extra.held_state = None, None
        for row in list(self.tables.outbox.values()):
            # A part caught mid-send may or may not be on X: read back, never sent again.
            if (row.team_id, row.channel_id, row.ref_ts) == (team_id, channel_id, ref_ts) and self._was(
                row
            ) is OutboxState.SENDING:
                self._set(row.id, deleted=True)
                self._extra(row.id).deleted_at = now
        if not reached_x:
            return "cancelled"
        inserted = self._follow_up(first, OutboxKind.DELETE, delete_ts, {}, now, first_extra)
        return "queued" if inserted else "unknown"

    def _follow_up(
        self,
        original: OutboxItem,
        kind: OutboxKind,
        key_ts: str,
        source: dict[str, Any],
        now: float,
        original_extra: OutboxExtra | None = None,
    ) -> bool:
        """A correction or delete row behind the message's own, to the same target."""
        extra = original_extra or self._extra(original.id)
        held_for = None
        if original.target.conversation_id is not None:
            mapping = self.tables.mappings.get((original.team_id, original.channel_id))
            held_for = extra.held_for or (mapping.held_for if mapping else None)
        row_id = self.tables.next_id("outbox")
        row = unsent_copy(
            original,
            row_id,
            seq=row_id,
            part=0,
            parts_total=1,
            slack_ts=f"{key_ts}:{kind.value}",
            ref_ts=original.ref_ts or original.slack_ts,
            text=None,
            source=dict(source),
            state=OutboxState.HELD if held_for else OutboxState.QUEUED,
            created_at=now,
            kind=kind,
            media=None,
        )
        new_extra = OutboxExtra(
            held_for=held_for or None,
            held_state=OutboxState.QUEUED if held_for else None,
            target_group=extra.target_group,
        )
        return self._insert_row(row, new_extra) is not None

    async def relayed_events(self, team_id: str, channel_id: str, ref_ts: str) -> list[str | None]:
        found = sorted(
            (
                r
                for r in self.tables.outbox.values()
                if (r.team_id, r.channel_id, r.ref_ts) == (team_id, channel_id, ref_ts)
                and r.kind in (OutboxKind.MESSAGE, OutboxKind.EDIT)
                and r.state is OutboxState.SENT
            ),
            key=lambda r: (r.seq, r.part),
        )
        return [r.dm_event_id for r in found]

    async def message_text(self, team_id: str, channel_id: str, ts: str) -> str | None:
        source: dict[str, Any] | None = next(
            (
                r.source
                for r in self.tables.outbox.values()
                if (r.team_id, r.channel_id, r.slack_ts, r.part) == (team_id, channel_id, ts, 0)
            ),
            None,
        )
        if source is None:
            source = next(
                (
                    i.payload
                    for m in self.tables.message_map
                    if (m.team_id, m.channel_id, m.slack_ts, m.part) == (team_id, channel_id, ts, 0)
                    for i in self.tables.inbound.values()
                    if (i.dm_event_id, i.team_id, i.channel_id) == (m.dm_event_id, m.team_id, m.channel_id)
                ),
                None,
            )
        text = (source or {}).get("text")
        return str(text) if text else None

    async def known_event_ids(self, event_ids: Sequence[str]) -> set[str]:
        wanted = set(event_ids)
        return {m.dm_event_id for m in self.tables.message_map if m.dm_event_id in wanted}
