"""The tables every in-memory fake of a store role shares (tests/memory_accounts.py,
memory_inbound.py, memory_relay.py, memory_outbox.py, memory_upkeep.py): one world, as one
database is for the engines' roles, so what one role writes (an outbox row sending, a message map
entry, a mapping held for another X account) is what another reads (an echo skipped, a row held).
``MemoryRole`` is every fake's base: its tables, and the outbox rows' reads and writes that
several roles make (the relay's, the outbox's, the upkeep's, and switching X accounts').

Each table keeps the columns the SQL reads; the rules live in the fakes, held to the same
contract tests as both engines (tests/contract).
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from bridge.errors import Failure
from bridge.model import (
    Account,
    ChannelMapping,
    InboundItem,
    OAuthState,
    OutboxItem,
    OutboxState,
    PendingConnection,
    ReadGap,
)


@dataclass
class AccountRow:
    """An ``accounts`` row: the account as saved, and what the port's reads derive from."""

    account: Account
    disconnected_at: float | None = None
    unreadable: bool = False  # no key would open its stored tokens (``make_unreadable``)


@dataclass
class StateRow:
    """An ``oauth_states`` row: the flow, whether it was used, the browser that confirmed it."""

    state: OAuthState
    used: bool = False
    browser_hash: str | None = None


@dataclass
class CursorRow:
    """An account's read of X (``cursors``): its cursor and unfinished read, if any."""

    newest_event_id: str | None = None
    updated_at: float = 0.0
    gap: ReadGap | None = None


OUTBOX_PENDING = (OutboxState.QUEUED, OutboxState.WAITING, OutboxState.SENDING)


@dataclass(frozen=True)
class MapEntry:
    """One ``message_map`` row: a Slack message (part) and the X event it is."""

    team_id: str
    channel_id: str
    slack_ts: str
    part: int
    conversation_id: str | None
    dm_event_id: str
    created_at: float


@dataclass
class OutboxExtra:
    """The outbox columns ``OutboxItem`` does not carry."""

    held_for: str | None = None
    held_state: OutboxState | None = None
    untold: Failure | None = None
    sent_at: float | None = None
    target_group: tuple[str, ...] | None = None  # kept when X names the group, as the column is
    deleted_at: float | None = None


@dataclass
class MemoryTables:
    """The fakes' "database": every table of every role. Several role objects (or several
    stores, as two instances on one database) share one."""

    accounts: dict[int, AccountRow] = field(default_factory=dict)
    oauth_states: dict[str, StateRow] = field(default_factory=dict)
    pending: dict[str, PendingConnection] = field(default_factory=dict)  # pending_connections
    # One refresh per account at a time among the stores sharing these tables (the engines'
    # row or advisory locks).
    refresh_locks: defaultdict[int, asyncio.Lock] = field(default_factory=lambda: defaultdict(asyncio.Lock))
    mappings: dict[tuple[str, str], ChannelMapping] = field(default_factory=dict)
    outbox: dict[int, OutboxItem] = field(default_factory=dict)
    outbox_extra: dict[int, OutboxExtra] = field(default_factory=dict)
    message_map: list[MapEntry] = field(default_factory=list)
    inbound: dict[int, InboundItem] = field(default_factory=dict)
    inbound_errors: dict[int, str | None] = field(default_factory=dict)  # inbound.last_error
    inbound_posted_at: dict[int, float] = field(default_factory=dict)
    cursors: dict[int, CursorRow] = field(default_factory=dict)
    parked_cursors: dict[tuple[int, str], CursorRow] = field(default_factory=dict)
    read_schedule: dict[int, tuple[float, bool]] = field(default_factory=dict)  # next read, pushed
    # (account id, conversation id) -> bridged at: histories asked for and not yet queued.
    backfills: dict[tuple[int, str], float] = field(default_factory=dict)
    chat_gaps: set[tuple[int, str]] = field(default_factory=set)  # X Chat reads unfinished
    seen_events: dict[str, float] = field(default_factory=dict)
    budgets: dict[str, tuple[str, int, int, float]] = field(default_factory=dict)
    last_ids: dict[str, int] = field(default_factory=dict)

    def next_id(self, table: str) -> int:
        """A new row id of ``table`` (never reused, as a sequence's)."""
        self.last_ids[table] = self.last_ids.get(table, 0) + 1
        return self.last_ids[table]

    def save_budgets(self, windows: Sequence[tuple[str, int, int, float]]) -> None:
        """One window per key, the last one given winning (the budgets role's write, which
        claiming and sending a row make in the same transaction)."""
        for key, limit, remaining, reset_at in windows:
            self.budgets[key] = (key, limit, remaining, float(reset_at))

    def map_event(self, entry: MapEntry) -> bool:
        """Insert into the message map unless a row has its key or its event in its channel
        (the two unique keys: ON CONFLICT DO NOTHING). Whether it was written."""
        for kept in self.message_map:
            same_message = (kept.team_id, kept.channel_id, kept.slack_ts, kept.part) == (
                entry.team_id,
                entry.channel_id,
                entry.slack_ts,
                entry.part,
            )
            same_event = (kept.dm_event_id, kept.team_id, kept.channel_id) == (
                entry.dm_event_id,
                entry.team_id,
                entry.channel_id,
            )
            if same_message or same_event:
                return False
        self.message_map.append(entry)
        return True

    def pending_outbox(self, team_id: str, channel_id: str) -> list[OutboxItem]:
        """The channel's unfinished outbox rows in sending order."""
        found = [
            r
            for r in self.outbox.values()
            if (r.team_id, r.channel_id) == (team_id, channel_id) and r.state.pending
        ]
        return sorted(found, key=lambda r: (r.seq, r.part))


