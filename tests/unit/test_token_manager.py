"""TokenManager's copy of each account: read once, kept current by its own changes, re-read in time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.store.crypto import TokenCipher, generate_key
from adapters.store.sqlite import SqliteStore
from bridge.errors import XAuthRevoked
from bridge.model import Account, TokenSet, XUser
from bridge.tokens import ACCOUNT_TTL, TokenManager
from tests.memory_accounts import MemoryAccounts
from tests.memory_tables import MemoryTables


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def now(self) -> float:
        return self.t


class OAuth:
    """X's token endpoint as a port: hands out numbered pairs, or refuses."""

    def __init__(self) -> None:
        self.refreshed: list[str] = []
        self.refuse = False

    async def refresh(self, refresh_token: str) -> TokenSet:
        if self.refuse:
            raise XAuthRevoked("invalid_request: refresh token was revoked")
        self.refreshed.append(refresh_token)
        n = len(self.refreshed)
        return TokenSet(f"access-{n}", f"refresh-{n}", 2_000_000.0)


class Revoked:
    def __init__(self) -> None:
        self.told: list[int] = []

    async def __call__(self, account: Account, reason: str) -> None:
        self.told.append(account.id)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(str(tmp_path / "store.db"), TokenCipher([generate_key()]))
    await store.open()
    yield store
    await store.close()


async def test_account_is_read_once_then_again_after_its_ttl(store: SqliteStore) -> None:
    clock = Clock()
    tokens = TokenManager(store, OAuth(), clock, Revoked())  # type: ignore[arg-type]
    saved = await store.save_account("T1", "U1", XUser("1000", "me"), TokenSet("a0", "r0", None))
    assert (await tokens.account(saved.id)) == saved
    # A change made elsewhere (another process) is not seen until the copy is old...
    await store.update_tokens(saved.id, TokenSet("a1", "r1", None))
    clock.t += ACCOUNT_TTL / 2
    cached = await tokens.account(saved.id)
    assert cached is not None and cached.tokens.access_token == "a0"
    clock.t += ACCOUNT_TTL
    fresh = await tokens.account(saved.id)
    assert fresh is not None and fresh.tokens.access_token == "a1"
    # ...or forgotten (a reconnection in this process).
    await store.update_tokens(saved.id, TokenSet("a2", "r2", None))
    tokens.forget(saved.id)
    again = await tokens.account(saved.id)
    assert again is not None and again.tokens.access_token == "a2"
    assert await tokens.account(saved.id + 1) is None


async def test_a_refresh_updates_the_copy_so_the_next_send_needs_no_read(store: SqliteStore) -> None:
    clock = Clock()
    oauth = OAuth()
    tokens = TokenManager(store, oauth, clock, Revoked())  # type: ignore[arg-type]
    saved = await store.save_account("T1", "U1", XUser("1000", "me"), TokenSet("a0", "r0", clock.t + 60))
    account = await tokens.account(saved.id)
    assert account is not None
    assert await tokens.access_token(account) == "access-1"  # within the leeway: refreshed
    assert oauth.refreshed == ["r0"]
    current = await tokens.account(saved.id)
    assert current is not None and current.tokens == TokenSet("access-1", "refresh-1", 2_000_000.0)
    assert await tokens.access_token(current) == "access-1"
    assert oauth.refreshed == ["r0"]  # the single-use refresh token was spent once


async def test_a_refused_refresh_marks_the_copy_for_reconnection(store: SqliteStore) -> None:
    clock = Clock()
    oauth = OAuth()
    oauth.refuse = True
    revoked = Revoked()
    tokens = TokenManager(store, oauth, clock, revoked)  # type: ignore[arg-type]
    saved = await store.save_account("T1", "U1", XUser("1000", "me"), TokenSet("a0", "r0", clock.t))
    account = await tokens.account(saved.id)
    assert account is not None
    with pytest.raises(XAuthRevoked):
        await tokens.access_token(account)
    assert revoked.told == [saved.id]
    current = await tokens.account(saved.id)
    assert current is not None and current.needs_reconnect
    stored = await store.get_account(saved.id)
    assert stored is not None and stored.needs_reconnect


async def test_two_instances_on_one_store_spend_a_single_use_refresh_token_once() -> None:
    """Over the in-memory accounts role (tests/memory_accounts.py): two processes' managers, each
    with its own per-account lock, share one store, whose refresh lock makes the second wait and
    take the token the first got instead of spending the rotated refresh token again."""
    tables = MemoryTables()
    clock = Clock()
    oauth = SingleUse()
    saved = await MemoryAccounts(tables).save_account(
        "T1", "U1", XUser("1000", "me"), TokenSet("a0", "r0", clock.t)
    )
    managers = [TokenManager(MemoryAccounts(tables), oauth, clock, Revoked()) for _ in range(2)]  # type: ignore[arg-type]
    tokens = await asyncio.gather(*(m.access_token(saved) for m in managers for _ in range(2)))
    assert tokens == ["access-1"] * 4
    assert oauth.refreshed == ["r0"]
    stored = await MemoryAccounts(tables).get_account(saved.id)
    assert stored is not None and stored.tokens.refresh_token == "refresh-1" and not stored.needs_reconnect


class SingleUse(OAuth):
    """A refresh that lets others run while it waits for X, and refuses a spent refresh token."""

    async def refresh(self, refresh_token: str) -> TokenSet:
        await asyncio.sleep(0)  # X answering: another instance's refresh may start meanwhile
        if refresh_token in self.refreshed:
            raise XAuthRevoked("invalid_request: Value passed for the token was invalid.")
        return await super().refresh(refresh_token)
