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
import json
import logging
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from typing import IO, Any, ParamSpec, TypeVar

from sqlite_utils import Database

from adapters.store import rows
from adapters.store.crypto import TokenCipher
from adapters.store.engine import SqliteEngine, SqliteThread
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
from migrations import PENDING_STATES, migrations

log = logging.getLogger("adapters.store.sqlite")
# Event ids are text (X's snowflakes); compared as numbers.
_INBOUND_WAITS = rows.inbound_waits(lambda column: f"CAST({column} AS INTEGER)")

P = ParamSpec("P")
T = TypeVar("T")

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


class _AccountRow:
    """``LockedAccount`` through the store's ordinary calls (its one thread serialises them)."""

    def __init__(self, store: SqliteStore, account_id: int) -> None:
        self._store = store
        self._id = account_id

    async def read(self) -> Account | None:
        return await self._store.get_account(self._id)

    async def save_tokens(self, tokens: TokenSet) -> None:
        await self._store.update_tokens(self._id, tokens)

    async def flag_reconnect(self) -> None:
        await self._store.set_needs_reconnect(self._id, True)


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


class SqliteStore(RelayRole, OutboxRole, OutboxMediaRole, UpkeepRole, StoreBase):
    """SQLite implementation of ``bridge.ports.Store``."""

    def __init__(self, path: str, cipher: TokenCipher) -> None:
        self.path = path
        self._cipher = cipher
        self._unreadable_accounts: set[int] = set()  # ids whose tokens no key opens, logged once
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._thread = SqliteThread(self._executor)
        self._db: Database | None = None
        self._owner: int | None = None
        self._refresh_lock_handle: IO[str] | None = None

    # -- lifecycle ---------------------------------------------------------

    async def open(self) -> None:
        await self._call(self._open)

    def _open(self) -> None:
        self._db = open_database(self.path)
        self._owner = threading.get_ident()
        log.info("database ready", extra={"path": self.path})

    async def close(self) -> None:
        if self._db is not None:
            await self._call(self._close)
        self._executor.shutdown(wait=True)
        if self._refresh_lock_handle is not None:
            self._refresh_lock_handle.close()
            self._refresh_lock_handle = None

    def _close(self) -> None:
        assert self._db is not None
        self._db.close()
        self._db = None

    async def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._thread.run(fn, *args, **kwargs)

    @property
    def engine(self) -> SqliteEngine:
        """Statements for the role stores written once over ``adapters.store.engine``."""
        return SqliteEngine(self._thread, lambda: self.db)

    @property
    def db(self) -> Database:
        assert self._db is not None, "store not open"
        assert threading.get_ident() == self._owner, "SQLite touched outside its owner thread"
        return self._db

    def _rows(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        return list(self.db.query(sql, params))

    def _one(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> dict[str, Any] | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    @asynccontextmanager
    async def refresh_lock(self, account_id: int) -> AsyncIterator[LockedAccount]:
        """One token refresh per account across processes: ``serve`` and an operator's command
        (``xchat setup``, ``accounts disconnect``) may use one account's single-use refresh token
        at once. A POSIX record lock on byte ``account_id`` of ``<path>.refresh-lock``; the kernel
        drops it when the process ends however it ends. Such locks belong to the process, so
        ``TokenManager``'s own lock is what serialises refreshes within one. The row is read and
        written by the store's own calls (one thread, no pool to run out of)."""
        if self.path == ":memory:":
            yield _AccountRow(self, account_id)
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
            yield _AccountRow(self, account_id)
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN, 1, account_id)

    def _refresh_lock_file(self) -> IO[str]:
        # One handle for the store's life: closing any handle on the file would drop all of the
        # process's locks on it.
        if self._refresh_lock_handle is None:
            self._refresh_lock_handle = open(f"{self.path}.refresh-lock", "a+")  # noqa: SIM115
        return self._refresh_lock_handle

    # -- health ------------------------------------------------------------

    async def ping(self) -> bool:
        return await self._call(lambda: self._one("SELECT 1 AS ok") is not None)

    async def commit_durability(self) -> str:
        """``PRAGMA synchronous`` as the store's own connection has it (``FULL``: a commit is on
        disk when it returns, power loss included); for ``doctor``, tests and bench."""
        row = await self._call(lambda: self._one("PRAGMA synchronous"))
        level = int(next(iter(row.values()))) if row else -1
        return {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(level, str(level))

    # -- accounts ----------------------------------------------------------

    def _account(self, row: dict[str, Any]) -> Account:
        return rows.account(row, self._cipher, self._unreadable_accounts)

    def _token_columns(self, tokens: TokenSet) -> dict[str, Any]:
        return rows.token_columns(tokens, self._cipher)

    async def save_account(self, team_id: str, slack_user_id: str, user: XUser, tokens: TokenSet) -> Account:
        return await self._call(self._save_account, team_id, slack_user_id, user, tokens)

    def _save_account(self, team_id: str, slack_user_id: str, user: XUser, tokens: TokenSet) -> Account:
        columns = {
            "x_user_id": user.id,
            "x_username": user.username,
            "needs_reconnect": 0,
            **self._token_columns(tokens),
        }
        with self.db.atomic():
            self.db.execute(
                """
                INSERT INTO accounts (team_id, slack_user_id, x_user_id, x_username, access_token,
                                      refresh_token, expires_at, scope, needs_reconnect,
                                      created_at, updated_at)
                VALUES (:team_id, :slack_user_id, :x_user_id, :x_username, :access_token,
                        :refresh_token, :expires_at, :scope, 0, unixepoch('subsec'), unixepoch('subsec'))
                ON CONFLICT (team_id, slack_user_id) DO UPDATE SET
                    x_user_id = excluded.x_user_id, x_username = excluded.x_username,
                    access_token = excluded.access_token, refresh_token = excluded.refresh_token,
                    expires_at = excluded.expires_at, scope = excluded.scope,
                    needs_reconnect = 0, disconnected_at = NULL, updated_at = excluded.updated_at
                """,
                {"team_id": team_id, "slack_user_id": slack_user_id, **columns},
            )
        row = self._one(
            "SELECT * FROM accounts WHERE team_id = ? AND slack_user_id = ?", [team_id, slack_user_id]
        )
        assert row is not None
        return self._account(row)

    async def get_account(self, account_id: int) -> Account | None:
        return await self._call(self._get_account, account_id)

    def _get_account(self, account_id: int) -> Account | None:
        row = self._one("SELECT * FROM accounts WHERE id = ?", [account_id])
        return self._account(row) if row else None

    async def account_for_user(self, team_id: str, slack_user_id: str) -> Account | None:
        def work() -> Account | None:
            row = self._one(
                "SELECT * FROM accounts WHERE team_id = ? AND slack_user_id = ?", [team_id, slack_user_id]
            )
            return self._account(row) if row else None

        return await self._call(work)

    async def update_tokens(self, account_id: int, tokens: TokenSet) -> None:
        def work() -> None:
            columns = self._token_columns(tokens)
            with self.db.atomic():
                self.db.execute(
                    "UPDATE accounts SET access_token = :access_token, refresh_token = :refresh_token, "
                    "expires_at = :expires_at, scope = :scope, updated_at = unixepoch('subsec') "
                    "WHERE id = :id",
                    {**columns, "id": account_id},
                )

        await self._call(work)

    async def set_needs_reconnect(self, account_id: int, needs: bool) -> None:
        def work() -> None:
            with self.db.atomic():
                self.db.execute(
                    "UPDATE accounts SET needs_reconnect = ? WHERE id = ?", [int(needs), account_id]
                )

        await self._call(work)

    async def disconnect_account(self, account_id: int, now: float, by: str) -> list[ChannelMapping]:
        def work() -> list[ChannelMapping]:
            with self.db.atomic():
                self.db.execute(
                    "UPDATE accounts SET access_token = '', refresh_token = NULL, expires_at = NULL, "
                    "needs_reconnect = 1, disconnected_at = ?, updated_at = ? WHERE id = ?",
                    [now, now, account_id],
                )
                rows = self._rows(
                    "UPDATE mappings SET paused_at = ?, paused_by = ? "
                    "WHERE account_id = ? AND paused_at IS NULL RETURNING *",
                    [now, by, account_id],
                )
            return sorted((self._mapping(r) for r in rows), key=lambda m: (m.team_id, m.channel_id))

        return await self._call(work)

    async def resume_mappings(self, account_id: int) -> list[ChannelMapping]:
        def work() -> list[ChannelMapping]:
            with self.db.atomic():
                # Not those held for another X account (``hold_for_previous_account``).
                rows = self._rows(
                    "UPDATE mappings SET paused_at = NULL, paused_by = NULL "
                    "WHERE account_id = ? AND paused_at IS NOT NULL AND held_for IS NULL RETURNING *",
                    [account_id],
                )
            return sorted((self._mapping(r) for r in rows), key=lambda m: (m.team_id, m.channel_id))

        return await self._call(work)

    async def hold_for_previous_account(
        self, account_id: int, previous: XUser, current: XUser, now: float
    ) -> list[ChannelMapping]:
        def work() -> list[ChannelMapping]:
            with self.db.atomic():
                rows: list[dict[str, Any]] = []
                if previous.id != current.id:
                    # A conversation id is the previous account's conversation; a 1-to-1 by person
                    # (kind dm) or a group not created yet is not anyone's yet.
                    rows = self._rows(
                        "UPDATE mappings SET paused_at = COALESCE(paused_at, ?), "
                        "paused_by = COALESCE(paused_by, ?), held_for = ?, held_for_username = ? "
                        "WHERE account_id = ? AND held_for IS NULL AND kind != 'dm' "
                        "AND conversation_id IS NOT NULL RETURNING *",
                        [now, "switch", previous.id, previous.username, account_id],
                    )
                    self.db.execute(
                        "UPDATE outbox SET held_state = state, state = 'held', held_for = ? "
                        f"WHERE account_id = ? AND state IN {PENDING_STATES} "
                        "AND target_conversation IS NOT NULL",
                        [previous.id, account_id],
                    )
                    self._switch_cursor(account_id, previous.id, current.id, now)
                # Then what was held for the account connected now is its own again (resumed and
                # released by resume_mappings and release_account, like any paused mapping).
                self.db.execute(
                    "UPDATE mappings SET held_for = NULL, held_for_username = NULL "
                    "WHERE account_id = ? AND held_for = ?",
                    [account_id, current.id],
                )
                self.db.execute(
                    "UPDATE outbox SET state = COALESCE(held_state, 'queued'), held_for = NULL, "
                    "held_state = NULL, next_attempt_at = ? "
                    "WHERE account_id = ? AND state = 'held' AND held_for = ?",
                    [now, account_id, current.id],
                )
            return sorted((self._mapping(r) for r in rows), key=lambda m: (m.team_id, m.channel_id))

        return await self._call(work)

    def _switch_cursor(self, account_id: int, previous_id: str, current_id: str, now: float) -> None:
        """The read cursor is the X account's: the previous one's is parked (its ids say nothing
        of the new account's inbox, and the new one's higher ids would make it skip what it gets
        meanwhile), the current one's put back, or none: a first read (see ``Inbound.poll``).
        An unfinished read is parked with it and put back without its token (long expired by
        then): the read starts again from the newest, its channels waiting until it is done."""
        self.db.execute(
            "INSERT INTO parked_cursors (account_id, x_user_id, newest_event_id, gap_newest, gap_oldest, "
            "updated_at) SELECT account_id, ?, newest_event_id, gap_newest, gap_oldest, ? FROM cursors "
            "WHERE account_id = ? ON CONFLICT (account_id, x_user_id) DO UPDATE SET "
            "newest_event_id = excluded.newest_event_id, gap_newest = excluded.gap_newest, "
            "gap_oldest = excluded.gap_oldest, updated_at = excluded.updated_at",
            [previous_id, now, account_id],
        )
        self.db.execute("DELETE FROM cursors WHERE account_id = ?", [account_id])
        self.db.execute(
            "INSERT INTO cursors (account_id, newest_event_id, gap_newest, gap_oldest, gap_opened_at, "
            "updated_at) SELECT account_id, newest_event_id, gap_newest, gap_oldest, "
            "CASE WHEN gap_newest IS NOT NULL THEN ? END, ? FROM parked_cursors "
            "WHERE account_id = ? AND x_user_id = ?",
            [now, now, account_id, current_id],
        )
        self.db.execute(
            "DELETE FROM parked_cursors WHERE account_id = ? AND x_user_id = ?", [account_id, current_id]
        )

    async def list_accounts(self) -> list[Account]:
        return await self._call(lambda: [self._account(r) for r in self._rows("SELECT * FROM accounts")])

    async def usernames_needing_reconnect(self) -> list[str]:
        """X usernames of accounts whose refresh X refused or whose tokens no key opens (for
        /healthz: no token is kept decrypted)."""
        sql = (
            "SELECT x_username, needs_reconnect, access_token, refresh_token FROM accounts "
            "WHERE disconnected_at IS NULL ORDER BY x_username"
        )
        return await self._call(
            lambda: [r["x_username"] for r in self._rows(sql) if rows.needs_reconnect(r, self._cipher)]
        )

    # -- OAuth states ------------------------------------------------------

    async def save_oauth_state(self, state: OAuthState) -> None:
        def work() -> None:
            with self.db.atomic():
                # Expired states are useless; sweep them whenever a new one is made.
                self.db.execute("DELETE FROM oauth_states WHERE expires_at < unixepoch() - 3600")
                self.db.table("oauth_states").insert(
                    {
                        "state": state.state,
                        "code_verifier": self._cipher.encrypt(state.code_verifier),
                        "team_id": state.team_id,
                        "slack_user_id": state.slack_user_id,
                        "channel_id": state.channel_id,
                        "response_url": state.response_url,
                        "expires_at": state.expires_at,
                        "used": 0,
                        "slack_user_name": state.slack_user_name,
                        "team_name": state.team_name,
                    }
                )

        await self._call(work)

    def _oauth_state(self, row: dict[str, Any]) -> OAuthState:
        return OAuthState(
            state=row["state"],
            code_verifier=self._cipher.decrypt(row["code_verifier"]),
            team_id=row["team_id"],
            slack_user_id=row["slack_user_id"],
            channel_id=row["channel_id"] or "",
            response_url=row["response_url"],
            expires_at=row["expires_at"],
            slack_user_name=row.get("slack_user_name") or "",
            team_name=row.get("team_name") or "",
        )

    async def get_oauth_state(self, state: str, now: float) -> OAuthState | None:
        def work() -> OAuthState | None:
            row = self._one(
                "SELECT * FROM oauth_states WHERE state = ? AND used = 0 AND expires_at > ? "
                "AND browser_hash IS NULL",
                [state, now],
            )
            return self._oauth_state(row) if row else None

        return await self._call(work)

    async def confirm_oauth_state(self, state: str, now: float, browser_hash: str) -> OAuthState | None:
        def work() -> OAuthState | None:
            with self.db.atomic():
                row = self._one(
                    "UPDATE oauth_states SET browser_hash = ? WHERE state = ? AND used = 0 "
                    "AND expires_at > ? AND browser_hash IS NULL RETURNING *",
                    [browser_hash, state, now],
                )
            return self._oauth_state(row) if row else None

        return await self._call(work)

    async def consume_oauth_state(self, state: str, now: float, browser_hash: str) -> OAuthState | None:
        def work() -> OAuthState | None:
            with self.db.atomic():
                # One UPDATE decides: a state is used once, even by racing callbacks.
                row = self._one(
                    "UPDATE oauth_states SET used = 1 WHERE state = ? AND used = 0 AND expires_at > ? "
                    "AND browser_hash = ? RETURNING *",
                    [state, now, browser_hash],
                )
            return self._oauth_state(row) if row else None

        return await self._call(work)

    # -- connections waiting for a click in Slack ---------------------------

    async def save_pending_connection(self, pending: PendingConnection) -> None:
        values = rows.pending_values(pending, self._cipher)
        marks = ", ".join("?" * len(values))

        def work() -> None:
            with self.db.atomic():
                self.db.execute(
                    f"INSERT INTO pending_connections ({rows.PENDING_COLUMNS}) VALUES ({marks})", values
                )

        await self._call(work)

    async def get_pending_connection(self, pending_id: str, now: float) -> PendingConnection | None:
        def work() -> PendingConnection | None:
            row = self._one(
                "SELECT * FROM pending_connections WHERE id = ? AND expires_at > ?", [pending_id, now]
            )
            return rows.pending_connection(row, self._cipher) if row else None

        return await self._call(work)

    async def take_pending_connection(
        self, pending_id: str, team_id: str, slack_user_id: str, now: float
    ) -> PendingConnection | None:
        def work() -> PendingConnection | None:
            with self.db.atomic():
                row = self._one(
                    "DELETE FROM pending_connections WHERE id = ? AND team_id = ? AND slack_user_id = ? "
                    "AND expires_at > ? RETURNING *",
                    [pending_id, team_id, slack_user_id, now],
                )
            return rows.pending_connection(row, self._cipher) if row else None

        return await self._call(work)

    async def take_expired_pending_connections(self, now: float) -> list[PendingConnection]:
        def work() -> list[PendingConnection]:
            with self.db.atomic():
                found = list(
                    self.db.query("DELETE FROM pending_connections WHERE expires_at <= ? RETURNING *", [now])
                )
            taken = (rows.pending_connection(row, self._cipher) for row in found)
            return [p for p in taken if p is not None]

        return await self._call(work)

    # -- mappings ----------------------------------------------------------

    @staticmethod
    def _mapping(row: dict[str, Any]) -> ChannelMapping:
        return rows.mapping(row)

    async def get_mapping(self, team_id: str, channel_id: str) -> ChannelMapping | None:
        def work() -> ChannelMapping | None:
            row = self._one(
                "SELECT * FROM mappings WHERE team_id = ? AND channel_id = ?", [team_id, channel_id]
            )
            return self._mapping(row) if row else None

        return await self._call(work)

    async def create_mapping(
        self, mapping: ChannelMapping, *, history: bool = False
    ) -> ChannelMapping | None:
        def work() -> ChannelMapping | None:
            with self.db.atomic():
                cursor = self.db.execute(
                    f"INSERT INTO mappings ({rows.MAPPING_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    rows.mapping_values(mapping),
                )
                if cursor.rowcount == 1 and history and mapping.conversation_id:
                    self._request_backfill(mapping.account_id, mapping.conversation_id, mapping.created_at)
            return mapping if cursor.rowcount == 1 else None

        return await self._call(work)

    async def delete_mapping(
        self, team_id: str, channel_id: str, *, made: ChannelMapping | None = None
    ) -> ChannelMapping | None:
        sql = "DELETE FROM mappings WHERE team_id = ? AND channel_id = ?"
        params: list[Any] = [team_id, channel_id]
        if made is not None:
            sql += " AND created_by = ? AND created_at = ?"
            params += [made.created_by, made.created_at]

        def work() -> ChannelMapping | None:
            with self.db.atomic():
                row = self._one(sql + " RETURNING *", params)
            return self._mapping(row) if row else None

        return await self._call(work)

    async def abandon_group(
        self, team_id: str, channel_id: str, group: tuple[str, ...]
    ) -> tuple[ChannelMapping | None, list[OutboxItem]]:
        members = json.dumps(list(group))  # as create_mapping and accept write it

        def work() -> tuple[ChannelMapping | None, list[OutboxItem]]:
            with self.db.atomic():
                row = self._one(
                    "DELETE FROM mappings WHERE team_id = ? AND channel_id = ? AND kind = 'group' "
                    "AND conversation_id IS NULL AND participant_ids = ? RETURNING *",
                    [team_id, channel_id, members],
                )
                rows = self._rows(
                    f"SELECT * FROM outbox WHERE team_id = ? AND channel_id = ? AND target_group = ? "
                    f"AND state IN {PENDING_STATES} ORDER BY seq, part",
                    [team_id, channel_id, members],
                )
            return (self._mapping(row) if row else None), [self._item(r) for r in rows]

        return await self._call(work)

    async def set_conversation_id(self, team_id: str, channel_id: str, conversation_id: str) -> None:
        def work() -> None:
            with self.db.atomic():
                self.db.execute(
                    "UPDATE mappings SET conversation_id = ? WHERE team_id = ? AND channel_id = ?",
                    [conversation_id, team_id, channel_id],
                )

        await self._call(work)

    async def list_mappings(self) -> list[ChannelMapping]:
        return await self._call(
            lambda: [
                self._mapping(r) for r in self._rows("SELECT * FROM mappings ORDER BY team_id, channel_id")
            ]
        )

    # -- relay -------------------------------------------------------------
    # (adapters/store/relay.py; the outbox in outbox.py, pruning and gauges in upkeep.py)

    INBOUND_GAUGES_SQL = rows.inbound_gauges_sql(
        lambda column: f"CAST({column} AS INTEGER)", "INDEXED BY inbound_pending"
    )

    async def inbound_gauges(self) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            return rows.inbound_gauges(self._one(self.INBOUND_GAUGES_SQL))

        return await self._call(work)

    # -- outbox ------------------------------------------------------------

    _item = staticmethod(rows.item)  # for the mappings' abandon_group until it moves to its role

    def _update(self, sql: str, params: Sequence[Any] | dict[str, Any]) -> None:
        with self.db.atomic():
            self.db.execute(sql, params)

    # -- inbound (X → Slack) ----------------------------------------------

    async def get_cursor(self, account_id: int) -> str | None:
        def work() -> str | None:
            row = self._one("SELECT newest_event_id FROM cursors WHERE account_id = ?", [account_id])
            return row["newest_event_id"] if row else None

        return await self._call(work)

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
        """Queue X events (oldest first) and move the account's cursor, in one transaction.

        Events already known (by ``dm_event_id``) are left alone; events the bridge sent
        itself, or whose conversation no channel bridges, are kept as ``skipped`` so a later
        read does not bill them to Slack again. With ``gap`` the read is unfinished: the
        cursor stays and the gap is kept (the account's channels wait); moving the cursor
        closes any gap. Returns how many were queued for Slack.
        """

        def work() -> int:
            queued = 0
            with self.db.atomic():
                account = self._one("SELECT x_user_id FROM accounts WHERE id = ?", [account_id])
                own_id = account["x_user_id"] if account else None
                for event in events:
                    taken, echoes = self._take_one(account_id, own_id, event, now)
                    queued += taken
                    if tally is not None:
                        tally["echoes"] = tally.get("echoes", 0) + echoes
                if gap is not None:
                    self.db.execute(
                        "INSERT INTO cursors (account_id, updated_at, gap_token, gap_newest, gap_oldest, "
                        "gap_restarts, gap_opened_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT (account_id) DO UPDATE SET updated_at = excluded.updated_at, "
                        "gap_token = excluded.gap_token, gap_newest = excluded.gap_newest, "
                        "gap_oldest = excluded.gap_oldest, gap_restarts = excluded.gap_restarts, "
                        "gap_opened_at = excluded.gap_opened_at",
                        [account_id, now, gap.token, gap.newest, gap.oldest, gap.restarts, gap.opened_at],
                    )
                elif newest_event_id is not None:
                    self.db.execute(
                        "INSERT INTO cursors (account_id, newest_event_id, updated_at) VALUES (?, ?, ?) "
                        "ON CONFLICT (account_id) DO UPDATE SET newest_event_id = excluded.newest_event_id, "
                        "updated_at = excluded.updated_at "
                        "WHERE newest_event_id IS NULL "
                        "OR CAST(excluded.newest_event_id AS INTEGER) > CAST(newest_event_id AS INTEGER)",
                        [account_id, newest_event_id, now],
                    )
                    self.db.execute(
                        "UPDATE cursors SET gap_token = NULL, gap_newest = NULL, gap_oldest = NULL, "
                        "gap_restarts = 0, gap_opened_at = NULL WHERE account_id = ?",
                        [account_id],
                    )
            return queued

        return await self._call(work)

    async def read_gap(self, account_id: int) -> ReadGap | None:
        def work() -> ReadGap | None:
            row = self._one("SELECT * FROM cursors WHERE account_id = ?", [account_id])
            return rows.read_gap(row) if row else None

        return await self._call(work)

    def _take_one(
        self, account_id: int, own_id: str | None, event: InboundEvent, now: float
    ) -> tuple[int, int]:
        """(rows queued, rows skipped as echoes of the bridge's own sends) for one event."""
        known = {
            (r["team_id"], r["channel_id"]): r
            for r in self._rows(
                "SELECT id, team_id, channel_id FROM inbound WHERE dm_event_id = ?", [event.dm_event_id]
            )
        }
        mappings = (
            self._rows(
                "SELECT m.team_id, m.channel_id, m.created_at, a.x_user_id FROM mappings AS m "
                "LEFT JOIN accounts AS a ON a.id = m.account_id WHERE m.conversation_id = ? "
                "ORDER BY m.account_id = ? DESC, m.created_at",
                [event.conversation_id, account_id],
            )
            if event.conversation_id
            else []
        )
        sent_from = self._sent_from(event.dm_event_id)
        queued = echoes = 0
        for row in rows.channel_rows(mappings, event, set(known), sent_from):
            state, why = row.state, row.why
            if row.check_outbox and self._outbox_echo(row.where, event):
                state, why = InboundState.SKIPPED, rows.ECHO_IN_FLIGHT
            elif row.check_outbox and self._adopt_unconfirmed(row.where, event, now):
                state, why = InboundState.SKIPPED, rows.ECHO_UNCONFIRMED
            inserted = self._insert_inbound(account_id, event, row.where, row.payload, state, why, now)
            queued += int(inserted and state is InboundState.QUEUED)
            echoes += int(inserted and state is InboundState.SKIPPED)
        if not known and not mappings:
            # Kept so a later read does not bill it to Slack again; a backfill may still want it.
            payload = {**event.payload, "from_self": rows.from_self(event, own_id)}
            self._insert_inbound(
                account_id, event, (None, None), payload, InboundState.SKIPPED, rows.NOT_BRIDGED, now
            )
        return queued, echoes

    def _insert_inbound(
        self,
        account_id: int,
        event: InboundEvent,
        where: tuple[str | None, str | None],
        payload: dict[str, Any],
        state: InboundState,
        why: str | None,
        now: float,
    ) -> bool:
        cursor = self.db.execute(
            f"INSERT INTO inbound ({rows.INBOUND_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, ?, ?) ON CONFLICT DO NOTHING",
            rows.inbound_values(account_id, event, where, payload, state, why, now),
        )
        return bool(cursor.rowcount == 1)

    def _sent_from(self, dm_event_id: str) -> tuple[str, str] | None:
        # The message map also records what the bridge posted from X: those have an inbound row.
        row = self._one(
            "SELECT m.team_id, m.channel_id FROM message_map AS m WHERE m.dm_event_id = ? AND NOT EXISTS "
            "(SELECT 1 FROM inbound AS i WHERE i.dm_event_id = m.dm_event_id AND i.team_id = m.team_id "
            "AND i.channel_id = m.channel_id AND i.slack_ts = m.slack_ts) LIMIT 1",
            [dm_event_id],
        )
        return (row["team_id"], row["channel_id"]) if row else None

    async def sent_from(self, dm_event_id: str) -> tuple[str, str] | None:
        return await self._call(self._sent_from, dm_event_id)

    def _outbox_echo(self, where: tuple[str, str], event: InboundEvent) -> bool:
        """A DM of ours that X has but the outbox has not recorded yet (its POST is in flight)."""
        text = event.payload.get("text")
        return (
            self._one(
                "SELECT 1 AS echo FROM outbox WHERE team_id = ? AND channel_id = ? AND state = 'sending' "
                "AND text = ? LIMIT 1",
                [*where, text],
            )
            is not None
        )

    def _adopt_unconfirmed(self, where: tuple[str, str], event: InboundEvent, now: float) -> bool:
        """A DM of ours X took without naming it (recorded sent without an id): it is this event.
        Its id is recorded now, in the outbox and the message map, as a send's would have been."""
        found = rows.unconfirmed_match(
            self._rows(rows.UNCONFIRMED_SENDS.format(p1="?", p2="?"), list(where)), event
        )
        if found is None:
            return False
        self.db.execute("UPDATE outbox SET dm_event_id = ? WHERE id = ?", [event.dm_event_id, found["id"]])
        self.db.execute(
            "INSERT INTO message_map (team_id, channel_id, slack_ts, part, conversation_id, dm_event_id, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [*where, found["slack_ts"], found["part"], event.conversation_id, event.dm_event_id, now],
        )
        return True

    def _inbound_head(self, team_id: str, channel_id: str) -> dict[str, Any] | None:
        return self._one(
            "SELECT i.* FROM (SELECT * FROM inbound INDEXED BY inbound_pending WHERE team_id = ? "
            "AND channel_id = ? AND state IN ('queued', 'posting') ORDER BY seq LIMIT 1) AS i "
            f"WHERE NOT ({_INBOUND_WAITS})",
            [team_id, channel_id],
        )

    async def inbound_heads(self) -> list[InboundItem]:
        def work() -> list[InboundItem]:
            # A channel waits (rows.inbound_waits) with its rows kept; one no longer bridged still
            # gets what was taken for it.
            found = self._rows(
                "SELECT i.* FROM inbound AS i JOIN ("
                "  SELECT team_id, channel_id, MIN(seq) AS seq FROM inbound INDEXED BY inbound_pending"
                "  WHERE state IN ('queued', 'posting') GROUP BY team_id, channel_id"
                ") AS h ON i.team_id = h.team_id AND i.channel_id = h.channel_id AND i.seq = h.seq "
                f"WHERE NOT ({_INBOUND_WAITS})"
            )
            return [rows.inbound_item(r) for r in found]

        return await self._call(work)

    async def mark_posting(self, item_id: int, now: float) -> InboundItem | None:
        def work() -> InboundItem | None:
            with self.db.atomic():
                row = self._one(
                    "UPDATE inbound SET state = 'posting', attempts = attempts + 1, "
                    "posting_since = COALESCE(posting_since, ?) "
                    "WHERE id = ? AND state IN ('queued', 'posting') RETURNING *",
                    [now, item_id],
                )
            return rows.inbound_item(row) if row else None

        return await self._call(work)

    async def mark_posted(self, item_id: int, slack_ts: str, now: float) -> InboundItem | None:
        def work() -> InboundItem | None:
            with self.db.atomic():
                row = self._one(
                    "UPDATE inbound SET state = 'posted', slack_ts = ?, posted_at = ?, last_error = NULL "
                    "WHERE id = ? RETURNING *",
                    [slack_ts, now, item_id],
                )
                assert row is not None
                self.db.execute(
                    "INSERT INTO message_map (team_id, channel_id, slack_ts, part, conversation_id, "
                    "dm_event_id, created_at) VALUES (?, ?, ?, 0, ?, ?, ?) ON CONFLICT DO NOTHING",
                    [
                        row["team_id"],
                        row["channel_id"],
                        slack_ts,
                        row["conversation_id"],
                        row["dm_event_id"],
                        now,
                    ],
                )
                following = self._inbound_head(row["team_id"], row["channel_id"])
            return None if following is None else rows.inbound_item(following)

        return await self._call(work)

    async def reschedule_inbound(
        self, item_id: int, state: InboundState, next_attempt_at: float, error: str | None
    ) -> None:
        await self._call(
            self._update,
            "UPDATE inbound SET state = ?, next_attempt_at = ?, last_error = ?, "
            "posting_since = CASE WHEN ? = 'posting' THEN posting_since END WHERE id = ?",
            [state.value, next_attempt_at, error, state.value, item_id],
        )

    async def set_inbound_payload(self, item_id: int, payload: dict[str, Any]) -> None:
        await self._call(
            self._update,
            "UPDATE inbound SET payload = ? WHERE id = ?",
            [json.dumps(payload, separators=(",", ":")), item_id],
        )

    async def hold_channel(self, team_id: str, channel_id: str, until: float) -> None:
        await self._call(
            self._update,
            "UPDATE inbound SET next_attempt_at = MAX(next_attempt_at, ?) WHERE team_id = ? "
            "AND channel_id = ? AND state IN ('queued', 'posting')",
            [until, team_id, channel_id],
        )

    async def latest_inbound_at(self, origin: str) -> float | None:
        def work() -> float | None:
            row = self._one("SELECT MAX(created_at) AS t FROM inbound WHERE origin = ?", [origin])
            return row["t"] if row else None

        return await self._call(work)

    async def inbound_summary(
        self, account_id: int, team_id: str | None = None, channel_id: str | None = None
    ) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            cursor = self._one("SELECT * FROM cursors WHERE account_id = ?", [account_id])
            schedule = self._one(
                "SELECT next_read_at, pushed FROM read_schedule WHERE account_id = ?", [account_id]
            )
            here = self._one(
                "SELECT COUNT(*) AS n FROM inbound WHERE team_id = ? AND channel_id = ? "
                "AND state IN ('queued', 'posting')",
                [team_id, channel_id],
            )
            counts = {
                r["state"]: r["n"]
                for r in self._rows(
                    "SELECT state, COUNT(*) AS n FROM inbound WHERE account_id = ? GROUP BY state",
                    [account_id],
                )
            }
            last = self._one(
                "SELECT MAX(created_at) AS t FROM inbound WHERE account_id = ? AND origin != 'sent'",
                [account_id],
            )
            failed = self._one(rows.FAILED_COUNT_SQL.format(p1="?", p2="?"), [team_id, channel_id])
            reason = self._one(rows.FAILED_LAST_SQL.format(p1="?", p2="?"), [team_id, channel_id])
            chat_gap = self._one(rows.CHAT_GAP_SQL.format(p1="?", p2="?"), [team_id, channel_id])
            return {
                "newest_event_id": cursor["newest_event_id"] if cursor else None,
                "read_at": cursor["updated_at"] if cursor else None,
                "catching_up": bool(cursor and cursor["gap_newest"] is not None)
                or bool(chat_gap and chat_gap["n"]),
                "last_event_at": last["t"] if last else None,
                "counts": counts,
                "pending": counts.get("queued", 0) + counts.get("posting", 0),
                "channel_pending": here["n"] if here else 0,
                "channel_failed": failed["n"] if failed else 0,
                "channel_last_failure": reason["last_error"] if reason else None,
                "next_read_at": schedule["next_read_at"] if schedule else None,
                "pushed": bool(schedule["pushed"]) if schedule else False,
            }

        return await self._call(work)

    async def set_next_read(self, account_id: int, at: float, *, pushed: bool = False) -> None:
        await self._call(
            self._update,
            "INSERT INTO read_schedule (account_id, next_read_at, pushed, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (account_id) DO UPDATE SET next_read_at = excluded.next_read_at, "
            "pushed = excluded.pushed, updated_at = excluded.updated_at",
            [account_id, at, int(pushed), at],
        )

    async def request_backfill(self, account_id: int, conversation_id: str, bridged_at: float) -> None:
        def work() -> None:
            with self.db.atomic():
                self._request_backfill(account_id, conversation_id, bridged_at)

        await self._call(work)

    def _request_backfill(self, account_id: int, conversation_id: str, bridged_at: float) -> None:
        self.db.execute(
            "INSERT INTO backfills (account_id, conversation_id, bridged_at, requested_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (account_id, conversation_id) DO UPDATE "
            "SET bridged_at = excluded.bridged_at, requested_at = excluded.requested_at",
            [account_id, conversation_id, bridged_at, bridged_at],
        )

    async def pending_backfills(self) -> list[tuple[int, str, float]]:
        def work() -> list[tuple[int, str, float]]:
            found = self._rows(
                "SELECT account_id, conversation_id, bridged_at FROM backfills "
                "ORDER BY account_id, conversation_id"
            )
            return [(r["account_id"], r["conversation_id"], r["bridged_at"]) for r in found]

        return await self._call(work)

    async def finish_backfill(self, account_id: int, conversation_id: str, bridged_at: float) -> None:
        await self._call(
            self._update,
            "DELETE FROM backfills WHERE account_id = ? AND conversation_id = ? AND bridged_at = ?",
            [account_id, conversation_id, bridged_at],
        )

    # -- budgets -----------------------------------------------------------

    async def load_budgets(self) -> list[dict[str, Any]]:
        return await self._call(lambda: self._rows("SELECT key, limit_, remaining, reset_at FROM budgets"))

    async def save_budgets(self, windows: Sequence[tuple[str, int, int, float]]) -> None:
        """Several windows in one transaction (a send touches three)."""

        def work() -> None:
            with self.db.atomic():
                self._save_budgets(windows)

        await self._call(work)

    def _save_budgets(self, windows: Sequence[tuple[str, int, int, float]]) -> None:
        for window in windows:
            self.db.execute(
                "INSERT INTO budgets (key, limit_, remaining, reset_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET limit_ = excluded.limit_, "
                "remaining = excluded.remaining, reset_at = excluded.reset_at",
                list(window),
            )
