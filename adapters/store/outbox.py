"""The outbox role, written once over the ``Engine`` seam for both stores: Slack messages on their
way to X, from the delivery worker's side (heads, claims, sends, retries, failures) and the media
uploads they carry.

The hot path keeps PostgreSQL's one round trip per step: a claim (``mark_sending``) is one
statement, and a send (``mark_sent``) calls ``xdm_mark_sent_v1`` (a server function created by
migration 0024). On SQLite the same steps are a transaction of plain statements on the store's
thread; both branch on ``engine.dialect`` right where they differ.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from adapters.store import rows
from adapters.store.budgets import ON_CONFLICT, Window, latest, save_params, save_sql
from adapters.store.engine import Dialect, Engine, SqliteEngine, Statements, indexed_by, marks
from adapters.store.roles import StoreBase
from bridge.errors import Failure
from bridge.model import OutboxItem, OutboxState, RenderedPart, Sent, Unreadable
from migrations import PENDING_STATES

log = logging.getLogger(__name__)


# A send in doubt of the accounts given (``{accounts}``: their placeholders, used twice) in any
# channel they bridge to the conversation: by ``outbox_account_state``, the pending rows only.
_SENDS_IN_DOUBT = (
    "SELECT 1 AS x FROM outbox AS o WHERE o.account_id IN ({accounts}) AND o.state = 'sending' "
    "AND EXISTS (SELECT 1 FROM mappings AS m WHERE m.team_id = o.team_id AND m.channel_id = o.channel_id "
    "AND m.conversation_id = ? AND m.account_id IN ({accounts})) LIMIT 1"
)


class OutboxRole(StoreBase):
    """Slack messages on their way to X: the delivery worker's reads and writes."""

    async def outbox_heads(self) -> list[OutboxItem | Unreadable]:
        if self.engine.dialect is Dialect.POSTGRES:
            # A loose index scan: hop from channel to channel along outbox_pending, then take each
            # channel's first row; one probe per channel, whatever the backlog.
            sql = f"""
            WITH RECURSIVE channels (team_id, channel_id) AS (
                (SELECT team_id, channel_id FROM outbox WHERE state IN {PENDING_STATES}
                 ORDER BY team_id, channel_id LIMIT 1)
                UNION ALL
                SELECT next.team_id, next.channel_id FROM channels AS c, LATERAL (
                    SELECT team_id, channel_id FROM outbox
                    WHERE state IN {PENDING_STATES} AND (team_id, channel_id) > (c.team_id, c.channel_id)
                    ORDER BY team_id, channel_id LIMIT 1
                ) AS next
            )
            SELECT head.* FROM channels AS c, LATERAL (
                SELECT * FROM outbox
                WHERE team_id = c.team_id AND channel_id = c.channel_id AND state IN {PENDING_STATES}
                ORDER BY seq, part LIMIT 1
            ) AS head
            """
        else:
            # One index lookup per channel with unfinished rows (pending_channels, kept by SQLite
            # triggers), not a scan of the whole backlog.
            sql = f"""
            SELECT o.* FROM pending_channels AS p
            JOIN outbox AS o ON o.id = (
                SELECT id FROM outbox INDEXED BY outbox_pending
                WHERE team_id = p.team_id AND channel_id = p.channel_id AND state IN {PENDING_STATES}
                ORDER BY seq, part LIMIT 1
            )
            """
        # Row by row: one unreadable row is reported as such, and stops nobody else.
        return [rows.readable(row) for row in await self.engine.fetch(sql)]

    async def get_item(self, item_id: int) -> OutboxItem | None:
        return await _item(self.engine, item_id)

    async def render(self, item_id: int, parts: Sequence[RenderedPart]) -> OutboxItem:
        async def work(tx: Engine) -> OutboxItem:
            await _write_render(tx, item_id, parts)
            updated = await _item(tx, item_id)
            assert updated is not None
            return updated

        return await self.engine.atomic(work)

    async def mark_sending(
        self,
        item_id: int,
        now: float,
        budgets: Sequence[Window] = (),
        *,
        parts: Sequence[RenderedPart] | None = None,
        source: dict[str, Any] | None = None,
    ) -> OutboxItem | None:
        engine = self.engine
        if not isinstance(engine, SqliteEngine):
            return await self._claim_in_one_statement(item_id, now, budgets, parts, source)
        return await engine.at_once(lambda sql: _claim(sql, item_id, now, budgets, parts, source))

    async def _claim_in_one_statement(
        self,
        item_id: int,
        now: float,
        budgets: Sequence[Window],
        parts: Sequence[RenderedPart] | None,
        source: dict[str, Any] | None,
    ) -> OutboxItem | None:
        """PostgreSQL's claim: one statement (one round trip) that re-checks its conditions on the
        row as it is when locked, so a delete or an edit that landed since the row was read makes
        it claim nothing. Numbered placeholders (``$n``), since some are used twice."""
        if parts is None:
            render, extra = "", ""
            condition = " AND text IS NOT NULL"  # an edit reset its text since it was read: render again
        else:
            assert parts, "a message renders to at least one part"
            render = ", text = $8, media = $9, parts_total = $10"
            condition = " AND text IS NULL AND source::jsonb IS NOT DISTINCT FROM $7::jsonb"
            extra = f", extra AS ({_PG_FURTHER_PARTS})"
        args: list[Any] = [item_id, now, *_budget_arrays(budgets)]
        if parts is not None:
            args += [
                json.dumps(source),
                parts[0].text,
                rows.json_or_none(parts[0].media),
                len(parts),
                [p.text for p in parts[1:]],
                [rows.json_or_none(p.media) for p in parts[1:]],
            ]
        row = await self.engine.fetchone(
            f"""
            WITH claimed AS (
                UPDATE outbox SET state = 'sending', attempts = attempts + 1, sending_since = $2{render}
                WHERE id = $1 AND state IN {PENDING_STATES} AND deleted_at IS NULL{condition}
                RETURNING *
            ),
            budget AS ({_PG_SAVE_BUDGETS} WHERE EXISTS (SELECT 1 FROM claimed) {ON_CONFLICT}){extra}
            SELECT * FROM claimed
            """,
            *args,
        )
        return rows.item(row) if row else None

    async def mark_sent(
        self, item_id: int, sent: Sent, now: float, budgets: Sequence[Window] = ()
    ) -> OutboxItem | None:
        if self.engine.dialect is Dialect.POSTGRES:
            # One round trip and one commit (``xdm_mark_sent_v1``, migration 0024): the channel's
            # lock, the bookkeeping, and the channel's next row (PostgreSQL's own placeholders:
            # nothing for the engine to number on the hot path).
            following = await self.engine.fetchone(
                "SELECT * FROM xdm_mark_sent_v1($1, $2, $3, $4, $5, $6, $7, $8)",
                sent.dm_event_id,
                sent.dm_conversation_id,
                *_budget_arrays(budgets),
                now,
                item_id,
            )
            if following is not None and following["id"] is None:
                following = None  # the function's NULL row: the channel has nothing more
        else:
            assert isinstance(self.engine, SqliteEngine)
            following = await self.engine.at_once(lambda sql: _record_sent(sql, item_id, sent, now, budgets))
        head = None if following is None else rows.readable(following)
        # An unreadable head is left to the scheduler, which fails it (the send is recorded).
        return head if isinstance(head, OutboxItem) else None

    async def reschedule(
        self,
        item_id: int,
        state: OutboxState,
        next_attempt_at: float,
        error: str | None,
        *,
        held_since: float | None = None,
    ) -> None:
        # Only a row still pending: the caller's copy may predate a Slack delete that cancelled it,
        # and writing its state back would resurrect the message. And a row deleted in Slack
        # mid-send never goes back to a state that would send it: once X is known not to have it,
        # it is cancelled.
        await self.engine.execute(
            "UPDATE outbox SET state = CASE WHEN deleted_at IS NOT NULL AND ? IN ('queued', 'waiting') "
            "THEN 'cancelled' ELSE ? END, next_attempt_at = ?, last_error = ?, "
            f"held_since = COALESCE(held_since, ?) WHERE id = ? AND state IN {PENDING_STATES}",
            state.value,
            state.value,
            next_attempt_at,
            error,
            held_since,
            item_id,
        )

    async def mark_done(self, item_id: int, now: float) -> None:
        await self.engine.execute(
            "UPDATE outbox SET state = 'sent', sent_at = ?, last_error = NULL WHERE id = ?", now, item_id
        )

    async def mark_failed(self, item_id: int, error: str, failure: Failure = Failure.OTHER) -> None:
        # The author is still to be told, in the same commit: a process killed before the ⚠️ and
        # the ephemeral leaves the row for the next start to tell (``failures_to_tell``).
        await self.engine.execute(
            "UPDATE outbox SET state = 'failed', last_error = ?, untold_failure = ? "
            f"WHERE id = ? AND state IN {PENDING_STATES}",
            error,
            failure.value,
            item_id,
        )

    async def failures_to_tell(self, limit: int = 100) -> list[tuple[OutboxItem | Unreadable, Failure]]:
        rows_ = await self.engine.fetch(
            "SELECT * FROM outbox WHERE untold_failure IS NOT NULL ORDER BY id LIMIT ?", limit
        )
        return [(rows.readable(row), _failure(row["untold_failure"])) for row in rows_]

    async def failure_told(self, item_id: int) -> None:
        await self.engine.execute("UPDATE outbox SET untold_failure = NULL WHERE id = ?", item_id)

    async def keep_chat(self, item_id: int, text: str, chat: dict[str, Any]) -> OutboxItem | None:
        """Keep the prepared X Chat message of a row still rendered as ``text``: the row as it is
        then, or None when it has changed (its text, or it was finished or deleted)."""
        row = await self.engine.fetchone(
            "UPDATE outbox SET chat = ? WHERE id = ? AND chat IS NULL AND text = ? "
            f"AND state IN {PENDING_STATES} AND deleted_at IS NULL RETURNING *",
            json.dumps(chat, separators=(",", ":")),
            item_id,
            text,
        )
        if row is None:  # kept before (a retry), or changed: which one, the row says
            row = await self.engine.fetchone("SELECT * FROM outbox WHERE id = ?", item_id)
        kept = None if row is None else rows.item(row)
        return kept if kept is not None and kept.text == text and kept.chat is not None else None

    async def drop_chat(self, item_id: int) -> None:
        await self.engine.execute("UPDATE outbox SET chat = NULL WHERE id = ?", item_id)

    async def set_hourglass(self, item_id: int, on: bool) -> None:
        await self.engine.execute("UPDATE outbox SET hourglass = ? WHERE id = ?", int(on), item_id)

    async def set_held_since(self, item_id: int, since: float | None) -> None:
        await self.engine.execute("UPDATE outbox SET held_since = ? WHERE id = ?", since, item_id)

    async def release_account(self, account_id: int, now: float) -> int:
        # Every unfinished row, whatever it waited for: a ``sending`` one stays ``sending`` (it is
        # read back before any resend); the others are simply due again.
        return await self.engine.execute(
            "UPDATE outbox SET state = CASE WHEN state = 'sending' THEN 'sending' ELSE 'queued' END, "
            f"next_attempt_at = ? WHERE account_id = ? AND state IN {PENDING_STATES}",
            now,
            account_id,
        )

    async def send_in_doubt(
        self, team_id: str, channel_id: str, conversation_id: str | None, account_ids: Sequence[int]
    ) -> bool:
        # Asked of the pending rows only (``outbox_pending``, ``outbox_account_state``), never the
        # history: the poster asks it for each X message its own account wrote, and a conversation
        # bridged to 10,000 channels made that 10,000 summaries of every row.
        here = await self.engine.fetchone(
            f"SELECT 1 AS x FROM outbox{indexed_by(self.engine.dialect, 'outbox_pending')} WHERE team_id = ? "
            f"AND channel_id = ? AND state IN {PENDING_STATES} AND state = 'sending' LIMIT 1",
            team_id,
            channel_id,
        )
        if here is not None or not conversation_id or not account_ids:
            return here is not None
        found = await self.engine.fetchone(
            _SENDS_IN_DOUBT.format(accounts=marks(account_ids)), *account_ids, conversation_id, *account_ids
        )
        return found is not None


