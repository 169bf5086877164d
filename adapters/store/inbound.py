"""X → Slack (``bridge.ports.InboundStore`` and ``CursorStore``): one SQL for both engines.

X's events are taken into ``inbound`` (one row per event and channel, deduplicated, echoes of
the bridge's own sends skipped), posted to Slack one channel head at a time, and each account's
reads are kept in ``cursors`` (how far, and an unfinished read's gap), ``read_schedule`` and
``backfills``. Event ids are X's snowflakes, kept as text and compared as numbers (``number``).

The few statements that differ by engine branch on ``engine.dialect`` where they are: the
number cast, PostgreSQL's per-account lock on a take (several instances take at once), the
SQLite index hints and PostgreSQL's ``DISTINCT ON`` finding heads. The host store announces
queued rows to other instances (``_inbound_queued``: PostgreSQL's NOTIFY).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from adapters.store import rows
from adapters.store.engine import Dialect, Engine
from adapters.store.roles import StoreBase
from bridge.model import InboundEvent, InboundItem, InboundState, ReadGap

# pg_advisory_xact_lock(INBOUND_LOCK, account id): one inbound take per account (PostgreSQL).
INBOUND_LOCK = 0x786E


def _sqlite_number(column: str) -> str:
    return f"CAST({column} AS INTEGER)"


def _postgres_number(column: str) -> str:
    # Non-digits count as 0, as SQLite's CAST; PostgreSQL's own cast would refuse them.
    return f"(CASE WHEN {column} ~ '^[0-9]+$' THEN {column}::numeric ELSE 0 END)"


# An event id column as a number the engine compares (X's snowflakes are text in the tables).
NUMBER: dict[Dialect, Callable[[str], str]] = {
    Dialect.SQLITE: _sqlite_number,
    Dialect.POSTGRES: _postgres_number,
}
_WAITS = {dialect: rows.inbound_waits(number) for dialect, number in NUMBER.items()}
# SQLite's planner, left alone, may walk the whole table (history included) for the pending rows.
_PENDING_INDEX = {Dialect.SQLITE: "INDEXED BY inbound_pending", Dialect.POSTGRES: ""}
_GREATEST = {Dialect.SQLITE: "MAX", Dialect.POSTGRES: "GREATEST"}

REQUEST_BACKFILL_SQL = (
    "INSERT INTO backfills (account_id, conversation_id, bridged_at, requested_at) "
    "VALUES (?, ?, ?, ?) ON CONFLICT (account_id, conversation_id) DO UPDATE "
    "SET bridged_at = excluded.bridged_at, requested_at = excluded.requested_at"
)


async def request_backfill_in(
    engine: Engine, account_id: int, conversation_id: str, bridged_at: float
) -> None:
    """``request_backfill`` on ``engine`` (or a transaction of it: a mapping made with its history)."""
    await engine.execute(REQUEST_BACKFILL_SQL, account_id, conversation_id, bridged_at, bridged_at)


class CursorsRole(StoreBase):
    """Where each account's reads of X stand: its cursor and unfinished read, the leader's next
    read, and histories still to read."""

    async def get_cursor(self, account_id: int) -> str | None:
        row = await self.engine.fetchone(
            "SELECT newest_event_id FROM cursors WHERE account_id = ?", account_id
        )
        return None if row is None or row["newest_event_id"] is None else str(row["newest_event_id"])

    async def read_gap(self, account_id: int) -> ReadGap | None:
        row = await self.engine.fetchone("SELECT * FROM cursors WHERE account_id = ?", account_id)
        return rows.read_gap(row) if row else None

    async def set_next_read(self, account_id: int, at: float, *, pushed: bool = False) -> None:
        await self.engine.execute(
            "INSERT INTO read_schedule (account_id, next_read_at, pushed, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (account_id) DO UPDATE SET next_read_at = excluded.next_read_at, "
            "pushed = excluded.pushed, updated_at = excluded.updated_at",
            account_id,
            at,
            pushed,  # a bool: SQLite keeps 1/0, PostgreSQL's column is boolean
            at,
        )

    async def request_backfill(self, account_id: int, conversation_id: str, bridged_at: float) -> None:
        await request_backfill_in(self.engine, account_id, conversation_id, bridged_at)

    async def pending_backfills(self) -> list[tuple[int, str, float]]:
        found = await self.engine.fetch(
            "SELECT account_id, conversation_id, bridged_at FROM backfills "
            "ORDER BY account_id, conversation_id"
        )
        return [(int(r["account_id"]), str(r["conversation_id"]), float(r["bridged_at"])) for r in found]

    async def finish_backfill(self, account_id: int, conversation_id: str, bridged_at: float) -> None:
        await self.engine.execute(
            "DELETE FROM backfills WHERE account_id = ? AND conversation_id = ? AND bridged_at = ?",
            account_id,
            conversation_id,
            bridged_at,
        )


class InboundRole(StoreBase):
    """The ``inbound`` rows: taken from X, then posted to Slack head by head per channel."""

    async def _inbound_queued(self, tx: Engine, account_id: int) -> None:
        """A take queued rows for Slack (called inside its transaction): nothing to do with one
        process; PostgreSQL's store wakes the leader's poster on another instance."""

    # Rows (and events planned) one transaction of ``take_inbound`` writes at most; None: all at
    # once. The SQLite store sets it: its one thread is held for a transaction's whole length.
    _take_rows: int | None = None

    def _take_lock(self, account_id: int) -> AbstractAsyncContextManager[None]:
        """Held across one account's take (its transactions): nothing needed on PostgreSQL,
        whose one transaction takes an advisory lock instead."""
        return contextlib.nullcontext()

    async def _between_takes(self) -> None:
        """Between two transactions of one take: the SQLite store lets the calls queued
        meanwhile (an ack, a delivery step, /healthz) go first."""

    async def take_inbound(
        self,
        account_id: int,
        events: Sequence[InboundEvent],
        newest_event_id: str | None,
        now: float,
        *,
        gap: ReadGap | None = None,
        tally: dict[str, int] | None = None,
    ) -> int:
        """Queue X events (oldest first) and move the account's cursor.

        Events already known (by ``dm_event_id``) are left alone; events the bridge sent
        itself, or whose conversation no channel bridges, are kept as ``skipped`` so a later
        read does not bill them to Slack again. With ``gap`` the read is unfinished: the
        cursor stays and the gap is kept (the account's channels wait); moving the cursor
        closes any gap. Returns how many were queued for Slack. Any instance may take (a push
        reaches whichever X calls): the unique key makes the first commit win.

        One transaction on PostgreSQL; on SQLite at most ``_take_rows`` rows per transaction
        (an event of a conversation bridged to 10,000 channels is 10,000 rows: written at once
        they held the store's one thread for seconds while acks and /healthz queued behind),
        the cursor moved (or the gap kept) with the last. A crash part-way leaves the cursor
        where it was: the events are read again, and the rows written stay (one per event and
        channel).
        """
        taking = _Taking(account_id, deque(events))
        async with self._take_lock(account_id):
            while not await self.engine.atomic(
                lambda tx: self._take_some(tx, taking, newest_event_id, now, gap)
            ):
                await self._between_takes()
        if tally is not None and events:
            tally["echoes"] = tally.get("echoes", 0) + taking.echoes
        return taking.queued

    async def _take_some(
        self, tx: Engine, taking: _Taking, newest_event_id: str | None, now: float, gap: ReadGap | None
    ) -> bool:
        """One transaction of ``take_inbound``; True when it was the last."""
        room = math.inf if self._take_rows is None else self._take_rows
        queued_before = taking.queued
        if not taking.started:
            if tx.dialect is Dialect.POSTGRES:
                # One take per account at a time, in the order they came (PostgreSQL queues lock
                # requests): as the SQLite store's single writer, so pushes delivered one after the
                # other are not committed out of X's order by two pool connections racing.
                await tx.execute("SELECT pg_advisory_xact_lock(?, ?)", INBOUND_LOCK, taking.account_id)
            account = await tx.fetchone("SELECT x_user_id FROM accounts WHERE id = ?", taking.account_id)
            taking.own_id = account["x_user_id"] if account else None
            taking.started = True
        while room > 0 and (taking.planned or taking.events):
            if taking.planned:
                await self._take_row(tx, taking, *taking.planned.popleft(), now)
            else:
                await self._plan_one(tx, taking, taking.events.popleft(), now)
            room -= 1
        last = not (taking.planned or taking.events)
        if last and gap is not None:
            await _keep_gap(tx, taking.account_id, gap, now)
        elif last and newest_event_id is not None:
            await _move_cursor(tx, taking.account_id, newest_event_id, now)
        elif not last and gap is not None:
            await _hold_for_gap(tx, taking.account_id, gap, now)
        if taking.queued > queued_before:
            await self._inbound_queued(tx, taking.account_id)
        return last

    async def _plan_one(self, tx: Engine, taking: _Taking, event: InboundEvent, now: float) -> None:
        """The channels one event goes to (``rows.channel_rows``), kept in ``taking`` to be
        written; an event no channel bridges is kept at once, skipped."""
        known = {
            (r["team_id"], r["channel_id"])
            for r in await tx.fetch(
                "SELECT team_id, channel_id FROM inbound WHERE dm_event_id = ?", event.dm_event_id
            )
        }
        mappings = (
            await tx.fetch(
                "SELECT m.team_id, m.channel_id, m.created_at, a.x_user_id FROM mappings AS m "
                "LEFT JOIN accounts AS a ON a.id = m.account_id WHERE m.conversation_id = ? "
                "ORDER BY m.account_id = ? DESC, m.created_at",
                event.conversation_id,
                taking.account_id,
            )
            if event.conversation_id
            else []
        )
        sent_from = await _sent_from(tx, event.dm_event_id)
        taking.planned.extend((event, row) for row in rows.channel_rows(mappings, event, known, sent_from))
        if not known and not mappings:
            # Kept so a later read does not bill it to Slack again; a backfill may still want it.
            payload = {**event.payload, "from_self": rows.from_self(event, taking.own_id)}
            await _insert_inbound(
                tx,
                taking.account_id,
                event,
                (None, None),
                payload,
                InboundState.SKIPPED,
                rows.NOT_BRIDGED,
                now,
            )

    async def _take_row(
        self, tx: Engine, taking: _Taking, event: InboundEvent, row: rows.ChannelRow, now: float
    ) -> None:
        """Write one channel's row of an event (skipped as an echo of ours if the outbox says so)."""
        state, why = row.state, row.why
        if row.check_outbox and await _outbox_echo(tx, row.where, event):
            state, why = InboundState.SKIPPED, rows.ECHO_IN_FLIGHT
        elif row.check_outbox and await _adopt_unconfirmed(tx, row.where, event, now):
            state, why = InboundState.SKIPPED, rows.ECHO_UNCONFIRMED
        inserted = await _insert_inbound(
            tx, taking.account_id, event, row.where, row.payload, state, why, now
        )
        taking.queued += int(inserted and state is InboundState.QUEUED)
        taking.echoes += int(inserted and state is InboundState.SKIPPED)

    async def sent_from(self, dm_event_id: str) -> tuple[str, str] | None:
        return await _sent_from(self.engine, dm_event_id)

    async def inbound_heads(
        self, after: tuple[str, str] | None = None, limit: int | None = None
    ) -> list[InboundItem]:
        # A channel waits (rows.inbound_waits) with its rows kept; one no longer bridged still
        # gets what was taken for it. In channel order from ``after``, walking the partial index
        # ``inbound_pending`` in order, so ``limit`` stops the walk early: a window of a backlog
        # of 500,000 rows costs the window (2 ms), not a scan of every row (6.6 s).
        later = "AND (team_id, channel_id) > (?, ?) " if after is not None else ""
        if self.engine.dialect is Dialect.SQLITE:
            # The heads first (one pass over the index, stopped at the limit), then each row by
            # that index. No ORDER BY outside: SQLite would find every head before the first;
            # the GROUP BY walks the index in channel order already (sorted below to be sure).
            sql = (
                "SELECT i.* FROM (SELECT team_id, channel_id, MIN(seq) AS seq "
                "FROM inbound INDEXED BY inbound_pending WHERE state IN ('queued', 'posting') "
                f"{later}GROUP BY team_id, channel_id) AS h "
                "CROSS JOIN inbound AS i INDEXED BY inbound_pending ON i.team_id = h.team_id "
                "AND i.channel_id = h.channel_id AND i.seq = h.seq AND i.state IN ('queued', 'posting') "
                f"WHERE NOT ({_WAITS[Dialect.SQLITE]}) LIMIT ?"
            )
            bound: int | None = -1 if limit is None else limit  # SQLite: -1 is no limit
        else:
            sql = (
                "SELECT * FROM (SELECT DISTINCT ON (team_id, channel_id) * FROM inbound "
                f"WHERE state IN ('queued', 'posting') {later}"
                "ORDER BY team_id, channel_id, seq) AS i "
                f"WHERE NOT ({_WAITS[Dialect.POSTGRES]}) ORDER BY team_id, channel_id LIMIT ?"
            )
            bound = limit  # PostgreSQL: LIMIT NULL is no limit
        found = await self.engine.fetch(sql, *(after or ()), bound)
        heads = [rows.inbound_item(r) for r in found]
        return sorted(heads, key=lambda h: (h.team_id, h.channel_id))

    async def mark_posting(self, item_id: int, now: float) -> InboundItem | None:
        row = await self.engine.fetchone(
            "UPDATE inbound SET state = 'posting', attempts = attempts + 1, "
            "posting_since = COALESCE(posting_since, ?) "
            "WHERE id = ? AND state IN ('queued', 'posting') RETURNING *",
            now,
            item_id,
        )
        return rows.inbound_item(row) if row else None

    async def mark_posted(self, item_id: int, slack_ts: str, now: float) -> InboundItem | None:
        async def work(tx: Engine) -> InboundItem | None:
            row = await tx.fetchone(
                "UPDATE inbound SET state = 'posted', slack_ts = ?, posted_at = ?, last_error = NULL "
                "WHERE id = ? RETURNING *",
                slack_ts,
                now,
                item_id,
            )
            assert row is not None
            await tx.execute(
                "INSERT INTO message_map (team_id, channel_id, slack_ts, part, conversation_id, "
                "dm_event_id, created_at) VALUES (?, ?, ?, 0, ?, ?, ?) ON CONFLICT DO NOTHING",
                row["team_id"],
                row["channel_id"],
                slack_ts,
                row["conversation_id"],
                row["dm_event_id"],
                now,
            )
            following = await _inbound_head(tx, row["team_id"], row["channel_id"])
            return None if following is None else rows.inbound_item(following)

        return await self.engine.atomic(work)

    async def reschedule_inbound(
        self, item_id: int, state: InboundState, next_attempt_at: float, error: str | None
    ) -> None:
        await self.engine.execute(
            "UPDATE inbound SET state = ?, next_attempt_at = ?, last_error = ?, "
            "posting_since = CASE WHEN ? THEN posting_since END WHERE id = ?",
            state.value,
            next_attempt_at,
            error,
            state is InboundState.POSTING,  # leaving ``posting`` forgets when the post began
            item_id,
        )

    async def set_inbound_payload(self, item_id: int, payload: dict[str, Any]) -> None:
        await self.engine.execute(
            "UPDATE inbound SET payload = ? WHERE id = ?", json.dumps(payload, separators=(",", ":")), item_id
        )

    async def hold_channel(self, team_id: str, channel_id: str, until: float) -> None:
        greatest = _GREATEST[self.engine.dialect]
        await self.engine.execute(
            f"UPDATE inbound SET next_attempt_at = {greatest}(next_attempt_at, ?) WHERE team_id = ? "
            "AND channel_id = ? AND state IN ('queued', 'posting')",
            until,
            team_id,
            channel_id,
        )

    async def latest_inbound_at(self, origin: str) -> float | None:
        row = await self.engine.fetchone("SELECT MAX(created_at) AS t FROM inbound WHERE origin = ?", origin)
        return None if row is None or row["t"] is None else float(row["t"])

    async def inbound_summary(
        self, account_id: int, team_id: str | None = None, channel_id: str | None = None
    ) -> dict[str, Any]:
        async def work(tx: Engine) -> dict[str, Any]:
            if tx.dialect is Dialect.POSTGRES:
                # One snapshot for every count (SQLite's transaction already keeps other writers out).
                await tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            cursor = await tx.fetchone("SELECT * FROM cursors WHERE account_id = ?", account_id)
            schedule = await tx.fetchone(
                "SELECT next_read_at, pushed FROM read_schedule WHERE account_id = ?", account_id
            )
            here = await tx.fetchone(
                "SELECT COUNT(*) AS n FROM inbound WHERE team_id = ? AND channel_id = ? "
                "AND state IN ('queued', 'posting')",
                team_id,
                channel_id,
            )
            counts = {
                str(r["state"]): int(r["n"])
                for r in await tx.fetch(
                    "SELECT state, COUNT(*) AS n FROM inbound WHERE account_id = ? GROUP BY state", account_id
                )
            }
            last = await tx.fetchone(
                "SELECT MAX(created_at) AS t FROM inbound WHERE account_id = ? AND origin != 'sent'",
                account_id,
            )
            failed = await tx.fetchone(rows.FAILED_COUNT_SQL, team_id, channel_id)
            reason = await tx.fetchone(rows.FAILED_LAST_SQL, team_id, channel_id)
            chat_gap = await tx.fetchone(rows.CHAT_GAP_SQL, team_id, channel_id)
            return {
                "newest_event_id": cursor["newest_event_id"] if cursor else None,
                "read_at": cursor["updated_at"] if cursor else None,
                "catching_up": bool(cursor and cursor["gap_newest"] is not None)
                or bool(chat_gap and chat_gap["n"]),
                "last_event_at": _float_or_none(last["t"] if last else None),
                "counts": counts,
                "pending": counts.get("queued", 0) + counts.get("posting", 0),
                "channel_pending": int(here["n"]) if here else 0,
                "channel_failed": int(failed["n"]) if failed else 0,
                "channel_last_failure": reason["last_error"] if reason else None,
                "next_read_at": _float_or_none(schedule["next_read_at"] if schedule else None),
                "pushed": bool(schedule["pushed"]) if schedule else False,
            }

        return await self.engine.atomic(work)


async def _keep_gap(tx: Engine, account_id: int, gap: ReadGap, now: float) -> None:
    """An unfinished read: the cursor stays, the gap replaces any."""
    await tx.execute(
        "INSERT INTO cursors (account_id, updated_at, gap_token, gap_newest, gap_oldest, "
        "gap_restarts, gap_opened_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (account_id) DO UPDATE SET updated_at = excluded.updated_at, "
        "gap_token = excluded.gap_token, gap_newest = excluded.gap_newest, "
        "gap_oldest = excluded.gap_oldest, gap_restarts = excluded.gap_restarts, "
        "gap_opened_at = excluded.gap_opened_at",
        account_id,
        now,
        gap.token,
        gap.newest,
        gap.oldest,
        gap.restarts,
        gap.opened_at,
    )


async def _hold_for_gap(tx: Engine, account_id: int, gap: ReadGap, now: float) -> None:
    """A take of an unfinished read spanning transactions: the account's channels wait from its
    first one (X's order: nothing newer is posted before the older events still to come). With no
    gap open yet, a gap that reads again from the newest (no token): a crash before the take's
    last transaction loses nothing. An open gap stays as it is (its token is this read's page)."""
    open_gap = await tx.fetchone(
        "SELECT 1 AS x FROM cursors WHERE account_id = ? AND gap_newest IS NOT NULL", account_id
    )
    if open_gap is None:
        await _keep_gap(tx, account_id, ReadGap(None, gap.newest, None, gap.restarts, gap.opened_at), now)


async def _move_cursor(tx: Engine, account_id: int, newest_event_id: str, now: float) -> None:
    """The cursor moves forward only (by X's order), and moving it closes the account's gap."""
    number = NUMBER[tx.dialect]
    await tx.execute(
        "INSERT INTO cursors (account_id, newest_event_id, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT (account_id) DO UPDATE SET newest_event_id = excluded.newest_event_id, "
        "updated_at = excluded.updated_at "
        "WHERE cursors.newest_event_id IS NULL "
        f"OR {number('excluded.newest_event_id')} > {number('cursors.newest_event_id')}",
        account_id,
        newest_event_id,
        now,
    )
    await tx.execute(
        "UPDATE cursors SET gap_token = NULL, gap_newest = NULL, gap_oldest = NULL, "
        "gap_restarts = 0, gap_opened_at = NULL WHERE account_id = ?",
        account_id,
    )


async def _insert_inbound(
    tx: Engine,
    account_id: int,
    event: InboundEvent,
    where: tuple[str | None, str | None],
    payload: dict[str, Any],
    state: InboundState,
    why: str | None,
    now: float,
) -> bool:
    inserted = await tx.execute(
        f"INSERT INTO inbound ({rows.INBOUND_COLUMNS}) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, ?, ?) ON CONFLICT DO NOTHING",
        *rows.inbound_values(account_id, event, where, payload, state, why, now),
    )
    return inserted == 1


async def _sent_from(engine: Engine, dm_event_id: str) -> tuple[str, str] | None:
    # The message map also records what the bridge posted from X: those have an inbound row.
    row = await engine.fetchone(
        "SELECT m.team_id, m.channel_id FROM message_map AS m WHERE m.dm_event_id = ? AND NOT EXISTS "
        "(SELECT 1 FROM inbound AS i WHERE i.dm_event_id = m.dm_event_id AND i.team_id = m.team_id "
        "AND i.channel_id = m.channel_id AND i.slack_ts = m.slack_ts) LIMIT 1",
        dm_event_id,
    )
    return (row["team_id"], row["channel_id"]) if row else None


async def _outbox_echo(tx: Engine, where: tuple[str, str], event: InboundEvent) -> bool:
    """A DM of ours that X has but the outbox has not recorded yet (its POST is in flight)."""
    found = await tx.fetchone(
        "SELECT 1 AS echo FROM outbox WHERE team_id = ? AND channel_id = ? AND state = 'sending' "
        "AND text = ? LIMIT 1",
        *where,
        event.payload.get("text"),
    )
    return found is not None


async def _adopt_unconfirmed(tx: Engine, where: tuple[str, str], event: InboundEvent, now: float) -> bool:
    """A DM of ours X took without naming it (recorded sent without an id): it is this event.
    Its id is recorded now, in the outbox and the message map, as a send's would have been."""
    candidates = await tx.fetch(rows.UNCONFIRMED_SENDS, *where)
    found = rows.unconfirmed_match(candidates, event)
    if found is None:
        return False
    await tx.execute("UPDATE outbox SET dm_event_id = ? WHERE id = ?", event.dm_event_id, found["id"])
    await tx.execute(
        "INSERT INTO message_map (team_id, channel_id, slack_ts, part, conversation_id, dm_event_id, "
        "created_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        *where,
        found["slack_ts"],
        found["part"],
        event.conversation_id,
        event.dm_event_id,
        now,
    )
    return True


async def _inbound_head(tx: Engine, team_id: str, channel_id: str) -> dict[str, Any] | None:
    """The channel's next row to post, unless the channel waits."""
    return await tx.fetchone(
        f"SELECT i.* FROM (SELECT * FROM inbound {_PENDING_INDEX[tx.dialect]} WHERE team_id = ? "
        "AND channel_id = ? AND state IN ('queued', 'posting') ORDER BY seq LIMIT 1) AS i "
        f"WHERE NOT ({_WAITS[tx.dialect]})",
        team_id,
        channel_id,
    )


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass
class _Taking:
    """A ``take_inbound`` in progress across its transactions: the events still to plan, the
    rows planned and still to write, and what was written so far."""

    account_id: int
    events: deque[InboundEvent]
    planned: deque[tuple[InboundEvent, rows.ChannelRow]] = field(default_factory=deque)
    own_id: str | None = None
    started: bool = False
    queued: int = 0
    echoes: int = 0
