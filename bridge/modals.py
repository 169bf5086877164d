"""The bridge modal: `/xdm` with no text (or a Home's "Bridge a channel") picks people or a
conversation instead of typing ids.

The modal is opened at once with the request's trigger id (Slack lets it be used for 3 s);
what takes longer (the connected account's conversations, one X read within its read budget)
is filled in afterwards with ``views.update``. People are found by X handle as they type (an
external select: Slack asks for options, the bridge looks the handle up at X and says whether
that person accepts DMs). A submission becomes the text of a typed command (`dm`, `new-group`,
`link`) and runs through ``CommandService.handle``: one code path, one set of rules. A refusal
is shown in the modal (``response_action: errors``); the outcome of X's part, in the modal
(``views.update``) and in the channel as the typed command says it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bridge.budget import Budget
from bridge.commands import MAX_GROUP, CommandContext, CommandService, Reply
from bridge.errors import XAuthRevoked, XError, XRateLimited
from bridge.model import X_USERNAME, Account, EventPage, XUser
from bridge.ports import AccountStore, Clock, XClient
from bridge.tokens import TokenManager

log = logging.getLogger("bridge.modals")

BRIDGE_MODAL = "xdm_bridge_modal"  # the view's callback_id
PEOPLE_BLOCK, PEOPLE_ACTION = "xdm_people", "xdm_people_pick"
CONVERSATION_BLOCK, CONVERSATION_ACTION = "xdm_conversation", "xdm_conversation_pick"
CHANNEL_BLOCK, CHANNEL_ACTION = "xdm_channel", "xdm_channel_pick"
MESSAGE_BLOCK, MESSAGE_ACTION = "xdm_message", "xdm_message_text"
LOOKUP_TIMEOUT = 2.0  # seconds: Slack waits 3 s for options
LOOKUP_TTL = 600.0  # a handle's answer is reused this long (every keystroke asks)
INBOX_READ = 20  # events read to list the account's conversations (one read; X bills each event)
KEEP_READS = 2  # reads left for the poller: the list is not worth starving it
INBOX_TTL = 300.0  # an account's list is reused this long: opening the form again costs no read
MAX_OPTIONS = 100  # Slack's limit for a static select


class ModalStore(AccountStore, Protocol):
    """The modal's one role: whose X account a Slack user connected."""


@dataclass(frozen=True)
class Origin:
    """Where the modal was opened: a channel's `/xdm` (with its response_url), or a Home."""

    channel_id: str = ""
    response_url: str | None = None
    channel_name: str = ""

    def metadata(self) -> str:
        return json.dumps({"c": self.channel_id, "r": self.response_url or "", "n": self.channel_name})

    @classmethod
    def parse(cls, metadata: str) -> Origin:
        try:
            data = json.loads(metadata) if metadata else {}
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        return cls(str(data.get("c") or ""), str(data.get("r") or "") or None, str(data.get("n") or ""))


@dataclass(frozen=True)
class Conversation:
    """One of the account's conversations, named by its people (its id stays inside)."""

    conversation_id: str
    label: str


class ModalViews(Protocol):
    """The Slack call that changes an open modal (``views.update``)."""

    async def update_view(self, team_id: str, view_id: str, view: dict[str, Any], view_hash: str) -> None: ...


# -- views (pure) ---------------------------------------------------------------------


def _plain(text: str) -> dict[str, Any]:
    return {"type": "plain_text", "text": text}


def _shell(origin: Origin, blocks: list[dict[str, Any]], *, submit: str | None) -> dict[str, Any]:
    view: dict[str, Any] = {
        "type": "modal",
        "callback_id": BRIDGE_MODAL,
        "title": _plain("Bridge to X"),
        "close": _plain("Close" if submit is None else "Cancel"),
        "private_metadata": origin.metadata(),
        "blocks": blocks,
    }
    if submit is not None:
        view["submit"] = _plain(submit)
    return view


