"""Leader election on PostgreSQL: one instance at a time runs the workers that talk to X.

Every instance serves HTTP and writes to the outbox; only the holder of the lease runs
delivery. The lease is one row (``leader_lease``) that the leader renews every second on
a connection of its own; it lasts ``lease`` seconds from each renewal, by the database's
clock. A standby takes the row when the lease has run out or, sooner, when the leader's
session has ended: at once when no session of its process is left (it died, or lost its
connections with a reset; every session names its instance in ``application_name``), else once
it has not renewed for the few seconds (6) in which a leader whose lease connection alone ended
would have found out and stopped; a leader that stops releases the row at once. Each term's
leader holds a session advisory lock named by the term, and ``pg_locks`` says whether it is
still held.

A leader partitioned from the database without a reset keeps its session open on the
server for as long as TCP lets it (hours), so nothing may depend on the server noticing.
The leader fences itself by time instead: it stops its work (delivery, polling, posting)
once it could not renew for ``lease - margin`` seconds, counted on its own clock from the
moment it sent the last renewal that succeeded; the row runs out ``lease`` seconds after
the database applied it, later still. So the old leader has stopped before a new one can
start. The new leader's worker finds rows left ``sending`` among the heads and settles them
as after a crash: it reads X back before any resend.

Every standby reads the row each poll, so its ``/healthz`` can say how long ago anyone last
renewed the lease (``heartbeat_age``).

The leader's connection also ``LISTEN``s on the outbox channel: a row accepted by any
instance wakes the leader's worker (the accept's ``NOTIFY`` is sent at its commit); and on
the inbound channel: an X event pushed to a standby wakes the leader's poster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg

from adapters.store.postgres import INBOUND_CHANNEL, NOW, OUTBOX_CHANNEL, connect

log = logging.getLogger("adapters.store.leader")

LEADER_LOCK = 0x786F  # pg_advisory_lock(LEADER_LOCK, term): held by each term's leader on its session
# The lock that made an instance leader before the lease (one bigint key). A rolling deploy
# runs both versions at once: no lease is taken while a previous version's leader holds it (a
# session holding it and no term lock), and a leader takes it too when it can, so that a
# previous version's standby, which knows only this lock, stays a standby.
OLD_LEADER_LOCK = 0x78646D0002
LEASE_SECONDS = 10.0  # a leader that cannot renew for this long is replaced
RENEW_EVERY = 1.0
FENCE_MARGIN = 3.0  # the leader stops this long before its lease could run out
STATEMENT_TIMEOUT = 2.0  # a lease statement that takes longer: the connection is given up

_SHORT_TRANSACTIONS = "SET idle_in_transaction_session_timeout = '2s'"
_ENSURE_ROW = (
    "INSERT INTO leader_lease (id, holder, term, renewed_at, expires_at) VALUES (1, '', 0, 0, 0) "
    "ON CONFLICT (id) DO NOTHING"
)
# The row, locked until the transaction ends (standbys trying at once take turns), and whether
# the current term's leader still has a session: its advisory lock is in pg_locks.
_READ_ROW = f"""
    WITH held AS (
        SELECT pid, classid::bigint AS space, objid::bigint AS lock_key, objsubid FROM pg_locks
        WHERE locktype = 'advisory' AND granted
          AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
    )
    SELECT holder, term, {NOW} - renewed_at AS age, expires_at < {NOW} AS expired,
           EXISTS (SELECT 1 FROM held WHERE space = $1 AND lock_key = term AND objsubid = 2) AS alive,
           EXISTS (SELECT 1 FROM pg_stat_activity
                   WHERE datname = current_database() AND application_name = 'xdm-bridge ' || holder)
               AS holder_connected,
           EXISTS (SELECT 1 FROM held AS o
                   WHERE o.space = {OLD_LEADER_LOCK >> 32} AND o.lock_key = {OLD_LEADER_LOCK & 0xFFFFFFFF}
                     AND o.objsubid = 1
                     AND NOT EXISTS (SELECT 1 FROM held AS t
                                     WHERE t.pid = o.pid AND t.space = $1 AND t.objsubid = 2)) AS old_leader
    FROM leader_lease WHERE id = 1 FOR UPDATE
