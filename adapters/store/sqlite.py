"""The ``Store`` port on SQLite (sqlite-utils), owned by one thread.

Every method hops to a single-worker executor that opened the connection, so
SQLite is never touched from the event loop and writes are serialised without
locks (the pattern datasette uses for its write thread). WAL mode lets the
operator's CLI read while the web process writes.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import sqlite3
import threading
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import IO

from sqlite_utils import Database

from adapters.store.crypto import TokenCipher
from adapters.store.engine import GroupCommits, SqliteEngine, SqliteThread
from adapters.store.every_role import RoleStore
from bridge.errors import StoreUnavailable
from bridge.ports import LockedAccount
from migrations import migrations

log = logging.getLogger("adapters.store.sqlite")

# Inbound rows (and events planned) one transaction of ``take_inbound`` writes at most. An event
# of a conversation bridged to 10,000 channels is 10,000 rows: written at once they held the
# store's one thread for seconds (25 s for a read of 50 such events) while acks, delivery and
# /healthz queued behind.
TAKE_ROWS_PER_TRANSACTION = 100
TAKE_YIELD = 0.02  # how long a take's next transaction waits at most for the calls queued meanwhile
REFRESH_LOCK_POLL = 0.05  # how often a refresh waiting for another process tries the lock again


def open_database(path: str, progress: Callable[[str], None] = lambda _: None) -> Database:
    """Open (creating if needed), set the pragmas every connection needs, apply migrations
    (each one told to ``progress`` before it runs).

    Raises ``StoreUnavailable`` naming what is wrong with ``path`` when it cannot.
    """
    try:
        return _open_database(path, progress)
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"DATABASE_PATH={path!r}: {_why_unusable(path, exc)}") from exc


def _why_unusable(path: str, exc: sqlite3.Error) -> str:
    """The operator's view of a failed open: which folder or file is the problem."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        return "is a folder; it must name a file inside one"
    if not os.path.exists(folder):
        return f"the folder {folder} does not exist (create it, or point at a persistent disk)"
    if not os.path.isdir(folder):
        return f"{folder} is not a folder"
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        return f"cannot write in {folder} (check its permissions, or that the disk is not read-only)"
    return f"cannot open or update the database: {exc}"


def _open_database(path: str, progress: Callable[[str], None]) -> Database:
    conn = sqlite3.connect(path, isolation_level=None)
    db = Database(conn)
    db.execute("PRAGMA busy_timeout = 5000")
    db.execute("PRAGMA foreign_keys = ON")
    if path != ":memory:" and db.journal_mode != "wal":
        db.enable_wal()
    # FULL, not NORMAL: Slack gets its 200 right after the accept commits and never sends the
    # message again, so the commit must survive an OS crash or power loss too. In WAL, NORMAL
    # syncs only at checkpoints and may roll back the last commits then; FULL syncs the WAL at
    # each commit (bench/durability.py measures the cost).
    db.execute("PRAGMA synchronous = FULL")
    _migrate(db, progress)
    return db


def _migrate(db: Database, progress: Callable[[str], None]) -> None:
    """Apply the pending migrations one at a time, saying each (one may take long on a big file)."""
    pending = [m.name for m in migrations.pending(db)]
    for index, name in enumerate(pending):
        progress(f"applying migration {name} ({index + 1} of {len(pending)})…")
        following = pending[index + 1] if index + 1 < len(pending) else None
        migrations.apply(db, stop_before=following)


class DatabaseInUse(Exception):
    """Another ``serve`` holds this SQLite file; the message says what to do."""


