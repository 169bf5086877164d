"""Fixtures shared by every test directory: a PostgreSQL server when a test asks for one."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

from tests import pg


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
