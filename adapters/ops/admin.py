"""How the operator's commands print what they read: ``mappings``, ``accounts``, ``workspaces``
and ``outbox`` as text tables (``--json`` prints the rows themselves).

The rows come from ``adapters.store.operator`` (one SQL for both engines); nothing here
touches a database or prints a token.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

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
