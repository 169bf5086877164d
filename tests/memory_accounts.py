"""The account-side roles of the store, in memory: accounts and tokens, the connect flow,
mappings (with their lookups) and X's rate-limit windows, for unit tests that need a store
without a database.

Held to the same contract tests as both engines (tests/contract runs them on SQLite, PostgreSQL
and ``tests.memory_store.MemoryStore``), so the fast tests cannot drift from the SQL. Each role is
a class of its own over one ``MemoryTables`` (the "database" every role's fake shares), so a
consumer can be handed only the role it takes; ``MemoryStore`` is every role together. What the
SQL of these roles does to the other roles' tables is done here too: switching X accounts holds
the outbox rows for the previous one and parks its read cursor, and giving up a group returns the
rows addressed to it.

What it does not model: tokens are kept in the clear (there is no cipher; ``make_unreadable``
stands in for tokens no key opens).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any, TypeVar

from bridge.model import (
    Account,
    ChannelMapping,
    MappingKind,
    OAuthState,
    OutboxItem,
    OutboxState,
    PendingConnection,
    TokenSet,
    XUser,
)
from bridge.ports import AccountStore, BudgetStore, ConnectFlowStore, LockedAccount, MappingStore
from tests.memory_tables import OUTBOX_PENDING, AccountRow, CursorRow, MemoryRole, StateRow

log = logging.getLogger(__name__)

T = TypeVar("T")

OAUTH_STATE_KEEP = 3600.0  # as adapters/store/accounts.py: expired states swept by the next save


def _tokens(tokens: TokenSet) -> TokenSet:
    """The tokens as a read gives them back: an empty refresh token is none (as the column is)."""
    return replace(tokens, refresh_token=tokens.refresh_token or None)


def _matching(found: list[T], equal: dict[str, Any]) -> list[T]:
    """Those of ``found`` whose attributes equal every filter given (None: not filtered), in order."""
    given = {name: value for name, value in equal.items() if value is not None}
    return [one for one in found if all(getattr(one, name) == value for name, value in given.items())]


def _by_channel(found: list[ChannelMapping]) -> list[ChannelMapping]:
    return sorted(found, key=lambda m: (m.team_id, m.channel_id))


class MemoryAccounts(MemoryRole):
    """``AccountStore``: accounts, their tokens and refresh lock, finding them by team or X user,
    and what disconnecting or switching an account does to its mappings."""

    def _read(self, row: AccountRow) -> Account:
        if not row.unreadable:
            self.unreadable_told.discard(row.account.id)
            return row.account
        if row.account.id not in self.unreadable_told:
            self.unreadable_told.add(row.account.id)
            log.error(
                "an X account's stored tokens cannot be decrypted: it needs reconnecting",
                extra={"account_id": row.account.id},
            )
        no_tokens = TokenSet("", None, None, row.account.tokens.scope)
        return replace(row.account, tokens=no_tokens, needs_reconnect=True)

    def make_unreadable(self, account_id: int) -> None:
        """Test setup: the account's stored tokens no longer open (its key rotated away)."""
        self.tables.accounts[account_id].unreadable = True

    async def save_account(self, team_id: str, slack_user_id: str, user: XUser, tokens: TokenSet) -> Account:
        rows = self.tables.accounts.values()
        same = [
            r.account.id
            for r in rows
            if (r.account.team_id, r.account.slack_user_id) == (team_id, slack_user_id)
        ]
        account_id = same[0] if same else self.tables.next_id("accounts")
        account = Account(account_id, team_id, slack_user_id, user.id, user.username, _tokens(tokens))
        self.tables.accounts[account_id] = AccountRow(account)
        return self._read(self.tables.accounts[account_id])

    async def get_account(self, account_id: int) -> Account | None:
        row = self.tables.accounts.get(account_id)
        return self._read(row) if row else None

    async def account_for_user(self, team_id: str, slack_user_id: str) -> Account | None:
        found = await self._find(team_id=team_id, slack_user_id=slack_user_id)
        return found[0] if found else None

    async def update_tokens(self, account_id: int, tokens: TokenSet) -> None:
        row = self.tables.accounts.get(account_id)
        if row is not None:
            row.account = replace(row.account, tokens=_tokens(tokens))
            row.unreadable = False

    async def set_needs_reconnect(self, account_id: int, needs: bool) -> None:
        row = self.tables.accounts.get(account_id)
        if row is not None:
            row.account = replace(row.account, needs_reconnect=needs)

    async def list_accounts(self) -> list[Account]:
        return [self._read(self.tables.accounts[i]) for i in sorted(self.tables.accounts)]

    async def find_accounts(
        self, *, team_id: str | None = None, x_user_id: str | None = None
    ) -> list[Account]:
        return await self._find(team_id=team_id, x_user_id=x_user_id)

    async def _find(self, **equal: str | None) -> list[Account]:
        return _matching(await self.list_accounts(), equal)

    async def account_ids_to_read(self) -> list[int]:
        # The stored flag, as the SQL reads it: an unreadable account is listed, and flagged on reading.
        rows = self.tables.accounts
        return [i for i in sorted(rows) if not rows[i].account.needs_reconnect]

    async def accounts_by_id(self, ids: Sequence[int]) -> list[Account]:
        return [self._read(self.tables.accounts[i]) for i in sorted(set(ids)) if i in self.tables.accounts]

    async def usernames_needing_reconnect(self) -> list[str]:
        """X usernames of the connected accounts X refused a refresh or whose tokens do not open."""
        rows = [r for r in self.tables.accounts.values() if r.disconnected_at is None]
        return sorted(r.account.x_username for r in rows if r.unreadable or r.account.needs_reconnect)

    async def disconnect_account(self, account_id: int, now: float, by: str) -> list[ChannelMapping]:
        row = self.tables.accounts.get(account_id)
        if row is not None:
            gone = TokenSet("", None, None, row.account.tokens.scope)
            row.account = replace(row.account, tokens=gone, needs_reconnect=True, disconnected=True)
            row.disconnected_at, row.unreadable = now, False
        return self._update_mappings(
            lambda m: m.account_id == account_id and m.paused_at is None,
            paused_at=now,
            paused_by=by,
        )

    async def resume_mappings(self, account_id: int) -> list[ChannelMapping]:
        return self._update_mappings(
            lambda m: m.account_id == account_id and m.paused_at is not None and m.held_for is None,
            paused_at=None,
            paused_by=None,
        )

    async def hold_for_previous_account(
        self, account_id: int, previous: XUser, current: XUser, now: float
    ) -> list[ChannelMapping]:
        held: list[ChannelMapping] = []
        if previous.id != current.id:
            # A conversation id is the previous account's conversation; a 1-to-1 by person (kind
            # dm) or a group not created yet is not anyone's yet.
            held = self._update_mappings(
                lambda m: (
                    m.account_id == account_id
                    and m.held_for is None
                    and m.kind is not MappingKind.DM
                    and m.conversation_id is not None
                ),
                held_for=previous.id,
                held_for_username=previous.username,
                when_paused=now,
            )
            self._hold_rows(account_id, previous.id)
            self._switch_cursor(account_id, previous.id, current.id, now)
        # Then what was held for the account connected now is its own again (resumed and
        # released by resume_mappings and release_account, like any paused mapping).
        self._update_mappings(
            lambda m: m.account_id == account_id and m.held_for == current.id,
            held_for=None,
            held_for_username=None,
        )
        self._release_rows(account_id, current.id, now)
        return held

    def _hold_rows(self, account_id: int, x_user_id: str) -> None:
        """The account's unsent rows for a conversation id wait for ``x_user_id`` (``held``)."""
        for row in list(self.tables.outbox.values()):
            if (
                row.account_id == account_id
                and row.state in OUTBOX_PENDING
                and row.target.conversation_id is not None
            ):
                extra = self._extra(row.id)
                extra.held_state, extra.held_for = row.state, x_user_id
                self._set(row.id, state=OutboxState.HELD)

    def _release_rows(self, account_id: int, x_user_id: str, now: float) -> None:
        """The account's rows held for ``x_user_id`` are due now, in the state they had."""
        for row in list(self.tables.outbox.values()):
            extra = self._extra(row.id)
            if row.account_id == account_id and row.state is OutboxState.HELD and extra.held_for == x_user_id:
                state = extra.held_state or OutboxState.QUEUED
                extra.held_for, extra.held_state = None, None
                self._set(row.id, state=state, next_attempt_at=now)

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

    def _update_mappings(
        self,
        which: Callable[[ChannelMapping], bool],
        *,
        when_paused: float | None = None,
        **changes: Any,
    ) -> list[ChannelMapping]:
        """Change the mappings ``which`` accepts; returns them as changed, by channel. With
        ``when_paused`` those not paused yet are paused then, by "switch"."""
        changed: list[ChannelMapping] = []
        for key, mapping in self.tables.mappings.items():
            if which(mapping):
                if when_paused is not None:
                    changes["paused_at"] = mapping.paused_at if mapping.paused_at is not None else when_paused
                    changes["paused_by"] = mapping.paused_by if mapping.paused_by is not None else "switch"
                self.tables.mappings[key] = replace(mapping, **changes)
                changed.append(self.tables.mappings[key])
        return _by_channel(changed)

    @asynccontextmanager
    async def refresh_lock(self, account_id: int) -> AsyncIterator[LockedAccount]:
        # One refresh per account at a time among the stores sharing these tables; what the
        # block wrote stays written whatever it raises (nothing here rolls back).
        async with self.tables.refresh_locks[account_id]:
            yield _LockedRow(self, account_id)


