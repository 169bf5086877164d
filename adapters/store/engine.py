"""The seam under the role stores: statements and transactions, on whichever database is selected.

A role's SQL is written once against this, with ``?`` placeholders, and runs on SQLite (on the
store's one owner thread) and on PostgreSQL (asyncpg's pool, placeholders numbered here). Only
portable SQL goes through it: ``INSERT … ON CONFLICT``, ``RETURNING`` and plain types work on
both (SQLite 3.35+). The few statements that need a dialect of their own ask ``engine.dialect``
where they are, so the difference is read in one place, beside the portable version.

``transaction()`` makes several statements one commit. On PostgreSQL it holds one pooled
connection; on SQLite it takes the write lock (``BEGIN IMMEDIATE``) and keeps every other caller
of the store's thread waiting until it ends, so nothing else joins it half-way.

SQLite's hot paths (``SqliteEngine.at_once``: an accept, a claim, a send) commit in groups: the
calls that queue while the store's thread is busy run together in one transaction, one fsync for
all of them (``synchronous = FULL``), each in a savepoint of its own so one that fails is undone
alone, and every caller is answered once the commit holding its writes has returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import re
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from concurrent.futures import Executor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ParamSpec, Protocol, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from sqlite_utils import Database
from sqlite_utils.utils import dedupe_keys

P = ParamSpec("P")
T = TypeVar("T")


class Dialect(StrEnum):
    SQLITE = "sqlite"
    POSTGRES = "postgres"


class Engine(Protocol):
    """One statement at a time, or several in one transaction; rows as dicts."""

    @property
    def dialect(self) -> Dialect: ...

    async def fetch(self, sql: str, *params: Any) -> list[dict[str, Any]]: ...

    async def fetchone(self, sql: str, *params: Any) -> dict[str, Any] | None:
        """The first row, or ``None``."""
        ...

    async def execute(self, sql: str, *params: Any) -> int:
        """Run a write; the number of rows it touched."""
        ...

    def transaction(self) -> AbstractAsyncContextManager[Engine]:
        """Statements on the engine it yields commit together when the block ends, or not at all
        when it raises. Inside, ``transaction()`` again joins the open one."""
        ...

    async def atomic(self, work: Callable[[Engine], Coroutine[Any, Any, T]]) -> T:
        """``work(tx)`` as one transaction: committed when it returns, rolled back if it raises.

        The same role code as ``transaction()``, cheaper on SQLite: there ``work`` runs whole on
        the store's thread, in one hop instead of one per statement (and the thread is held for
        that one hop only). So ``work`` must await nothing but ``tx``'s statements."""
        ...


# Calls one group commit takes at most: a burst of thousands waits for a few commits, not for one
# transaction holding the thread for all of them.
GROUP_MAX = 100


@dataclass(frozen=True)
class GroupCommits:
    """How SQLite's hot-path calls were committed: ``calls`` answered in ``groups`` transactions."""

    groups: int = 0
    calls: int = 0


class _Waiter:
    """One ``at_once`` call in the group queue: its work, and the future its caller awaits."""

    __slots__ = ("future", "work")

    def __init__(self, work: Callable[[Database], Any], future: asyncio.Future[Any]) -> None:
        self.work = work
        self.future = future


