"""The accounts role (``adapters/store/accounts.py``) on both engines: what the store tests in
``test_store_contract.py`` and ``test_inbound_store.py`` do not already hold it to (the sweep of
OAuth states on the in-memory fake too)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from adapters.store.engine import Dialect
from adapters.store.postgres import PostgresStore
from adapters.store.sqlite import SqliteStore
from bridge.model import Account, ChannelMapping, MappingKind, OAuthState, TokenSet, XUser
from tests.contract.conftest import AnyEngine, Engine

ME, OTHER, ALICE = "1000", "3000", "2001"
CONVERSATION = f"{ME}-{ALICE}"
RACED = "999"  # the cursor a read of the previous account commits in the middle of a switch


@pytest.fixture
async def store(engine: Engine) -> AsyncIterator[SqliteStore | PostgresStore]:
    opened = engine.store()
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def bridged(store: SqliteStore | PostgresStore) -> Account:
    account = await store.save_account("T1", "U1", XUser(ME, "me"), TokenSet("a", "r", None))
    await store.create_mapping(
        ChannelMapping("T1", "C1", MappingKind.LINK, account.id, CONVERSATION, None, "U1", 0.0)
    )
    return account


async def a_read_commits_its_cursor_whenever_the_cursor_is_deleted(
    store: SqliteStore | PostgresStore,
) -> None:
    """Stand in for the race of 6942c77: on PostgreSQL, a poll of the previous X account may
    commit its cursor after the switch deleted the row (there was none left to lock) and before
    it puts the current account's back. A trigger writes that cursor at the same point, once."""
    if store.engine.dialect is Dialect.POSTGRES:
        await store.engine.execute(
            "CREATE FUNCTION raced_read() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "INSERT INTO cursors (account_id, newest_event_id, updated_at) "
            f"VALUES (OLD.account_id, '{RACED}', 0); "
            "RETURN NULL; END $$"
        )
        await store.engine.execute(
            "CREATE TRIGGER raced_read AFTER DELETE ON cursors FOR EACH ROW "
            f"WHEN (OLD.newest_event_id != '{RACED}') EXECUTE FUNCTION raced_read()"
        )
    else:
        await store.engine.execute(
            f"CREATE TRIGGER raced_read AFTER DELETE ON cursors WHEN OLD.newest_event_id != '{RACED}' "
            f"BEGIN INSERT INTO cursors (account_id, newest_event_id, updated_at) "
            f"VALUES (OLD.account_id, '{RACED}', 0); END"
        )


async def test_switching_x_accounts_survives_a_read_committing_its_cursor_mid_switch(
    store: SqliteStore | PostgresStore,
) -> None:
    account = await bridged(store)
    await store.take_inbound(account.id, [], "10", 1.0)  # a read of ME's inbox
    await a_read_commits_its_cursor_whenever_the_cursor_is_deleted(store)
    # To another X account, which has no cursor yet: the raced cursor is not left to it.
    await store.hold_for_previous_account(account.id, XUser(ME, "me"), XUser(OTHER, "other"), 2.0)
    assert await store.get_cursor(account.id) is None
    # The other account reads; back to the first, whose parked cursor wins over the raced one
    # (a plain INSERT failed the whole switch with a unique violation).
    await store.take_inbound(account.id, [], "70", 3.0)
    await store.hold_for_previous_account(account.id, XUser(OTHER, "other"), XUser(ME, "me"), 4.0)
    assert await store.get_cursor(account.id) == "10"
    # And what the other account had read waits, parked, for it.
    await store.hold_for_previous_account(account.id, XUser(ME, "me"), XUser(OTHER, "other"), 5.0)
    assert await store.get_cursor(account.id) == "70"


async def test_a_new_oauth_state_sweeps_those_expired_over_an_hour_ago(engine_or_memory: AnyEngine) -> None:
    store = engine_or_memory.store()
    await store.open()
    try:
        now = time.time()
        for name, expires_at in (("old", now - 3700), ("recent", now - 3500), ("live", now + 600)):
            await store.save_oauth_state(OAuthState(name, "verifier", "T1", "U1", "C1", None, expires_at))
        await store.save_oauth_state(OAuthState("new", "verifier", "T1", "U1", "C1", None, now + 600))
        if isinstance(engine_or_memory, Engine):
            kept = await engine_or_memory.sql("SELECT state FROM oauth_states ORDER BY state")
        else:  # the fake's table of states
            kept = [(state,) for state in sorted(engine_or_memory.tables.oauth_states)]
        assert [state for (state,) in kept] == ["live", "new", "recent"]
        assert await store.get_oauth_state("recent", now) is None  # kept a while, but expired
    finally:
        await store.close()
