"""``xdm-bridge sandbox``: the real bridge between local simulators of Slack and X, with a page to drive it.

One process, everything on 127.0.0.1 — nothing leaves the machine::

    browser ──▶ sandbox page + JSON API ──signed requests, as Slack sends them──▶ real bridge
                      │                                                          │      │
                      └──── reads the simulators' state ──▶ fake Slack ◀─ Web API ┘      │
                                                            fake X     ◀── X API v2 ─────┘

The page never talks to the bridge itself. What the person types in the channel box becomes a
signed slash command (``/xdm …``, with a ``response_url`` on the fake Slack) or a signed
``message`` event, so it takes the same road as in production: signature check at
``/slack/events``, the outbox, the delivery worker, HTTP to the fake X, reactions through the
fake Slack Web API. Edits and deletions are Slack's ``message_changed``/``message_deleted``
events, files are kept by the fake Slack (served with the bot token, as Slack serves
``url_private_download``) and shared with a ``file_share`` event. ``/xdm connect``'s link opens
the bridge's real connect page in a new tab: "Continue to X", the simulated X's consent page,
then the bridge's ``/x/oauth/callback``; the bridge then asks in the channel (an ephemeral
message with buttons) and a click on Confirm is a signed ``block_actions`` to ``/slack/events``,
as Slack's interactivity sends it. ``/xdm unlink`` and ``/xdm disconnect`` ask the same way,
their question coming through the command's ``response_url``: it shows with its Confirm and
Cancel buttons.

``/xdm`` alone opens the bridge's form with the command's trigger id, as in Slack; the page's
people search and its Bridge button are Slack's signed ``block_suggestion`` and
``view_submission``. X Chat (encrypted, with X's real ``chat_xdk`` crypto): Alice and Carol hold
keys on their simulated phones, Bob none; once @you is connected the sandbox runs the operator's
``xdm-bridge xchat setup @you`` (the command line's code, on the bridge's database), so a DM with
Alice is encrypted beside a legacy one with Bob. Forgetting the keys (``xchat forget``) shows what
a channel is told of a peer on X Chat when the bridge holds no keys.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import html
import importlib.resources
import logging
import mimetypes
import re
import secrets
import signal
import socket
import sys
import tempfile
import time
import webbrowser
from collections.abc import AsyncIterator, Awaitable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
import emoji
from aiohttp import web

from adapters.ops import xchat as xchat_ops
from adapters.sandbox.fake_slack import (
    RESPONSE_URL_MAX_USES,
    RESPONSE_URL_TTL_SECONDS,
    Button,
    FakeSlack,
    SlackSender,
    run_fake_slack,
)
from adapters.sandbox.fake_slack_views import SurfaceSender, view_text
from adapters.sandbox.fake_x import FakeX, run_fake_x
from adapters.store.crypto import generate_key
from adapters.web.app import create_app
from adapters.web.logs import setup_logging
from bridge.connect import CONFIRM_ACTION
from bridge.delivery import DeliveryConfig
from bridge.modals import (
    BRIDGE_MODAL,
    CHANNEL_ACTION,
    CHANNEL_BLOCK,
    CONVERSATION_ACTION,
    CONVERSATION_BLOCK,
    MESSAGE_ACTION,
    MESSAGE_BLOCK,
    PEOPLE_ACTION,
    PEOPLE_BLOCK,
)
from bridge.settings import Settings
from bridge.xchat import XChatError

log = logging.getLogger("adapters.sandbox.sandbox")

HOST = "127.0.0.1"
LABEL = "Simulation — nothing leaves this machine"
FROM_X_NOTE = "typed on X: the bridge reads it (push for 1-to-1, polling for groups) and posts it in Slack"

# The simulated world: one workspace, you and two teammates, one channel; a few people on X.
TEAM_ID, TEAM_NAME = "T0SANDBOX", "Sandbox workspace"
SLACK_USER_ID, SLACK_USER_NAME = "U0SANDBOX", "You"
SLACK_PEOPLE = ((SLACK_USER_ID, SLACK_USER_NAME), ("U0ADA", "Ada"), ("U0GRACE", "Grace"))
CHANNEL_ID, CHANNEL_NAME = "C0SANDBOX", "sandbox"
BOT_TOKEN = "xoxb-sandbox"
X_CLIENT_ID = "sandbox-client"
YOUR_X_ID, YOUR_X_USERNAME = "1000", "you"
X_PEOPLE = (
    (YOUR_X_ID, YOUR_X_USERNAME, "You"),
    ("2001", "alice", "Alice"),
    ("2002", "bob", "Bob"),
    ("2003", "carol", "Carol"),
)
# People with X Chat keys on their phones: the bridge can encrypt for them once @you has keys.
# Bob has none, so a DM with him stays a legacy one.
X_CHAT_PEOPLE = ("2001", "2003")
CHAT_PREFIX = "chat:"  # the page's id of an X Chat conversation (its X id looks like a legacy one)
SETUP_WAIT_SECONDS = 10.0

REACTION_EMOJI = {"white_check_mark": "✅", "warning": "⚠️", "hourglass_flowing_sand": "⏳"}
EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
MAX_FILE_BYTES = 5 * 1024 * 1024  # X's limit for a DM image


class SandboxError(Exception):
    """A problem the person starting the sandbox can fix (the message says how)."""


# ------------------------------------------------------------------ Slack text → page parts


_TOKEN = re.compile(r"<([^<>\n]+)>|`([^`\n]+)`|\*([^*\n]+)\*")
# Markup off (``mrkdwn: false``): only ``<…>`` tokens and bare web addresses (the second group).
_PLAIN_TOKEN = re.compile(r"<([^<>\n]+)>|(https?://[^\s<>]*[^\s<>.,;:!?)\]'\"])")


def slack_escape(text: str) -> str:
    """Encode typed text the way Slack does in event and command payloads."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# What Slack's composer turns into markup as it sends: a web address, or @name of a member.
# Trailing punctuation ends a link, as it does in Slack ("see https://x.com." links x.com).
_TYPED = re.compile(r"(?P<url>\bhttps?://[^\s<>]*[^\s<>.,;:!?)\]'\"])|(?<![\w@])@(?P<name>[\w.\-]*\w)")


def slack_markup(text: str, members: Mapping[str, str]) -> str:
    """Typed text as Slack puts it in a ``message`` event: escaped, links in ``<…>``, and each
    ``@name`` of a known member (``members``: user id → name) as ``<@Uxxx>``; other text as typed."""
    ids = {name.lower(): user_id for user_id, name in members.items()}

    def markup(match: re.Match[str]) -> str:
        if match.group("url"):
            return f"<{match.group('url')}>"
        user_id = ids.get(match.group("name").lower())
        return f"<@{user_id}>" if user_id else match.group(0)

    return _TYPED.sub(markup, slack_escape(text))


def _plain(text: str) -> str:
    return str(emoji.emojize(html.unescape(text), language="alias"))


