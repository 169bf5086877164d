"""The ``Store`` port on PostgreSQL (asyncpg), for ``DATABASE_URL``.

The roles' SQL is the SQLite store's too (``every_role``; one contract suite runs against both).
What is PostgreSQL's own is here: the pool and its session settings, the advisory lock a token
refresh runs under (several instances may share the database, and X's refresh token is
single-use), and the NOTIFYs that wake the leader. Where SQLite has its single writer thread, the
roles lock rows (``relay``, ``outbox``) and heads are found by a loose index scan (``outbox``).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import asyncpg

from adapters.store.crypto import TokenCipher
from adapters.store.engine import Engine, PostgresEngine, PostgresTransaction
from adapters.store.every_role import RoleStore
from bridge.errors import StoreUnavailable
from bridge.ports import LockedAccount
from bridge.settings import redacted
from migrations import postgres as pg_migrations

log = logging.getLogger("adapters.store.postgres")

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
    return {**SESSION_SETTINGS, "application_name": f"xdm-bridge {instance}"}


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


class PostgresStore(RoleStore):
    """PostgreSQL implementation of ``bridge.ports.Store``."""

    def __init__(self, url: str, cipher: TokenCipher, *, pool_size: int = 10) -> None:
        super().__init__(cipher)
        self.url = url
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

    # -- health ------------------------------------------------------------

    async def commit_durability(self) -> str:
        """``synchronous_commit`` as the store's connections have it (``on``: a commit waits for
        its log on disk); for ``doctor``, tests and bench."""
        return str(await self.pool.fetchval("SHOW synchronous_commit"))

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
                yield self.locked_account(PostgresTransaction(conn), account_id)
            finally:
                await _ended_on_failure(
                    conn, conn.execute("SELECT pg_advisory_unlock($1, $2)", REFRESH_LOCK, account_id)
                )

    # -- inbound (X → Slack) ----------------------------------------------

    async def _inbound_queued(self, tx: Engine, account_id: int) -> None:
        """Queued rows written by a standby wake the leader's poster with a ``NOTIFY`` on
        ``INBOUND_CHANNEL`` at commit: "active:<account>", the leader reads that account's groups
        at the budget's pace."""
        if self.announce:
            payload = f"{self.instance_id}:active:{account_id}"
            await tx.execute("SELECT pg_notify(?, ?)", INBOUND_CHANNEL, payload)


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