class SqliteThread:
    """The SQLite store's one owner thread, shared by its own calls and its engine.

    ``run`` hops a function to the thread. While a transaction is open only the task that opened
    it (and the tasks it starts) reach the thread; everyone else waits for the commit, so no
    statement of theirs lands inside somebody else's transaction.
    """

    def __init__(self, executor: Executor) -> None:
        self._executor = executor
        self._lock = asyncio.Lock()
        self._inside: contextvars.ContextVar[bool] = contextvars.ContextVar(
            f"sqlite-tx-{id(self)}", default=False
        )
        self._calls = 0  # calls submitted to the thread and not answered yet (``after_others``)
        self._idle = asyncio.Event()  # set while there are none
        self._idle.set()
        # ``at_once`` calls waiting for a group commit. Appended on the event loop, taken by the
        # store's thread when the group's hop starts (deque's append and popleft are thread-safe),
        # so a group holds everything queued while the thread was busy with something else.
        self._group: deque[_Waiter] = deque()
        self._committer: asyncio.Task[None] | None = None
        self.group_commits = GroupCommits()

    def inside(self) -> bool:
        """Is this task inside a ``transaction()`` of this thread's?"""
        return self._inside.get()

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        self._calls += 1
        self._idle.clear()
        try:
            return await self._run(functools.partial(fn, *args, **kwargs))
        finally:
            self._calls -= 1
            if not self._calls:
                self._idle.set()

    async def _run(self, call: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        if self._inside.get() or not self._lock.locked():
            # No transaction open, or ours: the single-worker executor keeps calls in order.
            return await loop.run_in_executor(self._executor, call)
        async with self._lock:
            return await loop.run_in_executor(self._executor, call)

    async def after_others(self, at_most: float) -> None:
        """Let the calls waiting for the thread go first, for at most ``at_most`` seconds: bulk
        work (a big take, many transactions) goes on between an ack's, a delivery step's and
        /healthz's calls instead of ahead of each step of theirs."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), at_most)

    async def grouped(self, db: Callable[[], Database], work: Callable[[Database], T]) -> T:
        """``work`` committed in a group with the other calls queued meanwhile (module docstring).
        ``work`` may run twice (a group whose whole transaction was lost runs each call again,
        alone), so it must do nothing but its statements."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._group.append(_Waiter(work, future))
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_groups(db), name="sqlite group commit")
        return await future

    async def _commit_groups(self, db: Callable[[], Database]) -> None:
        """Commit groups while calls are queued; one group's hop at a time, so the calls that
        arrive during a commit make up the next group."""
        try:
            while self._group:
                taken: list[_Waiter] = []
                try:
                    outcomes = await self.run(_commit_group, db, self._group, taken)
                except BaseException as exc:  # the hop itself failed (store closed, cancelled)
                    for waiter in (*taken, *self._group):
                        _settle(waiter.future, False, exc)
                    self._group.clear()
                    raise
                self.group_commits = GroupCommits(
                    self.group_commits.groups + outcomes.commits, self.group_commits.calls + len(taken)
                )
                for waiter, (ok, value) in zip(taken, outcomes.results, strict=True):
                    _settle(waiter.future, ok, value)
        finally:
            self._committer = None

    @asynccontextmanager
    async def transaction(self, db: Callable[[], Database]) -> AsyncIterator[None]:
        if self._inside.get():
            yield
            return
        async with self._lock:
            token = self._inside.set(True)
            try:
                await self.run(lambda: db().execute("BEGIN IMMEDIATE"))
                try:
                    yield
                    await asyncio.shield(self.run(lambda: db().execute("COMMIT")))
                except BaseException:  # the block's, or the commit's
                    # Shielded: a cancelled caller must still leave the connection usable.
                    await asyncio.shield(self.run(_rollback, db))
                    raise
            finally:
                self._inside.reset(token)


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():  # its caller gave up waiting (the work was done all the same)
        return
    if ok:
        future.set_result(value)
    elif isinstance(value, asyncio.CancelledError):
        future.cancel()
    else:
        future.set_exception(value)


@dataclass
class _Outcomes:
    """A group's answers in order, ``(True, result)`` or ``(False, exception)``, and the
    transactions it took (one, unless the group's own was lost)."""

    results: list[tuple[bool, Any]]
    commits: int


def _commit_group(
    connection: Callable[[], Database], queue: deque[_Waiter], taken: list[_Waiter]
) -> _Outcomes:
    """On the store's thread: take up to ``GROUP_MAX`` queued calls (into ``taken``, which the
    event loop reads if this fails), run each in its own savepoint of one transaction, commit."""
    while queue and len(taken) < GROUP_MAX:
        taken.append(queue.popleft())
    db = connection()
    conn = db.conn
    results: list[tuple[bool, Any]] = []
    try:
        conn.execute("BEGIN IMMEDIATE")
        for waiter in taken:
            conn.execute("SAVEPOINT grouped")
            try:
                results.append((True, waiter.work(db)))
            except Exception as exc:
                if not conn.in_transaction:
                    raise  # the whole transaction is gone (below)
                conn.execute("ROLLBACK TO grouped")
                results.append((False, exc))
            conn.execute("RELEASE grouped")
        conn.execute("COMMIT")
        return _Outcomes(results, 1)
    except Exception:
        # The transaction itself was lost (the commit failed, a statement rolled everything back,
        # the write lock never came): nothing of the group is on disk. Each call again, alone,
        # so only the ones that fail on their own fail.
        _rollback(lambda: db)
    return _Outcomes([_alone(connection, waiter.work) for waiter in taken], len(taken))