def text_parts(
    text: str, *, users: Mapping[str, str], authorize_url: str, plain: bool = False
) -> list[dict[str, str]]:
    """Slack ``mrkdwn`` as a list of safe parts for the page to render with ``textContent``.

    Parts are ``text``, ``bold``, ``code``, ``mention`` and ``link`` (http(s) only); a link to
    ``authorize_url`` is marked ``"action": "authorize"`` so the page shows it as a button.
    ``plain``: posted with ``mrkdwn: false``, so no bold or code, but ``<…>`` tokens and bare
    web addresses still link, as in Slack.
    """
    parts: list[dict[str, str]] = []
    pos = 0
    for match in (_PLAIN_TOKEN if plain else _TOKEN).finditer(text):
        if match.start() > pos:
            parts.append({"type": "text", "text": _plain(text[pos : match.start()])})
        pos = match.end()
        token, code, bold = (*match.groups(), None) if plain else match.groups()
        if plain and code is not None:  # a bare web address
            url = html.unescape(code)
            parts.append({"type": "link", "url": url, "text": url})
        elif code is not None:
            parts.append({"type": "code", "text": html.unescape(code)})
        elif bold is not None:
            parts.append({"type": "bold", "text": _plain(bold)})
        else:
            parts.append(_token_part(str(token), users, authorize_url))
    if pos < len(text):
        parts.append({"type": "text", "text": _plain(text[pos:])})
    return parts


def _token_part(token: str, users: Mapping[str, str], authorize_url: str) -> dict[str, str]:
    target, _, label = token.partition("|")
    if target.startswith("@"):
        return {"type": "mention", "text": "@" + (users.get(target[1:]) or label or target[1:])}
    if target.startswith("#"):
        return {"type": "mention", "text": "#" + (label or target[1:])}
    if target.startswith("!"):
        return {"type": "mention", "text": "@" + (label or target[1:]).split("^")[-1]}
    url = html.unescape(target)
    if urlsplit(url).scheme not in ("http", "https"):
        return {"type": "text", "text": html.unescape(token)}
    part = {"type": "link", "url": url, "text": html.unescape(label) if label else url}
    if url.startswith(authorize_url + "?"):
        part["action"] = "authorize"
    return part


# ------------------------------------------------------------------------------ the sandbox


@dataclass
class _Entry:
    """Something the page shows in the channel that the simulators do not keep themselves."""

    at: float
    kind: Literal["message", "command", "reply", "note"]
    text: str
    only_you: bool
    ts: str | None = None
    """A person's message: its Slack ts (reactions are looked up live)."""
    response_url: str | None = None
    """A slash command: where the bridge's later answers go."""
    replaces_shown: bool = False
    """A click on a message the channel shows: an answer there with ``replace_original`` becomes
    that message (the fake Slack edits it), so it is not shown a second time below the click."""
    typed: str = ""
    """A person's message as typed (``text`` is Slack's markup of it): what Edit starts from."""
    thread_ts: str | None = None
    """A reply in a thread: the ts of the thread's first message."""
    files: list[dict[str, Any]] = field(default_factory=list)
    """Slack ``files[]`` elements shared with the message."""
    edited: bool = False
    deleted: bool = False


