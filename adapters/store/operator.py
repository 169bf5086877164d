"""What the operator's commands (``mappings``, ``accounts``, ``workspaces``, ``outbox``, ``doctor``)
read and change: one SQL for both engines, over the ``Engine`` seam.

Rows come back as plain dicts for the CLI to print or dump as JSON; nothing here returns a token
(``accounts_with_tokens`` returns ciphertexts, for ``doctor`` to try and never print).

``retry`` and ``drop`` only change rows; a running server's worker notices within its rescan
interval (30 s). ``drop`` marks a row failed with the reason "dropped by operator" rather than
deleting it: the row keeps its place in the unique (channel, ts, part) index, so a late Slack retry
of the same message cannot queue it again, it stays visible to ``outbox``, and ``retry`` can undo
the drop. Slack is not told (no ⚠️ reaction) about an operator's drop.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from adapters.store.engine import Dialect, Engine, marks
from adapters.store.upkeep import outbox_counts, outbox_in
from bridge.errors import StoreUnavailable

# Rows an operator may want to act on: not yet sent, or refused.
LISTED_STATES = ("queued", "sending", "waiting", "failed")
PENDING = ("queued", "sending", "waiting")
DROPPED = "dropped by operator"
UNTIL_RECONNECTED = 1e15  # bridge.outcomes parks rows for a reconnection at this next_attempt_at
NO_SCHEMA = "the database has no bridge tables yet: run `xdm-bridge migrate`"


async def table_exists(engine: Engine, table: str) -> bool:
    """Whether ``table`` exists (an older or empty database may lack it)."""
    # Each engine keeps its catalogue its own way; nothing portable asks both.
    if engine.dialect is Dialect.POSTGRES:
        row = await engine.fetchone("SELECT to_regclass(?) IS NOT NULL AS found", table)
        return bool(row and row["found"])
    row = await engine.fetchone(
        "SELECT 1 AS found FROM sqlite_master WHERE type = 'table' AND name = ?", table
    )
    return row is not None


@dataclass
class Outcome:
    """What an outbox operation did, row by row."""

    done: list[int]
    skipped: dict[int, str]

    def as_json(self, verb: str) -> dict[str, Any]:
        return {verb: self.done, "skipped": [{"id": i, "reason": r} for i, r in self.skipped.items()]}


class OperatorStore:
    """The operator's view of a bridge database, on an engine opened for the command (migrations
    are ``migrate``'s: a database without the bridge's tables raises ``StoreUnavailable``)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._checked = False

    async def require_schema(self) -> None:
        """Raise ``StoreUnavailable`` saying to run ``migrate`` when the bridge's tables are missing."""
        if self._checked:
            return
        for table in ("outbox", "accounts"):
            if not await table_exists(self._engine, table):
                raise StoreUnavailable(NO_SCHEMA)
        self._checked = True

    # -- reading -----------------------------------------------------------

    async def accounts(self, now: float) -> list[dict[str, Any]]:
        """Connected X accounts, without their tokens."""
        await self.require_schema()
        found = await self._engine.fetch(
            """
            SELECT a.id, a.team_id, a.slack_user_id, a.x_user_id, a.x_username, a.expires_at, a.scope,
                   a.needs_reconnect, a.refresh_token IS NOT NULL AS has_refresh_token, a.created_at,
                   a.disconnected_at,
                   (SELECT COUNT(*) FROM mappings m WHERE m.account_id = a.id) AS mappings
            FROM accounts a ORDER BY a.team_id, a.x_username, a.id
            """
        )
        return [_account(row, now) for row in found]

    async def workspaces(self) -> list[dict[str, Any]]:
        """Every Slack workspace the bridge knows (installed, or with accounts or channels), with
        its install (never its token) and how many accounts and channels it has."""
        await self.require_schema()
        installs = await table_exists(self._engine, "slack_installations")
        found = await self._engine.fetch(_workspaces_sql(installs))
        return [
            {**row, "rotating": bool(row["rotating"]), "installed": bool(row["installed"])} for row in found
        ]

    async def mappings(self) -> list[dict[str, Any]]:
        """Bridged channels, with the X account each sends as (None when it is gone)."""
        await self.require_schema()
        return await self._engine.fetch(
            """
            SELECT m.team_id, m.channel_id, m.kind, m.conversation_id, m.participant_id, m.account_id,
                   a.x_username, m.created_by, m.created_at
            FROM mappings m LEFT JOIN accounts a ON a.id = m.account_id
            ORDER BY m.team_id, m.channel_id
            """
        )

    async def mapped_teams(self) -> set[str]:
        """Workspaces with at least one bridged channel."""
        await self.require_schema()
        return {r["team_id"] for r in await self._engine.fetch("SELECT DISTINCT team_id FROM mappings")}

    async def outbox(
        self, now: float, states: Sequence[str] = LISTED_STATES, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Rows in ``states``, oldest first, with their age and what they wait for."""
        await self.require_schema()
        return [_outbox_row(row, now) for row in await outbox_in(self._engine, states, limit)]

    async def outbox_summary(self, now: float) -> dict[str, Any]:
        """Rows per state, how many are unsent, and how long the oldest unsent one has waited."""
        await self.require_schema()
        counts, oldest = await outbox_counts(self._engine)
        return {
            "counts": counts,
            "pending": sum(counts.get(s, 0) for s in PENDING),
            "failed": counts.get("failed", 0),
            "oldest_pending_age_seconds": round(now - oldest, 1) if oldest else None,
        }

    async def accounts_with_tokens(self) -> list[dict[str, Any]]:
        """For ``doctor`` only: accounts with their token ciphertexts (decrypted by the caller,
        never printed)."""
        await self.require_schema()
        return await self._engine.fetch(
            "SELECT id, team_id, slack_user_id, x_user_id, x_username, access_token, refresh_token, "
            "expires_at, scope, needs_reconnect FROM accounts ORDER BY id"
        )

    # -- changing the outbox -----------------------------------------------

    async def retry(self, ids: Sequence[int] = (), *, all_failed: bool = False, now: float) -> Outcome:
        """Make rows due now: failed, waiting and queued rows become ``queued``.

        A ``sending`` row stays ``sending`` (only its next attempt moves): its earlier POST may
        have reached X, and the worker checks the conversation before any resend. Sent rows are
        not sent twice. Each row's state is checked by the UPDATE itself, so a row the running
        bridge moves meanwhile is judged by the state it has when the UPDATE reaches it.
        """
        await self.require_schema()
        async with self._engine.transaction() as tx:
            if all_failed:
                changed = await tx.fetch(
                    # A failure retried is no longer one to tell its author about.
                    "UPDATE outbox SET state = 'queued', next_attempt_at = ?, untold_failure = NULL "
                    "WHERE state = 'failed' "
                    "RETURNING id",
                    now,
                )
                return Outcome(sorted(int(r["id"]) for r in changed), {})
            if not ids:
                return Outcome([], {})
            changed = await tx.fetch(
                "UPDATE outbox SET next_attempt_at = ?, untold_failure = NULL, "
                "state = CASE WHEN state = 'sending' THEN 'sending' ELSE 'queued' END "
                f"WHERE id IN ({marks(ids)}) AND state IN ('sending', 'failed', 'waiting', 'queued') "
                "RETURNING id",
                now,
                *ids,
            )
            return await _outcome(tx, ids, {int(r["id"]) for r in changed}, _not_retried)

    async def drop(self, ids: Sequence[int]) -> Outcome:
        """Give up on rows not yet sent: they become ``failed`` with the reason "dropped by operator"."""
        await self.require_schema()
        if not ids:
            return Outcome([], {})
        async with self._engine.transaction() as tx:
            changed = await tx.fetch(
                "UPDATE outbox SET state = 'failed', last_error = ? "
                f"WHERE id IN ({marks(ids)}) AND state IN ({marks(PENDING)}) RETURNING id",
                DROPPED,
                *ids,
                *PENDING,
            )
            return await _outcome(tx, ids, {int(r["id"]) for r in changed}, _not_dropped)


async def _outcome(
    tx: Engine, ids: Sequence[int], changed: set[int], reason: Callable[[str | None], str]
) -> Outcome:
    """The ids asked for, in their order: done, or skipped with why (from the row's state now)."""
    outcome = Outcome([], {})
    left = [i for i in dict.fromkeys(ids) if i not in changed]
    states: dict[int, str] = {}
    if left:
        found = await tx.fetch(f"SELECT id, state FROM outbox WHERE id IN ({marks(left)})", *left)
        states = {int(r["id"]): str(r["state"]) for r in found}
    for item_id in dict.fromkeys(ids):
        if item_id in changed:
            outcome.done.append(item_id)
        else:
            outcome.skipped[item_id] = reason(states.get(item_id))
    return outcome


def _not_retried(state: str | None) -> str:
    if state is None:
        return "no such outbox row"
    return f"it is {state}, not waiting or failed"


def _not_dropped(state: str | None) -> str:
    if state is None:
        return "no such outbox row"
    if state == "failed":
        return "it had already failed"
    return f"it is {state}; only unsent rows can be dropped"


def _workspaces_sql(installs: bool) -> str:
    """Teams from accounts, mappings and (when the table exists) non-enterprise installs."""
    if installs:
        columns = (
            "i.enterprise_id, i.team_name, i.installed_at, i.bot_token_expires_at, "
            "i.bot_refresh_token IS NOT NULL AS rotating, i.install_id IS NOT NULL AS installed"
        )
        teams = (
            "SELECT team_id FROM accounts UNION SELECT team_id FROM mappings "
            "UNION SELECT team_id FROM slack_installations WHERE is_enterprise_install = 0"
        )
        joined = "LEFT JOIN slack_installations i ON i.team_id = t.team_id AND i.is_enterprise_install = 0"
    else:
        columns = (
            "NULL AS enterprise_id, NULL AS team_name, NULL AS installed_at, "
            "NULL AS bot_token_expires_at, 0 AS rotating, 0 AS installed"
        )
        teams = "SELECT team_id FROM accounts UNION SELECT team_id FROM mappings"
        joined = ""
    return f"""
        SELECT t.team_id, {columns},
               (SELECT COUNT(*) FROM accounts a WHERE a.team_id = t.team_id
                AND a.disconnected_at IS NULL) AS accounts,
               (SELECT COUNT(*) FROM mappings m WHERE m.team_id = t.team_id) AS mappings,
               (SELECT COUNT(*) FROM mappings m WHERE m.team_id = t.team_id
                AND m.paused_at IS NOT NULL) AS paused
        FROM ({teams}) AS t {joined}
        ORDER BY t.team_id
        """


def _account(row: dict[str, Any], now: float) -> dict[str, Any]:
    expires_at = row["expires_at"]
    return {
        "id": row["id"],
        "team_id": row["team_id"],
        "slack_user_id": row["slack_user_id"],
        "x_user_id": row["x_user_id"],
        "x_username": row["x_username"],
        "needs_reconnect": bool(row["needs_reconnect"]),
        "disconnected_at": row["disconnected_at"],
        "token_expires_at": expires_at,
        "token_expired": expires_at is not None and expires_at <= now,
        "has_refresh_token": bool(row["has_refresh_token"]),
        "scopes": (row["scope"] or "").split(),
        "mappings": row["mappings"],
        "created_at": row["created_at"],
    }


def _outbox_row(row: dict[str, Any], now: float) -> dict[str, Any]:
    text = row["text"]
    if text is None:
        try:
            text = json.loads(row["source"] or "{}").get("text")
        except (ValueError, AttributeError):
            text = None
    next_at = row["next_attempt_at"] or 0.0
    return {
        "id": row["id"],
        "state": row["state"],
        "kind": row.get("kind") or "message",
        "team_id": row["team_id"],
        "channel_id": row["channel_id"],
        "slack_ts": row["slack_ts"],
        "part": row["part"],
        "parts_total": row["parts_total"],
        "account_id": row["account_id"],
        "attempts": row["attempts"],
        "created_at": row["created_at"],
        "age_seconds": round(max(0.0, now - (row["created_at"] or now)), 1),
        "next_attempt_at": None if next_at >= UNTIL_RECONNECTED else next_at,
        "waiting_for_reconnect": next_at >= UNTIL_RECONNECTED,
        "last_error": row["last_error"],
        "text": text,
    }
