"""Domain values. Plain frozen dataclasses: no I/O, no library types."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from bridge.errors import RateFacts

# X ids are strings of digits; a conversation id is "a-b" (1-to-1) or 15-19 digits (group).
X_USER_ID = re.compile(r"^[0-9]{1,19}$")
X_CONVERSATION_ID = re.compile(r"^([0-9]{1,19}-[0-9]{1,19}|[0-9]{15,19})$")
X_USERNAME = re.compile(r"^[A-Za-z0-9_]{1,15}$")


def one_to_one_id(a: str, b: str) -> str:
    """X's id of the 1-to-1 conversation between two users: the smaller id first."""
    low, high = sorted((int(a), int(b)))
    return f"{low}-{high}"


class MappingKind(StrEnum):
    """How a channel's messages reach X; decides the endpoint used for each message."""

    GROUP = "group"  # created by /xdm new-group; POST /2/dm_conversations/{id}/messages
    DM = "dm"  # /xdm dm; POST /2/dm_conversations/with/{participant_id}/messages
    LINK = "link"  # /xdm link; POST /2/dm_conversations/{id}/messages


class OutboxState(StrEnum):
    """Life of one outbox row (one part of one Slack message)."""

    QUEUED = "queued"  # ready once next_attempt_at has passed
    SENDING = "sending"  # a POST may be in flight; reconcile before any resend
    WAITING = "waiting"  # held for budget, or for the account to be reconnected
    SENT = "sent"
    FAILED = "failed"
    CANCELLED = "cancelled"  # deleted in Slack before it was sent
    HELD = "held"  # written for an X account no longer connected; waits for it (not pending)

    @property
    def pending(self) -> bool:
        """Not finished: the row still has to reach X (or be given up on)."""
        return self in (OutboxState.QUEUED, OutboxState.SENDING, OutboxState.WAITING)


class OutboxKind(StrEnum):
    """What a row asks of X."""

    MESSAGE = "message"  # a new message (or one part of it)
    EDIT = "edit"  # a correction after a Slack edit
    DELETE = "delete"  # delete the DMs relayed for ``ref_ts``


@dataclass(frozen=True)
class TokenSet:
    """An OAuth 2.0 token response, with ``expires_at`` in epoch seconds."""

    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    expires_at: float | None
    scope: str = ""


@dataclass(frozen=True)
class Account:
    """A Slack user's connected X account. Tokens are plaintext here; the store encrypts them."""

    id: int
    team_id: str
    slack_user_id: str
    x_user_id: str
    x_username: str
    tokens: TokenSet
    needs_reconnect: bool = False
    disconnected: bool = False  # by its owner or an operator: no tokens are stored


@dataclass(frozen=True)
class OAuthState:
    """An authorization in progress, bound to the Slack user who started it."""

    state: str
    code_verifier: str = field(repr=False)
    team_id: str
    slack_user_id: str
    channel_id: str
    response_url: str | None
    expires_at: float
    slack_user_name: str = ""  # what the bridge's connect page shows (from the slash command)
    team_name: str = ""


@dataclass(frozen=True)
class PendingConnection:
    """An X authorization finished in a browser, waiting for the Slack user who asked to confirm.

    Whoever opened the connect link chose the X account; only the Slack user who ran
    `/xdm connect` may bind it to themselves, by a click in Slack. Until then (or until
    ``expires_at``) the tokens are kept, encrypted, and used for nothing.
    """

    id: str  # random; the Slack buttons carry it
    team_id: str
    slack_user_id: str
    channel_id: str  # where `/xdm connect` was typed ("" for none)
    response_url: str | None  # the command's, for the outcome
    x_user: XUser
    tokens: TokenSet = field(repr=False)
    expires_at: float


@dataclass(frozen=True)
class Button:
    """A button in a Slack message: ``action_id`` routes the click, ``value`` travels with it."""

    action_id: str
    text: str
    value: str
    style: str | None = None  # "primary" | "danger"


@dataclass(frozen=True)
class Target:
    """Where one DM goes: by participant (1-to-1), by conversation id, or a group to create.

    ``new_group`` (the other participants' X ids) is the target of a ``/xdm new-group``
    channel's messages until X has created the group: the first of them creates it.
    """

    participant_id: str | None = None
    conversation_id: str | None = None
    new_group: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        named = [v for v in (self.participant_id, self.conversation_id, self.new_group) if v is not None]
        if len(named) != 1:
            raise ValueError("a Target names exactly one of participant_id / conversation_id / new_group")

    def describe(self) -> str:
        if self.participant_id is not None:
            return f"1-to-1 with X user {self.participant_id}"
        if self.new_group is not None:
            return f"a new group with X users {', '.join(self.new_group)}"
        return f"conversation {self.conversation_id}"


