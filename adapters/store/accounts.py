"""Accounts and their tokens, OAuth states and connections waiting for a click: one SQL for both
engines (``bridge.ports.AccountStore`` and ``ConnectFlowStore``).

Tokens and PKCE verifiers are Fernet-encrypted with ``BRIDGE_ENCRYPTION_KEY`` (``rows``). Every
"use once" step (an OAuth state confirmed or consumed, a pending connection taken) is a single
``UPDATE``/``DELETE … RETURNING``, so racing callers, even on two instances, get one winner.
"""

from __future__ import annotations

import time
from typing import Any

from adapters.store import rows
from adapters.store.engine import Engine
from adapters.store.roles import StoreBase
from bridge.model import Account, ChannelMapping, OAuthState, PendingConnection, TokenSet, XUser
from migrations import PENDING_STATES

OAUTH_STATE_KEEP = 3600.0  # seconds an expired OAuth state is kept before a new one sweeps it


class AccountsRole(StoreBase):
    """The ``accounts`` table, and what switching or disconnecting an account does to its
    mappings, unsent rows and read cursor."""

    def _account(self, row: dict[str, Any]) -> Account:
        return rows.account(row, self._cipher, self._unreadable_accounts)

    async def save_account(self, team_id: str, slack_user_id: str, user: XUser, tokens: TokenSet) -> Account:
        columns = rows.token_columns(tokens, self._cipher)
        now = time.time()
        row = await self.engine.fetchone(
            """
            INSERT INTO accounts (team_id, slack_user_id, x_user_id, x_username, access_token,
                                  refresh_token, expires_at, scope, needs_reconnect,
                                  created_at, updated_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)
            ON CONFLICT (team_id, slack_user_id) DO UPDATE SET
                x_user_id = excluded.x_user_id, x_username = excluded.x_username,
                access_token = excluded.access_token, refresh_token = excluded.refresh_token,
                expires_at = excluded.expires_at, scope = excluded.scope,
                needs_reconnect = 0, disconnected_at = NULL, updated_at = excluded.updated_at
            RETURNING *
            """,
            team_id,
            slack_user_id,
            user.id,
            user.username,
            *columns.values(),
            now,
            now,
        )
        assert row is not None
        return self._account(row)

    async def get_account(self, account_id: int) -> Account | None:
        return await self._read_account(self.engine, account_id)

    async def _read_account(self, engine: Engine, account_id: int) -> Account | None:
        row = await engine.fetchone("SELECT * FROM accounts WHERE id = ?", account_id)
        return self._account(row) if row else None

    async def account_for_user(self, team_id: str, slack_user_id: str) -> Account | None:
        row = await self.engine.fetchone(
            "SELECT * FROM accounts WHERE team_id = ? AND slack_user_id = ?", team_id, slack_user_id
        )
        return self._account(row) if row else None

    async def update_tokens(self, account_id: int, tokens: TokenSet) -> None:
        await self._write_tokens(self.engine, account_id, tokens)

    async def _write_tokens(self, engine: Engine, account_id: int, tokens: TokenSet) -> None:
        columns = rows.token_columns(tokens, self._cipher)
        await engine.execute(
            "UPDATE accounts SET access_token = ?, refresh_token = ?, expires_at = ?, scope = ?, "
            "updated_at = ? WHERE id = ?",
            *columns.values(),
            time.time(),
            account_id,
        )

    async def set_needs_reconnect(self, account_id: int, needs: bool) -> None:
        await self._flag_reconnect(self.engine, account_id, needs)

    @staticmethod
    async def _flag_reconnect(engine: Engine, account_id: int, needs: bool) -> None:
        await engine.execute("UPDATE accounts SET needs_reconnect = ? WHERE id = ?", int(needs), account_id)

    def locked_account(self, engine: Engine, account_id: int) -> AccountRow:
        """The account's row read and written through ``engine`` (for ``refresh_lock``, which
        holds its lock on that engine's connection)."""
        return AccountRow(self, engine, account_id)

    async def list_accounts(self) -> list[Account]:
        return [self._account(r) for r in await self.engine.fetch("SELECT * FROM accounts ORDER BY id")]

    async def usernames_needing_reconnect(self) -> list[str]:
        """X usernames of accounts whose refresh X refused or whose tokens no key opens (for
        /healthz: no token is kept decrypted)."""
        found = await self.engine.fetch(
            "SELECT x_username, needs_reconnect, access_token, refresh_token FROM accounts "
            "WHERE disconnected_at IS NULL ORDER BY x_username"
        )
        return [r["x_username"] for r in found if rows.needs_reconnect(r, self._cipher)]

    async def disconnect_account(self, account_id: int, now: float, by: str) -> list[ChannelMapping]:
        """Forget the account's tokens and pause its mappings, in one transaction."""

        async def work(tx: Engine) -> list[ChannelMapping]:
            await tx.execute(
                "UPDATE accounts SET access_token = '', refresh_token = NULL, expires_at = NULL, "
                "needs_reconnect = 1, disconnected_at = ?, updated_at = ? WHERE id = ?",
                now,
                now,
                account_id,
            )
            paused = await tx.fetch(
                "UPDATE mappings SET paused_at = ?, paused_by = ? "
                "WHERE account_id = ? AND paused_at IS NULL RETURNING *",
                now,
                by,
                account_id,
            )
            return _by_channel(paused)

        return await self.engine.atomic(work)

    async def resume_mappings(self, account_id: int) -> list[ChannelMapping]:
        resumed = await self.engine.fetch(
            # Not those held for another X account (``hold_for_previous_account``).
            "UPDATE mappings SET paused_at = NULL, paused_by = NULL "
            "WHERE account_id = ? AND paused_at IS NOT NULL AND held_for IS NULL RETURNING *",
            account_id,
        )
        return _by_channel(resumed)

    async def hold_for_previous_account(
        self, account_id: int, previous: XUser, current: XUser, now: float
    ) -> list[ChannelMapping]:
        async def work(tx: Engine) -> list[ChannelMapping]:
            held: list[dict[str, Any]] = []
            if previous.id != current.id:
                # A conversation id is the previous account's conversation; a 1-to-1 by person
                # (kind dm) or a group not created yet is not anyone's yet.
                held = await tx.fetch(
                    "UPDATE mappings SET paused_at = COALESCE(paused_at, ?), "
                    "paused_by = COALESCE(paused_by, 'switch'), held_for = ?, held_for_username = ? "
                    "WHERE account_id = ? AND held_for IS NULL AND kind != 'dm' "
                    "AND conversation_id IS NOT NULL RETURNING *",
                    now,
                    previous.id,
                    previous.username,
                    account_id,
                )
                await tx.execute(
                    "UPDATE outbox SET held_state = state, state = 'held', held_for = ? "
                    f"WHERE account_id = ? AND state IN {PENDING_STATES} "
                    "AND target_conversation IS NOT NULL",
                    previous.id,
                    account_id,
                )
                await _switch_cursor(tx, account_id, previous.id, current.id, now)
            # Then what was held for the account connected now is its own again (resumed and
            # released by resume_mappings and release_account, like any paused mapping).
            await tx.execute(
                "UPDATE mappings SET held_for = NULL, held_for_username = NULL "
                "WHERE account_id = ? AND held_for = ?",
                account_id,
                current.id,
            )
            await tx.execute(
                "UPDATE outbox SET state = COALESCE(held_state, 'queued'), held_for = NULL, "
                "held_state = NULL, next_attempt_at = ? "
                "WHERE account_id = ? AND state = 'held' AND held_for = ?",
                now,
                account_id,
                current.id,
            )
            return _by_channel(held)

        return await self.engine.atomic(work)