class _LockedRow:
    """``LockedAccount`` over the fake's row."""

    def __init__(self, accounts: MemoryAccounts, account_id: int) -> None:
        self._accounts = accounts
        self._id = account_id

    async def read(self) -> Account | None:
        return await self._accounts.get_account(self._id)

    async def save_tokens(self, tokens: TokenSet) -> None:
        await self._accounts.update_tokens(self._id, tokens)

    async def flag_reconnect(self) -> None:
        await self._accounts.set_needs_reconnect(self._id, True)


class MemoryConnectFlow(MemoryRole):
    """``ConnectFlowStore``: OAuth states used once by the browser that confirmed them, and
    connections waiting for their Slack user's click. No call awaits midway, so each "use once"
    step is atomic, as the engines' single statements are."""

    async def save_oauth_state(self, state: OAuthState) -> None:
        swept = time.time() - OAUTH_STATE_KEEP
        states = self.tables.oauth_states
        for name in [n for n, row in states.items() if row.state.expires_at < swept]:
            del states[name]
        if state.state in states:
            raise ValueError("an OAuth state with this value exists")  # the primary key's refusal
        states[state.state] = StateRow(state)

    def _live(self, state: str, now: float) -> StateRow | None:
        row = self.tables.oauth_states.get(state)
        return row if row is not None and not row.used and row.state.expires_at > now else None

    async def get_oauth_state(self, state: str, now: float) -> OAuthState | None:
        row = self._live(state, now)
        return row.state if row is not None and row.browser_hash is None else None

    async def confirm_oauth_state(self, state: str, now: float, browser_hash: str) -> OAuthState | None:
        row = self._live(state, now)
        if row is None or row.browser_hash is not None:
            return None
        row.browser_hash = browser_hash
        return row.state

    async def consume_oauth_state(self, state: str, now: float, browser_hash: str) -> OAuthState | None:
        row = self._live(state, now)
        if row is None or row.browser_hash != browser_hash:
            return None
        row.used = True
        return row.state

    async def save_pending_connection(self, pending: PendingConnection) -> None:
        if pending.id in self.tables.pending:
            raise ValueError("a pending connection with this id exists")  # the primary key's refusal
        # As the columns keep it: the X user's id and handle only.
        kept = XUser(pending.x_user.id, pending.x_user.username)
        self.tables.pending[pending.id] = replace(pending, x_user=kept, tokens=_tokens(pending.tokens))

    async def get_pending_connection(self, pending_id: str, now: float) -> PendingConnection | None:
        found = self.tables.pending.get(pending_id)
        return found if found is not None and found.expires_at > now else None

    async def take_pending_connection(
        self, pending_id: str, team_id: str, slack_user_id: str, now: float
    ) -> PendingConnection | None:
        found = await self.get_pending_connection(pending_id, now)
        if found is None or (found.team_id, found.slack_user_id) != (team_id, slack_user_id):
            return None
        return self.tables.pending.pop(pending_id)

    async def take_expired_pending_connections(self, now: float) -> list[PendingConnection]:
        expired = sorted(i for i, p in self.tables.pending.items() if p.expires_at <= now)
        return [self.tables.pending.pop(i) for i in expired]


