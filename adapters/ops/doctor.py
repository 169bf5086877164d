"""``xdm-bridge doctor``: is this deployment able to work? Each problem comes with its fix.

Checks, in order: the configuration (exit 2 when it is broken), the database and
its migrations, Slack (``auth.test`` with the bot token, and the token's scopes
when Slack reports them), then every connected X account (``GET /2/users/me``).

An expired access token is reported, not refreshed. X refresh tokens are
single-use: each refresh returns a new one and the old one stops working. The
server serialises refreshes per account with a lock that only it holds, so a
second process refreshing at the same moment could spend the refresh token the
server is about to use, and the account would then need ``/xdm connect`` again.
The server refreshes on the next send anyway, so reporting costs nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.ops import admin
from adapters.ops.config_doc import fix_for
from adapters.slack.api import SLACK_TOKEN_REFUSED, TOKEN_FIX
from adapters.slack.scopes import BOT_SCOPES
from adapters.store import sqlite
from adapters.store.crypto import TokenCipher
from adapters.store.operator import OperatorStore
from adapters.store.select import describe, operator_engine
from adapters.x.api import XApiClient, XAppClient
from bridge.errors import ConfigError, StoreUnavailable, XAuthExpired, XError, XRateLimited, XRefused
from bridge.settings import SCOPES, Settings

Status = Literal["ok", "warn", "fail"]
EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
EXPIRY_LEEWAY = 60.0
REQUEST_TIMEOUT = 10.0
STUCK_AFTER = 3600.0  # an unsent row older than this is worth a look


@dataclass
class Check:
    name: str
    status: Status
    detail: str
    fix: str | None = None


@dataclass
class Report:
    checks: list[Check]
    exit_code: int

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.exit_code == EXIT_OK,
            "exit_code": self.exit_code,
            "checks": [asdict(c) for c in self.checks],
        }

    def text(self) -> str:
        marks = {"ok": "[ok]  ", "warn": "[warn]", "fail": "[FAIL]"}
        lines = []
        for check in self.checks:
            lines.append(f"{marks[check.status]} {check.name}: {check.detail}")
            if check.fix:
                lines.append(f"       fix: {check.fix}")
        failed = sum(c.status == "fail" for c in self.checks)
        warned = sum(c.status == "warn" for c in self.checks)
        if self.exit_code == EXIT_CONFIG:
            lines.append("The configuration is broken; nothing else was checked.")
        elif failed:
            lines.append(f"{failed} problem(s), {warned} warning(s).")
        else:
            lines.append(f"All checks passed ({warned} warning(s)).")
        return "\n".join(lines)


async def run(env: Mapping[str, str] | None = None) -> Report:
    """Run every check; never raises for a problem it can describe."""
    try:
        settings = Settings.from_env(env)
    except ConfigError as exc:
        problems = [
            Check("configuration", "fail", line, fix_for(line)) for line in str(exc).splitlines() if line
        ]
        return Report(problems, EXIT_CONFIG)
    checks = configuration(settings)
    accounts, mapped_teams = await database(settings, checks)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await slack(settings, session, mapped_teams, checks)
        await x_accounts(settings, session, accounts, checks)
        await push(settings, session, checks)
    failed = any(c.status == "fail" for c in checks)
    return Report(checks, EXIT_FAILED if failed else EXIT_OK)


def install_mode(settings: Settings) -> Check:
    """ "Add to Slack" installs: no one token to test; Slack needs the redirect URL to come back to."""
    if settings.slack_redirect_uri is None:
        return Check(
            "slack",
            "fail",
            "install mode (SLACK_CLIENT_ID/SLACK_CLIENT_SECRET), but PUBLIC_URL is not set: Slack cannot "
            "send installers back",
            "set PUBLIC_URL and add {PUBLIC_URL}/slack/oauth_redirect to the Slack app's Redirect URLs",
        )
    return Check(
        "slack",
        "ok",
        f"install mode: workspaces add the app at {settings.public_url}/slack/install (Slack's redirect "
        f"URL must be {settings.slack_redirect_uri}); `xdm-bridge workspaces` lists them",
    )


def configuration(settings: Settings) -> list[Check]:
    checks = [Check("configuration", "ok", "every required variable is set and valid")]
    if settings.public_url is None:
        checks.append(
            Check(
                "PUBLIC_URL",
                "warn",
                "not set, so /xdm connect cannot send people to X and back",
                "set PUBLIC_URL to the bridge's public https origin and register "
                "{PUBLIC_URL}/x/oauth/callback as the X app's callback URL",
            )
        )
    elif not settings.public_url.startswith("https://"):
        checks.append(
            Check(
                "PUBLIC_URL",
                "warn",
                f"{settings.public_url} is not https; Slack and X only call https URLs in production",
                "serve the bridge behind https (every platform in the README does) and use that URL",
            )
        )
    return checks


async def database(settings: Settings, checks: list[Check]) -> tuple[list[dict[str, Any]] | None, set[str]]:
    """Check the database (there, migrated, readable); return the accounts (with ciphertexts; None
    when the database could not be read) and the teams that have mappings. Nothing is migrated."""
    import asyncpg

    location = settings.database_url or settings.database_path
    where = describe(settings)
    try:
        async with operator_engine(location) as engine:
            pending = await _pending_migrations(settings)
            if pending:
                checks.append(
                    Check(
                        "database",
                        "fail",
                        f"{where}: {len(pending)} migration(s) pending ({', '.join(pending)})",
                        "run `xdm-bridge migrate` (the release phase does; `serve` applies them at start)",
                    )
                )
                return None, set()
            store = OperatorStore(engine)
            accounts = await store.accounts_with_tokens()
            teams = await store.mapped_teams()
            summary = await store.outbox_summary(time.time())
    except StoreUnavailable as exc:  # no file at DATABASE_PATH
        fix = (
            "point DATABASE_PATH at the bridge's SQLite file (on the persistent disk); "
            "`xdm-bridge migrate` creates a new one"
        )
        checks.append(Check("database", "fail", str(exc), fix))
        return None, set()
    except (OSError, asyncpg.PostgresError) as exc:
        fix = "check DATABASE_URL (host, password, sslmode) and that the database accepts connections"
        checks.append(Check("database", "fail", f"{where}: {exc}", fix))
        return None, set()
    except Exception as exc:
        checks.append(
            Check("database", "fail", f"{where}: {exc}", "check the file is a bridge database and readable")
        )
        return None, set()
    checks.append(
        Check(
            "database",
            "ok",
            f"{where}: schema up to date; {len(accounts)} account(s), "
            f"{len(teams)} workspace(s) with bridged channels",
        )
    )
    checks.extend(_outbox_checks(summary))
    return accounts, teams


async def _pending_migrations(settings: Settings) -> list[str]:
    """Names of the migrations not yet applied (the database is known to exist)."""
    if settings.database_url:
        from adapters.store import postgres
        from migrations import postgres as pg_migrations

        conn = await postgres.connect(settings.database_url)
        try:
            return await pg_migrations.pending(conn)
        finally:
            await conn.close()
    return await asyncio.to_thread(sqlite.pending_migrations, settings.database_path)


def _outbox_checks(summary: dict[str, Any]) -> list[Check]:
    checks = []
    if summary["failed"]:
        checks.append(
            Check(
                "outbox",
                "warn",
                f"{summary['failed']} message(s) failed for good",
                "see why with `xdm-bridge outbox`; `xdm-bridge outbox retry --all-failed` tries them again",
            )
        )
    oldest = summary["oldest_pending_age_seconds"]
    if oldest is not None and oldest > STUCK_AFTER:
        checks.append(
            Check(
                "outbox",
                "warn",
                f"{summary['pending']} message(s) unsent, the oldest for {admin.age(oldest)}",
                "`xdm-bridge outbox` shows what each waits for (a rate limit, a reconnection, X errors)",
            )
        )
    return checks


async def slack(
    settings: Settings, session: aiohttp.ClientSession, mapped_teams: set[str], checks: list[Check]
) -> None:
    if settings.slack_install_mode:
        checks.append(install_mode(settings))
        return
    client = AsyncWebClient(
        token=settings.bot_token,
        base_url=settings.slack_api_url,
        session=session,
        timeout=int(REQUEST_TIMEOUT),
    )
    try:
        response = await client.auth_test()
    except SlackApiError as exc:
        error = str(exc.response.get("error") or exc.response.status_code)
        if error in SLACK_TOKEN_REFUSED:
            fix = TOKEN_FIX
        else:
            fix = "see https://api.slack.com/methods/auth.test for this error"
        checks.append(Check("slack", "fail", f"auth.test failed: {error}", fix))
        return
    except (aiohttp.ClientError, TimeoutError) as exc:
        checks.append(
            Check(
                "slack",
                "fail",
                f"could not reach Slack at {settings.slack_api_url} ({type(exc).__name__})",
                "check SLACK_API_URL (normally unset) and outbound network access",
            )
        )
        return
    team_id = str(response.get("team_id") or "")
    checks.append(
        Check("slack", "ok", f"bot @{response.get('user')} in workspace {response.get('team')} ({team_id})")
    )
    granted = _header(response.headers, "x-oauth-scopes")
    if granted is not None:
        missing = sorted(BOT_SCOPES - {s.strip() for s in granted.split(",") if s.strip()})
        if missing:
            checks.append(
                Check(
                    "slack scopes",
                    "fail",
                    f"the bot token lacks {', '.join(missing)}",
                    "add them under OAuth & Permissions (or recreate the app from manifest.yml), reinstall "
                    "the app to the workspace, and update SLACK_BOT_TOKEN",
                )
            )
    for team in sorted(mapped_teams - {team_id}):
        checks.append(
            Check(
                "slack",
                "warn",
                f"channels of workspace {team} are bridged, but the bot token belongs to {team_id}",
                "use the bot token of the workspace the channels are in",
            )
        )


def _header(headers: Any, name: str) -> str | None:
    for key, value in dict(headers or {}).items():
        if str(key).lower() == name:
            return str(value)
    return None


async def x_accounts(
    settings: Settings,
    session: aiohttp.ClientSession,
    accounts: list[dict[str, Any]] | None,
    checks: list[Check],
) -> None:
    if accounts is None:
        # Not "no account yet": nobody knows until the database answers (its own check says why).
        checks.append(Check("x", "warn", "not checked: the database could not be read (see above)"))
        return
    if not accounts:
        checks.append(
            Check("x", "warn", "no X account is connected yet", "in Slack, run /xdm connect in any channel")
        )
        return
    cipher = TokenCipher(settings.encryption_keys)
    x = XApiClient(session, settings.x_api_url, timeout=min(REQUEST_TIMEOUT, settings.x_timeout_seconds))
    for account in accounts:
        checks.append(await _x_account(account, cipher, x, time.time()))


async def _x_account(account: dict[str, Any], cipher: TokenCipher, x: XApiClient, now: float) -> Check:
    name = f"x @{account['x_username']}"
    owner = f"the Slack user {account['slack_user_id']} (workspace {account['team_id']})"
    reconnect = f"{owner} runs /xdm connect (messages for this account wait until then)"
    if account["needs_reconnect"]:
        return Check(
            name, "fail", "X refused the bridge's refresh token; the account needs reconnecting", reconnect
        )
    missing = [s for s in SCOPES if account["scope"] and s not in account["scope"].split()]
    try:
        token = cipher.decrypt(account["access_token"])
    except ConfigError:
        return Check(
            name,
            "fail",
            "its tokens cannot be decrypted with BRIDGE_ENCRYPTION_KEY",
            "put back the key that encrypted them (comma-separated, newest first), or " + reconnect,
        )
    expires_at = account["expires_at"]
    if expires_at is not None and expires_at - EXPIRY_LEEWAY <= now:
        if account["refresh_token"]:
            return Check(
                name,
                "ok",
                "access token expired; the server refreshes it on the next send "
                "(doctor does not: refresh tokens are single-use and the server owns their rotation)",
            )
        return Check(name, "fail", "access token expired and there is no refresh token", reconnect)
    try:
        user = await x.me(token)
    except XAuthExpired:
        return Check(
            name,
            "fail",
            "X rejected the access token (revoked at x.com/settings/connected_apps?)",
            "the server tries the refresh token on the next send; if X refuses it, " + reconnect,
        )
    except XRateLimited as exc:
        until = admin.age(max(0.0, exc.reset_at - now))
        return Check(name, "warn", f"X's /2/users/me rate limit is spent; try again in {until}")
    except XRefused as exc:
        return Check(name, "fail", str(exc), _x_refusal_fix(str(exc), reconnect))
    except XError as exc:
        return Check(
            name, "fail", str(exc), "check X_API_URL (normally unset), outbound network, and X's status"
        )
    if user.id != account["x_user_id"]:
        return Check(
            name,
            "warn",
            f"the token now belongs to @{user.username} ({user.id}), not {account['x_user_id']}",
            reconnect,
        )
    if missing:
        return Check(
            name,
            "fail",
            f"token works but lacks the scope(s) {', '.join(missing)}",
            "give the X app Direct Message permission (User authentication settings: Read and write and "
            "Direct message), then " + reconnect,
        )
    valid = "no expiry" if expires_at is None else f"valid for {admin.age(expires_at - now)}"
    return Check(name, "ok", f"token works ({valid}), owned by {owner}")


async def push(settings: Settings, session: aiohttp.ClientSession, checks: list[Check]) -> None:
    """X's push (optional): is our webhook registered and valid?"""
    if settings.push_url is None or settings.x_bearer_token is None:
        checks.append(
            Check(
                "x push",
                "ok",
                "not configured: replies from X arrive by polling (set X_CONSUMER_SECRET and "
                "X_BEARER_TOKEN for real time)",
            )
        )
        return
    x = XApiClient(session, settings.x_api_url, timeout=min(REQUEST_TIMEOUT, settings.x_timeout_seconds))
    try:
        webhooks = await XAppClient(x, settings.x_bearer_token).list_webhooks()
    except XError as exc:
        checks.append(
            Check(
                "x push",
                "fail",
                f"X refused the app Bearer token: {exc}",
                "check X_BEARER_TOKEN (Keys and tokens)",
            )
        )
        return
    mine = next((w for w in webhooks if w.get("url") == settings.push_url), None)
    if mine is None:
        checks.append(
            Check(
                "x push",
                "warn",
                f"no webhook registered for {settings.push_url}; polling carries on",
                "start the server (it registers itself), or run `xdm-bridge webhook register` while it runs",
            )
        )
    elif not mine.get("valid"):
        checks.append(
            Check(
                "x push",
                "warn",
                f"webhook {mine['id']} is invalid (X stopped pushing); polling carries on",
                "check X_CONSUMER_SECRET is the API Key Secret, then `xdm-bridge webhook register`",
            )
        )
    else:
        checks.append(Check("x push", "ok", f"webhook {mine['id']} is valid for {settings.push_url}"))


def _x_refusal_fix(message: str, reconnect: str) -> str:
    if "Project" in message or "client-not-enrolled" in message or "Client Forbidden" in message:
        return (
            "attach the X app to a Project in the developer portal, on an access level that includes "
            "Direct Messages (pay-per-use or Pro)"
        )
    if "Unsupported Authentication" in message:
        return "the token is app-only; the bridge needs user tokens: " + reconnect
    return (
        "check the X app's User authentication settings (Web App, Read and write and Direct message), "
        "then " + reconnect
    )
