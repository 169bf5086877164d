"""The relay role, written once over the ``Engine`` seam for both stores: what Slack hands the
bridge (a message, an edit, a delete) taken into the outbox, and what the relay asks about it.

The accept is the hot path before Slack's 200: on PostgreSQL it is one round trip to
``xdm_accept_v1`` (a server function created by migration 0024) that locks the channel's mapping,
inserts and announces the row; on SQLite a short transaction on the store's one thread. Several
PostgreSQL instances may share the database, so an edit or delete locks its channel's mapping row
and the rows it reads (``FOR UPDATE``); SQLite's transaction holds the one write lock anyway.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from adapters.store import rows
from adapters.store.engine import Dialect, Engine, SqliteEngine, Statements
from adapters.store.roles import StoreBase
from bridge.model import Accepted, IncomingMessage, OutboxKind


class RelayRole(StoreBase):
    """Slack's messages, edits and deletes into the outbox."""

    def _outbox_wake(self) -> tuple[str, str] | None:
        """The NOTIFY channel and payload that wake the leader's worker for new outbox rows, or
        None to announce nothing (PostgreSQL's host says; SQLite has one process, nobody to wake)."""
        return None

    async def accept_if_mapped(self, message: IncomingMessage, now: float) -> Accepted | None:
        """Look up the channel's mapping and commit in one transaction (the hot path before Slack's
        200). None when the channel is not mapped."""
        engine = self.engine
        if not isinstance(engine, SqliteEngine):
            return await self._accept_in_one_call(message, now)
        return await engine.at_once(lambda sql: _accept(sql, message, now))

    async def _accept_in_one_call(self, message: IncomingMessage, now: float) -> Accepted | None:
        # One round trip and one commit (``xdm_accept_v1``, migration 0024): the channel's lock,
        # then the insert, and the NOTIFY when the host announces. PostgreSQL's own placeholders,
        # as the statement is PostgreSQL's only: the engine has none to number on the hot path.
        wake = self._outbox_wake()
        found = await self.engine.fetchone(
            "SELECT a.busy_before, (a.item).* "
            "FROM xdm_accept_v1($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) AS a",
            message.team_id,
            message.channel_id,
            message.ts,
            message.user_id,
            rows.message_source(message),
            now,
            message.event_id,
            *(wake or ("", "")),
            wake is not None,
        )
        if found is None:
            return None
        if found["id"] is None:
            return Accepted(new=False)
        # Under the channel's lock nothing else accepts or finishes a row of this channel, so
        # "nothing unfinished before it" (read after the lock was taken) holds until commit.
        return Accepted(new=True, head=None if found["busy_before"] else rows.item(found))

    async def accept_edit(
        self, team_id: str, channel_id: str, ref_ts: str, edit_ts: str, source: dict[str, Any], now: float
    ) -> str:
        """An edit of a relayed message: "updated" when the original was not yet rendered (its text
        is simply replaced), "queued" when a correction row was added, "unknown" otherwise."""

        async def work(tx: Engine) -> str:
            await _lock_channel(tx, team_id, channel_id)
            original = await tx.fetchone(
                "SELECT * FROM outbox WHERE team_id = ? AND channel_id = ? AND slack_ts = ? AND part = 0 "
                f"AND kind = 'message'{_for_update(tx)}",
                team_id,
                channel_id,
                ref_ts,
            )
            if original is None:
                return "unknown"
            # A held part is judged by the state it had (``held_state``).
            parts = await tx.fetch(
                "SELECT COALESCE(held_state, state) AS state FROM outbox WHERE team_id = ? "
                "AND channel_id = ? AND slack_ts = ? AND kind = 'message'",
                team_id,
                channel_id,
                ref_ts,
            )
            if original["deleted_at"] is None and all(p["state"] in ("queued", "waiting") for p in parts):
                # Nothing of it was handed to X: the new text replaces the old, rendered or not.
                # The row is rendered again from the new source (its further parts with it).
                merged = {**json.loads(original["source"] or "{}"), **source}
                await tx.execute(
                    "DELETE FROM outbox WHERE team_id = ? AND channel_id = ? AND slack_ts = ? "
                    "AND kind = 'message' AND part > 0",
                    team_id,
                    channel_id,
                    ref_ts,
                )
                await tx.execute(
                    "UPDATE outbox SET source = ?, text = NULL, chat = NULL, media = NULL, "
                    "media_id = NULL, media_uploaded_at = NULL, parts_total = 1 WHERE id = ?",
                    json.dumps(merged),
                    original["id"],
                )
                return "updated"
            inserted = await self._insert_follow_up(tx, original, OutboxKind.EDIT, edit_ts, source, now)
            return "queued" if inserted else "unknown"

        return await self.engine.atomic(work)

    async def accept_delete(
        self, team_id: str, channel_id: str, ref_ts: str, delete_ts: str, now: float
    ) -> str:
        """A Slack delete: "cancelled" when nothing had reached X yet, "queued" when a delete row
        was added for the DMs X has, "unknown" when the message was never relayed."""

        async def work(tx: Engine) -> str:
            await _lock_channel(tx, team_id, channel_id)
            found = await tx.fetch(
                "SELECT * FROM outbox WHERE team_id = ? AND channel_id = ? AND ref_ts = ? "
                f"AND kind IN ('message', 'edit') ORDER BY seq, part{_for_update(tx)}",
                team_id,
                channel_id,
                ref_ts,
            )
            if not found:
                return "unknown"
            # Parts not yet handed to X are simply not sent (only the message's own parts and
            # corrections: a delete row queued by an earlier copy of this event must stay). A held
            # row is judged by the state it had (``held_state``).
            await tx.execute(
                "UPDATE outbox SET state = 'cancelled', held_for = NULL, held_state = NULL, "
                "last_error = 'deleted in Slack before it was sent' "
                "WHERE team_id = ? AND channel_id = ? AND ref_ts = ? AND kind IN ('message', 'edit') "
                "AND COALESCE(held_state, state) IN ('queued', 'waiting')",
                team_id,
                channel_id,
                ref_ts,
            )
            # A part caught mid-send may or may not be on X: it is read back, never sent again.
            await tx.execute(
                "UPDATE outbox SET deleted_at = ? "
                "WHERE team_id = ? AND channel_id = ? AND ref_ts = ? "
                "AND COALESCE(held_state, state) = 'sending'",
                now,
                team_id,
                channel_id,
                ref_ts,
            )
            if not any((r["held_state"] or r["state"]) in ("sent", "sending") for r in found):
                return "cancelled"
            inserted = await self._insert_follow_up(tx, found[0], OutboxKind.DELETE, delete_ts, {}, now)
            return "queued" if inserted else "unknown"

        return await self.engine.atomic(work)

    async def _insert_follow_up(
        self,
        tx: Engine,
        original: dict[str, Any],
        kind: OutboxKind,
        key_ts: str,
        source: dict[str, Any],
        now: float,
    ) -> bool:
        """A correction or delete row behind the message's own, to the same target; announced."""
        held_for = None
        if original["target_conversation"] and not original["target_participant"]:
            # Into a conversation held for another X account (the original, or the channel, is):
            # the correction or delete waits for that account, as the original does.
            held_for = original["held_for"]
            if not held_for:
                mapping = await tx.fetchone(
                    "SELECT held_for FROM mappings WHERE team_id = ? AND channel_id = ?",
                    original["team_id"],
                    original["channel_id"],
                )
                held_for = mapping["held_for"] if mapping else None
        if tx.dialect is Dialect.POSTGRES:
            # The id drawn first, so the row's place (seq) is its id in the same statement.
            first, ids, origin = (
                "WITH n AS (SELECT nextval(pg_get_serial_sequence('outbox', 'id')) AS id) ",
                "n.id, n.id",
                " FROM n",
            )
        else:
            first, ids, origin = "", "NULL, 0", ""  # seq set to the id just below
        row = await tx.fetchone(
            f"""
            {first}INSERT INTO outbox (id, seq, part, parts_total, team_id, channel_id, slack_ts, ref_ts,
                                author_id, account_id, target_participant, target_conversation,
                                target_group, text, source, state, attempts, next_attempt_at, created_at,
                                hourglass, kind, held_for, held_state)
            SELECT {ids}, 0, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, 0, 0, ?, 0, ?, ?, ?{origin} WHERE true
            ON CONFLICT DO NOTHING
            RETURNING id
            """,
            original["team_id"],
            original["channel_id"],
            f"{key_ts}:{kind.value}",
            original["ref_ts"] or original["slack_ts"],
            original["author_id"],
            original["account_id"],
            original["target_participant"],
            # One target only: a 1-to-1 row is addressed by its participant.
            None if original["target_participant"] else original["target_conversation"],
            original["target_group"],
            json.dumps(source, separators=(",", ":")),
            "held" if held_for else "queued",
            now,
            kind.value,
            held_for or None,
            "queued" if held_for else None,
        )
        if row is None:
            return False
        if tx.dialect is Dialect.SQLITE:
            await tx.execute("UPDATE outbox SET seq = id WHERE id = ?", row["id"])
        wake = self._outbox_wake()
        if wake is not None:  # PostgreSQL: delivered to the listeners when this transaction commits
            await tx.execute("SELECT pg_notify(?, ?)", *wake)
        return True

    async def relayed_events(self, team_id: str, channel_id: str, ref_ts: str) -> list[str | None]:
        """X's dm_event ids for every part (and correction) relayed for a Slack message; None for
        one X took without naming it (recorded sent without an id)."""
        found = await self.engine.fetch(
            "SELECT dm_event_id FROM outbox WHERE team_id = ? AND channel_id = ? AND ref_ts = ? "
            "AND kind IN ('message', 'edit') AND state = 'sent' "
            "ORDER BY seq, part",
            team_id,
            channel_id,
            ref_ts,
        )
        return [r["dm_event_id"] for r in found]

    async def message_text(self, team_id: str, channel_id: str, ts: str) -> str | None:
        """The text of a message in the channel: one we accepted from Slack, or one we posted from
        X (found through the channel's message map). Thread replies quote their parent."""
        row = await self.engine.fetchone(
            "SELECT source FROM outbox WHERE team_id = ? AND channel_id = ? AND slack_ts = ? AND part = 0",
            team_id,
            channel_id,
            ts,
        )
        if row is None:
            row = await self.engine.fetchone(
                "SELECT i.payload AS source FROM message_map AS m JOIN inbound AS i "
                "ON i.dm_event_id = m.dm_event_id AND i.team_id = m.team_id "
                "AND i.channel_id = m.channel_id WHERE m.team_id = ? AND m.channel_id = ? "
                "AND m.slack_ts = ? AND m.part = 0",
                team_id,
                channel_id,
                ts,
            )
        if row is None:
            return None
        text = json.loads(row["source"] or "{}").get("text")
        return str(text) if text else None

    async def known_event_ids(self, event_ids: Sequence[str]) -> set[str]:
        """Which of X's event ids the bridge itself sent (its message map)."""
        if not event_ids:
            return set()
        marks = ", ".join("?" * len(event_ids))
        found = await self.engine.fetch(
            f"SELECT dm_event_id FROM message_map WHERE dm_event_id IN ({marks})", *event_ids
        )
        return {r["dm_event_id"] for r in found}