@dataclass
class Sandbox:
    """The running simulators and bridge, and what the person did on the page."""

    x: FakeX
    x_url: str
    slack: FakeSlack
    slack_url: str
    bridge_url: str
    data_dir: Path
    session: aiohttp.ClientSession
    sender: SlackSender
    url: str = ""
    """The page's address, once it is served."""
    _entries: list[_Entry] = field(default_factory=list)
    _response_times: dict[tuple[str, int], float] = field(default_factory=dict)
    _replies_from_x: set[str] = field(default_factory=set)
    _file_seq: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _home_open: bool = False
    _modal_seen: str = ""
    """The id of the modal last closed on the page (a newer one shows)."""
    settings: Settings | None = None
    """The bridge's settings: what the operator's `xdm-bridge xchat …` commands run with."""
    xchat_keys: str = "none"
    """@you's X Chat keys at the bridge: ``none`` (not connected yet), ``setting up``, ``held``,
    ``forgotten`` (`xchat forget`) or ``failed``."""
    xchat_fingerprint: str = ""
    _chat_seen: dict[str, tuple[int, int, list[dict[str, Any]]]] = field(default_factory=dict)

    @property
    def authorize_url(self) -> str:
        """Where `/xdm connect` links: the bridge's own page, which goes on to X when confirmed."""
        return f"{self.bridge_url}/x/connect"

    # -- the channel box --------------------------------------------------------

    async def say(self, text: str, *, thread_ts: str | None = None) -> dict[str, Any]:
        """What the person typed in #sandbox (or in a thread of it, ``thread_ts``): ``/xdm …`` is a
        slash command, anything else a message, several lines included."""
        text = text.strip()
        if not text:
            raise SandboxError("Type a message or a /xdm command.")
        head, *rest = text.split(None, 1)
        if head == "/xdm":
            return await self.command("".join(rest).strip())
        if head.startswith("/"):
            self._note(f"{head} is not a command here. This workspace only has /xdm — try `/xdm help`.")
            return {"sent": "nothing"}
        return await self.message(text, thread_ts=thread_ts)

    async def message(
        self, text: str, *, thread_ts: str | None = None, files: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        """Post a message in #sandbox: a signed ``message`` event to the bridge (a ``file_share``
        with ``files``, a thread reply with ``thread_ts``)."""
        if thread_ts is not None:
            self._thread_root(thread_ts)
        ts = self.sender.new_ts()
        sent = slack_markup(text, dict(SLACK_PEOPLE))
        entry = _Entry(
            float(ts),
            "message",
            sent,
            only_you=False,
            ts=ts,
            typed=text,
            thread_ts=thread_ts,
            files=list(files or []),
        )
        self._entries.append(entry)
        result, _, _ = await self.sender.message(
            CHANNEL_ID, SLACK_USER_ID, sent, ts=ts, thread_ts=thread_ts, files=files
        )
        self._check(result.status, "message event")
        return {"sent": "message", "ts": ts, "status": result.status}

    async def attach(
        self, name: str, mimetype: str, content: bytes, text: str = "", *, thread_ts: str | None = None
    ) -> dict[str, Any]:
        """Share a file in #sandbox: fake Slack keeps it (``files.info`` and ``url_private_download``
        answer for it, with the bot token) and the bridge gets a ``file_share`` event."""
        name = Path(name.replace("\\", "/")).name.strip()  # the name only, should a client send a path
        if not name or not content:
            raise SandboxError("Pick a file to attach (an empty file cannot be shared).")
        if len(content) > MAX_FILE_BYTES:
            raise SandboxError(f"The sandbox takes files up to {MAX_FILE_BYTES // (1024 * 1024)} MB.")
        mimetype = mimetype or mimetypes.guess_type(name)[0] or "application/octet-stream"
        filetype = name.rsplit(".", 1)[-1].lower() if "." in name else "binary"
        self._file_seq += 1
        file_id = f"F0SANDBOX{self._file_seq:03d}"
        file = self.slack.add_file(
            file_id, name=name, mimetype=mimetype, filetype=filetype, content=content, user=SLACK_USER_ID
        )
        return await self.message(text.strip(), thread_ts=thread_ts, files=[file])

    async def edit(self, ts: str, text: str) -> dict[str, Any]:
        """Edit your message ``ts``: Slack's hidden ``message_changed`` event, signed, to the bridge."""
        entry = self._own_message(ts)
        text = text.strip()
        if not text and not entry.files:
            raise SandboxError("A message cannot be edited to nothing; delete it instead.")
        sent = slack_markup(text, dict(SLACK_PEOPLE))
        event = self.sender.message_changed_event(
            CHANNEL_ID, SLACK_USER_ID, ts, sent, entry.text, thread_ts=entry.thread_ts
        )
        entry.text, entry.typed, entry.edited = sent, text, True
        result = await self.sender.event(event)
        self._check(result.status, "edit (message_changed)")
        return {"sent": "edit", "ts": ts, "status": result.status}

    async def delete(self, ts: str) -> dict[str, Any]:
        """Delete your message ``ts``: Slack's hidden ``message_deleted`` event, signed, to the bridge."""
        entry = self._own_message(ts)
        event = self.sender.message_deleted_event(
            CHANNEL_ID, SLACK_USER_ID, ts, entry.text, thread_ts=entry.thread_ts
        )
        entry.deleted = True
        result = await self.sender.event(event)
        self._check(result.status, "deletion (message_deleted)")
        return {"sent": "delete", "ts": ts, "status": result.status}

    def _thread_root(self, ts: str) -> None:
        """A thread starts at a message in the channel: yours, or one the bridge posted from X."""
        posted = any(post["ts"] == ts for post in self.slack.posted(CHANNEL_ID))
        if not posted:
            self._own_message(ts)

    def _own_message(self, ts: str) -> _Entry:
        found = next((e for e in self._entries if e.kind == "message" and e.ts == ts), None)
        if found is None or found.deleted:
            raise SandboxError("That message is not in the channel (any more).")
        return found

    def _check(self, status: int, what: str) -> None:
        if status != 200:
            self._note(f"The bridge answered the {what} with HTTP {status}; Slack would retry.")

    async def command(self, text: str) -> dict[str, Any]:
        """Run ``/xdm text``: a signed slash command whose ``response_url`` is on the fake Slack.

        A question the bridge answers with there (``/xdm unlink``, ``/xdm disconnect``) is shown
        to you in the channel with its buttons, as Slack shows an ephemeral answer."""
        response_url = self.slack.new_response_url(user=SLACK_USER_ID, channel=CHANNEL_ID)
        entry = _Entry(
            time.time(), "command", f"/xdm {text}".strip(), only_you=True, response_url=response_url
        )
        self._entries.append(entry)
        self._watch(response_url)
        result = await self.sender.command(
            slack_escape(text),
            user_id=SLACK_USER_ID,
            channel_id=CHANNEL_ID,
            response_url=response_url,
            user_name="you",
            channel_name=CHANNEL_NAME,
            team_domain="sandbox",
        )
        if result.status != 200:
            self._note(f"The bridge answered the slash command with HTTP {result.status}.")
            return {"sent": "command", "status": result.status}
        try:
            ack = result.json()
        except ValueError:
            ack = {"text": result.text}
        if isinstance(ack, dict) and ack.get("text"):
            in_channel = ack.get("response_type") == "in_channel"
            entry.only_you = not in_channel
            self._entries.append(_Entry(time.time(), "reply", str(ack["text"]), only_you=not in_channel))
        return {"sent": "command", "status": result.status}

    def _note(self, text: str) -> None:
        self._entries.append(_Entry(time.time(), "note", text, only_you=True))

    def _watch(self, response_url: str) -> None:
        """Note when each answer reaches the response_url, so the channel shows them in order."""
        response_id = response_url.rsplit("/", 1)[-1]

        async def watch() -> None:
            for count in range(1, RESPONSE_URL_MAX_USES + 1):
                try:
                    await self.slack.wait_for_response(
                        response_url, count=count, timeout=RESPONSE_URL_TTL_SECONDS
                    )
                except AssertionError:  # the URL expired unused
                    return
                self._response_times.setdefault((response_id, count - 1), time.time())

        task = asyncio.create_task(watch(), name=f"sandbox-watch-{response_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the X side -------------------------------------------------------------

    async def click(self, button_id: str) -> dict[str, Any]:
        """Click a button the bot showed you (``{message_ts}/{index}``): a signed ``block_actions``
        to the bridge, as Slack's interactivity sends it; answers replace the message or follow it."""
        button = next((b for b in self._buttons() if _button_id(b) == button_id), None)
        if button is None:
            raise SandboxError("That button is no longer there.")
        response_url = self.slack.click_response_url(button)
        self._entries.append(
            _Entry(
                time.time(),
                "note",
                f"You clicked “{button.text}”.",
                only_you=True,
                response_url=response_url,
                replaces_shown=button.channel == CHANNEL_ID,
            )
        )
        self._watch(response_url)
        result = await self.sender.click(button, user_id=SLACK_USER_ID, response_url=response_url)
        if result.status != 200:
            self._note(f"The bridge answered the click with HTTP {result.status}.")
        elif button.action_id == CONFIRM_ACTION and self.xchat_keys == "none":
            self._spawn(self._xchat_setup(), "sandbox-xchat-setup")
        return {"sent": "click", "status": result.status}

    # -- the operator's X Chat step -------------------------------------------------

    async def _xchat_setup(self) -> None:
        """What the operator runs once @you is connected: `xdm-bridge xchat setup @you`, the CLI's
        own code on the bridge's database (serve uses the keys on the next command)."""
        if self.settings is None:
            return
        self.xchat_keys = "setting up"
        deadline = time.monotonic() + SETUP_WAIT_SECONDS
        identity = None
        while identity is None:
            try:
                identity, _ = await xchat_ops.setup(self.settings, f"@{YOUR_X_USERNAME}", self._note)
            except xchat_ops.NoSuchAccount:  # the confirmation is still being saved
                if time.monotonic() > deadline:
                    self.xchat_keys = "failed"
                    self._note("The sandbox could not give @you X Chat keys: the account never showed up.")
                    return
                await asyncio.sleep(0.1)
            except XChatError as exc:
                self.xchat_keys = "failed"
                self._note(f"`xdm-bridge xchat setup @{YOUR_X_USERNAME}` failed: {exc}")
                return
        self.xchat_keys, self.xchat_fingerprint = "held", identity.fingerprint
        self._note(
            f"As the operator would, the sandbox ran `xdm-bridge xchat setup @{YOUR_X_USERNAME}`: "
            "X Chat keys made, saved encrypted in the bridge's database and registered with X "
            f"(fingerprint {identity.fingerprint}). @alice and @carol are on X Chat, so "
            "`/xdm dm @alice` bridges an encrypted conversation; @bob is not, so `/xdm dm @bob` "
            "stays a legacy DM."
        )

    async def forget_keys(self) -> dict[str, Any]:
        """`xdm-bridge xchat forget @you`: the bridge no longer holds @you's keys, so a conversation
        with someone on X Chat is bridged one-way, and the channel is told so."""
        if self.settings is None or self.xchat_keys != "held":
            raise SandboxError("The bridge holds no X Chat keys for @you (connect first).")
        try:
            await xchat_ops.forget(self.settings, f"@{YOUR_X_USERNAME}")
        except XChatError as exc:
            raise SandboxError(f"`xdm-bridge xchat forget @{YOUR_X_USERNAME}` failed: {exc}") from None
        self.xchat_keys, self.xchat_fingerprint = "forgotten", ""
        self._note(
            f"The sandbox ran `xdm-bridge xchat forget @{YOUR_X_USERNAME}`: the bridge holds no X Chat "
            "keys for @you any more (X keeps their registration). Now `/xdm dm @carol`, who is on "
            "X Chat, is bridged over the legacy DM API, and the channel is told her replies may "
            "never appear."
        )
        return {"forgotten": YOUR_X_USERNAME}

    def _spawn(self, work: Awaitable[None], name: str) -> None:
        async def run() -> None:
            await work

        task = asyncio.create_task(run(), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _buttons(self) -> list[Button]:
        return self.slack.buttons(SLACK_USER_ID)

    # -- the App Home tab -------------------------------------------------------

    async def open_home(self) -> dict[str, Any]:
        """Open the bridge's Home tab: a signed ``app_home_opened``, as Slack sends it."""
        self._home_open = True
        result = await SurfaceSender(self.sender, self.slack).home_opened(SLACK_USER_ID)
        self._check(result.status, "Home tab")
        return {"sent": "app_home_opened", "status": result.status}

    def close_home(self) -> dict[str, Any]:
        self._home_open = False
        return {"closed": "home"}

    async def home_click(self, action_id: str, value: str) -> dict[str, Any]:
        """Click a button of the Home: a signed ``block_actions`` from the view."""
        home = self.slack.views.home(SLACK_USER_ID)
        buttons = self.slack.views.buttons(home, SLACK_USER_ID) if home else []
        button = next((b for b in buttons if b.action_id == action_id and b.value == value), None)
        if button is None:
            raise SandboxError("That button is no longer on the Home.")
        result = await SurfaceSender(self.sender, self.slack).click(button)
        self._check(result.status, "click")
        return {"sent": "click", "status": result.status}

    def close_modal(self) -> dict[str, Any]:
        modal = self.slack.views.modal(SLACK_USER_ID)
        self._modal_seen = str(modal["id"]) if modal else ""
        return {"closed": "modal"}

    def _home_state(self) -> dict[str, Any]:
        """The Home as the page draws it: blocks as safe text parts, buttons by their words."""
        users = dict(SLACK_PEOPLE)
        home = self.slack.views.home(SLACK_USER_ID)
        blocks = []
        for block in (home or {}).get("blocks") or []:
            text = view_text(
                {"blocks": [{k: v for k, v in block.items() if k not in ("accessory", "elements")}]}
            )
            buttons = self.slack.views.buttons({"blocks": [block]}, SLACK_USER_ID)
            if block.get("type") == "context":
                text = view_text({"blocks": [block]})
            # Slack names a <#C…> mention by the channel's name.
            text = text.replace(f"<#{CHANNEL_ID}>", f"<#{CHANNEL_ID}|{CHANNEL_NAME}>")
            parts = text_parts(text, users=users, authorize_url=self.authorize_url)
            blocks.append(
                {
                    "type": block.get("type"),
                    "parts": parts,
                    "buttons": [{"action": b.action_id, "value": b.value, "text": b.text} for b in buttons],
                }
            )
        return {
            "open": self._home_open,
            "published": home is not None,
            "blocks": blocks,
            "modal": self._modal_state(),
        }

    def _open_modal(self) -> dict[str, Any] | None:
        modal = self.slack.views.modal(SLACK_USER_ID)
        return modal if modal is not None and modal["id"] != self._modal_seen else None

    def _modal_state(self) -> dict[str, Any] | None:
        """The modal shown over the page: its words, and for the bridge modal its form (the
        people picker, the conversations listed, the message box, the submit button)."""
        modal = self._open_modal()
        if modal is None:
            return None
        users = dict(SLACK_PEOPLE)
        form = None
        if modal.get("callback_id") == BRIDGE_MODAL and modal.get("submit"):
            blocks = {str(b.get("block_id")): b for b in modal.get("blocks") or []}
            listing = blocks.get(CONVERSATION_BLOCK, {})
            options = (listing.get("element") or {}).get("options") or []
            form = {
                # Opened from the Home: which channel (Slack's conversations_select; one here).
                "channels": [{"value": CHANNEL_ID, "text": f"#{CHANNEL_NAME}"}]
                if CHANNEL_BLOCK in blocks
                else [],
                "people": PEOPLE_BLOCK in blocks,
                "conversations": [{"value": o["value"], "text": o["text"]["text"]} for o in options],
                "conversations_note": view_text({"blocks": [listing]}) if not options else "",
                "message": MESSAGE_BLOCK in blocks,
                "submit": str(modal["submit"].get("text", "Submit")),
            }
            intro = [b for b in modal.get("blocks") or [] if b.get("type") == "section"]
            text = view_text({"blocks": intro})
        else:
            text = view_text(modal)
        return {
            "id": str(modal["id"]),
            "title": str((modal.get("title") or {}).get("text", "")),
            "parts": text_parts(text, users=users, authorize_url=self.authorize_url),
            "form": form,
        }

    async def modal_suggest(self, typed: str) -> dict[str, Any]:
        """The people picker's options for what was typed: Slack's ``block_suggestion`` to the
        bridge, which looks the handle up at X."""
        modal = self._open_modal()
        if modal is None or modal.get("callback_id") != BRIDGE_MODAL:
            raise SandboxError("The /xdm form is not open.")
        result = await SurfaceSender(self.sender, self.slack).suggest(
            modal, action_id=PEOPLE_ACTION, block_id=PEOPLE_BLOCK, value=typed, user_id=SLACK_USER_ID
        )
        options = result.json().get("options", []) if result.status == 200 and result.text else []
        return {"options": [{"value": o["value"], "text": o["text"]["text"]} for o in options]}

    async def modal_submit(
        self, people: list[str], conversation: str, message: str, channel: str = ""
    ) -> dict[str, Any]:
        """Submit the /xdm form as Slack does (``view_submission``, signed); the bridge's refusals
        come back per field, and its outcome replaces the modal."""
        modal = self._open_modal()
        if modal is None or modal.get("callback_id") != BRIDGE_MODAL or not modal.get("submit"):
            raise SandboxError("The /xdm form is not open.")
        values: dict[str, Any] = {
            PEOPLE_BLOCK: {
                PEOPLE_ACTION: {
                    "type": "multi_external_select",
                    "selected_options": [
                        {"text": {"type": "plain_text", "text": f"@{p}"}, "value": p} for p in people
                    ],
                }
            },
            MESSAGE_BLOCK: {MESSAGE_ACTION: {"type": "plain_text_input", "value": message.strip() or None}},
        }
        if channel:
            values[CHANNEL_BLOCK] = {
                CHANNEL_ACTION: {"type": "conversations_select", "selected_conversation": channel}
            }
        if conversation:
            values[CONVERSATION_BLOCK] = {
                CONVERSATION_ACTION: {
                    "type": "static_select",
                    "selected_option": {
                        "text": {"type": "plain_text", "text": conversation},
                        "value": conversation,
                    },
                }
            }
        known = set(self.slack.responses)
        result = await SurfaceSender(self.sender, self.slack).submit(modal, values, user_id=SLACK_USER_ID)
        answer = result.json() if result.status == 200 and result.text.strip().startswith("{") else {}
        # A channel picked in the form gets a response_url of its own (a form opened by `/xdm`
        # answers through the command's): the channel shows what the bridge says there.
        for response_id in [r for r in self.slack.responses if r not in known]:
            url = f"{self.slack_url}/response/{response_id}"
            self._entries.append(
                _Entry(time.time(), "note", "You submitted the form.", only_you=True, response_url=url)
            )
            self._watch(url)
        if answer.get("response_action") == "errors":
            return {"sent": "view_submission", "errors": answer.get("errors", {})}
        if result.status != 200:
            self._note(f"The bridge answered the form with HTTP {result.status}.")
        if not answer:  # an empty 200 closes the modal, as in Slack
            self._modal_seen = str(modal["id"])
        return {"sent": "view_submission", "errors": {}}

    async def reply_on_x(
        self, conversation_id: str, username: str, text: str, photo: bytes | None = None
    ) -> dict[str, Any]:
        """Someone on X writes in a conversation: a real DM POST to the fake X with their token.

        ``photo`` (a PNG, GIF or JPEG, as bytes) goes with it as X's app sends one: uploaded
        first (here straight into the simulator), then attached to the DM by its media id.
        """
        text = text.strip()
        if not text and photo is None:
            raise SandboxError("Type a reply first.")
        if conversation_id.startswith(CHAT_PREFIX):
            return self._say_on_x_chat(conversation_id.removeprefix(CHAT_PREFIX), username, text, photo)
        conversation = self.x.conversations.get(conversation_id)
        if conversation is None:
            raise SandboxError("There is no such conversation on the simulated X.")
        users = {self.x.users[uid].username: uid for uid in conversation.participants if uid in self.x.users}
        user_id = users.get(username.lstrip("@"))
        if user_id is None or user_id == YOUR_X_ID:
            raise SandboxError(f"@{username} is not someone else in that conversation.")
        message: dict[str, Any] = {"text": text} if text else {}
        if photo is not None:
            media_type = _image_type(photo)  # what the bytes are, whatever the file's name said
            if media_type not in IMAGE_TYPES:
                raise SandboxError("Only a photo (a PNG, GIF or JPEG image) can go with a reply here.")
            if len(photo) > MAX_FILE_BYTES:
                raise SandboxError(f"The sandbox takes photos up to {MAX_FILE_BYTES // (1024 * 1024)} MB.")
            message["attachments"] = [{"media_id": self.x.add_media(user_id, photo, media_type)}]
        token = self.x.issue_token(user_id).access_token
        async with self.session.post(
            f"{self.x_url}/2/dm_conversations/{conversation_id}/messages",
            json=message,
            headers={"Authorization": f"Bearer {token}"},
        ) as response:
            body = await response.json(content_type=None)
            if response.status != 201:
                raise SandboxError(f"The simulated X refused the reply ({response.status}): {body}")
        event_id = str(body["data"]["dm_event_id"])
        self._replies_from_x.add(event_id)
        return {"dm_event_id": event_id}

    def _say_on_x_chat(self, path_id: str, username: str, text: str, photo: bytes | None) -> dict[str, Any]:
        """Someone writes in an encrypted conversation from their phone: encrypted and signed with
        their own X Chat keys (``chat_xdk``), posted to the simulated X, which pushes it."""
        chat = self.x.chat.conversations.get(path_id.replace("-", ":")) or self.x.chat.conversations.get(
            path_id
        )
        user_id = next((u.id for u in self.x.users.values() if u.username == username.lstrip("@")), None)
        if chat is None:
            raise SandboxError("There is no such X Chat conversation on the simulated X.")
        if user_id is None or user_id == YOUR_X_ID or user_id not in chat.members:
            raise SandboxError(f"@{username} is not someone else in that conversation.")
        if user_id not in self.x.chat.phones:
            raise SandboxError(f"@{username} has no X Chat keys on this simulated X.")
        if photo is not None:
            if _image_type(photo) not in IMAGE_TYPES:
                raise SandboxError("Only a photo (a PNG, GIF or JPEG image) can go with a reply here.")
            kind = _image_type(photo).split("/")[1]
            self.x.chat.person_sends_media(user_id, path_id, photo, f"photo.{kind}", text)
            return {"sent": "x chat"}
        message_id = self.x.chat.person_says(user_id, path_id, text)
        self._replies_from_x.add(message_id)
        return {"sent": "x chat", "message_id": message_id}

    # -- what the page shows ----------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything the page shows, read from the simulators and this sandbox's own log."""
        channel = self._channel_items()
        # X issued a token the bridge kept, and the bridge's question (Confirm/Cancel) was answered.
        asking = any(b.action_id == CONFIRM_ACTION for b in self._buttons())
        granted = any(t.user_id == YOUR_X_ID and not t.revoked for t in self.x.access_tokens.values())
        connected = granted and not asking
        bridged = any(YOUR_X_ID in c.participants for c in self.x.conversations.values()) or any(
            YOUR_X_ID in c.members for c in self.x.chat.conversations.values()
        )
        relayed = any(
            "white_check_mark" in self.slack.reactions(CHANNEL_ID, e.ts) for e in self._entries if e.ts
        )
        return {
            "label": LABEL,
            "workspace": TEAM_NAME,
            "channel": {"id": CHANNEL_ID, "name": CHANNEL_NAME},
            "you": {"slack": SLACK_USER_NAME, "x": YOUR_X_USERNAME},
            "steps": {"connected": connected, "bridged": bridged, "relayed": relayed},
            "messages": channel,
            "x": {
                "you": YOUR_X_USERNAME,
                "people": [
                    {
                        "username": u.username,
                        "name": u.name,
                        "you": u.id == YOUR_X_ID,
                        "x_chat": u.id in self.x.chat.phones or u.id in self.x.public_keys,
                    }
                    for u in self.x.users.values()
                ],
                "conversations": self._conversations() + self._chat_conversations(),
                "keys": {"state": self.xchat_keys, "fingerprint": self.xchat_fingerprint},
            },
            "servers": {"bridge": self.bridge_url, "x": self.x_url, "slack": self.slack_url},
            "home": self._home_state(),
        }

    def _channel_items(self) -> list[dict[str, Any]]:
        users = dict(SLACK_PEOPLE)
        items: list[tuple[float, int, dict[str, Any]]] = []

        # How each answer reached Slack (ack, response_url, chat.postEphemeral…) is the bridge's
        # business: Slack shows them all alike, and so does the page.
        def add(
            at: float, kind: str, text: str, *, author: str, only_you: bool, plain: bool = False, **more: Any
        ) -> None:
            if kind == "command":  # shown as typed ("used `/xdm …`"): it is not mrkdwn
                parts = [{"type": "text", "text": text}]
            else:
                parts = text_parts(text, users=users, authorize_url=self.authorize_url, plain=plain)
            item = {"kind": kind, "author": author, "only_you": only_you, "parts": parts}
            items.append((at, len(items), {**item, **more}))

        for entry in self._entries:
            if entry.kind == "message" and entry.ts is not None:
                names = sorted(self.slack.reactions(CHANNEL_ID, entry.ts))
                reactions = [{"name": n, "emoji": REACTION_EMOJI.get(n) or _plain(f":{n}:")} for n in names]
                add(
                    entry.at,
                    "message",
                    "This message was deleted." if entry.deleted else entry.text,
                    author=SLACK_USER_NAME,
                    only_you=False,
                    ts=entry.ts,
                    reactions=[] if entry.deleted else reactions,
                    typed="" if entry.deleted else entry.typed,
                    thread_ts=entry.thread_ts,
                    files=[] if entry.deleted else [_file_chip(f["id"], f["name"]) for f in entry.files],
                    edited=entry.edited,
                    deleted=entry.deleted,
                )
            elif entry.kind == "command":
                add(entry.at, "command", entry.text, author=SLACK_USER_NAME, only_you=entry.only_you)
            elif entry.kind == "reply":
                add(entry.at, "bot", entry.text, author="xdm-bridge", only_you=entry.only_you)
            else:
                add(entry.at, "note", entry.text, author="Sandbox", only_you=True)
            if entry.response_url is not None:
                response_id = entry.response_url.rsplit("/", 1)[-1]
                for index, payload in enumerate(self.slack.responses.get(response_id, [])):
                    if payload.get("delete_original") or not payload.get("text"):
                        continue
                    if payload.get("blocks") and not payload.get("replace_original"):
                        continue  # a question: shown below as the ephemeral message it became
                    if payload.get("replace_original") and entry.replaces_shown:
                        continue  # shown in place of the clicked message, which now reads so
                    at = self._response_times.setdefault((response_id, index), time.time())
                    only_you = payload.get("response_type") != "in_channel"
                    add(at, "bot", str(payload["text"]), author="xdm-bridge", only_you=only_you)
        buttons = self._buttons()
        for ephemeral in self.slack.ephemerals(SLACK_USER_ID):
            if ephemeral["channel"] == CHANNEL_ID:
                at = float(ephemeral["message_ts"])
                shown = [
                    {"id": _button_id(b), "text": b.text, "action": b.action_id}
                    for b in buttons
                    if b.message_ts == ephemeral["message_ts"]
                ]
                add(at, "bot", ephemeral["text"], author="xdm-bridge", only_you=True, buttons=shown)
        for post in self.slack.posted(CHANNEL_ID):
            as_sender = post.get("username")  # an X reply, posted as its sender
            add(
                float(post["ts"]),
                "bot",
                str(post.get("text", "")),
                author=str(as_sender or "xdm-bridge"),
                only_you=False,
                plain=(CHANNEL_ID, str(post["ts"])) in self.slack.plain_posts,
                ts=str(post["ts"]),  # anyone may reply to it in a thread
            )
        for shared in self.slack.shared_files:  # an X attachment the bridge brought over
            if shared["channel"] == CHANNEL_ID:
                chip = _file_chip(str(shared["id"]), str(shared["name"]))
                add(
                    float(shared["ts"]),
                    "bot",
                    str(shared["title"]),
                    author="xdm-bridge",
                    only_you=False,
                    files=[chip],
                )
        items.sort(key=lambda t: (t[0], t[1]))
        return [{**item, "id": f"m{n}", "at": at} for n, (at, _, item) in enumerate(items)]

    def _conversations(self) -> list[dict[str, Any]]:
        out = []
        for conversation in sorted(self.x.conversations.values(), key=lambda c: c.created_at):
            names = {
                uid: self.x.users[uid].username for uid in conversation.participants if uid in self.x.users
            }
            others = sorted(n for uid, n in names.items() if uid != YOUR_X_ID)
            title = ("Group with " if conversation.kind == "Group" else "DM with ") + ", ".join(
                f"@{n}" for n in others
            )
            messages = []
            for event in self.x.messages_in(conversation.id, include_deleted=True):
                sender = self.x.users.get(event.sender_id)
                from_x = event.id in self._replies_from_x
                messages.append(
                    {
                        "id": event.id,
                        "sender": sender.username if sender else event.sender_id,
                        "sender_name": sender.name if sender else event.sender_id,
                        "you": event.sender_id == YOUR_X_ID,
                        "text": event.text or "",
                        "media": [self._media(m) for m in event.media_ids if m in self.x.media],
                        "deleted": event.deleted,
                        "at": event.created_at,
                        "note": FROM_X_NOTE if from_x else "",
                    }
                )
            out.append(
                {
                    "id": conversation.id,
                    "kind": conversation.kind,
                    "title": title,
                    "participants": [YOUR_X_USERNAME, *others] if YOUR_X_ID in names else others,
                    "encrypted": False,
                    "reply_as": others,
                    "messages": messages,
                }
            )
        return out

    def _chat_conversations(self) -> list[dict[str, Any]]:
        """X Chat conversations as an X app shows them to the people in them: each message
        decrypted on a simulated person's phone, its signature checked."""
        out = []
        chats = sorted(self.x.chat.conversations.values(), key=lambda c: c.created_ms)
        for chat in chats:
            names = {uid: self.x.users[uid].username for uid in chat.members if uid in self.x.users}
            others = sorted(n for uid, n in names.items() if uid != YOUR_X_ID)
            reader = next(
                (uid for uid in sorted(chat.members) if uid in self.x.chat.phones and uid != YOUR_X_ID), None
            )
            group = chat.id.startswith("g")
            title = ("Group with " if group else "DM with ") + ", ".join(f"@{n}" for n in others)
            out.append(
                {
                    "id": CHAT_PREFIX + chat.id.replace(":", "-"),
                    "kind": "Group" if group else "OneToOne",
                    "encrypted": True,
                    "title": title,
                    "participants": [YOUR_X_USERNAME, *others] if YOUR_X_ID in names else others,
                    "reply_as": [
                        n
                        for uid, n in sorted(names.items())
                        if uid != YOUR_X_ID and uid in self.x.chat.phones
                    ],
                    "read_on": names.get(reader or "", ""),
                    "messages": self._chat_messages(chat.id, reader) if reader else [],
                }
            )
        return out

    def _chat_messages(self, chat_id: str, reader: str) -> list[dict[str, Any]]:
        """What ``reader``'s phone shows, decrypted and verified (once per change: decrypting is
        the costly part, and the page asks twice a second)."""
        chat = self.x.chat.conversations[chat_id]
        seen = self._chat_seen.get(chat_id)
        if seen is not None and seen[:2] == (len(chat.events), len(chat.key_events)):
            return seen[2]
        shown = self.x.chat.received(reader, chat_id.replace(":", "-"))
        deleted = {str(i) for e in shown if e["type"] == "MessageDeleted" for i in e.get("message_ids", [])}
        edits = {
            str(e["content"].get("target_message_id")): str(e["content"].get("new_text", ""))
            for e in shown
            if e["type"] == "Message" and e["content"].get("content_type") == "Edit"
        }
        messages: list[dict[str, Any]] = []
        for event in shown:
            if event["type"] == "Error":
                messages.append(
                    {
                        "id": f"error{len(messages)}",
                        "sender": "",
                        "sender_name": "",
                        "you": False,
                        "text": "",
                        "media": [],
                        "deleted": False,
                        "at": time.time(),
                        "verified": False,
                        "note": f"Refused by the phone: {event['error']}",
                    }
                )
                continue
            content = event.get("content") or {}
            if event["type"] != "Message" or content.get("content_type") == "Edit":
                continue
            sender = self.x.users.get(str(event["sender_id"]))
            sequence = str(event["sequence_id"])
            text = edits.get(sequence, str(content.get("text") or ""))
            media = [
                self._chat_media(chat_id, a)
                for a in event.get("attachments") or []
                if a.get("media_hash_key")
            ]
            messages.append(
                {
                    "id": sequence,
                    "sender": sender.username if sender else str(event["sender_id"]),
                    "sender_name": sender.name if sender else str(event["sender_id"]),
                    "you": str(event["sender_id"]) == YOUR_X_ID,
                    "text": text,
                    "media": media,
                    "deleted": sequence in deleted,
                    "edited": sequence in edits,
                    "at": int(event.get("created_at_msec") or 0) / 1000,
                    "verified": bool(event.get("verified")),
                    "note": FROM_X_NOTE if str(event.get("id")) in self._replies_from_x else "",
                }
            )
        self._chat_seen[chat_id] = (len(chat.events), len(chat.key_events), messages)
        return messages

    def _chat_media(self, chat_id: str, attachment: Mapping[str, Any]) -> dict[str, str]:
        """An encrypted file as the page links it: the phone decrypts it when it is asked for."""
        key = str(attachment["media_hash_key"])
        kind = "image" if str(attachment.get("media_type", "")).lower() == "image" else "file"
        url = f"/api/x/chat-media/{chat_id.replace(':', '-')}/{key}"
        return {"id": key, "kind": kind, "url": url, "name": str(attachment.get("filename") or "a file")}

    def chat_media(self, path_id: str, media_hash_key: str) -> bytes | None:
        """An X Chat file, downloaded and decrypted by a simulated phone in that conversation."""
        chat = self.x.chat.conversations.get(path_id.replace("-", ":")) or self.x.chat.conversations.get(
            path_id
        )
        if chat is None or (chat.id, media_hash_key) not in self.x.chat.media:
            return None
        reader = next((u for u in sorted(chat.members) if u in self.x.chat.phones and u != YOUR_X_ID), None)
        return self.x.chat.received_media(reader, path_id, media_hash_key) if reader else None

    def _media(self, media_id: str) -> dict[str, str]:
        media = self.x.media[media_id]
        kind = media.category.removeprefix("dm_")  # image, gif or video
        return {"id": media_id, "kind": kind, "url": f"/api/x/media/{media_id}"}

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))


def _file_chip(file_id: str, name: str) -> dict[str, Any]:
    """A file as the page shows it: its name, and a preview when it is an image."""
    image = (mimetypes.guess_type(name)[0] or "").startswith("image/")
    return {"id": file_id, "name": name, "image": image, "url": f"/api/slack/files/{file_id}"}


# What a browser may be sent as an image, by its first bytes (X keeps no type for some uploads).
_IMAGE_MAGIC = ((b"\x89PNG", "image/png"), (b"GIF8", "image/gif"), (b"\xff\xd8\xff", "image/jpeg"))
IMAGE_TYPES = frozenset(kind for _, kind in _IMAGE_MAGIC)


def _image_type(data: bytes) -> str:
    return next((kind for magic, kind in _IMAGE_MAGIC if data.startswith(magic)), "application/octet-stream")


def _button_id(button: Button) -> str:
    return f"{button.message_ts}/{button.action_id}"


# ---------------------------------------------------------------------------- the page


SANDBOX = web.AppKey("sandbox", Sandbox)


def page_app(sandbox: Sandbox) -> web.Application:
    """The sandbox page and its small JSON API."""
    # A file travels as base64 in JSON: a third larger than the file, plus the message.
    app = web.Application(client_max_size=MAX_FILE_BYTES * 4 // 3 + 64 * 1024)
    app[SANDBOX] = sandbox
    app.router.add_get("/", _index)
    app.router.add_get("/api/state", _state)
    app.router.add_post("/api/slack", _slack)
    app.router.add_post("/api/slack/file", _slack_file)
    app.router.add_post("/api/slack/edit", _slack_edit)
    app.router.add_post("/api/slack/delete", _slack_delete)
    app.router.add_get("/api/slack/files/{file_id}", _slack_file_content)
    app.router.add_post("/api/slack/click", _click)
    app.router.add_post("/api/slack/home", _home)
    app.router.add_post("/api/slack/home/click", _home_click)
    app.router.add_post("/api/slack/modal/suggest", _modal_suggest)
    app.router.add_post("/api/slack/modal/submit", _modal_submit)
    app.router.add_post("/api/x/reply", _x_reply)
    app.router.add_post("/api/xchat/forget", _xchat_forget)
    app.router.add_get("/api/x/media/{media_id}", _x_media)
    app.router.add_get("/api/x/chat-media/{conversation}/{key}", _x_chat_media)
    return app


def _page_html() -> str:
    return importlib.resources.files("adapters.sandbox").joinpath("sandbox.html").read_text("utf-8")


async def _index(request: web.Request) -> web.Response:
    return web.Response(text=_page_html(), content_type="text/html", headers={"Cache-Control": "no-store"})


async def _state(request: web.Request) -> web.Response:
    return web.json_response(request.app[SANDBOX].state(), headers={"Cache-Control": "no-store"})


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="expected a JSON object") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="expected a JSON object")
    return body


