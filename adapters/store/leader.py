"""Leader election on PostgreSQL: one instance at a time runs the workers that talk to X.

Every instance serves HTTP and writes to the outbox; only the holder of a session
advisory lock, taken on a connection of its own, runs delivery. PostgreSQL releases
the lock the moment that connection ends (the process died, was stopped, or lost the
network), and a standby polling ``pg_try_advisory_lock`` takes over within one poll.
The new leader's worker finds rows left ``sending`` among the heads and settles them
as after a crash: it reads X back before any resend.

The leader's connection also ``LISTEN``s on the outbox channel: a row accepted by any
instance wakes the leader's worker (the accept's ``NOTIFY`` is sent at its commit); and on
the inbound channel: an X event pushed to a standby wakes the leader's poster.

If the leader's own connection fails, it stops leading at once (cancelling its
work): another instance may already hold the lock, and two workers must never send.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg

from adapters.store.postgres import INBOUND_CHANNEL, OUTBOX_CHANNEL, connect

log = logging.getLogger("adapters.store.leader")

LEADER_LOCK = 0x78646D0002  # "xdm" + 2: the delivery leader of this database


class Leadership:
    """Waits for the leader lock, runs ``lead`` while holding it, and waits again if it is lost."""

    def __init__(
        self,
        url: str,
        *,
        instance: str,
        on_notify: Callable[[], None],
        on_inbound: Callable[[str], None] | None = None,
        poll: float = 0.5,
    ) -> None:
        self._url = url
        self._instance = instance
        self._on_notify = on_notify
        self._on_inbound = on_inbound
        self._poll = poll
        self.leading = False
        self._stopping = asyncio.Event()

    async def run(self, lead: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Until ``stop``: be a standby, and the leader whenever the lock is ours."""
        while not self._stopping.is_set():
            try:
                await self._term(lead)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("leader connection failed; standing by", extra={"error": str(exc)})
            if not self._stopping.is_set():
                await self._sleep(self._poll)

    def stop(self) -> None:
        self._stopping.set()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _term(self, lead: Callable[[], Coroutine[Any, Any, None]]) -> None:
        conn = await connect(self._url)
        try:
            while not self._stopping.is_set():
                if await conn.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK):
                    break
                await self._sleep(self._poll)
            else:
                return
            await conn.add_listener(OUTBOX_CHANNEL, self._notified)
            if self._on_inbound is not None:
                await conn.add_listener(INBOUND_CHANNEL, self._inbound_notified)
            log.info("leading: this instance runs delivery", extra={"instance": self._instance})
            self.leading = True
            try:
                await self._lead_while_connected(conn, lead)
            finally:
                self.leading = False
        finally:
            # Closing the connection releases the lock (an explicit unlock would need a live one).
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)

    async def _lead_while_connected(
        self, conn: asyncpg.Connection, lead: Callable[[], Coroutine[Any, Any, None]]
    ) -> None:
        work = asyncio.create_task(lead(), name="leader-work")
        try:
            while not work.done() and not self._stopping.is_set():
                done, _ = await asyncio.wait({work}, timeout=self._poll)
                if done:
                    break
                # The lock lives as long as this connection: check it is still there.
                await asyncio.wait_for(conn.fetchval("SELECT 1"), max(self._poll * 4, 2.0))
        except BaseException:
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await work
            log.warning("stopped leading: lost the leader connection", extra={"instance": self._instance})
            raise
        await work  # on stop, ``lead`` finishes in-flight sends (its own grace) before the lock goes

    def _notified(self, connection: Any, pid: int, channel: str, payload: object) -> None:
        if payload != self._instance:  # our own accepts were already offered to our worker
            self._on_notify()

    def _inbound_notified(self, connection: Any, pid: int, channel: str, payload: object) -> None:
        # "<instance>:active:<account>" (rows queued for that account) or "<instance>:<what>" (a
        # wake-up passed on by a standby).
        instance, _, what = str(payload).partition(":")
        if instance != self._instance and self._on_inbound is not None:
            self._on_inbound(what)
