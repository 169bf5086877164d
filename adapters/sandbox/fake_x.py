"""A fake X (Twitter) API v2 for Direct Messages, served by aiohttp.

Used by the test suite and by the bridge's local sandbox mode. It implements the slice of X the
bridge talks to, as X's OpenAPI spec (https://api.x.com/2/openapi.json) and docs.x.com describe it:

* OAuth 2.0 Authorization Code with PKCE (``/i/oauth2/authorize``, ``/2/oauth2/token``,
  ``/2/oauth2/revoke``), rotating single-use refresh tokens, confidential and public clients;
* ``/2/users/me`` and ``/2/users/by/username/{username}``;
* the three DM POST endpoints, DM event listing (``/2/dm_events`` and per conversation),
  lookup and deletion;
* v2 media upload (one-shot and chunked, with processing status), media ids that expire;
* per-user/per-app DM rate limits with X's headers, the read window (``enforce_read_limit``),
  fault injection one fault at a time (:meth:`FakeX.inject`), and X on a bad day
  (:attr:`FakeX.fault_model`, a :class:`FaultModel`: every request answered from a seeded mix).

Like X, it stores a DM's links as ``t.co`` addresses (the expanded URLs come back in
``entities.urls``) and dates its answers by its own :attr:`FakeX.clock` (the ``Date`` header),
which may disagree with the client's.

Every request to a spec'd endpoint is checked with :meth:`SpecValidator.validate_request` and
every JSON response it emits with :meth:`SpecValidator.validate_response`; problems land in
:attr:`FakeX.violations` (tests assert it stays empty). The only answers off X's spec are the
fault model's two malformed kinds, on purpose (an HTML 502 from the edge, a 2xx cut in half),
and a send's 2xx without its ids (:attr:`FakeX.sent_answer_omits`).
All state is plain attributes.

Quick use::

    async with run_fake_x() as (fake, base_url):
        fake.add_user("1001", "alice")
        ...

or with pytest-aiohttp: ``server = await aiohttp_server(fake.app)``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import html
import itertools
import json
import math
import random
import re
import secrets
import struct
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any, Literal, cast, get_args
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit, urlunsplit

import aiohttp
from aiohttp import web
from authlib.oauth2.rfc7636 import create_s256_code_challenge as _untyped_s256

from adapters.sandbox.fake_xchat import ChatServer, NotMember, path_form
from adapters.sandbox.fake_xchat import Conversation as ChatConversation
from adapters.sandbox.openapi import FormPart, SpecValidator, media_type_of, parse_form

__all__ = [
    "DEFAULT_SCOPES",
    "DM_POST_TEMPLATES",
    "FAULT_KINDS",
    "RATE_LIMIT_SHAPES",
    "AccessToken",
    "AuthCode",
    "Conversation",
    "DmEvent",
    "FakeX",
    "Fault",
    "FaultKind",
    "FaultModel",
    "MediaUpload",
    "ModelDecision",
    "RecordedRequest",
    "RefreshToken",
    "TokenGrant",
    "UrlEntity",
    "XUser",
    "one_to_one_id",
    "run_fake_x",
    "shorten_links",
]

FaultKind = Literal["503", "timeout", "lost_response", "record_then_hang", "429", "401", "403", "garbage"]
#: Fault kinds accepted by :meth:`FakeX.inject`.
FAULT_KINDS: frozenset[str] = frozenset(
    {"503", "timeout", "lost_response", "record_then_hang", "429", "401", "403", "garbage"}
)

#: Scopes the bridge asks for (NOTES §5.1); the default for :meth:`FakeX.issue_token`.
DEFAULT_SCOPES: frozenset[str] = frozenset(
    {"dm.read", "dm.write", "tweet.read", "users.read", "offline.access", "media.write"}
)

#: The three DM POST endpoints, which share one set of rate-limit windows (NOTES §4.1).
DM_POST_TEMPLATES: frozenset[str] = frozenset(
    {
        "/2/dm_conversations",
        "/2/dm_conversations/with/{participant_id}/messages",
        "/2/dm_conversations/{dm_conversation_id}/messages",
    }
)

#: The DM event reads, each with its own per-user 15-minute window (NOTES §4.2: 15 per 15 min).
DM_READ_TEMPLATES: frozenset[str] = frozenset(
    {
        "/2/dm_events",
        "/2/dm_events/{event_id}",
        "/2/dm_conversations/{id}/dm_events",
        "/2/dm_conversations/with/{participant_id}/dm_events",
        # X publishes no limit for X Chat's reads; modelled as the DM reads' (headers decide).
        "/2/chat/conversations/{id}/events",
    }
)

AUTHORIZE_PATHS = ("/i/oauth2/authorize", "/2/oauth2/authorize")
TOKEN_PATH = "/2/oauth2/token"
REVOKE_PATH = "/2/oauth2/revoke"
_OAUTH_PATHS = frozenset({*AUTHORIZE_PATHS, TOKEN_PATH, REVOKE_PATH})

PROBLEM_JSON = "application/problem+json"
_PROBLEM_BASE = "https://api.x.com/2/problems/"
_MB = 1024 * 1024
_FIRST_ID = 1_880_000_000_000_000_001  # 19 digits, leaves room to grow within ^[0-9]{1,19}$


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def sign(secret: str, message: bytes) -> str:
    """``sha256=`` + base64(HMAC-SHA256): X's CRC answer and its delivery signature."""
    digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return "sha256=" + base64.b64encode(digest).decode()


# ---------------------------------------------------------------------------- records


@dataclass
class XUser:
    """A user account known to the fake."""

    id: str
    username: str
    name: str
    accepts_dms: bool = True
    """False: DMs to this user are refused with 403 and ``receives_your_dm`` is false."""
    created_at: float = 1_262_304_000.0
    description: str = ""


@dataclass
class Conversation:
    """A DM conversation."""

    id: str
    kind: Literal["OneToOne", "Group"]
    participants: frozenset[str]
    created_at: float
    creator_id: str | None = None


@dataclass(frozen=True)
class UrlEntity:
    """A link X found in a DM's text and replaced with a ``t.co`` address."""

    start: int
    end: int
    url: str
    """The ``t.co`` address, at ``[start, end)`` of the stored text."""
    expanded_url: str
    display_url: str


@dataclass
class DmEvent:
    """An accepted Direct Message (``MessageCreate`` event)."""

    id: str
    conversation_id: str
    sender_id: str
    text: str | None
    """The text as the sender posted it (what a person reading the DM sees)."""
    media_ids: tuple[str, ...]
    created_at: float
    event_type: str = "MessageCreate"
    participant_ids: tuple[str, ...] = ()
    """Who joined or left (``ParticipantsJoin`` / ``ParticipantsLeave``)."""
    deleted: bool = False
    """Set by ``DELETE /2/dm_events/{id}``; deleted events are hidden from the API."""
    stored_text: str | None = None
    """What X keeps and answers reads with: every link rewritten to ``t.co``; see :attr:`urls`."""
    urls: tuple[UrlEntity, ...] = ()


@dataclass
class MediaUpload:
    """An uploaded (or uploading) media item."""

    id: str
    media_key: str
    category: str
    media_type: str | None
    owner_id: str
    created_at: float
    total_bytes: int | None = None
    additional_owners: tuple[str, ...] = ()
    segments: dict[int, bytes] = field(default_factory=dict)
    data: bytes = b""
    """The complete media (set by one-shot upload or finalize)."""
    state: Literal["initialized", "pending", "in_progress", "succeeded", "failed"] = "initialized"
    status_polls: int = 0

    @property
    def ready(self) -> bool:
        """Whether the media can be attached to a DM."""
        return self.state == "succeeded"


@dataclass
class AuthCode:
    """An OAuth 2.0 authorization code handed out by ``/i/oauth2/authorize``."""

    code: str
    challenge: str
    redirect_uri: str
    user_id: str
    scopes: frozenset[str]
    issued_at: float


@dataclass
class AccessToken:
    """An OAuth 2.0 user access token."""

    token: str
    user_id: str
    scopes: frozenset[str]
    expires_at: float
    revoked: bool = False


@dataclass
class RefreshToken:
    """An OAuth 2.0 refresh token (single use: rotated on every refresh)."""

    token: str
    user_id: str
    scopes: frozenset[str]
    used: bool = False
    revoked: bool = False


@dataclass(frozen=True)
class TokenGrant:
    """Tokens minted directly by :meth:`FakeX.issue_token`."""

    access_token: str
    refresh_token: str | None
    expires_at: float
    scopes: frozenset[str]


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake received (``Authorization`` left out of ``headers``)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    """Lower-cased header names."""
    json: Any
    """Parsed JSON body, or ``None`` if the body was not JSON."""
    form: dict[str, str] | None
    """URL-encoded or multipart text fields (file parts as ``<N bytes>``), else ``None``."""
    user_id: str | None
    """The user whose valid access token the request carried, if any."""
    at: float


@dataclass
class Fault:
    """A pending injected fault (see :meth:`FakeX.inject`)."""

    kind: FaultKind
    remaining: int
    path_contains: str | None = None
    after: int = 0  # matching requests still let through before the fault applies


@dataclass
class _Window:
    start: float
    count: int = 0


#: RFC 7636 S256 transform (authlib's helper, typed here).
_s256_challenge: Callable[[str], str] = _untyped_s256

#: Who an app-only Bearer token acts as (never a participant in anything).
APP_USER = XUser(id="0", username="app", name="app")

_CLOSING: web.AppKey[asyncio.Event] = web.AppKey("fake_x_closing", asyncio.Event)
_BODY: web.RequestKey[bytes] = web.RequestKey("fake_x_body", bytes)
_USER: web.RequestKey[XUser] = web.RequestKey("fake_x_user", XUser)
_PARTS: web.RequestKey[list[FormPart]] = web.RequestKey("fake_x_form_parts", list)


def one_to_one_id(a: str, b: str) -> str:
    """The ``dm_conversation_id`` of the one-to-one conversation between two user IDs."""
    low, high = sorted((a, b), key=lambda v: (len(v), v))
    return f"{low}-{high}"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _csv(value: str | None) -> list[str]:
    return [v for v in (value or "").split(",") if v]


# What X's link detection takes for a URL: a scheme, or a bare "www."/domain with a known TLD.
_LINK = re.compile(
    r"(?:https?://|www\.)[^\s<>\"]+[^\s<>\".,;:!?)\]'}]"
    r"|\b[a-z0-9-]+(?:\.[a-z0-9-]+)*\.(?:com|org|net|io|dev|co|uk|de)\b(?:/[^\s<>\"]*[^\s<>\".,;:!?)\]'}])?",
    re.IGNORECASE,
)


def shorten_links(text: str, mint: Callable[[], str]) -> tuple[str, tuple[UrlEntity, ...]]:
    """Rewrite every link in ``text`` to a ``t.co`` address, as X stores a DM (NOTES §2.6 entities).

    ``expanded_url`` carries a scheme even when the sender wrote a bare domain, as X's does.
    """
    out: list[str] = []
    urls: list[UrlEntity] = []
    position = 0
    for match in _LINK.finditer(text):
        link = match.group(0)
        short = f"https://t.co/{mint()}"
        out.append(text[position : match.start()])
        start = sum(len(piece) for piece in out)
        out.append(short)
        expanded = link if re.match(r"https?://", link, re.IGNORECASE) else f"http://{link}"
        display = re.sub(r"^https?://", "", link, flags=re.IGNORECASE)
        urls.append(UrlEntity(start, start + len(short), short, expanded, display[:30]))
        position = match.end()
    out.append(text[position:])
    return "".join(out), tuple(urls)


# ------------------------------------------------------------------------ responses


def _json(status: int, body: Any, *, content_type: str = "application/json") -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type=content_type)


def _about_blank(status: int, title: str, detail: str | None = None) -> web.Response:
    body = {"title": title, "type": "about:blank", "status": status, "detail": detail or title}
    return _json(status, body, content_type=PROBLEM_JSON)


def _legacy_error(status: int, code: int, message: str) -> web.Response:
    return _json(status, {"errors": [{"code": code, "message": message}]})


def _invalid_request(detail: str, *, parameter: str | None = None, value: str | None = None) -> web.Response:
    body: dict[str, Any] = {
        "title": "Invalid Request",
        "type": _PROBLEM_BASE + "invalid-request",
        "status": 400,
        "detail": detail,
    }
    if parameter is not None:
        body["parameter"] = parameter
    if value is not None:
        body["value"] = value
    return _json(400, body, content_type=PROBLEM_JSON)


def _not_found_problem(resource_type: str, resource_id: str, parameter: str) -> dict[str, Any]:
    return {
        "title": "Not Found Error",
        "type": _PROBLEM_BASE + "resource-not-found",
        "status": 404,
        "detail": f"Could not find {resource_type} with {parameter}: [{resource_id}].",
        "resource_type": resource_type,
        "resource_id": resource_id,
        "parameter": parameter,
        "value": resource_id,
    }