# The columns of an outbox row that its sending fills, as an insert leaves them (nothing attempted).
UNSENT: dict[str, Any] = {
    "state": OutboxState.QUEUED,
    "attempts": 0,
    "next_attempt_at": 0.0,
    "last_error": None,
    "dm_event_id": None,
    "sending_since": None,
    "held_since": None,
    "hourglass": False,
    "media_id": None,
    "media_uploaded_at": None,
    "media_unfinished": 0,
    "deleted": False,
    "encrypted": False,
    "chat": None,
}


def unsent_row(row_id: int, **columns: Any) -> OutboxItem:
    """A new outbox row of one part: id and seq ``row_id``, ``columns``, the rest ``UNSENT``."""
    return OutboxItem(**{"id": row_id, "seq": row_id, "part": 0, "parts_total": 1, **UNSENT, **columns})


def unsent_copy(row: OutboxItem, row_id: int, **columns: Any) -> OutboxItem:
    """A new row ``row_id`` made from ``row`` (a further part, a correction): its columns but
    ``columns``, and nothing of its sending (``UNSENT``)."""
    return replace(row, id=row_id, **{**UNSENT, **columns})


def snowflake_number(event_id: str | None) -> int | None:
    """An event id as the SQL compares it (``inbound.NUMBER``): digits as a number, else 0."""
    if event_id is None:
        return None
    return int(event_id) if event_id.isdigit() else 0


def payload_copy(payload: dict[str, Any]) -> dict[str, Any]:
    """A payload as stored: a copy, so the caller's later changes do not reach the row (JSON)."""
    copied: dict[str, Any] = json.loads(json.dumps(payload))
    return copied


class MemoryRole:
    """A role's fake on ``tables`` (new empty ones when none are given), and the outbox rows as
    the roles that write them read and write them (the relay, outbox and upkeep fakes, and the
    accounts' and mappings' that hold or give up rows)."""

    def __init__(self, tables: MemoryTables | None = None) -> None:
        self.tables = tables if tables is not None else MemoryTables()
        # Ids of accounts whose unreadable tokens were logged, once per store (as ``rows.account``).
        self.unreadable_told: set[int] = set()

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
        if row is None or row.state not in OUTBOX_PENDING:
            return None
        return self._set(item_id, **changes)

    def _head(self, team_id: str, channel_id: str) -> OutboxItem | None:
        pending = self.tables.pending_outbox(team_id, channel_id)
        return pending[0] if pending else None

    def _was(self, row: OutboxItem) -> OutboxState:
        """A row's state, a held one's as it was when held (``COALESCE(held_state, state)``)."""
        held = self._extra(row.id).held_state
        return held if held is not None else row.state