@dataclass(frozen=True)
class ChannelMapping:
    """A Slack channel bound to one X DM conversation, sent as ``account_id``."""

    team_id: str
    channel_id: str
    kind: MappingKind
    account_id: int
    conversation_id: str | None
    participant_id: str | None
    created_by: str
    created_at: float
    paused_at: float | None = None  # its account was disconnected; messages wait for a reconnection
    paused_by: str | None = None
    participant_username: str | None = None  # a 1-to-1's other person, when known (for people to read)
    group_participants: tuple[str, ...] = ()  # a /xdm new-group's others, kept until X creates it
    # Paused because its owner connected another X account: the X user id (and handle) whose
    # conversation this is; it resumes only when that account is connected again.
    held_for: str | None = None
    held_for_username: str | None = None
    # An encrypted X Chat conversation (issue 19): sent and read through /2/chat/* with the
    # account's X Chat identity, never through the legacy DM endpoints.
    encrypted: bool = False

    @property
    def target(self) -> Target:
        if self.kind is MappingKind.DM:
            assert self.participant_id is not None
            return Target(participant_id=self.participant_id)
        if self.conversation_id is None and self.kind is MappingKind.GROUP:
            return Target(new_group=self.group_participants)
        assert self.conversation_id is not None
        return Target(conversation_id=self.conversation_id)


@dataclass(frozen=True)
class IncomingMessage:
    """A Slack message event, reduced to what relaying needs."""

    team_id: str
    channel_id: str
    ts: str
    user_id: str | None
    text: str
    event_id: str | None = None
    subtype: str | None = None
    bot_id: str | None = None
    thread_ts: str | None = None
    blocks: tuple[dict[str, Any], ...] = ()
    files: tuple[dict[str, Any], ...] = ()
    # The author's own workspace when Slack names it (``user_team``): in a channel shared with
    # another organisation (Slack Connect) it is not ``team_id``, the workspace the bridge serves.
    author_team_id: str | None = None

    @property
    def is_from_bot(self) -> bool:
        return self.bot_id is not None or self.subtype == "bot_message" or self.user_id is None

    @property
    def from_other_workspace(self) -> bool:
        """Written by a member of another workspace (a Slack Connect shared channel)."""
        return self.author_team_id is not None and self.author_team_id != self.team_id


@dataclass(frozen=True)
class MessageChange:
    """A Slack ``message_changed`` event: ``ts`` is the edited message, ``event_ts`` the edit."""

    team_id: str
    channel_id: str
    ts: str
    event_ts: str
    text: str
    previous_text: str
    user_id: str | None = None
    bot_id: str | None = None
    blocks: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class OutboxItem:
    """One DM to send: one part of one accepted Slack message."""

    id: int
    seq: int  # the accepting row's id; orders messages within a channel
    part: int
    parts_total: int
    team_id: str
    channel_id: str
    slack_ts: str
    author_id: str
    account_id: int
    target: Target
    text: str | None  # None until rendered from ``source``
    source: dict[str, Any]
    state: OutboxState
    attempts: int
    next_attempt_at: float
    last_error: str | None
    dm_event_id: str | None
    created_at: float
    sending_since: float | None
    held_since: float | None
    hourglass: bool
    kind: OutboxKind = OutboxKind.MESSAGE
    ref_ts: str = ""  # the Slack message this row is about (reactions go there)
    media: dict[str, Any] | None = None  # a Slack file to attach
    media_id: str | None = None  # X's id for it, once uploaded
    media_uploaded_at: float | None = None  # when ``media_id`` was obtained (X keeps it 24 h)
    media_unfinished: int = 0  # uploads begun and never finished: crashes, if it grows
    deleted: bool = False  # deleted in Slack while ``sending``: it may be read back, never sent again
    # Of an encrypted X Chat conversation: sent only through X Chat with the account's keys, never
    # in the clear (issue 19). ``chat`` is the message as encrypted and signed before its first
    # attempt (``message_id`` and ``body``): every retry posts these same bytes.
    encrypted: bool = False
    chat: dict[str, Any] | None = None


@dataclass(frozen=True)
class Unreadable:
    """An outbox row whose stored columns do not make an ``OutboxItem`` (a bug wrote it, or an
    old version did): it is failed with ``reason`` and its author told, never sent, and it holds
    up no one. Only the columns needed to say so are kept (each may be empty)."""

    id: int
    team_id: str
    channel_id: str
    slack_ts: str
    ref_ts: str
    author_id: str
    account_id: int | None
    reason: str
    hourglass: bool = False
    part: int = 0


@dataclass(frozen=True)
class Accepted:
    """What the store did with a message from a mapped channel."""

    new: bool  # False: Slack's retry, or a message already accepted
    head: OutboxItem | None = None  # the new row, when it is next to send in its channel


@dataclass(frozen=True)
class RenderedPart:
    """One DM of a rendered message: text, and at most one file (X takes one per DM)."""

    text: str
    media: dict[str, Any] | None = None


