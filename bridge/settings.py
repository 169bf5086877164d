"""One frozen ``Settings`` object, built once from the environment.

Nothing else in the code base reads ``os.environ``. Every problem found is
reported as one line naming the variable, so an operator can fix it without
reading code.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from bridge.errors import ConfigError
from bridge.translate import render_parts

SCOPES = ("dm.read", "dm.write", "tweet.read", "users.read", "offline.access", "media.write")
KEYGEN_HINT = "run `xdm-bridge keygen --save .env` to keep one in .env, which every command reads"
DEFAULT_RELAY_FORMAT = "{name}: {text}"

ThreadPolicy = Literal["all", "broadcast", "none"]
EditPolicy = Literal["correction", "ignore"]
LogFormat = Literal["auto", "json", "text"]


@dataclass(frozen=True)
class Settings:
    """Validated configuration. Secrets are kept out of ``repr``."""

    signing_secret: str = field(repr=False)
    bot_token: str = field(repr=False)
    x_client_id: str
    encryption_keys: tuple[str, ...] = field(repr=False)
    x_client_secret: str | None = field(default=None, repr=False)
    x_consumer_secret: str | None = field(default=None, repr=False)
    x_bearer_token: str | None = field(default=None, repr=False)
    port: int = 3000
    database_path: str = "bridge.db"
    # PostgreSQL when set (it may hold a password, so it stays out of ``repr``); SQLite otherwise.
    database_url: str | None = field(default=None, repr=False)
    # SQLite only: serve restores from and replicates to this Litestream replica.
    litestream_replica_url: str | None = field(default=None, repr=False)
    slack_api_url: str = "https://slack.com/api/"
    public_url: str | None = None
    x_api_url: str = "https://api.x.com"
    x_authorize_url: str = "https://x.com/i/oauth2/authorize"
    x_token_url: str = "https://api.x.com/2/oauth2/token"
    # None: not set, so X's documented limit is only a starting point that X's headers move
    # either way; a number: the operator's ceiling, which X's headers may lower but never raise.
    x_user_limit_15m: int | None = None
    x_user_limit_24h: int | None = None
    x_app_limit_24h: int | None = None
    x_read_limit_15m: int | None = None  # as above, for DM event reads (X documents 15)
    backfill_messages: int = 20
    inbound_poll_seconds: float = 180.0
    slack_posts_per_second: float = 1.0  # per channel (Slack's own pace); 0: not paced
    x_timeout_seconds: float = 20.0
    x_retry_cap_seconds: float = 300.0
    relay_format: str = "{name}: {text}"
    relay_threads: ThreadPolicy = "all"
    relay_edits: EditPolicy = "correction"
    retention_days: int = 30
    log_level: str = "INFO"
    log_format: LogFormat = "auto"
    admin_only: bool = False
    allowed_users: frozenset[str] = frozenset()
    metrics_token: str | None = field(default=None, repr=False)
    # Install mode ("Add to Slack"): the app's OAuth credentials instead of one bot token.
    slack_client_id: str | None = None
    slack_client_secret: str | None = field(default=None, repr=False)
    slack_authorize_url: str = "https://slack.com/oauth/v2/authorize"

    @property
    def slack_install_mode(self) -> bool:
        """Many workspaces, each installing the app ("Add to Slack"), instead of one bot token."""
        return bool(self.slack_client_id and self.slack_client_secret)

    @property
    def slack_redirect_uri(self) -> str | None:
        """Where Slack sends the browser back after an install, or None without ``PUBLIC_URL``."""
        return f"{self.public_url}/slack/oauth_redirect" if self.public_url else None

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every configured secret's value, for the log filter to mask: each field kept out of
        ``repr`` (push's consumer secret and bearer token were missing, and a database URL may
        hold a password)."""
        values = (
            self.signing_secret,
            self.bot_token,
            self.slack_client_secret,
            self.x_client_secret,
            self.x_consumer_secret,
            self.x_bearer_token,
            self.metrics_token,
            self.database_url,
            self.litestream_replica_url,
        )
        return tuple(v for v in (*values, *self.encryption_keys) if v)

    @property
    def redirect_uri(self) -> str | None:
        """Where X sends the browser back after consent, or None without ``PUBLIC_URL``."""
        return f"{self.public_url}/x/oauth/callback" if self.public_url else None

    @property
    def push_url(self) -> str | None:
        """Where X pushes DMs, when push is configured (both secrets and ``PUBLIC_URL``)."""
        if self.public_url and self.x_consumer_secret and self.x_bearer_token:
            return f"{self.public_url}/x/webhook"
        return None

    @property
    def x_confidential(self) -> bool:
        """With a client secret X wants HTTP Basic on the token endpoint."""
        return bool(self.x_client_secret)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build from ``env`` (default ``os.environ``); raise ``ConfigError`` listing every problem."""
        return _Reader(os.environ if env is None else env).build()


class _Reader:
    """Collects problems instead of stopping at the first, so one start shows them all."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []
        self.placeholders: set[str] = set()

    def get(self, name: str) -> str | None:
        value = self.env.get(name, "").strip()
        if not value:
            return None
        shown = placeholder(name, value)
        if shown is not None:
            if name not in self.placeholders:
                self.placeholders.add(name)
                self.problems.append(
                    f"{name} still holds a placeholder ({shown}) from the README or .env.example: "
                    "put the real value there"
                )
            return None
        return value

    def required(self, name: str, meaning: str) -> str:
        value = self.get(name)
        if value is None:
            if name not in self.placeholders:
                self.problems.append(f"{name} {self._unset(name)}: {meaning}")
            return ""
        return value

    def _unset(self, name: str) -> str:
        """'is not set', or 'is empty' with the usual cause: a ``$(…)`` whose command failed."""
        if name in self.env:
            return "is empty (a $(…) whose command failed, e.g. not on the PATH, leaves it so)"
        return "is not set"

    def limit(self, name: str, *, high: int) -> int | None:
        """A rate-limit ceiling, or None when unset (X's documented figure, moved by its headers)."""
        if self.get(name) is None:
            return None
        return self.integer(name, 1, low=1, high=high)

    def public_url(self) -> str | None:
        url = self.url("PUBLIC_URL", None)
        if url is None:
            return None
        parts = urlsplit(url)
        if parts.scheme != "https" and not _is_loopback(parts.hostname or ""):
            self.problems.append(
                f"PUBLIC_URL={url!r} must be https: Slack and X call it from the internet "
                "(plain http only for localhost or 127.0.0.1)"
            )
            return None
        if parts.query or parts.fragment or "@" in parts.netloc:
            # Paths are appended to it ({PUBLIC_URL}/x/oauth/callback): anything after them breaks.
            self.problems.append(
                f"PUBLIC_URL={url!r} must be the bridge's origin, like https://bridge.example.org, "
                "with no user name, query (?) or fragment (#)"
            )
            return None
        # X compares the callback URL letter for letter with the one registered: scheme and
        # host in the one spelling they have (lower case), whatever case was typed here.
        origin = parts._replace(scheme=parts.scheme.lower(), netloc=parts.netloc.lower())
        return origin.geturl().rstrip("/")

    def integer(self, name: str, default: int, *, low: int, high: int) -> int:
        raw = self.get(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            self.problems.append(f"{name}={raw!r} is not a whole number")
            return default
        if not low <= value <= high:
            self.problems.append(f"{name}={value} is out of range ({low} to {high})")
            return default
        return value

    def number(self, name: str, default: float, *, low: float, high: float) -> float:
        raw = self.get(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            self.problems.append(f"{name}={raw!r} is not a number")
            return default
        if not low <= value <= high:
            self.problems.append(f"{name}={value} is out of range ({low} to {high})")
            return default
        return value

    def url(self, name: str, default: str | None) -> str | None:
        raw = self.get(name)
        if raw is None:
            return default
        parts = urlsplit(raw)
        try:
            parts.port  # noqa: B018 (raises on a port out of range or not a number)
        except ValueError:
            self.problems.append(f"{name}={raw!r} has a port that is not a number from 1 to 65535")
            return default
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.problems.append(f"{name}={raw!r} is not an http(s) URL")
            return default
        return raw

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        raw = self.get(name)
        if raw is None:
            return default
        if raw.lower() not in allowed:
            self.problems.append(f"{name}={raw!r} must be one of: {', '.join(allowed)}")
            return default
        return raw.lower()

    def flag(self, name: str) -> bool:
        raw = self.get(name)
        if raw is None:
            return False
        value = raw.lower()
        if value not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
            self.problems.append(f"{name}={raw!r} must be 1 or 0")
            return False
        return value in ("1", "true", "yes", "on")

    def slack_user_ids(self, name: str) -> frozenset[str]:
        raw = self.get(name)
        if raw is None:
            return frozenset()
        ids = [part.strip() for part in raw.split(",") if part.strip()]
        bad = [i for i in ids if not _SLACK_USER_ID.match(i)]
        if bad:
            self.problems.append(
                f"{name} holds {', '.join(repr(b) for b in bad)}: "
                "give Slack user ids (U…/W…), comma-separated"
            )
        return frozenset(i for i in ids if _SLACK_USER_ID.match(i))

    def fernet_keys(self) -> tuple[str, ...]:
        raw = self.get("BRIDGE_ENCRYPTION_KEY")
        if raw is None:
            if "BRIDGE_ENCRYPTION_KEY" not in self.placeholders:
                self.problems.append(
                    f"BRIDGE_ENCRYPTION_KEY {self._unset('BRIDGE_ENCRYPTION_KEY')}: "
                    f"X tokens are stored encrypted; {KEYGEN_HINT}"
                )
            return ()
        keys = tuple(k.strip() for k in raw.split(",") if k.strip())
        for index, key in enumerate(keys, start=1):
            if not _is_fernet_key(key):
                self.problems.append(
                    f"BRIDGE_ENCRYPTION_KEY key #{index} is not a Fernet key "
                    f"(32 url-safe base64 bytes); {KEYGEN_HINT}"
                )
        return keys

    def database_url(self) -> str | None:
        raw = self.get("DATABASE_URL")
        if raw is None:
            return None
        problem = database_url_problem(raw)
        if problem:
            self.problems.append(problem)
            return None
        return raw

    def litestream_replica_url(self) -> str | None:
        raw = self.get("LITESTREAM_REPLICA_URL")
        if raw is None:
            return None
        if "://" not in raw:
            self.problems.append(
                f"LITESTREAM_REPLICA_URL={raw!r} is not a replica URL (s3://bucket/path, file:///path, …)"
            )
            return None
        if self.get("DATABASE_URL"):
            self.problems.append(
                "LITESTREAM_REPLICA_URL replicates the SQLite file, but DATABASE_URL selects PostgreSQL: "
                "unset one of them"
            )
            return None
        return raw

    def relay_format(self) -> str:
        fmt = self.get("RELAY_FORMAT") or DEFAULT_RELAY_FORMAT
        # Render a sample with the worker's own code: what passes here renders every message.
        try:
            render_parts("sample text", name="Sample Name", fmt=fmt)
        except (KeyError, IndexError, ValueError, AttributeError):
            self.problems.append(
                f"RELAY_FORMAT={fmt!r} does not render a message: use {{text}} exactly once and "
                "{name} any number of times, with no other fields, conversions or format specs"
            )
            return DEFAULT_RELAY_FORMAT
        return fmt

    def slack_mode(self) -> tuple[str, str | None, str | None]:
        """One workspace (``SLACK_BOT_TOKEN``) or installs (``SLACK_CLIENT_ID`` and
        ``SLACK_CLIENT_SECRET``): exactly one of the two, said in one line otherwise."""
        bot_token = self.get("SLACK_BOT_TOKEN")
        client_id, client_secret = self.get("SLACK_CLIENT_ID"), self.get("SLACK_CLIENT_SECRET")
        if bot_token and not bot_token.startswith("xoxb-"):
            self.problems.append("SLACK_BOT_TOKEN must be a bot token starting with xoxb-")
        if (client_id is None) != (client_secret is None):
            have, lack = (
                ("SLACK_CLIENT_ID", "SLACK_CLIENT_SECRET")
                if client_id
                else ("SLACK_CLIENT_SECRET", "SLACK_CLIENT_ID")
            )
            self.problems.append(
                f"{have} is set but {lack} is not: set both (Basic Information → App Credentials) "
                'for the "Add to Slack" install, or neither'
            )
            return bot_token or "", None, None
        if bot_token and client_id:
            self.problems.append(
                "SLACK_BOT_TOKEN and SLACK_CLIENT_ID/SLACK_CLIENT_SECRET are both set: keep SLACK_BOT_TOKEN "
                'for one workspace, or the client id and secret for "Add to Slack" installs, not both'
            )
            return bot_token, None, None
        if bot_token is None and client_id is None:
            if "SLACK_BOT_TOKEN" not in self.placeholders:
                self.problems.append(
                    f"SLACK_BOT_TOKEN {self._unset('SLACK_BOT_TOKEN')}: the Slack app's Bot User OAuth Token "
                    "(xoxb-…) for one workspace, or set SLACK_CLIENT_ID and SLACK_CLIENT_SECRET instead "
                    'for "Add to Slack" installs'
                )
            return "", None, None
        return bot_token or "", client_id, client_secret

    def build(self) -> Settings:
        signing_secret = self.required(
            "SLACK_SIGNING_SECRET", "the Slack app's Signing Secret (Basic Information)"
        )
        bot_token, slack_client_id, slack_client_secret = self.slack_mode()
        client_id = self.required("X_CLIENT_ID", "the X app's OAuth 2.0 Client ID")
        keys = self.fernet_keys()
        x_api_url = (self.url("X_API_URL", "https://api.x.com") or "https://api.x.com").rstrip("/")
        public_url = self.public_url()
        slack_api_url = self.url("SLACK_API_URL", "https://slack.com/api/") or "https://slack.com/api/"
        settings = Settings(
            signing_secret=signing_secret,
            bot_token=bot_token,
            x_client_id=client_id,
            x_client_secret=self.get("X_CLIENT_SECRET"),
            x_consumer_secret=self.get("X_CONSUMER_SECRET"),
            x_bearer_token=self.get("X_BEARER_TOKEN"),
            encryption_keys=keys,
            port=self.integer("PORT", 3000, low=1, high=65535),
            database_path=self.get("DATABASE_PATH") or "bridge.db",
            database_url=self.database_url(),
            litestream_replica_url=self.litestream_replica_url(),
            slack_api_url=slack_api_url if slack_api_url.endswith("/") else slack_api_url + "/",
            public_url=public_url,
            x_api_url=x_api_url,
            x_authorize_url=self.url("X_AUTHORIZE_URL", "https://x.com/i/oauth2/authorize")
            or "https://x.com/i/oauth2/authorize",
            x_token_url=self.url("X_TOKEN_URL", None) or f"{x_api_url}/2/oauth2/token",
            x_user_limit_15m=self.limit("X_USER_LIMIT_15M", high=1_000_000),
            x_user_limit_24h=self.limit("X_USER_LIMIT_24H", high=10_000_000),
            x_app_limit_24h=self.limit("X_APP_LIMIT_24H", high=100_000_000),
            x_read_limit_15m=self.limit("X_READ_LIMIT_15M", high=10_000),
            backfill_messages=self.integer("BACKFILL_MESSAGES", 20, low=0, high=100),
            inbound_poll_seconds=self.number("INBOUND_POLL_SECONDS", 180.0, low=0.05, high=3600.0),
            slack_posts_per_second=self.number("SLACK_POSTS_PER_SECOND", 1.0, low=0.0, high=100.0),
            x_timeout_seconds=self.number("X_TIMEOUT_SECONDS", 20.0, low=0.1, high=300.0),
            x_retry_cap_seconds=self.number("X_RETRY_CAP_SECONDS", 300.0, low=1.0, high=3600.0),
            relay_format=self.relay_format(),
            relay_threads=self.choice("RELAY_THREADS", "all", ("all", "broadcast", "none")),  # type: ignore[arg-type]
            relay_edits=self.choice("RELAY_EDITS", "correction", ("correction", "ignore")),  # type: ignore[arg-type]
            retention_days=self.integer("RETENTION_DAYS", 30, low=1, high=3650),
            log_level=self.choice("LOG_LEVEL", "info", ("debug", "info", "warning", "error")).upper(),
            log_format=self.choice("LOG_FORMAT", "auto", ("auto", "json", "text")),  # type: ignore[arg-type]
            admin_only=self.flag("XDM_ADMIN_ONLY"),
            allowed_users=self.slack_user_ids("XDM_ALLOWED_USERS"),
            metrics_token=self.get("METRICS_TOKEN"),
            slack_client_id=slack_client_id,
            slack_client_secret=slack_client_secret,
            slack_authorize_url=self.url("SLACK_AUTHORIZE_URL", None)
            or "https://slack.com/oauth/v2/authorize",
        )
        if self.problems:
            raise ConfigError("\n".join(self.problems))
        return settings


# What the README, docs/, .env.example and app.json show where a real value belongs: an ellipsis,
# YOUR-HOST / your-host / your-bridge-1234 / your-app, or a bare prefix. Only those words:
# real hosts and paths say "your-" too (bridge.your-company.com, /data/your_team).
_PLACEHOLDER = re.compile(r"…|\.\.\.|\byour-(?:host|app|bridge(?:-[0-9]+)?)\b", re.IGNORECASE)
_BARE_PREFIXES = {"SLACK_BOT_TOKEN": "xoxb-"}
_FREE_TEXT = {"RELAY_FORMAT"}  # a person's wording, where "..." may well be meant


def placeholder(name: str, value: str) -> str | None:
    """What gives ``value`` away as a placeholder rather than a real value, or None.

    Only the giveaway is returned, never the value: a secret pasted with a stray "…" stays private.
    """
    if name in _FREE_TEXT:
        return None
    if value == _BARE_PREFIXES.get(name):
        return f"only the prefix {value!r}"
    match = _PLACEHOLDER.search(value)
    return None if match is None else f"contains {match.group(0)!r}"


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_SLACK_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,}$")
_KEY_CHARS = re.compile(r"^[A-Za-z0-9_\-]+=*$")


def _is_fernet_key(key: str) -> bool:
    if not _KEY_CHARS.match(key):
        return False
    try:
        return len(base64.urlsafe_b64decode(key.encode())) == 32
    except (binascii.Error, ValueError):
        return False


SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def database_url_problem(url: str) -> str | None:
    """Why ``DATABASE_URL`` cannot be used, or None (the line names the variable, never the password)."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        return (
            "DATABASE_URL must be a postgres:// or postgresql:// URL "
            "(leave it unset to keep SQLite at DATABASE_PATH)"
        )
    if not parts.hostname and "host=" not in parts.query:
        return "DATABASE_URL names no host"
    sslmode = parse_qs(parts.query).get("sslmode", [None])[0]
    if sslmode is not None and sslmode not in SSL_MODES:
        return f"DATABASE_URL sslmode={sslmode!r} must be one of: {', '.join(SSL_MODES)}"
    return None


def database_url(env: Mapping[str, str] | None = None) -> str | None:
    """Just ``DATABASE_URL`` (None: SQLite), for commands that need nothing else; ConfigError if unusable."""
    source = os.environ if env is None else env
    raw = source.get("DATABASE_URL", "").strip()
    if not raw:
        return None
    problem = database_url_problem(raw)
    if problem:
        raise ConfigError(problem)
    return raw


def redacted(url: str) -> str:
    """A database URL fit for logs: the password replaced."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def database_path(env: Mapping[str, str] | None = None) -> str:
    """Just ``DATABASE_PATH``, for commands (``migrate``) that need nothing else."""
    source = os.environ if env is None else env
    return source.get("DATABASE_PATH", "").strip() or "bridge.db"


def encryption_keys(env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Just ``BRIDGE_ENCRYPTION_KEY`` (checked), for ``migrate`` and ``rotate-keys``."""
    reader = _Reader(os.environ if env is None else env)
    keys = reader.fernet_keys()
    if reader.problems:
        raise ConfigError("\n".join(reader.problems))
    return keys
