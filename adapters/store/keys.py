"""Checking ``BRIDGE_ENCRYPTION_KEY`` against the stored secrets, and rotating them to the newest key.

A key that cannot open what is stored must stop ``migrate`` (the release phase, so a
bad deploy never goes live) and ``serve``: otherwise the bridge starts, reports healthy,
and every send and `/xdm status` fails. One SQL for both engines, over the ``Engine`` seam,
for the CLI (its own process, before any server work starts).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from adapters.store.crypto import TokenCipher
from adapters.store.engine import Engine
from adapters.store.operator import table_exists

# (table, key column, secret columns, which rows still matter)
SECRETS = (
    ("accounts", "id", ("access_token", "refresh_token"), "1 = 1"),
    ("oauth_states", "state", ("code_verifier",), "used = 0 AND expires_at > ?"),
    ("xchat_identities", "x_user_id", ("private_keys",), "1 = 1"),
    # Tokens waiting for the Slack user's click, expired ones too: the sweep must still open them
    # to give X's grant back.
    ("pending_connections", "id", ("access_token", "refresh_token"), "1 = 1"),
    # "Add to Slack" installs: each workspace's bot token (and refresh token, with rotation).
    ("slack_installations", "install_id", ("bot_token", "bot_refresh_token"), "1 = 1"),
)


@dataclass(frozen=True)
class KeyCheck:
    """How many stored secrets the configured keys open."""

    total: int
    unreadable: int

    def problem(self) -> str | None:
        """One line naming the variable and what to do, or None when every secret opens."""
        if not self.unreadable:
            return None
        return (
            f"BRIDGE_ENCRYPTION_KEY cannot decrypt {self.unreadable} of the {self.total} secrets stored in "
            "the database: it lacks the key they were encrypted with. Put that key back (newest first: "
            "BRIDGE_ENCRYPTION_KEY=new,old) and run `xdm-bridge rotate-keys` before dropping it."
        )


async def _ciphertexts(engine: Engine, now: float) -> list[tuple[str, str, str, object, str]]:
    found: list[tuple[str, str, str, object, str]] = []
    for table, key, columns, live in SECRETS:
        if not await table_exists(engine, table):
            continue
        for column in columns:
            sql = (
                f"SELECT {key} AS k, {column} AS c FROM {table} "
                f"WHERE {live} AND {column} IS NOT NULL AND {column} != ''"
            )
            params = [now] * live.count("?")
            found.extend((table, key, column, row["k"], row["c"]) for row in await engine.fetch(sql, *params))
    return found


async def check_keys(engine: Engine, cipher: TokenCipher | None, now: float | None = None) -> KeyCheck:
    """Try every live stored secret with the configured keys (``None``: only count them)."""
    secrets = await _ciphertexts(engine, time.time() if now is None else now)
    if cipher is None:
        return KeyCheck(total=len(secrets), unreadable=0)
    return KeyCheck(total=len(secrets), unreadable=sum(not cipher.opens(c) for *_, c in secrets))


async def rotate_keys(engine: Engine, cipher: TokenCipher, now: float | None = None) -> int:
    """Re-encrypt every stored secret under the newest key, in one transaction; returns how many.

    Used and expired OAuth states are deleted first (nothing reads them). Raises
    ``ValueError`` (the ``KeyCheck`` problem) without changing anything when a secret
    cannot be opened.
    """
    now = time.time() if now is None else now
    async with engine.transaction() as tx:
        if await table_exists(tx, "oauth_states"):
            await tx.execute("DELETE FROM oauth_states WHERE used = 1 OR expires_at <= ?", now)
        secrets = await _ciphertexts(tx, now)
        unreadable = sum(not cipher.opens(c) for *_, c in secrets)
        if unreadable:
            raise ValueError(KeyCheck(len(secrets), unreadable).problem())
        for table, key, column, row_key, ciphertext in secrets:
            # Only while it still holds what was read: a running bridge may save a new token
            # meanwhile (a refresh, under its own newest key), and that one must not be lost.
            await tx.execute(
                f"UPDATE {table} SET {column} = ? WHERE {key} = ? AND {column} = ?",
                cipher.rotate(ciphertext),
                row_key,
                ciphertext,
            )
    return len(secrets)