@dataclass(frozen=True)
class XUser:
    """The little we need of an X user."""

    id: str
    username: str
    name: str = ""
    receives_your_dm: bool | None = None
    profile_image_url: str = ""


@dataclass(frozen=True)
class SlackMember:
    """What permissions need to know of a Slack user (``users.info``)."""

    user_id: str
    is_admin: bool = False
    is_owner: bool = False

    @property
    def is_admin_or_owner(self) -> bool:
        return self.is_admin or self.is_owner


@dataclass(frozen=True)
class Sent:
    """X accepted a DM. ``dm_event_id`` is None when X took it (a 2xx) without saying which event
    it made and no read-back found it; ``dm_conversation_id`` too, for a group X never named."""

    dm_conversation_id: str | None
    dm_event_id: str | None


class EventKind(StrEnum):
    """What an X event is: X's ``event_type`` of a DM event, or an X Chat follow-up. Stored as
    the inbound row's ``event_type`` (the same text)."""

    MESSAGE_CREATE = "MessageCreate"
    PARTICIPANTS_JOIN = "ParticipantsJoin"
    PARTICIPANTS_LEAVE = "ParticipantsLeave"
    CHAT_EDIT = "ChatEdit"  # an X Chat edit: updates the Slack message of the payload's ``edit_of``
    CHAT_DELETE = "ChatDelete"  # an X Chat delete: deletes the Slack message of ``delete_of``

    @property
    def membership(self) -> bool:
        """Someone joined or left a group (posted as a line, not as a message)."""
        return self in (EventKind.PARTICIPANTS_JOIN, EventKind.PARTICIPANTS_LEAVE)

    @property
    def follow_up(self) -> bool:
        """It changes a message posted before (an X Chat edit or delete), rather than posting one."""
        return self in (EventKind.CHAT_EDIT, EventKind.CHAT_DELETE)


# The kinds of X's legacy DM events (``GET /2/dm_events``'s ``event_types``).
DM_EVENT_KINDS = (EventKind.MESSAGE_CREATE, EventKind.PARTICIPANTS_JOIN, EventKind.PARTICIPANTS_LEAVE)


class InboundOrigin(StrEnum):
    """How an X event came to the bridge (the inbound row's ``origin``; a metric label)."""

    POLL = "poll"  # a read of the account's DMs
    PUSH = "push"  # announced by X's push, then read
    BACKFILL = "backfill"  # a newly bridged conversation's history
    SENT = "sent"  # older versions only: a DM the bridge itself sent


class PushEventType(StrEnum):
    """The X Activity events the bridge subscribes each account to (a push's ``event_type``)."""

    DM_RECEIVED = "dm.received"
    DM_SENT = "dm.sent"
    CHAT_RECEIVED = "chat.received"  # X Chat: only for accounts whose X Chat keys the bridge holds


# The pushes that announce legacy DMs (``direct_message_events``).
DM_PUSH_TYPES = (PushEventType.DM_RECEIVED, PushEventType.DM_SENT)


@dataclass(frozen=True)
class DmEvent:
    """One X DM event, however it was read: a REST page (``GET /2/dm_events`` and the
    per-conversation reads) or a push delivery. Each wire shape has one parser into it
    (``adapters.x.api.event_page_of``, ``adapters.x.push.parse_delivery``).

    ``text`` is as X stores it (every link a ``t.co`` address); ``links`` are the (t.co
    address, expanded URL) pairs X reported, and ``written`` the text as the sender wrote it.
    ``media`` holds what X said of each attachment (at least ``media_key``; ``type`` and
    ``url`` when X expanded them). A push names no conversation and carries only ids: its
    event has ``sender_id`` and ``recipient_id`` (a group's message reads as a 1-to-1 to its
    one recipient, or names none), and a read of X says where it belongs (``peer``).
    """

    id: str
    kind: EventKind = EventKind.MESSAGE_CREATE
    conversation_id: str | None = None
    sender_id: str | None = None
    text: str = ""
    created_at: float | None = None  # X's clock
    links: tuple[tuple[str, str], ...] = ()
    media: tuple[dict[str, Any], ...] = ()
    participant_ids: tuple[str, ...] = ()  # who joined or left (ParticipantsJoin/Leave)
    recipient_id: str | None = None  # a push's: the one recipient X named, if any

    @property
    def media_keys(self) -> tuple[str, ...]:
        """X's media keys of the attachments (``"<type>_<media id>"``)."""
        return tuple(str(m["media_key"]) for m in self.media if m.get("media_key"))

    @property
    def written(self) -> str:
        """The text as the sender wrote it: each ``t.co`` address X expanded put back, and a
        link X added to the DM's own attachment page taken out (the attachment is a file)."""
        text = self.text
        for short, full in self.links:
            text = text.replace(short, "" if _MEDIA_PAGE.match(full) else full, 1)
        return text

    def peer(self, user_id: str) -> str | None:
        """The other side of the 1-to-1 this (pushed) event would be, as seen by the account
        ``user_id``: the one conversation worth reading first. None when it names no other."""
        other = self.recipient_id if self.sender_id == user_id else self.sender_id
        return other if other and other != user_id else None


