"""A fake Slack for tests and the local sandbox.

Two halves live here:

* :class:`FakeSlack` plays the Slack servers the bridge *calls*: the Web API
  (``POST``/``GET /api/{method}``, as used by ``slack_sdk``'s ``AsyncWebClient``),
  ``response_url`` endpoints (``POST /response/{id}``) and private file downloads
  (``GET /files-pri/{team}-{file}/…``). Every Web API call is recorded so tests can
  assert on it, and ``wait_for`` lets a test await calls the bridge makes from
  background tasks.
* :class:`SlackSender` plays Slack *calling the bridge*: signed Events API
  envelopes, slash commands and raw bodies.

:func:`run_fake_slack` starts a :class:`FakeSlack` on a free loopback port.
"""

from __future__ import annotations

import asyncio
import html
import json
import math
import mimetypes
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import aiohttp
import emoji
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from slack_sdk.signature import SignatureVerifier

from adapters.sandbox.fake_slack_install import InstallError, SlackInstalls, Team
from adapters.sandbox.fake_slack_views import FakeViews, ViewError, pressed

__all__ = [
    "RESPONSE_URL_MAX_USES",
    "RESPONSE_URL_TTL_SECONDS",
    "Button",
    "FakeSlack",
    "FileDownload",
    "SlackCall",
    "SlackResult",
    "SlackSender",
    "rich_text_blocks",
    "run_fake_slack",
]

Clock = Callable[[], float]
CallPredicate = Callable[["SlackCall"], bool]
_T = TypeVar("_T")

#: Slack accepts at most this many posts to one ``response_url``.
RESPONSE_URL_MAX_USES = 5
#: A ``response_url`` is valid for 30 minutes after the command was sent.
RESPONSE_URL_TTL_SECONDS = 30 * 60
# chat.postMessage keeps this many characters of ``text`` (Slack truncates the rest).
MAX_TEXT = 40_000

_RECORDED_HEADERS = ("authorization", "content-type", "user-agent")

_LOGIN_PAGE = """<!DOCTYPE html>
<html lang="en-US">
<head><meta charset="utf-8"><title>Slack</title></head>
<body class="signin">
<h1>Sign in to your workspace</h1>
<form id="signin_form" action="/signin" method="post">
<input type="email" name="email" placeholder="name@work-email.com">
<input type="password" name="password">
<button type="submit" id="signin_btn">Sign In</button>
</form>
</body>
</html>
"""


class _MonotonicTs:
    """Process-wide generator of unique, increasing Slack ``ts`` strings.

    Shared by every :class:`FakeSlack` and :class:`SlackSender` so that a user
    message and a bot reply can never get the same ``ts``, even with a frozen clock.
    """

    def __init__(self) -> None:
        self._last = 0

    def next(self, clock: Clock) -> str:
        micros = max(int(clock() * 1_000_000), self._last + 100)
        self._last = micros
        return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"


_TS = _MonotonicTs()


# --------------------------------------------------------------------------------------
# Recorded data
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlackCall:
    """One Web API request received by :class:`FakeSlack`, with the answer it got.

    ``params`` merges the query string, the form body and the JSON body (in that
    order of precedence, later wins). ``headers`` holds lower-cased
    ``authorization``, ``content-type`` and ``user-agent`` when present.
    """

    method: str
    params: dict[str, Any]
    headers: dict[str, str]
    http_verb: str
    status: int
    response: dict[str, Any]
    at: float

    @property
    def ok(self) -> bool:
        """Whether the fake answered ``"ok": true``."""
        return bool(self.response.get("ok"))

    @property
    def error(self) -> str | None:
        """The ``error`` code of a failed call, else ``None``."""
        err = self.response.get("error")
        return err if isinstance(err, str) else None

    def __str__(self) -> str:
        shown = {k: v for k, v in self.params.items() if k not in ("blocks", "attachments")}
        verdict = "ok" if self.ok else f"error={self.error} status={self.status}"
        return f"{self.method}({shown}) -> {verdict}"


@dataclass(frozen=True)
class FileDownload:
    """One ``GET`` of a private file URL; ``authorized`` is False when the login page was served."""

    file_id: str
    path: str
    authorized: bool
    at: float


@dataclass
class _ResponseUrl:
    created_at: float
    uses: int = 0
    message: dict[str, Any] | None = None  # the message a click came from: replace_original edits it
    # Whom and where a slash command's answers show (the command's own response_url): an ephemeral
    # answer with blocks becomes an ephemeral message there, whose buttons can be clicked.
    user: str | None = None
    channel: str | None = None


@dataclass(frozen=True)
class Button:
    """A button the bot showed someone, as Slack would render it (see :meth:`FakeSlack.buttons`)."""

    user: str  # who sees it: the ephemeral's recipient, or the user a DM went to
    channel: str
    message_ts: str
    ephemeral: bool
    action_id: str
    text: str
    value: str
    block_id: str


@dataclass
class _StoredFile:
    meta: dict[str, Any]
    content: bytes
    created: int


@dataclass(frozen=True)
class PostLimits:
    """Slack's limits on ``chat.postMessage``, enforced when set (:attr:`FakeSlack.post_limits`).

    Slack documents "one message per second per channel, short bursts allowed", and a
    workspace-wide limit whose number it does not publish. Each is a token bucket here: a burst,
    refilled at the rate; a post past either is answered 429 ``ratelimited`` with ``Retry-After``
    (whole seconds, rounded up) and not posted. ``None`` leaves that limit out."""

    per_channel_per_s: float | None = 1.0
    channel_burst: int = 3
    workspace_per_min: float | None = None
    workspace_burst: int = 20


class _Bucket:
    """A token bucket on the fake's clock."""

    def __init__(self, per_s: float, burst: int, now: float) -> None:
        self.per_s, self.burst = per_s, burst
        self.tokens, self.at = float(burst), now

    def wait(self, now: float) -> float:
        """Seconds until a token is free (0: one is now)."""
        self.tokens = min(float(self.burst), self.tokens + (now - self.at) * self.per_s)
        self.at = now
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.per_s


