"""Token refreshes under the store's refresh lock: across instances on PostgreSQL X sees one refresh,
and on both stores what a refresh saved stays saved."""

from __future__ import annotations

import asyncio

import pytest

from adapters.store.crypto import TokenCipher, generate_key
from adapters.store.postgres import PostgresStore
from bridge.errors import XAuthRevoked
from bridge.model import Account, TokenSet, XUser
from bridge.tokens import TokenManager
from tests.contract.conftest import AnyEngine


class Clock:
    def now(self) -> float:
        return 1_000_000.0


class SingleUseRefresh:
    """X's token endpoint as a port: each refresh token works once (X rotates them), slowly."""

    def __init__(self) -> None:
        self.spent: set[str] = set()
        self.calls = 0

    async def refresh(self, refresh_token: str) -> TokenSet:
        self.calls += 1
        await asyncio.sleep(0.05)  # the window in which a second instance could race
        if refresh_token in self.spent:
            raise XAuthRevoked("invalid_request: Value passed for the token was invalid.")
        self.spent.add(refresh_token)
        n = len(self.spent)
        return TokenSet(f"access-{n}", f"refresh-{n}", 2_000_000.0)


async def test_two_instances_refreshing_at_once_spend_the_refresh_token_once(pg_url: str) -> None:
    key = generate_key()
    stores = [PostgresStore(pg_url, TokenCipher([key])) for _ in range(2)]
    for store in stores:
        await store.open()
    try:
        expired = TokenSet("access-0", "refresh-0", 1_000_000.0 - 10)  # needs a refresh
        account = await stores[0].save_account("T1", "U1", XUser("1000", "me"), expired)
        x = SingleUseRefresh()
        revoked: list[int] = []

        async def told(acc: Account, reason: str) -> None:
            revoked.append(acc.id)

        managers = [TokenManager(store, x, Clock(), told) for store in stores]  # type: ignore[arg-type]
        tokens = await asyncio.gather(*(m.access_token(account) for m in managers for _ in range(3)))
        assert set(tokens) == {"access-1"}
        assert x.calls == 1 and revoked == []
        saved = await stores[1].get_account(account.id)
        assert saved is not None and not saved.needs_reconnect
        assert saved.tokens.refresh_token == "refresh-1"
    finally:
        for store in stores:
            await store.close()


async def test_what_a_refresh_wrote_is_kept_when_its_block_then_fails(engine_or_memory: AnyEngine) -> None:
    """X has rotated the refresh token once the new pair is saved: nothing after may undo that."""
    store = engine_or_memory.store()
    await store.open()
    try:
        account = await store.save_account("T1", "U1", XUser("1000", "me"), TokenSet("a0", "r0", 5.0))
        with pytest.raises(RuntimeError):
            async with store.refresh_lock(account.id) as row:
                await row.save_tokens(TokenSet("a1", "r1", 9.0))
                raise RuntimeError("after the save")
        async with store.refresh_lock(account.id) as row:  # released, too
            current = await row.read()
            assert current is not None and current.tokens.refresh_token == "r1"
            await row.flag_reconnect()
        saved = await store.get_account(account.id)
        assert saved is not None and saved.needs_reconnect and saved.tokens.access_token == "a1"
    finally:
        await store.close()
