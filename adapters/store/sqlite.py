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

from adapters.store import budgets, inbound, rows
from adapters.store.accounts import AccountsRole, ConnectFlowRole
from adapters.store.budgets import BudgetsRole
from adapters.store.crypto import TokenCipher
from adapters.store.engine import SqliteEngine, SqliteThread
from adapters.store.inbound import CursorsRole, InboundRole
from adapters.store.lookups import LookupsRole
from adapters.store.mappings import MappingsRole
from adapters.store.outbox import OutboxRole
from adapters.store.roles import StoreBase
from bridge.errors import StoreUnavailable
from bridge.model import (
    Accepted,
    ChannelMapping,
    IncomingMessage,
    OutboxItem,
    OutboxKind,
    OutboxState,
    RenderedPart,
    Sent,
    Target,
    Unreadable,
)
from bridge.ports import LockedAccount
from migrations import PENDING_STATES, migrations

log = logging.getLogger("adapters.store.sqlite")

P = ParamSpec("P")
T = TypeVar("T")

SEEN_EVENTS_KEEP_SECONDS = 24 * 3600.0  # Slack retries within minutes; a day is plenty
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


class SqliteStore(
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

    async def ping(self) -> bool:
        return await self._call(lambda: self._one("SELECT 1 AS ok") is not None)

    async def commit_durability(self) -> str:
        """``PRAGMA synchronous`` as the store's own connection has it (``FULL``: a commit is on
        disk when it returns, power loss included); for ``doctor``, tests and bench."""
        row = await self._call(lambda: self._one("PRAGMA synchronous"))
        level = int(next(iter(row.values()))) if row else -1
        return {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(level, str(level))

    # -- relay -------------------------------------------------------------

    async def accept_if_mapped(self, message: IncomingMessage, now: float) -> Accepted | None:
        """Look up the channel's mapping and commit in one trip to the owner thread (the hot path
        before Slack's 200). None when the channel is not mapped."""

        def work() -> Accepted | None:
            row = self._one(
                "SELECT * FROM mappings WHERE team_id = ? AND channel_id = ?",
                [message.team_id, message.channel_id],
            )
            if row is None:
                return None
            # A channel with nothing unfinished before this message has it as its head. (This
            # thread is the only writer, so nothing changes between this read and the insert.)
            queue_was_empty = (
                self._one(
                    "SELECT 1 AS busy FROM pending_channels WHERE team_id = ? AND channel_id = ?",
                    [message.team_id, message.channel_id],
                )
                is None
            )
            row_id = self._accept(message, self._mapping(row), now)
            if row_id is None:
                return Accepted(new=False)
            return Accepted(new=True, head=self._outbox_item(row_id) if queue_was_empty else None)

        return await self._call(work)

    def _accept(self, message: IncomingMessage, mapping: ChannelMapping, now: float) -> int | None:
        """The new row's id; None when this event or message was accepted before."""
        target = mapping.target
        with self.db.atomic():
            if message.event_id is not None:
                seen = self.db.execute(
                    "INSERT INTO seen_events (event_id, seen_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
                    [message.event_id, now],
                )
                if seen.rowcount == 0:
                    return None
            cursor = self.db.execute(
                """
                INSERT INTO outbox (seq, part, parts_total, team_id, channel_id, slack_ts, ref_ts, author_id,
                                    account_id, target_participant, target_conversation, target_group,
                                    text, source, state, attempts, next_attempt_at, created_at,
                                    hourglass, kind, held_for, held_state)
                VALUES (0, 0, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, 0, 0, ?, 0, 'message', ?, ?)
                ON CONFLICT DO NOTHING
                """,
                [
                    message.team_id,
                    message.channel_id,
                    message.ts,
                    message.ts,
                    message.user_id,
                    mapping.account_id,
                    target.participant_id,
                    target.conversation_id,
                    None if target.new_group is None else json.dumps(list(target.new_group)),
                    rows.message_source(message),
                    # Posted in a channel held for another X account: it waits for that account.
                    "held" if mapping.held_for else "queued",
                    now,
                    mapping.held_for,
                    "queued" if mapping.held_for else None,
                ],
            )
            if cursor.rowcount == 0:
                return None
            row_id = cursor.lastrowid
            self.db.execute("UPDATE outbox SET seq = id WHERE id = ?", [row_id])
        return row_id

    async def prune_batch(
        self, now: float, *, keep_after: float, inbound_keep_after: float, batch: int
    ) -> int:
        def work() -> int:
            with self.db.atomic():
                deleted = self.db.execute(
                    "DELETE FROM seen_events WHERE rowid IN (SELECT rowid FROM seen_events "
                    "WHERE seen_at < ? ORDER BY seen_at LIMIT ?)",
                    [now - SEEN_EVENTS_KEEP_SECONDS, batch],
                ).rowcount
                deleted += self.db.execute(
                    f"DELETE FROM outbox WHERE id IN (SELECT id FROM outbox INDEXED BY outbox_created_at "
                    f"WHERE created_at < ? AND state NOT IN {PENDING_STATES} AND state != 'held' "
                    "ORDER BY created_at LIMIT ?)",
                    [keep_after, batch],
                ).rowcount
                deleted += self.db.execute(
                    "DELETE FROM message_map WHERE rowid IN (SELECT rowid FROM message_map "
                    "INDEXED BY message_map_created_at WHERE created_at < ? ORDER BY created_at LIMIT ?)",
                    [keep_after, batch],
                ).rowcount
                deleted += self.db.execute(
                    f"DELETE FROM inbound WHERE id IN (SELECT id FROM inbound "
                    f"INDEXED BY inbound_finished_created_at WHERE {rows.INBOUND_FINISHED} "
                    "AND created_at < ? ORDER BY created_at LIMIT ?)",
                    [inbound_keep_after, batch],
                ).rowcount
            return int(deleted)

        return await self._call(work)

    # The gauges /metrics serves, from the partial index of unfinished rows: the cost follows
    # the backlog, not the history (a scan of a million sent rows took 138 ms).
    GAUGES_SQL = (
        "SELECT COUNT(*) AS pending, MIN(created_at) AS oldest FROM outbox INDEXED BY outbox_pending "
        f"WHERE state IN {PENDING_STATES}"
    )

    async def outbox_gauges(self) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            row = self._one(self.GAUGES_SQL) or {}
            return {"pending": int(row.get("pending") or 0), "oldest_pending_at": row.get("oldest")}

        return await self._call(work)

    INBOUND_GAUGES_SQL = rows.inbound_gauges_sql(
        lambda column: f"CAST({column} AS INTEGER)", "INDEXED BY inbound_pending"
    )

    async def inbound_gauges(self) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            return rows.inbound_gauges(self._one(self.INBOUND_GAUGES_SQL))

        return await self._call(work)

    # -- outbox ------------------------------------------------------------

    @staticmethod
    def _item(row: dict[str, Any]) -> OutboxItem:
        """The row as the core's value. SQLite keeps any type in any column, so each value is
        checked as it is read: a row that does not fit raises (``_readable`` reports it)."""
        source = json.loads(row["source"] or "{}")
        media = json.loads(row["media"]) if row["media"] else None
        if not isinstance(source, dict) or not (media is None or isinstance(media, dict)):
            raise TypeError("source or media is not a JSON object")
        return OutboxItem(
            id=_int(row["id"]),
            seq=_int(row["seq"]),
            part=_int(row["part"]),
            parts_total=_int(row["parts_total"]),
            team_id=_text(row["team_id"]),
            channel_id=_text(row["channel_id"]),
            slack_ts=_text(row["slack_ts"]),
            author_id=_text(row["author_id"] or ""),
            account_id=_int(row["account_id"]),
            target=_target(row),
            text=_text_or_none(row["text"]),
            source=source,
            state=OutboxState(row["state"]),
            attempts=_int(row["attempts"] or 0),
            next_attempt_at=_time(row["next_attempt_at"] or 0.0),
            last_error=row["last_error"],
            dm_event_id=_text_or_none(row["dm_event_id"]),
            created_at=_time(row["created_at"] or 0.0),
            sending_since=_time_or_none(row["sending_since"]),
            held_since=_time_or_none(row["held_since"]),
            hourglass=bool(row["hourglass"]),
            kind=OutboxKind(row["kind"] or "message"),
            ref_ts=_text(row["ref_ts"] or row["slack_ts"]),
            media=media,
            media_id=_text_or_none(row["media_id"]),
            media_uploaded_at=None
            if row.get("media_uploaded_at") is None
            else _time(row["media_uploaded_at"]),
            media_unfinished=_int(row.get("media_unfinished") or 0),
            deleted=row.get("deleted_at") is not None,
            encrypted=bool(row.get("encrypted") or False),
            chat=rows.chat_message(row.get("chat")),
        )

    @classmethod
    def _readable(cls, row: dict[str, Any]) -> OutboxItem | Unreadable:
        """The row as an ``OutboxItem``, or what is needed to fail it when its columns make none."""
        try:
            return cls._item(row)
        except (ValueError, TypeError, KeyError) as exc:  # JSONDecodeError is a ValueError
            log.error("outbox row cannot be read", extra={"outbox_id": row.get("id"), "error": str(exc)})

            def text(name: str) -> str:
                value = row.get(name)
                return value if isinstance(value, str) else ""

            account_id = row.get("account_id")
            return Unreadable(
                id=row["id"],
                team_id=text("team_id"),
                channel_id=text("channel_id"),
                slack_ts=text("slack_ts"),
                ref_ts=text("ref_ts") or text("slack_ts"),
                author_id=text("author_id"),
                account_id=account_id if isinstance(account_id, int) else None,
                reason=f"the bridge's stored copy of it could not be read ({exc})",
            )

    async def outbox_heads(self) -> list[OutboxItem | Unreadable]:
        def work() -> list[OutboxItem | Unreadable]:
            # One index lookup per channel with unfinished rows (pending_channels, kept by
            # triggers), not a scan of the whole backlog.
            rows = self._rows(
                f"""
                SELECT o.* FROM pending_channels AS p
                JOIN outbox AS o ON o.id = (
                    SELECT id FROM outbox INDEXED BY outbox_pending
                    WHERE team_id = p.team_id AND channel_id = p.channel_id AND state IN {PENDING_STATES}
                    ORDER BY seq, part LIMIT 1
                )
                """
            )
            # Row by row: one unreadable row is reported as such, and stops nobody else.
            return [self._readable(r) for r in rows]

        return await self._call(work)

    def _channel_head(self, team_id: str, channel_id: str) -> dict[str, Any] | None:
        """The channel's oldest unfinished row: the only one that may be sent."""
        return self._one(
            f"SELECT * FROM outbox INDEXED BY outbox_pending WHERE team_id = ? AND channel_id = ? "
            f"AND state IN {PENDING_STATES} ORDER BY seq, part LIMIT 1",
            [team_id, channel_id],
        )

    async def render(self, item_id: int, parts: Sequence[RenderedPart]) -> OutboxItem:
        def work() -> OutboxItem:
            with self.db.atomic():
                self._write_render(item_id, parts)
            updated = self._outbox_item(item_id)
            assert updated is not None
            return updated

        return await self._call(work)

    def _write_render(self, item_id: int, parts: Sequence[RenderedPart]) -> None:
        """The first part's text on the row itself; further parts as rows right behind it."""
        assert parts, "a message renders to at least one part"
        first = parts[0]
        self.db.execute(
            "UPDATE outbox SET text = ?, media = ?, parts_total = ? WHERE id = ?",
            [first.text, _json_or_none(first.media), len(parts), item_id],
        )
        for index, part in enumerate(parts[1:], start=1):
            self.db.execute(
                """
                INSERT INTO outbox (seq, part, parts_total, team_id, channel_id, slack_ts, ref_ts,
                                    author_id, account_id, target_participant,
                                    target_conversation, target_group, text, media, source, state,
                                    attempts, next_attempt_at, created_at, hourglass, kind)
                SELECT seq, ?, ?, team_id, channel_id, slack_ts, ref_ts, author_id, account_id,
                       target_participant, target_conversation, target_group, ?, ?, '{}', 'queued',
                       0, 0, created_at, 0, kind
                FROM outbox WHERE id = ?
                ON CONFLICT DO NOTHING
                """,
                [index, len(parts), part.text, _json_or_none(part.media), item_id],
            )

    async def set_media_id(
        self, item_id: int, media_id: str | None, uploaded_at: float | None = None
    ) -> None:
        await self._call(
            self._update,
            "UPDATE outbox SET media_id = ?, media_uploaded_at = ?, media_unfinished = 0 WHERE id = ?",
            [media_id, uploaded_at, item_id],
        )

    async def begin_media_upload(self, item_id: int) -> None:
        await self._call(
            self._update, "UPDATE outbox SET media_unfinished = media_unfinished + 1 WHERE id = ?", [item_id]
        )

    async def end_media_upload(self, item_id: int) -> None:
        await self._call(self._update, "UPDATE outbox SET media_unfinished = 0 WHERE id = ?", [item_id])

    async def drop_media(self, item_id: int) -> None:
        await self._call(
            self._update,
            "UPDATE outbox SET media = NULL, media_id = NULL, media_uploaded_at = NULL, "
            "media_unfinished = 0 WHERE id = ?",
            [item_id],
        )

    async def accept_edit(
        self, team_id: str, channel_id: str, ref_ts: str, edit_ts: str, source: dict[str, Any], now: float
    ) -> str:
        """An edit of a relayed message: "updated" when the original was not yet rendered (its text
        is simply replaced), "queued" when a correction row was added, "unknown" otherwise."""

        def work() -> str:
            with self.db.atomic():
                original = self._one(
                    "SELECT * FROM outbox WHERE team_id = ? AND channel_id = ? AND slack_ts = ? AND part = 0 "
                    "AND kind = 'message'",
                    [team_id, channel_id, ref_ts],
                )
                if original is None:
                    return "unknown"
                # A held part is judged by the state it had (``held_state``).
                parts = self._rows(
                    "SELECT COALESCE(held_state, state) AS state FROM outbox WHERE team_id = ? "
                    "AND channel_id = ? AND slack_ts = ? AND kind = 'message'",
                    [team_id, channel_id, ref_ts],
                )
                if original["deleted_at"] is None and all(p["state"] in ("queued", "waiting") for p in parts):
                    # Nothing of it was handed to X: the new text replaces the old, rendered or not.
                    # The row is rendered again from the new source (its further parts with it).
                    merged = {**json.loads(original["source"] or "{}"), **source}
                    self.db.execute(
                        "DELETE FROM outbox WHERE team_id = ? AND channel_id = ? AND slack_ts = ? "
                        "AND kind = 'message' AND part > 0",
                        [team_id, channel_id, ref_ts],
                    )
                    self.db.execute(
                        "UPDATE outbox SET source = ?, text = NULL, chat = NULL, media = NULL, "
                        "media_id = NULL, media_uploaded_at = NULL, parts_total = 1 WHERE id = ?",
                        [json.dumps(merged), original["id"]],
                    )
                    return "updated"
                cursor = self._insert_follow_up(original, OutboxKind.EDIT, edit_ts, source, now)
                return "queued" if cursor else "unknown"

        return await self._call(work)

    async def accept_delete(
        self, team_id: str, channel_id: str, ref_ts: str, delete_ts: str, now: float
    ) -> str:
        """A Slack delete: "cancelled" when nothing had reached X yet, "queued" when a delete row
        was added for the DMs X has, "unknown" when the message was never relayed."""

        def work() -> str:
            with self.db.atomic():
                # A held row is judged by the state it had (``held_state``).
                rows = self._rows(
                    "SELECT *, COALESCE(held_state, state) AS state FROM outbox WHERE team_id = ? "
                    "AND channel_id = ? AND ref_ts = ? AND kind IN ('message', 'edit') ORDER BY seq, part",
                    [team_id, channel_id, ref_ts],
                )
                if not rows:
                    return "unknown"
                # Parts not yet handed to X are simply not sent. (Only the message's own parts and
                # corrections: a delete row queued by an earlier copy of this event must stay.)
                self.db.execute(
                    "UPDATE outbox SET state = 'cancelled', held_for = NULL, held_state = NULL, "
                    "last_error = 'deleted in Slack before it was sent' "
                    "WHERE team_id = ? AND channel_id = ? AND ref_ts = ? AND kind IN ('message', 'edit') "
                    "AND COALESCE(held_state, state) IN ('queued', 'waiting')",
                    [team_id, channel_id, ref_ts],
                )
                # A part caught mid-send may or may not be on X: it is read back, never sent again.
                self.db.execute(
                    "UPDATE outbox SET deleted_at = ? "
                    "WHERE team_id = ? AND channel_id = ? AND ref_ts = ? "
                    "AND COALESCE(held_state, state) = 'sending'",
                    [now, team_id, channel_id, ref_ts],
                )
                reached = [r for r in rows if r["state"] in ("sent", "sending")]
                if not reached:
                    return "cancelled"
                original = rows[0]
                inserted = self._insert_follow_up(original, OutboxKind.DELETE, delete_ts, {}, now)
                return "queued" if inserted else "unknown"

        return await self._call(work)

    def _insert_follow_up(
        self, original: dict[str, Any], kind: OutboxKind, key_ts: str, source: dict[str, Any], now: float
    ) -> bool:
        cursor = self.db.execute(
            """
            INSERT INTO outbox (seq, part, parts_total, team_id, channel_id, slack_ts, ref_ts, author_id,
                                account_id, target_participant, target_conversation, target_group, text,
                                source, state, attempts, next_attempt_at, created_at, hourglass, kind)
            VALUES (0, 0, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, 'queued', 0, 0, ?, 0, ?)
            ON CONFLICT DO NOTHING
            """,
            [
                original["team_id"],
                original["channel_id"],
                f"{key_ts}:{kind.value}",
                original["ref_ts"] or original["slack_ts"],
                original["author_id"],
                original["account_id"],
                original["target_participant"],
                # One target only: a 1-to-1 row is addressed by its participant.
                None if original["target_participant"] else original["target_conversation"],
                original["target_group"],
                json.dumps(source, separators=(",", ":")),
                now,
                kind.value,
            ],
        )
        if cursor.rowcount == 0:
            return False
        self.db.execute("UPDATE outbox SET seq = id WHERE id = ?", [cursor.lastrowid])
        if original["target_conversation"] and not original["target_participant"]:
            # Into a conversation held for another X account (the original, or the channel, is):
            # the correction or delete waits for that account, as the original does.
            mapping = self._one(
                "SELECT held_for FROM mappings WHERE team_id = ? AND channel_id = ?",
                [original["team_id"], original["channel_id"]],
            )
            held_for = original["held_for"] or (mapping["held_for"] if mapping else None)
            if held_for:
                self.db.execute(
                    "UPDATE outbox SET state = 'held', held_state = 'queued', held_for = ? WHERE id = ?",
                    [held_for, cursor.lastrowid],
                )
        return True

    async def relayed_events(self, team_id: str, channel_id: str, ref_ts: str) -> list[str | None]:
        """X's dm_event ids for every part (and correction) relayed for a Slack message; None for
        one X took without naming it (recorded sent without an id)."""

        def work() -> list[str | None]:
            rows = self._rows(
                "SELECT dm_event_id FROM outbox WHERE team_id = ? AND channel_id = ? AND ref_ts = ? "
                "AND kind IN ('message', 'edit') AND state = 'sent' "
                "ORDER BY seq, part",
                [team_id, channel_id, ref_ts],
            )
            return [r["dm_event_id"] for r in rows]

        return await self._call(work)

    async def message_text(self, team_id: str, channel_id: str, ts: str) -> str | None:
        """The text of a message in the channel: one we accepted from Slack, or one we posted from
        X (found through the channel's message map). Thread replies quote their parent."""

        def work() -> str | None:
            row = self._one(
                "SELECT source FROM outbox "
                "WHERE team_id = ? AND channel_id = ? AND slack_ts = ? AND part = 0",
                [team_id, channel_id, ts],
            )
            if row is None:
                row = self._one(
                    "SELECT i.payload AS source FROM message_map AS m JOIN inbound AS i "
                    "ON i.dm_event_id = m.dm_event_id AND i.team_id = m.team_id "
                    "AND i.channel_id = m.channel_id WHERE m.team_id = ? AND m.channel_id = ? "
                    "AND m.slack_ts = ? AND m.part = 0",
                    [team_id, channel_id, ts],
                )
            if row is None:
                return None
            text = json.loads(row["source"] or "{}").get("text")
            return str(text) if text else None

        return await self._call(work)

    def _update(self, sql: str, params: Sequence[Any] | dict[str, Any]) -> None:
        with self.db.atomic():
            self.db.execute(sql, params)

    async def mark_sending(
        self,
        item_id: int,
        now: float,
        budgets: Sequence[tuple[str, int, int, float]] = (),
        *,
        parts: Sequence[RenderedPart] | None = None,
        source: dict[str, Any] | None = None,
    ) -> OutboxItem | None:
        def work() -> OutboxItem | None:
            with self.db.atomic():
                current = self._outbox_item(item_id)
                if current is None or not current.state.pending or current.deleted:
                    return None  # cancelled (deleted in Slack), or finished, since it was read
                if parts is None and current.text is None:
                    return None  # an edit reset its text since it was read: render it again
                if parts is not None:
                    # Rendered from ``source``: an edit that landed since then must not be lost.
                    if current.text is not None or current.source != source:
                        return None
                    self._write_render(item_id, parts)
                self.db.execute(
                    "UPDATE outbox SET state = 'sending', attempts = attempts + 1, sending_since = ? "
                    "WHERE id = ?",
                    [now, item_id],
                )
                self._save_budgets(budgets)
                claimed = self._outbox_item(item_id)
            assert claimed is not None
            return claimed

        return await self._call(work)

    async def mark_sent(
        self, item_id: int, sent: Sent, now: float, budgets: Sequence[tuple[str, int, int, float]] = ()
    ) -> OutboxItem | None:
        def work() -> OutboxItem | None:
            with self.db.atomic():
                self._save_budgets(budgets)
                row = self._one(
                    # A row names one target: a 1-to-1 row keeps its participant (the conversation
                    # id goes to the message map and the mapping below, not beside it).
                    "UPDATE outbox SET state = 'sent', dm_event_id = ?, target_conversation = "
                    "CASE WHEN target_participant IS NULL THEN COALESCE(target_conversation, ?) END, "
                    "sent_at = ?, last_error = NULL WHERE id = ? "
                    "RETURNING team_id, channel_id, slack_ts, part, target_participant, target_group",
                    [sent.dm_event_id, sent.dm_conversation_id, now, item_id],
                )
                assert row is not None
                if sent.dm_event_id is not None:  # X took it without saying which event: no map
                    self.db.execute(
                        "INSERT INTO message_map (team_id, channel_id, slack_ts, part, conversation_id, "
                        "dm_event_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                        [
                            row["team_id"],
                            row["channel_id"],
                            row["slack_ts"],
                            row["part"],
                            sent.dm_conversation_id,
                            sent.dm_event_id,
                            now,
                        ],
                    )
                if row["target_participant"] and sent.dm_conversation_id is not None:
                    # X names the 1-to-1 conversation on first send; keep it for status and reads.
                    self.db.execute(
                        "UPDATE mappings SET conversation_id = ? WHERE team_id = ? AND channel_id = ? "
                        "AND kind = 'dm' AND participant_id = ? AND conversation_id IS NOT ?",
                        [
                            sent.dm_conversation_id,
                            row["team_id"],
                            row["channel_id"],
                            row["target_participant"],
                            sent.dm_conversation_id,
                        ],
                    )
                if row["target_group"] and sent.dm_conversation_id is not None:
                    self._group_created(row["team_id"], row["channel_id"], sent.dm_conversation_id)
                following = self._channel_head(row["team_id"], row["channel_id"])
            head = None if following is None else self._readable(following)
            # An unreadable head is left to the scheduler, which fails it (the send is recorded).
            return head if isinstance(head, OutboxItem) else None

        return await self._call(work)

    def _group_created(self, team_id: str, channel_id: str, conversation_id: str) -> None:
        """X created the channel's group: the mapping and every row still to send now name it."""
        self.db.execute(
            "UPDATE mappings SET conversation_id = ? WHERE team_id = ? AND channel_id = ? "
            "AND kind = 'group' AND conversation_id IS NULL",
            [conversation_id, team_id, channel_id],
        )
        self.db.execute(
            "UPDATE outbox SET target_conversation = ? WHERE team_id = ? AND channel_id = ? "
            "AND target_conversation IS NULL AND target_participant IS NULL AND target_group IS NOT NULL",
            [conversation_id, team_id, channel_id],
        )

    async def reschedule(
        self,
        item_id: int,
        state: OutboxState,
        next_attempt_at: float,
        error: str | None,
        *,
        held_since: float | None = None,
    ) -> None:
        # Only a row still pending: the caller's copy may predate a Slack delete that cancelled it,
        # and writing its state back would resurrect the message. And a row deleted in Slack
        # mid-send never goes back to a state that would send it: once X is known not to have it,
        # it is cancelled.
        await self._call(
            self._update,
            "UPDATE outbox SET state = CASE WHEN deleted_at IS NOT NULL AND :state IN ('queued', 'waiting') "
            "THEN 'cancelled' ELSE :state END, next_attempt_at = :next, last_error = :error, "
            f"held_since = COALESCE(held_since, :held) WHERE id = :id AND state IN {PENDING_STATES}",
            {
                "state": state.value,
                "next": next_attempt_at,
                "error": error,
                "held": held_since,
                "id": item_id,
            },
        )

    async def mark_done(self, item_id: int, now: float) -> None:
        await self._call(
            self._update,
            "UPDATE outbox SET state = 'sent', sent_at = ?, last_error = NULL WHERE id = ?",
            [now, item_id],
        )

    async def keep_chat(self, item_id: int, text: str, chat: dict[str, Any]) -> OutboxItem | None:
        def work() -> OutboxItem | None:
            with self.db.atomic():
                self.db.execute(
                    "UPDATE outbox SET chat = ? WHERE id = ? AND chat IS NULL AND text = ? "
                    f"AND state IN {PENDING_STATES} AND deleted_at IS NULL",
                    [json.dumps(chat, separators=(",", ":")), item_id, text],
                )
                kept = self._outbox_item(item_id)
            return kept if kept is not None and kept.text == text and kept.chat is not None else None

        return await self._call(work)

    async def drop_chat(self, item_id: int) -> None:
        await self._call(self._update, "UPDATE outbox SET chat = NULL WHERE id = ?", [item_id])

    async def set_hourglass(self, item_id: int, on: bool) -> None:
        await self._call(self._update, "UPDATE outbox SET hourglass = ? WHERE id = ?", [int(on), item_id])

    async def set_held_since(self, item_id: int, since: float | None) -> None:
        await self._call(self._update, "UPDATE outbox SET held_since = ? WHERE id = ?", [since, item_id])

    async def release_account(self, account_id: int, now: float) -> int:
        def work() -> int:
            with self.db.atomic():
                # Every unfinished row, whatever it waited for: a ``sending`` one stays ``sending``
                # (it is read back before any resend); the others are simply due again.
                cursor = self.db.execute(
                    "UPDATE outbox SET state = CASE WHEN state = 'sending' THEN 'sending' ELSE 'queued' END, "
                    f"next_attempt_at = ? WHERE account_id = ? AND state IN {PENDING_STATES}",
                    [now, account_id],
                )
            return cursor.rowcount

        return await self._call(work)

    async def known_event_ids(self, event_ids: Sequence[str]) -> set[str]:
        def work() -> set[str]:
            if not event_ids:
                return set()
            marks = ",".join("?" * len(event_ids))
            rows = self._rows(
                f"SELECT dm_event_id FROM message_map WHERE dm_event_id IN ({marks})", event_ids
            )
            return {r["dm_event_id"] for r in rows}

        return await self._call(work)

    async def outbox_summary(
        self, team_id: str | None = None, channel_id: str | None = None
    ) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            where = ["1 = 1"]
            params: list[Any] = []
            if team_id is not None:
                where.append("team_id = ?")
                params.append(team_id)
            if channel_id is not None:
                where.append("channel_id = ?")
                params.append(channel_id)
            clause = " AND ".join(where)
            counts = {
                r["state"]: r["n"]
                for r in self._rows(
                    f"SELECT state, COUNT(*) AS n FROM outbox WHERE {clause} GROUP BY state", params
                )
            }
            oldest = self._one(
                f"SELECT MIN(created_at) AS t FROM outbox WHERE {clause} AND state IN {PENDING_STATES}",
                params,
            )
            return {
                "counts": counts,
                "pending": sum(counts.get(s, 0) for s in ("queued", "sending", "waiting")),
                "oldest_pending_at": oldest["t"] if oldest else None,
            }

        return await self._call(work)

    async def list_outbox(self, states: Sequence[OutboxState], limit: int = 100) -> list[OutboxItem]:
        def work() -> list[OutboxItem]:
            marks = ",".join("?" * len(states))
            rows = self._rows(
                f"SELECT * FROM outbox WHERE state IN ({marks}) ORDER BY seq, part LIMIT ?",
                [*(s.value for s in states), limit],
            )
            return [self._item(r) for r in rows]

        return await self._call(work)

    async def recently_sent(self, since: float, limit: int) -> list[OutboxItem]:
        def work() -> list[OutboxItem]:
            # created_at bounds the scan to the retention index: a row sent since ``since`` was
            # created at most a day of rate-limit holds before it (older ones are not worth a scan).
            rows = self._rows(
                "SELECT * FROM outbox WHERE created_at >= ? AND state = 'sent' AND kind = 'message' "
                "AND sent_at >= ? AND part = parts_total - 1 ORDER BY sent_at DESC LIMIT ?",
                [since - 86_400, since, limit],
            )
            return [item for item in map(self._readable, rows) if isinstance(item, OutboxItem)]

        return await self._call(work)

    async def get_item(self, item_id: int) -> OutboxItem | None:
        return await self._call(self._outbox_item, item_id)

    def _outbox_item(self, item_id: int) -> OutboxItem | None:
        row = self._one("SELECT * FROM outbox WHERE id = ?", [item_id])
        return self._item(row) if row else None

    # -- inbound (X → Slack) ----------------------------------------------

    def _request_backfill(self, account_id: int, conversation_id: str, bridged_at: float) -> None:
        """``inbound.request_backfill_in`` on this thread, for a mapping made with its history in
        its own transaction (the role itself is ``CursorsRole``)."""
        self.db.execute(inbound.REQUEST_BACKFILL_SQL, [account_id, conversation_id, bridged_at, bridged_at])

    # -- budgets -----------------------------------------------------------

    def _save_budgets(self, windows: Sequence[tuple[str, int, int, float]]) -> None:
        """``budgets.save_windows`` on this thread, for the outbox's claims that save them in
        their own transaction (the role itself is ``BudgetsRole``)."""
        count, params = budgets.save_params(windows)
        if count:
            self.db.execute(budgets.save_sql(count), params)


def _target(row: dict[str, Any]) -> Target:
    """A row's target; a group X has created (``target_conversation``) wins over creating it."""
    participant = _text_or_none(row["target_participant"])
    conversation = _text_or_none(row["target_conversation"])
    group = _text_or_none(row["target_group"])
    if participant is None and conversation is None and group:
        return Target(new_group=tuple(_text(member) for member in json.loads(group)))
    return Target(participant_id=participant, conversation_id=conversation)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{value!r} is not an integer")
    return value


def _time(value: Any) -> float:
    return rows.time(value)


def _time_or_none(value: Any) -> float | None:
    return None if value is None else _time(value)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not text")
    return value


def _text_or_none(value: Any) -> str | None:
    return None if value is None else _text(value)


def _json_or_none(value: dict[str, Any] | None) -> str | None:
    return json.dumps(value, separators=(",", ":")) if value is not None else None