class _SlackError(Exception):
    """Raised by a method handler to answer ``{"ok": false, "error": …}``."""

    def __init__(self, error: str, *, status: int = 200, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.status = status
        self.headers = dict(headers or {})


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _opt_str(params: Mapping[str, Any], key: str) -> str | None:
    value = params.get(key)
    if value is None or value == "":
        return None
    return str(value)


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


def _json_field(value: Any) -> Any:
    """Form-encoded bodies carry ``blocks``/``attachments`` as JSON strings; JSON bodies as lists."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            raise _SlackError("invalid_blocks") from None
    return value


def _response_id(id_or_url: str) -> str:
    return id_or_url.rstrip("/").rsplit("/", 1)[-1]


def _as_predicate(predicate: CallPredicate | str) -> CallPredicate:
    if isinstance(predicate, str):
        method = predicate
        return lambda call: call.method == method
    return predicate


_TOKEN_RE = re.compile(r"<([^<>]+)>")
_EMOJI_RE = re.compile(r":([a-z0-9_+\-']+):")


def _emoji_unicode(name: str) -> str | None:
    char = emoji.emojize(f":{name}:", language="alias")
    if not isinstance(char, str) or char == f":{name}:":
        return None
    return "-".join(f"{ord(c):x}" for c in char)


def _text_elements(raw: str) -> list[dict[str, Any]]:
    """Elements for a run of plain (entity-escaped) text, splitting out known ``:emoji:``."""
    out: list[dict[str, Any]] = []
    pos = 0
    for m in _EMOJI_RE.finditer(raw):
        code = _emoji_unicode(m.group(1))
        if code is None:
            continue
        if m.start() > pos:
            out.append({"type": "text", "text": html.unescape(raw[pos : m.start()])})
        out.append({"type": "emoji", "name": m.group(1), "unicode": code})
        pos = m.end()
    if pos < len(raw):
        out.append({"type": "text", "text": html.unescape(raw[pos:])})
    return out


def _token_element(token: str) -> dict[str, Any] | None:
    """Rich-text element for one ``<…>`` token of Slack's ``text`` encoding."""
    target, _, label = token.partition("|")
    if target.startswith("@"):
        return {"type": "user", "user_id": target[1:]}
    if target.startswith("#"):
        return {"type": "channel", "channel_id": target[1:]}
    if target.startswith("!subteam^"):
        return {"type": "usergroup", "usergroup_id": target[len("!subteam^") :]}
    if target in ("!here", "!channel", "!everyone"):
        return {"type": "broadcast", "range": target[1:]}
    if target.startswith("!"):
        return None
    element: dict[str, Any] = {"type": "link", "url": html.unescape(target)}
    if label:
        element["text"] = html.unescape(label)
    return element


def rich_text_blocks(text: str) -> list[dict[str, Any]]:
    """Build the ``rich_text`` block Slack attaches to a user message with this ``text``.

    Handles the ``text`` encoding Slack uses in events: ``<@U…>``, ``<#C…|name>``,
    ``<!here>``/``<!channel>``/``<!everyone>``, ``<!subteam^S…|@team>``,
    ``<https://…>``/``<https://…|label>``, ``&amp;``/``&lt;``/``&gt;`` escapes and
    ``:emoji:`` names known to the ``emoji`` package (unknown names stay text).
    Inline formatting (``*bold*`` …) is not turned into styles. Returns ``[]`` for
    empty text.
    """
    if not text:
        return []
    elements: list[dict[str, Any]] = []
    pos = 0
    for m in _TOKEN_RE.finditer(text):
        element = _token_element(m.group(1))
        if element is None:
            continue
        elements.extend(_text_elements(text[pos : m.start()]))
        elements.append(element)
        pos = m.end()
    elements.extend(_text_elements(text[pos:]))
    merged: list[dict[str, Any]] = []
    for element in elements:
        if element["type"] == "text" and merged and merged[-1]["type"] == "text":
            merged[-1] = {"type": "text", "text": merged[-1]["text"] + element["text"]}
        elif element["type"] != "text" or element["text"]:
            merged.append(element)
    block_id = secrets.token_urlsafe(4)[:5]
    return [
        {
            "type": "rich_text",
            "block_id": block_id,
            "elements": [{"type": "rich_text_section", "elements": merged}],
        }
    ]


# --------------------------------------------------------------------------------------
# FakeSlack
# --------------------------------------------------------------------------------------


class FakeSlack:
    """An in-process fake of the Slack servers the bridge talks to.

    Serve :attr:`app` (an aiohttp ``web.Application``) with :func:`run_fake_slack` or
    pytest-aiohttp's ``aiohttp_server(fake.app)``; in the latter case set
    ``fake.base_url = str(server.make_url("")).rstrip("/")`` so file and
    ``response_url`` links point at the server. Point the bridge's client at it with
    ``AsyncWebClient(token=fake.bot_token, base_url=fake.api_url)``.

    Routes:

    * ``GET|POST /api/{method}`` — Web API. Auth is ``Authorization: Bearer <bot_token>``
      (or a ``token`` parameter); missing → ``not_authed``, wrong → ``invalid_auth``.
    * ``POST /response/{id}`` — ``response_url`` targets made by :meth:`new_response_url`.
    * ``GET /files-pri/{team}-{file_id}/[download/]{name}`` — files from :meth:`add_file`.
    """

    def __init__(
        self,
        *,
        bot_token: str = "xoxb-test",
        team_id: str = "T0001",
        bot_user_id: str = "UBOT",
        bot_id: str = "BBOT",
        clock: Clock = time.time,
        app_id: str = "A0001",
        team_name: str = "Fake Team",
        team_domain: str = "fake",
        bot_name: str = "xdm-bridge",
        base_url: str | None = None,
    ) -> None:
        self.bot_token = bot_token
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.app_id = app_id
        self.team_name = team_name
        self.team_domain = team_domain
        self.bot_name = bot_name
        self.clock = clock
        #: Origin the fake is reachable at (``http://127.0.0.1:PORT``), no trailing slash.
        self.base_url: str | None = base_url.rstrip("/") if base_url else None

        #: Every Web API request received, in arrival order.
        self.calls: list[SlackCall] = []
        #: Successful posts to each ``response_url`` id, in arrival order.
        self.responses: dict[str, list[dict[str, Any]]] = {}
        #: Every GET of a private file URL.
        self.downloads: list[FileDownload] = []
        #: Messages removed with ``chat.delete`` (same shape as :meth:`posted`).
        self.deleted: list[dict[str, Any]] = []

        self._users: dict[str, dict[str, Any]] = {}
        self._channels: dict[str, dict[str, Any]] = {}
        self._files: dict[str, _StoredFile] = {}
        self._messages: dict[tuple[str, str], dict[str, Any]] = {}
        self._ephemerals: list[dict[str, Any]] = []
        self._reactions: dict[tuple[str, str], set[str]] = {}
        self._ratelimits: dict[str, list[int]] = {}
        #: Slack's posting limits, enforced when set (off by default: tests post freely).
        self.post_limits: PostLimits | None = None
        self._post_buckets: dict[str, _Bucket] = {}  # by channel, and "" for the workspace
        self._failures: dict[str, list[tuple[str, int]]] = {}
        self.channel_errors: dict[str, str] = {}
        """Channels every call naming them (``channel`` or ``channel_id``) is refused for, with
        this error, until removed: ``is_archived``, ``not_in_channel``, ``channel_not_found``."""
        self.text_errors: dict[str, str] = {}
        """Markers a ``chat.postMessage`` text is refused for, with this error, until removed:
        a refusal of that one message (``msg_too_long``, ``invalid_arguments``…), not the channel."""
        self.plain_posts: set[tuple[str, str]] = set()
        """(channel, ts) of each ``chat.postMessage`` sent with ``mrkdwn: false``: Slack shows
        its text without markup (links and ``<…>`` tokens still render)."""
        self._response_urls: dict[str, _ResponseUrl] = {}
        self._response_seq = 0
        self._watchers: set[asyncio.Event] = set()
        self._holds: dict[str, asyncio.Event] = {}
        self._held: dict[str, int] = {}  # calls waiting at a hold, by method
        self._drops: dict[str, int] = {}
        self._uploads: dict[str, dict[str, Any]] = {}
        self._upload_seq = 0
        #: Files shared into channels with files.completeUploadExternal: channel, id, title, content.
        self.shared_files: list[dict[str, Any]] = []
        #: "Add to Slack": workspaces that install the app, each with its own bot tokens.
        self.installs = SlackInstalls(clock=clock, app_id=app_id)
        self._caller: Team | None = None  # the workspace of the token of the call being answered

        self._handlers: dict[str, Callable[[dict[str, Any], str], dict[str, Any]]] = {
            "api.test": self._api_test,
            "auth.test": self._auth_test,
            "chat.postMessage": self._chat_post_message,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "chat.update": self._chat_update,
            "chat.delete": self._chat_delete,
            "reactions.add": self._reactions_add,
            "reactions.remove": self._reactions_remove,
            "users.info": self._users_info,
            "conversations.info": self._conversations_info,
            "conversations.history": self._conversations_history,
            "files.getUploadURLExternal": self._files_get_upload_url,
            "files.completeUploadExternal": self._files_complete_upload,
            "files.info": self._files_info,
        }
        #: App Home and modals (``views.*``), and the trigger ids that open modals.
        self.views = FakeViews(clock, team_id)
        for name, handler in self.views.handlers().items():
            self._handlers[name] = _refusing(handler)

        self.app = web.Application()
        self.app.router.add_route("GET", "/api/{method}", self._handle_api)
        self.app.router.add_route("POST", "/api/{method}", self._handle_api)
        self.app.router.add_post("/response/{response_id}", self._handle_response_url)
        self.app.router.add_get("/files-pri/{team_file}/{tail:.+}", self._handle_file)
        self.app.router.add_post("/upload/{file_id}", self._handle_upload)
        self.app.router.add_get("/oauth/v2/authorize", self.installs.authorize)

    # ---------------------------------------------------------------- configuration

    @property
    def authorize_url(self) -> str:
        """Slack's authorize page for installs (``SLACK_AUTHORIZE_URL``)."""
        return f"{self._require_base()}/oauth/v2/authorize"

    @property
    def api_url(self) -> str:
        """``{base_url}/api/`` — the ``base_url`` to give ``AsyncWebClient``."""
        return f"{self._require_base()}/api/"

    def add_user(
        self,
        user_id: str,
        *,
        display_name: str = "",
        real_name: str = "",
        name: str = "",
        is_bot: bool = False,
        deleted: bool = False,
        image_url: str | None = None,
        email: str | None = None,
        is_admin: bool = False,
        is_owner: bool = False,
    ) -> dict[str, Any]:
        """Register a user for ``users.info`` and return the ``user`` object it will answer.

        ``is_owner`` implies ``is_admin``, as in Slack.
        """
        image = image_url or f"https://avatars.slack-edge.com/fake/{user_id}_192.png"
        profile: dict[str, Any] = {
            "display_name": display_name,
            "display_name_normalized": display_name,
            "real_name": real_name,
            "real_name_normalized": real_name,
            "team": self.team_id,
            "image_24": image,
            "image_32": image,
            "image_48": image,
            "image_72": image,
            "image_192": image,
            "image_512": image,
        }
        if email is not None:
            profile["email"] = email
        user: dict[str, Any] = {
            "id": user_id,
            "team_id": self.team_id,
            "name": name or display_name.lower().replace(" ", ".") or user_id.lower(),
            "deleted": deleted,
            "real_name": real_name,
            "tz": "Europe/London",
            "tz_label": "Greenwich Mean Time",
            "tz_offset": 0,
            "profile": profile,
            "is_admin": is_admin or is_owner,
            "is_owner": is_owner,
            "is_bot": is_bot,
            "is_app_user": False,
            "updated": int(self.clock()),
        }
        self._users[user_id] = user
        return user

    def add_channel(
        self,
        channel_id: str,
        name: str,
        is_private: bool = False,
        *,
        is_member: bool = True,
        is_archived: bool = False,
    ) -> dict[str, Any]:
        """Register a channel for ``conversations.info`` and return its ``channel`` object."""
        channel: dict[str, Any] = {
            "id": channel_id,
            "name": name,
            "name_normalized": name,
            "is_channel": not is_private,
            "is_group": False,
            "is_im": False,
            "is_mpim": False,
            "is_private": is_private,
            "is_archived": is_archived,
            "is_general": False,
            "is_shared": False,
            "is_ext_shared": False,
            "is_org_shared": False,
            "is_member": is_member,
            "created": int(self.clock()),
            "creator": "U0000",
            "context_team_id": self.team_id,
            "topic": {"value": "", "creator": "", "last_set": 0},
            "purpose": {"value": "", "creator": "", "last_set": 0},
        }
        self._channels[channel_id] = channel
        return channel

    def add_file(
        self,
        file_id: str,
        *,
        name: str,
        mimetype: str,
        filetype: str,
        content: bytes,
        user: str = "U0000",
        title: str | None = None,
        base_url: str | None = None,
    ) -> dict[str, Any]:
        """Store a private file and return its Slack ``files[]`` element.

        The URLs point at this fake, so ``base_url`` (argument, or :attr:`base_url`
        set by the runner) must be known. ``files.info`` answers the same object.
        """
        created = int(self.clock())
        self._files[file_id] = _StoredFile(
            meta={
                "name": name,
                "mimetype": mimetype,
                "filetype": filetype,
                "user": user,
                "title": title or name,
            },
            content=content,
            created=created,
        )
        return self._file_object(file_id, base_url or self._require_base())

    def file_content(self, file_id: str) -> tuple[bytes, str] | None:
        """A file's bytes and mimetype, whether added by a person (:meth:`add_file`) or shared by
        the app (``files.completeUploadExternal``); None for an unknown id."""
        stored = self._files.get(file_id)
        if stored is not None:
            return stored.content, str(stored.meta["mimetype"])
        for shared in self.shared_files:
            if shared["id"] == file_id:
                return bytes(shared["content"]), mimetypes.guess_type(str(shared["name"]))[0] or ""
        return None

    def new_response_url(
        self, base_url: str | None = None, *, user: str | None = None, channel: str | None = None
    ) -> str:
        """Create a ``response_url`` (``{base}/response/{id}``) valid for 5 uses / 30 minutes.

        ``user`` and ``channel`` say whose slash command it answers: an ephemeral answer with
        blocks (a question with buttons) is then shown to ``user`` in ``channel`` as an ephemeral
        message (see :meth:`ephemerals` and :meth:`buttons`), as Slack shows it."""
        base = (base_url or self._require_base()).rstrip("/")
        self._response_seq += 1
        response_id = f"R{self._response_seq:04d}{secrets.token_hex(4)}"
        self._response_urls[response_id] = _ResponseUrl(created_at=self.clock(), user=user, channel=channel)
        self.responses[response_id] = []
        return f"{base}/response/{response_id}"

    def ratelimit_next(self, method: str, count: int = 1, retry_after: int = 1) -> None:
        """Answer the next ``count`` calls to ``method`` with HTTP 429 and ``Retry-After``."""
        self._ratelimits.setdefault(method, []).extend([retry_after] * count)

    def hold(self, method: str) -> asyncio.Event:
        """Keep every answer to ``method`` waiting until the returned event is set (a slow Slack).

        Held calls are recorded when they are answered."""
        return self._holds.setdefault(method, asyncio.Event())

    def held(self, method: str) -> int:
        """How many calls to ``method`` have arrived and wait at its :meth:`hold`."""
        return self._held.get(method, 0)

    def drop_after(self, method: str, count: int = 1) -> None:
        """Carry out the next ``count`` calls to ``method``, then close the connection without an
        answer (Slack did it, the caller never hears so)."""
        self._drops[method] = self._drops.get(method, 0) + count

    def fail_next(self, method: str, error: str, *, count: int = 1, status: int = 200) -> None:
        """Answer the next ``count`` calls to ``method`` with ``{"ok": false, "error": error}``.

        Useful for ``not_in_channel``, ``channel_not_found``, ``msg_too_long`` and the like.
        """
        self._failures.setdefault(method, []).extend([(error, status)] * count)

    def stop_failing(self, method: str) -> None:
        """Forget failures still queued by :meth:`fail_next` for ``method`` (Slack is back)."""
        self._failures.pop(method, None)

    def clear_calls(self) -> None:
        """Forget recorded calls (state such as messages and reactions is kept)."""
        self.calls.clear()

    # ---------------------------------------------------------------- inspection

    def calls_to(self, method: str) -> list[SlackCall]:
        """Recorded calls to one Web API method, in order."""
        return [c for c in self.calls if c.method == method]

    def reactions(self, channel: str, ts: str) -> set[str]:
        """Reaction names currently on message ``(channel, ts)`` (a copy)."""
        return set(self._reactions.get((channel, ts), set()))

    def ephemerals(self, user: str | None = None) -> list[dict[str, Any]]:
        """Ephemeral messages sent with ``chat.postEphemeral`` (optionally to one user).

        Each dict has ``channel``, ``user``, ``text``, ``message_ts`` and, when
        given, ``blocks``, ``attachments``, ``thread_ts``.
        """
        return [dict(e) for e in self._ephemerals if user is None or e["user"] == user]

    def buttons(self, user: str | None = None) -> list[Button]:
        """Buttons on live messages, oldest first: ephemerals (for ``user``) and bot DMs to ``user``.

        A message whose buttons were replaced (``replace_original`` on a click's
        ``response_url``) shows none any more."""
        found: list[Button] = []
        for record in self._ephemerals:
            if user is None or record["user"] == user:
                found += _buttons_of(
                    record, record["user"], str(record["channel"]), str(record["message_ts"]), True
                )
        for message in self._messages.values():
            channel = str(message["channel"])
            if channel.startswith(("U", "W")) and (user is None or channel == user):
                found += _buttons_of(message, channel, channel, str(message["ts"]), False)
        return found

    def click_response_url(self, button: Button) -> str:
        """A ``response_url`` for a click on ``button``: ``replace_original`` there replaces its message."""
        url = self.new_response_url()
        record = self._message_of(button)
        self._response_urls[_response_id(url)].message = record
        return url

    def _message_of(self, button: Button) -> dict[str, Any] | None:
        if not button.ephemeral:
            return self._messages.get((button.channel, button.message_ts))
        return next((e for e in self._ephemerals if e["message_ts"] == button.message_ts), None)

    def posted(self, channel: str | None = None) -> list[dict[str, Any]]:
        """Live (not deleted) messages posted with ``chat.postMessage``, in posting order.

        Each is Slack's ``message`` object (reflecting later ``chat.update``s) plus a
        ``channel`` key.
        """
        return [dict(m) for m in self._messages.values() if channel is None or m["channel"] == channel]

    async def wait_for(
        self,
        predicate: CallPredicate | str,
        *,
        count: int = 1,
        timeout: float = 5.0,  # noqa: ASYNC109 - the documented test-helper API
    ) -> list[SlackCall]:
        """Wait until at least ``count`` recorded calls match, and return all that match.

        ``predicate`` is a method name or a function of :class:`SlackCall`. Calls
        recorded before this was awaited count too. Raises ``AssertionError`` listing
        the calls seen on timeout.
        """
        match = _as_predicate(predicate)

        def ready() -> list[SlackCall] | None:
            found = [c for c in self.calls if match(c)]
            return found if len(found) >= count else None

        def describe() -> str:
            seen = "\n  ".join(str(c) for c in self.calls) or "(none)"
            what = predicate if isinstance(predicate, str) else getattr(predicate, "__name__", "predicate")
            got = len([c for c in self.calls if match(c)])
            return (
                f"FakeSlack: timed out after {timeout}s waiting for {count} call(s) matching "
                f"{what!r} (got {got}). Calls seen:\n  {seen}"
            )

        return await self._wait_until(ready, timeout, describe)

    async def wait_for_response(
        self,
        id_or_url: str,
        count: int = 1,
        timeout: float = 5.0,  # noqa: ASYNC109 - the documented test-helper API
    ) -> list[dict[str, Any]]:
        """Wait until ``count`` payloads were posted to a ``response_url``; return them all."""
        response_id = _response_id(id_or_url)

        def ready() -> list[dict[str, Any]] | None:
            got = self.responses.get(response_id, [])
            return list(got) if len(got) >= count else None

        def describe() -> str:
            got = self.responses.get(response_id, [])
            return (
                f"FakeSlack: timed out after {timeout}s waiting for {count} post(s) to response_url "
                f"{response_id!r}; got {len(got)}: {got!r}"
            )

        return await self._wait_until(ready, timeout, describe)

    async def _wait_until(
        self, ready: Callable[[], _T | None], seconds: float, describe: Callable[[], str]
    ) -> _T:
        changed = asyncio.Event()
        self._watchers.add(changed)
        try:
            async with asyncio.timeout(seconds):
                while True:
                    result = ready()
                    if result is not None:
                        return result
                    await changed.wait()
                    changed.clear()
        except TimeoutError:
            raise AssertionError(describe()) from None
        finally:
            self._watchers.discard(changed)

    def _notify(self) -> None:
        for watcher in self._watchers:
            watcher.set()

    # ---------------------------------------------------------------- HTTP: Web API

    def _require_base(self) -> str:
        if not self.base_url:
            raise RuntimeError(
                "FakeSlack.base_url is not set: start it with run_fake_slack() or set "
                "fake.base_url = str(server.make_url('')).rstrip('/') after aiohttp_server(fake.app)"
            )
        return self.base_url

    async def _handle_api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        headers = {k: request.headers[k] for k in _RECORDED_HEADERS if k in request.headers}
        params: dict[str, Any] = dict(request.query)
        status = 200
        extra_headers: dict[str, str] = {}
        # The request is read in full before a hold, as Slack would have it even if the
        # caller dies while waiting for the answer.
        unreadable: _SlackError | None = None
        try:
            raw = await self._read_body(request)
        except _SlackError as exc:
            raw, unreadable = {}, exc
        gate = self._holds.get(method)
        if gate is not None:
            self._held[method] = self._held.get(method, 0) + 1
            try:
                await gate.wait()
            finally:
                self._held[method] -= 1
        try:
            if unreadable is not None:
                raise unreadable
            params.update(raw)
            body = self._dispatch(method, params, headers, self.base_url or str(request.url.origin()))
        except _SlackError as exc:
            status = exc.status
            extra_headers = exc.headers
            body = {"ok": False, "error": exc.error}
        self.calls.append(
            SlackCall(
                method=method,
                params=params,
                headers=headers,
                http_verb=request.method,
                status=status,
                response=body,
                at=self.clock(),
            )
        )
        self._notify()
        if self._drops.get(method):
            self._drops[method] -= 1
            if request.transport is not None:
                request.transport.abort()
        return web.json_response(body, status=status, headers=extra_headers)

    @staticmethod
    async def _read_body(request: web.Request) -> dict[str, Any]:
        if request.method != "POST" or not request.body_exists:
            return {}
        ctype = request.content_type
        if ctype == "application/json":
            raw = await request.read()
            if not raw.strip():
                return {}
            try:
                data = json.loads(raw)
            except ValueError:
                raise _SlackError("invalid_json") from None
            if not isinstance(data, dict):
                raise _SlackError("invalid_json")
            return data
        if ctype in ("application/x-www-form-urlencoded", "multipart/form-data"):
            form = await request.post()
            out: dict[str, Any] = {}
            for key, value in form.items():
                if isinstance(value, web.FileField):
                    out[key] = value.file.read()
                else:
                    out[key] = value
            return out
        await request.read()
        return {}

    def _dispatch(
        self, method: str, params: dict[str, Any], headers: Mapping[str, str], base: str
    ) -> dict[str, Any]:
        auth = headers.get("authorization", "")
        if method == "oauth.v2.access":  # the app's client id and secret, not a bot token
            self._limited(method)  # Slack answers 429 before it looks at a code or refresh token
            try:
                return self.installs.access(params, auth)
            except InstallError as exc:
                raise _SlackError(exc.error) from None
        handler = self._handlers.get(method)
        if handler is None:
            raise _SlackError("unknown_method")
        token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else _opt_str(params, "token")
        if not token:
            raise _SlackError("not_authed")
        self._caller = None
        if token != self.bot_token:
            try:
                self._caller = self.installs.team_of(token)
            except InstallError as exc:
                raise _SlackError(exc.error) from None
            if self._caller is None:
                raise _SlackError("invalid_auth")
        self._limited(method)
        if method == "chat.postMessage" and self.post_limits is not None:
            self._post_limited(self.post_limits, params)
        pending_fail = self._failures.get(method)
        if pending_fail:
            error, status = pending_fail.pop(0)
            raise _SlackError(error, status=status)
        named = params.get("channel") or params.get("channel_id")
        if isinstance(named, str) and named in self.channel_errors:
            raise _SlackError(self.channel_errors[named])
        return handler(params, base)

    def _limited(self, method: str) -> None:
        """A 429 queued by :meth:`ratelimit_next` for ``method``, if any."""
        pending_429 = self._ratelimits.get(method)
        if pending_429:
            retry_after = pending_429.pop(0)
            raise _SlackError("ratelimited", status=429, headers={"Retry-After": str(retry_after)})

    def _post_limited(self, limits: PostLimits, params: Mapping[str, Any]) -> None:
        """A 429 when the channel's or the workspace's posting bucket is empty; else a token of
        each is taken."""
        now = self.clock()
        channel = str(params.get("channel") or "")
        buckets = []
        if limits.per_channel_per_s:
            buckets.append(self._bucket(channel, limits.per_channel_per_s, limits.channel_burst, now))
        if limits.workspace_per_min:
            buckets.append(self._bucket("", limits.workspace_per_min / 60.0, limits.workspace_burst, now))
        wait = max((b.wait(now) for b in buckets), default=0.0)
        if wait > 0:
            retry_after = max(1, math.ceil(wait))
            raise _SlackError("ratelimited", status=429, headers={"Retry-After": str(retry_after)})
        for bucket in buckets:
            bucket.tokens -= 1.0

    def _bucket(self, key: str, per_s: float, burst: int, now: float) -> _Bucket:
        bucket = self._post_buckets.get(key)
        if bucket is None or (bucket.per_s, bucket.burst) != (per_s, burst):
            bucket = self._post_buckets[key] = _Bucket(per_s, burst, now)
        return bucket

    # ---------------------------------------------------------------- method handlers

    def _api_test(self, params: dict[str, Any], base: str) -> dict[str, Any]:
        return {"ok": True, "args": {k: v for k, v in params.items() if isinstance(v, str)}}

    def _auth_test(self, params: dict[str, Any], base: str) -> dict[str, Any]:
        team = self._caller
        if team is not None:  # a token an install issued: that workspace's bot
            return {
                "ok": True,
                "url": f"https://{team.team_id.lower()}.slack.com/",
                "team": team.name,
                "user": self.bot_name,
                "team_id": team.team_id,
                "user_id": team.bot_user_id,
                "bot_id": team.bot_id,
                "enterprise_id": team.enterprise_id,
                "is_enterprise_install": team.org_wide,
            }
        return {
            "ok": True,
            "url": f"https://{self.team_domain}.slack.com/",
            "team": self.team_name,
            "user": self.bot_name,
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _resolve_channel(self, params: Mapping[str, Any]) -> str:
        channel = _opt_str(params, "channel")
        if channel is None:
            raise _SlackError("channel_not_found")
        if channel.startswith("#"):
            for info in self._channels.values():
                if info["name"] == channel[1:]:
                    return str(info["id"])
            raise _SlackError("channel_not_found")
        return channel

    def _bot_message(self, params: Mapping[str, Any], ts: str) -> dict[str, Any]:
        # Posted with an install's token: that workspace's bot (as auth.test says).
        team = self._caller
        bot_id = team.bot_id if team is not None else self.bot_id
        message: dict[str, Any] = {
            "user": team.bot_user_id if team is not None else self.bot_user_id,
            "type": "message",
            "ts": ts,
            "bot_id": bot_id,
            "app_id": self.app_id,
            "text": _opt_str(params, "text") or "",
            "team": team.team_id if team is not None else self.team_id,
            "bot_profile": {
                "id": bot_id,
                "deleted": False,
                "name": self.bot_name,
                "updated": int(self.clock()),
                "app_id": self.app_id,
                "team_id": team.team_id if team is not None else self.team_id,
            },
        }
        username = _opt_str(params, "username")
        icon_url = _opt_str(params, "icon_url")
        icon_emoji = _opt_str(params, "icon_emoji")
        if username or icon_url or icon_emoji:
            message["subtype"] = "bot_message"
            message["username"] = username or self.bot_name
            if icon_url:
                message["icons"] = {"image_48": icon_url, "image_72": icon_url}
            elif icon_emoji:
                message["icons"] = {"emoji": icon_emoji.strip(":")}
        for key in ("blocks", "attachments", "metadata"):
            if params.get(key) not in (None, ""):
                message[key] = _json_field(params[key])
        thread_ts = _opt_str(params, "thread_ts")
        if thread_ts:
            message["thread_ts"] = thread_ts
            if _truthy(params.get("reply_broadcast")):
                message["subtype"] = "thread_broadcast"
        return message

    @staticmethod
    def _require_content(params: Mapping[str, Any]) -> None:
        def present(value: Any) -> bool:
            if isinstance(value, str):
                return value.strip() not in ("", "[]")
            return bool(value)

        if not any(present(params.get(k)) for k in ("text", "blocks", "attachments")):
            raise _SlackError("no_text")

    def _chat_post_message(self, params: dict[str, Any], base: str) -> dict[str, Any]:
        channel = self._resolve_channel(params)
        self._require_content(params)
        text = _opt_str(params, "text") or ""
        for marker, error in self.text_errors.items():
            if marker in text:
                raise _SlackError(error)
        ts = _TS.next(self.clock)
        message = self._bot_message(params, ts)
        # Slack keeps the first 40,000 characters of a longer text, and says nothing.
        message["text"] = message["text"][:MAX_TEXT]
        self._messages[(channel, ts)] = {**message, "channel": channel}
        if params.get("mrkdwn") is False:
            self.plain_posts.add((channel, ts))
        return {"ok": True, "channel": channel, "ts": ts, "message": message}

    def _chat_post_ephemeral(self, params: dict[str, Any], base: str) -> dict[str, Any]:
        channel = self._resolve_channel(params)
        user = _opt_str(params, "user")
        if user is None:
            raise _SlackError("user_not_in_channel")
        self._require_content(params)
        message_ts = _TS.next(self.clock)
        record: dict[str, Any] = {
            "channel": channel,
            "user": user,
            "text": _opt_str(params, "text") or "",
            "message_ts": message_ts,
        }
        for key in ("blocks", "attachments"):
            if params.get(key) not in (None, ""):
                record[key] = _json_field(params[key])
        thread_ts = _opt_str(params, "thread_ts")
        if thread_ts:
            record["thread_ts"] = thread_ts
        self._ephemerals.append(record)
        return {"ok": True, "message_ts": message_ts}

    def _find_message(self, params: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
        channel = self._resolve_channel(params)
        ts = _opt_str(params, "ts")
        if ts is None:
            raise _SlackError("message_not_found")
        message = self._messages.get((channel, ts))
        if message is None:
            raise _SlackError("message_not_found")
        return channel, ts, message

    def _chat_update(self, params: dict[str, Any], base: str) -> dict[str, Any]:
        channel, ts, message = self._find_message(params)
        if "text" in params:
            message["text"] = _opt_str(params, "text") or ""
        for key in ("blocks", "attachments"):
            if key in params:
                value = _json_field(params[key])
                if value in (None, "", []):
                    message.pop(key, None)
                else:
                    message[key] = value
        message["edited"] = {"user": self.bot_user_id, "ts": _TS.next(self.clock)}
        public = {k: v for k, v in message.items() if k != "channel"}
        return {"ok": True, "channel": channel, "ts": ts, "text": message["text"], "message": public}

    def _chat_delete(self, params: dict[str, Any], base: str) -> dict[str, Any]:
        channel, ts, message = self._find_message(params)
        del self._messages[(channel, ts)]
        self.deleted.append(message)
        return {"ok": True, "channel": channel, "ts": ts}

    def _reaction_target(self, params: Mapping[str, Any]) -> tuple[tuple[str, str], str]:
        channel = _opt_str(params, "channel")
        ts = _opt_str(params, "timestamp")
        if channel is None or ts is None:
            raise _SlackError("no_item_specified")
        name = _opt_str(params, "name")
        if name is None:
            raise _SlackError("invalid_name")
        return (channel, ts), name

    def _reactions_add(self, params: dict[str, Any], base: str) -> dict[str, Any]:
        key, name = self._reaction_target(params)
        names = self._reactions.setdefault(key, set())
        if name in names:
            raise _SlackError("already_reacted")
        names.add(name)
        return {"ok": True}

    def _reactions_remove(self, params: dict[str, Any], base: str) -> dict[str, Any]:
        key, name = self._reaction_target(params)
        names = self._reactions.get(key, set())
        if name not in names:
            raise _SlackError("no_reaction")
        names.discard(name)
        return {"ok": True}

    def _users_info(self, params: dict[str, Any], base: str) -> dict[str, Any]:
        user = self._users.get(_opt_str(params, "user") or "")
        if user is None:
            raise _SlackError("user_not_found")
        return {"ok": True, "user": user}

    def _conversations_info(self, params: dict[str, Any], base: str) -> dict[str, Any]:
        channel = self._channels.get(_opt_str(params, "channel") or "")
        if channel is None:
            raise _SlackError("channel_not_found")
        return {"ok": True, "channel": channel}

    def _conversations_history(self, params: dict[str, Any], base: str) -> dict[str, Any]:
        """Newest first, from ``oldest`` on; ``metadata`` only with ``include_all_metadata``
        (as Slack does); ``cursor`` is an offset into the list."""
        channel = self._resolve_channel(params)
        oldest = float(_opt_str(params, "oldest") or 0)
        limit = int(_opt_str(params, "limit") or 100)
        offset = int(_opt_str(params, "cursor") or 0)
        with_metadata = _truthy(params.get("include_all_metadata"))
        found = sorted(
            (m for (c, ts), m in self._messages.items() if c == channel and float(ts) >= oldest),
            key=lambda m: float(m["ts"]),
            reverse=True,
        )
        page = found[offset : offset + limit]
        messages = []
        for message in page:
            shown = {k: v for k, v in message.items() if k != "channel"}
            if not with_metadata:
                shown.pop("metadata", None)
            messages.append(shown)
        more = offset + limit < len(found)
        return {
            "ok": True,
            "messages": messages,
            "has_more": more,
            "response_metadata": {"next_cursor": str(offset + limit) if more else ""},
        }

    def _files_get_upload_url(self, params: dict[str, Any], base: str) -> dict[str, Any]:
        filename = _opt_str(params, "filename")
        length = _opt_str(params, "length")
        if not filename:
            raise _SlackError("invalid_arguments")
        if not length or not length.isdigit() or int(length) <= 0:
            raise _SlackError("invalid_length")
        self._upload_seq += 1
        file_id = f"FUP{self._upload_seq:06d}"
        self._uploads[file_id] = {"filename": filename, "length": int(length), "content": None}
        return {"ok": True, "upload_url": f"{base}/upload/{file_id}", "file_id": file_id}

    def _files_complete_upload(self, params: dict[str, Any], base: str) -> dict[str, Any]:
        files = _json_field(params.get("files"))
        if not isinstance(files, list) or not files:
            raise _SlackError("invalid_arguments")
        channel = _opt_str(params, "channel_id")
        done = []
        for entry in files:
            file_id = str(entry.get("id")) if isinstance(entry, dict) else ""
            upload = self._uploads.get(file_id)
            if upload is None or upload["content"] is None:
                raise _SlackError("file_not_found")
            if len(upload["content"]) != upload["length"]:
                raise _SlackError("file_upload_size_mismatch")
            title = str(entry.get("title") or upload["filename"])
            done.append({"id": file_id, "title": title})
            if channel:
                self.shared_files.append(
                    {
                        "channel": channel,
                        "id": file_id,
                        "title": title,
                        "name": upload["filename"],
                        "content": upload["content"],
                        "ts": _TS.next(self.clock),  # Slack shares a file as a message
                    }
                )
        return {"ok": True, "files": done}

    async def _handle_upload(self, request: web.Request) -> web.Response:
        upload = self._uploads.get(request.match_info["file_id"])
        if upload is None:
            return web.Response(status=404, text="no such upload")
        upload["content"] = await request.read()
        return web.Response(status=200, text=f"OK - {len(upload['content'])}")

    def _files_info(self, params: dict[str, Any], base: str) -> dict[str, Any]:
        file_id = _opt_str(params, "file") or ""
        if file_id not in self._files:
            raise _SlackError("file_not_found")
        return {
            "ok": True,
            "file": self._file_object(file_id, base),
            "comments": [],
            "response_metadata": {"next_cursor": ""},
        }

    # ---------------------------------------------------------------- files

    def _file_object(self, file_id: str, base: str) -> dict[str, Any]:
        stored = self._files[file_id]
        meta = stored.meta
        name = str(meta["name"])
        prefix = f"{base.rstrip('/')}/files-pri/{self.team_id}-{file_id}"
        quoted = quote(name)
        return {
            "id": file_id,
            "created": stored.created,
            "timestamp": stored.created,
            "name": name,
            "title": meta["title"],
            "mimetype": meta["mimetype"],
            "filetype": meta["filetype"],
            "pretty_type": str(meta["filetype"]).upper(),
            "user": meta["user"],
            "user_team": self.team_id,
            "editable": False,
            "size": len(stored.content),
            "mode": "hosted",
            "is_external": False,
            "external_type": "",
            "is_public": True,
            "public_url_shared": False,
            "display_as_bot": False,
            "username": "",
            "url_private": f"{prefix}/{quoted}",
            "url_private_download": f"{prefix}/download/{quoted}",
            "permalink": f"https://{self.team_domain}.slack.com/files/{meta['user']}/{file_id}/{quoted}",
            "has_rich_preview": False,
        }

    async def _handle_file(self, request: web.Request) -> web.Response:
        team_file = request.match_info["team_file"]
        team, _, file_id = team_file.partition("-")
        authorized = request.headers.get("Authorization") == f"Bearer {self.bot_token}"
        self.downloads.append(
            FileDownload(file_id=file_id, path=request.path, authorized=authorized, at=self.clock())
        )
        self._notify()
        if not authorized:
            # Real Slack answers an unauthenticated file GET with its sign-in page.
            return web.Response(text=_LOGIN_PAGE, content_type="text/html", charset="utf-8")
        stored = self._files.get(file_id)
        if team != self.team_id or stored is None:
            return web.Response(status=404, text="file_not_found")
        headers = {}
        if request.match_info["tail"].startswith("download/"):
            headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(str(stored.meta['name']))}"
        return web.Response(body=stored.content, content_type=str(stored.meta["mimetype"]), headers=headers)

    # ---------------------------------------------------------------- response_url

    async def _handle_response_url(self, request: web.Request) -> web.Response:
        response_id = request.match_info["response_id"]
        state = self._response_urls.get(response_id)
        if state is None:
            return web.json_response({"ok": False, "error": "no_service"}, status=404)
        if self.clock() - state.created_at > RESPONSE_URL_TTL_SECONDS:
            return web.json_response({"ok": False, "error": "expired_url"}, status=404)
        if state.uses >= RESPONSE_URL_MAX_USES:
            return web.json_response({"ok": False, "error": "used_url"}, status=404)
        try:
            payload = json.loads(await request.read())
        except ValueError:
            return web.json_response({"ok": False, "error": "invalid_payload"}, status=400)
        if not isinstance(payload, dict):
            return web.json_response({"ok": False, "error": "invalid_payload"}, status=400)
        has_content = any(payload.get(k) for k in ("text", "blocks", "attachments"))
        if not has_content and not payload.get("delete_original"):
            return web.json_response({"ok": False, "error": "no_text"}, status=400)
        state.uses += 1
        if _truthy(payload.get("replace_original")) and state.message is not None:
            # The clicked message now reads as the answer; its buttons are gone.
            state.message["text"] = str(payload.get("text") or "")
            state.message["blocks"] = payload.get("blocks") or []
        elif state.user and state.channel and payload.get("blocks") and not _in_channel(payload):
            self._ephemerals.append(
                {
                    "channel": state.channel,
                    "user": state.user,
                    "text": str(payload.get("text") or ""),
                    "message_ts": _TS.next(self.clock),
                    "blocks": payload["blocks"],
                }
            )
        self.responses.setdefault(response_id, []).append(payload)
        self._notify()
        return web.json_response({"ok": True})


def _in_channel(payload: Mapping[str, Any]) -> bool:
    return payload.get("response_type") == "in_channel"


def _refusing(
    handler: Callable[[dict[str, Any], str], dict[str, Any]],
) -> Callable[[dict[str, Any], str], dict[str, Any]]:
    """A views handler whose refusals are the fake's Web API errors."""

    def run(params: dict[str, Any], base: str) -> dict[str, Any]:
        try:
            return handler(params, base)
        except ViewError as exc:
            raise _SlackError(exc.error) from None

    return run


def _buttons_of(
    message: Mapping[str, Any], user: str, channel: str, message_ts: str, ephemeral: bool
) -> list[Button]:
    found = []
    for block in message.get("blocks") or []:
        if not isinstance(block, dict) or block.get("type") != "actions":
            continue
        block_id = str(block.get("block_id") or f"b{message_ts}")
        for element in block.get("elements") or []:
            if isinstance(element, dict) and element.get("type") == "button":
                label = element.get("text")
                found.append(
                    Button(
                        user=user,
                        channel=channel,
                        message_ts=message_ts,
                        ephemeral=ephemeral,
                        action_id=str(element.get("action_id", "")),
                        text=str(label.get("text", "")) if isinstance(label, dict) else "",
                        value=str(element.get("value", "")),
                        block_id=block_id,
                    )
                )
    return found


@asynccontextmanager
async def run_fake_slack(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    bot_token: str = "xoxb-test",
    team_id: str = "T0001",
    bot_user_id: str = "UBOT",
    bot_id: str = "BBOT",
    clock: Clock = time.time,
    app_id: str = "A0001",
    team_name: str = "Fake Team",
    team_domain: str = "fake",
    bot_name: str = "xdm-bridge",
) -> AsyncIterator[tuple[FakeSlack, str]]:
    """Serve a new :class:`FakeSlack` on ``host`` (free port by default); yield ``(fake, base_url)``.

    ``fake.base_url`` is set to ``base_url`` (e.g. ``http://127.0.0.1:54321``, no
    trailing slash). The server is shut down on exit.
    """
    fake = FakeSlack(
        bot_token=bot_token,
        team_id=team_id,
        bot_user_id=bot_user_id,
        bot_id=bot_id,
        clock=clock,
        app_id=app_id,
        team_name=team_name,
        team_domain=team_domain,
        bot_name=bot_name,
    )
    runner = web.AppRunner(fake.app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = int(runner.addresses[0][1])
        base_url = f"http://{host}:{bound_port}"
        fake.base_url = base_url
        yield fake, base_url
    finally:
        await runner.cleanup()


# --------------------------------------------------------------------------------------
# SlackSender: Slack calling the bridge
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlackResult:
    """The bridge's answer to a request sent by :class:`SlackSender`."""

    status: int
    text: str
    headers: Mapping[str, str]

    def json(self) -> Any:
        """The body parsed as JSON (raises ``ValueError`` if it is not JSON)."""
        return json.loads(self.text)


class SlackSender:
    """Sends signed requests to the bridge the way Slack does (Events API, slash commands).

    ``events_url`` is the bridge's request URL (e.g. ``http://127.0.0.1:8080/slack/events``).
    Requests are signed with ``signing_secret`` using the ``v0`` scheme and a timestamp
    from ``clock``. The session is borrowed, not closed.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        events_url: str,
        signing_secret: str,
        *,
        team_id: str = "T0001",
        api_app_id: str = "A0001",
        clock: Clock = time.time,
        bot_user_id: str = "UBOT",
        verification_token: str = "verification_token",
        triggers: Callable[[str], str] | None = None,
    ) -> None:
        """``triggers`` issues trigger ids the fake Slack's ``views.open`` accepts
        (``FakeSlack.views.issue_trigger_id``); without it they are made up."""
        self.triggers = triggers
        self.session = session
        self.events_url = events_url
        self.signing_secret = signing_secret
        self.team_id = team_id
        self.api_app_id = api_app_id
        self.clock = clock
        self.bot_user_id = bot_user_id
        self.verification_token = verification_token
        self._verifier = SignatureVerifier(signing_secret)
        self._seq = 0

    def new_ts(self) -> str:
        """A fresh message ``ts`` (unique and increasing across the process)."""
        return _TS.next(self.clock)

    def new_trigger_id(self, user_id: str = "") -> str:
        """A trigger id for a request ``user_id`` makes (issued by the fake Slack when it is known)."""
        if self.triggers is not None:
            return self.triggers(user_id)
        return f"{int(self.clock())}.{secrets.randbelow(10**12)}.{secrets.token_hex(16)}"

    def new_event_id(self) -> str:
        """A fresh, unique ``Ev…`` event id."""
        self._seq += 1
        return f"Ev{self._seq:04d}{secrets.token_hex(4).upper()}"

    def sign(self, body: bytes, *, timestamp: int | None = None) -> dict[str, str]:
        """The ``X-Slack-Request-Timestamp``/``X-Slack-Signature`` headers for ``body``."""
        ts = str(int(self.clock()) if timestamp is None else timestamp)
        signature = self._verifier.generate_signature(timestamp=ts, body=body)
        assert signature is not None
        return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": signature}

    async def raw(
        self,
        body: bytes,
        content_type: str,
        *,
        sign: bool = True,
        headers: Mapping[str, str] | None = None,
        signature_override: str | None = None,
        timestamp_override: int | None = None,
    ) -> SlackResult:
        """POST ``body`` as-is (signed unless ``sign=False``); ``headers`` are applied last."""
        out: dict[str, str] = {"Content-Type": content_type}
        if sign:
            out.update(self.sign(body, timestamp=timestamp_override))
            if signature_override is not None:
                out["X-Slack-Signature"] = signature_override
        out.update(headers or {})
        async with self.session.post(self.events_url, data=body, headers=out) as resp:
            text = await resp.text()
            return SlackResult(
                status=resp.status, text=text, headers=CIMultiDictProxy(CIMultiDict(resp.headers))
            )

    def envelope(self, event: Mapping[str, Any], *, event_id: str | None = None) -> dict[str, Any]:
        """Wrap ``event`` in an ``event_callback`` envelope like the ones Slack sends."""
        return {
            "token": self.verification_token,
            "team_id": self.team_id,
            "context_team_id": self.team_id,
            "context_enterprise_id": None,
            "api_app_id": self.api_app_id,
            "event": dict(event),
            "type": "event_callback",
            "event_id": event_id or self.new_event_id(),
            "event_time": int(self.clock()),
            "authorizations": [
                {
                    "enterprise_id": None,
                    "team_id": self.team_id,
                    "user_id": self.bot_user_id,
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
            "event_context": f"4-{secrets.token_urlsafe(24)}",
        }

    async def event(
        self,
        event: Mapping[str, Any],
        *,
        event_id: str | None = None,
        retry_num: int | None = None,
        retry_reason: str = "http_timeout",
        signature_override: str | None = None,
        timestamp_override: int | None = None,
    ) -> SlackResult:
        """Deliver ``event`` in a signed ``event_callback`` envelope.

        With ``retry_num`` the ``X-Slack-Retry-Num``/``X-Slack-Retry-Reason`` headers
        are added, as on Slack's redeliveries (pass the same ``event_id`` to retry).
        """
        body = json.dumps(self.envelope(event, event_id=event_id)).encode()
        headers: dict[str, str] = {}
        if retry_num is not None:
            headers["X-Slack-Retry-Num"] = str(retry_num)
            headers["X-Slack-Retry-Reason"] = retry_reason
        return await self.raw(
            body,
            "application/json",
            headers=headers,
            signature_override=signature_override,
            timestamp_override=timestamp_override,
        )

    def message_event(
        self,
        channel: str,
        user: str | None,
        text: str,
        *,
        ts: str | None = None,
        thread_ts: str | None = None,
        subtype: str | None = None,
        bot_id: str | None = None,
        files: list[dict[str, Any]] | None = None,
        blocks: list[dict[str, Any]] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Build a ``message`` event as Slack would send it (see :meth:`message`)."""
        ts = ts or self.new_ts()
        if files and subtype is None:
            subtype = "file_share"
        event: dict[str, Any] = {"type": "message"}
        if subtype is not None:
            event["subtype"] = subtype
        event["text"] = text
        if user is not None:
            event["user"] = user
        if bot_id is not None:
            event["bot_id"] = bot_id
        if files:
            event["files"] = files
            event["upload"] = False
            event["display_as_bot"] = False
        event["ts"] = ts
        if thread_ts is not None:
            event["thread_ts"] = thread_ts
        if subtype in (None, "file_share", "thread_broadcast") and bot_id is None and user is not None:
            event["client_msg_id"] = str(uuid.uuid4())
        if user is not None:
            event["team"] = self.team_id
        built_blocks = rich_text_blocks(text) if blocks is None and bot_id is None else blocks
        if built_blocks:
            event["blocks"] = built_blocks
        event["channel"] = channel
        event["event_ts"] = ts
        event["channel_type"] = "group" if channel.startswith("G") else "channel"
        event.update(extra or {})
        return event

    async def message(
        self,
        channel: str,
        user: str | None,
        text: str,
        *,
        ts: str | None = None,
        thread_ts: str | None = None,
        subtype: str | None = None,
        bot_id: str | None = None,
        files: list[dict[str, Any]] | None = None,
        blocks: list[dict[str, Any]] | None = None,
        extra: Mapping[str, Any] | None = None,
        event_id: str | None = None,
        retry_num: int | None = None,
        retry_reason: str = "http_timeout",
        signature_override: str | None = None,
        timestamp_override: int | None = None,
    ) -> tuple[SlackResult, str, str]:
        """Send a ``message`` event; return ``(result, ts, event_id)``.

        ``ts`` is generated when omitted. ``files`` makes it a ``file_share`` unless a
        ``subtype`` is given. ``blocks=None`` derives a ``rich_text`` block from
        ``text`` for user messages (pass ``[]`` for none). ``extra`` is merged into the
        event last (e.g. ``{"channel_type": "group"}``, ``{"edited": …}``).
        """
        event = self.message_event(
            channel,
            user,
            text,
            ts=ts,
            thread_ts=thread_ts,
            subtype=subtype,
            bot_id=bot_id,
            files=files,
            blocks=blocks,
            extra=extra,
        )
        event_id = event_id or self.new_event_id()
        result = await self.event(
            event,
            event_id=event_id,
            retry_num=retry_num,
            retry_reason=retry_reason,
            signature_override=signature_override,
            timestamp_override=timestamp_override,
        )
        return result, str(event["ts"]), event_id

    def message_changed_event(
        self, channel: str, user: str, ts: str, text: str, previous_text: str, *, thread_ts: str | None = None
    ) -> dict[str, Any]:
        """The hidden ``message_changed`` event Slack sends when ``user`` edits message ``ts``:
        the edit has its own ``ts``; ``message`` is the new version (with ``edited``),
        ``previous_message`` the old one."""
        edit_ts = self.new_ts()
        body: dict[str, Any] = {"type": "message", "user": user, "ts": ts, "team": self.team_id}
        if thread_ts is not None:
            body["thread_ts"] = thread_ts
        return {
            "type": "message",
            "subtype": "message_changed",
            "channel": channel,
            "hidden": True,
            "ts": edit_ts,
            "event_ts": edit_ts,
            "channel_type": "group" if channel.startswith("G") else "channel",
            "message": {
                **body,
                "text": text,
                "blocks": rich_text_blocks(text),
                "edited": {"user": user, "ts": edit_ts},
            },
            "previous_message": {**body, "text": previous_text, "blocks": rich_text_blocks(previous_text)},
        }

    def message_deleted_event(
        self, channel: str, user: str, ts: str, previous_text: str, *, thread_ts: str | None = None
    ) -> dict[str, Any]:
        """The hidden ``message_deleted`` event Slack sends when message ``ts`` is deleted."""
        delete_ts = self.new_ts()
        previous: dict[str, Any] = {"type": "message", "user": user, "text": previous_text, "ts": ts}
        if thread_ts is not None:
            previous["thread_ts"] = thread_ts
        return {
            "type": "message",
            "subtype": "message_deleted",
            "channel": channel,
            "hidden": True,
            "deleted_ts": ts,
            "ts": delete_ts,
            "event_ts": delete_ts,
            "channel_type": "group" if channel.startswith("G") else "channel",
            "previous_message": previous,
        }

    def command_fields(
        self,
        text: str,
        *,
        user_id: str,
        channel_id: str,
        response_url: str,
        command: str = "/xdm",
        user_name: str = "",
        channel_name: str = "",
        trigger_id: str | None = None,
        team_domain: str = "fake",
        enterprise_id: str | None = None,
        enterprise_name: str | None = None,
    ) -> dict[str, str]:
        """The slash-command form fields, in the order Slack sends them."""
        fields: dict[str, str] = {
            "token": self.verification_token,
            "team_id": self.team_id,
            "team_domain": team_domain,
            "channel_id": channel_id,
            "channel_name": channel_name,
            "user_id": user_id,
            "user_name": user_name,
            "command": command,
            "text": text,
            "api_app_id": self.api_app_id,
            "is_enterprise_install": "false",
        }
        if enterprise_id is not None:
            fields["enterprise_id"] = enterprise_id
            fields["enterprise_name"] = enterprise_name or ""
        fields["response_url"] = response_url
        fields["trigger_id"] = trigger_id or self.new_trigger_id(user_id)
        return fields

    async def command(
        self,
        text: str,
        *,
        user_id: str,
        channel_id: str,
        response_url: str,
        command: str = "/xdm",
        user_name: str = "",
        channel_name: str = "",
        trigger_id: str | None = None,
        team_domain: str = "fake",
        enterprise_id: str | None = None,
        enterprise_name: str | None = None,
        signature_override: str | None = None,
        timestamp_override: int | None = None,
    ) -> SlackResult:
        """Send a signed, form-encoded slash command (fields as in Slack's payload)."""
        fields = self.command_fields(
            text,
            user_id=user_id,
            channel_id=channel_id,
            response_url=response_url,
            command=command,
            user_name=user_name,
            channel_name=channel_name,
            trigger_id=trigger_id,
            team_domain=team_domain,
            enterprise_id=enterprise_id,
            enterprise_name=enterprise_name,
        )
        body = urlencode(fields).encode()
        return await self.raw(
            body,
            "application/x-www-form-urlencoded",
            signature_override=signature_override,
            timestamp_override=timestamp_override,
        )

    def block_actions(self, button: Button, *, user_id: str, response_url: str) -> dict[str, Any]:
        """The ``block_actions`` payload Slack sends when ``user_id`` clicks ``button``."""
        container: dict[str, Any] = {
            "type": "message",
            "message_ts": button.message_ts,
            "channel_id": button.channel,
            "is_ephemeral": button.ephemeral,
        }
        return {
            "type": "block_actions",
            "user": {
                "id": user_id,
                "username": user_id.lower(),
                "name": user_id.lower(),
                "team_id": self.team_id,
            },
            "api_app_id": self.api_app_id,
            "token": self.verification_token,
            "container": container,
            "trigger_id": self.new_trigger_id(user_id),
            "team": {"id": self.team_id, "domain": "fake"},
            "enterprise": None,
            "is_enterprise_install": False,
            "channel": {"id": button.channel, "name": button.channel},
            "state": {"values": {}},
            "response_url": response_url,
            "actions": [pressed(button.action_id, button.block_id, button.text, button.value, self.clock())],
        }

    async def click(
        self,
        button: Button,
        *,
        user_id: str,
        response_url: str,
        signature_override: str | None = None,
        timestamp_override: int | None = None,
    ) -> SlackResult:
        """``user_id`` clicks ``button``: a signed, form-encoded ``payload=`` as Slack's interactivity
        posts to the app's Request URL."""
        payload = self.block_actions(button, user_id=user_id, response_url=response_url)
        body = urlencode({"payload": json.dumps(payload)}).encode()
        return await self.raw(
            body,
            "application/x-www-form-urlencoded",
            signature_override=signature_override,
            timestamp_override=timestamp_override,
        )

    async def url_verification(self, challenge: str = "challenge-token") -> SlackResult:
        """Send the signed ``url_verification`` handshake."""
        body = json.dumps(
            {"token": self.verification_token, "challenge": challenge, "type": "url_verification"}
        ).encode()
        return await self.raw(body, "application/json")