class OutboxMediaRole(StoreBase):
    """A row's media upload to X: its id once uploaded, and whether an upload was left unfinished."""

    async def set_media_id(
        self, item_id: int, media_id: str | None, uploaded_at: float | None = None
    ) -> None:
        await self.engine.execute(
            "UPDATE outbox SET media_id = ?, media_uploaded_at = ?, media_unfinished = 0 WHERE id = ?",
            media_id,
            uploaded_at,
            item_id,
        )

    async def begin_media_upload(self, item_id: int) -> None:
        await self.engine.execute(
            "UPDATE outbox SET media_unfinished = media_unfinished + 1 WHERE id = ?", item_id
        )

    async def end_media_upload(self, item_id: int) -> None:
        await self.engine.execute("UPDATE outbox SET media_unfinished = 0 WHERE id = ?", item_id)

    async def drop_media(self, item_id: int) -> None:
        await self.engine.execute(
            "UPDATE outbox SET media = NULL, media_id = NULL, media_uploaded_at = NULL, "
            "media_unfinished = 0 WHERE id = ?",
            item_id,
        )


def _claim(
    sql: Statements,
    item_id: int,
    now: float,
    budgets: Sequence[Window],
    parts: Sequence[RenderedPart] | None,
    source: dict[str, Any] | None,
) -> OutboxItem | None:
    """SQLite's claim, in one hop to the store's thread (one transaction)."""
    row = sql.fetchone("SELECT * FROM outbox WHERE id = ?", item_id)
    current = rows.item(row) if row else None
    if current is None or not current.state.pending or current.deleted:
        return None  # cancelled (deleted in Slack), or finished, since it was read
    if parts is None and current.text is None:
        return None  # an edit reset its text since it was read: render it again
    if parts is not None:
        # Rendered from ``source``: an edit that landed since then must not be lost.
        if current.text is not None or current.source != source:
            return None
        for statement, params in _render_statements(item_id, parts):
            sql.execute(statement, *params)
    _save_windows(sql, budgets)
    claimed = sql.fetchone(
        "UPDATE outbox SET state = 'sending', attempts = attempts + 1, sending_since = ? "
        "WHERE id = ? RETURNING *",
        now,
        item_id,
    )
    assert claimed is not None
    return rows.item(claimed)