# Where X's older DM format pointed the t.co link it appended to a DM with media.
_MEDIA_PAGE = re.compile(r"https?://(?:www\.|mobile\.)?(?:twitter|x)\.com/messages/media/", re.IGNORECASE)


@dataclass(frozen=True)
class EventPage:
    """One page of DM events, newest first, the users they name, and what X said about reading it."""

    events: tuple[DmEvent, ...]
    next_token: str | None  # ask for the next (older) page with this
    users: dict[str, XUser] = field(default_factory=dict)  # expanded: each sender and participant
    server_time: float | None = None  # X's clock when it answered (its Date header), if plausible
    facts: RateFacts = field(default_factory=RateFacts)  # the read window's budget


class InboundState(StrEnum):
    """Life of one inbound row (one X event on its way into Slack)."""

    QUEUED = "queued"  # to post once next_attempt_at has passed
    POSTING = "posting"  # chat.postMessage may be in flight: look in Slack's history first
    POSTED = "posted"
    SKIPPED = "skipped"  # our own send, an echo, or no channel bridges its conversation
    FAILED = "failed"  # Slack refused it for what it is, and the line in its place too: for good


@dataclass(frozen=True)
class InboundEvent:
    """What the store queues of an X event (a DM event, or a verified X Chat event) for each
    channel bridging its conversation: its routing, and ``payload``, what posting it needs."""

    dm_event_id: str
    kind: EventKind
    conversation_id: str | None
    sender_id: str | None
    payload: dict[str, Any]
    origin: InboundOrigin = InboundOrigin.POLL


@dataclass(frozen=True)
class ReadGap:
    """A read of an account's DMs that one poll could not finish (X had more new events than
    it reads at once): the next polls go on from ``token`` back to the cursor, which moves to
    ``newest`` only then. Posting to the account's channels waits meanwhile (X's order)."""

    token: str | None  # X's pagination token where the last poll stopped; None: start again
    newest: str  # the newest event this read saw: the cursor once the gap is closed
    oldest: str | None  # the oldest event read so far
    restarts: int = 0  # how often X refused the token and the read started again from the newest
    opened_at: float = 0.0


@dataclass(frozen=True)
class InboundItem:
    """One inbound row: an X event to post into a Slack channel."""

    id: int
    dm_event_id: str
    seq: int
    account_id: int
    conversation_id: str
    team_id: str
    channel_id: str
    kind: EventKind
    sender_id: str | None
    payload: dict[str, Any]
    origin: InboundOrigin
    state: InboundState
    attempts: int
    next_attempt_at: float
    posting_since: float | None
    slack_ts: str | None
    created_at: float


@dataclass(frozen=True)
class AuthorizationRequest:
    """A fresh authorize URL with the secrets that must be kept to finish it."""

    url: str
    state: str
    code_verifier: str = field(repr=False)


@dataclass(frozen=True)
class HistoryState:
    """How far a newly bridged conversation's history is: still to be read from X (``to_read``:
    the read waits for X's read budget), and of what was read, how many messages are posted in
    the channel and how many wait to be."""

    to_read: bool
    posted: int
    waiting: int


def _user_json(user: XUser | None, user_id: str | None) -> dict[str, Any]:
    if user is None:
        return {"id": user_id, "username": "", "name": "", "avatar": ""}
    return {"id": user.id, "username": user.username, "name": user.name, "avatar": user.profile_image_url}


def inbound_event(
    event: DmEvent, users: dict[str, XUser], origin: InboundOrigin, bridged_at: float | None = None
) -> InboundEvent:
    """What the store keeps of an X event: everything posting it needs, nothing secret.
    History (``origin`` backfill) carries when its channel was bridged: it is for that channel."""
    payload: dict[str, Any] = {
        "text": event.written,
        "created_at": event.created_at,
        "sender": _user_json(users.get(event.sender_id or ""), event.sender_id),
    }
    if event.media:
        payload["media"] = [dict(m) for m in event.media]
    if event.participant_ids:
        payload["participants"] = [_user_json(users.get(p), p) for p in event.participant_ids]
    if origin is InboundOrigin.BACKFILL:
        payload["history"] = True
        if bridged_at is not None:
            payload["bridged_at"] = bridged_at
    return InboundEvent(
        dm_event_id=event.id,
        kind=event.kind,
        conversation_id=event.conversation_id,
        sender_id=event.sender_id,
        payload=payload,
        origin=origin,
    )