async def _switch_cursor(tx: Engine, account_id: int, previous_id: str, current_id: str, now: float) -> None:
    """The read cursor is the X account's: the previous one's is parked (its ids say nothing of
    the new account's inbox, and the new one's higher ids would make it skip what it gets
    meanwhile), the current one's put back, or none: a first read (see ``Inbound.poll``).
    An unfinished read is parked with it and put back without its token (long expired by then):
    the read starts again from the newest, its channels waiting until it is done."""
    await tx.execute(
        "INSERT INTO parked_cursors (account_id, x_user_id, newest_event_id, gap_newest, gap_oldest, "
        "updated_at) SELECT account_id, ?, newest_event_id, gap_newest, gap_oldest, ? FROM cursors "
        "WHERE account_id = ? ON CONFLICT (account_id, x_user_id) DO UPDATE SET "
        "newest_event_id = excluded.newest_event_id, gap_newest = excluded.gap_newest, "
        "gap_oldest = excluded.gap_oldest, updated_at = excluded.updated_at",
        previous_id,
        now,
        account_id,
    )
    await tx.execute("DELETE FROM cursors WHERE account_id = ?", account_id)
    # On PostgreSQL a read of the previous account may commit its cursor between this DELETE and
    # the INSERT (there was no row to lock): the current account's parked cursor wins, and with
    # none parked (a first read) no cursor stays. A plain INSERT failed the whole switch (a unique
    # violation), and the connect with it. (On SQLite nothing lands in between: both are no-ops.)
    await tx.execute(
        "INSERT INTO cursors (account_id, newest_event_id, gap_newest, gap_oldest, gap_opened_at, "
        "updated_at) SELECT account_id, newest_event_id, gap_newest, gap_oldest, "
        "CASE WHEN gap_newest IS NOT NULL THEN CAST(? AS DOUBLE PRECISION) END, ? FROM parked_cursors "
        "WHERE account_id = ? AND x_user_id = ? ON CONFLICT (account_id) DO UPDATE SET "
        "newest_event_id = excluded.newest_event_id, gap_newest = excluded.gap_newest, "
        "gap_oldest = excluded.gap_oldest, gap_opened_at = excluded.gap_opened_at, "
        "gap_token = NULL, gap_restarts = 0, updated_at = excluded.updated_at",
        now,
        now,
        account_id,
        current_id,
    )
    await tx.execute(
        "DELETE FROM cursors WHERE account_id = ? AND NOT EXISTS (SELECT 1 FROM parked_cursors "
        "WHERE account_id = ? AND x_user_id = ?)",
        account_id,
        account_id,
        current_id,
    )
    await tx.execute(
        "DELETE FROM parked_cursors WHERE account_id = ? AND x_user_id = ?", account_id, current_id
    )