def _save_windows(sql: Statements, windows: Sequence[Window]) -> None:
    """X's rate-limit windows, saved with the claim or send that learnt them (as the budgets role's
    ``save_windows``, on the store's thread)."""
    count, params = save_params(windows)
    if count:
        sql.execute(save_sql(count), *params)


def _record_sent(
    sql: Statements, item_id: int, sent: Sent, now: float, budgets: Sequence[Window]
) -> dict[str, Any] | None:
    """SQLite's send, step by step as ``xdm_mark_sent_v1`` does it; the channel's next row."""
    conversation_id = sent.dm_conversation_id
    _save_windows(sql, budgets)
    row = sql.fetchone(
        # A row names one target: a 1-to-1 row keeps its participant (the conversation id
        # goes to the message map and the mapping below, not beside it).
        "UPDATE outbox SET state = 'sent', dm_event_id = ?, target_conversation = "
        "CASE WHEN target_participant IS NULL THEN COALESCE(target_conversation, ?) END, "
        "sent_at = ?, last_error = NULL WHERE id = ? "
        "RETURNING team_id, channel_id, slack_ts, part, target_participant, target_group",
        sent.dm_event_id,
        conversation_id,
        now,
        item_id,
    )
    assert row is not None
    team_id, channel_id = row["team_id"], row["channel_id"]
    if sent.dm_event_id is not None:  # X took it without saying which event: no map
        sql.execute(
            "INSERT INTO message_map (team_id, channel_id, slack_ts, part, conversation_id, "
            "dm_event_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            team_id,
            channel_id,
            row["slack_ts"],
            row["part"],
            conversation_id,
            sent.dm_event_id,
            now,
        )
    if row["target_participant"] and conversation_id is not None:
        # X names the 1-to-1 conversation on first send; keep it for status and reads.
        sql.execute(
            "UPDATE mappings SET conversation_id = ? WHERE team_id = ? AND channel_id = ? "
            "AND kind = 'dm' AND participant_id = ? AND conversation_id IS NOT ?",
            conversation_id,
            team_id,
            channel_id,
            row["target_participant"],
            conversation_id,
        )
    if row["target_group"] and conversation_id is not None:
        # X created the channel's group: the mapping and every row still to send name it
        # (so the next row does not create another group).
        sql.execute(
            "UPDATE mappings SET conversation_id = ? WHERE team_id = ? AND channel_id = ? "
            "AND kind = 'group' AND conversation_id IS NULL",
            conversation_id,
            team_id,
            channel_id,
        )
        sql.execute(
            "UPDATE outbox SET target_conversation = ? WHERE team_id = ? AND channel_id = ? "
            "AND target_conversation IS NULL AND target_participant IS NULL "
            "AND target_group IS NOT NULL",
            conversation_id,
            team_id,
            channel_id,
        )
    return sql.fetchone(
        f"SELECT * FROM outbox INDEXED BY outbox_pending WHERE team_id = ? AND channel_id = ? "
        f"AND state IN {PENDING_STATES} ORDER BY seq, part LIMIT 1",
        team_id,
        channel_id,
    )