def conversation_block(conversations: Sequence[Conversation] | None, why_none: str = "") -> dict[str, Any]:
    """The "existing conversation" choice: loading, the list, or why there is none."""
    if conversations is None:
        return {
            "type": "context",
            "block_id": CONVERSATION_BLOCK,
            "elements": [{"type": "mrkdwn", "text": "_Loading your X conversations…_"}],
        }
    if not conversations:
        text = why_none or "No recent X conversations found; pick people above."
        return {
            "type": "context",
            "block_id": CONVERSATION_BLOCK,
            "elements": [{"type": "mrkdwn", "text": text}],
        }
    options = [
        {"text": _plain(c.label[:75]), "value": c.conversation_id} for c in conversations[:MAX_OPTIONS]
    ]
    return {
        "type": "input",
        "block_id": CONVERSATION_BLOCK,
        "optional": True,
        "label": _plain("…or an existing conversation"),
        "element": {
            "type": "static_select",
            "action_id": CONVERSATION_ACTION,
            "placeholder": _plain("Your recent X conversations"),
            "options": options,
        },
    }


def bridge_modal(
    origin: Origin, conversations: Sequence[Conversation] | None = None, why_none: str = ""
) -> dict[str, Any]:
    """The modal: the channel (from a Home), people by handle, or a conversation, and a message."""
    blocks: list[dict[str, Any]] = []
    where = f"#{origin.channel_name}" if origin.channel_name else "this channel"
    if not origin.channel_id:
        where = "a channel"
        blocks.append(
            {
                "type": "input",
                "block_id": CHANNEL_BLOCK,
                "label": _plain("Channel"),
                "element": {
                    "type": "conversations_select",
                    "action_id": CHANNEL_ACTION,
                    "filter": {"include": ["public", "private"], "exclude_bot_users": True},
                    # Slack then gives the submission a response_url for that channel.
                    "response_url_enabled": True,
                },
            }
        )
    blocks.append(
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": f"Bridge {where} to X DMs: pick people on X (one for a 1-to-1, two or more "
                "for a new group), or an existing conversation of your X account.",
            },
        }
    )
    blocks.append(
        {
            "type": "input",
            "block_id": PEOPLE_BLOCK,
            "optional": True,
            "label": _plain("People on X"),
            "hint": _plain("Type an X handle; the list says who accepts your DMs, when X tells."),
            "element": {
                "type": "multi_external_select",
                "action_id": PEOPLE_ACTION,
                "placeholder": _plain("@handle"),
                "min_query_length": 1,
                "max_selected_items": MAX_GROUP,
            },
        }
    )
    blocks.append(conversation_block(conversations, why_none))
    blocks.append(
        {
            "type": "input",
            "block_id": MESSAGE_BLOCK,
            "optional": True,
            "label": _plain("Opening message (sent to the people you pick)"),
            "element": {"type": "plain_text_input", "action_id": MESSAGE_ACTION, "multiline": True},
        }
    )
    return _shell(origin, blocks, submit="Bridge")


def outcome_modal(origin: Origin, text: str) -> dict[str, Any]:
    """The modal once submitted: what the bridge did, or is doing."""
    return _shell(origin, [{"type": "section", "text": {"type": "mrkdwn", "text": text}}], submit=None)


def text_modal(title_text: str, text: str) -> dict[str, Any]:
    """A modal that only says something (the connect link from a Home, say)."""
    return {
        "type": "modal",
        "title": _plain(title_text[:24]),
        "close": _plain("Close"),
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
    }


def _selected(values: dict[str, Any], block: str, action: str) -> dict[str, Any]:
    state = values.get(block, {})
    found = state.get(action) if isinstance(state, dict) else None
    return found if isinstance(found, dict) else {}


