"""A wrong BRIDGE_ENCRYPTION_KEY stops migrate and serve in one line; rotate-keys lets a key go."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adapters.store.crypto import TokenCipher, generate_key
from adapters.store.sqlite import SqliteStore
from adapters.store.xchat import XChatIdentityStore
from adapters.x.xchat import ChatKeys
from bridge.model import OAuthState, PendingConnection, TokenSet, XUser
from tests.harness import bridge_env, free_port

ROOT = Path(__file__).resolve().parents[2]


XCHAT_KEYS = ChatKeys().new_identity()


async def stored_secrets(db_path: Path, key: str) -> None:
    """An account (access + refresh token), a live OAuth state, X Chat keys and a connection waiting
    for its Slack click (access + refresh token), encrypted with ``key``."""
    store = SqliteStore(str(db_path), TokenCipher([key]))
    await store.open()
    try:
        await store.save_account("T1", "U1", XUser("1000", "me"), TokenSet("access-1", "refresh-1", None))
        await store.save_account("T1", "U2", XUser("1001", "you"), TokenSet("access-2", None, None))
        await store.save_oauth_state(OAuthState("st", "verifier", "T1", "U3", "C1", None, time.time() + 600))
        await XChatIdentityStore(store.engine, TokenCipher([key])).save_identity("1000", XCHAT_KEYS, 1.0)
        pending = PendingConnection(
            "p1",
            "T1",
            "U4",
            "C1",
            None,
            XUser("1002", "them"),
            TokenSet("access-3", "refresh-3", None),
            time.time() + 300,
        )
        await store.save_pending_connection(pending)
    finally:
        await store.close()


def xdm_bridge(db_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {
        **os.environ,
        **bridge_env(db_path, "http://127.0.0.1:9", "http://127.0.0.1:9/api/", free_port()),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        env=full,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.process
async def test_wrong_key_stops_migrate_and_serve_with_one_line(tmp_path: Path) -> None:
    db_path = tmp_path / "bridge.db"
    await stored_secrets(db_path, generate_key())
    wrong = generate_key()
    for command in (["migrate"], ["serve", "--host", "127.0.0.1"]):
        result = xdm_bridge(db_path, *command, BRIDGE_ENCRYPTION_KEY=wrong)
        assert result.returncode == 2, (command, result.stderr)
        line = one_line(result)
        assert "BRIDGE_ENCRYPTION_KEY cannot decrypt 7 of the 7 secrets" in line, line
        assert "rotate-keys" in line and wrong not in line


@pytest.mark.process
async def test_migrate_of_a_fresh_database_needs_no_key(tmp_path: Path) -> None:
    result = xdm_bridge(tmp_path / "new.db", "migrate", BRIDGE_ENCRYPTION_KEY="")
    assert result.returncode == 0, result.stderr


@pytest.mark.process
async def test_rotate_keys_then_drop_the_old_key(tmp_path: Path) -> None:
    db_path = tmp_path / "bridge.db"
    old, new = generate_key(), generate_key()
    await stored_secrets(db_path, old)
    with sqlite3.connect(db_path) as db:
        db.execute(
            "INSERT INTO oauth_states (state, code_verifier, team_id, slack_user_id, expires_at, used) "
            "VALUES ('spent', 'not-even-fernet', 'T1', 'U9', 0, 1)"
        )

    # Only the new key: refused, nothing changed.
    result = xdm_bridge(db_path, "rotate-keys", BRIDGE_ENCRYPTION_KEY=new)
    assert result.returncode == 1 and "nothing changed" in result.stderr

    result = xdm_bridge(db_path, "rotate-keys", BRIDGE_ENCRYPTION_KEY=f"{new},{old}")
    assert result.returncode == 0, result.stderr
    assert "re-encrypted 7 stored secret(s)" in result.stdout and "can now be removed" in result.stdout

    assert xdm_bridge(db_path, "migrate", BRIDGE_ENCRYPTION_KEY=new).returncode == 0
    assert xdm_bridge(db_path, "migrate", BRIDGE_ENCRYPTION_KEY=old).returncode == 2
    store = SqliteStore(str(db_path), TokenCipher([new]))
    await store.open()
    try:
        account = await store.account_for_user("T1", "U1")
        assert account is not None and account.tokens.access_token == "access-1"
        assert account.tokens.refresh_token == "refresh-1"
        state = await store.get_oauth_state("st", time.time())
        assert state is not None and state.code_verifier == "verifier"
        identity = await XChatIdentityStore(store.engine, TokenCipher([new])).identity("1000")
        assert identity is not None and identity.private_keys == XCHAT_KEYS.private_keys
        # A connection waiting for its click when the key was rotated: its tokens open with the new
        # key (left under the old one, it could be neither bound nor revoked at X, and whoever
        # held the old key, often the reason to rotate, could read its refresh token).
        waiting = await store.get_pending_connection("p1", time.time())
        assert waiting is not None and waiting.tokens.refresh_token == "refresh-3"
    finally:
        await store.close()