def _alone(connection: Callable[[], Database], work: Callable[[Database], Any]) -> tuple[bool, Any]:
    try:
        return True, _immediate(connection, work)
    except Exception as exc:
        return False, exc


def _rollback(db: Callable[[], Database]) -> None:
    # A failed statement (a RAISE(ROLLBACK) trigger, a full disk) may have ended it already.
    if db().conn.in_transaction:
        db().conn.execute("ROLLBACK")


class SqliteEngine:
    """Statements on the SQLite store's owner thread."""

    dialect = Dialect.SQLITE

    def __init__(self, thread: SqliteThread, db: Callable[[], Database]) -> None:
        self._thread = thread
        self._db = db

    async def fetch(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        return await self._thread.run(lambda: list(self._db().query(sql, params)))

    async def fetchone(self, sql: str, *params: Any) -> dict[str, Any] | None:
        rows = await self.fetch(sql, *params)
        return rows[0] if rows else None

    async def execute(self, sql: str, *params: Any) -> int:
        count: int = await self._thread.run(lambda: self._db().execute(sql, params).rowcount)
        return count

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqliteEngine]:
        async with self._thread.transaction(self._db):
            yield self

    async def atomic(self, work: Callable[[Engine], Coroutine[Any, Any, T]]) -> T:
        if self._thread.inside():
            return await work(self)  # joins the transaction() open in this task
        return await self._thread.run(_immediate, self._db, lambda db: _drive(work(SqliteDirect(db))))

    async def at_once(self, work: Callable[[Statements], T]) -> T:
        """Run ``work``'s statements atomically in one hop to the store's thread, committed in a
        group with the other ``at_once`` calls queued meanwhile (one fsync for all).

        For SQLite's hot paths (an accept, a claim, a send): a transaction of several awaited
        statements holds the thread across as many event-loop turns, and every other caller of
        the store waits for all of them. ``work`` may run twice (``SqliteThread.grouped``): it
        must do nothing but its statements."""
        if self._thread.inside():  # joins the transaction() open in this task
            return await self._thread.run(lambda: work(SqliteStatements(self._db())))
        return await self._thread.grouped(self._db, lambda db: work(SqliteStatements(db)))


def _immediate(connection: Callable[[], Database], work: Callable[[Database], T]) -> T:
    """``work`` in one write transaction, on the store's thread. IMMEDIATE, as every write
    transaction here: a deferred one that reads first cannot wait for another connection's
    write lock (SQLite answers "database is locked" at once)."""
    db = connection()
    db.execute("BEGIN IMMEDIATE")
    try:
        result = work(db)
        db.execute("COMMIT")
    except BaseException:
        _rollback(lambda: db)
        raise
    return result


class SqliteDirect:
    """The ``Engine`` of an ``atomic`` block on the SQLite store's thread: its statements run
    when awaited, without leaving the thread (the block is driven there by ``_drive``)."""

    dialect = Dialect.SQLITE

    def __init__(self, db: Database) -> None:
        self._sql = SqliteStatements(db)

    async def fetch(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        return self._sql.fetch(sql, *params)

    async def fetchone(self, sql: str, *params: Any) -> dict[str, Any] | None:
        return self._sql.fetchone(sql, *params)

    async def execute(self, sql: str, *params: Any) -> int:
        return self._sql.execute(sql, *params)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqliteDirect]:
        yield self

    async def atomic(self, work: Callable[[Engine], Coroutine[Any, Any, T]]) -> T:
        return await work(self)