def _not_found(resource_type: str, resource_id: str, parameter: str) -> web.Response:
    return _json(404, _not_found_problem(resource_type, resource_id, parameter), content_type=PROBLEM_JSON)


def _not_authorized(resource_type: str, resource_id: str, parameter: str) -> web.Response:
    body = {
        "title": "Forbidden",
        "type": _PROBLEM_BASE + "not-authorized-for-resource",
        "status": 403,
        "detail": f"Sorry, you are not authorized to access this {resource_type}.",
        "resource_type": resource_type,
        "resource_id": resource_id,
        "parameter": parameter,
        "value": resource_id,
    }
    return _json(403, body, content_type=PROBLEM_JSON)


def _oauth_error(status: int, error: str, description: str) -> web.Response:
    return _json(status, {"error": error, "error_description": description})


_MEDIA_KINDS = {
    "dm_image": "image",
    "tweet_image": "image",
    "dm_gif": "gif",
    "tweet_gif": "gif",
    "dm_video": "video",
    "tweet_video": "video",
    "amplify_video": "video",
    "subtitles": "subtitles",
}
_MEDIA_KEY_PREFIX = {"image": "3", "gif": "16", "video": "7", "subtitles": "3"}
_MEDIA_API_TYPE = {"image": "photo", "gif": "animated_gif", "video": "video", "subtitles": "photo"}


def _media_kind(category: str | None, media_type: str | None) -> str:
    if category:
        return _MEDIA_KINDS.get(category, "image")
    if media_type == "image/gif":
        return "gif"
    if media_type and media_type.startswith("video/"):
        return "video"
    return "image"


