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

from adapters.store import inbound, rows
from adapters.store.accounts import AccountsRole, ConnectFlowRole
from adapters.store.budgets import BudgetsRole
from adapters.store.crypto import TokenCipher
from adapters.store.engine import Dialect, Engine, PostgresEngine, PostgresTransaction
from adapters.store.inbound import CursorsRole, InboundRole
from adapters.store.lookups import LookupsRole
from adapters.store.mappings import MappingsRole
from adapters.store.outbox import OutboxRole
from adapters.store.roles import StoreBase
from bridge.errors import StoreUnavailable
from bridge.model import (
    Accepted,
    IncomingMessage,
    OutboxItem,
    OutboxKind,
    OutboxState,
    RenderedPart,
    Sent,
    Unreadable,
)
from bridge.ports import LockedAccount
from bridge.settings import redacted
from migrations import postgres as pg_migrations
from migrations.postgres import PENDING_STATES

log = logging.getLogger("adapters.store.postgres")

SEEN_EVENTS_KEEP_SECONDS = 24 * 3600.0  # as the SQLite store: Slack retries within minutes
NOW = "extract(epoch from clock_timestamp())::double precision"
OUTBOX_CHANNEL = "xdm_outbox"  # NOTIFY: new outbox rows (the payload names the instance that wrote them)
INBOUND_CHANNEL = "xdm_inbound"  # NOTIFY: new inbound rows queued for Slack (a push a standby took)
CLOSE_TIMEOUT = 5.0  # seconds the pool may take to close gracefully
REFRESH_LOCK = 0x786D  # pg_advisory_lock(REFRESH_LOCK, account id): one token refresh per account

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