async def _answer(work: Awaitable[dict[str, Any]]) -> web.Response:
    try:
        return web.json_response({"ok": True, **await work})
    except SandboxError as exc:
        return web.json_response({"ok": False, "error": str(exc)}, status=400)


def _thread(body: Mapping[str, Any]) -> str | None:
    thread_ts = body.get("thread_ts")
    return str(thread_ts) if thread_ts else None


def _file_of(body: Mapping[str, Any], key: str) -> tuple[str, str, bytes]:
    """``{"name", "type", "data": base64}`` under ``key``, as the page sends a picked file."""
    file = body.get(key)
    if not isinstance(file, dict):
        raise SandboxError("No file came with the request.")
    try:
        data = base64.b64decode(str(file.get("data", "")), validate=True)
    except binascii.Error:
        raise SandboxError("The file did not arrive whole (not base64); pick it again.") from None
    return str(file.get("name", "")), str(file.get("type", "")), data


async def _slack(request: web.Request) -> web.Response:
    body = await _body(request)
    return await _answer(request.app[SANDBOX].say(str(body.get("text", "")), thread_ts=_thread(body)))


async def _slack_file(request: web.Request) -> web.Response:
    body = await _body(request)

    async def attach() -> dict[str, Any]:
        name, mimetype, data = _file_of(body, "file")
        text = str(body.get("text", ""))
        return await request.app[SANDBOX].attach(name, mimetype, data, text, thread_ts=_thread(body))

    return await _answer(attach())