def _accept(sql: Statements, message: IncomingMessage, now: float) -> Accepted | None:
    """SQLite's accept (as ``xdm_accept_v1``), in one hop to the store's thread."""
    found = sql.fetchone(
        # A channel with nothing unfinished before this message has it as its head (the
        # transaction holds the one write lock: nothing changes before the insert).
        "SELECT m.*, EXISTS (SELECT 1 FROM pending_channels WHERE team_id = m.team_id "
        "AND channel_id = m.channel_id) AS busy_before "
        "FROM mappings AS m WHERE m.team_id = ? AND m.channel_id = ?",
        message.team_id,
        message.channel_id,
    )
    if found is None:
        return None
    if message.event_id is not None:
        seen = sql.execute(
            "INSERT INTO seen_events (event_id, seen_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
            message.event_id,
            now,
        )
        if seen == 0:
            return Accepted(new=False)
    channel = rows.mapping(found)
    target, held_for = channel.target, channel.held_for
    inserted = sql.fetchone(
        """
        INSERT INTO outbox (seq, part, parts_total, team_id, channel_id, slack_ts, ref_ts, author_id,
                            account_id, target_participant, target_conversation, target_group,
                            text, source, state, attempts, next_attempt_at, created_at,
                            hourglass, kind, held_for, held_state)
        VALUES (0, 0, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, 0, 0, ?, 0, 'message', ?, ?)
        ON CONFLICT DO NOTHING
        RETURNING id
        """,
        message.team_id,
        message.channel_id,
        message.ts,
        message.ts,
        message.user_id,
        channel.account_id,
        target.participant_id,
        target.conversation_id,
        None if target.new_group is None else json.dumps(list(target.new_group)),
        rows.message_source(message),
        # Posted in a channel held for another X account: it waits for that account.
        "held" if held_for else "queued",
        now,
        held_for,
        "queued" if held_for else None,
    )
    if inserted is None:
        return Accepted(new=False)
    row = sql.fetchone("UPDATE outbox SET seq = id WHERE id = ? RETURNING *", inserted["id"])
    assert row is not None
    return Accepted(new=True, head=None if found["busy_before"] else rows.item(row))


async def _lock_channel(tx: Engine, team_id: str, channel_id: str) -> None:
    """PostgreSQL: the channel's mapping row, locked until commit (serialises a channel's accepts,
    edits, deletes and sends across instances). Its own statement: what follows must read the
    database as it is once the lock is held. SQLite's transaction already holds the write lock."""
    if tx.dialect is Dialect.POSTGRES:
        await tx.fetchone(
            "SELECT 1 FROM mappings WHERE team_id = ? AND channel_id = ? FOR NO KEY UPDATE",
            team_id,
            channel_id,
        )


def _for_update(tx: Engine) -> str:
    """Row locks for the rows an edit or delete reads (PostgreSQL; SQLite has no row locks)."""
    return " FOR UPDATE" if tx.dialect is Dialect.POSTGRES else ""