"""
_TAKE = (
    f"UPDATE leader_lease SET holder = $1, term = $2, renewed_at = {NOW}, expires_at = {NOW} + $3 "
    "WHERE id = 1"
)
_RENEW = (
    f"UPDATE leader_lease SET renewed_at = {NOW}, expires_at = {NOW} + $3 "
    "WHERE id = 1 AND holder = $1 AND term = $2 RETURNING 1"
)
_RELEASE = f"UPDATE leader_lease SET expires_at = {NOW} WHERE id = 1 AND holder = $1 AND term = $2"


class LeaseLost(Exception):
    """The lease could not be renewed in time, or another instance holds it now."""


async def _within(conn: asyncpg.Connection, statement: Coroutine[Any, Any, Any], seconds: float) -> Any:
    """A lease statement's answer, if it comes in ``seconds``; else the connection is ended at once.

    Not ``wait_for``: it waits for the cancelled statement to finish, and asyncpg's cleanup of
    a statement on a frozen connection can take far longer than the lease has left."""
    task = asyncio.ensure_future(statement)
    done, _ = await asyncio.wait({task}, timeout=max(0.0, seconds))
    if not done:
        conn.terminate()
        task.cancel()
        raise LeaseLost(f"the database did not answer within {seconds:.1f} s")
    return task.result()


def _retrieved(task: asyncio.Task[None]) -> None:
    """Read a finished task's outcome, so asyncio does not report it as never retrieved."""
    if not task.cancelled():
        task.exception()


