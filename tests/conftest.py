"""Fixtures shared by every test directory: a PostgreSQL server when a test asks for one."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest

from tests import pg

PG_FIXTURES = frozenset({"pg_server", "pg_url", "on_postgres"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark by what a test needs, so that ``-m "not slow"`` is the inner loop (the core, the
    contract suite on SQLite, robustness, security, adapters, simulators and ops in-process):
    ``process`` (a real process: tests/process, and tests marked so that run ``python -m
    bridge``), ``postgres`` (a PostgreSQL server), ``integration`` (tests/integration: a whole
    bridge between the simulators in real time, paced by read windows, retries and Retry-After),
    all of them also ``slow``; and the browser test. Marked here, from the fixtures and folders,
    so that a new test cannot forget its mark."""
    for item in items:
        path = item.path.as_posix()
        params = getattr(getattr(item, "callspec", None), "params", {})
        uses_pg = bool(PG_FIXTURES & set(getattr(item, "fixturenames", ()))) or "postgres" in params.values()
        if "/tests/process/" in path:
            item.add_marker(pytest.mark.process)
        if "/tests/integration/" in path:
            item.add_marker(pytest.mark.integration)
        if uses_pg:
            item.add_marker(pytest.mark.postgres)
        if (
            item.get_closest_marker("process")
            or item.get_closest_marker("integration")
            or uses_pg
            or path.endswith("test_sandbox_browser.py")
        ):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Iterator[None]:
    """Put the root logger back after each test: ``setup_logging`` (called by the CLI run
    in-process) points it at the stderr pytest captured for that test, which is closed
    afterwards, so a later test's log line from a worker thread would hit a closed file."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """An admin URL: ``TEST_DATABASE_URL`` when set, else a throwaway server started here."""
    given = os.environ.get("TEST_DATABASE_URL", "").strip()
    if given:
        yield given
        return
    try:
        with pg.throwaway_server() as url:
            yield url
    except pg.PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
async def pg_url(pg_server: str) -> AsyncIterator[str]:
    """A fresh, empty database for one test, dropped after it."""
    url = await pg.create_database(pg_server)
    yield url
    await pg.drop_database(pg_server, url)


@pytest.fixture(params=["sqlite", "postgres"])
async def on_both_stores(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[dict[str, str]]:
    """Run the test once on SQLite and once on PostgreSQL: the harness and the process tests'
    world take their database from ``tests.harness.DATABASE_ENV``.

    Only for tests whose subject is the store on a real server (a pool's connections, a typed
    column, an unreadable row) and for process tests: integration tests run on SQLite, and the
    store's behaviour on both engines is held by tests/contract (issue 18)."""
    if request.param == "sqlite":
        yield {}
        return
    async with _on_postgres(request, monkeypatch) as env:
        yield env


@pytest.fixture
async def on_postgres(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[dict[str, str]]:
    """The harness and the process tests' world on a fresh PostgreSQL database (several instances)."""
    async with _on_postgres(request, monkeypatch) as env:
        yield env


@asynccontextmanager
async def _on_postgres(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[dict[str, str]]:
    from tests import harness

    server = request.getfixturevalue("pg_server")
    url = await pg.create_database(server)
    monkeypatch.setattr(harness, "DATABASE_ENV", {"DATABASE_URL": url})
    try:
        yield harness.DATABASE_ENV
    finally:
        await pg.drop_database(server, url)