def _sniff_image(data: bytes) -> tuple[str, int, int]:
    """Best-effort (mime type, width, height) of PNG/GIF/JPEG bytes; 1x1 if unknown."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return "image/png", width, height
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        return "image/gif", width, height
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg", 1, 1
    return "image/jpeg", 1, 1


# ---------------------------------------------------------------------------- fault model

#: What a :class:`FaultModel` may answer a request with (``"ok"``: X behaves).
ModelOutcome = Literal[
    "ok",
    "5xx",
    "timeout",
    "hang_after_recording",
    "lost_response",
    "reset",
    "401",
    "429",
    "malformed_before",
    "malformed_after",
]

#: The default mix: mostly success, every fault present. Weights, not probabilities.
DEFAULT_MIX: Mapping[str, float] = {
    "ok": 70.0,
    "5xx": 6.0,
    "timeout": 2.0,
    "hang_after_recording": 2.0,
    "lost_response": 3.0,
    "reset": 3.0,
    "401": 2.0,
    "429": 6.0,
    "malformed_before": 2.0,
    "malformed_after": 2.0,
}

#: Shapes of the rate-limit headers on a model 429. ``plausible`` is what X sends; the others are
#: what a bad proxy, a bug at X or a unit mix-up would send, and a client must survive them all.
RATE_LIMIT_SHAPES: tuple[str, ...] = (
    "plausible",  # remaining 0, reset a few seconds ahead, epoch seconds
    "plausible",
    "day_cap",  # the 24-hour user cap spent (reset a few seconds ahead), 15-minute window not
    "milliseconds",  # reset in epoch milliseconds
    "negative",  # reset -1
    "past_9999",  # reset after 9999-12-31 (overflows datetime)
    "in_the_past",  # reset an hour ago
    "not_a_number",  # reset "soon", remaining "none"
    "missing",  # no rate-limit headers at all
)

#: Requests the model may upset: the token endpoint only with failures that leave the refresh
#: token unused (a lost answer to a refresh costs real X's rotating token too: no client survives).
_TOKEN_OUTCOMES = frozenset({"ok", "5xx", "reset"})
_RECORDING_OUTCOMES = frozenset({"hang_after_recording", "lost_response", "malformed_after"})


@dataclass(frozen=True)
class ModelDecision:
    """What the fault model chose for one request."""

    outcome: str
    shape: str | None = None  # for "429": one of RATE_LIMIT_SHAPES
    status: int = 503  # for "5xx"
    reset_in: float = 2.0  # for plausible 429s: seconds until the reset

    @property
    def label(self) -> str:
        return f"{self.outcome}:{self.shape}" if self.shape else self.outcome


@dataclass
class FaultModel:
    """X on a bad day, deterministic from ``seed``.

    The ``n``-th request the fake receives (counting every request the model may touch) gets
    an outcome drawn from ``mix`` by ``random.Random(f"{seed}:{n}")``, so the same seed makes
    the same sequence of decisions (which request gets which depends on the client's timing).
    After ``max_streak`` faults in a row on one path the next request on it succeeds, so a
    row's backoff stays bounded. Outcomes:

    * ``5xx``: 500/502/503/504 problem+json, nothing recorded.
    * ``timeout``: nothing recorded, no answer before :attr:`FakeX.timeout_seconds` (then 503).
    * ``hang_after_recording``: the request IS processed (DM recorded, quota used), then the
      answer is held for :attr:`FakeX.timeout_seconds`: the client times out after X acted.
    * ``lost_response``: processed, then the connection is dropped without an answer.
    * ``reset``: the connection is dropped before anything is processed.
    * ``401``: the presented access token is revoked and 401 returned; the refresh token
      still works, so refreshing recovers.
    * ``429``: a rate-limit 429 (nothing recorded) whose headers take one of
      :data:`RATE_LIMIT_SHAPES`; a plausible reset is ``reset_in`` seconds ahead.
    * ``malformed_before``: **off-spec on purpose**: a 502 with an HTML body from "the edge",
      nothing recorded.
    * ``malformed_after``: **off-spec on purpose**: processed, then a 2xx answered with JSON cut
      in half (``{"data": {"dm_conv``).

    Every other response still follows X's spec and is validated like any other.
    """

    seed: int
    mix: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    shapes: tuple[str, ...] = RATE_LIMIT_SHAPES
    max_streak: int = 3
    reset_in: tuple[float, float] = (1.0, 3.0)
    path_contains: str | None = None
    """Only requests whose path contains this are upset (all when None)."""
    drawn: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    _streaks: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.mix) - set(get_args(ModelOutcome))
        if unknown:
            raise ValueError(f"unknown outcomes {sorted(unknown)}")

    def decide(self, method: str, path: str, *, token_endpoint: bool = False) -> ModelDecision:
        """The outcome for the next request (``path`` keys the streak limit)."""
        if self.path_contains is not None and self.path_contains not in path:
            return ModelDecision("ok")
        rng = random.Random(f"{self.seed}:{self.drawn}")
        self.drawn += 1
        names = [k for k, w in self.mix.items() if w > 0 and (not token_endpoint or k in _TOKEN_OUTCOMES)]
        outcome = rng.choices(names, [self.mix[k] for k in names])[0] if names else "ok"
        key = f"{method} {path}"
        if outcome != "ok" and self._streaks.get(key, 0) >= self.max_streak:
            outcome = "ok"
        self._streaks[key] = 0 if outcome == "ok" else self._streaks.get(key, 0) + 1
        decision = ModelDecision(
            outcome,
            shape=rng.choice(self.shapes) if outcome == "429" else None,
            status=rng.choice((500, 502, 503, 504)),
            reset_in=rng.uniform(*self.reset_in),
        )
        self.outcomes[decision.label] += 1
        return decision


def rate_limit_shape_headers(shape: str, now: float, reset_in: float, limit: int) -> dict[str, str]:
    """The headers of a 429 of the given :data:`RATE_LIMIT_SHAPES` shape."""
    soon = str(math.ceil(now + reset_in))
    if shape == "missing":
        return {}
    if shape == "day_cap":
        return {
            "x-rate-limit-limit": str(limit),
            "x-rate-limit-remaining": str(max(1, limit // 2)),
            "x-rate-limit-reset": soon,
            "x-user-limit-24hour-limit": "1000",
            "x-user-limit-24hour-remaining": "0",
            "x-user-limit-24hour-reset": soon,
        }
    reset = {
        "plausible": soon,
        "milliseconds": str(math.ceil((now + reset_in) * 1000)),
        "negative": "-1",
        "past_9999": str(253_402_300_800 + 86_400 * 365),
        "in_the_past": str(int(now - 3600)),
        "not_a_number": "soon",
    }[shape]
    remaining = "none" if shape == "not_a_number" else "0"
    return {
        "x-rate-limit-limit": str(limit),
        "x-rate-limit-remaining": remaining,
        "x-rate-limit-reset": reset,
    }


# ----------------------------------------------------------------------------- FakeX


class FakeX:
    """An in-process fake of the X API v2 DM surface (an aiohttp application).

    All state is in public attributes that tests may read and change at any time, e.g.
    ``fake.user_limit_15m = 3`` takes effect on the next request (windows keep their counts).
    """

    def __init__(
        self,
        *,
        spec: SpecValidator | None = None,
        client_id: str = "test-client",
        client_secret: str | None = "test-secret",
        access_token_ttl: int = 7200,
        clock: Callable[[], float] = time.time,
        user_limit_15m: int = 15,
        user_limit_24h: int = 1440,
        app_limit_24h: int = 1440,
    ) -> None:
        """The DM limits default to what X documents today (NOTES §4.1: 15 per 15 minutes and
        1,440 per 24 hours per user, 1,440 per 24 hours per app); a test that sends more opts in."""
        self.spec: SpecValidator = spec if spec is not None else SpecValidator.default()
        self.client_id = client_id
        self.client_secret = client_secret
        """``None`` makes the app a public client (``client_id`` in the body, no Basic auth)."""
        self.access_token_ttl = access_token_ttl
        self.clock = clock

        # Users and OAuth.
        self.users: dict[str, XUser] = {}
        self.authorizing_user_id: str | None = None
        """Who approves ``/i/oauth2/authorize``; defaults to the first user added."""
        self.deny_next_authorize = False
        """If set, the next authorize redirects with ``error=access_denied`` (then resets)."""
        self.consent_page = False
        """If set, authorize first shows a consent page (for a person in a browser: the sandbox);
        its buttons repeat the request with ``decision=allow`` or ``decision=deny``."""
        self.withheld_scopes: set[str] = set()
        """Scopes the authorize step leaves out of the grant (an app whose permissions lack
        DMs); the token answer's ``scope`` then lists only the rest, as X's does."""
        self.redirect_uris: set[str] | None = None
        """Registered callback URLs; ``None`` accepts any ``redirect_uri``."""
        self.auth_code_ttl = 30.0
        self.auth_codes: dict[str, AuthCode] = {}
        self.access_tokens: dict[str, AccessToken] = {}
        self.refresh_tokens: dict[str, RefreshToken] = {}
        self.token_requests: list[dict[str, Any]] = []
        """One dict per ``/2/oauth2/token`` call: grant_type, client_auth, status, error."""

        # DMs.
        self.conversations: dict[str, Conversation] = {}
        self.events: list[DmEvent] = []
        self.max_text_length = 10_000
        self.max_attachments = 1
        self.dm_refusal_body: Literal["problem", "code349"] = "problem"
        """Body of the 403 for a recipient with ``accepts_dms=False``."""

        # Media.
        self.media: dict[str, MediaUpload] = {}
        self.media_processing_polls = 1
        """STATUS polls answering ``in_progress`` before ``succeeded`` (gif/video finalize)."""
        self.media_processing_fails = False
        """If set, processing ends in ``failed`` instead of ``succeeded``."""
        self.media_check_after_secs = 1
        self.media_ttl_seconds = 86_400
        self.media_size_limits: dict[str, int] = {"image": 5 * _MB, "gif": 15 * _MB, "video": 512 * _MB}
        self.max_chunk_bytes = 5 * _MB
        # X Chat public keys (GET/POST /2/users/{id}/public_keys): each user's registered records,
        # and X's registration limit ("a few per 24 h per user"; a 429 names the reset).
        self.public_keys: dict[str, list[dict[str, Any]]] = {}
        self.key_registrations_per_day = 3
        self._key_registrations: dict[str, list[float]] = {}
        # What X answers for a user with no keys, which X does not document: all mean "none".
        self.no_keys_answer: Literal["empty", "no_data", "not_found"] = "empty"
        # X's rules for X Chat sends that no simulator sees offline (a message request not yet
        # accepted, a stale key version, a group limit): each (status, X's words) refuses one send.
        self.chat_send_refusals: list[tuple[int, str]] = []
        # Encrypted X Chat: conversations of envelopes, and the simulated people's phones.
        self.chat = ChatServer(lambda: self.clock(), self.public_keys, self.register_keys)
        self.chat.on_message = self._push_chat

        # Rate limits (NOTES §4), shared by the three DM POST endpoints.
        self.user_limit_15m = user_limit_15m
        self.user_limit_24h = user_limit_24h
        self.app_limit_24h = app_limit_24h
        self.window_15m_seconds = 900.0
        self.window_24h_seconds = 86_400.0
        self.send_24h_headers = True
        self.rate_limit_body: Literal["problem", "code88"] = "problem"
        self.rate_limited_count = 0
        """429s served, both real rate limits and injected ``"429"`` faults."""
        self.read_limit_15m = 15
        """Per user and read endpoint, as X documents; ``enforce_read_limit`` makes it bite."""
        self.enforce_read_limit = False
        self.window_read_seconds: float | None = None
        """The read window's length; None: the same as :attr:`window_15m_seconds`."""
        self.read_rate_limited_count = 0
        """429s served on DM event reads for exceeding :attr:`read_limit_15m`."""
        self._user_15m: dict[str, _Window] = {}
        self._reads_15m: dict[str, _Window] = {}
        self._user_24h: dict[str, _Window] = {}
        self._app_24h: _Window | None = None

        # Webhooks and X Activity API subscriptions: managed with the app's Bearer token, signed with its
        # consumer secret (https://docs.x.com/x-api/webhooks/introduction).
        self.app_bearer_token = "test-app-bearer"
        self.consumer_secret = "test-consumer-secret"
        self.webhooks: dict[str, dict[str, Any]] = {}
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self.deliveries: list[dict[str, Any]] = []
        """Every push attempted: webhook_id, body, status (None: dropped on purpose), at."""
        self.replays: list[dict[str, Any]] = []
        self.push_drop = 0
        """Drop the next N deliveries (X's push is not guaranteed)."""
        self.push_duplicate = 0
        self.push_delays: list[float] = []
        """Delay the next deliveries by these seconds, one each (X's pushes may arrive out of order)."""
        """Deliver the next N twice (X warns of duplicates)."""
        self.push_groups = False
        """X's push may miss group conversations (X documents its DM push for 1-to-1 conversations only);
        the fake does by default. Set,
        it pushes them in the legacy shape, which cannot be told from a 1-to-1's."""
        self._push_tasks: set[asyncio.Task[None]] = set()

        # Faults and hooks.
        self.faults: list[Fault] = []
        self.pagination_epoch = 0  # tokens issued before the current epoch are refused (expired)
        self.faults_served: list[tuple[str, str]] = []
        """(kind, path) of every injected fault that fired."""
        self.timeout_seconds = 30.0
        self.token_delay = 0.0
        """Seconds the token endpoint takes to answer (X's, under load, is not instant)."""
        self.injected_reset_seconds = 60.0
        self.override_headers: dict[str, str] = {}
        self.fault_headers: dict[str, str] = {}
        """Headers forced onto every injected fault's response (see :meth:`inject`)."""
        """Headers forced onto every DM POST response (after the computed rate-limit headers)."""
        self.sent_answer_omits: frozenset[str] = frozenset()
        """Left out of every DM POST's 2xx answer (``dm_event_id``, ``dm_conversation_id``): an
        emulator of X seen doing so. **Off-spec on purpose** (the spec requires both), so such an
        answer is not validated; X records the DM all the same."""
        self.read_lag_seconds = 0.0
        """DM event reads (lists and the single-event lookup) leave out events younger than this:
        X's reads lagging its writes."""
        self.unlisted_until: dict[str, float] = {}
        """DM event id -> X time until which the lists (``GET /2/dm_events``, one conversation's,
        the 1-to-1 with a participant) leave it out while showing newer ones: X's lists are not
        consistent. ``GET /2/dm_events/{event_id}`` shows it."""
        self.response_hook: Callable[[web.Request, web.StreamResponse], None] | None = None
        """Called with every response before it is sent (may mutate headers or fake state)."""
        self.fault_model: FaultModel | None = None
        """When set, every API request (and the token endpoint) is answered from its seeded mix;
        faults queued with :meth:`inject` go first."""
        self.model_log: list[tuple[float, str, str, str]] = []
        """(time, outcome label, method, path) of every request the fault model did not let pass."""

        # Observability.
        self.violations: list[str] = []
        self.all_requests: list[RecordedRequest] = []

        self._ids = itertools.count(_FIRST_ID)
        self._app: web.Application | None = None

    # ------------------------------------------------------------------ setup API

    def add_user(
        self, user_id: str, username: str, name: str | None = None, accepts_dms: bool = True
    ) -> None:
        """Register a user; the first one added becomes :attr:`authorizing_user_id`."""
        self.users[user_id] = XUser(
            id=user_id, username=username, name=name or username, accepts_dms=accepts_dms
        )
        if self.authorizing_user_id is None:
            self.authorizing_user_id = user_id

    def issue_token(
        self, user_id: str, scopes: frozenset[str] | set[str] = DEFAULT_SCOPES, *, refresh: bool | None = None
    ) -> TokenGrant:
        """Mint tokens for ``user_id`` without the OAuth dance (refresh token iff ``offline.access``)."""
        scope_set = frozenset(scopes)
        with_refresh = "offline.access" in scope_set if refresh is None else refresh
        access, refresh_token, expires_at = self._mint(user_id, scope_set, with_refresh)
        return TokenGrant(access, refresh_token, expires_at, scope_set)

    def revoke_user_tokens(self, user_id: str) -> None:
        """Invalidate every access and refresh token of a user (as if they revoked the app)."""
        for access in self.access_tokens.values():
            if access.user_id == user_id:
                access.revoked = True
        for refresh in self.refresh_tokens.values():
            if refresh.user_id == user_id:
                refresh.revoked = True

    def create_group(self, creator_id: str, participant_ids: list[str]) -> str:
        """Create a group conversation directly (no message, no rate limit); returns its ID."""
        conv = Conversation(
            id=self._new_id(),
            kind="Group",
            participants=frozenset([creator_id, *participant_ids]),
            created_at=self.clock(),
            creator_id=creator_id,
        )
        self.conversations[conv.id] = conv
        return conv.id

    def add_event(
        self,
        conversation_id: str,
        sender_id: str,
        text: str | None = None,
        *,
        event_type: str = "MessageCreate",
        participant_ids: tuple[str, ...] = (),
        media_ids: tuple[str, ...] = (),
    ) -> DmEvent:
        """Record an event as if someone acted on X itself (no API call, no rate limit).

        A 1-to-1 conversation id naming two known users is created on first use."""
        conv = self.conversations.get(conversation_id)
        if conv is None:
            a, _, b = conversation_id.partition("-")
            conv = self._one_to_one(a, b)
        return self._store_event(
            conv, sender_id, text, media_ids, event_type=event_type, participant_ids=participant_ids
        )

    def add_media(self, owner_id: str, data: bytes, media_type: str = "image/jpeg") -> str:
        """A processed DM attachment owned by ``owner_id`` (as if uploaded on X); returns its id."""
        category = (
            "dm_gif"
            if media_type == "image/gif"
            else "dm_video"
            if media_type.startswith("video/")
            else "dm_image"
        )
        upload = self._new_media(self.users[owner_id], category, media_type, ())
        upload.data = data
        upload.state = "succeeded"
        return upload.id

    def ton_url(self, event_id: str, media_id: str) -> str:
        """The legacy TON URL of a DM attachment: its last three parts name the download."""
        upload = self.media[media_id]
        extension = (upload.media_type or "image/jpeg").rsplit("/", 1)[-1]
        return f"https://ton.twitter.com/1.1/ton/data/dm/{event_id}/{media_id}/m{media_id}.{extension}"

    def read_windows(self, user_id: str) -> dict[str, int]:
        """Reads counted in each DM event listing endpoint's current window for ``user_id``."""
        prefix = f"{user_id} "
        return {k[len(prefix) :]: w.count for k, w in self._reads_15m.items() if k.startswith(prefix)}

    def inject(
        self, kind: FaultKind, *, count: int = 1, path_contains: str | None = None, after: int = 0
    ) -> None:
        """Make the next ``count`` matching requests fail (after letting ``after`` of them through).

        Without ``path_contains`` faults hit the DM POST endpoints only; with it, any request whose
        path contains the string (OAuth and media included). Kinds:

        * ``"503"``: 503 about:blank problem; nothing recorded, no rate-limit use.
        * ``"timeout"``: wait :attr:`timeout_seconds` (or until shutdown), then 503; nothing recorded.
        * ``"lost_response"``: the request IS processed (DM recorded, quota used), then the
          connection is dropped without a response.
        * ``"record_then_hang"``: the request IS processed, then the answer is held back for
          :attr:`timeout_seconds` (or until shutdown): the moment to kill a client mid-send.
        * ``"429"``: a rate-limit 429 (:attr:`rate_limit_body` shape) with
          ``x-rate-limit-remaining: 0`` and a reset :attr:`injected_reset_seconds` from now.
        * ``"401"`` / ``"403"``: about:blank Unauthorized / Forbidden.
        * ``"garbage"``: HTTP 200 whose body is not JSON (nothing processed).

        :attr:`fault_headers` are set on every injected fault's response last (e.g. an absurd
        ``x-rate-limit-reset`` on a 429).
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {sorted(FAULT_KINDS)}")
        if count < 1:
            raise ValueError("count must be >= 1")
        self.faults.append(Fault(kind=kind, remaining=count, path_contains=path_contains, after=after))

    def expire_pagination_tokens(self) -> None:
        """Every ``next_token`` handed out so far expires: X answers 400 to it, as to a bad token
        (X does not document how long its pagination tokens live)."""
        self.pagination_epoch += 1

    def clear_faults(self) -> None:
        """Drop every pending injected fault."""
        self.faults.clear()

    # ----------------------------------------------------------------- query API

    def messages_in(self, conversation_id: str, *, include_deleted: bool = False) -> list[DmEvent]:
        """Accepted messages of one conversation, oldest first."""
        return [
            e
            for e in self.events
            if e.conversation_id == conversation_id and (include_deleted or not e.deleted)
        ]

    @property
    def dm_posts(self) -> int:
        """Number of DM POST requests received (any outcome; ``len(events)`` counts accepted ones)."""
        count = 0
        for req in self.all_requests:
            if req.method == "POST":
                found = self.spec.match("POST", req.path)
                if found is not None and found.path_template in DM_POST_TEMPLATES:
                    count += 1
        return count

    def rate_limit_headers(self, user_id: str) -> dict[str, str]:
        """The rate-limit headers a DM POST by ``user_id`` would carry right now."""
        w15 = self._window(self._user_15m, user_id, self.window_15m_seconds)
        headers = {
            "x-rate-limit-limit": str(self.user_limit_15m),
            "x-rate-limit-remaining": str(max(0, self.user_limit_15m - w15.count)),
            "x-rate-limit-reset": str(math.ceil(w15.start + self.window_15m_seconds)),
        }
        if self.send_24h_headers:
            w24 = self._window(self._user_24h, user_id, self.window_24h_seconds)
            app = self._app_window()
            headers.update(
                {
                    "x-user-limit-24hour-limit": str(self.user_limit_24h),
                    "x-user-limit-24hour-remaining": str(max(0, self.user_limit_24h - w24.count)),
                    "x-user-limit-24hour-reset": str(math.ceil(w24.start + self.window_24h_seconds)),
                    "x-app-limit-24hour-limit": str(self.app_limit_24h),
                    "x-app-limit-24hour-remaining": str(max(0, self.app_limit_24h - app.count)),
                    "x-app-limit-24hour-reset": str(math.ceil(app.start + self.window_24h_seconds)),
                }
            )
        return headers

    # ---------------------------------------------------------------------- app

    @property
    def app(self) -> web.Application:
        """The aiohttp application (built once; use :meth:`make_app` for a fresh one)."""
        if self._app is None:
            self._app = self.make_app()
        return self._app

    def make_app(self) -> web.Application:
        """Build a new aiohttp application serving this fake's state."""
        app = web.Application(middlewares=[self._middleware], client_max_size=600 * _MB)
        app[_CLOSING] = asyncio.Event()

        async def _on_shutdown(app: web.Application) -> None:
            app[_CLOSING].set()

        app.on_shutdown.append(_on_shutdown)
        routes = [
            web.get(AUTHORIZE_PATHS[0], self._authorize),
            web.get(AUTHORIZE_PATHS[1], self._authorize),
            web.post(TOKEN_PATH, self._token),
            web.post(REVOKE_PATH, self._revoke),
            web.get("/2/users/me", self._users_me),
            web.get("/2/users", self._users_by_ids),
            web.get("/2/users/by/username/{username}", self._user_by_username),
            web.post("/2/dm_conversations", self._create_group),
            web.post("/2/dm_conversations/with/{participant_id}/messages", self._send_to_participant),
            web.post("/2/dm_conversations/{dm_conversation_id}/messages", self._send_to_conversation),
            web.get("/2/dm_conversations/with/{participant_id}/dm_events", self._events_with_participant),
            web.get("/2/dm_conversations/{id}/dm_events", self._events_in_conversation),
            web.get("/2/dm_events", self._all_events),
            web.get("/2/dm_events/{event_id}", self._get_event),
            web.delete("/2/dm_events/{event_id}", self._delete_event),
            web.get("/2/dm_conversations/media/{dm_id}/{media_id}/{resource_id}", self._dm_media_download),
            web.get("/2/webhooks", self._webhooks_list),
            web.post("/2/webhooks", self._webhooks_create),
            web.post("/2/webhooks/replay", self._webhooks_replay),
            web.put("/2/webhooks/{webhook_id}", self._webhooks_validate),
            web.delete("/2/webhooks/{webhook_id}", self._webhooks_delete),
            web.get("/2/activity/subscriptions", self._subscriptions_list),
            web.post("/2/activity/subscriptions", self._subscriptions_create),
            web.post("/2/media/upload", self._media_upload),
            web.get("/2/media/upload", self._media_status),
            web.post("/2/media/upload/initialize", self._media_initialize),
            web.post("/2/media/upload/{id}/append", self._media_append),
            web.post("/2/media/upload/{id}/finalize", self._media_finalize),
            web.get("/2/users/{id}/public_keys", self._public_keys_get),
            web.post("/2/users/{id}/public_keys", self._public_keys_add),
            web.get("/2/chat/conversations", self._chat_list),
            web.post("/2/chat/conversations/group/initialize", self._chat_group_initialize),
            web.post("/2/chat/conversations/group", self._chat_group_create),
            web.get("/2/chat/conversations/{id}", self._chat_get),
            web.get("/2/chat/conversations/{id}/events", self._chat_events),
            web.post("/2/chat/conversations/{id}/keys", self._chat_keys),
            web.post("/2/chat/conversations/{id}/messages", self._chat_send),
            web.post("/2/chat/conversations/{id}/messages/delete", self._chat_delete),
            web.post("/2/chat/media/upload/initialize", self._chat_media_initialize),
            web.post("/2/chat/media/upload/{id}/append", self._chat_media_append),
            web.post("/2/chat/media/upload/{id}/finalize", self._chat_media_finalize),
            web.get("/2/chat/media/{id}/{media_hash_key}", self._chat_media),
        ]
        app.add_routes(routes)
        return app

    # --------------------------------------------------------------- middleware

    @web.middleware
    async def _middleware(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        body = await request.read()
        request[_BODY] = body
        self._record(request, body)
        path = request.path
        response: web.StreamResponse
        if path in _OAUTH_PATHS:
            fault = self._take_fault(path, is_dm_post=False)
            token_decision = self._model_decision(request, token_endpoint=True) if fault is None else None
            if token_decision is not None:
                response = await self._model_before(request, token_decision, None)
                return self._finish(request, response, None, None)
            response = await self._apply_fault(request, fault, None, handler)
            return self._finish(request, response, None, None)

        found = self.spec.match(request.method, path)
        if found is None:
            self.violations.append(f"{request.method} {path}: not an operation in the spec")
            return self._finish(request, _about_blank(404, "Not Found", f"No route for {path}"), None, None)
        template = found.path_template
        is_dm_post = request.method == "POST" and template in DM_POST_TEMPLATES
        bearer_user = self._bearer_user(request)

        problems = self.spec.validate_request(
            request.method, path, dict(request.query), request.headers.get("Content-Type"), body
        )
        if problems:
            self.violations.extend(f"{request.method} {path}: {p}" for p in problems)
            response = _invalid_request("; ".join(problems))
            return self._finish(request, response, template, bearer_user if is_dm_post else None)

        denied = self._authorize_request(request, found.operation)
        if denied is not None:
            return self._finish(request, denied, template, bearer_user if is_dm_post else None)
        user = request[_USER]

        fault = self._take_fault(path, is_dm_post=is_dm_post)
        if fault is not None and fault.kind not in ("lost_response", "record_then_hang"):
            response = await self._apply_fault(request, fault, user.id if is_dm_post else None, handler)
            return self._finish(request, response, template, user if is_dm_post else None)

        decision = self._model_decision(request) if fault is None else None
        if decision is not None and decision.outcome not in _RECORDING_OUTCOMES:
            response = await self._model_before(request, decision, user if is_dm_post else None)
            return self._finish(request, response, template, None)

        if is_dm_post and not self._consume(user.id):
            return self._finish(request, self._rate_limited(), template, user)
        read_key = (
            f"{user.id} {template}" if request.method == "GET" and template in DM_READ_TEMPLATES else None
        )
        if read_key is not None:
            window = self._window(self._reads_15m, read_key, self._read_window_seconds)
            if self.enforce_read_limit and window.count >= self.read_limit_15m:
                self.read_rate_limited_count += 1
                return self._finish(
                    request, self._read_headers(self._rate_limited(), read_key), template, None
                )
            window.count += 1

        try:
            response = await handler(request)
        except web.HTTPException as exc:
            self.violations.append(f"{request.method} {path}: {template} is not implemented by FakeX")
            response = _about_blank(exc.status, exc.reason)
        except Exception as exc:
            self.violations.append(f"{request.method} {path}: FakeX crashed: {exc!r}")
            raise
        if read_key is not None:
            self._read_headers(response, read_key)
        response = self._finish(request, response, template, user if is_dm_post else None)
        if is_dm_post and self.sent_answer_omits:
            response = self._without_ids(response)
        if decision is not None:
            return await self._model_after(request, decision, response)
        if fault is not None and fault.kind == "record_then_hang":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(request.app[_CLOSING].wait(), self.timeout_seconds)
        elif fault is not None:
            response = await self._drop_connection(request, fault)
        return response

    def _without_ids(self, response: web.StreamResponse) -> web.StreamResponse:
        """A DM POST's 2xx answer less :attr:`sent_answer_omits` (after validation: off-spec)."""
        if not 200 <= response.status < 300 or not isinstance(response, web.Response):
            return response
        raw = response.body if isinstance(response.body, bytes) else b"{}"
        document = json.loads(raw)
        data = document.get("data") if isinstance(document, dict) else None
        if isinstance(data, dict):
            for key in self.sent_answer_omits:
                data.pop(key, None)
        answer = _json(response.status, document)
        for key, value in response.headers.items():
            if key.lower().startswith("x-") or key.lower() == "date":
                answer.headers[key] = value
        return answer

    @property
    def _read_window_seconds(self) -> float:
        return self.window_read_seconds or self.window_15m_seconds

    def _read_headers(self, response: web.StreamResponse, read_key: str) -> web.StreamResponse:
        window = self._window(self._reads_15m, read_key, self._read_window_seconds)
        response.headers.update(
            {
                "x-rate-limit-limit": str(self.read_limit_15m),
                "x-rate-limit-remaining": str(max(0, self.read_limit_15m - window.count)),
                "x-rate-limit-reset": str(math.ceil(window.start + self._read_window_seconds)),
            }
        )
        return response

    def _finish(
        self,
        request: web.Request,
        response: web.StreamResponse,
        template: str | None,
        rate_user: XUser | None,
    ) -> web.StreamResponse:
        # X's own clock, which need not agree with the client's (aiohttp would use the real one).
        response.headers.setdefault("Date", formatdate(self.clock(), usegmt=True))
        if rate_user is not None:
            for key, value in self.rate_limit_headers(rate_user.id).items():
                response.headers.setdefault(key, value)
            response.headers.update(self.override_headers)
        if template is not None and isinstance(response, web.Response) and response.body is not None:
            ctype = response.content_type
            if ctype == "application/json" or ctype.endswith("+json"):
                raw = response.body
                try:
                    document = json.loads(raw if isinstance(raw, bytes | str) else b"")
                except ValueError:
                    self.violations.append(f"{request.method} {request.path}: response is not valid JSON")
                else:
                    problems = self.spec.validate_response(
                        request.method, template, response.status, ctype, document
                    )
                    self.violations.extend(f"{request.method} {request.path}: {p}" for p in problems)
        if self.response_hook is not None:
            self.response_hook(request, response)
        return response

    def _record(self, request: web.Request, body: bytes) -> None:
        ctype = media_type_of(request.headers.get("Content-Type"))
        parsed: Any = None
        form: dict[str, str] | None = None
        if ctype == "application/json" or ctype.endswith("+json"):
            with contextlib.suppress(ValueError):
                parsed = json.loads(body)
        elif ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
            with contextlib.suppress(ValueError):
                form = {
                    p.name: (
                        p.text if p.filename is None and len(p.value) < 4096 else f"<{len(p.value)} bytes>"
                    )
                    for p in self._parts(request)
                }
        user = self._bearer_user(request)
        self.all_requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers={k.lower(): v for k, v in request.headers.items() if k.lower() != "authorization"},
                json=parsed,
                form=form,
                user_id=user.id if user is not None else None,
                at=self.clock(),
            )
        )

    # --------------------------------------------------------------------- auth

    def _is_app_bearer(self, request: web.Request) -> bool:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip(), self.app_bearer_token)

    def _bearer_user(self, request: web.Request) -> XUser | None:
        token = self._access_token(request)
        return self.users.get(token.user_id) if token is not None else None

    def _access_token(self, request: web.Request) -> AccessToken | None:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer":
            return None
        token = self.access_tokens.get(value.strip())
        if token is None or token.revoked or self.clock() >= token.expires_at:
            return None
        return token

    def _authorize_request(self, request: web.Request, operation: Mapping[str, Any]) -> web.Response | None:
        if self._is_app_bearer(request):
            schemes = {k for r in operation.get("security", []) if isinstance(r, Mapping) for k in r}
            if "BearerToken" not in schemes:
                return _about_blank(403, "Forbidden", "This endpoint needs a user token.")
            request[_USER] = APP_USER
            return None
        token = self._access_token(request)
        user = self.users.get(token.user_id) if token is not None else None
        if token is None or user is None:
            return _about_blank(401, "Unauthorized")
        required = self.spec.required_scopes(operation)
        if required is None or not required <= token.scopes:
            return _about_blank(403, "Forbidden")
        request[_USER] = user
        return None

    # ------------------------------------------------------------- rate limits

    def _window(self, store: dict[str, _Window], key: str, length: float) -> _Window:
        now = self.clock()
        window = store.get(key)
        if window is None or now >= window.start + length:
            window = _Window(start=now)
            store[key] = window
        return window

    def _app_window(self) -> _Window:
        now = self.clock()
        if self._app_24h is None or now >= self._app_24h.start + self.window_24h_seconds:
            self._app_24h = _Window(start=now)
        return self._app_24h

    def _consume(self, user_id: str) -> bool:
        windows = [
            (self._window(self._user_15m, user_id, self.window_15m_seconds), self.user_limit_15m),
            (self._window(self._user_24h, user_id, self.window_24h_seconds), self.user_limit_24h),
            (self._app_window(), self.app_limit_24h),
        ]
        if any(window.count >= limit for window, limit in windows):
            return False
        for window, _ in windows:
            window.count += 1
        return True

    def _rate_limited(self) -> web.Response:
        self.rate_limited_count += 1
        if self.rate_limit_body == "code88":
            return _legacy_error(429, 88, "Rate limit exceeded")
        return _about_blank(429, "Too Many Requests")

    # ------------------------------------------------------------------- faults

    def _take_fault(self, path: str, *, is_dm_post: bool) -> Fault | None:
        for fault in self.faults:
            applies = is_dm_post if fault.path_contains is None else fault.path_contains in path
            if applies and fault.after > 0:
                fault.after -= 1
                continue
            if applies:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self.faults.remove(fault)
                self.faults_served.append((fault.kind, path))
                return fault
        return None

    async def _apply_fault(
        self, request: web.Request, fault: Fault | None, rate_user_id: str | None, handler: _Handler
    ) -> web.StreamResponse:
        if fault is None:
            return await handler(request)
        if fault.kind == "lost_response":
            await handler(request)
            return await self._drop_connection(request, fault)
        if fault.kind == "timeout":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(request.app[_CLOSING].wait(), self.timeout_seconds)
            return _about_blank(503, "Service Unavailable")
        response = self._fault_response(fault, rate_user_id)
        response.headers.update(self.fault_headers)
        return response

    def _fault_response(self, fault: Fault, rate_user_id: str | None) -> web.Response:
        if fault.kind == "503":
            return _about_blank(503, "Service Unavailable")
        if fault.kind == "401":
            return _about_blank(401, "Unauthorized")
        if fault.kind == "403":
            return _about_blank(403, "Forbidden")
        if fault.kind == "garbage":
            return web.Response(status=200, text="<html>upstream hiccup</html>", content_type="text/html")
        # "429"
        response = self._rate_limited()
        if rate_user_id is not None:
            response.headers.update(self.rate_limit_headers(rate_user_id))
        response.headers["x-rate-limit-remaining"] = "0"
        response.headers["x-rate-limit-reset"] = str(math.ceil(self.clock() + self.injected_reset_seconds))
        response.headers.setdefault("x-rate-limit-limit", str(self.user_limit_15m))
        return response

    def _model_decision(self, request: web.Request, *, token_endpoint: bool = False) -> ModelDecision | None:
        """The fault model's decision for this request; None when there is no model or it says "ok"."""
        if self.fault_model is None:
            return None
        decision = self.fault_model.decide(request.method, request.path, token_endpoint=token_endpoint)
        if decision.outcome == "ok":
            return None
        self.model_log.append((self.clock(), decision.label, request.method, request.path))
        return decision

    async def _model_before(
        self, request: web.Request, decision: ModelDecision, rate_user: XUser | None
    ) -> web.StreamResponse:
        """A fault model outcome in which X does nothing."""
        outcome = decision.outcome
        if outcome == "5xx":
            titles = {500: "Internal Server Error", 502: "Bad Gateway", 504: "Gateway Timeout"}
            return _about_blank(decision.status, titles.get(decision.status, "Service Unavailable"))
        if outcome == "timeout":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(request.app[_CLOSING].wait(), self.timeout_seconds)
            return _about_blank(503, "Service Unavailable")
        if outcome == "reset":
            return await self._drop_connection(request)
        if outcome == "401":
            token = self._access_token(request)
            if token is not None:
                token.revoked = True  # the refresh token still works: refreshing recovers
            return _about_blank(401, "Unauthorized")
        if outcome == "429":
            response = self._rate_limited()
            limit = self.user_limit_15m if rate_user is not None else 900
            shape = decision.shape or "plausible"
            response.headers.update(rate_limit_shape_headers(shape, self.clock(), decision.reset_in, limit))
            return response
        # "malformed_before": an edge proxy's page, not X's JSON (deliberately off-spec).
        body = "<html><head><title>502 Bad Gateway</title></head><body>upstream error</body></html>"
        return web.Response(status=502, text=body, content_type="text/html")

    async def _model_after(
        self, request: web.Request, decision: ModelDecision, response: web.StreamResponse
    ) -> web.StreamResponse:
        """A fault model outcome after X did the work (recorded the DM, stored the media...)."""
        if decision.outcome == "hang_after_recording":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(request.app[_CLOSING].wait(), self.timeout_seconds)
            return response
        if decision.outcome == "lost_response":
            return await self._drop_connection(request)
        # "malformed_after": the answer cut in half (deliberately off-spec, so not validated).
        if not 200 <= response.status < 300 or not isinstance(response, web.Response):
            return response
        raw = response.body if isinstance(response.body, bytes) else b"{}"
        cut = web.Response(status=response.status, body=raw[: max(1, len(raw) // 2)])
        for key, value in response.headers.items():
            if key.lower().startswith("x-"):
                cut.headers[key] = value
        cut.content_type = "application/json"
        return cut

    async def _drop_connection(self, request: web.Request, fault: Fault | None = None) -> web.StreamResponse:
        """Close the client connection without answering (the work was already done)."""
        transport = request.transport
        if transport is not None:
            transport.abort()
        # Nothing can be written any more; hand aiohttp an empty response it will fail to send.
        return web.Response(status=204)

    # -------------------------------------------------------------------- OAuth

    async def _authorize(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        if query.get("client_id") != self.client_id:
            return _oauth_error(400, "invalid_request", "Value passed for the client_id was invalid.")
        redirect_uri = query.get("redirect_uri", "")
        if not redirect_uri or (self.redirect_uris is not None and redirect_uri not in self.redirect_uris):
            return _oauth_error(400, "invalid_request", "Value passed for the redirect_uri was invalid.")
        state = query.get("state")

        def redirect(params: dict[str, str]) -> web.Response:
            if state is not None:
                params["state"] = state
            parts = urlsplit(redirect_uri)
            merged = urlencode([*parse_qsl(parts.query, keep_blank_values=True), *params.items()])
            return web.Response(status=302, headers={"Location": urlunsplit(parts._replace(query=merged))})

        def fail(description: str, error: str = "invalid_request") -> web.Response:
            return redirect({"error": error, "error_description": description})

        if query.get("response_type") != "code":
            return fail("response_type must be 'code'.", "unsupported_response_type")
        scopes = frozenset(query.get("scope", "").split())
        unknown = scopes - self.spec.oauth2_scopes()
        if not scopes or unknown:
            return fail(f"Invalid scope(s): {sorted(unknown)}.", "invalid_scope")
        if not state or len(state) > 500:
            return fail("Missing or invalid parameter [state].")
        challenge = query.get("code_challenge", "")
        if not challenge:
            return fail("Missing required parameter [code_challenge].")
        if query.get("code_challenge_method") != "S256":
            return fail("code_challenge_method must be S256.")
        user_id = self.authorizing_user_id
        decision = query.get("decision")
        if self.consent_page and decision is None and user_id in self.users:
            return self._consent_page(request, self.users[user_id])
        if self.deny_next_authorize or decision == "deny":
            self.deny_next_authorize = False
            return redirect({"error": "access_denied"})
        if user_id is None or user_id not in self.users:
            return fail("No user is signed in.", "access_denied")
        code = secrets.token_urlsafe(24)
        self.auth_codes[code] = AuthCode(
            code=code,
            challenge=challenge,
            redirect_uri=redirect_uri,
            user_id=user_id,
            scopes=scopes - self.withheld_scopes,
            issued_at=self.clock(),
        )
        return redirect({"code": code})

    @staticmethod
    def _consent_page(request: web.Request, user: XUser) -> web.Response:
        """X's "Authorize app" page, as plain as it can be: the signed-in account and two links
        that repeat the request with the person's decision."""
        query = [(k, v) for k, v in request.query.items() if k != "decision"]

        def decide(decision: str) -> str:
            return html.escape(f"{request.path}?{urlencode([*query, ('decision', decision)])}")

        page = (
            "<!doctype html><html lang=en><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width, initial-scale=1'>"
            "<title>Authorize app · X (simulated)</title>"
            "<body style='font-family:sans-serif;max-width:26rem;margin:3rem auto;padding:0 1rem'>"
            "<p style='color:#8d6e00'>Simulated X consent page</p>"
            "<h1>Authorize xdm-bridge to access your account?</h1>"
            f"<p>Signed in as <strong id=account>@{html.escape(user.username)}</strong></p>"
            "<ul><li>Read and send your Direct Messages</li><li>See your profile and stay connected</li></ul>"
            f"<p><a id=approve href='{decide('allow')}'>Authorize app</a></p>"
            f"<p><a id=cancel href='{decide('deny')}'>Cancel</a></p></body></html>"
        )
        return web.Response(text=page, content_type="text/html", headers={"Cache-Control": "no-store"})

    def _client_auth(self, request: web.Request, form: Mapping[str, str]) -> tuple[str, web.Response | None]:
        """Authenticate the client per NOTES §5.1; returns (mode, error response or None)."""
        if self.client_secret is not None:
            scheme, _, value = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() == "basic":
                try:
                    decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
                except (binascii.Error, UnicodeDecodeError):
                    decoded = ""
                cid, sep, secret = decoded.partition(":")
                if sep and unquote_plus(cid) == self.client_id and unquote_plus(secret) == self.client_secret:
                    return "basic", None
            return "none", _oauth_error(401, "unauthorized_client", "Missing valid authorization header")
        if form.get("client_id") != self.client_id:
            return "none", _oauth_error(400, "invalid_request", "Missing required parameter [client_id].")
        return "body", None

    def _parts(self, request: web.Request) -> list[FormPart]:
        """The request's form fields, parsed once (raises ValueError if it is not a valid form)."""
        parts = request.get(_PARTS)
        if parts is None:
            parts = parse_form(request.headers.get("Content-Type"), request[_BODY])
            request[_PARTS] = parts
        return parts

    def _form(self, request: web.Request) -> dict[str, str] | None:
        if media_type_of(request.headers.get("Content-Type")) != "application/x-www-form-urlencoded":
            return None
        try:
            parts = self._parts(request)
        except ValueError:
            return None
        return {p.name: p.text for p in parts}

    def _mint(
        self, user_id: str, scopes: frozenset[str], with_refresh: bool
    ) -> tuple[str, str | None, float]:
        access = secrets.token_urlsafe(32)
        expires_at = self.clock() + self.access_token_ttl
        self.access_tokens[access] = AccessToken(access, user_id, scopes, expires_at)
        refresh: str | None = None
        if with_refresh:
            refresh = secrets.token_urlsafe(32)
            self.refresh_tokens[refresh] = RefreshToken(refresh, user_id, scopes)
        return access, refresh, expires_at

    def _token_response(self, user_id: str, scopes: frozenset[str]) -> web.Response:
        access, refresh, _ = self._mint(user_id, scopes, "offline.access" in scopes)
        body: dict[str, Any] = {
            "token_type": "bearer",
            "expires_in": self.access_token_ttl,
            "access_token": access,
            "scope": " ".join(sorted(scopes)),
        }
        if refresh is not None:
            body["refresh_token"] = refresh
        return _json(200, body)

    async def _token(self, request: web.Request) -> web.StreamResponse:
        if self.token_delay:
            await asyncio.sleep(self.token_delay)
        form = self._form(request)
        entry: dict[str, Any] = {"grant_type": form.get("grant_type") if form else None}
        self.token_requests.append(entry)
        response = self._token_exchange(request, form, entry)
        entry["status"] = response.status
        if response.status != 200 and isinstance(response.body, bytes):
            entry["error"] = json.loads(response.body).get("error")
        return response

    def _token_exchange(
        self, request: web.Request, form: dict[str, str] | None, entry: dict[str, Any]
    ) -> web.Response:
        if form is None:
            return _oauth_error(400, "invalid_request", "Body must be application/x-www-form-urlencoded.")
        mode, denied = self._client_auth(request, form)
        entry["client_auth"] = mode
        if denied is not None:
            return denied
        grant = form.get("grant_type")
        if grant == "authorization_code":
            entry["code"] = form.get("code")
            code = self.auth_codes.pop(form.get("code", ""), None)  # single use, whatever happens
            if code is None or self.clock() - code.issued_at > self.auth_code_ttl:
                return _oauth_error(
                    400, "invalid_request", "Value passed for the authorization code was invalid."
                )
            if form.get("redirect_uri") != code.redirect_uri:
                return _oauth_error(400, "invalid_request", "Value passed for the redirect_uri was invalid.")
            verifier = form.get("code_verifier", "")
            if not verifier or _s256_challenge(verifier) != code.challenge:
                return _oauth_error(400, "invalid_request", "Value passed for the code_verifier was invalid.")
            return self._token_response(code.user_id, code.scopes)
        if grant == "refresh_token":
            old = self.refresh_tokens.get(form.get("refresh_token", ""))
            if old is None or old.used or old.revoked:
                return _oauth_error(400, "invalid_request", "Value passed for the token was invalid.")
            old.used = True  # rotation: each refresh token works once
            return self._token_response(old.user_id, old.scopes)
        return _oauth_error(400, "unsupported_grant_type", "Unsupported grant_type.")

    async def _revoke(self, request: web.Request) -> web.StreamResponse:
        form = self._form(request)
        if form is None:
            return _oauth_error(400, "invalid_request", "Body must be application/x-www-form-urlencoded.")
        _, denied = self._client_auth(request, form)
        if denied is not None:
            return denied
        token = form.get("token", "")
        if token in self.access_tokens:
            self.access_tokens[token].revoked = True
        if token in self.refresh_tokens:
            self.refresh_tokens[token].revoked = True
        return _json(200, {"revoked": True})

    # -------------------------------------------------------------------- users

    def _user_json(self, user: XUser, fields: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {"id": user.id, "name": user.name, "username": user.username}
        for name in fields:
            if name == "receives_your_dm":
                out[name] = user.accepts_dms
            elif name == "created_at":
                out[name] = _iso(user.created_at)
            elif name in ("protected", "verified", "parody"):
                out[name] = False
            elif name == "description":
                out[name] = user.description
            elif name == "verified_type":
                out[name] = "none"
            elif name == "profile_image_url":
                out[name] = f"https://pbs.twimg.com/profile_images/{user.id}/avatar_normal.png"
        return out

    async def _users_me(self, request: web.Request) -> web.StreamResponse:
        fields = _csv(request.query.get("user.fields"))
        return _json(200, {"data": self._user_json(request[_USER], fields)})

    async def _user_by_username(self, request: web.Request) -> web.StreamResponse:
        username = request.match_info["username"]
        fields = _csv(request.query.get("user.fields"))
        for user in self.users.values():
            if user.username.lower() == username.lower():
                return _json(200, {"data": self._user_json(user, fields)})
        problem = _not_found_problem("user", username, "username")
        problem.pop("status")
        return _json(200, {"errors": [problem]})

    async def _users_by_ids(self, request: web.Request) -> web.StreamResponse:
        fields = _csv(request.query.get("user.fields"))
        ids = _csv(request.query.get("ids"))
        found = [self._user_json(self.users[i], fields) for i in ids if i in self.users]
        missing = [i for i in ids if i not in self.users]
        body: dict[str, Any] = {"data": found} if found else {}
        if missing:
            errors = [_not_found_problem("user", i, "ids") for i in missing]
            for problem in errors:
                problem.pop("status")
            body["errors"] = errors
        return _json(200, body)

    # ------------------------------------------------------------ X Chat keys

    def register_keys(self, user_id: str, registration: dict[str, Any]) -> str:
        """Register a public key for ``user_id`` as X does (a person's phone, or a test)."""
        version = str(int(self.clock() * 1000) + len(self.public_keys.get(user_id, [])))
        key = registration["public_key"]
        self.public_keys.setdefault(user_id, []).append(
            {
                "public_key": key["public_key"],
                "signing_public_key": key["signing_public_key"],
                "identity_public_key_signature": key["identity_public_key_signature"],
                "public_key_version": version,
            }
        )
        return version

    async def _public_keys_get(self, request: web.Request) -> web.StreamResponse:
        records = self.public_keys.get(request.match_info["id"], [])
        if records or self.no_keys_answer == "empty":
            return _json(200, {"data": records})
        if self.no_keys_answer == "no_data":
            return _json(200, {})
        return _about_blank(404, "Not Found", "The user has no public keys")

    async def _public_keys_add(self, request: web.Request) -> web.StreamResponse:
        user_id = request.match_info["id"]
        if request[_USER].id != user_id:
            return _about_blank(403, "Forbidden", "You can only register keys for yourself")
        now = self.clock()
        recent = [t for t in self._key_registrations.get(user_id, []) if t > now - 86_400]
        if len(recent) >= self.key_registrations_per_day:
            response = _about_blank(429, "Too Many Requests")
            response.headers["x-user-limit-24hour-limit"] = str(self.key_registrations_per_day)
            response.headers["x-user-limit-24hour-remaining"] = "0"
            response.headers["x-user-limit-24hour-reset"] = str(math.ceil(min(recent, default=now) + 86_400))
            return response
        self._key_registrations[user_id] = [*recent, now]
        version = self.register_keys(user_id, json.loads(request[_BODY]))
        return _json(200, {"data": {"public_key_version": version, "juicebox_config": {}}})

    # ---------------------------------------------------------------- X Chat

    def _chat_conversation(
        self, request: web.Request, *, create_with: list[str] | None = None
    ) -> ChatConversation:
        return self.chat.conversation(request.match_info["id"], request[_USER].id, create_with=create_with)

    async def _chat_list(self, request: web.Request) -> web.StreamResponse:
        listed = self.chat.listing(request[_USER].id)
        return _json(200, {"data": listed, "meta": {"result_count": len(listed)}})

    async def _chat_get(self, request: web.Request) -> web.StreamResponse:
        try:
            conv = self._chat_conversation(request)
        except NotMember as exc:
            return _about_blank(404, "Not Found", str(exc))
        [entry] = [c for c in self.chat.listing(request[_USER].id) if c["id"] == path_form(conv.id)]
        return _json(200, {"data": entry})

    async def _chat_events(self, request: web.Request) -> web.StreamResponse:
        try:
            conv = self._chat_conversation(request)
        except NotMember as exc:
            return _about_blank(404, "Not Found", str(exc))
        size = int(request.query.get("max_results", "10"))
        token = request.query.get("pagination_token")
        before = None if token is None else _decode_token(token, self.pagination_epoch)
        if token is not None and before is None:
            # An expired token (``expire_pagination_tokens``) too, as for the legacy DM reads.
            return _invalid_request("Invalid pagination_token.", parameter="pagination_token", value=token)
        page = self.chat.events_page(
            conv, size, before, lambda oldest: _encode_token(oldest, self.pagination_epoch)
        )
        return _json(200, page)

    async def _chat_keys(self, request: web.Request) -> web.StreamResponse:
        body = json.loads(request[_BODY])
        if not body.get("action_signatures"):
            # Optional in the spec, required in practice (X's troubleshooting notes).
            return _about_blank(400, "Bad Request", "action_signatures are required")
        members = [str(k["user_id"]) for k in body["conversation_participant_keys"]]
        path_id = request.match_info["id"]
        try:
            conv = self._chat_conversation(request, create_with=None if path_id.startswith("g") else members)
        except NotMember as exc:
            return _about_blank(403, "Forbidden", str(exc))
        [sequence] = self.chat.take_actions(conv, request[_USER].id, body["action_signatures"])[:1]
        return _json(200, {"data": {"conversation_id": path_form(conv.id), "sequence_id": sequence}})

    async def _chat_send(self, request: web.Request) -> web.StreamResponse:
        try:
            conv = self._chat_conversation(request)
        except NotMember as exc:
            return _about_blank(403, "Forbidden", str(exc))
        if self.chat_send_refusals:
            status, detail = self.chat_send_refusals.pop(0)
            return _about_blank(status, "Forbidden" if status == 403 else "Bad Request", detail)
        encoded = self.chat.post_message(conv, request[_USER].id, json.loads(request[_BODY]))
        return _json(201, {"data": {"encoded_message_event": encoded}})

    async def _chat_delete(self, request: web.Request) -> web.StreamResponse:
        try:
            conv = self._chat_conversation(request)
        except NotMember as exc:
            return _about_blank(403, "Forbidden", str(exc))
        self.chat.take_actions(conv, request[_USER].id, json.loads(request[_BODY])["action_signatures"])
        return _json(200, {"data": {"deleted": True}})

    async def _chat_media_initialize(self, request: web.Request) -> web.StreamResponse:
        try:
            data = self.chat.media_initialize(request[_USER].id, json.loads(request[_BODY]))
        except NotMember as exc:
            return _about_blank(403, "Forbidden", str(exc))
        return _json(200, {"data": data})

    async def _chat_media_append(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["id"] not in self.chat.uploads:
            return _about_blank(404, "Not Found", "No such upload session")
        self.chat.media_append(request.match_info["id"], json.loads(request[_BODY]))
        return _json(200, {"data": {"expires_at": int(self.clock()) + 3600}})

    async def _chat_media_finalize(self, request: web.Request) -> web.StreamResponse:
        if not self.chat.media_finalize(request.match_info["id"], json.loads(request[_BODY])):
            return _about_blank(400, "Bad Request", "The upload's segments do not add up to its size")
        return _json(200, {"data": {"success": True}})

    async def _chat_media(self, request: web.Request) -> web.StreamResponse:
        try:
            conv = self._chat_conversation(request)
        except NotMember as exc:
            return _about_blank(403, "Forbidden", str(exc))
        blob = self.chat.media.get((conv.id, request.match_info["media_hash_key"]))
        if blob is None:
            return _about_blank(404, "Not Found", "no such media")
        return web.Response(body=blob, content_type="application/octet-stream")

    async def _chat_group_initialize(self, request: web.Request) -> web.StreamResponse:
        return _json(200, {"data": {"conversation_id": self.chat.new_group_id()}})

    async def _chat_group_create(self, request: web.Request) -> web.StreamResponse:
        try:
            cid, sequence = self.chat.create_group(request[_USER].id, json.loads(request[_BODY]))
        except NotMember as exc:
            return _about_blank(403, "Forbidden", str(exc))
        data = {"conversation_id": cid, "conversation_key_change_sequence_id": sequence}
        return _json(201, {"data": data})

    # ---------------------------------------------------------------------- DMs

    def _new_id(self) -> str:
        return str(next(self._ids))

    def _refusal(self) -> web.Response:
        if self.dm_refusal_body == "code349":
            return _legacy_error(403, 349, "You cannot send messages to this user.")
        return _about_blank(403, "Forbidden", "You cannot send messages to this user.")

    def _check_message(
        self, sender: XUser, message: Mapping[str, Any]
    ) -> tuple[str | None, tuple[str, ...]] | web.Response:
        text = message.get("text")
        attachments = message.get("attachments") or []
        if text is None and not attachments:
            return _invalid_request("A message needs text or an attachment.", parameter="text")
        if text is not None and len(text) > self.max_text_length:
            return _invalid_request(
                f"Text is longer than {self.max_text_length} characters.",
                parameter="text",
                value=str(len(text)),
            )
        if len(attachments) > self.max_attachments:
            return _invalid_request(
                f"Only {self.max_attachments} attachment per message is supported.", parameter="attachments"
            )
        media_ids: list[str] = []
        for attachment in attachments:
            media_id = str(attachment.get("media_id"))
            media = self.media.get(media_id)
            usable = (
                media is not None
                and (media.owner_id == sender.id or sender.id in media.additional_owners)
                and media.ready
                and self.clock() < media.created_at + self.media_ttl_seconds
            )
            if not usable:
                return _invalid_request(
                    f"Media [{media_id}] is not available to the sender (unknown, not owned, not "
                    "processed or expired).",
                    parameter="media_id",
                    value=media_id,
                )
            media_ids.append(media_id)
        return text, tuple(media_ids)

    def add_message(self, conversation_id: str, sender_id: str, text: str) -> DmEvent:
        """Record a DM as if ``sender_id`` had sent it from X's own app (no request, no rate limit)."""
        return self._store_event(self.conversations[conversation_id], sender_id, text, ())

    def _store_event(
        self,
        conv: Conversation,
        sender_id: str,
        text: str | None,
        media_ids: tuple[str, ...],
        *,
        event_type: str = "MessageCreate",
        participant_ids: tuple[str, ...] = (),
    ) -> DmEvent:
        stored, urls = shorten_links(text, self._short_code) if text is not None else (None, ())
        event = DmEvent(
            id=self._new_id(),
            conversation_id=conv.id,
            sender_id=sender_id,
            text=text,
            media_ids=media_ids,
            created_at=self.clock(),
            stored_text=stored,
            urls=urls,
            event_type=event_type,
            participant_ids=participant_ids,
        )
        self.events.append(event)
        self._push(event)
        return event

    def _short_code(self) -> str:
        return secrets.token_urlsafe(8).replace("-", "a").replace("_", "b")[:10]

    def _record_message(
        self, conv: Conversation, sender: XUser, text: str | None, media_ids: tuple[str, ...]
    ) -> web.Response:
        event = self._store_event(conv, sender.id, text, media_ids)
        return _json(201, {"data": {"dm_conversation_id": conv.id, "dm_event_id": event.id}})

    def _one_to_one(self, a: str, b: str) -> Conversation:
        conv_id = one_to_one_id(a, b)
        conv = self.conversations.get(conv_id)
        if conv is None:
            conv = Conversation(conv_id, "OneToOne", frozenset((a, b)), self.clock(), creator_id=a)
            self.conversations[conv_id] = conv
        return conv

    async def _send_to_participant(self, request: web.Request) -> web.StreamResponse:
        sender = request[_USER]
        participant_id = request.match_info["participant_id"]
        recipient = self.users.get(participant_id)
        if recipient is None:
            return _invalid_request(
                f"User [{participant_id}] does not exist.", parameter="participant_id", value=participant_id
            )
        if not recipient.accepts_dms and recipient.id != sender.id:
            return self._refusal()
        checked = self._check_message(sender, json.loads(request[_BODY]))
        if isinstance(checked, web.Response):
            return checked
        return self._record_message(self._one_to_one(sender.id, recipient.id), sender, *checked)

    async def _create_group(self, request: web.Request) -> web.StreamResponse:
        sender = request[_USER]
        body = json.loads(request[_BODY])
        others = [pid for pid in dict.fromkeys(body["participant_ids"]) if pid != sender.id]
        for pid in others:
            if pid not in self.users:
                return _invalid_request(
                    f"User [{pid}] does not exist.", parameter="participant_ids", value=pid
                )
        if len(others) < 2:
            return _invalid_request(
                "A group needs at least two other participants.", parameter="participant_ids"
            )
        if any(not self.users[pid].accepts_dms for pid in others):
            return self._refusal()
        checked = self._check_message(sender, body["message"])
        if isinstance(checked, web.Response):
            return checked
        conv = self.conversations[self.create_group(sender.id, others)]
        return self._record_message(conv, sender, *checked)

    def _conversation_for(
        self, user: XUser, conv_id: str, *, create: bool = True
    ) -> Conversation | web.Response:
        """Look up a conversation the user may access (1:1 IDs naming the user exist implicitly).

        ``create=False`` is for reads: an implicit 1:1 conversation is answered (empty) without
        being made, as reading it at X creates nothing."""
        conv = self.conversations.get(conv_id)
        if conv is None and "-" in conv_id:
            a, _, b = conv_id.partition("-")
            if user.id in (a, b) and a in self.users and b in self.users and one_to_one_id(a, b) == conv_id:
                conv = (
                    self._one_to_one(a, b)
                    if create
                    else Conversation(conv_id, "OneToOne", frozenset((a, b)), self.clock(), creator_id=a)
                )
        if conv is None:
            return _not_found("dm_conversation", conv_id, "dm_conversation_id")
        if user.id not in conv.participants:
            return _not_authorized("dm_conversation", conv_id, "dm_conversation_id")
        return conv

    async def _send_to_conversation(self, request: web.Request) -> web.StreamResponse:
        sender = request[_USER]
        conv = self._conversation_for(sender, request.match_info["dm_conversation_id"])
        if isinstance(conv, web.Response):
            return conv
        if conv.kind == "OneToOne":
            (other,) = conv.participants - {sender.id} or {sender.id}
            if not self.users[other].accepts_dms and other != sender.id:
                return self._refusal()
        checked = self._check_message(sender, json.loads(request[_BODY]))
        if isinstance(checked, web.Response):
            return checked
        return self._record_message(conv, sender, *checked)

    # ------------------------------------------------------------- DM lookups

    def _event_json(self, event: DmEvent, fields: set[str], expansions: set[str]) -> dict[str, Any]:
        out: dict[str, Any] = {"id": event.id, "event_type": event.event_type}
        if event.stored_text is not None:
            out["text"] = event.stored_text
        if event.urls and "entities" in fields:
            out["entities"] = {
                "urls": [
                    {
                        "start": u.start,
                        "end": u.end,
                        "url": u.url,
                        "expanded_url": u.expanded_url,
                        "display_url": u.display_url,
                    }
                    for u in event.urls
                ]
            }
        if "created_at" in fields:
            out["created_at"] = _iso(event.created_at)
        if "dm_conversation_id" in fields:
            out["dm_conversation_id"] = event.conversation_id
        if "sender_id" in expansions:
            out["sender_id"] = event.sender_id
        if "participant_ids" in expansions and event.participant_ids:
            out["participant_ids"] = list(event.participant_ids)
        if event.media_ids and ("attachments" in fields or "attachments.media_keys" in expansions):
            out["attachments"] = {
                "media_keys": [self.media[m].media_key for m in event.media_ids if m in self.media]
            }
        return out

    def _includes(
        self,
        events: list[DmEvent],
        expansions: set[str],
        user_fields: list[str],
        media_fields: frozenset[str] = frozenset(),
    ) -> dict[str, Any]:
        includes: dict[str, Any] = {}
        if "sender_id" in expansions or "participant_ids" in expansions:
            senders = dict.fromkeys(
                [e.sender_id for e in events if "sender_id" in expansions]
                + [p for e in events if "participant_ids" in expansions for p in e.participant_ids]
            )
            users = [self._user_json(self.users[s], user_fields) for s in senders if s in self.users]
            if users:
                includes["users"] = users
        if "attachments.media_keys" in expansions:
            media = [
                {
                    "media_key": self.media[m].media_key,
                    "type": _MEDIA_API_TYPE[_media_kind(self.media[m].category, None)],
                    # X's v2 answer for legacy DM media: the TON URL (its last three parts name the file).
                    **({"url": self.ton_url(e.id, m)} if "url" in media_fields else {}),
                }
                for e in events
                for m in e.media_ids
                if m in self.media
            ]
            if media:
                includes["media"] = media
        return includes

    def _list_events(self, request: web.Request, convs: list[Conversation]) -> web.Response:
        query = request.query
        fields = set(_csv(query.get("dm_event.fields")))
        expansions = set(_csv(query.get("expansions")))
        event_types = set(_csv(query.get("event_types"))) or {
            "MessageCreate",
            "ParticipantsJoin",
            "ParticipantsLeave",
        }
        max_results = int(query.get("max_results", "100"))
        now = self.clock()
        listed_until = now - self.read_lag_seconds
        events = [
            e
            for conv in convs
            for e in self.messages_in(conv.id)
            if e.created_at <= listed_until and self.unlisted_until.get(e.id, 0.0) <= now
        ]
        events = sorted(
            (e for e in events if e.event_type in event_types), key=lambda e: int(e.id), reverse=True
        )
        token = query.get("pagination_token")
        if token is not None:
            before = _decode_token(token, self.pagination_epoch)
            if before is None:
                return _invalid_request(
                    "Invalid pagination_token.", parameter="pagination_token", value=token
                )
            events = [e for e in events if int(e.id) < before]
        page, rest = events[:max_results], events[max_results:]
        body: dict[str, Any] = {}
        if page:
            body["data"] = [self._event_json(e, fields, expansions) for e in page]
            includes = self._includes(
                page, expansions, _csv(query.get("user.fields")), frozenset(_csv(query.get("media.fields")))
            )
            if includes:
                body["includes"] = includes
        meta: dict[str, Any] = {"result_count": len(page)}
        if page and rest:
            meta["next_token"] = _encode_token(int(page[-1].id), self.pagination_epoch)
        body["meta"] = meta
        return _json(200, body)

    async def _events_in_conversation(self, request: web.Request) -> web.StreamResponse:
        conv = self._conversation_for(request[_USER], request.match_info["id"], create=False)
        if isinstance(conv, web.Response):
            return conv
        return self._list_events(request, [conv])

    async def _all_events(self, request: web.Request) -> web.StreamResponse:
        user = request[_USER]
        mine = [c for c in self.conversations.values() if user.id in c.participants]
        return self._list_events(request, mine)

    async def _events_with_participant(self, request: web.Request) -> web.StreamResponse:
        user = request[_USER]
        participant_id = request.match_info["participant_id"]
        conv = self.conversations.get(one_to_one_id(user.id, participant_id))
        return self._list_events(request, [] if conv is None else [conv])

    def _visible_event(self, user: XUser, event_id: str) -> DmEvent | None:
        for event in self.events:
            if event.id == event_id and not event.deleted:
                conv = self.conversations.get(event.conversation_id)
                if conv is not None and user.id in conv.participants:
                    return event
        return None

    async def _get_event(self, request: web.Request) -> web.StreamResponse:
        event_id = request.match_info["event_id"]
        event = self._visible_event(request[_USER], event_id)
        if event is None or event.created_at > self.clock() - self.read_lag_seconds:
            problem = _not_found_problem("dm_event", event_id, "event_id")
            problem.pop("status")
            return _json(200, {"errors": [problem]})
        fields = set(_csv(request.query.get("dm_event.fields")))
        expansions = set(_csv(request.query.get("expansions")))
        body: dict[str, Any] = {"data": self._event_json(event, fields, expansions)}
        includes = self._includes(
            [event],
            expansions,
            _csv(request.query.get("user.fields")),
            frozenset(_csv(request.query.get("media.fields"))),
        )
        if includes:
            body["includes"] = includes
        return _json(200, body)

    async def _dm_media_download(self, request: web.Request) -> web.StreamResponse:
        """Raw bytes of a legacy DM attachment, for a participant of the DM's conversation."""
        event_id, media_id = request.match_info["dm_id"], request.match_info["media_id"]
        event = self._visible_event(request[_USER], event_id)
        upload = self.media.get(media_id)
        if event is None or upload is None or media_id not in event.media_ids:
            return _not_found("media", media_id, "media_id")
        if request.match_info["resource_id"] != self.ton_url(event_id, media_id).rsplit("/", 1)[-1]:
            return _not_found("media", request.match_info["resource_id"], "resource_id")
        return web.Response(body=upload.data, content_type="application/octet-stream")

    async def _delete_event(self, request: web.Request) -> web.StreamResponse:
        user = request[_USER]
        event_id = request.match_info["event_id"]
        event = self._visible_event(user, event_id)
        if event is None:
            return _not_found("dm_event", event_id, "event_id")
        if event.sender_id != user.id:
            return _not_authorized("dm_event", event_id, "event_id")
        event.deleted = True
        return _json(200, {"data": {"deleted": True}})

    # ------------------------------------------------------------ webhooks / XAA

    async def _crc(self, url: str) -> bool:
        """X's CRC: GET url?crc_token=…; the answer must be the HMAC of the token."""
        token = secrets.token_urlsafe(24)
        try:
            async with aiohttp.ClientSession() as session:
                separator = "&" if "?" in url else "?"
                async with session.get(
                    f"{url}{separator}crc_token={token}", timeout=aiohttp.ClientTimeout(10)
                ) as r:
                    if r.status != 200:
                        return False
                    body = await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return False
        expected = sign(self.consumer_secret, token.encode())
        answer = body.get("response_token") if isinstance(body, dict) else None
        return isinstance(answer, str) and hmac.compare_digest(answer, expected)

    async def _webhooks_list(self, request: web.Request) -> web.StreamResponse:
        data = [dict(w) for w in self.webhooks.values()]
        return _json(200, {"data": data, "meta": {"result_count": len(data)}})

    async def _webhooks_create(self, request: web.Request) -> web.StreamResponse:
        url = json.loads(request[_BODY])["url"]
        if any(w["url"] == url for w in self.webhooks.values()):
            return _invalid_request("DuplicateUrlFailed", parameter="url", value=url)
        if not await self._crc(url):
            return _invalid_request("CrcValidationFailed", parameter="url", value=url)
        webhook = {"id": self._new_id(), "url": url, "valid": True, "created_at": _iso(self.clock())}
        self.webhooks[webhook["id"]] = webhook
        return _json(200, {"data": dict(webhook)})

    async def _webhooks_validate(self, request: web.Request) -> web.StreamResponse:
        webhook = self.webhooks.get(request.match_info["webhook_id"])
        if webhook is None:
            return _not_found("webhook", request.match_info["webhook_id"], "webhook_id")
        webhook["valid"] = await self._crc(webhook["url"])
        return _json(200, {"data": {"valid": webhook["valid"]}})

    async def _webhooks_delete(self, request: web.Request) -> web.StreamResponse:
        webhook = self.webhooks.pop(request.match_info["webhook_id"], None)
        if webhook is None:
            return _not_found("webhook", request.match_info["webhook_id"], "webhook_id")
        return _json(200, {"data": {"deleted": True}})

    async def _webhooks_replay(self, request: web.Request) -> web.StreamResponse:
        body = json.loads(request[_BODY])
        webhook = self.webhooks.get(body["webhook_id"])
        if webhook is None:
            return _not_found("webhook", body["webhook_id"], "webhook_id")
        start = datetime.strptime(body["from_date"], "%Y%m%d%H%M").replace(tzinfo=UTC).timestamp()
        end = datetime.strptime(body["to_date"], "%Y%m%d%H%M").replace(tzinfo=UTC).timestamp() + 60
        job = {"job_id": self._new_id(), "created_at": _iso(self.clock())}
        self.replays.append({**body, **job})
        again = [d for d in self.deliveries if d["webhook_id"] == webhook["id"] and start <= d["at"] < end]
        for delivery in again:
            self._spawn(self._deliver(webhook, delivery["body"], replay=True))
        return _json(200, {"data": job})

    async def _subscriptions_list(self, request: web.Request) -> web.StreamResponse:
        return _json(200, {"data": [dict(s) for s in self.subscriptions.values()]})

    async def _subscriptions_create(self, request: web.Request) -> web.StreamResponse:
        user = request[_USER]
        body = json.loads(request[_BODY])
        event_type, user_id = body["event_type"], str(body["filter"].get("user_id", ""))
        if event_type.startswith(("dm.", "chat.")) and (user is APP_USER or user.id != user_id):
            # Private events (dm.*, chat.*): only with the monitored user's own OAuth 2.0 token; the app's
            # Bearer token subscribes to public events only.
            return _about_blank(403, "Forbidden", "Private events need the user's own token.")
        webhook_id = body.get("webhook_id")
        if webhook_id is not None and webhook_id not in self.webhooks:
            return _invalid_request("Unknown webhook_id.", parameter="webhook_id", value=str(webhook_id))
        for existing in self.subscriptions.values():
            if existing["event_type"] == event_type and existing["filter"]["user_id"] == user_id:
                return _invalid_request("DuplicateSubscription", parameter="event_type", value=event_type)
        now = _iso(self.clock())
        subscription: dict[str, Any] = {
            "subscription_id": self._new_id(),
            "event_type": event_type,
            "filter": {"user_id": user_id},
            "created_at": now,
            "updated_at": now,
        }
        for key in ("tag", "webhook_id"):
            if body.get(key) is not None:
                subscription[key] = body[key]
        self.subscriptions[subscription["subscription_id"]] = subscription
        return _json(200, {"data": {"subscription": dict(subscription)}})

    def payload_for(self, event: DmEvent, event_type: str, user_id: str, tag: str | None) -> dict[str, Any]:
        """A delivery as X documents it: the legacy ``direct_message_events`` shape, which names
        no conversation and one recipient. A group's message (``push_groups``) comes the same way:
        to a subscriber who received it, it names that subscriber, exactly as a 1-to-1 would."""
        conv = self.conversations[event.conversation_id]
        others = sorted(conv.participants - {event.sender_id})
        recipient = user_id if event_type == "dm.received" else next(iter(others), event.sender_id)
        users = {
            uid: {"data": {"id": uid, "username": self.users[uid].username, "name": self.users[uid].name}}
            for uid in (event.sender_id, recipient)
            if uid in self.users
        }
        data: dict[str, Any] = {
            "event_uuid": str(-secrets.randbelow(10**18)),
            "filter": {"user_id": user_id},
            "event_type": event_type,
            "payload": {
                "direct_message_events": [
                    {
                        "type": "message_create",
                        "id": event.id,
                        "created_timestamp": str(int(event.created_at * 1000)),
                        "message_create": {
                            "target": {"recipient_id": recipient},
                            "sender_id": event.sender_id,
                            "message_data": self._legacy_message_data(event),
                        },
                    }
                ],
                "users": users,
            },
        }
        if tag is not None:
            data["tag"] = tag
        return {"data": data}

    def _legacy_message_data(self, event: DmEvent) -> dict[str, Any]:
        """``message_data`` in the legacy shape: an attachment is ``attachment.media``, named by its
        TON URL (``https://ton.twitter.com/1.1/ton/data/dm/{dm_id}/{media_id}/{resource_id}``)."""
        data: dict[str, Any] = {
            "text": event.text or "",
            "entities": {"hashtags": [], "symbols": [], "user_mentions": [], "urls": []},
        }
        for media_id in event.media_ids[:1]:
            if media_id in self.media:
                ton = self.ton_url(event.id, media_id)
                data["attachment"] = {
                    "type": "media",
                    "media": {
                        "id": int(media_id),
                        "id_str": media_id,
                        "media_url": ton.replace("https://", "http://", 1),
                        "media_url_https": ton,
                        "type": _MEDIA_API_TYPE[_media_kind(self.media[media_id].category, None)],
                    },
                }
        return data

    def _push(self, event: DmEvent) -> None:
        """Push a new MessageCreate to every subscribed webhook (dm.received / dm.sent)."""
        conv = self.conversations.get(event.conversation_id)
        if event.event_type != "MessageCreate" or conv is None:
            return
        if conv.kind == "Group" and not self.push_groups:
            return
        for subscription in list(self.subscriptions.values()):
            user_id = subscription["filter"]["user_id"]
            kind = subscription["event_type"]
            wanted = (kind == "dm.sent" and event.sender_id == user_id) or (
                kind == "dm.received" and event.sender_id != user_id and user_id in conv.participants
            )
            webhook = self.webhooks.get(str(subscription.get("webhook_id")))
            if wanted and webhook is not None and webhook["valid"]:
                body = json.dumps(self.payload_for(event, kind, user_id, subscription.get("tag"))).encode()
                self._spawn(self._deliver(webhook, body))

    def _push_chat(self, conv: ChatConversation, sender: str, encoded: str) -> None:
        """Push an X Chat message (``chat.received``) to every other member's subscription: only
        ciphertext and routing, as X's Activity API sends it (xchat/real-time-events)."""
        for subscription in list(self.subscriptions.values()):
            user_id = subscription["filter"]["user_id"]
            if (
                subscription["event_type"] != "chat.received"
                or user_id == sender
                or user_id not in conv.members
            ):
                continue
            webhook = self.webhooks.get(str(subscription.get("webhook_id")))
            if webhook is None or not webhook["valid"]:
                continue
            data = {
                "event_type": "chat.received",
                "event_uuid": str(-secrets.randbelow(10**18)),
                "filter": {"user_id": user_id},
                "payload": {
                    "conversation_id": path_form(conv.id),
                    "sender_id": sender,
                    "encoded_event": encoded,
                },
            }
            self._spawn(self._deliver(webhook, json.dumps({"data": data}).encode()))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            work.close()
            return  # no loop (a test building state): nothing can be pushed
        task = loop.create_task(work)
        self._push_tasks.add(task)
        task.add_done_callback(self._push_tasks.discard)

    async def _deliver(self, webhook: dict[str, Any], body: bytes, *, replay: bool = False) -> None:
        record: dict[str, Any] = {
            "webhook_id": webhook["id"],
            "body": body,
            "status": None,
            "at": self.clock(),
        }
        if not replay:
            self.deliveries.append(record)
        if not replay and self.push_drop > 0:
            self.push_drop -= 1
            return
        if not replay and self.push_delays:
            # X's deliveries race each other: this one arrives late, after later ones.
            await asyncio.sleep(self.push_delays.pop(0))
        copies = 1
        if not replay and self.push_duplicate > 0:
            self.push_duplicate -= 1
            copies = 2
        headers = {
            "Content-Type": "application/json",
            "x-twitter-webhooks-signature": sign(self.consumer_secret, body),
        }
        for _ in range(copies):
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.post(
                        webhook["url"], data=body, headers=headers, timeout=aiohttp.ClientTimeout(10)
                    ) as r,
                ):
                    record["status"] = r.status
            except (aiohttp.ClientError, TimeoutError):
                record["status"] = "error"

    async def wait_pushes(self) -> None:
        """Let every delivery in flight finish (tests)."""
        while self._push_tasks:
            await asyncio.wait(set(self._push_tasks))

    # -------------------------------------------------------------------- media

    def _media_limit_error(self, kind: str, size: int) -> web.Response | None:
        limit = self.media_size_limits.get(kind)
        if limit is not None and size > limit:
            return _invalid_request(
                f"Media of type {kind} must be at most {limit} bytes; got {size}.",
                parameter="total_bytes",
                value=str(size),
            )
        return None

    def _new_media(
        self, owner: XUser, category: str, media_type: str | None, additional_owners: tuple[str, ...]
    ) -> MediaUpload:
        media_id = self._new_id()
        kind = _media_kind(category, media_type)
        upload = MediaUpload(
            id=media_id,
            media_key=f"{_MEDIA_KEY_PREFIX[kind]}_{media_id}",
            category=category,
            media_type=media_type,
            owner_id=owner.id,
            created_at=self.clock(),
            additional_owners=additional_owners,
        )
        self.media[media_id] = upload
        return upload

    def _media_data(self, upload: MediaUpload, *, status: bool = False) -> dict[str, Any]:
        kind = _media_kind(upload.category, upload.media_type)
        data: dict[str, Any] = {
            "id": upload.id,
            "media_key": upload.media_key,
            "expires_after_secs": max(0, int(upload.created_at + self.media_ttl_seconds - self.clock())),
        }
        if upload.state != "initialized":
            data["size"] = len(upload.data)
        if kind in ("image", "gif") and upload.data:
            image_type, width, height = _sniff_image(upload.data)
            data["image"] = {"image_type": image_type, "w": width, "h": height}
        elif kind == "video":
            data["video"] = {"video_type": upload.media_type or "video/mp4"}
        if upload.state in ("pending", "in_progress", "failed") or (status and upload.state == "succeeded"):
            info: dict[str, Any] = {"state": upload.state}
            if upload.state in ("pending", "in_progress"):
                info["check_after_secs"] = self.media_check_after_secs
            progress = {"pending": 0, "in_progress": 50, "succeeded": 100}.get(upload.state)
            if progress is not None:
                info["progress_percent"] = progress
            data["processing_info"] = info
        return data

    def _owned_media(self, user: XUser, media_id: str) -> MediaUpload | web.Response:
        upload = self.media.get(media_id)
        if upload is None:
            return _not_found("media", media_id, "media_id")
        if upload.owner_id != user.id and user.id not in upload.additional_owners:
            return _not_authorized("media", media_id, "media_id")
        return upload

    async def _media_upload(self, request: web.Request) -> web.StreamResponse:
        """One-shot upload (multipart raw bytes, or JSON with base64 ``media``)."""
        user = request[_USER]
        ctype = request.headers.get("Content-Type")
        fields: dict[str, str] = {}
        data = b""
        if media_type_of(ctype) == "multipart/form-data":
            for part in self._parts(request):
                if part.name == "media":
                    data = part.value
                else:
                    fields[part.name] = part.text
        else:
            document = json.loads(request[_BODY])
            fields = {k: v for k, v in document.items() if k != "media" and isinstance(v, str)}
            try:
                data = base64.b64decode(str(document.get("media", "")), validate=True)
            except binascii.Error:
                return _invalid_request("media must be base64 encoded.", parameter="media")
        category = fields.get("media_category", "dm_image")
        too_big = self._media_limit_error(_media_kind(category, None), len(data))
        if too_big is not None:
            return too_big
        owners = tuple(_csv(fields.get("additional_owners")))
        upload = self._new_media(user, category, None, owners)
        upload.data = data
        upload.state = "succeeded"
        return _json(200, {"data": self._media_data(upload)})

    async def _media_initialize(self, request: web.Request) -> web.StreamResponse:
        user = request[_USER]
        document = json.loads(request[_BODY])
        category = document.get("media_category")
        media_type = document.get("media_type")
        total = document.get("total_bytes")
        kind = _media_kind(category, media_type)
        if total is not None:
            too_big = self._media_limit_error(kind, int(total))
            if too_big is not None:
                return too_big
        owners = tuple(str(o) for o in document.get("additional_owners", []))
        upload = self._new_media(user, category or f"dm_{kind}", media_type, owners)
        upload.total_bytes = total
        return _json(200, {"data": self._media_data(upload)})

    async def _media_append(self, request: web.Request) -> web.StreamResponse:
        upload = self._owned_media(request[_USER], request.match_info["id"])
        if isinstance(upload, web.Response):
            return upload
        if upload.state != "initialized":
            return _invalid_request("Media upload was already finalized.", parameter="id", value=upload.id)
        ctype = request.headers.get("Content-Type")
        chunk = b""
        index = 0
        if media_type_of(ctype) == "multipart/form-data":
            for part in self._parts(request):
                if part.name == "media":
                    chunk = part.value
                elif part.name == "segment_index":
                    index = int(part.text)
        else:
            document = json.loads(request[_BODY])
            index = int(document["segment_index"])
            try:
                chunk = base64.b64decode(str(document["media"]), validate=True)
            except binascii.Error:
                return _invalid_request("media must be base64 encoded.", parameter="media")
        if len(chunk) > self.max_chunk_bytes:
            return _invalid_request(
                f"A chunk must be at most {self.max_chunk_bytes} bytes.",
                parameter="media",
                value=str(len(chunk)),
            )
        upload.segments[index] = chunk
        expires_at = int(upload.created_at + self.media_ttl_seconds)
        return _json(200, {"data": {"expires_at": expires_at}})

    async def _media_finalize(self, request: web.Request) -> web.StreamResponse:
        upload = self._owned_media(request[_USER], request.match_info["id"])
        if isinstance(upload, web.Response):
            return upload
        if upload.state != "initialized":
            return _invalid_request("Media upload was already finalized.", parameter="id", value=upload.id)
        indexes = sorted(upload.segments)
        if not indexes or indexes != list(range(len(indexes))):
            return _invalid_request(f"Segments must be 0..n-1 without gaps; got {indexes}.", parameter="id")
        data = b"".join(upload.segments[i] for i in indexes)
        if upload.total_bytes is not None and len(data) != upload.total_bytes:
            return _invalid_request(
                f"Received {len(data)} bytes but total_bytes was {upload.total_bytes}.", parameter="id"
            )
        kind = _media_kind(upload.category, upload.media_type)
        too_big = self._media_limit_error(kind, len(data))
        if too_big is not None:
            return too_big
        upload.data = data
        upload.segments.clear()
        needs_processing = kind in ("gif", "video")
        if needs_processing:
            upload.state = "pending"
        else:
            upload.state = "failed" if self.media_processing_fails else "succeeded"
        return _json(200, {"data": self._media_data(upload)})

    async def _media_status(self, request: web.Request) -> web.StreamResponse:
        upload = self._owned_media(request[_USER], request.query["media_id"])
        if isinstance(upload, web.Response):
            return upload
        if upload.state in ("pending", "in_progress"):
            upload.status_polls += 1
            if upload.status_polls > self.media_processing_polls:
                upload.state = "failed" if self.media_processing_fails else "succeeded"
            else:
                upload.state = "in_progress"
        return _json(200, {"data": self._media_data(upload, status=True)})


# ------------------------------------------------------------------ pagination tokens


def _encode_token(event_id: int, epoch: int) -> str:
    return base64.b32hexencode(f"before:{event_id}:{epoch}".encode()).decode().rstrip("=").lower()


def _decode_token(token: str, epoch: int) -> int | None:
    """The event id a token pages back from; None for a token that is not one, or expired (issued
    before the current ``epoch``)."""
    padded = token.upper() + "=" * (-len(token) % 8)
    try:
        text = base64.b32hexdecode(padded).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    prefix, value, issued = [*text.split(":"), "", ""][:3]
    if prefix != "before" or not value.isdigit() or issued != str(epoch):
        return None
    return int(value)


# ----------------------------------------------------------------------------- runner


@contextlib.asynccontextmanager
async def run_fake_x(
    fake: FakeX | None = None, *, host: str = "127.0.0.1", port: int = 0, **kwargs: Any
) -> AsyncIterator[tuple[FakeX, str]]:
    """Serve a :class:`FakeX` on ``host`` (a free port by default) for the ``async with`` body.

    Yields ``(fake, base_url)`` with ``base_url`` like ``"http://127.0.0.1:54321"``. Extra keyword
    arguments construct the fake when none is given. Hanging requests (``"timeout"`` faults) are
    released on exit, so cleanup is quick.
    """
    server = fake if fake is not None else FakeX(**kwargs)
    runner = web.AppRunner(server.make_app(), shutdown_timeout=2.0, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = cast(tuple[str, int], runner.addresses[0])
        yield server, f"http://{host}:{bound[1]}"
    finally:
        for task in list(server._push_tasks):
            task.cancel()
        if server._push_tasks:
            await asyncio.wait(set(server._push_tasks))
        await runner.cleanup()
