"""Every environment variable ``bridge.settings`` reads, with its meaning and default.

One table feeds ``xdm-bridge doctor`` (the fix printed next to a configuration
problem), and the tests check that ``.env.example``, ``app.json`` and
``docs/configuration.md`` list exactly these names and that ``bridge/settings.py`` reads exactly these.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EnvVar:
    name: str
    meaning: str
    default: str | None  # None: required (or, where ``required`` is False, unset by default)
    required: bool = False
    secret: bool = False


ENV_VARS: tuple[EnvVar, ...] = (
    EnvVar(
        "SLACK_SIGNING_SECRET",
        "the Slack app's Signing Secret (Basic Information → App Credentials)",
        None,
        required=True,
        secret=True,
    ),
    EnvVar(
        "SLACK_BOT_TOKEN",
        "the Bot User OAuth Token, xoxb-… (OAuth & Permissions, after installing the app), for one "
        'workspace; unset when SLACK_CLIENT_ID and SLACK_CLIENT_SECRET select "Add to Slack" installs',
        None,
        required=True,
        secret=True,
    ),
    EnvVar(
        "SLACK_CLIENT_ID",
        "the Slack app's Client ID (Basic Information → App Credentials): with SLACK_CLIENT_SECRET and "
        "no SLACK_BOT_TOKEN, workspaces install the app at {PUBLIC_URL}/slack/install",
        None,
    ),
    EnvVar(
        "SLACK_CLIENT_SECRET",
        "the Slack app's Client Secret (Basic Information → App Credentials), for installs",
        None,
        secret=True,
    ),
    EnvVar("X_CLIENT_ID", "the X app's OAuth 2.0 Client ID (Keys and tokens)", None, required=True),
    EnvVar(
        "X_CLIENT_SECRET",
        "the X app's OAuth 2.0 Client Secret (a Web App is a confidential client); unset for a public client",
        None,
        secret=True,
    ),
    EnvVar(
        "X_CONSUMER_SECRET",
        "the X app's OAuth 1.0a API Key Secret (Keys and tokens); X signs webhook deliveries with "
        "it. With X_BEARER_TOKEN and PUBLIC_URL it turns on push at {PUBLIC_URL}/x/webhook",
        None,
        secret=True,
    ),
    EnvVar(
        "X_BEARER_TOKEN",
        "the X app's Bearer Token (Keys and tokens), which manages the webhook and its subscriptions",
        None,
        secret=True,
    ),
    EnvVar(
        "BRIDGE_ENCRYPTION_KEY",
        "Fernet key(s) encrypting X tokens at rest, comma-separated, newest first; "
        "`xdm-bridge keygen` prints one",
        None,
        required=True,
        secret=True,
    ),
    EnvVar(
        "PUBLIC_URL",
        "the bridge's public https origin; X sends people back to {PUBLIC_URL}/x/oauth/callback "
        "(needed for /xdm connect)",
        None,
    ),
    EnvVar("PORT", "HTTP port to listen on (platforms set it)", "3000"),
    EnvVar(
        "DATABASE_URL",
        "a postgres:// or postgresql:// URL (Heroku Postgres, Render, Fly, Neon set it; sslmode honoured): "
        "everything is kept in PostgreSQL; unset: SQLite",
        None,
        secret=True,
    ),
    EnvVar(
        "DATABASE_PATH",
        "the SQLite file, when DATABASE_URL is unset; put it on a persistent disk (see Persistence)",
        "bridge.db",
    ),
    EnvVar(
        "LITESTREAM_REPLICA_URL",
        "SQLite only: a Litestream replica URL (s3://bucket/path, file:///path, …); serve restores the "
        "database from it when the file is missing and replicates to it while it runs",
        None,
        secret=True,
    ),
    EnvVar(
        "SLACK_API_URL", "Slack Web API base URL (tests and the sandbox change it)", "https://slack.com/api/"
    ),
    EnvVar(
        "SLACK_AUTHORIZE_URL",
        "Slack's OAuth v2 authorize page, for installs (the sandbox changes it)",
        "https://slack.com/oauth/v2/authorize",
    ),
    EnvVar("X_API_URL", "X API base URL", "https://api.x.com"),
    EnvVar("X_AUTHORIZE_URL", "X's OAuth 2.0 authorize page", "https://x.com/i/oauth2/authorize"),
    EnvVar("X_TOKEN_URL", "X's OAuth 2.0 token endpoint", "{X_API_URL}/2/oauth2/token"),
    EnvVar(
        "X_USER_LIMIT_15M",
        "a ceiling on DM sends per X account per 15 minutes; X's headers may lower it, never raise it. "
        "Unset: start from X's documented 15 and follow X's headers either way",
        None,
    ),
    EnvVar(
        "X_USER_LIMIT_24H",
        "a ceiling on DM sends per X account per 24 hours (unset: X's documented 1,440, then X's headers)",
        None,
    ),
    EnvVar(
        "X_APP_LIMIT_24H",
        "a ceiling on DM sends per X app per 24 hours (unset: X's documented 1,440, then X's headers)",
        None,
    ),
    EnvVar(
        "X_READ_LIMIT_15M",
        "a ceiling on DM event reads per X account per 15 minutes and read endpoint (X counts each "
        "apart: polling, placing pushed DMs, history); X's headers may lower it, never raise it. "
        "Unset: X's documented 15",
        None,
    ),
    EnvVar(
        "INBOUND_POLL_SECONDS",
        "how often an idle X account is read for new DMs, at most (busy ones are read as often as "
        "X's read budget allows)",
        "180",
    ),
    EnvVar(
        "SLACK_POSTS_PER_SECOND",
        "posts to one Slack channel per second at most, as Slack allows (short bursts of 3); "
        "0: not paced, Slack's 429s still hold the channel",
        "1",
    ),
    EnvVar(
        "BACKFILL_MESSAGES",
        "messages of history posted once when a channel is linked to a conversation (0 for none)",
        "20",
    ),
    EnvVar("X_TIMEOUT_SECONDS", "timeout of one request to X, in seconds", "20"),
    EnvVar(
        "X_RETRY_CAP_SECONDS",
        "the longest wait before trying X again when X gave no time (backoff after failures; "
        "a 429 without a usable reset waits at most 60 s, or this if shorter)",
        "300",
    ),
    EnvVar(
        "RELAY_FORMAT",
        "how a relayed message reads on X; may use {name}, must use {text} exactly once, nothing else",
        "{name}: {text}",
    ),
    EnvVar(
        "RELAY_THREADS",
        "which thread replies are relayed: all, broadcast (only 'also send to channel') or none",
        "all",
    ),
    EnvVar(
        "RELAY_EDITS",
        "what editing a relayed Slack message does: correction (the new text replaces it if not "
        "yet sent, else a correction DM follows) or ignore",
        "correction",
    ),
    EnvVar(
        "RETENTION_DAYS",
        "days a relayed message is kept so that editing or deleting it in Slack reaches X "
        "(X's own event window is 30); older finished rows are pruned hourly",
        "30",
    ),
    EnvVar(
        "XDM_ADMIN_ONLY",
        "1: only workspace admins and owners may bridge channels (anyone may still unlink their own)",
        "0",
    ),
    EnvVar(
        "XDM_ALLOWED_USERS",
        "Slack user ids (comma-separated) who may bridge channels; admins and owners always may. "
        "Unset: everyone",
        None,
    ),
    EnvVar(
        "METRICS_TOKEN",
        "bearer token /metrics requires, and that /healthz needs for its details; unset: /metrics answers "
        "only requests from this machine",
        None,
        secret=True,
    ),
    EnvVar("LOG_LEVEL", "debug, info, warning or error", "info"),
    EnvVar("LOG_FORMAT", "json, text, or auto (text on a terminal, JSON otherwise)", "auto"),
)

BY_NAME = {var.name: var for var in ENV_VARS}


def fix_for(problem: str) -> str:
    """The fix to print under one ``ConfigError`` line, which always starts with the variable's name."""
    name = problem.split("=", 1)[0].split(" ", 1)[0]
    var = BY_NAME.get(name)
    if var is None:
        return "see docs/configuration.md"
    return f"set {name}: {var.meaning} (see .env.example)"