def _by_channel(found: list[dict[str, Any]]) -> list[ChannelMapping]:
    return sorted((rows.mapping(r) for r in found), key=lambda m: (m.team_id, m.channel_id))


class AccountRow:
    """``LockedAccount``: one account's row through the engine its refresh lock is held on."""

    def __init__(self, role: AccountsRole, engine: Engine, account_id: int) -> None:
        self._role = role
        self._engine = engine
        self._id = account_id

    async def read(self) -> Account | None:
        return await self._role._read_account(self._engine, self._id)

    async def save_tokens(self, tokens: TokenSet) -> None:
        await self._role._write_tokens(self._engine, self._id, tokens)

    async def flag_reconnect(self) -> None:
        await self._role._flag_reconnect(self._engine, self._id, True)


class ConnectFlowRole(StoreBase):
    """The ``oauth_states`` and ``pending_connections`` tables: an X authorization on its way to
    becoming an account."""

    async def save_oauth_state(self, state: OAuthState) -> None:
        async def work(tx: Engine) -> None:
            # Expired states are useless; sweep them whenever a new one is made.
            await tx.execute("DELETE FROM oauth_states WHERE expires_at < ?", time.time() - OAUTH_STATE_KEEP)
            await tx.execute(
                "INSERT INTO oauth_states (state, code_verifier, team_id, slack_user_id, channel_id, "
                "response_url, expires_at, used, slack_user_name, team_name) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
                state.state,
                self._cipher.encrypt(state.code_verifier),
                state.team_id,
                state.slack_user_id,
                state.channel_id,
                state.response_url,
                state.expires_at,
                state.slack_user_name,
                state.team_name,
            )

        return await self.engine.atomic(work)

    async def _oauth_state(self, sql: str, *params: Any) -> OAuthState | None:
        """The state ``sql`` reads or updates (``RETURNING *``), its verifier decrypted."""
        row = await self.engine.fetchone(sql, *params)
        if row is None:
            return None
        return rows.by_name(
            OAuthState,
            row,
            code_verifier=self._cipher.decrypt(row["code_verifier"]),
            channel_id=row["channel_id"] or "",
            slack_user_name=row["slack_user_name"] or "",
            team_name=row["team_name"] or "",
        )

    async def get_oauth_state(self, state: str, now: float) -> OAuthState | None:
        return await self._oauth_state(
            "SELECT * FROM oauth_states WHERE state = ? AND used = 0 AND expires_at > ? "
            "AND browser_hash IS NULL",
            state,
            now,
        )

    async def confirm_oauth_state(self, state: str, now: float, browser_hash: str) -> OAuthState | None:
        # One UPDATE decides, even between instances: one browser confirms a state.
        return await self._oauth_state(
            "UPDATE oauth_states SET browser_hash = ? WHERE state = ? AND used = 0 "
            "AND expires_at > ? AND browser_hash IS NULL RETURNING *",
            browser_hash,
            state,
            now,
        )

    async def consume_oauth_state(self, state: str, now: float, browser_hash: str) -> OAuthState | None:
        # One UPDATE decides: a state is used once, even by racing callbacks on two instances.
        return await self._oauth_state(
            "UPDATE oauth_states SET used = 1 WHERE state = ? AND used = 0 AND expires_at > ? "
            "AND browser_hash = ? RETURNING *",
            state,
            now,
            browser_hash,
        )

    async def save_pending_connection(self, pending: PendingConnection) -> None:
        row = rows.pending_row(pending, self._cipher)
        await self.engine.execute(rows.insert_sql("pending_connections", row), *row.values())

    async def get_pending_connection(self, pending_id: str, now: float) -> PendingConnection | None:
        row = await self.engine.fetchone(
            "SELECT * FROM pending_connections WHERE id = ? AND expires_at > ?", pending_id, now
        )
        return rows.pending_connection(row, self._cipher) if row else None

    async def take_pending_connection(
        self, pending_id: str, team_id: str, slack_user_id: str, now: float
    ) -> PendingConnection | None:
        # One DELETE decides, even between instances: a click binds once.
        row = await self.engine.fetchone(
            "DELETE FROM pending_connections WHERE id = ? AND team_id = ? AND slack_user_id = ? "
            "AND expires_at > ? RETURNING *",
            pending_id,
            team_id,
            slack_user_id,
            now,
        )
        return rows.pending_connection(row, self._cipher) if row else None

    async def take_expired_pending_connections(self, now: float) -> list[PendingConnection]:
        found = await self.engine.fetch(
            "DELETE FROM pending_connections WHERE expires_at <= ? RETURNING *", now
        )
        taken = (rows.pending_connection(row, self._cipher) for row in found)
        return [p for p in taken if p is not None]
