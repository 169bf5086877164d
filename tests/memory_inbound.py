"""X → Slack in memory (``InboundStore`` and ``CursorStore``), for unit tests of the poster and
the poller in virtual time.

The same rules as ``adapters/store/inbound.py``, held to the same contract tests
(tests/contract/test_inbound_store.py runs on SQLite, PostgreSQL and this): one row per event and
channel, echoes of the bridge's own sends skipped, a channel's head its queued or posting row of
lowest ``seq``, a channel waiting while it is paused or a read of its account is unfinished,
``mark_posting`` once per finished row, the cursor moving forward only. The fan-out to channels
is the engines' own pure rule (``rows.channel_rows``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from adapters.store import rows
from bridge.model import (
    EventKind,
    InboundEvent,
    InboundItem,
    InboundOrigin,
    InboundState,
    OutboxState,
    ReadGap,
)
from bridge.ports import CursorStore, InboundStore
from tests.memory_tables import CursorRow, MapEntry, MemoryRole, payload_copy, snowflake_number

PENDING = (InboundState.QUEUED, InboundState.POSTING)


class MemoryInbound(MemoryRole):
    """The ``inbound``, ``cursors``, ``read_schedule`` and ``backfills`` tables in memory."""

    # -- InboundStore -----------------------------------------------------------

    async def take_inbound(
        self,
        account_id: int,
        events: Sequence[InboundEvent],
        newest_event_id: str | None,
        now: float,
        *,
        gap: ReadGap | None = None,
        tally: dict[str, int] | None = None,
    ) -> int:
        row = self.tables.accounts.get(account_id)
        own_id = row.account.x_user_id if row else None
        queued = echoes = 0
        for event in events:
            for state in self._take_event(account_id, own_id, event, now):
                queued += int(state is InboundState.QUEUED)
                echoes += int(state is InboundState.SKIPPED)
        if gap is not None:
            cursor = self.tables.cursors.setdefault(account_id, CursorRow())
            cursor.gap, cursor.updated_at = gap, now
        elif newest_event_id is not None:
            self._move_cursor(account_id, newest_event_id, now)
        if tally is not None and events:
            tally["echoes"] = tally.get("echoes", 0) + echoes
        return queued

    def _take_event(
        self, account_id: int, own_id: str | None, event: InboundEvent, now: float
    ) -> list[InboundState]:
        """Write one event's rows; the states of those written (the channel rows only)."""
        known = {
            (r.team_id or None, r.channel_id or None)
            for r in self.tables.inbound.values()
            if r.dm_event_id == event.dm_event_id
        }
        mappings = self._mappings_of(account_id, event.conversation_id)
        sent_from = self._sent_from(event.dm_event_id)
        planned = rows.channel_rows(mappings, event, known, sent_from)  # type: ignore[arg-type]
        if not known and not mappings:
            payload = {**event.payload, "from_self": rows.from_self(event, own_id)}
            self._insert_inbound(
                account_id, event, (None, None), payload, InboundState.SKIPPED, rows.NOT_BRIDGED, now
            )
        written: list[InboundState] = []
        for row in planned:
            state, why = row.state, row.why
            if row.check_outbox and self._outbox_echo(row.where, event):
                state, why = InboundState.SKIPPED, rows.ECHO_IN_FLIGHT
            elif row.check_outbox and self._adopt_unconfirmed(row.where, event, now):
                state, why = InboundState.SKIPPED, rows.ECHO_UNCONFIRMED
            if self._insert_inbound(account_id, event, row.where, row.payload, state, why, now):
                written.append(state)
        return written

    def _mappings_of(self, account_id: int, conversation_id: str | None) -> list[dict[str, Any]]:
        """The channels bridging the conversation, the reading account's first, then oldest first."""
        if not conversation_id:
            return []
        found = [m for m in self.tables.mappings.values() if m.conversation_id == conversation_id]
        found.sort(key=lambda m: (m.account_id != account_id, m.created_at))
        accounts = self.tables.accounts
        return [
            {
                "team_id": m.team_id,
                "channel_id": m.channel_id,
                "created_at": m.created_at,
                "x_user_id": accounts[m.account_id].account.x_user_id if m.account_id in accounts else None,
            }
            for m in found
        ]

    def _insert_inbound(
        self,
        account_id: int,
        event: InboundEvent,
        where: tuple[str | None, str | None],
        payload: dict[str, Any],
        state: InboundState,
        why: str | None,
        now: float,
    ) -> bool:
        """One row, unless the event has one in that channel already (the unique key)."""
        for kept in self.tables.inbound.values():
            if (kept.dm_event_id, kept.team_id, kept.channel_id) == (
                event.dm_event_id,
                where[0] or "",
                where[1] or "",
            ):
                return False
        row_id = self.tables.next_id("inbound")
        self.tables.inbound[row_id] = InboundItem(
            id=row_id,
            dm_event_id=event.dm_event_id,
            seq=rows.snowflake(event.dm_event_id),
            account_id=account_id,
            conversation_id=event.conversation_id or "",
            team_id=where[0] or "",
            channel_id=where[1] or "",
            kind=EventKind(str(event.kind)),
            sender_id=event.sender_id,
            payload=payload_copy(payload),
            origin=InboundOrigin(str(event.origin)),
            state=state,
            attempts=0,
            next_attempt_at=0.0,
            posting_since=None,
            slack_ts=None,
            created_at=now,
        )
        self.tables.inbound_errors[row_id] = why
        return True

    def _outbox_echo(self, where: tuple[str, str], event: InboundEvent) -> bool:
        """A DM of ours that X has but the outbox has not recorded yet (its POST is in flight)."""
        text = event.payload.get("text")
        return any(
            (r.team_id, r.channel_id) == where and r.state is OutboxState.SENDING and r.text == text
            for r in self.tables.outbox.values()
        )

    def _adopt_unconfirmed(self, where: tuple[str, str], event: InboundEvent, now: float) -> bool:
        """A send X took without naming it is this event: its id is recorded now."""
        candidates = sorted(
            (
                r
                for r in self.tables.outbox.values()
                if (r.team_id, r.channel_id) == where
                and r.state is OutboxState.SENT
                and r.dm_event_id is None
                and r.text is not None
            ),
            key=lambda r: (r.seq, r.part),
        )
        found = rows.unconfirmed_match(({"id": r.id, "text": r.text} for r in candidates), event)
        if found is None:
            return False
        row = self.tables.outbox[found["id"]]
        self.tables.outbox[row.id] = replace(row, dm_event_id=event.dm_event_id)
        self.tables.map_event(
            MapEntry(*where, row.slack_ts, row.part, event.conversation_id, event.dm_event_id, now)
        )
        return True

    def _move_cursor(self, account_id: int, newest_event_id: str, now: float) -> None:
        """Forward only (by X's order); moving it (or trying to) closes the account's gap."""
        cursor = self.tables.cursors.get(account_id)
        if cursor is None:
            self.tables.cursors[account_id] = CursorRow(newest_event_id, now)
            return
        old, new = snowflake_number(cursor.newest_event_id), snowflake_number(newest_event_id)
        if old is None or (new is not None and new > old):
            cursor.newest_event_id, cursor.updated_at = newest_event_id, now
        cursor.gap = None

    def _sent_from(self, dm_event_id: str) -> tuple[str, str] | None:
        for entry in self.tables.message_map:
            if entry.dm_event_id != dm_event_id:
                continue
            posted_from_x = any(
                (i.dm_event_id, i.team_id, i.channel_id, i.slack_ts)
                == (entry.dm_event_id, entry.team_id, entry.channel_id, entry.slack_ts)
                for i in self.tables.inbound.values()
            )
            if not posted_from_x:
                return entry.team_id, entry.channel_id
        return None

    async def sent_from(self, dm_event_id: str) -> tuple[str, str] | None:
        return self._sent_from(dm_event_id)

    def _waits(self, row: InboundItem) -> bool:
        """``rows.inbound_waits``: the channel is paused, or an unfinished read holds it."""
        mapping = self.tables.mappings.get((row.team_id, row.channel_id))
        if mapping is None:
            return False  # no longer bridged: nothing more comes, nothing to wait for
        if mapping.paused_at is not None:
            return True
        if mapping.encrypted and (mapping.account_id, mapping.conversation_id) in self.tables.chat_gaps:
            return True
        if self._gap_open(mapping.account_id):
            return True
        if mapping.account_id == row.account_id or not self._gap_open(row.account_id):
            return False
        # Another account's read took it: it waits until the channel's own account read past it.
        own = self.tables.cursors.get(mapping.account_id)
        own_newest = snowflake_number(own.newest_event_id) if own else None
        return own_newest is None or own_newest < row.seq

    def _gap_open(self, account_id: int) -> bool:
        cursor = self.tables.cursors.get(account_id)
        return cursor is not None and cursor.gap is not None

    def _channel_head(self, team_id: str, channel_id: str) -> InboundItem | None:
        """The channel's queued or posting row of lowest ``seq``, waiting or not."""
        pending = [
            r
            for r in self.tables.inbound.values()
            if (r.team_id, r.channel_id) == (team_id, channel_id) and r.state in PENDING
        ]
        return min(pending, key=lambda r: (r.seq, r.id), default=None)

    async def inbound_heads(
        self, after: tuple[str, str] | None = None, limit: int | None = None
    ) -> list[InboundItem]:
        channels = sorted(
            {(r.team_id, r.channel_id) for r in self.tables.inbound.values() if r.state in PENDING}
        )
        heads: list[InboundItem] = []
        for channel in channels:
            if after is not None and channel <= after:
                continue
            head = self._channel_head(*channel)
            if head is not None and not self._waits(head):
                heads.append(head)
            if limit is not None and len(heads) >= limit:
                break
        return heads

    def _update_inbound(self, item_id: int, **changes: Any) -> InboundItem:
        row = replace(self.tables.inbound[item_id], **changes)
        self.tables.inbound[item_id] = row
        return row

    async def mark_posting(self, item_id: int, now: float) -> InboundItem | None:
        row = self.tables.inbound.get(item_id)
        if row is None or row.state not in PENDING:
            return None
        since = row.posting_since if row.posting_since is not None else now
        return self._update_inbound(
            item_id, state=InboundState.POSTING, attempts=row.attempts + 1, posting_since=since
        )

    async def mark_posted(self, item_id: int, slack_ts: str, now: float) -> InboundItem | None:
        row = self._update_inbound(item_id, state=InboundState.POSTED, slack_ts=slack_ts)
        self.tables.inbound_errors[item_id] = None
        self.tables.inbound_posted_at[item_id] = now
        self.tables.map_event(
            MapEntry(row.team_id, row.channel_id, slack_ts, 0, row.conversation_id, row.dm_event_id, now)
        )
        following = self._channel_head(row.team_id, row.channel_id)
        return None if following is None or self._waits(following) else following

    async def reschedule_inbound(
        self, item_id: int, state: InboundState, next_attempt_at: float, error: str | None
    ) -> None:
        if item_id not in self.tables.inbound:
            return
        row = self.tables.inbound[item_id]
        since = row.posting_since if state is InboundState.POSTING else None
        self._update_inbound(item_id, state=state, next_attempt_at=next_attempt_at, posting_since=since)
        self.tables.inbound_errors[item_id] = error

    async def set_inbound_payload(self, item_id: int, payload: dict[str, Any]) -> None:
        if item_id in self.tables.inbound:
            self._update_inbound(item_id, payload=payload_copy(payload))

    async def hold_channel(self, team_id: str, channel_id: str, until: float) -> None:
        for row in list(self.tables.inbound.values()):
            if (row.team_id, row.channel_id) == (team_id, channel_id) and row.state in PENDING:
                self._update_inbound(row.id, next_attempt_at=max(row.next_attempt_at, until))

    async def latest_inbound_at(self, origin: InboundOrigin) -> float | None:
        return max(
            (r.created_at for r in self.tables.inbound.values() if r.origin == origin),
            default=None,
        )

    async def inbound_summary(
        self, account_id: int, team_id: str | None = None, channel_id: str | None = None
    ) -> dict[str, Any]:
        every = list(self.tables.inbound.values())
        here = [
            r for r in every if team_id is not None and (r.team_id, r.channel_id) == (team_id, channel_id)
        ]
        counts: dict[str, int] = {}
        for row in every:
            if row.account_id == account_id:
                counts[row.state.value] = counts.get(row.state.value, 0) + 1
        failed = [r for r in here if r.state is InboundState.FAILED]
        cursor = self.tables.cursors.get(account_id)
        schedule = self.tables.read_schedule.get(account_id)
        last = max(
            (
                r.created_at
                for r in every
                if r.account_id == account_id and r.origin is not InboundOrigin.SENT
            ),
            default=None,
        )
        return {
            "newest_event_id": cursor.newest_event_id if cursor else None,
            "read_at": cursor.updated_at if cursor else None,
            "catching_up": bool(cursor and cursor.gap is not None) or self._chat_gap(team_id, channel_id),
            "last_event_at": last,
            "counts": counts,
            "pending": counts.get("queued", 0) + counts.get("posting", 0),
            "channel_pending": sum(1 for r in here if r.state in PENDING),
            "channel_failed": len(failed),
            "channel_last_failure": self.tables.inbound_errors.get(max(r.id for r in failed))
            if failed
            else None,
            "next_read_at": schedule[0] if schedule else None,
            "pushed": schedule[1] if schedule else False,
        }

    def _chat_gap(self, team_id: str | None, channel_id: str | None) -> bool:
        mapping = self.tables.mappings.get((team_id or "", channel_id or ""))
        return bool(
            mapping
            and mapping.encrypted
            and (mapping.account_id, mapping.conversation_id) in self.tables.chat_gaps
        )

    async def inbound_gauges(self) -> dict[str, Any]:
        """(``UpkeepStore``) Each row still to post counted once: held by a paused channel,
        catching up (an unfinished read holds it), or queued."""
        waiting = [r for r in self.tables.inbound.values() if r.state in PENDING]
        held = catching_up = 0
        for row in waiting:
            mapping = self.tables.mappings.get((row.team_id, row.channel_id))
            if mapping is not None and mapping.paused_at is not None:
                held += 1
            elif self._waits(row):
                catching_up += 1
        return {
            "queued": len(waiting) - held - catching_up,
            "held": held,
            "catching_up": catching_up,
            "oldest_waiting_at": min((r.created_at for r in waiting), default=None),
        }

    # -- CursorStore --------------------------------------------------------------

    async def get_cursor(self, account_id: int) -> str | None:
        cursor = self.tables.cursors.get(account_id)
        return cursor.newest_event_id if cursor else None

    async def read_gap(self, account_id: int) -> ReadGap | None:
        cursor = self.tables.cursors.get(account_id)
        return cursor.gap if cursor else None

    async def set_next_read(self, account_id: int, at: float, *, pushed: bool = False) -> None:
        self.tables.read_schedule[account_id] = (at, pushed)

    async def request_backfill(self, account_id: int, conversation_id: str, bridged_at: float) -> None:
        self.tables.backfills[(account_id, conversation_id)] = bridged_at

    async def pending_backfills(self) -> list[tuple[int, str, float]]:
        return [(a, c, at) for (a, c), at in sorted(self.tables.backfills.items())]

    async def finish_backfill(self, account_id: int, conversation_id: str, bridged_at: float) -> None:
        if self.tables.backfills.get((account_id, conversation_id)) == bridged_at:
            del self.tables.backfills[(account_id, conversation_id)]


def _held_to_the_ports(memory: MemoryInbound) -> tuple[InboundStore, CursorStore]:
    """Never called: mypy checks here that the fake is both role ports, as the engines are."""
    return memory, memory