async def _slack_edit(request: web.Request) -> web.Response:
    body = await _body(request)
    return await _answer(request.app[SANDBOX].edit(str(body.get("ts", "")), str(body.get("text", ""))))


async def _slack_delete(request: web.Request) -> web.Response:
    body = await _body(request)
    return await _answer(request.app[SANDBOX].delete(str(body.get("ts", ""))))


async def _slack_file_content(request: web.Request) -> web.Response:
    found = request.app[SANDBOX].slack.file_content(request.match_info["file_id"])
    if found is None:
        raise web.HTTPNotFound(text="no such file")
    data, mimetype = found
    # Only images are shown inline; anything else is a download, never rendered by the page's origin.
    inline = mimetype in IMAGE_TYPES and _image_type(data) == mimetype
    headers = {
        "Content-Disposition": "inline" if inline else "attachment",
        "X-Content-Type-Options": "nosniff",
    }
    content_type = mimetype if inline else "application/octet-stream"
    return web.Response(body=data, content_type=content_type, headers=headers)


async def _x_media(request: web.Request) -> web.Response:
    media = request.app[SANDBOX].x.media.get(request.match_info["media_id"])
    if media is None:
        raise web.HTTPNotFound(text="no such media")
    headers = {"X-Content-Type-Options": "nosniff"}
    return web.Response(body=media.data, content_type=_image_type(media.data), headers=headers)