class Leadership:
    """Waits for the lease, runs ``lead`` while holding it, and waits again if it is lost."""

    def __init__(
        self,
        url: str,
        *,
        instance: str,
        on_notify: Callable[[], None],
        on_inbound: Callable[[str], None] | None = None,
        poll: float = 0.5,
        lease: float = LEASE_SECONDS,
        renew_every: float = RENEW_EVERY,
        margin: float = FENCE_MARGIN,
    ) -> None:
        self._url = url
        self._instance = instance
        self._on_notify = on_notify
        self._on_inbound = on_inbound
        self._poll = poll
        self._lease = lease
        self._renew_every = renew_every
        self._margin = margin
        self.leading = False
        self._stopping = asyncio.Event()
        self._seen: tuple[float, float] | None = None  # (loop time, age of the lease's renewal then)
        self._started = asyncio.get_running_loop().time()

    def heartbeat_age(self) -> float:
        """Seconds since any instance (this one included) last renewed the lease, as last read."""
        now = asyncio.get_running_loop().time()
        if self._seen is None:
            return now - self._started
        seen_at, age = self._seen
        return max(0.0, age) + (now - seen_at)

    async def run(self, lead: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Until ``stop``: be a standby, and the leader whenever the lease is ours."""
        while not self._stopping.is_set():
            try:
                await self._session(lead)
            except (OSError, TimeoutError, LeaseLost, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("leader connection failed; standing by", extra={"error": str(exc) or repr(exc)})
            if not self._stopping.is_set():
                await self._sleep(self._poll)

    def stop(self) -> None:
        self._stopping.set()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _connect(self) -> asyncpg.Connection | None:
        """A connection of its own, or None when ``stop`` comes first (a standby's shutdown need
        not wait for a database that does not answer)."""
        connecting = asyncio.ensure_future(connect(self._url, self._instance))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            done, _ = await asyncio.wait(
                {connecting, stopping}, timeout=self._lease, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stopping.cancel()
        if connecting in done:
            return connecting.result()
        connecting.cancel()
        if self._stopping.is_set():
            return None
        raise TimeoutError(f"could not connect within {self._lease:g} s")

    async def _session(self, lead: Callable[[], Coroutine[Any, Any, None]]) -> None:
        conn = await self._connect()
        if conn is None:
            return
        try:
            # Its one transaction (``_try_take``) locks the lease row for milliseconds; cut off
            # inside it, this session would hold up every renewal until the server ended it.
            await _within(conn, conn.execute(_SHORT_TRANSACTIONS), STATEMENT_TIMEOUT)
            await _within(conn, conn.execute(_ENSURE_ROW), STATEMENT_TIMEOUT)
            while not self._stopping.is_set():
                sent = asyncio.get_running_loop().time()
                term = await _within(conn, self._try_take(conn), STATEMENT_TIMEOUT)
                if term is not None:
                    await self._term(conn, term, sent + self._lease, lead)
                    break
                await self._sleep(self._poll)
        except BaseException:
            # The connection may be frozen: end it here, without waiting for the server (which
            # ends its session, and any lock it holds, whenever it notices).
            conn.terminate()
            raise
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), STATEMENT_TIMEOUT)
        conn.terminate()

    async def _try_take(self, conn: asyncpg.Connection) -> int | None:
        """A new term of ours if the lease is free (run out, or its leader's session gone)."""
        async with conn.transaction():
            row = await conn.fetchrow(_READ_ROW, LEADER_LOCK)
            assert row is not None
            # A previous version's leader renews no lease, but leads: count it as renewed now. A
            # lease never held (a new database, term 0) has the epoch's age: count it from now,
            # or /healthz says "leaderless" while the first instance is taking it.
            never_held = int(row["term"]) == 0
            age = 0.0 if row["old_leader"] or never_held else float(row["age"])
            self._seen = (asyncio.get_running_loop().time(), age)
            gone = self._gone(row["alive"], row["holder_connected"], float(row["age"]))
            if row["old_leader"] or not (row["expired"] or gone):
                return None
            term = int(row["term"]) + 1
            # Free: the row is locked and no session can hold a term that is not written yet.
            await conn.execute("SELECT pg_advisory_lock($1, $2::integer)", LEADER_LOCK, term)
            await conn.execute("SELECT pg_try_advisory_lock($1)", OLD_LEADER_LOCK)
            await conn.execute(_TAKE, self._instance, term, self._lease)
        self._seen = (asyncio.get_running_loop().time(), 0.0)
        return term

    def _gone(self, alive: bool, holder_connected: bool, age: float) -> bool:
        """Has the term's leader surely stopped working, its lease not run out yet?

        With no session of its process left (every session names its instance), it died or was
        cut off with a reset: at once. With its lease session ended but others left, the database
        may have ended only the lease's connection (an operator's ``pg_terminate_backend``, a
        reset of that one connection) while its work goes on over the pool's, until its next
        renewal fails. That renewal comes ``renew_every`` after the last one and fails within
        ``STATEMENT_TIMEOUT``, and its cancelled work is given ``margin`` to end: only past all
        three may another term begin."""
        if alive:
            return False
        return not holder_connected or age >= self._renew_every + STATEMENT_TIMEOUT + self._margin

    async def _term(
        self,
        conn: asyncpg.Connection,
        term: int,
        valid_until: float,
        lead: Callable[[], Coroutine[Any, Any, None]],
    ) -> None:
        await conn.add_listener(OUTBOX_CHANNEL, self._notified)
        if self._on_inbound is not None:
            await conn.add_listener(INBOUND_CHANNEL, self._inbound_notified)
        log.info("leading: this instance runs delivery", extra={"instance": self._instance, "term": term})
        self.leading = True
        try:
            await self._lead_while_renewing(conn, term, valid_until, lead)
        finally:
            self.leading = False
        # Stopped: hand over at once (a standby need not wait for the lease to run out).
        await _within(conn, conn.execute(_RELEASE, self._instance, term), STATEMENT_TIMEOUT)

    async def _lead_while_renewing(
        self,
        conn: asyncpg.Connection,
        term: int,
        valid_until: float,
        lead: Callable[[], Coroutine[Any, Any, None]],
    ) -> None:
        loop = asyncio.get_running_loop()
        work = asyncio.create_task(lead(), name="leader-work")
        try:
            # Renewed until the work ends, stopping included: ``lead`` finishes in-flight sends
            # (its own grace) while the lease is still ours.
            while not work.done():
                await asyncio.wait({work}, timeout=self._renew_every)
                if work.done():
                    break
                sent = loop.time()
                # The last moment this term may still work: past it, a renewal is too late.
                deadline = min(sent + STATEMENT_TIMEOUT, valid_until - self._margin)
                renewed = await _within(
                    conn, conn.fetchval(_RENEW, self._instance, term, self._lease), deadline - sent
                )
                if renewed is None:
                    raise LeaseLost("another instance holds the lease")
                valid_until = sent + self._lease
                self._seen = (sent, 0.0)
        except BaseException as exc:
            work.cancel()  # from here on, nothing more is sent: a send in flight is cut off
            log.warning(
                "stopped leading: lost the lease",
                extra={"instance": self._instance, "term": term, "error": str(exc) or repr(exc)},
            )
            # What the cancelled work cleans up may wait on the database: bounded, and not
            # ``wait_for``, which would wait for the cleanup however long it takes.
            work.add_done_callback(_retrieved)
            await asyncio.wait({work}, timeout=self._margin)
            raise
        await work

    def _notified(self, connection: Any, pid: int, channel: str, payload: object) -> None:
        if payload != self._instance:  # our own accepts were already offered to our worker
            self._on_notify()

    def _inbound_notified(self, connection: Any, pid: int, channel: str, payload: object) -> None:
        # "<instance>:active:<account>" (rows queued for that account) or "<instance>:<what>" (a
        # wake-up passed on by a standby).
        instance, _, what = str(payload).partition(":")
        if instance != self._instance and self._on_inbound is not None:
            self._on_inbound(what)
