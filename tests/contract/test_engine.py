"""The seam the role stores are written on (adapters/store/engine.py), on both engines: a
transaction commits whole or not at all, and nobody else's statement lands inside it."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.store.crypto import TokenCipher, generate_key
from adapters.store.engine import Statements
from adapters.store.sqlite import SqliteStore
from tests import pg
from tests.contract.conftest import Engine


class Boom(Exception):
    pass


async def _table(engine: Engine) -> None:
    await engine.sql("CREATE TABLE IF NOT EXISTS seam_probe (id INTEGER PRIMARY KEY, note TEXT)")


async def test_a_transaction_commits_every_statement_together(engine: Engine) -> None:
    store = engine.store()
    await store.open()
    try:
        await _table(engine)
        async with store.engine.transaction() as tx:
            assert await tx.execute("INSERT INTO seam_probe (id, note) VALUES (?, ?)", 1, "a") == 1
            assert await tx.execute("INSERT INTO seam_probe (id, note) VALUES (?, ?)", 2, "b") == 1
            # Its own writes are visible inside it.
            assert await tx.fetchone("SELECT note FROM seam_probe WHERE id = ?", 2) == {"note": "b"}
        assert await engine.sql("SELECT id, note FROM seam_probe ORDER BY id") == [(1, "a"), (2, "b")]
    finally:
        await store.close()


async def test_a_transaction_that_raises_leaves_nothing_and_the_engine_usable(engine: Engine) -> None:
    store = engine.store()
    await store.open()
    try:
        await _table(engine)
        with pytest.raises(Boom):
            async with store.engine.transaction() as tx:
                await tx.execute("INSERT INTO seam_probe (id, note) VALUES (?, ?)", 1, "a")
                # Joining the open transaction, not a new one.
                async with tx.transaction() as inner:
                    await inner.execute("INSERT INTO seam_probe (id, note) VALUES (?, ?)", 2, "b")
                raise Boom
        assert await engine.sql("SELECT COUNT(*) FROM seam_probe") == [(0,)]
        assert await store.engine.execute("INSERT INTO seam_probe (id, note) VALUES (?, ?)", 3, "c") == 1
        assert await store.engine.fetch("SELECT id FROM seam_probe") == [{"id": 3}]
    finally:
        await store.close()


async def test_a_failed_statement_rolls_the_whole_transaction_back(engine: Engine) -> None:
    store = engine.store()
    await store.open()
    try:
        await _table(engine)
        await store.engine.execute("INSERT INTO seam_probe (id, note) VALUES (?, ?)", 1, "a")
        with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
            async with store.engine.transaction() as tx:
                await tx.execute("UPDATE seam_probe SET note = ? WHERE id = ?", "changed", 1)
                await tx.execute("INSERT INTO seam_probe (id, note) VALUES (?, ?)", 1, "again")
        assert await store.engine.fetch("SELECT note FROM seam_probe") == [{"note": "a"}]
    finally:
        await store.close()


async def test_another_caller_waits_for_the_commit_instead_of_joining(engine: Engine) -> None:
    store = engine.store()
    await store.open()
    try:
        await _table(engine)
        inside = asyncio.Event()
        release = asyncio.Event()

        async def long_transaction() -> None:
            with pytest.raises(Boom):
                async with store.engine.transaction() as tx:
                    await tx.execute("INSERT INTO seam_probe (id, note) VALUES (?, ?)", 1, "rolled back")
                    inside.set()
                    await release.wait()
                    raise Boom

        task = asyncio.create_task(long_transaction())
        await inside.wait()
        # Another caller's write, issued while the transaction is open, must not be rolled back
        # with it (on SQLite it would be, were it to run on the shared connection in between).
        other = asyncio.create_task(
            store.engine.execute("INSERT INTO seam_probe (id, note) VALUES (?, ?)", 2, "kept")
        )
        await asyncio.sleep(0.05)
        release.set()
        await task
        assert await other == 1
        assert await engine.sql("SELECT id, note FROM seam_probe") == [(2, "kept")]
    finally:
        await store.close()


async def test_a_cancelled_transaction_rolls_back_and_frees_the_engine(engine: Engine) -> None:
    store = engine.store()
    await store.open()
    try:
        await _table(engine)
        inside = asyncio.Event()

        async def stuck() -> None:
            async with store.engine.transaction() as tx:
                await tx.execute("INSERT INTO seam_probe (id, note) VALUES (?, ?)", 1, "never")
                inside.set()
                await asyncio.Event().wait()

        task = asyncio.create_task(stuck())
        await inside.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await store.engine.execute("INSERT INTO seam_probe (id, note) VALUES (?, ?)", 2, "after") == 1
        assert await engine.sql("SELECT id FROM seam_probe") == [(2,)]
    finally:
        await store.close()


async def test_sqlite_runs_a_hot_path_at_once_whole_or_not_at_all(tmp_path: Path) -> None:
    """SQLite only (``at_once``: one hop to the store's thread for an accept, a claim, a send):
    its statements commit together, and a raise leaves none of them."""
    store = SqliteStore(str(tmp_path / "store.db"), TokenCipher([generate_key()]))
    await store.open()
    try:
        await store.engine.execute("CREATE TABLE seam_probe (id INTEGER PRIMARY KEY, note TEXT)")

        def two(sql: Statements) -> int:
            sql.execute("INSERT INTO seam_probe (id, note) VALUES (?, ?)", 1, "a")
            row = sql.fetchone("INSERT INTO seam_probe (id, note) VALUES (?, ?) RETURNING id", 2, "b")
            assert row is not None
            return int(row["id"])

        def half(sql: Statements) -> None:
            sql.execute("INSERT INTO seam_probe (id, note) VALUES (?, ?)", 3, "c")
            raise Boom

        assert await store.engine.at_once(two) == 2
        with pytest.raises(Boom):
            await store.engine.at_once(half)
        assert await store.engine.fetch("SELECT id FROM seam_probe ORDER BY id") == [{"id": 1}, {"id": 2}]
    finally:
        await store.close()


async def test_sqlite_commits_hot_path_calls_that_queue_together_as_one_group(tmp_path: Path) -> None:
    """SQLite only: ``at_once`` calls that arrive while the store's thread is busy are committed
    in one transaction (one fsync), each caller answered after that commit with its own result;
    one that raises, or whose statement fails, fails alone and leaves nothing behind."""
    store = SqliteStore(str(tmp_path / "store.db"), TokenCipher([generate_key()]))
    await store.open()
    try:
        await store.engine.execute("CREATE TABLE seam_probe (id INTEGER PRIMARY KEY, note TEXT)")
        await store.engine.execute("INSERT INTO seam_probe (id, note) VALUES (?, ?)", 1000, "taken")

        def insert(n: int) -> Callable[[Statements], int]:
            def work(sql: Statements) -> int:
                row = sql.fetchone("INSERT INTO seam_probe (id, note) VALUES (?, ?) RETURNING id", n, f"n{n}")
                assert row is not None
                return int(row["id"])

            return work

        def half(sql: Statements) -> None:
            sql.execute("INSERT INTO seam_probe (id, note) VALUES (?, ?)", 500, "half")
            raise Boom

        def clash(sql: Statements) -> None:
            sql.execute("INSERT INTO seam_probe (id, note) VALUES (?, ?)", 501, "clash")
            sql.execute("INSERT INTO seam_probe (id, note) VALUES (?, ?)", 1000, "again")  # taken

        async def call(work: Callable[[Statements], Any]) -> Any:
            result = await store.engine.at_once(work)
            # Answered after the commit that holds its row: another connection sees it.
            seen = await pg.query(
                str(tmp_path / "store.db"), "SELECT COUNT(*) FROM seam_probe WHERE id = ?", result
            )
            assert seen == [(1,)]
            return result

        before = store.group_commits
        busy, release = threading.Event(), threading.Event()

        async def hold(tx: Any) -> None:
            busy.set()
            release.wait(5)  # the store's thread is busy: the calls below queue up behind it

        holding = asyncio.ensure_future(store.engine.atomic(hold))
        await asyncio.to_thread(busy.wait, 5)
        calls = [asyncio.ensure_future(call(insert(n))) for n in range(1, 11)]
        calls.insert(3, asyncio.ensure_future(call(half)))
        calls.insert(7, asyncio.ensure_future(call(clash)))
        await asyncio.sleep(0.01)
        release.set()
        await holding
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(outcomes[3], Boom)
        assert isinstance(outcomes[7], sqlite3.IntegrityError)
        assert [o for i, o in enumerate(outcomes) if i not in (3, 7)] == list(range(1, 11))
        assert await store.engine.fetch("SELECT id FROM seam_probe ORDER BY id") == [
            {"id": n} for n in [*range(1, 11), 1000]
        ]
        # Twelve calls that queued together, one commit.
        after = store.group_commits
        assert (after.groups - before.groups, after.calls - before.calls) == (1, 12)
    finally:
        await store.close()


async def test_sqlite_group_whose_transaction_a_call_ends_still_commits_the_others(tmp_path: Path) -> None:
    """A statement that rolls back the whole transaction (a ``RAISE(ROLLBACK)`` trigger, as a full
    disk would) takes the calls grouped before it with it: they are run again, each alone, and
    only the one that failed fails."""
    store = SqliteStore(str(tmp_path / "store.db"), TokenCipher([generate_key()]))
    await store.open()
    try:
        await store.engine.execute("CREATE TABLE seam_probe (id INTEGER PRIMARY KEY, note TEXT)")
        await store.engine.execute(
            "CREATE TRIGGER seam_veto BEFORE INSERT ON seam_probe WHEN NEW.note = 'veto' "
            "BEGIN SELECT RAISE(ROLLBACK, 'vetoed'); END"
        )

        def insert(n: int, note: str) -> Callable[[Statements], int]:
            def work(sql: Statements) -> int:
                sql.execute("INSERT INTO seam_probe (id, note) VALUES (?, ?)", n, note)
                return n

            return work

        busy, release = threading.Event(), threading.Event()

        async def hold(tx: Any) -> None:
            busy.set()
            release.wait(5)

        holding = asyncio.ensure_future(store.engine.atomic(hold))
        await asyncio.to_thread(busy.wait, 5)
        notes = ["a", "b", "veto", "c", "d"]
        calls = [asyncio.ensure_future(store.engine.at_once(insert(n, note))) for n, note in enumerate(notes)]
        await asyncio.sleep(0.01)
        release.set()
        await holding
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(outcomes[2], sqlite3.IntegrityError) and "vetoed" in str(outcomes[2])
        assert [o for i, o in enumerate(outcomes) if i != 2] == [0, 1, 3, 4]
        assert await store.engine.fetch("SELECT id, note FROM seam_probe ORDER BY id") == [
            {"id": 0, "note": "a"},
            {"id": 1, "note": "b"},
            {"id": 3, "note": "c"},
            {"id": 4, "note": "d"},
        ]
        assert await store.ping()
    finally:
        await store.close()


async def test_an_atomic_block_commits_whole_or_not_at_all(engine: Engine) -> None:
    store = engine.store()
    await store.open()
    try:
        await _table(engine)

        async def two(tx: Any) -> int:
            await tx.execute("INSERT INTO seam_probe (id, note) VALUES (?, ?)", 1, "a")
            async with tx.transaction() as inner:  # joins, as in transaction()
                await inner.execute("INSERT INTO seam_probe (id, note) VALUES (?, ?)", 2, "b")
            row = await tx.fetchone("SELECT COUNT(*) AS n FROM seam_probe")
            return int(row["n"])

        assert await store.engine.atomic(two) == 2

        async def failing(tx: Any) -> None:
            await tx.execute("UPDATE seam_probe SET note = ? WHERE id = ?", "changed", 1)
            raise Boom

        with pytest.raises(Boom):
            await store.engine.atomic(failing)
        assert await engine.sql("SELECT id, note FROM seam_probe ORDER BY id") == [(1, "a"), (2, "b")]
    finally:
        await store.close()


async def test_an_atomic_block_that_awaits_anything_else_is_refused_on_sqlite(tmp_path: Any) -> None:
    store = SqliteStore(str(tmp_path / "store.db"), TokenCipher([generate_key()]))
    await store.open()
    try:

        async def waits(tx: Any) -> None:
            await tx.execute("CREATE TABLE seam_probe (id INTEGER PRIMARY KEY)")
            await asyncio.sleep(0)  # would leave the store's thread mid-transaction

        with pytest.raises(RuntimeError, match="awaited something other than its statements"):
            await store.engine.atomic(waits)
        # Rolled back, and the store still works.
        assert await store.engine.fetch("SELECT name FROM sqlite_master WHERE name = 'seam_probe'") == []
        assert await store.ping()
    finally:
        await store.close()
