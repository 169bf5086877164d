"""The message-side fakes together over one set of tables, as the contract tests use a store: the
inbound and cursor roles (tests/memory_inbound.py) and the relay, outbox, media and upkeep roles
(tests/memory_outbox.py), plus the few account and mapping steps those tests set up with
(connecting, mapping, pausing, switching X accounts), kept to what the message side reads of them.

``MemoryTablesEngine.store()`` is another store on the same tables: what a restart, or a second
instance, of an engine sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from bridge.model import Account, ChannelMapping, MappingKind, OutboxState, TokenSet, XUser
from bridge.ports import InboundStore, OutboxStore, UpkeepStore
from tests.memory_inbound import MemoryInbound
from tests.memory_outbox import MemoryOutbox
from tests.memory_tables import CursorRow, MemoryTables


class MemoryMessageStore(MemoryInbound, MemoryOutbox):
    """Every message-side role in memory, on ``tables``."""

    def __init__(self, tables: MemoryTables | None = None) -> None:
        self.tables = tables if tables is not None else MemoryTables()

    async def open(self) -> None:
        """Nothing to open: the tables are there."""

    async def close(self) -> None:
        """Nothing to close: the tables stay for the next store on them."""

    async def ping(self) -> bool:
        return True

    # -- the account and mapping steps the message side's contract tests set up with ------

    async def save_account(self, team_id: str, slack_user_id: str, user: XUser, tokens: TokenSet) -> Account:
        """Connect (or connect again: one account per Slack user)."""
        found = next(
            (
                a
                for a in self.tables.accounts.values()
                if (a.team_id, a.slack_user_id) == (team_id, slack_user_id)
            ),
            None,
        )
        account_id = found.id if found else self.tables.next_id("accounts")
        account = Account(account_id, team_id, slack_user_id, user.id, user.username, tokens)
        self.tables.accounts[account_id] = account
        return account

    async def account_for_user(self, team_id: str, slack_user_id: str) -> Account | None:
        return next(
            (
                a
                for a in self.tables.accounts.values()
                if (a.team_id, a.slack_user_id) == (team_id, slack_user_id)
            ),
            None,
        )

    async def get_mapping(self, team_id: str, channel_id: str) -> ChannelMapping | None:
        return self.tables.mappings.get((team_id, channel_id))

    async def create_mapping(
        self, mapping: ChannelMapping, *, history: bool = False
    ) -> ChannelMapping | None:
        key = (mapping.team_id, mapping.channel_id)
        if key in self.tables.mappings:
            return None
        self.tables.mappings[key] = mapping
        if history and mapping.conversation_id:
            await self.request_backfill(mapping.account_id, mapping.conversation_id, mapping.created_at)
        return mapping

    async def delete_mapping(
        self, team_id: str, channel_id: str, *, made: ChannelMapping | None = None
    ) -> ChannelMapping | None:
        found = self.tables.mappings.get((team_id, channel_id))
        if found is None or (
            made is not None and (found.created_by, found.created_at) != (made.created_by, made.created_at)
        ):
            return None
        return self.tables.mappings.pop((team_id, channel_id))

    def _change_mappings(self, account_id: int, when: Any, **changes: Any) -> list[ChannelMapping]:
        changed = []
        for key, mapping in sorted(self.tables.mappings.items()):
            if mapping.account_id == account_id and when(mapping):
                self.tables.mappings[key] = replace(mapping, **changes)
                changed.append(self.tables.mappings[key])
        return changed

    async def disconnect_account(self, account_id: int, now: float, by: str) -> list[ChannelMapping]:
        account = self.tables.accounts[account_id]
        self.tables.accounts[account_id] = replace(
            account, tokens=TokenSet("", None, None), needs_reconnect=True, disconnected=True
        )
        return self._change_mappings(account_id, lambda m: m.paused_at is None, paused_at=now, paused_by=by)

    async def resume_mappings(self, account_id: int) -> list[ChannelMapping]:
        return self._change_mappings(
            account_id,
            lambda m: m.paused_at is not None and m.held_for is None,
            paused_at=None,
            paused_by=None,
        )

    async def hold_for_previous_account(
        self, account_id: int, previous: XUser, current: XUser, now: float
    ) -> list[ChannelMapping]:
        held: list[ChannelMapping] = []
        if previous.id != current.id:
            for key, m in sorted(self.tables.mappings.items()):
                if (
                    m.account_id == account_id
                    and m.held_for is None
                    and m.kind is not MappingKind.DM
                    and m.conversation_id is not None
                ):
                    self.tables.mappings[key] = replace(
                        m,
                        paused_at=m.paused_at if m.paused_at is not None else now,
                        paused_by=m.paused_by if m.paused_by is not None else "switch",
                        held_for=previous.id,
                        held_for_username=previous.username,
                    )
                    held.append(self.tables.mappings[key])
            for row in list(self.tables.outbox.values()):
                if (
                    row.account_id == account_id
                    and row.state.pending
                    and row.target.conversation_id is not None
                ):
                    extra = self._extra(row.id)
                    extra.held_state, extra.held_for = row.state, previous.id
                    self._set(row.id, state=OutboxState.HELD)
            self._switch_cursor(account_id, previous.id, current.id, now)
        self._change_mappings(
            account_id, lambda m: m.held_for == current.id, held_for=None, held_for_username=None
        )
        for row in list(self.tables.outbox.values()):
            extra = self._extra(row.id)
            if (
                row.account_id == account_id
                and row.state is OutboxState.HELD
                and extra.held_for == current.id
            ):
                state = extra.held_state or OutboxState.QUEUED
                extra.held_for, extra.held_state = None, None
                self._set(row.id, state=state, next_attempt_at=now)
        return held

    def _switch_cursor(self, account_id: int, previous_id: str, current_id: str, now: float) -> None:
        """The cursor is the X account's: the previous one's parked (its unfinished read
        without its token), the current one's put back (its read starting again from the newest)."""
        cursors, parked = self.tables.cursors, self.tables.parked_cursors
        if account_id in cursors:
            kept = cursors.pop(account_id)
            gap = kept.gap and replace(kept.gap, token=None, restarts=0)
            parked[(account_id, previous_id)] = CursorRow(kept.newest_event_id, now, gap)
        back = parked.pop((account_id, current_id), None)
        if back is not None:
            gap = back.gap and replace(back.gap, token=None, restarts=0, opened_at=now)
            cursors[account_id] = CursorRow(back.newest_event_id, now, gap)


@dataclass
class MemoryTablesEngine:
    """The memory "engine" of the contract tests: each ``store()`` another store on one set of
    tables (a restart, or a second instance). It has no SQL to inspect."""

    name: str = "memory"
    tables: MemoryTables = field(default_factory=MemoryTables)

    def store(self) -> MemoryMessageStore:
        return MemoryMessageStore(self.tables)


def _held_to_the_ports(memory: MemoryMessageStore) -> tuple[UpkeepStore, InboundStore, OutboxStore]:
    """Never called: mypy checks here that the fakes together are the upkeep role too (its
    inbound gauges are the inbound fake's), beside the roles each is alone."""
    return memory, memory, memory
