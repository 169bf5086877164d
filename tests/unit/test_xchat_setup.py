"""``xchat setup`` and ``import`` in the core: keys saved first, registered once, never twice.

The crypto is X's real ``chat_xdk`` (cheap, and what the fingerprint must come from); X's key
directory and the identity store are in-memory fakes (tests/fakes_xchat.py) held to the same
contract as the real store (tests/contract/test_xchat_store.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from adapters.x.xchat import ChatKeys
from bridge.errors import XRateLimited, XTransient
from bridge.model import Account, TokenSet
from bridge.xchat import (
    IdentityState,
    KeysDoNotMatch,
    KeysElsewhere,
    RegisteredKey,
    RegistrationDeferred,
    XChatError,
    XChatSetup,
)
from tests.fakes_xchat import FakeDirectory, MemoryIdentities

ACCOUNT = Account(
    id=1,
    team_id="T1",
    slack_user_id="U1",
    x_user_id="1000",
    x_username="support",
    tokens=TokenSet("access", "refresh", None, "dm.read dm.write"),
)


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0
        self.slept: list[float] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds

    async def wait(self, event: asyncio.Event, seconds: float) -> bool:
        if not event.is_set():
            await self.sleep(seconds)
        return event.is_set()


def service(
    directory: FakeDirectory, identities: MemoryIdentities, clock: Clock, said: list[str] | None = None
) -> XChatSetup:
    async def on_token(account: Account, request: Any) -> Any:
        return await request("access")

    return XChatSetup(
        identities,
        ChatKeys(),
        directory,
        on_token,
        clock,
        say=(said if said is not None else []).append,
        sleep=clock.sleep,
    )


async def test_setup_saves_then_registers_and_a_second_run_asks_x_nothing() -> None:
    directory, identities, clock = FakeDirectory(), MemoryIdentities(), Clock()
    identity, changed = await service(directory, identities, clock).setup(ACCOUNT)
    assert changed and identity.state is IdentityState.REGISTERED
    assert identity.fingerprint == ChatKeys().fingerprint(identity.private_keys)  # the library's own
    assert [call[0] for call in directory.calls] == ["get", "post"]
    stored = await identities.identity("1000")
    assert (
        stored is not None and stored.version == identity.version and stored.state is IdentityState.REGISTERED
    )

    directory.calls.clear()
    again, changed = await service(directory, identities, clock).setup(ACCOUNT)
    assert not changed and again.fingerprint == identity.fingerprint
    assert directory.calls == []  # no registration request, not even a read


async def test_a_lost_answer_after_x_registered_is_adopted_not_registered_again() -> None:
    """X registered the keys, the answer never came: the next run finds them at X and keeps them."""
    directory, identities, clock = FakeDirectory(), MemoryIdentities(), Clock()
    directory.lose_next_answer = True
    with pytest.raises(XTransient):
        await service(directory, identities, clock).setup(ACCOUNT)
    saved = await identities.identity("1000")
    assert saved is not None and saved.state is IdentityState.SAVED  # saved before X was asked

    identity, _ = await service(directory, identities, clock).setup(ACCOUNT)
    assert identity.state is IdentityState.REGISTERED and identity.private_keys == saved.private_keys
    assert [c[0] for c in directory.calls].count("post") == 1
    assert len(directory.records["1000"]) == 1


async def test_a_crash_before_x_heard_registers_the_same_saved_keys() -> None:
    directory, identities, clock = FakeDirectory(), MemoryIdentities(), Clock()
    directory.fail_next_post = True  # refused before X acted (a 503)
    with pytest.raises(XTransient):
        await service(directory, identities, clock).setup(ACCOUNT)
    saved = await identities.identity("1000")
    assert saved is not None and directory.records.get("1000", []) == []

    identity, _ = await service(directory, identities, clock).setup(ACCOUNT)
    assert identity.public_key == saved.public_key and len(directory.records["1000"]) == 1


async def test_keys_registered_elsewhere_are_never_overwritten_by_a_second_identity() -> None:
    directory, identities, clock = FakeDirectory(), MemoryIdentities(), Clock()
    phone = ChatKeys().new_identity()
    directory.records["1000"] = [RegisteredKey("111", phone.public_key)]
    with pytest.raises(KeysElsewhere, match="xchat import @support"):
        await service(directory, identities, clock).setup(ACCOUNT)
    assert [c[0] for c in directory.calls] == ["get"]


async def test_a_spent_registration_window_is_waited_out_and_said() -> None:
    directory, identities, clock = FakeDirectory(), MemoryIdentities(), Clock()
    directory.rate_limited_until = clock.t + 90
    said: list[str] = []
    identity, _ = await service(directory, identities, clock, said).setup(ACCOUNT)
    assert identity.state is IdentityState.REGISTERED
    assert clock.slept == [90] and "waiting 1 min 30 s" in said[0]
    assert len(directory.records["1000"]) == 1  # one identity, registered once


async def test_a_window_hours_away_defers_with_the_keys_kept() -> None:
    directory, identities, clock = FakeDirectory(), MemoryIdentities(), Clock()
    directory.rate_limited_until = clock.t + 5 * 3600
    with pytest.raises(RegistrationDeferred, match="5 h 0 min"):
        await service(directory, identities, clock).setup(ACCOUNT)
    saved = await identities.identity("1000")
    assert saved is not None and saved.state is IdentityState.SAVED and clock.slept == []

    directory.rate_limited_until = None
    identity, _ = await service(directory, identities, clock).setup(ACCOUNT)
    assert identity.public_key == saved.public_key


async def test_import_keeps_keys_x_has_under_that_version_and_refuses_others() -> None:
    directory, identities, clock = FakeDirectory(), MemoryIdentities(), Clock()
    made = ChatKeys().new_identity()
    directory.records["1000"] = [RegisteredKey("777", made.public_key)]

    with pytest.raises(KeysDoNotMatch, match="registered versions: 777"):
        await service(directory, identities, clock).import_keys(ACCOUNT, made.private_keys, "778")
    other = ChatKeys().new_identity()
    with pytest.raises(KeysDoNotMatch):
        await service(directory, identities, clock).import_keys(ACCOUNT, other.private_keys, "777")
    with pytest.raises(XChatError, match="not X Chat keys"):
        await service(directory, identities, clock).import_keys(ACCOUNT, b"short", "777")
    assert await identities.identity("1000") is None  # nothing kept from a refused import

    identity = await service(directory, identities, clock).import_keys(ACCOUNT, made.private_keys, "777")
    assert identity.state is IdentityState.REGISTERED and identity.version == "777"
    assert identity.fingerprint == made.fingerprint
    assert not any(call[0] == "post" for call in directory.calls)


async def test_rate_limited_reads_are_not_mistaken_for_no_keys() -> None:
    directory, identities, clock = FakeDirectory(), MemoryIdentities(), Clock()
    directory.fail_reads = XRateLimited("slow down", reset_at=clock.t + 60)
    with pytest.raises(XRateLimited):
        await service(directory, identities, clock).setup(ACCOUNT)
    assert not any(call[0] == "post" for call in directory.calls)
