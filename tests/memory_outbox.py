"""Slack → X in memory (``OutboxStore``, ``OutboxMediaStore``, and with tests/memory_relay.py and
tests/memory_upkeep.py ``RelayStore`` and the outbox side of ``UpkeepStore``), for Delivery's unit
tests in virtual time.

The same rules as ``adapters/store/relay.py``, ``outbox.py`` and ``upkeep.py``, held to the same
contract tests (tests/contract): a channel's head is its oldest unfinished row, a row leaves the
pending states once (a second claim or a late reschedule of a finished row changes nothing), a
claim renders a message's parts only from the source it was read with, a send returns the
channel's next head, an edit or delete before anything reached X changes the row itself.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from bridge.errors import Failure
from bridge.model import (
    Account,
    MappingKind,
    OutboxItem,
    OutboxState,
    RenderedPart,
    Sent,
    Target,
    TokenSet,
    Unreadable,
)
from bridge.ports import OutboxMediaStore, OutboxStore, RelayStore
from tests.memory_relay import MemoryRelay
from tests.memory_tables import OUTBOX_PENDING, AccountRow, MapEntry, OutboxExtra, unsent_copy, unsent_row
from tests.memory_upkeep import MemoryUpkeep


class MemoryOutbox(MemoryRelay, MemoryUpkeep):
    """The ``outbox`` table (and the message map and budgets it writes) in memory: the relay's
    side (tests/memory_relay.py), the delivery worker's (here) and the upkeep's
    (tests/memory_upkeep.py) over one set of tables."""

    @property
    def rows(self) -> dict[int, OutboxItem]:
        return self.tables.outbox

    @property
    def accounts(self) -> dict[int, Account]:
        """The accounts as saved, by id (what tests set up with ``account``)."""
        return {i: row.account for i, row in sorted(self.tables.accounts.items())}

    @property
    def untold(self) -> dict[int, Failure]:
        """The failed rows whose author is still to be told."""
        return {i: e.untold for i, e in sorted(self.tables.outbox_extra.items()) if e.untold is not None}

    # -- what tests set up ----------------------------------------------------

    def account(self, account_id: int = 1) -> Account:
        """Account ``account_id`` of Slack user ``U<id>``, X user ``1000 + id``, connected."""
        account = Account(
            account_id, "T1", f"U{account_id}", str(1000 + account_id), "me", TokenSet("a", None, None)
        )
        self.tables.accounts[account_id] = AccountRow(account)
        # As an insert naming its id: the next account saved takes a later one.
        self.tables.last_ids["accounts"] = max(self.tables.last_ids.get("accounts", 0), account_id)
        return account

    def add(self, channel: str, text: str, account_id: int = 1, at: float = 0.0) -> OutboxItem:
        """A rendered message waiting in ``channel`` (as Delivery finds one after its first render)."""
        row_id = self.tables.next_id("outbox")
        row = unsent_row(
            row_id,
            team_id="T1",
            channel_id=channel,
            slack_ts=f"{row_id}.000",
            author_id="U1",
            account_id=account_id,
            target=Target(conversation_id=f"{1000 + account_id}-2001"),
            text=text,
            source={},
            next_attempt_at=at,
            created_at=at,
            ref_ts=f"{row_id}.000",
        )
        self._insert_row(row)
        return row

    def state(self, row_id: int) -> OutboxState:
        return self.tables.outbox[row_id].state

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
        pending = (r for r in self.tables.outbox.values() if r.state in OUTBOX_PENDING)
        channels = {(r.team_id, r.channel_id) for r in pending}
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
            further = unsent_copy(
                row, self.tables.next_id("outbox"), part=index, text=part.text, media=part.media, source={}
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
        if current is None or current.state not in OUTBOX_PENDING or current.deleted:
            return None  # cancelled (deleted in Slack), or finished, since it was read
        if parts is None and current.text is None:
            return None  # an edit reset its text since it was read: render it again
        if parts is not None:
            if current.text is not None or current.source != source:
                return None  # rendered from a source an edit has replaced since
            self._render(item_id, parts)
        self.tables.save_budgets(budgets)
        row = self.tables.outbox[item_id]
        return self._set(item_id, state=OutboxState.SENDING, attempts=row.attempts + 1, sending_since=now)

    async def keep_chat(self, item_id: int, text: str, chat: dict[str, Any]) -> OutboxItem | None:
        row = self.tables.outbox.get(item_id)
        if (
            row is not None
            and row.chat is None
            and row.text == text
            and row.state in OUTBOX_PENDING
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
        self.tables.save_budgets(budgets)
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
            if row.account_id == account_id and row.state in OUTBOX_PENDING:
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


def _entry(row: OutboxItem, conversation_id: str | None, dm_event_id: str, now: float) -> MapEntry:
    return MapEntry(row.team_id, row.channel_id, row.slack_ts, row.part, conversation_id, dm_event_id, now)


def _held_to_the_ports(memory: MemoryOutbox) -> tuple[RelayStore, OutboxStore, OutboxMediaStore]:
    """Never called: mypy checks here that the fake is each of these role ports, as the engines are."""
    return memory, memory, memory
