"""X Chat identities (``bridge.xchat.XChatIdentities``): one SQL for both engines.

The private keys are Fernet-encrypted with ``BRIDGE_ENCRYPTION_KEY``, as the tokens are; nothing
else in the row is secret (the registration body is the public half X publishes anyway).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

from adapters.store.crypto import TokenCipher
from adapters.store.engine import Engine
from bridge.chat_inbound import ChatGap
from bridge.xchat import IdentityState, NewIdentity, PeerCheck, XChatIdentity

COLUMNS = (
    "x_user_id, private_keys, registration, public_key, fingerprint, version, state, detail, "
    "created_at, registered_at"
)


class XChatIdentityStore:
    """The ``xchat_identities`` and ``xchat_peers`` tables (``XChatIdentities`` and ``PeerChecks``)."""

    def __init__(self, engine: Engine, cipher: TokenCipher) -> None:
        self._engine = engine
        self._cipher = cipher

    async def identity(self, x_user_id: str) -> XChatIdentity | None:
        rows = await self._engine.fetch(
            f"SELECT {COLUMNS} FROM xchat_identities WHERE x_user_id = ?", x_user_id
        )
        return self._identity(rows[0]) if rows else None

    async def save_identity(self, x_user_id: str, new: NewIdentity, now: float) -> XChatIdentity:
        # ON CONFLICT DO NOTHING: two setups at once keep one identity, the first one saved.
        await self._engine.execute(
            "INSERT INTO xchat_identities (x_user_id, private_keys, registration, public_key, "
            "fingerprint, state, created_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (x_user_id) DO NOTHING",
            x_user_id,
            self._cipher.encrypt(base64.b64encode(new.private_keys).decode()),
            json.dumps(new.registration, sort_keys=True),
            new.public_key,
            new.fingerprint,
            IdentityState.SAVED.value,
            now,
        )
        kept = await self.identity(x_user_id)
        assert kept is not None  # just written, or there before
        return kept

    async def mark_registered(self, x_user_id: str, version: str, now: float) -> None:
        await self._engine.execute(
            "UPDATE xchat_identities SET state = ?, version = ?, detail = NULL, registered_at = ? "
            "WHERE x_user_id = ?",
            IdentityState.REGISTERED.value,
            version,
            now,
            x_user_id,
        )

    async def flag_mismatch(self, x_user_id: str, detail: str) -> bool:
        return (
            await self._engine.execute(
                "UPDATE xchat_identities SET state = ?, detail = ? WHERE x_user_id = ? AND state = ?",
                IdentityState.MISMATCH.value,
                detail,
                x_user_id,
                IdentityState.REGISTERED.value,
            )
            > 0
        )

    async def list_identities(self) -> list[XChatIdentity]:
        rows = await self._engine.fetch(f"SELECT {COLUMNS} FROM xchat_identities ORDER BY x_user_id")
        return [self._identity(row) for row in rows]

    async def forget_identity(self, x_user_id: str) -> bool:
        return await self._engine.execute("DELETE FROM xchat_identities WHERE x_user_id = ?", x_user_id) > 0

    async def peer_checks(self, x_user_ids: Sequence[str]) -> dict[str, PeerCheck]:
        if not x_user_ids:
            return {}
        marks = ", ".join("?" for _ in x_user_ids)
        rows = await self._engine.fetch(
            f"SELECT x_user_id, on_chat, checked_at FROM xchat_peers WHERE x_user_id IN ({marks})",
            *x_user_ids,
        )
        return {r["x_user_id"]: _peer_check(r) for r in rows}

    async def save_peer_check(self, check: PeerCheck) -> None:
        await self._engine.execute(
            "INSERT INTO xchat_peers (x_user_id, on_chat, checked_at) VALUES (?, ?, ?) "
            "ON CONFLICT (x_user_id) DO UPDATE SET on_chat = excluded.on_chat, "
            "checked_at = excluded.checked_at",
            check.x_user_id,
            int(check.on_chat),
            check.checked_at,
        )

    def _identity(self, row: dict[str, Any]) -> XChatIdentity:
        return XChatIdentity(
            x_user_id=row["x_user_id"],
            private_keys=base64.b64decode(self._cipher.decrypt(row["private_keys"])),
            registration=json.loads(row["registration"]),
            public_key=row["public_key"],
            fingerprint=row["fingerprint"],
            state=IdentityState(row["state"]),
            version=row["version"],
            detail=row["detail"],
            created_at=float(row["created_at"]),
            registered_at=None if row["registered_at"] is None else float(row["registered_at"]),
        )


def _peer_check(row: dict[str, Any]) -> PeerCheck:
    return PeerCheck(row["x_user_id"], bool(row["on_chat"]), float(row["checked_at"]))


class ChatCursorStore:
    """``bridge.chat_inbound.ChatCursors``: the ``xchat_cursors`` table, and where X's events
    were posted (the message map), one SQL for both engines."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def chat_cursor(self, account_id: int, conversation_id: str) -> str | None:
        rows = await self._engine.fetch(
            "SELECT newest_sequence_id FROM xchat_cursors WHERE account_id = ? AND conversation_id = ?",
            account_id,
            conversation_id,
        )
        return str(rows[0]["newest_sequence_id"]) if rows else None

    async def save_chat_cursor(
        self, account_id: int, conversation_id: str, sequence_id: str, now: float
    ) -> None:
        # Compared here, not in SQL (a 19-digit id is an INTEGER to SQLite, a BIGINT to
        # PostgreSQL): only the leader reads X, so nothing writes between the two statements.
        kept = await self.chat_cursor(account_id, conversation_id)
        if kept is not None and int(kept or 0) >= int(sequence_id or 0):
            return
        await self._engine.execute(
            "INSERT INTO xchat_cursors (account_id, conversation_id, newest_sequence_id, updated_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (account_id, conversation_id) DO UPDATE SET "
            "newest_sequence_id = excluded.newest_sequence_id, updated_at = excluded.updated_at",
            account_id,
            conversation_id,
            sequence_id,
            now,
        )

    async def chat_gap(self, account_id: int, conversation_id: str) -> ChatGap | None:
        rows = await self._engine.fetch(
            "SELECT gap_token, gap_newest, gap_restarts FROM xchat_cursors "
            "WHERE account_id = ? AND conversation_id = ? AND gap_newest IS NOT NULL",
            account_id,
            conversation_id,
        )
        if not rows:
            return None
        row = rows[0]
        token = None if row["gap_token"] is None else str(row["gap_token"])
        return ChatGap(token, str(row["gap_newest"]), int(row["gap_restarts"] or 0))

    async def save_chat_gap(self, account_id: int, conversation_id: str, gap: ChatGap, now: float) -> None:
        # A conversation never read before gets "0" as its cursor: read, and everything newer
        # is new (the read's bridging time still keeps out what came before the channel).
        await self._engine.execute(
            "INSERT INTO xchat_cursors (account_id, conversation_id, newest_sequence_id, updated_at, "
            "gap_token, gap_newest, gap_restarts) VALUES (?, ?, '0', ?, ?, ?, ?) "
            "ON CONFLICT (account_id, conversation_id) DO UPDATE SET updated_at = excluded.updated_at, "
            "gap_token = excluded.gap_token, gap_newest = excluded.gap_newest, "
            "gap_restarts = excluded.gap_restarts",
            account_id,
            conversation_id,
            now,
            gap.token,
            gap.newest,
            gap.restarts,
        )

    async def close_chat_gap(
        self, account_id: int, conversation_id: str, sequence_id: str, now: float
    ) -> None:
        # One statement: the cursor moves and the channels are let go together (a crash before
        # it reads on from the token again, and the rows' unique key keeps each event once).
        kept = await self.chat_cursor(account_id, conversation_id)
        newest = max(int(kept or 0), int(sequence_id or 0))
        await self._engine.execute(
            "UPDATE xchat_cursors SET newest_sequence_id = ?, updated_at = ?, gap_token = NULL, "
            "gap_newest = NULL, gap_restarts = 0 WHERE account_id = ? AND conversation_id = ?",
            str(newest),
            now,
            account_id,
            conversation_id,
        )

    async def posted_ts(self, team_id: str, channel_id: str, dm_event_id: str, author: str) -> str | None:
        # Only a message of ``author``'s, posted here from X: one whose inbound row names them as
        # its sender (a message sent from Slack, or one whose row is pruned, is nobody's to follow).
        rows = await self._engine.fetch(
            "SELECT m.slack_ts FROM message_map AS m WHERE m.dm_event_id = ? AND m.team_id = ? "
            "AND m.channel_id = ? AND EXISTS (SELECT 1 FROM inbound AS i WHERE i.dm_event_id = m.dm_event_id "
            "AND i.team_id = m.team_id AND i.channel_id = m.channel_id AND i.sender_id = ?) "
            "ORDER BY m.part LIMIT 1",
            dm_event_id,
            team_id,
            channel_id,
            author,
        )
        return str(rows[0]["slack_ts"]) if rows else None