async def _item(engine: Engine, item_id: int) -> OutboxItem | None:
    row = await engine.fetchone("SELECT * FROM outbox WHERE id = ?", item_id)
    return rows.item(row) if row else None


async def _write_render(engine: Engine, item_id: int, parts: Sequence[RenderedPart]) -> None:
    for statement, params in _render_statements(item_id, parts):
        await engine.execute(statement, *params)


def _render_statements(item_id: int, parts: Sequence[RenderedPart]) -> list[tuple[str, tuple[Any, ...]]]:
    """The first part's text on the row itself; further parts as rows right behind it."""
    assert parts, "a message renders to at least one part"
    first = parts[0]
    statements: list[tuple[str, tuple[Any, ...]]] = [
        (
            "UPDATE outbox SET text = ?, media = ?, parts_total = ? WHERE id = ?",
            (first.text, rows.json_or_none(first.media), len(parts), item_id),
        )
    ]
    for index, part in enumerate(parts[1:], start=1):
        statements.append(
            (
                _FURTHER_PART,
                (index, len(parts), part.text, rows.json_or_none(part.media), item_id),
            )
        )
    return statements


# A further part of a message, as a row copied from its first one (``{}``: its part, parts_total,
# text and media, and the first row's FROM), by SQLite's render and PostgreSQL's claim alike.
_PART_INSERT = (
    "INSERT INTO outbox (seq, part, parts_total, team_id, channel_id, slack_ts, ref_ts, author_id, "
    "account_id, target_participant, target_conversation, target_group, text, media, source, state, "
    "attempts, next_attempt_at, created_at, hourglass, kind) SELECT seq, {}, {}, team_id, channel_id, "
    "slack_ts, ref_ts, author_id, account_id, target_participant, target_conversation, target_group, "
    "{}, {}, '{{}}', 'queued', 0, 0, created_at, 0, kind FROM {} ON CONFLICT DO NOTHING"
)
_FURTHER_PART = _PART_INSERT.format("?", "?", "?", "?", "outbox WHERE id = ?")
# PostgreSQL's claim: every further part at once, from the row it claimed.
_PG_FURTHER_PARTS = _PART_INSERT.format(
    "ord::integer",
    "$10",
    "p_text",
    "p_media",
    "claimed, unnest($11::text[], $12::text[]) WITH ORDINALITY AS p (p_text, p_media, ord)",
)


def _failure(value: str) -> Failure:
    try:
        return Failure(value)
    except ValueError:  # written by a newer version: still told, counted as other
        return Failure.OTHER


# PostgreSQL only: the budget windows as four arrays ($3..$6), saved in the same statement as a
# claim or a send (``xdm_mark_sent_v1`` takes the same arrays).
_PG_SAVE_BUDGETS = (
    "INSERT INTO budgets (key, limit_, remaining, reset_at) "
    "SELECT * FROM unnest($3::text[], $4::integer[], $5::integer[], $6::double precision[])"
)


def _budget_arrays(windows: Sequence[Window]) -> tuple[list[str], list[int], list[int], list[float]]:
    """Column arrays, one row per key (``budgets.latest``)."""
    rows_ = latest(windows)
    return [w[0] for w in rows_], [w[1] for w in rows_], [w[2] for w in rows_], [w[3] for w in rows_]