async def _x_chat_media(request: web.Request) -> web.Response:
    data = request.app[SANDBOX].chat_media(request.match_info["conversation"], request.match_info["key"])
    if data is None:
        raise web.HTTPNotFound(text="no such file")
    kind = _image_type(data)
    # Only images are shown inline; anything else is a download, never rendered by the page's origin.
    headers = {"X-Content-Type-Options": "nosniff"}
    if kind not in IMAGE_TYPES:
        headers["Content-Disposition"] = "attachment"
    return web.Response(body=data, content_type=kind, headers=headers)


async def _click(request: web.Request) -> web.Response:
    body = await _body(request)
    return await _answer(request.app[SANDBOX].click(str(body.get("id", ""))))


async def _home(request: web.Request) -> web.Response:
    """``{"open": true}`` opens the Home tab (``app_home_opened``), ``false`` goes back to the
    channel; ``{"close_modal": true}`` closes the modal shown over it."""
    sandbox, body = request.app[SANDBOX], await _body(request)
    if body.get("close_modal"):
        return web.json_response({"ok": True, **sandbox.close_modal()})
    if body.get("open"):
        return await _answer(sandbox.open_home())
    return web.json_response({"ok": True, **sandbox.close_home()})


async def _home_click(request: web.Request) -> web.Response:
    sandbox, body = request.app[SANDBOX], await _body(request)
    return await _answer(sandbox.home_click(str(body.get("action") or ""), str(body.get("value") or "")))


