"""The key nobody loses: ``keygen --save .env`` writes it once, every command reads ``.env``."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from adapters.store.crypto import generate_key
from tests.security.test_keys import stored_secrets

# Every test here runs `python -m bridge` as a real process.
pytestmark = pytest.mark.process


def xdm_bridge(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The command line as a person runs it in ``cwd``, with nothing of the bridge's in the environment."""
    ours = ("BRIDGE_", "DATABASE_", "SLACK_", "X_")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        env={**clean, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def key_in(path: Path) -> str:
    [line] = [line for line in path.read_text().splitlines() if line.startswith("BRIDGE_ENCRYPTION_KEY=")]
    return line.split("=", 1)[1]


async def test_keygen_save_writes_a_key_once_and_never_replaces_it(tmp_path: Path) -> None:
    first = xdm_bridge(tmp_path, "keygen", "--save", ".env")
    assert first.returncode == 0, first.stderr
    assert first.stdout == "" and "Keep a copy" in first.stderr  # the key is never echoed
    env_file = tmp_path / ".env"
    key = key_in(env_file)
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600

    again = xdm_bridge(tmp_path, "keygen", "--save", ".env")
    assert again.returncode == 0 and "kept it" in again.stderr
    assert key_in(env_file) == key


async def test_an_empty_key_line_from_env_example_is_filled_and_the_rest_kept(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("SLACK_SIGNING_SECRET=abc\nBRIDGE_ENCRYPTION_KEY=\nPORT=3001\n")
    assert xdm_bridge(tmp_path, "keygen", "--save", ".env").returncode == 0
    text = env_file.read_text()
    assert "SLACK_SIGNING_SECRET=abc" in text and "PORT=3001" in text
    assert len(key_in(env_file)) == 44


async def test_a_key_written_into_a_readable_env_makes_it_private(tmp_path: Path) -> None:
    """``cp .env.example .env`` (umask 022: readable by every local user), then ``keygen --save
    .env``: the key that decrypts every stored token and X Chat key landed in a world-readable
    file, beside a database file that is world-readable too."""
    env_file = tmp_path / ".env"
    env_file.write_text("SLACK_SIGNING_SECRET=abc\nBRIDGE_ENCRYPTION_KEY=\n")
    env_file.chmod(0o644)
    assert xdm_bridge(tmp_path, "keygen", "--save", ".env").returncode == 0
    assert len(key_in(env_file)) == 44
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600


async def test_commands_read_the_key_from_env_twice_in_a_row(tmp_path: Path) -> None:
    """The README's sequence pasted twice: the second run opens what the first stored."""
    assert xdm_bridge(tmp_path, "keygen", "--save", ".env").returncode == 0
    env_file = tmp_path / ".env"
    with env_file.open("a") as out:
        out.write("DATABASE_PATH=bridge.db\n")
    await stored_secrets(tmp_path / "bridge.db", key_in(env_file))
    for _ in range(2):
        assert xdm_bridge(tmp_path, "keygen", "--save", ".env").returncode == 0
        migrated = xdm_bridge(tmp_path, "migrate")
        assert migrated.returncode == 0, migrated.stderr

    # The environment wins over the file, so a wrong key given there is what gets checked.
    wrong = xdm_bridge(tmp_path, "migrate", BRIDGE_ENCRYPTION_KEY=generate_key())
    assert wrong.returncode == 2 and "cannot decrypt" in wrong.stderr


async def test_an_empty_key_says_it_is_empty_and_why(tmp_path: Path) -> None:
    """`BRIDGE_ENCRYPTION_KEY=$(xdm-bridge keygen)` with xdm-bridge not on the PATH."""
    result = xdm_bridge(tmp_path, "serve", "--host", "127.0.0.1", BRIDGE_ENCRYPTION_KEY="", PORT="9")
    assert result.returncode == 2
    [line] = [line for line in result.stderr.splitlines() if "BRIDGE_ENCRYPTION_KEY" in line]
    assert "BRIDGE_ENCRYPTION_KEY is empty" in line and "PATH" in line
    assert "SLACK_SIGNING_SECRET is not set" in result.stderr  # never set: said as such


async def test_a_key_hidden_by_a_later_empty_line_is_never_replaced(tmp_path: Path) -> None:
    """``cat .env.example >> .env`` after an upgrade: a later empty ``BRIDGE_ENCRYPTION_KEY=``
    hides the key above it. ``keygen --save`` wrote a new key over both lines, and the key that
    opens the stored tokens was gone."""
    key = generate_key()
    env_file = tmp_path / ".env"
    env_file.write_text(f"BRIDGE_ENCRYPTION_KEY={key}\nPORT=3000\n# .env.example\nBRIDGE_ENCRYPTION_KEY=\n")
    result = xdm_bridge(tmp_path, "keygen", "--save", ".env")
    assert result.returncode != 0
    assert "more than once" in result.stderr and "Traceback" not in result.stderr
    assert env_file.read_text().splitlines()[0] == f"BRIDGE_ENCRYPTION_KEY={key}"


async def test_keygen_save_keeps_the_key_the_environment_already_uses(tmp_path: Path) -> None:
    """The old README had ``export BRIDGE_ENCRYPTION_KEY=$(xdm-bridge keygen)``; its tokens are
    stored under that key. ``keygen --save .env`` in that shell wrote a different, new key (and
    said to keep it safe); the environment hid it until the next shell, where nothing decrypted."""
    key = generate_key()
    await stored_secrets(tmp_path / "bridge.db", key)
    result = xdm_bridge(tmp_path, "keygen", "--save", ".env", BRIDGE_ENCRYPTION_KEY=key)
    assert result.returncode == 0, result.stderr
    assert key_in(tmp_path / ".env") == key
    with (tmp_path / ".env").open("a") as out:
        out.write("DATABASE_PATH=bridge.db\n")
    migrated = xdm_bridge(tmp_path, "migrate")  # a new shell: the key comes from .env alone
    assert migrated.returncode == 0, migrated.stderr