class PostgresStore(
    AccountsRole,
    ConnectFlowRole,
    LookupsRole,
    MappingsRole,
    OutboxRole,
    InboundRole,
    CursorsRole,
    BudgetsRole,
    StoreBase,
):
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

    # -- relay -------------------------------------------------------------

    async def accept_if_mapped(self, message: IncomingMessage, now: float) -> Accepted | None:
        # One round trip and one commit (``xdm_accept_v1``, migration 0024): the channel's lock,
        # then the insert.
        found = await self.pool.fetchrow(
            "SELECT a.busy_before, (a.item).* FROM xdm_accept_v1($1, $2, $3, $4, $5, $6, $7, $8, $9, "
            "$10) AS a",
            *self._accept_args(message, now),
        )
        if found is None:
            return None
        if found["id"] is None:
            return Accepted(new=False)
        # Under the channel's lock nothing else accepts or finishes a row of this channel, so
        # "nothing unfinished before it" (read after the lock was taken) holds until commit.
        return Accepted(new=True, head=None if found["busy_before"] else rows.item(found))

    @staticmethod
    async def _lock_channel(conn: Conn, team_id: str, channel_id: str) -> Any:
        """The channel's mapping row, locked until commit (serialises a channel's accepts and sends).

        Its own statement: what follows must read the database as it is once the lock is held."""
        return await conn.fetchrow(
            "SELECT * FROM mappings WHERE team_id = $1 AND channel_id = $2 FOR NO KEY UPDATE",
            team_id,
            channel_id,
        )

    def _accept_args(self, message: IncomingMessage, now: float) -> tuple[Any, ...]:
        """$1..$10 of ``xdm_accept_v1`` (migrations/postgres.py): the message and how to announce it."""
        return (
            message.team_id,
            message.channel_id,
            message.ts,
            message.user_id,
            rows.message_source(message),
            now,
            message.event_id,
            OUTBOX_CHANNEL,
            self.instance_id,
            self.announce,
        )

    async def _notify(self, conn: Conn) -> None:
        """Wake the leader's worker (on whichever instance) when this transaction commits."""
        if self.announce:
            await conn.execute("SELECT pg_notify($1, $2)", OUTBOX_CHANNEL, self.instance_id)

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
                yield self.locked_account(PostgresTransaction(conn), account_id)
            finally:
                await _ended_on_failure(
                    conn, conn.execute("SELECT pg_advisory_unlock($1, $2)", REFRESH_LOCK, account_id)
                )

    async def prune_batch(
        self, now: float, *, keep_after: float, inbound_keep_after: float, batch: int
    ) -> int:
        """Delete at most ``batch`` rows of each kind past retention (as the SQLite store)."""
        async with self._tx() as conn:
            deleted = 0
            for sql, args in (
                (
                    "DELETE FROM seen_events WHERE event_id IN (SELECT event_id FROM seen_events "
                    "WHERE seen_at < $1 ORDER BY seen_at LIMIT $2)",
                    (now - SEEN_EVENTS_KEEP_SECONDS, batch),
                ),
                (
                    f"DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE created_at < $1 "
                    f"AND state NOT IN {PENDING_STATES} AND state != 'held' ORDER BY created_at LIMIT $2)",
                    (keep_after, batch),
                ),
                (
                    "DELETE FROM message_map WHERE (team_id, channel_id, slack_ts, part) IN ("
                    "SELECT team_id, channel_id, slack_ts, part FROM message_map WHERE created_at < $1 "
                    "ORDER BY created_at LIMIT $2)",
                    (keep_after, batch),
                ),
                (
                    f"DELETE FROM inbound WHERE id IN (SELECT id FROM inbound WHERE {rows.INBOUND_FINISHED} "
                    "AND created_at < $1 ORDER BY created_at LIMIT $2)",
                    (inbound_keep_after, batch),
                ),
            ):
                status = await conn.execute(sql, *args)
                deleted += int(status.split()[-1])
        return deleted

    async def inbound_gauges(self) -> dict[str, Any]:
        """As the SQLite store's: one pass over the partial index of rows still to post."""
        return rows.inbound_gauges(await self.pool.fetchrow(_INBOUND_GAUGES_SQL))

    async def outbox_gauges(self) -> dict[str, Any]:
        """``pending`` and ``oldest_pending_at``, from the partial index of unfinished rows."""
        row = await self.pool.fetchrow(
            "SELECT COUNT(*) AS pending, MIN(created_at) AS oldest FROM outbox "
            f"WHERE state IN {PENDING_STATES}"
        )
        assert row is not None
        return {"pending": int(row["pending"] or 0), "oldest_pending_at": row["oldest"]}

    # -- outbox ------------------------------------------------------------

    async def outbox_heads(self) -> list[OutboxItem | Unreadable]:
        # A loose index scan: hop from channel to channel along outbox_pending, then take each
        # channel's first row; one probe per channel, whatever the backlog.
        found = await self.pool.fetch(
            f"""
            WITH RECURSIVE channels (team_id, channel_id) AS (
                (SELECT team_id, channel_id FROM outbox WHERE state IN {PENDING_STATES}
                 ORDER BY team_id, channel_id LIMIT 1)
                UNION ALL
                SELECT next.team_id, next.channel_id FROM channels AS c, LATERAL (
                    SELECT team_id, channel_id FROM outbox
                    WHERE state IN {PENDING_STATES} AND (team_id, channel_id) > (c.team_id, c.channel_id)
                    ORDER BY team_id, channel_id LIMIT 1
                ) AS next
            )
            SELECT head.* FROM channels AS c, LATERAL (
                SELECT * FROM outbox
                WHERE team_id = c.team_id AND channel_id = c.channel_id AND state IN {PENDING_STATES}
                ORDER BY seq, part LIMIT 1
            ) AS head
            """
        )
        # Row by row: one unreadable row is reported as such, and stops nobody else.
        return [self._readable(r) for r in found]

    @staticmethod
    def _readable(row: Any) -> OutboxItem | Unreadable:
        """The row as an ``OutboxItem``, or what is needed to fail it when its columns make none."""
        try:
            return rows.item(row)
        except (ValueError, TypeError, KeyError) as exc:  # JSONDecodeError is a ValueError
            log.error("outbox row cannot be read", extra={"outbox_id": row["id"], "error": str(exc)})
            return Unreadable(
                id=row["id"],
                team_id=row["team_id"],
                channel_id=row["channel_id"],
                slack_ts=row["slack_ts"],
                ref_ts=row["ref_ts"] or row["slack_ts"],
                author_id=row["author_id"] or "",
                account_id=row["account_id"],
                reason=f"the bridge's stored copy of it could not be read ({exc})",
            )

    @staticmethod
    async def _channel_head(conn: Conn, team_id: str, channel_id: str) -> Any:
        return await conn.fetchrow(
            f"SELECT * FROM outbox WHERE team_id = $1 AND channel_id = $2 AND state IN {PENDING_STATES} "
            "ORDER BY seq, part LIMIT 1",
            team_id,
            channel_id,
        )

    async def render(self, item_id: int, parts: Sequence[RenderedPart]) -> OutboxItem:
        async with self._tx() as conn:
            await self._write_render(conn, item_id, parts)
            row = await conn.fetchrow("SELECT * FROM outbox WHERE id = $1", item_id)
        assert row is not None
        return rows.item(row)

    @staticmethod
    async def _write_render(conn: Conn, item_id: int, parts: Sequence[RenderedPart]) -> None:
        """The first part's text on the row itself; further parts as rows right behind it."""
        assert parts, "a message renders to at least one part"
        first = parts[0]
        await conn.execute(
            "UPDATE outbox SET text = $1, media = $2, parts_total = $3 WHERE id = $4",
            first.text,
            rows.json_or_none(first.media),
            len(parts),
            item_id,
        )
        if len(parts) > 1:
            await conn.executemany(
                """
                INSERT INTO outbox (seq, part, parts_total, team_id, channel_id, slack_ts, ref_ts,
                                    author_id, account_id, target_participant, target_conversation,
                                    target_group, text, media, source, state, attempts, next_attempt_at,
                                    created_at, hourglass, kind)
                SELECT seq, $1, $2, team_id, channel_id, slack_ts, ref_ts, author_id, account_id,
                       target_participant, target_conversation, target_group, $3, $4, '{}', 'queued', 0,
                       0, created_at, 0, kind
                FROM outbox WHERE id = $5
                ON CONFLICT DO NOTHING
                """,
                [
                    (index, len(parts), part.text, rows.json_or_none(part.media), item_id)
                    for index, part in enumerate(parts[1:], start=1)
                ],
            )

    async def set_media_id(
        self, item_id: int, media_id: str | None, uploaded_at: float | None = None
    ) -> None:
        await self._execute(
            "UPDATE outbox SET media_id = $1, media_uploaded_at = $2, media_unfinished = 0 WHERE id = $3",
            media_id,
            uploaded_at,
            item_id,
        )

    async def begin_media_upload(self, item_id: int) -> None:
        await self._execute(
            "UPDATE outbox SET media_unfinished = media_unfinished + 1 WHERE id = $1", item_id
        )

    async def end_media_upload(self, item_id: int) -> None:
        await self._execute("UPDATE outbox SET media_unfinished = 0 WHERE id = $1", item_id)

    async def drop_media(self, item_id: int) -> None:
        await self._execute(
            "UPDATE outbox SET media = NULL, media_id = NULL, media_uploaded_at = NULL, "
            "media_unfinished = 0 WHERE id = $1",
            item_id,
        )

    async def accept_edit(
        self, team_id: str, channel_id: str, ref_ts: str, edit_ts: str, source: dict[str, Any], now: float
    ) -> str:
        """As the SQLite store: "updated", "queued" or "unknown"."""
        async with self._tx() as conn:
            await self._lock_channel(conn, team_id, channel_id)
            original = await conn.fetchrow(
                "SELECT * FROM outbox WHERE team_id = $1 AND channel_id = $2 AND slack_ts = $3 AND part = 0 "
                "AND kind = 'message' FOR UPDATE",
                team_id,
                channel_id,
                ref_ts,
            )
            if original is None:
                return "unknown"
            # A held part is judged by the state it had (``held_state``).
            states = await conn.fetch(
                "SELECT COALESCE(held_state, state) AS state FROM outbox WHERE team_id = $1 "
                "AND channel_id = $2 AND slack_ts = $3 AND kind = 'message'",
                team_id,
                channel_id,
                ref_ts,
            )
            if original["deleted_at"] is None and all(r["state"] in ("queued", "waiting") for r in states):
                # Nothing of it was handed to X: the new text replaces the old, rendered or not.
                # The row is rendered again from the new source (its further parts with it).
                merged = {**json.loads(original["source"] or "{}"), **source}
                await conn.execute(
                    "DELETE FROM outbox WHERE team_id = $1 AND channel_id = $2 AND slack_ts = $3 "
                    "AND kind = 'message' AND part > 0",
                    team_id,
                    channel_id,
                    ref_ts,
                )
                await conn.execute(
                    "UPDATE outbox SET source = $1, text = NULL, chat = NULL, media = NULL, media_id = NULL, "
                    "media_uploaded_at = NULL, parts_total = 1 WHERE id = $2",
                    json.dumps(merged),
                    original["id"],
                )
                return "updated"
            inserted = await self._insert_follow_up(conn, original, OutboxKind.EDIT, edit_ts, source, now)
            if inserted:
                await self._notify(conn)
            return "queued" if inserted else "unknown"

    async def accept_delete(
        self, team_id: str, channel_id: str, ref_ts: str, delete_ts: str, now: float
    ) -> str:
        """As the SQLite store: "cancelled", "queued" or "unknown"."""
        async with self._tx() as conn:
            await self._lock_channel(conn, team_id, channel_id)
            found = await conn.fetch(
                "SELECT * FROM outbox WHERE team_id = $1 AND channel_id = $2 AND ref_ts = $3 "
                "AND kind IN ('message', 'edit') ORDER BY seq, part FOR UPDATE",
                team_id,
                channel_id,
                ref_ts,
            )
            if not found:
                return "unknown"
            # Parts not yet handed to X are simply not sent (only the message's own parts and
            # corrections: a delete row queued by an earlier copy of this event must stay). A held
            # row is judged by the state it had.
            await conn.execute(
                "UPDATE outbox SET state = 'cancelled', held_for = NULL, held_state = NULL, "
                "last_error = 'deleted in Slack before it was sent' "
                "WHERE team_id = $1 AND channel_id = $2 AND ref_ts = $3 AND kind IN ('message', 'edit') "
                "AND COALESCE(held_state, state) IN ('queued', 'waiting')",
                team_id,
                channel_id,
                ref_ts,
            )
            # A part caught mid-send may or may not be on X: it is read back, never sent again.
            await conn.execute(
                "UPDATE outbox SET deleted_at = $1 "
                "WHERE team_id = $2 AND channel_id = $3 AND ref_ts = $4 "
                "AND COALESCE(held_state, state) = 'sending'",
                now,
                team_id,
                channel_id,
                ref_ts,
            )
            reached = [r for r in found if (r["held_state"] or r["state"]) in ("sent", "sending")]
            if not reached:
                return "cancelled"
            inserted = await self._insert_follow_up(conn, found[0], OutboxKind.DELETE, delete_ts, {}, now)
            if inserted:
                await self._notify(conn)
            return "queued" if inserted else "unknown"

    @staticmethod
    async def _insert_follow_up(
        conn: Conn, original: Any, kind: OutboxKind, key_ts: str, source: dict[str, Any], now: float
    ) -> bool:
        held_for = None
        if original["target_conversation"] and not original["target_participant"]:
            # Into a conversation held for another X account (the original, or the channel, is):
            # the correction or delete waits for that account, as the original does.
            held_for = original["held_for"] or await conn.fetchval(
                "SELECT held_for FROM mappings WHERE team_id = $1 AND channel_id = $2",
                original["team_id"],
                original["channel_id"],
            )
        row = await conn.fetchrow(
            """
            WITH n AS (SELECT nextval(pg_get_serial_sequence('outbox', 'id')) AS id)
            INSERT INTO outbox (id, seq, part, parts_total, team_id, channel_id, slack_ts, ref_ts,
                                author_id, account_id, target_participant, target_conversation,
                                target_group, text, source, state, attempts, next_attempt_at, created_at,
                                hourglass, kind, held_for, held_state)
            SELECT n.id, n.id, 0, 1, $1, $2, $3, $4, $5, $6, $7, $8, $12, NULL, $9,
                   CASE WHEN $13::text IS NULL THEN 'queued' ELSE 'held' END, 0, 0, $10, 0, $11,
                   $13::text, CASE WHEN $13::text IS NULL THEN NULL ELSE 'queued' END
            FROM n
            ON CONFLICT DO NOTHING
            RETURNING id
            """,
            original["team_id"],
            original["channel_id"],
            f"{key_ts}:{kind.value}",
            original["ref_ts"] or original["slack_ts"],
            original["author_id"],
            original["account_id"],
            original["target_participant"],
            # One target only: a 1-to-1 row is addressed by its participant.
            None if original["target_participant"] else original["target_conversation"],
            json.dumps(source, separators=(",", ":")),
            now,
            kind.value,
            original["target_group"],
            held_for,
        )
        return row is not None

    async def relayed_events(self, team_id: str, channel_id: str, ref_ts: str) -> list[str | None]:
        """X's dm_event ids for every part (and correction) relayed for a Slack message; None for
        one X took without naming it (recorded sent without an id)."""
        found = await self.pool.fetch(
            "SELECT dm_event_id FROM outbox WHERE team_id = $1 AND channel_id = $2 AND ref_ts = $3 "
            "AND kind IN ('message', 'edit') AND state = 'sent' "
            "ORDER BY seq, part",
            team_id,
            channel_id,
            ref_ts,
        )
        return [r["dm_event_id"] for r in found]

    async def message_text(self, team_id: str, channel_id: str, ts: str) -> str | None:
        """As the SQLite store's: accepted from Slack, or posted from X (the channel's map)."""
        source = await self.pool.fetchval(
            "SELECT source FROM outbox WHERE team_id = $1 AND channel_id = $2 AND slack_ts = $3 AND part = 0",
            team_id,
            channel_id,
            ts,
        )
        if source is None:
            source = await self.pool.fetchval(
                "SELECT i.payload FROM message_map AS m JOIN inbound AS i "
                "ON i.dm_event_id = m.dm_event_id AND i.team_id = m.team_id AND i.channel_id = m.channel_id "
                "WHERE m.team_id = $1 AND m.channel_id = $2 AND m.slack_ts = $3 AND m.part = 0",
                team_id,
                channel_id,
                ts,
            )
        if source is None:
            return None
        text = json.loads(source or "{}").get("text")
        return str(text) if text else None

    async def mark_sending(
        self,
        item_id: int,
        now: float,
        budgets: Sequence[tuple[str, int, int, float]] = (),
        *,
        parts: Sequence[RenderedPart] | None = None,
        source: dict[str, Any] | None = None,
    ) -> OutboxItem | None:
        # One statement: the claim re-checks its conditions on the row as it is when locked, so a
        # delete or an edit that landed since the row was read makes it claim nothing.
        if parts is None:
            render, extra = "", ""
            condition = " AND text IS NOT NULL"  # an edit reset its text since it was read: render again
            texts: list[str] = []
            medias: list[str | None] = []
            first: RenderedPart | None = None
        else:
            assert parts, "a message renders to at least one part"
            first = parts[0]
            render = ", text = $8, media = $9, parts_total = $10"
            condition = " AND text IS NULL AND source::jsonb IS NOT DISTINCT FROM $7::jsonb"
            texts = [p.text for p in parts[1:]]
            medias = [rows.json_or_none(p.media) for p in parts[1:]]
            extra = """,
            extra AS (
                INSERT INTO outbox (seq, part, parts_total, team_id, channel_id, slack_ts, ref_ts, author_id,
                                    account_id, target_participant, target_conversation, target_group,
                                    text, media, source, state, attempts, next_attempt_at, created_at,
                                    hourglass, kind)
                SELECT c.seq, p.ord::integer, $10, c.team_id, c.channel_id, c.slack_ts, c.ref_ts, c.author_id,
                       c.account_id, c.target_participant, c.target_conversation, c.target_group, p.text,
                       p.media, '{}', 'queued', 0, 0, c.created_at, 0, c.kind
                FROM claimed AS c, unnest($11::text[], $12::text[]) WITH ORDINALITY AS p (text, media, ord)
                ON CONFLICT DO NOTHING
            )"""
        args: list[Any] = [item_id, now, *_budget_columns(budgets)]
        if parts is not None and first is not None:
            args += [
                json.dumps(source),
                first.text,
                rows.json_or_none(first.media),
                len(parts),
                texts,
                medias,
            ]
        row = await self.pool.fetchrow(
            f"""
            WITH claimed AS (
                UPDATE outbox SET state = 'sending', attempts = attempts + 1, sending_since = $2{render}
                WHERE id = $1 AND state IN {PENDING_STATES} AND deleted_at IS NULL{condition}
                RETURNING *
            ),
            budget AS ({_SAVE_BUDGETS} WHERE EXISTS (SELECT 1 FROM claimed) {_ON_BUDGET_CONFLICT}){extra}
            SELECT * FROM claimed
            """,
            *args,
        )
        return rows.item(row) if row else None

    async def mark_sent(
        self, item_id: int, sent: Sent, now: float, budgets: Sequence[tuple[str, int, int, float]] = ()
    ) -> OutboxItem | None:
        # One round trip and one commit (``xdm_mark_sent_v1``, migration 0024): the channel's lock,
        # the bookkeeping, and the channel's next row.
        following = await self.pool.fetchrow(
            "SELECT * FROM xdm_mark_sent_v1($1, $2, $3, $4, $5, $6, $7, $8)",
            sent.dm_event_id,
            sent.dm_conversation_id,
            *_budget_columns(budgets),
            now,
            item_id,
        )
        if following is None or following["id"] is None:
            return None
        head = self._readable(following)
        # An unreadable head is left to the scheduler, which fails it (the send is recorded).
        return head if isinstance(head, OutboxItem) else None

    async def reschedule(
        self,
        item_id: int,
        state: OutboxState,
        next_attempt_at: float,
        error: str | None,
        *,
        held_since: float | None = None,
    ) -> None:
        # A row deleted in Slack mid-send never goes back to a state that would send it: once X is
        # known not to have it, it is cancelled.
        await self._execute(
            "UPDATE outbox SET state = CASE WHEN deleted_at IS NOT NULL AND $1 IN ('queued', 'waiting') "
            "THEN 'cancelled' ELSE $1 END, next_attempt_at = $2, last_error = $3, "
            # Only a row still pending: the caller's copy may predate a Slack delete that
            # cancelled it, and writing its state back would resurrect the message.
            f"held_since = COALESCE(held_since, $4) WHERE id = $5 AND state IN {PENDING_STATES}",
            state.value,
            next_attempt_at,
            error,
            held_since,
            item_id,
        )

    async def mark_done(self, item_id: int, now: float) -> None:
        await self._execute(
            "UPDATE outbox SET state = 'sent', sent_at = $1, last_error = NULL WHERE id = $2", now, item_id
        )

    async def keep_chat(self, item_id: int, text: str, chat: dict[str, Any]) -> OutboxItem | None:
        row = await self.pool.fetchrow(
            "WITH kept AS (UPDATE outbox SET chat = $1 WHERE id = $2 AND chat IS NULL AND text = $3 "
            f"AND state IN {PENDING_STATES} AND deleted_at IS NULL RETURNING *) "
            "SELECT * FROM kept UNION ALL SELECT * FROM outbox WHERE id = $2 AND NOT EXISTS "
            "(SELECT 1 FROM kept)",
            json.dumps(chat, separators=(",", ":")),
            item_id,
            text,
        )
        kept = None if row is None else rows.item(dict(row))
        return kept if kept is not None and kept.text == text and kept.chat is not None else None

    async def drop_chat(self, item_id: int) -> None:
        await self._execute("UPDATE outbox SET chat = NULL WHERE id = $1", item_id)

    async def set_hourglass(self, item_id: int, on: bool) -> None:
        await self._execute("UPDATE outbox SET hourglass = $1 WHERE id = $2", int(on), item_id)

    async def set_held_since(self, item_id: int, since: float | None) -> None:
        await self._execute("UPDATE outbox SET held_since = $1 WHERE id = $2", since, item_id)

    async def release_account(self, account_id: int, now: float) -> int:
        # Every unfinished row, whatever it waited for: a ``sending`` one stays ``sending`` (it is
        # read back before any resend); the others are simply due again.
        status = await self._execute(
            "UPDATE outbox SET state = CASE WHEN state = 'sending' THEN 'sending' ELSE 'queued' END, "
            f"next_attempt_at = $1 WHERE account_id = $2 AND state IN {PENDING_STATES}",
            now,
            account_id,
        )
        return int(status.split()[-1])

    async def known_event_ids(self, event_ids: Sequence[str]) -> set[str]:
        if not event_ids:
            return set()
        found = await self.pool.fetch(
            "SELECT dm_event_id FROM message_map WHERE dm_event_id = ANY($1::text[])", list(event_ids)
        )
        return {r["dm_event_id"] for r in found}

    async def outbox_summary(
        self, team_id: str | None = None, channel_id: str | None = None
    ) -> dict[str, Any]:
        where = ["1 = 1"]
        params: list[Any] = []
        if team_id is not None:
            params.append(team_id)
            where.append(f"team_id = ${len(params)}")
        if channel_id is not None:
            params.append(channel_id)
            where.append(f"channel_id = ${len(params)}")
        clause = " AND ".join(where)
        async with self.pool.acquire() as conn:
            counts = {
                r["state"]: r["n"]
                for r in await conn.fetch(
                    f"SELECT state, COUNT(*) AS n FROM outbox WHERE {clause} GROUP BY state", *params
                )
            }
            oldest = await conn.fetchval(
                f"SELECT MIN(created_at) FROM outbox WHERE {clause} AND state IN {PENDING_STATES}", *params
            )
        return {
            "counts": counts,
            "pending": sum(counts.get(s, 0) for s in ("queued", "sending", "waiting")),
            "oldest_pending_at": oldest,
        }

    async def list_outbox(self, states: Sequence[OutboxState], limit: int = 100) -> list[OutboxItem]:
        found = await self.pool.fetch(
            "SELECT * FROM outbox WHERE state = ANY($1::text[]) ORDER BY seq, part LIMIT $2",
            [s.value for s in states],
            limit,
        )
        return [rows.item(r) for r in found]

    async def recently_sent(self, since: float, limit: int) -> list[OutboxItem]:
        # created_at bounds the scan to its index, as on SQLite.
        found = await self.pool.fetch(
            "SELECT * FROM outbox WHERE created_at >= $1 AND state = 'sent' AND kind = 'message' "
            "AND sent_at >= $2 AND part = parts_total - 1 ORDER BY sent_at DESC LIMIT $3",
            since - 86_400,
            since,
            limit,
        )
        return [rows.item(r) for r in found]

    async def get_item(self, item_id: int) -> OutboxItem | None:
        row = await self.pool.fetchrow("SELECT * FROM outbox WHERE id = $1", item_id)
        return rows.item(row) if row else None

    # -- inbound (X → Slack) ----------------------------------------------

    async def _inbound_queued(self, tx: Engine, account_id: int) -> None:
        """Queued rows written by a standby wake the leader's poster with a ``NOTIFY`` on
        ``INBOUND_CHANNEL`` at commit: "active:<account>", the leader reads that account's groups
        at the budget's pace."""
        if self.announce:
            payload = f"{self.instance_id}:active:{account_id}"
            await tx.execute("SELECT pg_notify(?, ?)", INBOUND_CHANNEL, payload)

    @staticmethod
    async def _request_backfill(conn: Conn, account_id: int, conversation_id: str, bridged_at: float) -> None:
        """``inbound.request_backfill_in`` on a connection in its transaction (a mapping made
        with its history; the role itself is ``CursorsRole``)."""
        await inbound.request_backfill_in(PostgresTransaction(conn), account_id, conversation_id, bridged_at)


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


# An event id as a number, for comparing (non-digits count as 0, as SQLite's CAST).
_snowflake_sql = inbound.NUMBER[Dialect.POSTGRES]
_INBOUND_GAUGES_SQL = rows.inbound_gauges_sql(_snowflake_sql)