def _drive(block: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (it awaits only ``SqliteDirect``'s statements) to its
    end, here on the calling thread; one that suspends is a bug in the role, said at once."""
    try:
        block.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    block.close()
    raise RuntimeError("an atomic block on SQLite awaited something other than its statements")


class Statements(Protocol):
    """Statements run synchronously on the SQLite store's thread (``SqliteEngine.at_once``)."""

    def fetch(self, sql: str, *params: Any) -> list[dict[str, Any]]: ...
    def fetchone(self, sql: str, *params: Any) -> dict[str, Any] | None: ...
    def execute(self, sql: str, *params: Any) -> int: ...


class SqliteStatements:
    """``Statements`` on the SQLite connection, called on its owner thread only, always inside a
    transaction opened by the engine (``at_once``, ``atomic``).

    On the connection itself rather than through sqlite-utils' ``query`` and ``execute``: those
    wrap each statement in a savepoint of its own and guard autocommit, three statements for
    one, which the open transaction makes useless; the hot path runs four per accept. Rows are
    dicts by column name as sqlite-utils makes them (a repeated name gets ``_2``)."""

    def __init__(self, db: Database) -> None:
        self._conn = db.conn

    def fetch(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        cursor = self._conn.execute(sql, params)
        if cursor.description is None:
            return []
        keys = dedupe_keys(d[0] for d in cursor.description)
        return [dict(zip(keys, row, strict=True)) for row in cursor.fetchall()]

    def fetchone(self, sql: str, *params: Any) -> dict[str, Any] | None:
        cursor = self._conn.execute(sql, params)
        try:
            if cursor.description is None:
                return None
            row = cursor.fetchone()  # the first: the rest are not read (a write is done by now)
            return (
                None
                if row is None
                else dict(zip(dedupe_keys(d[0] for d in cursor.description), row, strict=True))
            )
        finally:
            cursor.close()  # resets the statement, so nothing is left running at the commit

    def execute(self, sql: str, *params: Any) -> int:
        count: int = self._conn.execute(sql, params).rowcount
        return count


_PLACEHOLDER = re.compile(r"\?")


def numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2, …`` (the role SQL has no ``?`` in a literal)."""
    if "?" not in sql:
        return sql  # written for PostgreSQL alone (its hot path): nothing to number
    counter = iter(range(1, 1_000_000))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)


class PostgresTransaction:
    """Statements on one connection inside its open transaction."""

    dialect = Dialect.POSTGRES

    def __init__(self, conn: asyncpg.Connection | PoolConnectionProxy) -> None:
        self.conn = conn

    def _on(self) -> asyncpg.Connection | PoolConnectionProxy | asyncpg.Pool:
        return self.conn

    async def fetch(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        return [dict(r) for r in await self._on().fetch(numbered(sql), *params)]

    async def fetchone(self, sql: str, *params: Any) -> dict[str, Any] | None:
        row = await self._on().fetchrow(numbered(sql), *params)
        return dict(row) if row is not None else None

    async def execute(self, sql: str, *params: Any) -> int:
        status: str = await self._on().execute(numbered(sql), *params)
        return _affected(status.split())

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresTransaction]:
        yield self

    async def atomic(self, work: Callable[[Engine], Coroutine[Any, Any, T]]) -> T:
        return await work(self)


class PostgresEngine(PostgresTransaction):
    """The same statements on the PostgreSQL store's pool, each in its own implicit transaction."""

    def __init__(self, pool: Callable[[], asyncpg.Pool]) -> None:
        self._pool = pool

    def _on(self) -> asyncpg.Pool:
        return self._pool()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresTransaction]:
        async with self._pool().acquire() as conn, conn.transaction():
            yield PostgresTransaction(conn)

    async def atomic(self, work: Callable[[Engine], Coroutine[Any, Any, T]]) -> T:
        async with self.transaction() as tx:
            return await work(tx)


def marks(values: Sequence[Any]) -> str:
    """One ``?`` a value, for ``IN (…)``."""
    return ", ".join("?" * len(values))


def where(*conditions: str, **equal: Any) -> tuple[str, list[Any]]:
    """`` WHERE c AND a = ? AND b = ?``: the ``conditions``, and the filters given (None: not
    filtered; the names are ours, never the caller's), with the filters' values."""
    given = {column: value for column, value in equal.items() if value is not None}
    clauses = [*conditions, *(f"{column} = ?" for column in given)]
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), list(given.values())


def indexed_by(dialect: Dialect, index: str) -> str:
    """SQLite's ``INDEXED BY`` where its planner scanned without it; nothing on PostgreSQL."""
    return f" INDEXED BY {index}" if dialect is Dialect.SQLITE else ""


def _affected(words: Sequence[str]) -> int:
    """asyncpg's command tag (``UPDATE 3``, ``INSERT 0 1``, ``DELETE 0``): its last number."""
    return int(words[-1]) if words and words[-1].isdigit() else 0
