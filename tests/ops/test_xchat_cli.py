"""`xdm-bridge xchat …` against the X simulator, while the bridge serves on the same database."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from adapters.store.crypto import TokenCipher
from adapters.store.sqlite import SqliteStore
from adapters.store.xchat import XChatIdentityStore
from adapters.x.xchat import ChatKeys
from tests.harness import ALICE, ME, Bridge, bridge_env, running_bridge
from tests.ops.support import run


def operator_env(bridge: Bridge, monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator's shell: the same settings (and key) as the running bridge."""
    env = bridge_env(bridge.db_path, bridge.x_url, f"{bridge.slack_url}/api/", 9)
    env["BRIDGE_ENCRYPTION_KEY"] = ",".join(bridge.settings.encryption_keys)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


async def xdm_bridge(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    # In a thread: the command runs its own event loop, as from a shell, beside this test's servers.
    return await asyncio.to_thread(run, capsys, *argv)


def registrations(bridge: Bridge) -> int:
    return sum(1 for r in bridge.x.all_requests if r.method == "POST" and r.path.endswith("/public_keys"))


async def test_setup_registers_once_prints_the_librarys_fingerprint_and_keeps_the_keys_encrypted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        operator_env(bridge, monkeypatch)

        code, out = await xdm_bridge(capsys, "xchat", "setup", "@bridge_owner")
        assert code == 0, out
        assert "registered with X" in out and registrations(bridge) == 1
        [record] = bridge.x.public_keys[ME]
        store = SqliteStore(str(bridge.db_path), TokenCipher(bridge.settings.encryption_keys))
        await store.open()
        try:
            held = await XChatIdentityStore(
                store.engine, TokenCipher(bridge.settings.encryption_keys)
            ).identity(ME)
        finally:
            await store.close()
        assert held is not None and held.version == record["public_key_version"]
        assert ChatKeys().matches(held.private_keys, record["public_key"])
        assert f"fingerprint: {ChatKeys().fingerprint(held.private_keys)}" in out
        assert held.private_keys.hex() not in out

        code, out = await xdm_bridge(capsys, "xchat", "setup", "bridge_owner")
        assert code == 0 and "already set up" in out
        assert registrations(bridge) == 1  # a second setup makes no registration request

        code, out = await xdm_bridge(capsys, "xchat", "status")
        assert code == 0 and f"@bridge_owner ({ME}): registered, version {held.version}" in out

        code, out = await xdm_bridge(capsys, "xchat", "forget", "@bridge_owner")
        assert code == 0 and "deleted" in out
        code, out = await xdm_bridge(capsys, "xchat", "status", "--json")
        assert code == 0 and out.strip() == "[]"


async def test_setup_refuses_in_one_line_for_an_unknown_handle_or_keys_made_elsewhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        operator_env(bridge, monkeypatch)
        code, out = await xdm_bridge(capsys, "xchat", "setup", "@nobody")
        assert code == 2 and out.count("\n") == 1 and "@nobody is not connected" in out

        phone = ChatKeys().new_identity()
        bridge.x.register_keys(ME, phone.registration)
        code, out = await xdm_bridge(capsys, "xchat", "setup", "@bridge_owner")
        assert code == 1 and out.count("\n") == 1 and "already has X Chat keys registered" in out
        assert registrations(bridge) == 0

        keys = tmp_path / "phone.keys"
        keys.write_bytes(phone.private_keys)
        version = bridge.x.public_keys[ME][0]["public_key_version"]
        code, out = await xdm_bridge(
            capsys, "xchat", "import", "@bridge_owner", "--keys", str(keys), "--version", version
        )
        assert code == 0 and f"fingerprint: {phone.fingerprint}" in out
        assert registrations(bridge) == 0


async def test_a_spent_registration_window_is_said_and_no_second_identity_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        operator_env(bridge, monkeypatch)
        bridge.x.key_registrations_per_day = 0  # spent: X names a reset a day away
        code, out = await xdm_bridge(capsys, "xchat", "setup", "@bridge_owner")
        assert code == 1 and "window opens again in 24 h" in out and "keys are saved" in out
        code, out = await xdm_bridge(capsys, "xchat", "status")
        assert "saved, version -" in out

        bridge.x.key_registrations_per_day = 3
        code, out = await xdm_bridge(capsys, "xchat", "setup", "@bridge_owner")
        assert code == 0
        assert len(bridge.x.public_keys[ME]) == 1


async def test_a_handle_two_connected_x_users_answer_to_registers_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Handles move on X: the team account @bridge_owner renamed, a person took the handle and
    connected too, and the bridge still knows both by it. `xchat setup @bridge_owner` picked the
    first row, and could make and register Chat keys for the person's account, not the team's."""
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect(user="U100", x_user=ME)
        await bridge.connect(user="U200", x_user=ALICE)
        await bridge.sql("UPDATE accounts SET x_username = 'bridge_owner'")  # as each was when connected
        operator_env(bridge, monkeypatch)

        code, out = await xdm_bridge(capsys, "xchat", "setup", "@bridge_owner")
        assert code == 2, out
        assert "2 X accounts" in out and ME in out and ALICE in out
        assert registrations(bridge) == 0
        assert await bridge.sql("SELECT COUNT(*) FROM xchat_identities") == [(0,)]
