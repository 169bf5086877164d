"""The ``Store`` port on PostgreSQL (asyncpg), for ``DATABASE_URL``.

Same tables, same semantics as ``adapters/store/sqlite.py`` (one contract suite runs
against both), but several instances may share the database, so what the SQLite store
gets from its single writer thread is done here with locks:

- a message is accepted, and a channel's head handed on, under a lock on the channel's
  mapping row (``FOR NO KEY UPDATE``): ids (and so the send order) are drawn in commit
  order per channel, and "this row is its channel's head" is decided with no race;
- a claim (``mark_sending``), an edit and a delete lock the outbox row they read;
- a token refresh runs under an advisory lock per account (``refresh_lock``), so X's
  single-use refresh token is spent once across instances.

Heads are found by a loose index scan over the partial ``outbox_pending`` index: one
probe per channel with unfinished rows, not a scan of the backlog.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from adapters.store import rows
from adapters.store.crypto import TokenCipher
from adapters.store.engine import PostgresEngine
from adapters.store.outbox import OutboxMediaRole, OutboxRole
from adapters.store.relay import RelayRole
from adapters.store.roles import StoreBase
from adapters.store.upkeep import UpkeepRole
from bridge.errors import StoreUnavailable
from bridge.model import (
    Account,
    ChannelMapping,
    InboundEvent,
    InboundItem,
    InboundState,
    OAuthState,
    OutboxItem,
    PendingConnection,
    ReadGap,
    TokenSet,
    XUser,
)
from bridge.ports import LockedAccount
from bridge.settings import redacted
from migrations import postgres as pg_migrations
from migrations.postgres import PENDING_STATES

log = logging.getLogger("adapters.store.postgres")

NOW = "extract(epoch from clock_timestamp())::double precision"
OUTBOX_CHANNEL = "xdm_outbox"  # NOTIFY: new outbox rows (the payload names the instance that wrote them)
INBOUND_CHANNEL = "xdm_inbound"  # NOTIFY: new inbound rows queued for Slack (a push a standby took)
CLOSE_TIMEOUT = 5.0  # seconds the pool may take to close gracefully
REFRESH_LOCK = 0x786D  # pg_advisory_lock(REFRESH_LOCK, account id): one token refresh per account
INBOUND_LOCK = 0x786E  # pg_advisory_xact_lock(INBOUND_LOCK, account id): one inbound take per account

Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy


def is_postgres_url(url: str | None) -> bool:
    return bool(url) and str(url).split("://", 1)[0] in ("postgres", "postgresql")


# Asked of the server by every session at its start. A client that vanished without a reset (a
# dead network) would otherwise keep its session, and any lock it holds, for PostgreSQL's
# default of two hours before the first keepalive: with these, the server drops it after about
# a minute of silence (keepalives when it waits for the client, tcp_user_timeout when its own
# answer goes unacknowledged; PostgreSQL 12+), and a transaction left open after one.
# (The leader does not rely on them: its lease is fenced by time, see adapters/store/leader.py.)
SESSION_SETTINGS = {
    "tcp_keepalives_idle": "30",
    "tcp_keepalives_interval": "10",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "60000",  # ms
    "idle_in_transaction_session_timeout": "60000",  # ms; no transaction waits on X or Slack
}


def instance_settings(instance: str | None) -> dict[str, str]:
    """The session settings, with ``application_name`` naming the bridge instance a session
    belongs to: a standby reads ``pg_stat_activity`` to know whether a leader's process still has
    any session at all (it died) or only lost its lease connection (it may still be working)."""
    if instance is None:
        return SESSION_SETTINGS
    return {**SESSION_SETTINGS, "application_name": application_name(instance)}


def application_name(instance: str) -> str:
    return f"xdm-bridge {instance}"


async def connect(url: str, instance: str | None = None) -> asyncpg.Connection:
    """One connection (``sslmode`` and the rest of the URL are asyncpg's to honour)."""
    return await asyncpg.connect(url, server_settings=instance_settings(instance))


async def migrate(url: str, progress: Callable[[str], None] = lambda _: None) -> list[str]:
    """Apply pending migrations (``xdm-bridge migrate``), each said to ``progress`` before it runs;
    the names applied."""
    conn = await connect(url)
    try:
        return await pg_migrations.apply(conn, progress)
    finally:
        await conn.close()


class PostgresStore(RelayRole, OutboxRole, OutboxMediaRole, UpkeepRole, StoreBase):
    """PostgreSQL implementation of ``bridge.ports.Store``."""

    def __init__(self, url: str, cipher: TokenCipher, *, pool_size: int = 10) -> None:
        self.url = url
        self._cipher = cipher
        self._unreadable_accounts: set[int] = set()  # ids whose tokens no key opens, logged once
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._refresh_slots = asyncio.Semaphore(max(1, pool_size // 2))  # see ``refresh_lock``
        # Names this process in its NOTIFYs, so the leader does not wake for rows it offered itself.
        self.instance_id = uuid.uuid4().hex[:12]
        # Whether new rows are announced with NOTIFY: a standby's must wake the leader, the leader's
        # own are offered to its worker directly, and every NOTIFY serialises commits database-wide
        # (PostgreSQL takes one lock for the notification queue until the commit is on disk).
        self.announce = True

    # -- lifecycle ---------------------------------------------------------

    async def open(self) -> None:
        conn = await connect(self.url)
        try:
            await pg_migrations.apply(conn)
        finally:
            await conn.close()
        try:
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=1,
                max_size=self._pool_size,
                reset=_keep_session,
                server_settings=instance_settings(self.instance_id),
            )
        except asyncpg.InsufficientPrivilegeError as exc:
            raise StoreUnavailable(f"database {redacted(self.url)}: {exc}") from None
        log.info("database ready", extra={"engine": "postgresql"})

    async def close(self) -> None:
        if self._pool is not None:
            try:
                # Graceful close waits for every connection to come back; one stuck on a database
                # that stopped answering never does, and shutdown must still end.
                await asyncio.wait_for(self._pool.close(), CLOSE_TIMEOUT)
            except TimeoutError:
                log.warning("database connections did not close in time; dropped")
                self._pool.terminate()
            self._pool = None

    @property
    def engine(self) -> PostgresEngine:
        """Statements for the role stores written once over ``adapters.store.engine``."""
        return PostgresEngine(lambda: self.pool)

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "store not open"
        return self._pool

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[Conn]:
        async with self.pool.acquire() as conn, conn.transaction():
            yield conn

    async def _execute(self, sql: str, *args: Any) -> str:
        async with self._tx() as conn:
            return await conn.execute(sql, *args)

    # -- health ------------------------------------------------------------

    async def ping(self) -> bool:
        return bool(await self.pool.fetchval("SELECT 1") == 1)

    async def commit_durability(self) -> str:
        """``synchronous_commit`` as the store's connections have it (``on``: a commit waits for
        its log on disk); for ``doctor``, tests and bench."""
        return str(await self.pool.fetchval("SHOW synchronous_commit"))

    # -- accounts ----------------------------------------------------------

    def _account(self, row: Any) -> Account:
        return rows.account(row, self._cipher, self._unreadable_accounts)

    async def save_account(self, team_id: str, slack_user_id: str, user: XUser, tokens: TokenSet) -> Account:
        columns = rows.token_columns(tokens, self._cipher)
        async with self._tx() as conn:
            row = await conn.fetchrow(
                f"""
                INSERT INTO accounts (team_id, slack_user_id, x_user_id, x_username, access_token,
                                      refresh_token, expires_at, scope, needs_reconnect,
                                      created_at, updated_at)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, {NOW}, {NOW})
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
                columns["access_token"],
                columns["refresh_token"],
                columns["expires_at"],
                columns["scope"],
            )
        assert row is not None
        return self._account(row)

    async def get_account(self, account_id: int) -> Account | None:
        row = await self.pool.fetchrow("SELECT * FROM accounts WHERE id = $1", account_id)
        return self._account(row) if row else None

    async def account_for_user(self, team_id: str, slack_user_id: str) -> Account | None:
        row = await self.pool.fetchrow(
            "SELECT * FROM accounts WHERE team_id = $1 AND slack_user_id = $2", team_id, slack_user_id
        )
        return self._account(row) if row else None

    async def update_tokens(self, account_id: int, tokens: TokenSet) -> None:
        await self._update_tokens(self.pool, account_id, tokens)

    async def _update_tokens(self, conn: Any, account_id: int, tokens: TokenSet) -> None:
        columns = rows.token_columns(tokens, self._cipher)
        await conn.execute(
            f"UPDATE accounts SET access_token = $1, refresh_token = $2, expires_at = $3, scope = $4, "
            f"updated_at = {NOW} WHERE id = $5",
            columns["access_token"],
            columns["refresh_token"],
            columns["expires_at"],
            columns["scope"],
            account_id,
        )

    async def set_needs_reconnect(self, account_id: int, needs: bool) -> None:
        await self._execute("UPDATE accounts SET needs_reconnect = $1 WHERE id = $2", int(needs), account_id)

    async def list_accounts(self) -> list[Account]:
        return [self._account(r) for r in await self.pool.fetch("SELECT * FROM accounts ORDER BY id")]

    async def usernames_needing_reconnect(self) -> list[str]:
        """X usernames of accounts whose refresh X refused or whose tokens no key opens (for
        /healthz: no token is kept decrypted)."""
        found = await self.pool.fetch(
            "SELECT x_username, needs_reconnect, access_token, refresh_token FROM accounts "
            "WHERE disconnected_at IS NULL ORDER BY x_username"
        )
        return [r["x_username"] for r in found if rows.needs_reconnect(r, self._cipher)]

    async def disconnect_account(self, account_id: int, now: float, by: str) -> list[ChannelMapping]:
        """Forget the account's tokens and pause its mappings (as the SQLite store)."""
        async with self._tx() as conn:
            await conn.execute(
                "UPDATE accounts SET access_token = '', refresh_token = NULL, expires_at = NULL, "
                "needs_reconnect = 1, disconnected_at = $1, updated_at = $1 WHERE id = $2",
                now,
                account_id,
            )
            paused = await conn.fetch(
                "UPDATE mappings SET paused_at = $1, paused_by = $2 "
                "WHERE account_id = $3 AND paused_at IS NULL RETURNING *",
                now,
                by,
                account_id,
            )
        return sorted((rows.mapping(r) for r in paused), key=lambda m: (m.team_id, m.channel_id))

    async def resume_mappings(self, account_id: int) -> list[ChannelMapping]:
        resumed = await self.pool.fetch(
            # Not those held for another X account (``hold_for_previous_account``).
            "UPDATE mappings SET paused_at = NULL, paused_by = NULL "
            "WHERE account_id = $1 AND paused_at IS NOT NULL AND held_for IS NULL RETURNING *",
            account_id,
        )
        return sorted((rows.mapping(r) for r in resumed), key=lambda m: (m.team_id, m.channel_id))

    @staticmethod
    async def _switch_cursor(
        conn: Conn, account_id: int, previous_id: str, current_id: str, now: float
    ) -> None:
        """As the SQLite store's: the read cursor is the X account's; the previous one's is
        parked, the current one's put back (or none: a first read)."""
        await conn.execute(
            "INSERT INTO parked_cursors (account_id, x_user_id, newest_event_id, gap_newest, gap_oldest, "
            "updated_at) SELECT account_id, $1, newest_event_id, gap_newest, gap_oldest, $2 FROM cursors "
            "WHERE account_id = $3 ON CONFLICT (account_id, x_user_id) DO UPDATE SET "
            "newest_event_id = excluded.newest_event_id, gap_newest = excluded.gap_newest, "
            "gap_oldest = excluded.gap_oldest, updated_at = excluded.updated_at",
            previous_id,
            now,
            account_id,
        )
        await conn.execute("DELETE FROM cursors WHERE account_id = $1", account_id)
        # A read of the previous account may commit its cursor between this DELETE and the
        # INSERT (there was no row to lock): the current account's parked cursor wins, and with
        # none parked (a first read) no cursor stays. A plain INSERT failed the whole switch
        # (a unique violation), and the connect with it.
        await conn.execute(
            "INSERT INTO cursors (account_id, newest_event_id, gap_newest, gap_oldest, gap_opened_at, "
            "updated_at) SELECT account_id, newest_event_id, gap_newest, gap_oldest, "
            "CASE WHEN gap_newest IS NOT NULL THEN $1::double precision END, $1 FROM parked_cursors "
            "WHERE account_id = $2 AND x_user_id = $3 ON CONFLICT (account_id) DO UPDATE SET "
            "newest_event_id = excluded.newest_event_id, gap_newest = excluded.gap_newest, "
            "gap_oldest = excluded.gap_oldest, gap_opened_at = excluded.gap_opened_at, "
            "gap_token = NULL, gap_restarts = 0, updated_at = excluded.updated_at",
            now,
            account_id,
            current_id,
        )
        await conn.execute(
            "DELETE FROM cursors WHERE account_id = $1 AND NOT EXISTS (SELECT 1 FROM parked_cursors "
            "WHERE account_id = $1 AND x_user_id = $2)",
            account_id,
            current_id,
        )
        await conn.execute(
            "DELETE FROM parked_cursors WHERE account_id = $1 AND x_user_id = $2", account_id, current_id
        )

    async def hold_for_previous_account(
        self, account_id: int, previous: XUser, current: XUser, now: float
    ) -> list[ChannelMapping]:
        async with self._tx() as conn:
            held: list[Any] = []
            if previous.id != current.id:
                # A conversation id is the previous account's conversation; a 1-to-1 by person
                # (kind dm) or a group not created yet is not anyone's yet.
                held = await conn.fetch(
                    "UPDATE mappings SET paused_at = COALESCE(paused_at, $1), "
                    "paused_by = COALESCE(paused_by, 'switch'), held_for = $2, held_for_username = $3 "
                    "WHERE account_id = $4 AND held_for IS NULL AND kind != 'dm' "
                    "AND conversation_id IS NOT NULL RETURNING *",
                    now,
                    previous.id,
                    previous.username,
                    account_id,
                )
                await conn.execute(
                    "UPDATE outbox SET held_state = state, state = 'held', held_for = $1 "
                    f"WHERE account_id = $2 AND state IN {PENDING_STATES} "
                    "AND target_conversation IS NOT NULL",
                    previous.id,
                    account_id,
                )
                await self._switch_cursor(conn, account_id, previous.id, current.id, now)
            # What was held for the account connected now is its own again.
            await conn.execute(
                "UPDATE mappings SET held_for = NULL, held_for_username = NULL "
                "WHERE account_id = $1 AND held_for = $2",
                account_id,
                current.id,
            )
            await conn.execute(
                "UPDATE outbox SET state = COALESCE(held_state, 'queued'), held_for = NULL, "
                "held_state = NULL, next_attempt_at = $1 "
                "WHERE account_id = $2 AND state = 'held' AND held_for = $3",
                now,
                account_id,
                current.id,
            )
        return sorted((rows.mapping(r) for r in held), key=lambda m: (m.team_id, m.channel_id))

    # -- OAuth states ------------------------------------------------------

    async def save_oauth_state(self, state: OAuthState) -> None:
        async with self._tx() as conn:
            # Expired states are useless; sweep them whenever a new one is made.
            await conn.execute(f"DELETE FROM oauth_states WHERE expires_at < {NOW} - 3600")
            await conn.execute(
                "INSERT INTO oauth_states (state, code_verifier, team_id, slack_user_id, channel_id, "
                "response_url, expires_at, used, slack_user_name, team_name) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $9)",
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

    def _oauth_state(self, row: Any) -> OAuthState:
        return OAuthState(
            state=row["state"],
            code_verifier=self._cipher.decrypt(row["code_verifier"]),
            team_id=row["team_id"],
            slack_user_id=row["slack_user_id"],
            channel_id=row["channel_id"] or "",
            response_url=row["response_url"],
            expires_at=row["expires_at"],
            slack_user_name=row["slack_user_name"] or "",
            team_name=row["team_name"] or "",
        )

    async def get_oauth_state(self, state: str, now: float) -> OAuthState | None:
        row = await self.pool.fetchrow(
            "SELECT * FROM oauth_states WHERE state = $1 AND used = 0 AND expires_at > $2 "
            "AND browser_hash IS NULL",
            state,
            now,
        )
        return self._oauth_state(row) if row else None

    async def confirm_oauth_state(self, state: str, now: float, browser_hash: str) -> OAuthState | None:
        # One UPDATE decides, even between instances: one browser confirms a state.
        row = await self.pool.fetchrow(
            "UPDATE oauth_states SET browser_hash = $1 WHERE state = $2 AND used = 0 "
            "AND expires_at > $3 AND browser_hash IS NULL RETURNING *",
            browser_hash,
            state,
            now,
        )
        return self._oauth_state(row) if row else None

    async def consume_oauth_state(self, state: str, now: float, browser_hash: str) -> OAuthState | None:
        # One UPDATE decides: a state is used once, even by racing callbacks on two instances.
        row = await self.pool.fetchrow(
            "UPDATE oauth_states SET used = 1 WHERE state = $1 AND used = 0 AND expires_at > $2 "
            "AND browser_hash = $3 RETURNING *",
            state,
            now,
            browser_hash,
        )
        return self._oauth_state(row) if row else None

    # -- connections waiting for a click in Slack ---------------------------

    async def save_pending_connection(self, pending: PendingConnection) -> None:
        values = rows.pending_values(pending, self._cipher)
        marks = ", ".join(f"${n}" for n in range(1, len(values) + 1))
        await self.pool.execute(
            f"INSERT INTO pending_connections ({rows.PENDING_COLUMNS}) VALUES ({marks})", *values
        )

    async def get_pending_connection(self, pending_id: str, now: float) -> PendingConnection | None:
        row = await self.pool.fetchrow(
            "SELECT * FROM pending_connections WHERE id = $1 AND expires_at > $2", pending_id, now
        )
        return rows.pending_connection(row, self._cipher) if row else None

    async def take_pending_connection(
        self, pending_id: str, team_id: str, slack_user_id: str, now: float
    ) -> PendingConnection | None:
        # One DELETE decides, even between instances: a click binds once.
        row = await self.pool.fetchrow(
            "DELETE FROM pending_connections WHERE id = $1 AND team_id = $2 AND slack_user_id = $3 "
            "AND expires_at > $4 RETURNING *",
            pending_id,
            team_id,
            slack_user_id,
            now,
        )
        return rows.pending_connection(row, self._cipher) if row else None

    async def take_expired_pending_connections(self, now: float) -> list[PendingConnection]:
        found = await self.pool.fetch(
            "DELETE FROM pending_connections WHERE expires_at <= $1 RETURNING *", now
        )
        taken = (rows.pending_connection(row, self._cipher) for row in found)
        return [p for p in taken if p is not None]

    # -- mappings ----------------------------------------------------------

    async def get_mapping(self, team_id: str, channel_id: str) -> ChannelMapping | None:
        row = await self.pool.fetchrow(
            "SELECT * FROM mappings WHERE team_id = $1 AND channel_id = $2", team_id, channel_id
        )
        return rows.mapping(row) if row else None

    async def create_mapping(
        self, mapping: ChannelMapping, *, history: bool = False
    ) -> ChannelMapping | None:
        async with self._tx() as conn:
            status = await conn.execute(
                f"INSERT INTO mappings ({rows.MAPPING_COLUMNS}) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING",
                *rows.mapping_values(mapping),
            )
            created = status == "INSERT 0 1"
            if created and history and mapping.conversation_id:
                await self._request_backfill(
                    conn, mapping.account_id, mapping.conversation_id, mapping.created_at
                )
        return mapping if created else None

    async def delete_mapping(
        self, team_id: str, channel_id: str, *, made: ChannelMapping | None = None
    ) -> ChannelMapping | None:
        sql = "DELETE FROM mappings WHERE team_id = $1 AND channel_id = $2"
        args: list[Any] = [team_id, channel_id]
        if made is not None:
            sql += " AND created_by = $3 AND created_at = $4"
            args += [made.created_by, made.created_at]
        row = await self.pool.fetchrow(sql + " RETURNING *", *args)
        return rows.mapping(row) if row else None

    async def abandon_group(
        self, team_id: str, channel_id: str, group: tuple[str, ...]
    ) -> tuple[ChannelMapping | None, list[OutboxItem]]:
        members = json.dumps(list(group))  # as create_mapping and accept write it
        async with self._tx() as conn:
            # Deleting the mapping row waits for (and then excludes) an accept holding its lock.
            row = await conn.fetchrow(
                "DELETE FROM mappings WHERE team_id = $1 AND channel_id = $2 AND kind = 'group' "
                "AND conversation_id IS NULL AND participant_ids = $3 RETURNING *",
                team_id,
                channel_id,
                members,
            )
            found = await conn.fetch(
                f"SELECT * FROM outbox WHERE team_id = $1 AND channel_id = $2 AND target_group = $3 "
                f"AND state IN {PENDING_STATES} ORDER BY seq, part",
                team_id,
                channel_id,
                members,
            )
        return (rows.mapping(row) if row else None), [rows.item(r) for r in found]

    async def set_conversation_id(self, team_id: str, channel_id: str, conversation_id: str) -> None:
        await self._execute(
            "UPDATE mappings SET conversation_id = $1 WHERE team_id = $2 AND channel_id = $3",
            conversation_id,
            team_id,
            channel_id,
        )

    async def list_mappings(self) -> list[ChannelMapping]:
        found = await self.pool.fetch("SELECT * FROM mappings ORDER BY team_id, channel_id")
        return [rows.mapping(r) for r in found]

    # -- relay -------------------------------------------------------------
    # (adapters/store/relay.py; the outbox in outbox.py, pruning and gauges in upkeep.py)

    def _outbox_wake(self) -> tuple[str, str] | None:
        """New outbox rows wake the leader's worker (on whichever instance) when their transaction
        commits, unless this instance does not announce (see ``announce``)."""
        return (OUTBOX_CHANNEL, self.instance_id) if self.announce else None

    async def notify_outbox(self) -> None:
        """Wake the leader's worker now (a reconnection or a new mapping may have freed rows)."""
        await self.pool.execute("SELECT pg_notify($1, $2)", OUTBOX_CHANNEL, self.instance_id)

    async def notify_inbound(self, what: str = "") -> None:
        """Wake the leader's inbound worker now; ``what`` names a wake-up beyond "rows are queued"
        (``poll``: a channel was mapped, read X soon; ``connected``: and subscribe a new account to push).
        Rows a standby queued are announced as ``active:<account id>`` (``take_inbound``)."""
        payload = f"{self.instance_id}:{what}" if what else self.instance_id
        await self.pool.execute("SELECT pg_notify($1, $2)", INBOUND_CHANNEL, payload)

    @asynccontextmanager
    async def refresh_lock(self, account_id: int) -> AsyncIterator[LockedAccount]:
        """Held while an account's token is re-read and refreshed: one refresh at a time across every
        instance, since X's refresh tokens are single-use.

        A session advisory lock on one pooled connection, and the refresh's reads and writes go
        through that same connection (``_AccountRow``): a holder that waited for a second one
        would deadlock once the pool's connections were all held by refreshes. Each write commits
        at once (the new refresh token is kept even if the caller then fails), and at most half
        the pool refreshes at a time, so the rest of the bridge (``/healthz``) never queues behind
        X's token endpoint."""
        async with self._refresh_slots, self.pool.acquire() as conn:
            await _ended_on_failure(
                conn, conn.execute("SELECT pg_advisory_lock($1, $2)", REFRESH_LOCK, account_id)
            )
            try:
                yield _AccountRow(self, conn, account_id)
            finally:
                await _ended_on_failure(
                    conn, conn.execute("SELECT pg_advisory_unlock($1, $2)", REFRESH_LOCK, account_id)
                )

    async def inbound_gauges(self) -> dict[str, Any]:
        """As the SQLite store's: one pass over the partial index of rows still to post."""
        return rows.inbound_gauges(await self.pool.fetchrow(_INBOUND_GAUGES_SQL))

    # -- outbox ------------------------------------------------------------

    # -- inbound (X → Slack) ----------------------------------------------

    async def get_cursor(self, account_id: int) -> str | None:
        value = await self.pool.fetchval(
            "SELECT newest_event_id FROM cursors WHERE account_id = $1", account_id
        )
        return None if value is None else str(value)

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
        """As the SQLite store's (a ``gap`` kept leaves the cursor; moving it closes the gap); any
        instance may take (a push reaches whichever X calls), and the unique key makes the first
        commit win. Queued rows written by a standby wake the
        leader's poster with a ``NOTIFY`` on ``INBOUND_CHANNEL`` at commit."""
        queued = 0
        async with self._tx() as conn:
            # One take per account at a time, in the order they came (PostgreSQL queues lock
            # requests): as the SQLite store's single writer, so pushes delivered one after the
            # other are not committed out of X's order by two pool connections racing.
            await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", INBOUND_LOCK, account_id)
            own_id = await conn.fetchval("SELECT x_user_id FROM accounts WHERE id = $1", account_id)
            for event in events:
                taken, echoes = await self._take_one(conn, account_id, own_id, event, now)
                queued += taken
                if tally is not None:
                    tally["echoes"] = tally.get("echoes", 0) + echoes
            if gap is not None:
                await conn.execute(
                    "INSERT INTO cursors (account_id, updated_at, gap_token, gap_newest, gap_oldest, "
                    "gap_restarts, gap_opened_at) VALUES ($1, $2, $3, $4, $5, $6, $7) "
                    "ON CONFLICT (account_id) DO UPDATE SET updated_at = excluded.updated_at, "
                    "gap_token = excluded.gap_token, gap_newest = excluded.gap_newest, "
                    "gap_oldest = excluded.gap_oldest, gap_restarts = excluded.gap_restarts, "
                    "gap_opened_at = excluded.gap_opened_at",
                    account_id,
                    now,
                    gap.token,
                    gap.newest,
                    gap.oldest,
                    gap.restarts,
                    gap.opened_at,
                )
            elif newest_event_id is not None:
                await conn.execute(
                    f"""
                    INSERT INTO cursors (account_id, newest_event_id, updated_at) VALUES ($1, $2, $3)
                    ON CONFLICT (account_id) DO UPDATE
                    SET newest_event_id = excluded.newest_event_id, updated_at = excluded.updated_at
                    WHERE cursors.newest_event_id IS NULL
                          OR {_snowflake_sql("excluded.newest_event_id")}
                          > {_snowflake_sql("cursors.newest_event_id")}
                    """,
                    account_id,
                    newest_event_id,
                    now,
                )
                await conn.execute(
                    "UPDATE cursors SET gap_token = NULL, gap_newest = NULL, gap_oldest = NULL, "
                    "gap_restarts = 0, gap_opened_at = NULL WHERE account_id = $1",
                    account_id,
                )
            if queued and self.announce:
                # "active:<account>": the leader reads that account's groups at the budget's pace.
                payload = f"{self.instance_id}:active:{account_id}"
                await conn.execute("SELECT pg_notify($1, $2)", INBOUND_CHANNEL, payload)
        return queued

    async def read_gap(self, account_id: int) -> ReadGap | None:
        row = await self.pool.fetchrow("SELECT * FROM cursors WHERE account_id = $1", account_id)
        return rows.read_gap(row) if row else None

    async def _take_one(
        self, conn: Conn, account_id: int, own_id: str | None, event: InboundEvent, now: float
    ) -> tuple[int, int]:
        """(rows queued, rows skipped as echoes of the bridge's own sends) for one event."""
        known = {
            (r["team_id"], r["channel_id"])
            for r in await conn.fetch(
                "SELECT team_id, channel_id FROM inbound WHERE dm_event_id = $1", event.dm_event_id
            )
        }
        mappings = (
            await conn.fetch(
                "SELECT m.team_id, m.channel_id, m.created_at, a.x_user_id FROM mappings AS m "
                "LEFT JOIN accounts AS a ON a.id = m.account_id WHERE m.conversation_id = $1 "
                "ORDER BY m.account_id = $2 DESC, m.created_at",
                event.conversation_id,
                account_id,
            )
            if event.conversation_id
            else []
        )
        sent_from = await self._sent_from(conn, event.dm_event_id)
        queued = echoes = 0
        for row in rows.channel_rows(mappings, event, known, sent_from):
            state, why = row.state, row.why
            if row.check_outbox and await conn.fetchval(
                "SELECT 1 FROM outbox WHERE team_id = $1 AND channel_id = $2 AND state = 'sending' "
                "AND text = $3 LIMIT 1",
                *row.where,
                event.payload.get("text"),
            ):
                # A DM of ours that X has but the outbox has not recorded yet (its POST is in flight).
                state, why = InboundState.SKIPPED, rows.ECHO_IN_FLIGHT
            elif row.check_outbox and await self._adopt_unconfirmed(conn, row.where, event, now):
                state, why = InboundState.SKIPPED, rows.ECHO_UNCONFIRMED
            inserted = await self._insert_inbound(
                conn, account_id, event, row.where, row.payload, state, why, now
            )
            queued += int(inserted and state is InboundState.QUEUED)
            echoes += int(inserted and state is InboundState.SKIPPED)
        if not known and not mappings:
            # Kept so a later read does not bill it to Slack again; a backfill may still want it.
            payload = {**event.payload, "from_self": rows.from_self(event, own_id)}
            await self._insert_inbound(
                conn, account_id, event, (None, None), payload, InboundState.SKIPPED, rows.NOT_BRIDGED, now
            )
        return queued, echoes

    @staticmethod
    async def _insert_inbound(
        conn: Conn,
        account_id: int,
        event: InboundEvent,
        where: tuple[str | None, str | None],
        payload: dict[str, Any],
        state: InboundState,
        why: str | None,
        now: float,
    ) -> bool:
        status = await conn.execute(
            f"INSERT INTO inbound ({rows.INBOUND_COLUMNS}) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 0, 0, $12, $13) ON CONFLICT DO NOTHING",
            *rows.inbound_values(account_id, event, where, payload, state, why, now),
        )
        return bool(status == "INSERT 0 1")

    @staticmethod
    async def _sent_from(conn: Conn, dm_event_id: str) -> tuple[str, str] | None:
        # The message map also records what the bridge posted from X: those have an inbound row.
        row = await conn.fetchrow(
            "SELECT m.team_id, m.channel_id FROM message_map AS m WHERE m.dm_event_id = $1 AND NOT EXISTS "
            "(SELECT 1 FROM inbound AS i WHERE i.dm_event_id = m.dm_event_id AND i.team_id = m.team_id "
            "AND i.channel_id = m.channel_id AND i.slack_ts = m.slack_ts) LIMIT 1",
            dm_event_id,
        )
        return (row["team_id"], row["channel_id"]) if row else None

    async def sent_from(self, dm_event_id: str) -> tuple[str, str] | None:
        async with self.pool.acquire() as conn:
            return await self._sent_from(conn, dm_event_id)

    @staticmethod
    async def _adopt_unconfirmed(conn: Conn, where: tuple[str, str], event: InboundEvent, now: float) -> bool:
        """A DM of ours X took without naming it (recorded sent without an id): it is this event.
        Its id is recorded now, in the outbox and the message map, as a send's would have been."""
        candidates = await conn.fetch(rows.UNCONFIRMED_SENDS.format(p1="$1", p2="$2"), *where)
        found = rows.unconfirmed_match(candidates, event)
        if found is None:
            return False
        await conn.execute("UPDATE outbox SET dm_event_id = $1 WHERE id = $2", event.dm_event_id, found["id"])
        await conn.execute(
            "INSERT INTO message_map (team_id, channel_id, slack_ts, part, conversation_id, dm_event_id, "
            "created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            *where,
            found["slack_ts"],
            found["part"],
            event.conversation_id,
            event.dm_event_id,
            now,
        )
        return True

    @staticmethod
    async def _inbound_head(conn: Conn, team_id: str, channel_id: str) -> Any:
        return await conn.fetchrow(
            "SELECT i.* FROM (SELECT * FROM inbound WHERE team_id = $1 AND channel_id = $2 "
            "AND state IN ('queued', 'posting') ORDER BY seq LIMIT 1) AS i "
            f"WHERE NOT ({_INBOUND_WAITS})",
            team_id,
            channel_id,
        )

    async def inbound_heads(self) -> list[InboundItem]:
        # A channel waits (rows.inbound_waits) with its rows kept; one no longer bridged still
        # gets what was taken for it.
        found = await self.pool.fetch(
            "SELECT * FROM (SELECT DISTINCT ON (team_id, channel_id) * FROM inbound "
            "WHERE state IN ('queued', 'posting') ORDER BY team_id, channel_id, seq) AS i "
            f"WHERE NOT ({_INBOUND_WAITS})"
        )
        return [rows.inbound_item(r) for r in found]

    async def mark_posting(self, item_id: int, now: float) -> InboundItem | None:
        row = await self.pool.fetchrow(
            "UPDATE inbound SET state = 'posting', attempts = attempts + 1, "
            "posting_since = COALESCE(posting_since, $1) "
            "WHERE id = $2 AND state IN ('queued', 'posting') RETURNING *",
            now,
            item_id,
        )
        return rows.inbound_item(row) if row else None

    async def mark_posted(self, item_id: int, slack_ts: str, now: float) -> InboundItem | None:
        async with self._tx() as conn:
            row = await conn.fetchrow(
                "UPDATE inbound SET state = 'posted', slack_ts = $1, posted_at = $2, last_error = NULL "
                "WHERE id = $3 RETURNING *",
                slack_ts,
                now,
                item_id,
            )
            assert row is not None
            await conn.execute(
                "INSERT INTO message_map (team_id, channel_id, slack_ts, part, conversation_id, "
                "dm_event_id, created_at) VALUES ($1, $2, $3, 0, $4, $5, $6) ON CONFLICT DO NOTHING",
                row["team_id"],
                row["channel_id"],
                slack_ts,
                row["conversation_id"],
                row["dm_event_id"],
                now,
            )
            following = await self._inbound_head(conn, row["team_id"], row["channel_id"])
        return None if following is None else rows.inbound_item(following)

    async def reschedule_inbound(
        self, item_id: int, state: InboundState, next_attempt_at: float, error: str | None
    ) -> None:
        await self._execute(
            "UPDATE inbound SET state = $1, next_attempt_at = $2, last_error = $3, "
            "posting_since = CASE WHEN $1 = 'posting' THEN posting_since END WHERE id = $4",
            state.value,
            next_attempt_at,
            error,
            item_id,
        )

    async def set_inbound_payload(self, item_id: int, payload: dict[str, Any]) -> None:
        await self._execute(
            "UPDATE inbound SET payload = $1 WHERE id = $2",
            json.dumps(payload, separators=(",", ":")),
            item_id,
        )

    async def hold_channel(self, team_id: str, channel_id: str, until: float) -> None:
        await self._execute(
            "UPDATE inbound SET next_attempt_at = GREATEST(next_attempt_at, $1) WHERE team_id = $2 "
            "AND channel_id = $3 AND state IN ('queued', 'posting')",
            until,
            team_id,
            channel_id,
        )

    async def latest_inbound_at(self, origin: str) -> float | None:
        value = await self.pool.fetchval("SELECT MAX(created_at) FROM inbound WHERE origin = $1", origin)
        return None if value is None else float(value)

    async def inbound_summary(
        self, account_id: int, team_id: str | None = None, channel_id: str | None = None
    ) -> dict[str, Any]:
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            cursor = await conn.fetchrow("SELECT * FROM cursors WHERE account_id = $1", account_id)
            schedule = await conn.fetchrow(
                "SELECT next_read_at, pushed FROM read_schedule WHERE account_id = $1", account_id
            )
            here = await conn.fetchval(
                "SELECT COUNT(*) FROM inbound WHERE team_id = $1 AND channel_id = $2 "
                "AND state IN ('queued', 'posting')",
                team_id,
                channel_id,
            )
            counts = {
                r["state"]: r["n"]
                for r in await conn.fetch(
                    "SELECT state, COUNT(*) AS n FROM inbound WHERE account_id = $1 GROUP BY state",
                    account_id,
                )
            }
            last = await conn.fetchval(
                "SELECT MAX(created_at) FROM inbound WHERE account_id = $1 AND origin != 'sent'",
                account_id,
            )
            failed = await conn.fetchval(rows.FAILED_COUNT_SQL.format(p1="$1", p2="$2"), team_id, channel_id)
            reason = await conn.fetchval(rows.FAILED_LAST_SQL.format(p1="$1", p2="$2"), team_id, channel_id)
            chat_gap = await conn.fetchval(rows.CHAT_GAP_SQL.format(p1="$1", p2="$2"), team_id, channel_id)
        return {
            "newest_event_id": cursor["newest_event_id"] if cursor else None,
            "read_at": cursor["updated_at"] if cursor else None,
            "catching_up": bool(cursor and cursor["gap_newest"] is not None) or bool(chat_gap),
            "last_event_at": last,
            "counts": counts,
            "pending": counts.get("queued", 0) + counts.get("posting", 0),
            "channel_pending": int(here or 0),
            "channel_failed": int(failed or 0),
            "channel_last_failure": reason,
            "next_read_at": (
                float(schedule["next_read_at"]) if schedule and schedule["next_read_at"] is not None else None
            ),
            "pushed": bool(schedule["pushed"]) if schedule else False,
        }

    async def set_next_read(self, account_id: int, at: float, *, pushed: bool = False) -> None:
        await self._execute(
            "INSERT INTO read_schedule (account_id, next_read_at, pushed, updated_at) "
            "VALUES ($1, $2, $3, $2) "
            "ON CONFLICT (account_id) DO UPDATE SET next_read_at = excluded.next_read_at, "
            "pushed = excluded.pushed, updated_at = excluded.updated_at",
            account_id,
            at,
            pushed,
        )

    async def request_backfill(self, account_id: int, conversation_id: str, bridged_at: float) -> None:
        async with self._tx() as conn:
            await self._request_backfill(conn, account_id, conversation_id, bridged_at)

    @staticmethod
    async def _request_backfill(conn: Conn, account_id: int, conversation_id: str, bridged_at: float) -> None:
        await conn.execute(
            "INSERT INTO backfills (account_id, conversation_id, bridged_at, requested_at) "
            "VALUES ($1, $2, $3, $3) ON CONFLICT (account_id, conversation_id) DO UPDATE "
            "SET bridged_at = excluded.bridged_at, requested_at = excluded.requested_at",
            account_id,
            conversation_id,
            bridged_at,
        )

    async def pending_backfills(self) -> list[tuple[int, str, float]]:
        found = await self.pool.fetch(
            "SELECT account_id, conversation_id, bridged_at FROM backfills "
            "ORDER BY account_id, conversation_id"
        )
        return [(int(r["account_id"]), str(r["conversation_id"]), float(r["bridged_at"])) for r in found]

    async def finish_backfill(self, account_id: int, conversation_id: str, bridged_at: float) -> None:
        await self._execute(
            "DELETE FROM backfills WHERE account_id = $1 AND conversation_id = $2 AND bridged_at = $3",
            account_id,
            conversation_id,
            bridged_at,
        )

    # -- budgets -----------------------------------------------------------

    async def load_budgets(self) -> list[dict[str, Any]]:
        return [
            dict(r) for r in await self.pool.fetch("SELECT key, limit_, remaining, reset_at FROM budgets")
        ]

    async def save_budgets(self, windows: Sequence[tuple[str, int, int, float]]) -> None:
        """Several windows in one transaction (a send touches three)."""
        async with self._tx() as conn:
            await self._save_budgets(conn, windows)

    @staticmethod
    async def _save_budgets(conn: Conn, windows: Sequence[tuple[str, int, int, float]]) -> None:
        if windows:
            save = (
                _SAVE_BUDGETS.replace("$3", "$1").replace("$4", "$2").replace("$5", "$3").replace("$6", "$4")
            )
            await conn.execute(f"{save} {_ON_BUDGET_CONFLICT}", *_budget_columns(windows))


class _AccountRow:
    """``LockedAccount`` on the connection that holds the account's refresh lock."""

    def __init__(self, store: PostgresStore, conn: Conn, account_id: int) -> None:
        self._store = store
        self._conn = conn
        self._id = account_id

    async def read(self) -> Account | None:
        row = await self._conn.fetchrow("SELECT * FROM accounts WHERE id = $1", self._id)
        return self._store._account(row) if row else None

    async def save_tokens(self, tokens: TokenSet) -> None:
        await self._store._update_tokens(self._conn, self._id, tokens)

    async def flag_reconnect(self) -> None:
        await self._conn.execute("UPDATE accounts SET needs_reconnect = 1 WHERE id = $1", self._id)


async def _ended_on_failure(conn: Conn, statement: Awaitable[object]) -> None:
    """Run a session lock's lock or unlock; if it fails or is cancelled, whether the lock is held
    is unknown, so the session ends (and any lock with it) rather than go back to the pool."""
    try:
        await statement
    except BaseException:
        conn.terminate()
        raise


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to reset when a connection returns to the pool: the store changes no session state
    (its one session lock, ``refresh_lock``, is released before the connection goes back, or the
    connection ended), and asyncpg's default reset costs a round trip per call."""


# The budget windows as four arrays ($3..$6 of the statements that save them with other work).
_SAVE_BUDGETS = (
    "INSERT INTO budgets (key, limit_, remaining, reset_at) "
    "SELECT * FROM unnest($3::text[], $4::integer[], $5::integer[], $6::double precision[])"
)
_ON_BUDGET_CONFLICT = (
    "ON CONFLICT (key) DO UPDATE SET limit_ = excluded.limit_, remaining = excluded.remaining, "
    "reset_at = excluded.reset_at"
)


def _budget_columns(
    windows: Sequence[tuple[str, int, int, float]],
) -> tuple[list[str], list[int], list[int], list[float]]:
    """Column arrays, one row per key (the last wins, as saving them one by one would)."""
    latest = {key: (key, limit, remaining, reset) for key, limit, remaining, reset in windows}
    keys = list(latest)
    return (
        keys,
        [latest[k][1] for k in keys],
        [latest[k][2] for k in keys],
        [float(latest[k][3]) for k in keys],
    )


def _snowflake_sql(column: str) -> str:
    """An event id as a number, for comparing (non-digits count as 0, as SQLite's CAST)."""
    return f"(CASE WHEN {column} ~ '^[0-9]+$' THEN {column}::numeric ELSE 0 END)"


_INBOUND_WAITS = rows.inbound_waits(_snowflake_sql)
_INBOUND_GAUGES_SQL = rows.inbound_gauges_sql(_snowflake_sql)