def slack_escaped(text: str) -> str:
    """``text`` as Slack gives a typed command's text: ``&``, ``<`` and ``>`` escaped.

    A text input's value comes raw, and the opening message is shown in the channel by the bot:
    raw, ``<!channel>`` or ``<!subteam^…>`` would be the bot's own broadcast (a workspace may keep
    its members from them, not bots) and ``<https://a|b>`` a link disguised as another. Escaped,
    it is the text the typed command would carry: shown as typed, and sent to X as typed."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def submission(values: dict[str, Any]) -> tuple[str, str | None, dict[str, str]]:
    """A submission's values as a typed command's text, the channel picked (if any), and errors.

    ``errors`` (block_id → message) is empty when the text can run.
    """
    people = [
        str(o.get("value", ""))
        for o in _selected(values, PEOPLE_BLOCK, PEOPLE_ACTION).get("selected_options") or []
        if isinstance(o, dict)
    ]
    picked = _selected(values, CONVERSATION_BLOCK, CONVERSATION_ACTION).get("selected_option")
    conversation = str(picked.get("value", "")) if isinstance(picked, dict) else ""
    message = slack_escaped(str(_selected(values, MESSAGE_BLOCK, MESSAGE_ACTION).get("value") or "").strip())
    channel = _selected(values, CHANNEL_BLOCK, CHANNEL_ACTION).get("selected_conversation")
    channel_id = str(channel) if isinstance(channel, str) and channel else None
    bad = [p for p in people if not X_USERNAME.match(p)]
    if bad:
        return "", channel_id, {PEOPLE_BLOCK: f"`{bad[0]}` is not an X handle."}
    if people and conversation:
        return "", channel_id, {CONVERSATION_BLOCK: "Pick people or a conversation, not both."}
    if not people and not conversation:
        return "", channel_id, {PEOPLE_BLOCK: "Pick people on X, or an existing conversation below."}
    if conversation:
        if message:
            return "", channel_id, {MESSAGE_BLOCK: "An opening message goes only to people you pick."}
        return f"link {conversation}", channel_id, {}
    handles = " ".join(f"@{p}" for p in dict.fromkeys(people))
    # "--" ends the people: a message that starts with "@" stays the message.
    tail = f" -- {message}" if message else ""
    if len(set(people)) == 1:
        return f"dm {handles}{tail}", channel_id, {}
    return f"new-group {handles}{tail}", channel_id, {}


def person_option(user: XUser) -> dict[str, Any]:
    """A found X user as an option: handle, name, and whether X says they accept your DMs."""
    accepts = {True: " · accepts your DMs", False: " · may not accept your DMs", None: ""}[
        user.receives_your_dm
    ]
    name = f" ({user.name})" if user.name else ""
    return {"text": _plain(f"@{user.username}{name}{accepts}"[:75]), "value": user.username}


def conversations_of(page: EventPage, me: str) -> list[Conversation]:
    """The conversations one inbox page shows, newest first, each named by its people."""
    people: dict[str, list[str]] = {}
    for event in page.events:
        cid = event.conversation_id
        if not cid:
            continue
        found = people.setdefault(cid, [])
        others = [p for p in cid.split("-") if p != me] if "-" in cid else []
        for person in (*others, event.sender_id or "", *event.participant_ids):
            if person and person != me and person not in found:
                found.append(person)
    named = []
    for cid, ids in people.items():
        handles = [f"@{page.users[i].username}" if i in page.users else "someone" for i in ids] or ["someone"]
        kind = "DM with" if "-" in cid else "Group with"
        named.append(Conversation(cid, f"{kind} {', '.join(dict.fromkeys(handles))}"))
    return named


# -- the service ------------------------------------------------------------------------


class ModalService:
    """Options for the people picker, the conversation list, and submissions."""

    def __init__(
        self,
        *,
        commands: CommandService,
        store: ModalStore,
        x: XClient,
        tokens: TokenManager,
        budget: Budget,
        clock: Clock,
        views: ModalViews,
        spawn: Callable[[Awaitable[None], str], None],
    ) -> None:
        self._commands = commands
        self._store = store
        self._x = x
        self._tokens = tokens
        self._budget = budget
        self._clock = clock
        self._views = views
        self._spawn = spawn
        self._lookups: dict[tuple[int, str], tuple[XUser | None, float]] = {}
        self._inboxes: dict[int, tuple[list[Conversation], float]] = {}

    async def people_options(self, team_id: str, user_id: str, typed: str) -> list[dict[str, Any]]:
        """Options for what was typed: the X user with that handle, if there is one."""
        handle = typed.strip().lstrip("@")
        account = await self._store.account_for_user(team_id, user_id)
        if not handle or not X_USERNAME.match(handle) or account is None or account.needs_reconnect:
            return []
        key = (account.id, handle.lower())
        cached = self._lookups.get(key)
        if cached is not None and time.monotonic() - cached[1] < LOOKUP_TTL:
            return [person_option(cached[0])] if cached[0] else []
        try:
            found = await asyncio.wait_for(self._lookup(account, handle), LOOKUP_TIMEOUT)
        except (TimeoutError, XError, XAuthRevoked) as exc:
            log.info("handle lookup gave no answer", extra={"error": type(exc).__name__})
            return []
        self._lookups[key] = (found, time.monotonic())
        return [person_option(found)] if found else []

    async def _lookup(self, account: Account, handle: str) -> XUser | None:
        return await self._tokens.call(account, lambda token: self._x.user_by_username(token, handle))

    def fill_conversations(
        self, team_id: str, user_id: str, view_id: str, view_hash: str, origin: Origin
    ) -> None:
        """Read the account's conversations (one X read) and put them in the open modal."""
        self._spawn(self._fill(team_id, user_id, view_id, view_hash, origin), "xdm-modal-conversations")

    async def _fill(self, team_id: str, user_id: str, view_id: str, view_hash: str, origin: Origin) -> None:
        conversations, why = await self.conversations(team_id, user_id)
        try:
            await self._views.update_view(
                team_id, view_id, bridge_modal(origin, conversations, why), view_hash
            )
        except Exception as exc:  # submitted or closed meanwhile (hash_conflict, not_found)
            log.info("modal not updated with conversations", extra={"error": type(exc).__name__})

    async def conversations(self, team_id: str, user_id: str) -> tuple[list[Conversation], str]:
        """The connected account's recent conversations, or none and why."""
        account = await self._store.account_for_user(team_id, user_id)
        if account is None or account.disconnected:
            return [], "Connect your X account first (`/xdm connect`) to see its conversations."
        if account.needs_reconnect:
            return [], "Your X account needs reconnecting (`/xdm connect`)."

        cached = self._inboxes.get(account.id)
        if cached is not None and time.monotonic() - cached[1] < INBOX_TTL:
            return cached[0], ""

        async def read(token: str) -> Any:
            return await self._x.dm_events(token, max_results=INBOX_READ)

        try:
            await self._budget.adopt_stored_reads(account.id, self._clock.now())
            page = await self._budget.read(
                account.id, self._clock.now, lambda: self._tokens.call(account, read), keep=KEEP_READS
            )
        except XRateLimited:
            return [], "Your X read budget is spent for now; pick people above instead."
        except (XError, XAuthRevoked) as exc:
            log.info("conversations not read", extra={"error": type(exc).__name__})
            return [], "X did not list your conversations just now; pick people above instead."
        found = conversations_of(page, account.x_user_id)
        self._inboxes[account.id] = (found, time.monotonic())
        return found, ""

    async def submit(
        self,
        team_id: str,
        user_id: str,
        view: dict[str, Any],
        values: dict[str, Any],
        *,
        response_url: str | None = None,
        user_name: str = "",
    ) -> dict[str, Any]:
        """Run a submission; returns the answer to Slack (errors, or the modal updated).

        ``response_url`` is the one Slack gave for the channel picked in the modal (a Home's)."""
        origin = Origin.parse(str(view.get("private_metadata") or ""))
        text, picked, errors = submission(values)
        channel_id = origin.channel_id or picked or ""
        if errors:
            return {"response_action": "errors", "errors": errors}
        if not channel_id:
            return {"response_action": "errors", "errors": {CHANNEL_BLOCK: "Pick the channel to bridge."}}
        view_id = str(view.get("id") or "")

        async def show(reply: Reply) -> None:
            try:
                await self._views.update_view(team_id, view_id, outcome_modal(origin, reply.text), "")
            except Exception as exc:
                log.info("modal not updated with the outcome", extra={"error": type(exc).__name__})

        ctx = CommandContext(
            team_id=team_id,
            channel_id=channel_id,
            user_id=user_id,
            response_url=origin.response_url or response_url,
            channel_name=origin.channel_name,
            user_name=user_name,
            report_to=show,
        )
        reply = await self._commands.handle(ctx, text)
        if reply.text.startswith(":x:"):
            block = CONVERSATION_BLOCK if text.startswith("link") else PEOPLE_BLOCK
            return {"response_action": "errors", "errors": {block: reply.text.removeprefix(":x: ")[:1900]}}
        if reply.follow_up is not None:
            self._spawn(reply.follow_up(), f"xdm-modal-{channel_id}")
        return {"response_action": "update", "view": outcome_modal(origin, reply.text)}