async def _modal_suggest(request: web.Request) -> web.Response:
    body = await _body(request)
    return await _answer(request.app[SANDBOX].modal_suggest(str(body.get("value") or "")))


async def _modal_submit(request: web.Request) -> web.Response:
    body = await _body(request)
    people = body.get("people") or []
    if not isinstance(people, list):
        raise web.HTTPBadRequest(text="people: expected a list of handles")
    work = request.app[SANDBOX].modal_submit(
        [str(p) for p in people],
        str(body.get("conversation") or ""),
        str(body.get("message") or ""),
        str(body.get("channel") or ""),
    )
    return await _answer(work)


async def _xchat_forget(request: web.Request) -> web.Response:
    return await _answer(request.app[SANDBOX].forget_keys())


async def _x_reply(request: web.Request) -> web.Response:
    body = await _body(request)
    sandbox = request.app[SANDBOX]

    async def reply() -> dict[str, Any]:
        conversation_id, username, text = (
            str(body.get(k, "")) for k in ("conversation_id", "username", "text")
        )
        photo = _file_of(body, "photo")[2] if body.get("photo") is not None else None
        return await sandbox.reply_on_x(conversation_id, username, text, photo=photo)

    return await _answer(reply())


# ------------------------------------------------------------------------- composition


def _loopback_socket(port: int = 0) -> socket.socket:
    """A socket bound on 127.0.0.1 (any free port for 0), handed to aiohttp's ``SockSite``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError as exc:
        sock.close()
        raise SandboxError(
            f"cannot listen on {HOST}:{port} ({exc.strerror}); choose another --port"
        ) from None
    return sock


def bridge_env(
    data_dir: Path,
    *,
    x_url: str,
    slack_url: str,
    bridge_url: str,
    signing_secret: str,
    x_client_secret: str,
    x_consumer_secret: str,
    x_bearer_token: str,
) -> dict[str, str]:
    """The environment a deployed bridge would have, pointed at the simulators."""
    return {
        "PORT": str(urlsplit(bridge_url).port),
        "DATABASE_PATH": str(data_dir / "bridge.db"),
        "SLACK_SIGNING_SECRET": signing_secret,
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_API_URL": f"{slack_url}/api/",
        "PUBLIC_URL": bridge_url,
        "X_CLIENT_ID": X_CLIENT_ID,
        "X_CLIENT_SECRET": x_client_secret,
        "X_API_URL": x_url,
        "X_AUTHORIZE_URL": f"{x_url}/i/oauth2/authorize",
        "BRIDGE_ENCRYPTION_KEY": generate_key(),
        "X_TIMEOUT_SECONDS": "5",
        "LOG_FORMAT": "text",
        # X → Slack as deployed: push (real time for 1-to-1) and polling (groups), quick when idle.
        "X_CONSUMER_SECRET": x_consumer_secret,
        "X_BEARER_TOKEN": x_bearer_token,
        "INBOUND_POLL_SECONDS": "2",
    }


@asynccontextmanager
async def running_sandbox(
    *, port: int = 0, delivery_config: DeliveryConfig | None = None
) -> AsyncIterator[Sandbox]:
    """Start fake X, fake Slack, the real bridge and the page; stop them all (and delete the data) after."""
    async with AsyncExitStack() as stack:
        page_socket = stack.enter_context(_loopback_socket(port))  # first: a busy port stops us early
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="xdm-sandbox-")))
        signing_secret, x_client_secret = secrets.token_hex(16), secrets.token_urlsafe(24)
        x, x_url = await stack.enter_async_context(
            run_fake_x(client_id=X_CLIENT_ID, client_secret=x_client_secret)
        )
        for user_id, username, name in X_PEOPLE:
            x.add_user(user_id, username, name)
        for user_id in X_CHAT_PEOPLE:  # keys made on their phones and registered with X
            x.chat.enroll(user_id)
        x.authorizing_user_id = YOUR_X_ID
        x.consent_page = True  # the person approves in their browser, as on X
        # X's read budget is 15 per 15 minutes; the simulation's window is 10 s so that group
        # replies (which X does not push) show within seconds, paced by the same budget logic.
        x.window_read_seconds = 10.0
        x.enforce_read_limit = True
        slack, slack_url = await stack.enter_async_context(
            run_fake_slack(team_id=TEAM_ID, bot_token=BOT_TOKEN, team_name=TEAM_NAME, team_domain="sandbox")
        )
        for user_id, name in SLACK_PEOPLE:
            slack.add_user(user_id, display_name=name, real_name=name)
        slack.add_channel(CHANNEL_ID, CHANNEL_NAME)

        bridge_socket = stack.enter_context(_loopback_socket())
        bridge_url = f"http://{HOST}:{bridge_socket.getsockname()[1]}"
        env = bridge_env(
            data_dir,
            x_url=x_url,
            slack_url=slack_url,
            bridge_url=bridge_url,
            signing_secret=signing_secret,
            x_client_secret=x_client_secret,
            x_consumer_secret=x.consumer_secret,
            x_bearer_token=x.app_bearer_token,
        )
        settings = Settings.from_env(env)
        bridge = web.AppRunner(create_app(settings, delivery_config=delivery_config), access_log=None)
        await bridge.setup()
        stack.push_async_callback(bridge.cleanup)
        await web.SockSite(bridge, bridge_socket).start()

        session = await stack.enter_async_context(aiohttp.ClientSession())
        # Trigger ids the fake Slack issues and views.open accepts: `/xdm` alone opens the form.
        sender = SlackSender(
            session,
            f"{bridge_url}/slack/events",
            signing_secret,
            team_id=TEAM_ID,
            triggers=slack.views.issue_trigger_id,
        )
        sandbox = Sandbox(
            x, x_url, slack, slack_url, bridge_url, data_dir, session, sender, settings=settings
        )
        stack.push_async_callback(sandbox.close)

        page = web.AppRunner(page_app(sandbox), access_log=None, shutdown_timeout=1.0)
        await page.setup()
        stack.push_async_callback(page.cleanup)
        await web.SockSite(page, page_socket).start()
        sandbox.url = f"http://{HOST}:{page_socket.getsockname()[1]}/"
        yield sandbox
        if x.violations:
            log.warning("requests outside X's OpenAPI spec", extra={"violations": x.violations})


# ------------------------------------------------------------------------------ the CLI


def run(args: argparse.Namespace) -> int:
    """Run until Ctrl-C (or SIGTERM); everything stops cleanly and the temporary data is deleted."""
    setup_logging(args.log_level.upper(), "text")
    try:
        return asyncio.run(_serve(args))
    except SandboxError as exc:
        print(f"xdm-bridge sandbox: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:  # Ctrl-C while starting up; everything started was stopped
        return EXIT_INTERRUPTED


async def _serve(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # not on Windows' default loop
            loop.add_signal_handler(signum, stop.set)
    async with running_sandbox(port=args.port) as sandbox:
        print(_banner(sandbox), flush=True)
        should_open = sys.stdout.isatty() if args.open is None else args.open
        if should_open:
            await asyncio.to_thread(webbrowser.open, sandbox.url)
        await stop.wait()
        print("\nStopping the sandbox…", flush=True)
    print(f"Stopped. {sandbox.data_dir} was deleted.", flush=True)
    return EXIT_OK


def _banner(sandbox: Sandbox) -> str:
    rule = "─" * 72
    return "\n".join(
        [
            rule,
            f"  xdm-bridge sandbox · {LABEL}",
            "",
            f"  Open  {sandbox.url}",
            "",
            f"  real bridge      {sandbox.bridge_url}  (signed Slack requests go to /slack/events)",
            f"  simulated X      {sandbox.x_url}",
            f"  simulated Slack  {sandbox.slack_url}",
            f"  data             {sandbox.data_dir}  (deleted when you stop)",
            "",
            "  Press Ctrl-C to stop.",
            rule,
        ]
    )


__all__ = [
    "LABEL",
    "Sandbox",
    "SandboxError",
    "page_app",
    "run",
    "running_sandbox",
    "text_parts",
]