class MemoryMappings(MemoryRole):
    """``MappingStore``: one mapping per channel, and the lookups by what the caller knows (which
    accounts bridge groups, when an account first bridged)."""

    async def get_mapping(self, team_id: str, channel_id: str) -> ChannelMapping | None:
        return self.tables.mappings.get((team_id, channel_id))

    async def create_mapping(
        self, mapping: ChannelMapping, *, history: bool = False
    ) -> ChannelMapping | None:
        key = (mapping.team_id, mapping.channel_id)
        if key in self.tables.mappings:
            return None
        # A new mapping is neither paused nor held, whatever the value handed in says (those
        # columns are not written by the insert).
        self.tables.mappings[key] = replace(
            mapping,
            paused_at=None,
            paused_by=None,
            held_for=None,
            held_for_username=None,
            group_participants=tuple(mapping.group_participants),
        )
        if history and mapping.conversation_id:
            self.tables.backfills[(mapping.account_id, mapping.conversation_id)] = mapping.created_at
        return mapping

    async def delete_mapping(
        self, team_id: str, channel_id: str, *, made: ChannelMapping | None = None
    ) -> ChannelMapping | None:
        found = self.tables.mappings.get((team_id, channel_id))
        if found is None:
            return None
        if made is not None and (found.created_by, found.created_at) != (made.created_by, made.created_at):
            return None  # another mapping was made since the caller checked ``made``
        return self.tables.mappings.pop((team_id, channel_id))

    async def abandon_group(
        self, team_id: str, channel_id: str, group: tuple[str, ...]
    ) -> tuple[ChannelMapping | None, list[OutboxItem]]:
        found = self.tables.mappings.get((team_id, channel_id))
        waiting = (
            found is not None
            and found.kind is MappingKind.GROUP
            and found.conversation_id is None
            and found.group_participants == tuple(group)
        )
        removed = self.tables.mappings.pop((team_id, channel_id)) if waiting else None
        rows = [
            r
            for r in self.tables.pending_outbox(team_id, channel_id)
            if self._extra(r.id).target_group == tuple(group)
        ]
        return removed, rows

    async def set_conversation_id(self, team_id: str, channel_id: str, conversation_id: str) -> None:
        found = self.tables.mappings.get((team_id, channel_id))
        if found is not None:
            self.tables.mappings[(team_id, channel_id)] = replace(found, conversation_id=conversation_id)

    async def list_mappings(self) -> list[ChannelMapping]:
        return [self.tables.mappings[key] for key in sorted(self.tables.mappings)]

    async def find_mappings(
        self,
        *,
        team_id: str | None = None,
        account_id: int | None = None,
        conversation_id: str | None = None,
    ) -> list[ChannelMapping]:
        given = {"team_id": team_id, "account_id": account_id, "conversation_id": conversation_id}
        return _matching(await self.list_mappings(), given)

    async def accounts_with_groups(self) -> set[int]:
        # A group made by the bridge (no id while it is created), or linked by its id (a 1-to-1's
        # id is "A-B").
        return {
            m.account_id
            for m in self.tables.mappings.values()
            if m.kind is MappingKind.GROUP or (m.conversation_id and "-" not in m.conversation_id)
        }

    async def first_bridged_at(self, account_id: int) -> float | None:
        times = [m.created_at for m in self.tables.mappings.values() if m.account_id == account_id]
        return float(min(times)) if times else None


class MemoryBudgets(MemoryRole):
    """``BudgetStore``: one window per key, the last one saved winning."""

    async def load_budgets(self) -> list[dict[str, Any]]:
        return [
            {"key": key, "limit_": limit, "remaining": remaining, "reset_at": reset_at}
            for key, limit, remaining, reset_at in self.tables.budgets.values()
        ]

    async def save_budgets(self, windows: Sequence[tuple[str, int, int, float]]) -> None:
        self.tables.save_budgets(windows)


# mypy holds each fake to its port (a method missing or of another shape fails the check).
_accounts: AccountStore = MemoryAccounts()
_connect_flow: ConnectFlowStore = MemoryConnectFlow()
_mappings: MappingStore = MemoryMappings()
_budgets: BudgetStore = MemoryBudgets()
