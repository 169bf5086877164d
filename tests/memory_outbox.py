"""Slack → X in memory (``RelayStore``, ``OutboxStore``, ``OutboxMediaStore``, ``UpkeepStore``),
for Delivery's unit tests in virtual time.

The same rules as ``adapters/store/relay.py``, ``outbox.py`` and ``upkeep.py``, held to the same
contract tests (tests/contract): a channel's head is its oldest unfinished row, a row leaves the
pending states once (a second claim or a late reschedule of a finished row changes nothing), a
claim renders a message's parts only from the source it was read with, a send returns the
channel's next head, an edit or delete before anything reached X changes the row itself.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from adapters.store import rows
from bridge.errors import Failure
from bridge.model import (
    Accepted,
    Account,
    InboundState,
    IncomingMessage,
    MappingKind,
    OutboxItem,
    OutboxKind,
    OutboxState,
    RenderedPart,
    Sent,
    Target,
    TokenSet,
    Unreadable,
)
from bridge.ports import BudgetStore, OutboxMediaStore, OutboxStore, RelayStore
from tests.memory_tables import MapEntry, MemoryTables, OutboxExtra

PENDING = (OutboxState.QUEUED, OutboxState.WAITING, OutboxState.SENDING)
SEEN_EVENTS_KEEP_SECONDS = 24 * 3600.0  # as adapters/store/upkeep.py


class MemoryOutbox:
    """The ``outbox`` table (and the message map and budgets it writes) in memory."""

    def __init__(self, tables: MemoryTables | None = None) -> None:
        self.tables = tables if tables is not None else MemoryTables()

    @property
    def rows(self) -> dict[int, OutboxItem]:
        return self.tables.outbox

    @property
    def accounts(self) -> dict[int, Account]:
        return self.tables.accounts

    @property
    def budgets(self) -> dict[str, tuple[str, int, int, float]]:
        return self.tables.budgets

    @property
    def untold(self) -> dict[int, Failure]:
        """The failed rows whose author is still to be told."""
        return {i: e.untold for i, e in sorted(self.tables.outbox_extra.items()) if e.untold is not None}

    # -- what tests set up ----------------------------------------------------

    def account(self, account_id: int = 1) -> Account:
        account = Account(
            account_id, "T1", f"U{account_id}", str(1000 + account_id), "me", TokenSet("a", None, None)
        )
        self.tables.accounts[account_id] = account
        return account

    def add(self, channel: str, text: str, account_id: int = 1, at: float = 0.0) -> OutboxItem:
        """A rendered message waiting in ``channel`` (as Delivery finds one after its first render)."""
        row_id = self.tables.next_id("outbox")
        row = OutboxItem(
            id=row_id,
            seq=row_id,
            part=0,
            parts_total=1,
            team_id="T1",
            channel_id=channel,
            slack_ts=f"{row_id}.000",
            author_id="U1",
            account_id=account_id,
            target=Target(conversation_id=f"{1000 + account_id}-2001"),
            text=text,
            source={},
            state=OutboxState.QUEUED,
            attempts=0,
            next_attempt_at=at,
            last_error=None,
            dm_event_id=None,
            created_at=at,
            sending_since=None,
            held_since=None,
            hourglass=False,
            ref_ts=f"{row_id}.000",
        )
        self._insert_row(row)
        return row

    def state(self, row_id: int) -> OutboxState:
        return self.tables.outbox[row_id].state

    # -- rows -----------------------------------------------------------------

    def _extra(self, item_id: int) -> OutboxExtra:
        return self.tables.outbox_extra.setdefault(item_id, OutboxExtra())

    def _insert_row(self, row: OutboxItem, extra: OutboxExtra | None = None) -> OutboxItem | None:
        """Insert unless the message part is there (the unique key); encrypted as its message
        (or its channel's mapping) is, as the SQL's trigger sets it."""
        key = (row.team_id, row.channel_id, row.slack_ts, row.part)
        if any((r.team_id, r.channel_id, r.slack_ts, r.part) == key for r in self.tables.outbox.values()):
            return None
        if not row.encrypted:
            message = next(
                (
                    r
                    for r in self.tables.outbox.values()
                    if (r.team_id, r.channel_id, r.slack_ts, r.part)
                    == (row.team_id, row.channel_id, row.ref_ts, 0)
                ),
                None,
            )
            mapping = self.tables.mappings.get((row.team_id, row.channel_id))
            if message is not None:
                row = replace(row, encrypted=message.encrypted)
            elif mapping is not None and mapping.account_id == row.account_id:
                row = replace(row, encrypted=mapping.encrypted)
        self.tables.outbox[row.id] = row
        self.tables.outbox_extra[row.id] = extra or OutboxExtra()
        return row

    def _set(self, item_id: int, **changes: Any) -> OutboxItem:
        row = replace(self.tables.outbox[item_id], **changes)
        self.tables.outbox[item_id] = row
        return row

    def _update(self, item_id: int, **changes: Any) -> OutboxItem | None:
        """Change a row still pending; None (and nothing changed) for a finished one."""
        row = self.tables.outbox.get(item_id)
        if row is None or row.state not in PENDING:
            return None
        return self._set(item_id, **changes)

    def _head(self, team_id: str, channel_id: str) -> OutboxItem | None:
        pending = self.tables.pending_outbox(team_id, channel_id)
        return pending[0] if pending else None

    # -- BudgetStore (the part Delivery's Budget uses) --------------------------

    async def get_account(self, account_id: int) -> Account | None:
        return self.tables.accounts.get(account_id)

    @asynccontextmanager
    async def refresh_lock(self, account_id: int) -> AsyncIterator[Any]:
        # These tests' tokens never expire: a refresh would be a bug in the test's setup.
        if account_id:
            raise AssertionError("no refresh in these tests")
        yield None

    async def load_budgets(self) -> list[dict[str, Any]]:
        return [
            {"key": k, "limit_": v[1], "remaining": v[2], "reset_at": v[3]} for k, v in self.budgets.items()
        ]

    async def save_budgets(self, windows: Sequence[tuple[str, int, int, float]]) -> None:
        for window in windows:
            self.budgets[window[0]] = window

    # -- RelayStore -------------------------------------------------------------

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
        row = OutboxItem(
            id=row_id,
            seq=row_id,
            part=0,
            parts_total=1,
            team_id=message.team_id,
            channel_id=message.channel_id,
            slack_ts=message.ts,
            author_id=message.user_id or "",
            account_id=mapping.account_id,
            target=mapping.target,
            text=None,
            source=json.loads(rows.message_source(message)),
            state=OutboxState.HELD if held_for else OutboxState.QUEUED,
            attempts=0,
            next_attempt_at=0.0,
            last_error=None,
            dm_event_id=None,
            created_at=now,
            sending_since=None,
            held_since=None,
            hourglass=False,
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

    def _was(self, row: OutboxItem) -> OutboxState:
        """A row's state, a held one's as it was when held (``COALESCE(held_state, state)``)."""
        held = self._extra(row.id).held_state
        return held if held is not None else row.state

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
        row = replace(
            original,
            id=row_id,
            seq=row_id,
            part=0,
            parts_total=1,
            slack_ts=f"{key_ts}:{kind.value}",
            ref_ts=original.ref_ts or original.slack_ts,
            text=None,
            source=dict(source),
            state=OutboxState.HELD if held_for else OutboxState.QUEUED,
            attempts=0,
            next_attempt_at=0.0,
            last_error=None,
            dm_event_id=None,
            created_at=now,
            sending_since=None,
            held_since=None,
            hourglass=False,
            kind=kind,
            media=None,
            media_id=None,
            media_uploaded_at=None,
            media_unfinished=0,
            deleted=False,
            encrypted=False,
            chat=None,
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

    # -- OutboxStore --------------------------------------------------------------

    async def send_in_doubt(
        self, team_id: str, channel_id: str, conversation_id: str | None, account_ids: Sequence[int]
    ) -> bool:
        sending = [r for r in self.tables.outbox.values() if r.state is OutboxState.SENDING]
        if any((r.team_id, r.channel_id) == (team_id, channel_id) for r in sending):
            return True
        if not conversation_id or not account_ids:
            return False
        for row in sending:
            mapping = self.tables.mappings.get((row.team_id, row.channel_id))
            if (
                row.account_id in account_ids
                and mapping is not None
                and mapping.conversation_id == conversation_id
                and mapping.account_id in account_ids
            ):
                return True
        return False

    async def outbox_heads(self) -> list[OutboxItem | Unreadable]:
        channels = {(r.team_id, r.channel_id) for r in self.tables.outbox.values() if r.state in PENDING}
        return [head for key in sorted(channels) if (head := self._head(*key)) is not None]

    async def get_item(self, item_id: int) -> OutboxItem | None:
        return self.tables.outbox.get(item_id)

    async def render(self, item_id: int, parts: Sequence[RenderedPart]) -> OutboxItem:
        self._render(item_id, parts)
        return self.tables.outbox[item_id]

    def _render(self, item_id: int, parts: Sequence[RenderedPart]) -> None:
        """The first part's text on the row itself; further parts as rows right behind it."""
        assert parts, "a message renders to at least one part"
        row = self._set(item_id, text=parts[0].text, media=parts[0].media, parts_total=len(parts))
        extra = self._extra(item_id)
        for index, part in enumerate(parts[1:], start=1):
            further = replace(
                row,
                id=self.tables.next_id("outbox"),
                part=index,
                text=part.text,
                media=part.media,
                source={},
                state=OutboxState.QUEUED,
                attempts=0,
                next_attempt_at=0.0,
                last_error=None,
                dm_event_id=None,
                sending_since=None,
                held_since=None,
                hourglass=False,
                media_id=None,
                media_uploaded_at=None,
                media_unfinished=0,
                deleted=False,
                encrypted=False,
                chat=None,
            )
            self._insert_row(further, OutboxExtra(target_group=extra.target_group))

    async def mark_sending(
        self,
        item_id: int,
        now: float,
        budgets: Sequence[tuple[str, int, int, float]] = (),
        *,
        parts: Sequence[RenderedPart] | None = None,
        source: dict[str, Any] | None = None,
    ) -> OutboxItem | None:
        current = self.tables.outbox.get(item_id)
        if current is None or current.state not in PENDING or current.deleted:
            return None  # cancelled (deleted in Slack), or finished, since it was read
        if parts is None and current.text is None:
            return None  # an edit reset its text since it was read: render it again
        if parts is not None:
            if current.text is not None or current.source != source:
                return None  # rendered from a source an edit has replaced since
            self._render(item_id, parts)
        await self.save_budgets(budgets)
        row = self.tables.outbox[item_id]
        return self._set(item_id, state=OutboxState.SENDING, attempts=row.attempts + 1, sending_since=now)

    async def keep_chat(self, item_id: int, text: str, chat: dict[str, Any]) -> OutboxItem | None:
        row = self.tables.outbox.get(item_id)
        if (
            row is not None
            and row.chat is None
            and row.text == text
            and row.state in PENDING
            and not row.deleted
        ):
            row = self._set(item_id, chat=json.loads(json.dumps(chat)))
        return row if row is not None and row.text == text and row.chat is not None else None

    async def drop_chat(self, item_id: int) -> None:
        if item_id in self.tables.outbox:
            self._set(item_id, chat=None)

    async def mark_sent(
        self, item_id: int, sent: Sent, now: float, budgets: Sequence[tuple[str, int, int, float]] = ()
    ) -> OutboxItem | None:
        await self.save_budgets(budgets)
        row = self.tables.outbox[item_id]
        conversation_id = sent.dm_conversation_id
        target = row.target
        if target.participant_id is None and target.conversation_id is None and conversation_id is not None:
            target = Target(conversation_id=conversation_id)  # X created the channel's group
        row = self._set(
            item_id, state=OutboxState.SENT, dm_event_id=sent.dm_event_id, target=target, last_error=None
        )
        self._extra(item_id).sent_at = now
        if sent.dm_event_id is not None:  # X took it without saying which event: no map
            self.tables.map_event(
                _entry(row, conversation_id, sent.dm_event_id, now),
            )
        if conversation_id is not None:
            self._name_conversation(row, conversation_id)
        return self._head(row.team_id, row.channel_id)

    def _name_conversation(self, row: OutboxItem, conversation_id: str) -> None:
        """X named the 1-to-1 conversation, or created the channel's group: the mapping (and, for a
        group, every row still to create it) names it now."""
        key = (row.team_id, row.channel_id)
        mapping = self.tables.mappings.get(key)
        participant = row.target.participant_id
        group = self._extra(row.id).target_group
        named = mapping is not None and participant is not None and mapping.participant_id == participant
        if mapping is not None and named and mapping.kind is MappingKind.DM:
            self.tables.mappings[key] = replace(mapping, conversation_id=conversation_id)
        if group is not None:
            if mapping is not None and mapping.kind is MappingKind.GROUP and mapping.conversation_id is None:
                self.tables.mappings[key] = replace(mapping, conversation_id=conversation_id)
            for other in list(self.tables.outbox.values()):
                if (other.team_id, other.channel_id) == key and other.target.new_group is not None:
                    self._set(other.id, target=Target(conversation_id=conversation_id))

    async def reschedule(
        self,
        item_id: int,
        state: OutboxState,
        next_attempt_at: float,
        error: str | None,
        *,
        held_since: float | None = None,
    ) -> None:
        row = self.tables.outbox.get(item_id)
        if row is None:
            return
        if row.deleted and state in (OutboxState.QUEUED, OutboxState.WAITING):
            state = OutboxState.CANCELLED  # X is known not to have it: never sent again
        self._update(
            item_id,
            state=state,
            next_attempt_at=next_attempt_at,
            last_error=error,
            held_since=row.held_since if row.held_since is not None else held_since,
        )

    async def mark_done(self, item_id: int, now: float) -> None:
        if item_id in self.tables.outbox:
            self._set(item_id, state=OutboxState.SENT, last_error=None)
            self._extra(item_id).sent_at = now

    async def mark_failed(self, item_id: int, error: str, failure: Failure = Failure.OTHER) -> None:
        if self._update(item_id, state=OutboxState.FAILED, last_error=error) is not None:
            self._extra(item_id).untold = failure

    async def failures_to_tell(self, limit: int = 100) -> list[tuple[OutboxItem | Unreadable, Failure]]:
        told: list[tuple[OutboxItem | Unreadable, Failure]] = [
            (self.tables.outbox[i], f) for i, f in self.untold.items()
        ]
        return told[:limit]

    async def failure_told(self, item_id: int) -> None:
        if item_id in self.tables.outbox_extra:
            self.tables.outbox_extra[item_id].untold = None

    async def set_hourglass(self, item_id: int, on: bool) -> None:
        if item_id in self.tables.outbox:
            self._set(item_id, hourglass=on)

    async def set_held_since(self, item_id: int, since: float | None) -> None:
        if item_id in self.tables.outbox:
            self._set(item_id, held_since=since)

    async def release_account(self, account_id: int, now: float) -> int:
        released = 0
        for row in list(self.tables.outbox.values()):
            if row.account_id == account_id and row.state in PENDING:
                state = OutboxState.SENDING if row.state is OutboxState.SENDING else OutboxState.QUEUED
                self._set(row.id, state=state, next_attempt_at=now)
                released += 1
        return released

    # -- OutboxMediaStore -----------------------------------------------------------

    async def set_media_id(
        self, item_id: int, media_id: str | None, uploaded_at: float | None = None
    ) -> None:
        if item_id in self.tables.outbox:
            self._set(item_id, media_id=media_id, media_uploaded_at=uploaded_at, media_unfinished=0)

    async def begin_media_upload(self, item_id: int) -> None:
        if item_id in self.tables.outbox:
            self._set(item_id, media_unfinished=self.tables.outbox[item_id].media_unfinished + 1)

    async def end_media_upload(self, item_id: int) -> None:
        if item_id in self.tables.outbox:
            self._set(item_id, media_unfinished=0)

    async def drop_media(self, item_id: int) -> None:
        if item_id in self.tables.outbox:
            self._set(item_id, media=None, media_id=None, media_uploaded_at=None, media_unfinished=0)

    # -- UpkeepStore ------------------------------------------------------------------

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
            if r.created_at < keep_after and r.state not in PENDING and r.state is not OutboxState.HELD
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
        pending = [r.created_at for r in self.tables.outbox.values() if r.state in PENDING]
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
            "oldest_pending_at": min((r.created_at for r in chosen if r.state in PENDING), default=None),
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


def _entry(row: OutboxItem, conversation_id: str | None, dm_event_id: str, now: float) -> MapEntry:
    return MapEntry(row.team_id, row.channel_id, row.slack_ts, row.part, conversation_id, dm_event_id, now)


def _held_to_the_ports(memory: MemoryOutbox) -> tuple[RelayStore, OutboxStore, OutboxMediaStore, BudgetStore]:
    """Never called: mypy checks here that the fake is each of these role ports, as the engines are."""
    return memory, memory, memory, memory