@contextmanager
def single_instance(path: str) -> Iterator[None]:
    """Hold ``<path>.lock`` exclusively while ``serve`` runs: SQLite has one writer, the bridge's
    worker assumes it is the only one sending, so a second ``serve`` on the same file refuses to
    start. The kernel drops the lock when the process ends, however it ends (SIGKILL included)."""
    if path == ":memory:":
        yield
        return
    lock_path = f"{path}.lock"
    try:
        handle = open(lock_path, "a+")  # noqa: SIM115 - held open for the whole run
    except OSError:
        # The folder is missing or read-only: opening the database fails next, naming the problem.
        yield
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise DatabaseInUse(
                f"another xdm-bridge serve (pid {holder}) is using the SQLite database {path}; "
                "SQLite allows one instance: stop that one first, or set DATABASE_URL (PostgreSQL) "
                "to run several"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def pending_migrations(path: str) -> list[str]:
    """Names of migrations not yet applied (for ``doctor``)."""
    db = Database(sqlite3.connect(path))
    try:
        return [m.name for m in migrations.pending(db)]
    finally:
        db.close()


class SqliteStore(RoleStore):
    """SQLite implementation of ``bridge.ports.Store``."""

    def __init__(self, path: str, cipher: TokenCipher) -> None:
        super().__init__(cipher)
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._thread = SqliteThread(self._executor)
        self._db: Database | None = None
        self._owner: int | None = None
        self._refresh_lock_handle: IO[str] | None = None
        # One take per account at a time (as PostgreSQL's advisory lock): a take spans several
        # transactions here, and two interleaved could commit one channel's rows out of X's order.
        self._take_locks: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)

    # -- lifecycle ---------------------------------------------------------

    async def open(self) -> None:
        await self._thread.run(self._open)

    def _open(self) -> None:
        self._db = open_database(self.path)
        self._owner = threading.get_ident()
        log.info("database ready", extra={"path": self.path})

    async def close(self) -> None:
        if self._db is not None:
            await self._thread.run(self._close)
            grouped = self._thread.group_commits
            log.info(
                "database closed", extra={"grouped_calls": grouped.calls, "group_commits": grouped.groups}
            )
        self._executor.shutdown(wait=True)
        if self._refresh_lock_handle is not None:
            self._refresh_lock_handle.close()
            self._refresh_lock_handle = None

    def _close(self) -> None:
        assert self._db is not None
        self._db.close()
        self._db = None

    # -- inbound (X → Slack): a take in transactions of a few rows each ------

    _take_rows = TAKE_ROWS_PER_TRANSACTION

    def _take_lock(self, account_id: int) -> AbstractAsyncContextManager[None]:
        return self._take_locks[account_id]

    async def _between_takes(self) -> None:
        await self._thread.after_others(TAKE_YIELD)

    @property
    def engine(self) -> SqliteEngine:
        """Statements for the role stores written once over ``adapters.store.engine``."""
        return SqliteEngine(self._thread, lambda: self.db)

    @property
    def group_commits(self) -> GroupCommits:
        """How the hot path's calls (accepts, claims, sends) were committed so far, in groups."""
        return self._thread.group_commits

    @property
    def db(self) -> Database:
        assert self._db is not None, "store not open"
        assert threading.get_ident() == self._owner, "SQLite touched outside its owner thread"
        return self._db

    @asynccontextmanager
    async def refresh_lock(self, account_id: int) -> AsyncIterator[LockedAccount]:
        """One token refresh per account across processes: ``serve`` and an operator's command
        (``xchat setup``, ``accounts disconnect``) may use one account's single-use refresh token
        at once. A POSIX record lock on byte ``account_id`` of ``<path>.refresh-lock``; the kernel
        drops it when the process ends however it ends. Such locks belong to the process, so
        ``TokenManager``'s own lock is what serialises refreshes within one. The row is read and
        written by the store's own calls (one thread, no pool to run out of)."""
        if self.path == ":memory:":
            yield self.locked_account(self.engine, account_id)
            return
        handle = self._refresh_lock_file()
        # Tried without blocking and retried: a lock taken in a thread after its waiter was
        # cancelled would never be released.
        while True:
            try:
                fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, account_id)
                break
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
                await asyncio.sleep(REFRESH_LOCK_POLL)
        try:
            yield self.locked_account(self.engine, account_id)
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN, 1, account_id)

    def _refresh_lock_file(self) -> IO[str]:
        # One handle for the store's life: closing any handle on the file would drop all of the
        # process's locks on it.
        if self._refresh_lock_handle is None:
            self._refresh_lock_handle = open(f"{self.path}.refresh-lock", "a+")  # noqa: SIM115
        return self._refresh_lock_handle

    # -- health ------------------------------------------------------------

    async def commit_durability(self) -> str:
        """``PRAGMA synchronous`` as the store's own connection has it (``FULL``: a commit is on
        disk when it returns, power loss included); for ``doctor``, tests and bench."""
        row = await self.engine.fetchone("PRAGMA synchronous")
        level = int(next(iter(row.values()))) if row else -1
        return {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(level, str(level))
