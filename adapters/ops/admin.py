"""Operator commands over the database: ``mappings``, ``accounts`` and ``outbox``.

The CLI is its own short-lived process, so it opens its own SQLite connection
(WAL lets it read and write while ``serve`` runs; ``busy_timeout`` waits out the
server's write transactions). Nothing here prints or returns a token.

``outbox retry`` and ``outbox drop`` only change rows; a running server's worker
notices within its rescan interval (30 s). ``drop`` marks a row failed with the
reason "dropped by operator" rather than deleting it: the row keeps its place in
the unique (channel, ts, part) index, so a late Slack retry of the same message
cannot queue it again, it stays visible to ``outbox``, and ``outbox retry`` can
undo the drop. Slack is not told (no ⚠️ reaction) about an operator's drop.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlite_utils import Database

from migrations import migrations

# Rows an operator may want to act on: not yet sent, or refused.
LISTED_STATES = ("queued", "sending", "waiting", "failed")
PENDING = ("queued", "sending", "waiting")
DROPPED = "dropped by operator"
UNTIL_RECONNECTED = 1e15  # bridge.delivery parks rows for a reconnection at this next_attempt_at


class AdminError(Exception):
    """An operation could not be done; the message says why (exit code 1)."""


# -- the connection ------------------------------------------------------------------


@contextmanager
def connect(path: str) -> Iterator[Database]:
    """Open an existing bridge database (never creates one: a typo must not look like an empty bridge)."""
    if path != ":memory:" and not os.path.exists(path):
        raise AdminError(
            f"no database at {path}: check DATABASE_PATH (run `xdm-bridge migrate` to create a new one)"
        )
    conn = sqlite3.connect(path, isolation_level=None, timeout=10.0)
    db = Database(conn)
    try:
        db.execute("PRAGMA busy_timeout = 10000")
        db.execute("PRAGMA foreign_keys = ON")
        yield db
    finally:
        db.close()


def pending_migrations(db: Database) -> list[str]:
    return [m.name for m in migrations.pending(db)]


def _require_schema(db: Database) -> None:
    if not db["outbox"].exists() or not db["accounts"].exists():
        raise AdminError("the database has no bridge tables yet: run `xdm-bridge migrate`")


@contextmanager
def _write(db: Database) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front, so the read-check-update below is one step.
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


# -- reading -------------------------------------------------------------------------


def list_accounts(db: Database, now: float | None = None) -> list[dict[str, Any]]:
    """Connected X accounts, without their tokens."""
    _require_schema(db)
    now = time.time() if now is None else now
    rows = db.query(
        """
        SELECT a.id, a.team_id, a.slack_user_id, a.x_user_id, a.x_username, a.expires_at, a.scope,
               a.needs_reconnect, a.refresh_token IS NOT NULL AS has_refresh_token, a.created_at,
               a.disconnected_at,
               (SELECT COUNT(*) FROM mappings m WHERE m.account_id = a.id) AS mappings
        FROM accounts a ORDER BY a.team_id, a.x_username, a.id
        """
    )
    accounts = []
    for row in rows:
        expires_at = row["expires_at"]
        accounts.append(
            {
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
        )
    return accounts


def list_workspaces(db: Database) -> list[dict[str, Any]]:
    """Every Slack workspace the bridge knows (installed, or with accounts or channels), with its
    install (never its token) and how many accounts and channels it has; per workspace, so an
    operator of an "Add to Slack" bridge sees each one apart."""
    _require_schema(db)
    installs = db["slack_installations"].exists()
    install_columns = (
        "i.enterprise_id, i.team_name, i.installed_at, i.bot_token_expires_at, "
        "i.bot_refresh_token IS NOT NULL AS rotating, i.install_id IS NOT NULL AS installed"
        if installs
        else "NULL AS enterprise_id, NULL AS team_name, NULL AS installed_at, NULL AS bot_token_expires_at, "
        "0 AS rotating, 0 AS installed"
    )
    teams = "SELECT team_id FROM accounts UNION SELECT team_id FROM mappings"
    if installs:
        teams += " UNION SELECT team_id FROM slack_installations WHERE is_enterprise_install = 0"
    joined = (
        "LEFT JOIN slack_installations i ON i.team_id = t.team_id AND i.is_enterprise_install = 0"
        if installs
        else ""
    )
    rows = db.query(
        f"""
        SELECT t.team_id, {install_columns},
               (SELECT COUNT(*) FROM accounts a WHERE a.team_id = t.team_id
                AND a.disconnected_at IS NULL) AS accounts,
               (SELECT COUNT(*) FROM mappings m WHERE m.team_id = t.team_id) AS mappings,
               (SELECT COUNT(*) FROM mappings m WHERE m.team_id = t.team_id
                AND m.paused_at IS NOT NULL) AS paused
        FROM ({teams}) AS t {joined}
        ORDER BY t.team_id
        """
    )
    return [
        {**dict(row), "rotating": bool(row["rotating"]), "installed": bool(row["installed"])} for row in rows
    ]


def list_mappings(db: Database) -> list[dict[str, Any]]:
    _require_schema(db)
    rows = db.query(
        """
        SELECT m.team_id, m.channel_id, m.kind, m.conversation_id, m.participant_id, m.account_id,
               a.x_username, m.created_by, m.created_at
        FROM mappings m LEFT JOIN accounts a ON a.id = m.account_id
        ORDER BY m.team_id, m.channel_id
        """
    )
    return [dict(row) for row in rows]


def list_outbox(
    db: Database, states: Sequence[str] = LISTED_STATES, limit: int = 100, now: float | None = None
) -> list[dict[str, Any]]:
    """Rows in ``states``, oldest first, with their age and what they wait for."""
    _require_schema(db)
    now = time.time() if now is None else now
    marks = ",".join("?" * len(states))
    rows = db.query(
        f"SELECT * FROM outbox WHERE state IN ({marks}) ORDER BY seq, part LIMIT ?", [*states, limit]
    )
    return [_outbox_row(row, now) for row in rows]


def _outbox_row(row: dict[str, Any], now: float) -> dict[str, Any]:
    text = row["text"]
    if text is None:
        try:
            text = json.loads(row["source"] or "{}").get("text")
        except ValueError:
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


def outbox_summary(db: Database, now: float | None = None) -> dict[str, Any]:
    _require_schema(db)
    now = time.time() if now is None else now
    counts = {r["state"]: r["n"] for r in db.query("SELECT state, COUNT(*) AS n FROM outbox GROUP BY state")}
    marks = ",".join("?" * len(PENDING))
    oldest = next(
        iter(db.query(f"SELECT MIN(created_at) AS t FROM outbox WHERE state IN ({marks})", PENDING)), {}
    ).get("t")
    return {
        "counts": counts,
        "pending": sum(counts.get(s, 0) for s in PENDING),
        "failed": counts.get("failed", 0),
        "oldest_pending_age_seconds": round(now - oldest, 1) if oldest else None,
    }


# -- changing the outbox -------------------------------------------------------------


@dataclass
class Outcome:
    """What an outbox operation did, row by row."""

    done: list[int]
    skipped: dict[int, str]

    def as_json(self, verb: str) -> dict[str, Any]:
        return {verb: self.done, "skipped": [{"id": i, "reason": r} for i, r in self.skipped.items()]}


def retry(
    db: Database, ids: Sequence[int] = (), *, all_failed: bool = False, now: float | None = None
) -> Outcome:
    """Make rows due now: failed, waiting and queued rows become ``queued``.

    A ``sending`` row stays ``sending`` (only its next attempt moves): its earlier
    POST may have reached X, and the worker checks the conversation before any
    resend. Sent rows are not sent twice.
    """
    _require_schema(db)
    now = time.time() if now is None else now
    outcome = Outcome([], {})
    with _write(db):
        if all_failed:
            ids = [r["id"] for r in db.query("SELECT id FROM outbox WHERE state = 'failed' ORDER BY id")]
        for item_id in ids:
            row = _row(db, item_id)
            if row is None:
                outcome.skipped[item_id] = "no such outbox row"
            elif row["state"] == "sending":
                db.execute("UPDATE outbox SET next_attempt_at = ? WHERE id = ?", [now, item_id])
                outcome.done.append(item_id)
            elif row["state"] in ("failed", "waiting", "queued"):
                db.execute(
                    "UPDATE outbox SET state = 'queued', next_attempt_at = ? WHERE id = ?", [now, item_id]
                )
                outcome.done.append(item_id)
            else:
                outcome.skipped[item_id] = f"it is {row['state']}, not waiting or failed"
    return outcome


def drop(db: Database, ids: Sequence[int]) -> Outcome:
    """Give up on rows not yet sent: they become ``failed`` with the reason "dropped by operator"."""
    _require_schema(db)
    outcome = Outcome([], {})
    with _write(db):
        for item_id in ids:
            row = _row(db, item_id)
            if row is None:
                outcome.skipped[item_id] = "no such outbox row"
            elif row["state"] in PENDING:
                db.execute(
                    "UPDATE outbox SET state = 'failed', last_error = ? WHERE id = ?", [DROPPED, item_id]
                )
                outcome.done.append(item_id)
            elif row["state"] == "failed":
                outcome.skipped[item_id] = "it had already failed"
            else:
                outcome.skipped[item_id] = f"it is {row['state']}; only unsent rows can be dropped"
    return outcome


def _row(db: Database, item_id: int) -> dict[str, Any] | None:
    return next(iter(db.query("SELECT id, state FROM outbox WHERE id = ?", [item_id])), None)


# -- formatting ----------------------------------------------------------------------


def age(seconds: float | None) -> str:
    """45s, 12m, 3h, 2d."""
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M UTC")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; the last column is left ragged."""
    cells = [[str(h) for h in headers], *[["" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def short(text: str | None, width: int) -> str:
    if not text:
        return ""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def accounts_text(accounts: list[dict[str, Any]], now: float) -> str:
    if not accounts:
        return "No X accounts connected. People connect theirs with /xdm connect in Slack."
    rows = []
    for a in accounts:
        if a.get("disconnected_at") is not None:
            status = "disconnected"
        elif a["needs_reconnect"]:
            status = "NEEDS RECONNECT"
        elif a["token_expired"]:
            status = "token expired (refreshed on next send)" if a["has_refresh_token"] else "EXPIRED"
        else:
            status = "ok"
        expires = a["token_expires_at"]
        valid = "-" if expires is None else ("expired" if expires <= now else age(expires - now))
        rows.append(
            [
                a["id"],
                a["team_id"],
                a["slack_user_id"],
                "@" + a["x_username"],
                a["x_user_id"],
                status,
                valid,
                "yes" if a["has_refresh_token"] else "no",
                a["mappings"],
            ]
        )
    headers = [
        "ID",
        "TEAM",
        "SLACK USER",
        "X ACCOUNT",
        "X USER ID",
        "STATUS",
        "TOKEN VALID",
        "REFRESH",
        "MAPPINGS",
    ]
    return table(headers, rows)


def workspaces_text(workspaces: list[dict[str, Any]]) -> str:
    if not workspaces:
        return "No Slack workspace yet. Workspaces install the app at {PUBLIC_URL}/slack/install."
    rows = [
        [
            w["team_id"],
            w["enterprise_id"] or "-",
            w["team_name"] or "-",
            f"since {when(w['installed_at'])}"
            if w["installed"]
            else "no (one bot token, or removed: channels paused)",
            "rotating" if w["rotating"] else "-",
            w["accounts"],
            w["mappings"],
            w["paused"],
        ]
        for w in workspaces
    ]
    headers = ["TEAM", "ENTERPRISE", "NAME", "INSTALLED", "TOKEN", "ACCOUNTS", "CHANNELS", "PAUSED"]
    return table(headers, rows)


def mappings_text(mappings: list[dict[str, Any]]) -> str:
    if not mappings:
        return "No channels are bridged. Map one with /xdm in Slack."
    rows = []
    for m in mappings:
        if m["conversation_id"]:
            target = m["conversation_id"]
        else:
            target = f"with X user {m['participant_id']} (not sent yet)"
        account = f"@{m['x_username']}" if m["x_username"] else f"account {m['account_id']} (gone)"
        rows.append(
            [
                m["team_id"],
                m["channel_id"],
                m["kind"],
                target,
                account,
                m["created_by"],
                when(m["created_at"]),
            ]
        )
    return table(["TEAM", "CHANNEL", "KIND", "X CONVERSATION", "SENDS AS", "MAPPED BY", "SINCE"], rows)


def outbox_text(items: list[dict[str, Any]], summary: dict[str, Any], now: float) -> str:
    counts = ", ".join(f"{n} {state}" for state, n in sorted(summary["counts"].items())) or "empty"
    head = f"Outbox: {counts}."
    if not items:
        return head + "\nNothing is waiting or failed."
    rows = []
    for i in items:
        if i["state"] == "failed":
            due = "-"
        elif i["waiting_for_reconnect"]:
            due = "on reconnect"
        elif i["next_attempt_at"] is None or i["next_attempt_at"] <= now:
            due = "now"
        else:
            due = "in " + age(i["next_attempt_at"] - now)
        part = f"{i['part'] + 1}/{i['parts_total']}" if i["parts_total"] > 1 else ""
        rows.append(
            [
                i["id"],
                i["state"],
                age(i["age_seconds"]),
                i["attempts"],
                due,
                i["channel_id"],
                i["slack_ts"] + (f" #{part}" if part else ""),
                short(i["last_error"], 100),
            ]
        )
    return (
        head
        + "\n"
        + table(["ID", "STATE", "AGE", "TRIES", "NEXT", "CHANNEL", "SLACK TS", "LAST ERROR"], rows)
    )


def accounts_with_tokens(db: Database) -> list[dict[str, Any]]:
    """For ``doctor`` only: accounts with their token ciphertexts (decrypted by the caller, never printed)."""
    _require_schema(db)
    return [
        dict(row)
        for row in db.query(
            "SELECT id, team_id, slack_user_id, x_user_id, x_username, access_token, refresh_token, "
            "expires_at, scope, needs_reconnect FROM accounts ORDER BY id"
        )
    ]
