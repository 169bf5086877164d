"""The X Chat identity role: one SQL on both engines, and the in-memory fake, held to one contract."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from adapters.store.crypto import TokenCipher, generate_key
from adapters.store.xchat import XChatIdentityStore
from adapters.x.xchat import ChatKeys
from bridge.errors import ConfigError
from bridge.xchat import IdentityState, NewIdentity, PeerCheck, PeerChecks, XChatIdentities
from tests import pg
from tests.contract.conftest import Engine
from tests.fakes_xchat import MemoryIdentities, MemoryPeerChecks

KINDS = ("memory", "sqlite", "postgres")


@dataclass
class Held:
    identities: XChatIdentities
    engine: Engine | None  # None for the fake


@asynccontextmanager
async def database(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> AsyncIterator[Engine]:
    """An empty database of ``kind``, as the contract suite's ``engine`` fixture makes them."""
    if kind == "sqlite":
        yield Engine("sqlite", str(tmp_path / "store.db"), generate_key())
        return
    server = request.getfixturevalue("pg_server")
    url = await pg.create_database(server)
    try:
        yield Engine("postgres", url, generate_key())
    finally:
        await pg.drop_database(server, url)


@pytest.fixture(params=KINDS)
async def held(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Held]:
    if request.param == "memory":
        yield Held(MemoryIdentities(), None)
        return
    async with database(request, request.param, tmp_path) as engine:
        store = engine.store()
        await store.open()
        try:
            yield Held(XChatIdentityStore(store.engine, TokenCipher([engine.key])), engine)
        finally:
            await store.close()


def made() -> NewIdentity:
    return ChatKeys().new_identity()


async def test_saved_keys_read_back_whole_and_a_second_save_keeps_the_first(held: Held) -> None:
    first, second = made(), made()
    kept = await held.identities.save_identity("1000", first, 1_800_000_000.0)
    assert kept.state is IdentityState.SAVED and kept.version is None
    assert kept.private_keys == first.private_keys and kept.registration == first.registration
    assert kept.fingerprint == first.fingerprint and kept.created_at == 1_800_000_000.0

    again = await held.identities.save_identity("1000", second, 1_800_000_100.0)
    assert again.private_keys == first.private_keys  # never a second identity

    await held.identities.mark_registered("1000", "1796", 1_800_000_200.0)
    registered = await held.identities.identity("1000")
    assert registered is not None and registered.state is IdentityState.REGISTERED
    assert registered.version == "1796" and registered.registered_at == 1_800_000_200.0
    assert [i.x_user_id for i in await held.identities.list_identities()] == ["1000"]

    assert await held.identities.forget_identity("1000")
    assert not await held.identities.forget_identity("1000")
    assert await held.identities.identity("1000") is None


async def test_two_setups_at_once_keep_one_identity(held: Held) -> None:
    candidates = [made() for _ in range(4)]
    kept = await asyncio.gather(*(held.identities.save_identity("1000", c, 1.0) for c in candidates))
    assert len({k.private_keys for k in kept}) == 1
    assert kept[0].private_keys in {c.private_keys for c in candidates}


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_private_keys_are_never_on_disk_in_the_clear(
    request: pytest.FixtureRequest, kind: str, tmp_path: Path
) -> None:
    async with database(request, kind, tmp_path) as engine:
        await _check_private_keys_encrypted(engine)


async def _check_private_keys_encrypted(engine: Engine) -> None:
    store = engine.store()
    await store.open()
    try:
        new = made()
        await XChatIdentityStore(store.engine, TokenCipher([engine.key])).save_identity("1000", new, 1.0)
        [(stored,)] = await engine.sql("SELECT private_keys FROM xchat_identities")
        for form in (new.private_keys.hex(), base64.b64encode(new.private_keys).decode()):
            assert form not in stored
        other = XChatIdentityStore(store.engine, TokenCipher([generate_key()]))
        with pytest.raises(ConfigError, match="cannot be decrypted"):
            await other.identity("1000")
    finally:
        await store.close()


@pytest.fixture(params=KINDS)
async def checks(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[PeerChecks]:
    if request.param == "memory":
        yield MemoryPeerChecks()
        return
    async with database(request, request.param, tmp_path) as engine:
        store = engine.store()
        await store.open()
        try:
            yield XChatIdentityStore(store.engine, TokenCipher([engine.key]))
        finally:
            await store.close()


async def test_peer_checks_keep_the_last_answer_per_person(checks: PeerChecks) -> None:
    assert await checks.peer_checks([]) == {}
    await checks.save_peer_check(PeerCheck("2001", True, 100.0))
    await checks.save_peer_check(PeerCheck("2002", False, 100.0))
    await checks.save_peer_check(PeerCheck("2001", False, 200.0))  # they left Chat: the new answer wins
    assert await checks.peer_checks(["2001", "2002", "2003"]) == {
        "2001": PeerCheck("2001", False, 200.0),
        "2002": PeerCheck("2002", False, 100.0),
    }
    assert await checks.peer_checks(["2002"]) == {"2002": PeerCheck("2002", False, 100.0)}
