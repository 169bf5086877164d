"""A throwaway PostgreSQL server for the tests, and a fresh database per test.

``TEST_DATABASE_URL`` names a server to use (``.ci/run`` starts one and sets it);
without it the first test that needs PostgreSQL starts one here from the binaries on
this machine (initdb in a temporary directory, 127.0.0.1 on a free port, trust auth),
stopped when the session ends. With neither, those tests fail with the reason: a
missing database must never pass as a skipped test.

``python -m tests.pg`` starts one and prints its URL, for trying things by hand.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

INSTALL_HINT = (
    "PostgreSQL's server binaries (initdb, postgres) were not found: install Debian's "
    "`postgresql` package, or set TEST_DATABASE_URL to a server the tests may create databases on"
)


class PostgresUnavailable(RuntimeError):
    """No server to test against; the message says how to get one."""


def _bindir() -> Path:
    for candidate in (shutil.which("initdb"), *sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))[::-1]):
        if candidate and os.access(candidate, os.X_OK):
            return Path(os.path.realpath(candidate)).parent
    raise PostgresUnavailable(INSTALL_HINT)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def throwaway_server(*, durable: bool = False) -> Iterator[str]:
    """Start a private server; yield its admin URL; stop it and remove its files.

    ``durable``: PostgreSQL's own defaults (for ``bench/``); else fsync is off, for speed."""
    bindir = _bindir()
    root = Path(tempfile.mkdtemp(prefix="xdm-pg-"))
    data = root / "data"
    # PostgreSQL refuses to run as root: as root, run it as the `postgres` user (Debian's package
    # creates it) in a directory that user owns.
    user = None
    if os.geteuid() == 0:
        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable(
                "running as root and there is no `postgres` user to run the server"
            ) from None
        user = entry.pw_name
        os.chown(root, entry.pw_uid, entry.pw_gid)
    port = _free_port()
    log = root / "server.log"
    subprocess.run(
        [bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"],
        check=True,
        capture_output=True,
        user=user,
    )
    # fsync off: a test server's data is disposable, and the tests kill clients, never the server.
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=200"
    if not durable:
        options += " -c fsync=off"
    subprocess.run(
        [bindir / "pg_ctl", "-D", data, "-l", log, "-w", "-o", options, "start"],
        check=True,
        capture_output=True,
        user=user,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"], capture_output=True, user=user
        )
        shutil.rmtree(root, ignore_errors=True)


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def create_database(admin_url: str) -> str:
    """A new empty database on the server; its URL."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f"CREATE DATABASE {name} TEMPLATE template0")
    finally:
        await conn.close()
    return with_database(admin_url, name)


async def drop_database(admin_url: str, url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await conn.close()


def is_url(location: str) -> bool:
    """Whether a database location is a PostgreSQL URL (else it is a SQLite path)."""
    return location.startswith(("postgres://", "postgresql://"))


async def query(location: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Plain SQL (``?`` placeholders) on a bridge database: a SQLite path or a PostgreSQL URL."""
    return [tuple(r) for r in await _fetch(location, sql, params)]


async def records(location: str, sql: str, *params: Any) -> list[dict[str, Any]]:
    """As :func:`query`, each row a dict by column name."""
    return [dict(r) for r in await _fetch(location, sql, params)]


async def _fetch(location: str, sql: str, params: tuple[Any, ...]) -> list[Any]:
    # Rows that are both sequences and mappings: sqlite3.Row or asyncpg's Record.
    if not is_url(location):
        # In a thread: the fakes serving the bridge may share this event loop.
        return await asyncio.to_thread(_sqlite_fetch, location, sql, params)
    numbered = iter(range(1, 10_000))
    sql = re.sub(r"\?", lambda _: f"${next(numbered)}", sql)
    conn = await asyncpg.connect(location)
    try:
        return list(await conn.fetch(sql, *params))
    finally:
        await conn.close()


def _sqlite_fetch(path: str, sql: str, params: tuple[Any, ...]) -> list[sqlite3.Row]:
    # The 30 s busy timeout: a read racing a live server's write waits it out instead of failing.
    db = sqlite3.connect(path, timeout=30)
    db.row_factory = sqlite3.Row
    try:
        with db:  # commits a write (tests set up states with plain UPDATEs)
            return db.execute(sql, params).fetchall()
    finally:
        db.close()


def _serve_until_signalled() -> None:
    # SIGTERM too (a background job ignores SIGINT): the server must be stopped, not orphaned.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with throwaway_server() as url:
        print(url, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    _serve_until_signalled()
