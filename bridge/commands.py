"""The `/xdm` command: a pure parser, and the service that carries commands out.

Every command is answered within Slack's 3 seconds: ``CommandService.handle``
returns the immediate reply and, for work that needs X, a follow-up coroutine
that reports through ``response_url`` when X has answered.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NoReturn, Protocol
from urllib.parse import urlencode

from bridge.budget import Budget, ReadEndpoint
from bridge.confirm import Question, question_buttons
from bridge.connect import ConnectService, held_notice
from bridge.errors import CommandError, RateFacts, XAuthRevoked, XError, XRateLimited, XRefused
from bridge.model import (
    X_CONVERSATION_ID,
    X_USER_ID,
    X_USERNAME,
    Account,
    Button,
    ChannelMapping,
    EventPage,
    HistoryState,
    IncomingMessage,
    MappingKind,
    OAuthState,
    OutboxState,
    XUser,
    one_to_one_id,
)
from bridge.permissions import Permissions
from bridge.ports import (
    AccountReads,
    Clock,
    InboundStatus,
    MappingStore,
    OAuthStates,
    OutboxListings,
    RelayStore,
    SlackClient,
    XClient,
    XOAuth,
)
from bridge.tokens import TokenManager
from bridge.xchat import (
    ChatPeers,
    ChatSession,
    ChatSessions,
    HeldKeys,
    NoChatIdentity,
    XChatError,
    conversation_peers,
    one_way_note,
)

log = logging.getLogger("bridge.commands")

MIN_GROUP = 2
MAX_GROUP = 49
STATE_TTL = 600.0
LINK_READ_WAIT = 60.0  # seconds `/xdm link` waits for a read window about to open

HELP = """*Bridge this channel to an X (Twitter) DM conversation*
• `/xdm connect` – connect your X account (messages are sent as the account of whoever mapped the channel)
• `/xdm new-group @alice @bob … [opening message]` – bridge this channel to a new X group DM (2 to 49 people)
• `/xdm dm @alice [message]` – bridge this channel to your 1-to-1 DM with @alice
• `/xdm link <conversation id>` – bridge to a conversation you are in (group id, or `<your X id>-<theirs>`)
• `/xdm unlink` – stop bridging this channel (asks you to confirm first)
• `/xdm status` – this channel's mapping, its X account and what is waiting
• `/xdm disconnect` – revoke the bridge's access to your X account; its channels pause (asks first)
Participants are X handles (`@name`) or numeric X user ids."""


# -- parsing -------------------------------------------------------------------


@dataclass(frozen=True)
class Participant:
    """An X user named by handle or by numeric id."""

    username: str | None = None
    user_id: str | None = None

    def __str__(self) -> str:
        return f"@{self.username}" if self.username else str(self.user_id)


@dataclass(frozen=True)
class Connect:
    pass


@dataclass(frozen=True)
class Help:
    unknown: str | None = None


@dataclass(frozen=True)
class Status:
    pass


@dataclass(frozen=True)
class Unlink:
    pass


@dataclass(frozen=True)
class Disconnect:
    pass


@dataclass(frozen=True)
class NewGroup:
    participants: tuple[Participant, ...]
    message: str


@dataclass(frozen=True)
class DirectMessage:
    participant: Participant
    message: str


@dataclass(frozen=True)
class Link:
    conversation_id: str


Command = Connect | Help | Status | Unlink | Disconnect | NewGroup | DirectMessage | Link

_SLACK_USER = re.compile(r"^<@([UW][A-Z0-9]+)(?:\|([^>]*))?>$")
_X_PROFILE = re.compile(
    r"^<?https?://(?:www\.|mobile\.)?(?:x|twitter)\.com/([A-Za-z0-9_]{1,15})/?(?:\|[^>]*)?>?$"
)


X_CHAT_GROUP_ID = re.compile(r"^g[0-9]{1,19}$")  # an encrypted X Chat group's id


def _participant(token: str) -> Participant | None:
    """A participant if ``token`` names one, else None (the message starts there)."""
    if token.startswith("@"):
        name = token[1:]
        if not X_USERNAME.match(name):
            raise CommandError(f"`{token}` is not a valid X handle (letters, digits and _, up to 15).")
        return Participant(username=name)
    if X_USER_ID.match(token):
        return Participant(user_id=token)
    slack_user = _SLACK_USER.match(token)
    if slack_user:
        label = slack_user.group(2) or slack_user.group(1)
        raise CommandError(
            f"`@{label}` is a Slack member, not an X account. "
            "Give their X handle (like `@name`) or X user id."
        )
    profile = _X_PROFILE.match(token)
    if profile:
        return Participant(username=profile.group(1))
    return None


def _split_participants(words: list[str]) -> tuple[list[Participant], str]:
    participants: list[Participant] = []
    for index, word in enumerate(words):
        if word == "--":
            return participants, " ".join(words[index + 1 :])
        found = _participant(word)
        if found is None:
            return participants, " ".join(words[index:])
        participants.append(found)
    return participants, ""


def parse(text: str) -> Command:
    """Parse the text after `/xdm`. Raises ``CommandError`` with a message for the user."""
    words = text.split()
    if not words:
        return Help()
    verb, rest = words[0].lower(), words[1:]
    if verb == "connect":
        return Connect()
    if verb in ("help", "-h", "--help", "?"):
        return Help()
    if verb == "status":
        return Status()
    if verb in ("unlink", "disconnect-channel"):
        return Unlink()
    if verb == "disconnect":
        return Disconnect()
    if verb == "new-group":
        participants, message = _split_participants(rest)
        unique = list(dict.fromkeys(participants))
        if len(unique) < MIN_GROUP:
            raise CommandError(
                f"A group needs at least {MIN_GROUP} other participants (you gave {len(unique)}). "
                "Usage: `/xdm new-group @alice @bob [opening message]`; for one person use `/xdm dm @alice`."
            )
        if len(unique) > MAX_GROUP:
            raise CommandError(
                f"X allows at most {MAX_GROUP} other participants in a group (you gave {len(unique)})."
            )
        return NewGroup(tuple(unique), message)
    if verb == "dm":
        if not rest:
            raise CommandError("Usage: `/xdm dm @alice [message]` (an X handle or numeric X user id).")
        found = _participant(rest[0])
        if found is None:
            raise CommandError(f"`{rest[0]}` is not an X handle (`@name`) or a numeric X user id.")
        words = rest[1:]
        if words[:1] == ["--"]:  # "--" ends the people (the form writes it): not the message's
            words = words[1:]
        return DirectMessage(found, " ".join(words))
    if verb == "link":
        if len(rest) != 1:
            raise CommandError(
                "Usage: `/xdm link <conversation id>`: a 1-to-1 id is your X user id and the other "
                "person's, joined by `-` (smaller first); a group id is 15 to 19 digits."
            )
        conversation_id = rest[0]
        if not (X_CONVERSATION_ID.match(conversation_id) or X_CHAT_GROUP_ID.match(conversation_id)):
            raise CommandError(
                f"`{conversation_id}` is not an X conversation id: a 1-to-1 id is two X user ids "
                "joined by `-`, a group id is 15 to 19 digits."
            )
        return Link(conversation_id)
    return Help(unknown=words[0])


# -- carrying out ----------------------------------------------------------------


class CommandStore(
    AccountReads, OAuthStates, MappingStore, RelayStore, InboundStatus, OutboxListings, Protocol
):
    """The roles `/xdm` uses: the caller's account, a connect flow's state, the channel's
    mapping, an opening message accepted, and the status summaries."""


class InboundControl(Protocol):
    """What commands ask of X → Slack: ``Inbound``, or whatever passes it on to the leader."""

    def push_active(self, account_id: int) -> bool: ...
    def wants_history(self) -> bool: ...
    async def history_requested(self, account_id: int) -> None: ...


class HistoryProgress(Protocol):
    """How far a newly bridged conversation's history is (``adapters.store.history``)."""

    async def history(
        self, account_id: int, conversation_id: str, team_id: str, channel_id: str
    ) -> HistoryState: ...


@dataclass(frozen=True)
class CommandContext:
    """Who ran the command, where, and where to answer later."""

    team_id: str
    channel_id: str
    user_id: str
    response_url: str | None = None
    channel_name: str = ""
    user_name: str = ""
    team_name: str = ""  # the workspace's domain, as the slash command names it
    # Also told a follow-up's outcome (the bridge modal shows it); response_url still is.
    report_to: Callable[[Reply], Awaitable[None]] | None = field(default=None, compare=False)
    # The follow-up's outcome replaces the message at response_url (a confirmed question's).
    replaces: bool = False


@dataclass(frozen=True)
class Reply:
    """What Slack shows at once; ``follow_up`` runs after the acknowledgement.

    A reply with ``buttons`` is a question: its ``follow_up`` shows it (text and buttons) through
    response_url, so the acknowledgement itself says nothing."""

    text: str
    in_channel: bool = False
    follow_up: Callable[[], Awaitable[None]] | None = field(default=None, compare=False)
    buttons: tuple[Button, ...] = ()


class CommandService:
    """Carries out parsed commands through the ports."""

    def __init__(
        self,
        *,
        store: CommandStore,
        x: XClient,
        oauth: XOAuth,
        tokens: TokenManager,
        budget: Budget,
        slack: SlackClient,
        clock: Clock,
        oauth_ready: str | None,
        on_mapped: Callable[[], None] = lambda: None,
        permissions: Permissions | None = None,
        connections: ConnectService | None = None,
        connect_page: str = "",
        inbound: InboundControl | None = None,
        chat_peers: ChatPeers | None = None,
        chats: ChatSessions | None = None,
        on_mapping_changed: Callable[[ChannelMapping], Awaitable[None]] | None = None,
        history: HistoryProgress | None = None,
    ) -> None:
        """``on_mapping_changed`` hears of each channel bridged or unlinked (App Homes show them).
        ``connect_page`` is the bridge's own page that `/xdm connect` links to (it confirms,
        then goes on to X); ``oauth_ready`` is None when connecting works, else why it does not."""
        self._store = store
        self._x = x
        self._oauth = oauth
        self._tokens = tokens
        self._budget = budget
        self._slack = slack
        self._clock = clock
        self._oauth_ready = oauth_ready
        self._on_mapped = on_mapped
        self._permissions = permissions or Permissions(slack)
        self._connections = connections
        self._connect_page = connect_page
        self._inbound = inbound
        self._chat_peers = chat_peers
        self._chats = chats
        self._on_mapping_changed = on_mapping_changed
        self._history = history

    async def handle(self, ctx: CommandContext, text: str) -> Reply:
        """Answer a `/xdm` command. Never raises for a user's mistake: it becomes the reply."""
        try:
            command = parse(text)
            return await self._dispatch(ctx, command)
        except CommandError as exc:
            return Reply(f":x: {exc}")

    async def _dispatch(self, ctx: CommandContext, command: Command) -> Reply:
        match command:
            case Help(unknown=unknown):
                prefix = f"I don't know `{unknown}`.\n" if unknown else ""
                return Reply(prefix + HELP)
            case Connect():
                return await self._connect(ctx)
            case Status():
                return await self._status(ctx)
            case Unlink():
                return await self._ask(ctx, "unlink")
            case Disconnect():
                return await self._ask(ctx, "disconnect")
            case Link(conversation_id=conversation_id):
                account = await self._mapping_account(ctx)  # "connect first" before the channel's rules
                await self._may_map(ctx)
                _check_includes(account, conversation_id)
                return Reply(
                    f"Checking that @{account.x_username} can read X conversation `{conversation_id}`…",
                    follow_up=lambda: self._report(ctx, self._link(ctx, account, conversation_id)),
                )
            case NewGroup() | DirectMessage():
                account = await self._mapping_account(ctx)
                await self._may_map(ctx)
                if isinstance(command, NewGroup):
                    job = self._new_group(ctx, account, command)
                    note = f"Creating an X group with {_names(command.participants)}…"
                else:
                    job = self._direct(ctx, account, command)
                    note = f"Setting up the DM with {command.participant}…"
                return Reply(note, follow_up=lambda: self._report(ctx, job))
        raise AssertionError(f"unhandled command {command!r}")

    # -- simple commands ------------------------------------------------------

    async def _connect(self, ctx: CommandContext) -> Reply:
        if self._oauth_ready is not None:
            return Reply(f":x: Connecting X accounts is not set up on this bridge: {self._oauth_ready}")
        current = await self._store.account_for_user(ctx.team_id, ctx.user_id)
        request = self._oauth.begin()
        await self._store.save_oauth_state(
            OAuthState(
                state=request.state,
                code_verifier=request.code_verifier,
                team_id=ctx.team_id,
                slack_user_id=ctx.user_id,
                channel_id=ctx.channel_id,
                response_url=ctx.response_url,
                expires_at=self._clock.now() + STATE_TTL,
                slack_user_name=ctx.user_name,
                team_name=ctx.team_name,
            )
        )
        # The bridge's page first, never X's: it names who the X account will belong to and
        # binds the flow to the browser that confirms, so a forwarded link cannot be finished
        # by someone else.
        link = f"{self._connect_page}?{urlencode({'state': request.state})}"
        if current is not None and not current.disconnected:
            state = ", which *needs reconnecting*" if current.needs_reconnect else ""
            return Reply(
                f"You are connected as @{current.x_username} on X{state}. "
                f"<{link}|Reconnect> to renew that access or to switch to another X account "
                "(the link works once, for 10 minutes; do not share it)."
            )
        return Reply(
            f"<{link}|Connect your X account> (the link works once, for 10 minutes; do not share it). "
            "Mappings you make afterwards send as that account."
        )

    async def _status(self, ctx: CommandContext) -> Reply:
        mapping = await self._store.get_mapping(ctx.team_id, ctx.channel_id)
        lines: list[str] = []
        if mapping is None:
            lines.append("This channel is not bridged to X. See `/xdm help`.")
        else:
            lines.append(f"This channel is bridged to {_describe(mapping)}.")
            if mapping.encrypted:
                lines.append(ENCRYPTED_LINE)
            account = await self._store.get_account(mapping.account_id)
            if account is not None:
                state = " – *needs reconnecting* (`/xdm connect`)" if account.needs_reconnect else ""
                if mapping.paused_at is not None:
                    state = (
                        f" – *paused*: the account was disconnected; messages wait until "
                        f"<@{account.slack_user_id}> runs `/xdm connect`"
                    )
                if account.slack_user_id == ctx.user_id:
                    sender = f"your X account @{account.x_username}"
                else:
                    sender = f"@{account.x_username}, the X account <@{account.slack_user_id}> connected"
                if mapping.held_for is not None:
                    lines.append(
                        "*Paused*: " + held_notice(mapping, account).removeprefix(":double_vertical_bar: ")
                    )
                else:
                    lines.append(f"Messages are sent as {sender}{state}.")
                lines.append(self._budget_line(account.id))
                lines.append(await self._inbound_line(mapping))
                history = await self._history_line(mapping)
                if history:
                    lines.append(history)
                lines.extend(await self._known_one_way(mapping, account))
        summary = await self._store.outbox_summary(ctx.team_id, ctx.channel_id)
        pending = summary["pending"]
        if pending:
            age = self._clock.now() - (summary["oldest_pending_at"] or self._clock.now())
            lines.append(f"{pending} message(s) waiting to go to X; the oldest for {_duration(age)}.")
        else:
            lines.append("No messages waiting.")
        held = summary["counts"].get(OutboxState.HELD, 0)
        if held:
            lines.append(
                f"{held} message(s) written for another X account wait for it to be connected again."
            )
        failed = summary["counts"].get(OutboxState.FAILED, 0)
        if failed:
            lines.append(f"{failed} message(s) could not be sent (marked :warning:).")
        own = await self._store.account_for_user(ctx.team_id, ctx.user_id)
        if own is None:
            lines.append("You have not connected an X account (`/xdm connect`).")
        elif mapping is None or own.id != mapping.account_id:
            lines.append(f"Your X account: @{own.x_username}.")
        return Reply("\n".join(lines))

    def _budget_line(self, account_id: int) -> str:
        now = self._clock.now()
        windows = self._budget.snapshot(account_id, now)
        parts = []
        for label, key in (("15 min", "15m"), ("24 h", "24h"), ("app, 24 h", "app_24h")):
            window = windows[key]
            reset = window["reset_at"]
            when = f", resets {_clock_time(reset, now)}" if reset else ""
            parts.append(f"{window['remaining']}/{window['limit']} ({label}{when})")
        return "X DM budget left: " + "; ".join(parts) + "."

    async def _history_line(self, mapping: ChannelMapping) -> str:
        """The progress of the history `/xdm link` or `/xdm dm` brings over, while there is any."""
        if self._history is None or not mapping.conversation_id:
            return ""
        state = await self._history.history(
            mapping.account_id, mapping.conversation_id, mapping.team_id, mapping.channel_id
        )
        if state.to_read:
            return (
                "History: the earlier messages of this conversation will be read from X at the "
                "next read X's budget allows (see the next read above), then posted here."
            )
        if state.waiting:
            total = state.posted + state.waiting
            return f"History: {state.posted} of {total} earlier messages posted; the rest follow."
        return ""

    async def _inbound_line(self, mapping: ChannelMapping) -> str:
        """How X → Slack is doing: push or polling, last event, next read, reads left, and what
        waits for this channel. Read from the store, so any instance (a standby too) says it."""
        now = self._clock.now()
        account_id = mapping.account_id
        summary = await self._store.inbound_summary(account_id, mapping.team_id, mapping.channel_id)
        # This instance's push state if it leads; a standby's says what the leader last saved.
        push = (self._inbound is not None and self._inbound.push_active(account_id)) or summary["pushed"]
        if _is_group(mapping):
            # X documents its DM push for 1-to-1 conversations only: groups come by reading.
            way = "polling (X does not push group conversations)"
        else:
            way = "push (polling as a safety net)" if push else "polling"
        last = summary["last_event_at"]
        seen = f"last X event seen {_clock_time(last, now)}" if last else "no X event seen yet"
        next_at = summary["next_read_at"]
        upcoming = f"next read {_clock_time(max(now, next_at), now)}" if next_at else "next read soon"
        remaining, limit, reset = await self._budget.stored_reads_left(account_id, now)
        resets = f", resets {_clock_time(reset, now)}" if reset else ""
        line = f"From X: {way}; {seen}; {upcoming}; reads left {remaining}/{limit} (15 min{resets})"
        if push:
            # X counts each read endpoint apart: pushed DMs are placed from their own windows.
            placing = []
            for endpoint, what in (
                (ReadEndpoint.WITH, "1-to-1 reads"),
                (ReadEndpoint.EVENT, "lookups by id"),
            ):
                left, most, _ = await self._budget.stored_reads_left(account_id, now, endpoint)
                placing.append(f"{what} left {left}/{most}")
            line += f"; placing pushes: {', '.join(placing)}"
        waiting = summary["channel_pending"]
        if summary["channel_failed"]:
            # Slack refused these for themselves and the line in their place too: never posted.
            reason = _one_line(str(summary["channel_last_failure"] or "no reason kept"))
            line += f"; {summary['channel_failed']} could not be posted here (last: {reason})"
        if summary["catching_up"]:
            line += (
                "; catching up: X had more new messages than one read takes, so what came waits "
                "until the older ones are read, to be posted in X's order"
            )
        if waiting and mapping.paused_at is not None:
            return (
                f"{line}.\n{waiting} message(s) from X wait to be posted here until the channel is resumed."
            )
        return f"{line}; {waiting} waiting to be posted here." if waiting else f"{line}."

    # -- questions first: unlink and disconnect (bridge.confirm answers the clicks) -----------

    async def question(self, verb: str, team_id: str, user_id: str, channel_id: str = "") -> Reply:
        """The question `/xdm unlink` (``verb``) or `/xdm disconnect` asks, for whoever shows it
        elsewhere (the Home's buttons, in a DM); a reply without buttons says why none is asked."""
        ctx = CommandContext(team_id=team_id, channel_id=channel_id, user_id=user_id)
        try:
            return await self._ask(ctx, verb)
        except CommandError as exc:
            return Reply(f":x: {exc}")

    async def confirmed(self, question: Question, response_url: str | None) -> Reply:
        """Carry out a question its person confirmed, checking again what it checked when asked:
        who may, and that the mapping or the account is still the one it named."""
        ctx = CommandContext(
            team_id=question.team_id,
            channel_id=question.channel_id,
            user_id=question.user_id,
            response_url=response_url,
            replaces=True,
        )
        try:
            if question.verb == "unlink":
                return await self._unlink(ctx, question.subject)
            return await self._disconnect(ctx, question.subject)
        except CommandError as exc:
            return Reply(f":x: {exc}")

    async def _ask(self, ctx: CommandContext, verb: str) -> Reply:
        asking = self._unlink_question if verb == "unlink" else self._disconnect_question
        text, subject = await asking(ctx)
        if subject is None:
            return Reply(text)
        question = Question(verb, ctx.team_id, ctx.user_id, ctx.channel_id, subject, int(self._clock.now()))
        buttons = question_buttons(question)
        return Reply(text, buttons=buttons, follow_up=lambda: self._show_question(ctx, text, buttons))

    async def _show_question(self, ctx: CommandContext, text: str, buttons: tuple[Button, ...]) -> None:
        try:
            if ctx.response_url:
                await self._slack.respond(ctx.response_url, text, buttons=buttons)
            else:
                await self._slack.ask(ctx.team_id, ctx.channel_id or None, ctx.user_id, text, buttons)
        except Exception as exc:
            log.warning("could not ask to confirm", extra={"team": ctx.team_id, "error": type(exc).__name__})

    async def _unlink_question(self, ctx: CommandContext) -> tuple[str, str | None]:
        """What unlinking this channel would do, and the mapping it is about (None: nothing to ask)."""
        channel = f"<#{ctx.channel_id}>"
        mapping = await self._store.get_mapping(ctx.team_id, ctx.channel_id)
        if mapping is None:
            return f"{channel} is not bridged to X; nothing to unlink.", None
        await self._may_change(ctx, mapping, "unlink")  # refused now rather than after a click
        account = await self._store.get_account(mapping.account_id)
        sent_as = f" (sent as X account @{account.x_username})" if account is not None else ""
        lines = [
            f"Stop bridging {channel} to {_describe(mapping)}{sent_as}?",
            f"New messages in {channel} will no longer go to X, and what is written in the X "
            f"conversation will no longer be posted in {channel}. The conversation stays as it is on X.",
        ]
        waiting = (await self._store.outbox_summary(ctx.team_id, ctx.channel_id))["pending"]
        if waiting:
            lines.append(f"{waiting} message(s) already accepted for X are still delivered.")
        inbound = await self._store.inbound_summary(mapping.account_id, ctx.team_id, ctx.channel_id)
        if inbound["channel_pending"]:
            lines.append(
                f"{inbound['channel_pending']} message(s) from X that are waiting are posted in {channel}."
            )
        return "\n".join(lines), repr(mapping.created_at)

    async def _disconnect_question(self, ctx: CommandContext) -> tuple[str, str | None]:
        """What disconnecting the user's X account would do, and the account (None: nothing to ask)."""
        account = await self._store.account_for_user(ctx.team_id, ctx.user_id)
        if account is None or account.disconnected:
            return "You have no X account connected to this bridge; nothing to disconnect.", None
        if self._connections is None:
            return ":x: Disconnecting is not available on this bridge.", None
        name = f"@{account.x_username}"
        bridged = await self._store.find_mappings(team_id=ctx.team_id, account_id=account.id)
        lines = [
            f"Disconnect X account {name} from the bridge?",
            f"The bridge gives X back its access to {name} and deletes the account's tokens.",
        ]
        if bridged:
            channels = ", ".join(f"<#{m.channel_id}>" for m in bridged)
            lines.append(
                f"Bridged as {name}: {channels}. They pause: messages written there wait (kept, not "
                f"lost) and nothing is read from X for them until you run `/xdm connect` again."
            )
        else:
            lines.append(f"No channel is bridged as {name}.")
        return "\n".join(lines), _account_subject(account)

    async def _unlink(self, ctx: CommandContext, asked: str) -> Reply:
        existing = await self._store.get_mapping(ctx.team_id, ctx.channel_id)
        if existing is None:
            return Reply(f"<#{ctx.channel_id}> is not bridged to X any more; nothing was changed.")
        if repr(existing.created_at) != asked:
            return Reply(
                f"<#{ctx.channel_id}>'s bridge changed since you were asked: it is now bridged to "
                f"{_describe(existing)}. Nothing was changed; run `/xdm unlink` again to stop that one."
            )
        await self._may_change(ctx, existing, "unlink")
        # Only the mapping just checked: one made since (by someone this user may not overrule)
        # is not this command's to delete.
        mapping = await self._store.delete_mapping(ctx.team_id, ctx.channel_id, made=existing)
        if mapping is None:
            return Reply(
                "This channel's bridge changed while you unlinked it; run `/xdm status`, then try again."
            )
        summary = await self._store.outbox_summary(ctx.team_id, ctx.channel_id)
        waiting = summary["pending"]
        tail = f" {waiting} message(s) already accepted will still be delivered." if waiting else ""
        # What X people wrote while it was bridged waited (for the pause, or for an unfinished
        # read of X): nothing more comes for the channel now, so it is posted, not lost.
        inbound = await self._store.inbound_summary(mapping.account_id, ctx.team_id, ctx.channel_id)
        if inbound["channel_pending"]:
            tail += f" {inbound['channel_pending']} message(s) from X that waited are posted here now."
            self._on_mapped()  # wakes the poster
        log.info("channel unlinked", extra={"team": ctx.team_id, "channel": ctx.channel_id})
        await self._mapping_changed(mapping)
        return Reply(
            f"<@{ctx.user_id}> stopped bridging this channel to {_describe(mapping)}. "
            f"New messages here no longer go to X.{tail}",
            in_channel=True,
        )

    async def _disconnect(self, ctx: CommandContext, asked: str) -> Reply:
        account = await self._store.account_for_user(ctx.team_id, ctx.user_id)
        if account is None or account.disconnected:
            return Reply("Your X account is already disconnected; nothing was changed.")
        if _account_subject(account) != asked:
            return Reply(
                f"Your connected X account changed since you were asked (it is now @{account.x_username}). "
                "Nothing was changed; run `/xdm disconnect` again to disconnect this one."
            )
        connections = self._connections
        if connections is None:
            return Reply(":x: Disconnecting is not available on this bridge.")

        async def work() -> Reply:
            done = await connections.disconnect(account, ctx.user_id)
            self._tokens.forget(account.id)
            revoked = (
                "X revoked the bridge's access"
                if done.revoked
                else "X did not confirm the revocation (remove the app at x.com/settings/connected_apps "
                "to be sure)"
            )
            channels = ", ".join(f"<#{m.channel_id}>" for m in done.paused)
            paused = f" Paused: {channels}; messages there wait." if channels else ""
            return Reply(
                f":white_check_mark: Disconnected X account @{account.x_username}: {revoked}, and the "
                f"bridge deleted its tokens.{paused} Run `/xdm connect` to resume."
            )

        return Reply(f"Disconnecting @{account.x_username}…", follow_up=lambda: self._report(ctx, work()))

    async def _link(self, ctx: CommandContext, account: Account, conversation_id: str) -> Reply:
        """Map the channel once X has shown the account can read the conversation.

        A conversation the account is not in (or that does not exist) would get every message
        refused while `/xdm status` said "bridged": one read of its newest event, within the
        account's read budget, tells before anything is announced.
        """
        session, why_not = await self._chat_session(account)
        if session is not None and await self._chat_listed(account, session, conversation_id):
            mapping = await self._map(
                ctx, account, MappingKind.LINK, conversation_id=conversation_id, encrypted=True
            )
            return Reply(self._mapped_text(ctx, mapping, account) + f"\n{ENCRYPTED_LINE}", in_channel=True)
        if X_CHAT_GROUP_ID.match(conversation_id):
            raise CommandError(
                f"`{conversation_id}` is an encrypted X Chat group, and "
                + (why_not or f"X does not list it among @{account.x_username}'s X Chat conversations")
                + ". Nothing was linked."
            )
        await self._readable(account, conversation_id)
        mapping = await self._map(ctx, account, MappingKind.LINK, conversation_id=conversation_id)
        peers = conversation_peers(mapping, account.x_user_id)
        note = await self._one_way_note(account, peers, {}, _held(session, why_not), group=_is_group(mapping))
        text = self._mapped_text(ctx, mapping, account) + (f"\n{note}" if note else "")
        return Reply(text, in_channel=True)

    async def _readable(self, account: Account, conversation_id: str) -> None:
        """One read of the conversation (``max_results=1``); raises ``CommandError`` saying why not."""

        async def read(token: str) -> tuple[EventPage, RateFacts]:
            return await self._x.dm_events(token, max_results=1, conversation_id=conversation_id)

        conversation = ReadEndpoint.CONVERSATION
        for attempt in range(2):
            await self._budget.adopt_stored_reads(account.id, self._clock.now(), conversation)
            try:
                await self._budget.read(
                    account.id,
                    self._clock.now,
                    lambda: self._tokens.call(account, read),
                    endpoint=conversation,
                )
                return
            except XRateLimited as exc:
                wait = exc.reset_at - self._clock.now()
                if attempt == 0 and wait <= LINK_READ_WAIT:
                    # The poller spent the window just now: a window that opens soon is worth
                    # waiting for (the answer goes through response_url, valid for 30 minutes).
                    await asyncio.sleep(max(0.0, wait))
                    continue
                self._refuse_spent(account, conversation_id, exc)
            except XRefused as exc:
                log.info(
                    "link refused: X does not let the account read the conversation",
                    extra={"account_id": account.id, "status": exc.status},
                )
                raise CommandError(
                    f"X says @{account.x_username} cannot read X conversation `{conversation_id}` "
                    f"(HTTP {exc.status}): it does not exist or @{account.x_username} is not in it. "
                    "Nothing was linked."
                ) from exc

    def _refuse_spent(self, account: Account, conversation_id: str, exc: XRateLimited) -> NoReturn:
        raise CommandError(
            f"@{account.x_username}'s X read budget is spent until "
            f"{_clock_time(exc.reset_at, self._clock.now())}, so X conversation "
            f"`{conversation_id}` could not be checked; nothing was linked. Try again then."
        ) from exc

    # -- commands that talk to X ----------------------------------------------

    async def _new_group(self, ctx: CommandContext, account: Account, command: NewGroup) -> Reply:
        users = [await self._resolve(account, p) for p in command.participants]
        ids = list(dict.fromkeys(u.id for u in users if u.id != account.x_user_id))
        if len(ids) < MIN_GROUP:
            raise CommandError(
                f"A group needs at least {MIN_GROUP} people besides you (@{account.x_username})."
            )
        opening = command.message or (
            f"This group is bridged to #{ctx.channel_name or ctx.channel_id} on Slack."
        )
        session, why_not = await self._chat_session(account)
        if session is not None and await self._all_on_chat(account, ids):
            title = f"#{ctx.channel_name or ctx.channel_id}"
            group_id = await self._tokens.call(account, lambda t: session.create_group(t, ids, title))
            mapping = await self._map(
                ctx, account, MappingKind.GROUP, conversation_id=group_id, encrypted=True
            )
            await self._queue_opening(ctx, mapping, opening)
            text = self._mapped_text(ctx, mapping, account, [f"@{u.username}" for u in users])
            return Reply(f"{text}\n{ENCRYPTED_LINE}", in_channel=True)
        # The channel is mapped first, to a group still to create: a doubled or retried command
        # finds it mapped, so X never gets two groups. The opening message creates the group
        # from the outbox (claimed before its POST, read back from X if the answer is lost).
        mapping = await self._map(ctx, account, MappingKind.GROUP, group_participants=tuple(ids))
        await self._queue_opening(ctx, mapping, opening)
        text = self._mapped_text(ctx, mapping, account, [f"@{u.username}" for u in users])
        handles = {u.id: u.username for u in users}
        note = await self._one_way_note(account, ids, handles, _held(session, why_not), group=True)
        return Reply(text + (f"\n{note}" if note else ""), in_channel=True)

    async def _direct(self, ctx: CommandContext, account: Account, command: DirectMessage) -> Reply:
        user = await self._resolve(account, command.participant)
        if user.id == account.x_user_id:
            raise CommandError("That is your own X account; name someone else.")
        conversation_id = one_to_one_id(account.x_user_id, user.id)
        session, why_not = await self._chat_session(account)
        encrypted = session is not None and await self._all_on_chat(account, [user.id])
        if session is not None and encrypted:
            chat = session
            conversation_id = await self._tokens.call(account, lambda t: chat.open_one_to_one(t, user.id))
        mapping = await self._map(
            ctx,
            account,
            MappingKind.DM,
            conversation_id=conversation_id,
            participant_id=user.id,
            participant_username=user.username if user.username != user.id else None,
            encrypted=encrypted,
        )
        if command.message:
            await self._queue_opening(ctx, mapping, command.message)
        if encrypted:
            return Reply(self._mapped_text(ctx, mapping, account) + f"\n{ENCRYPTED_LINE}", in_channel=True)
        warn = ""
        if user.receives_your_dm is False:
            warn = f"\n:warning: X says @{user.username} may not accept DMs from @{account.x_username}."
        note = await self._one_way_note(account, [user.id], {user.id: user.username}, _held(session, why_not))
        if note:
            warn += f"\n{note}"
        return Reply(self._mapped_text(ctx, mapping, account) + warn, in_channel=True)

    async def _known_one_way(self, mapping: ChannelMapping, account: Account) -> list[str]:
        """Status's warning line, from the kept answers (status never asks X)."""
        if self._chat_peers is None or mapping.encrypted:
            return []
        on_chat = await self._chat_peers.known_on_chat(conversation_peers(mapping, account.x_user_id))
        if not on_chat:
            return []
        handles = {mapping.participant_id or "": mapping.participant_username or ""}
        keys = _held(*await self._chat_session(account))
        names = [_someone(i, handles) for i in on_chat]
        return [one_way_note(names, account.x_username, keys, group=_is_group(mapping))]

    async def _chat_session(self, account: Account) -> tuple[ChatSession | None, str]:
        """The account's X Chat session, or None and why not ("" when it has no identity at all:
        then nothing about X Chat is said)."""
        if self._chats is None:
            return None, ""
        try:
            return await self._chats.session(account), ""
        except NoChatIdentity as exc:
            return None, str(exc) if await self._chats.has_identity(account) else ""

    async def _all_on_chat(self, account: Account, peers: list[str]) -> bool:
        """Has every one of ``peers`` registered X Chat keys (the kept daily answer, else X's)?"""
        if self._chat_peers is None or not peers:
            return False
        return set(await self._chat_peers.on_chat(account, peers)) == set(peers)

    async def _chat_listed(self, account: Account, session: ChatSession, conversation_id: str) -> bool:
        """Is ``conversation_id`` one of the account's X Chat conversations, as X lists them?"""
        try:
            listed = await self._tokens.call(account, session.conversations)
        except (XError, XChatError) as exc:
            log.info("could not list X Chat conversations", extra={"error": str(exc)[:200]})
            return False
        return conversation_id in listed

    async def _one_way_note(
        self,
        account: Account,
        peers: list[str],
        handles: dict[str, str],
        keys: HeldKeys,
        *,
        group: bool = False,
    ) -> str:
        """The channel's warning when people of its legacy conversation are on X Chat (else "")."""
        if self._chat_peers is None or not peers:
            return ""
        on_chat = await self._chat_peers.on_chat(account, peers)
        if not on_chat:
            return ""
        return one_way_note([_someone(i, handles) for i in on_chat], account.x_username, keys, group=group)

    async def _queue_opening(self, ctx: CommandContext, mapping: ChannelMapping, text: str) -> None:
        """The opening message goes through the outbox like a message posted in the channel.

        It is shown in the channel (the bot's post carries its ✅ or ⚠️) and sent as the
        command's author, translated and formatted as any channel message.
        """
        shown = f"<@{ctx.user_id}>'s opening message to X:\n{text}"
        try:
            ts = await self._slack.post_message(ctx.team_id, ctx.channel_id, shown)
        except Exception as exc:  # not in the channel, say: the message still goes, without ✅
            log.warning("could not show the opening message", extra={"error": str(exc)[:200]})
            ts = ""
        now = self._clock.now()
        message = IncomingMessage(
            team_id=ctx.team_id,
            channel_id=ctx.channel_id,
            ts=ts or f"{now:.6f}",
            user_id=ctx.user_id,
            text=text,
        )
        # The mapping was just made; if it is already gone (unlinked at once), so is the opening.
        await self._store.accept_if_mapped(message, now)
        self._on_mapped()

    async def _report(self, ctx: CommandContext, job: Awaitable[Reply]) -> None:
        """Run a follow-up and post its outcome through response_url."""
        try:
            reply = await job
        except CommandError as exc:
            reply = Reply(f":x: {exc}")
        except XError as exc:
            log.warning(
                "command failed at X",
                extra={"team": ctx.team_id, "channel": ctx.channel_id, "error": str(exc)},
            )
            reply = Reply(f":x: X refused: {exc}")
        except XAuthRevoked:
            reply = Reply(":x: Your X account needs to be reconnected: run `/xdm connect`.")
        except XChatError as exc:  # X Chat keys that cannot make or open the conversation
            log.warning("X Chat command failed", extra={"team": ctx.team_id, "error": str(exc)[:200]})
            reply = Reply(f":x: X Chat: {exc}. Nothing was bridged.")
        if ctx.report_to is not None:
            await ctx.report_to(reply)
        if ctx.response_url:
            await self._slack.respond(
                ctx.response_url, reply.text, in_channel=reply.in_channel, replace=ctx.replaces
            )
        else:
            await self._slack.post_ephemeral(ctx.team_id, ctx.channel_id, ctx.user_id, reply.text)

    async def _resolve(self, account: Account, participant: Participant) -> XUser:
        if participant.user_id is not None:
            return XUser(id=participant.user_id, username=participant.user_id)
        assert participant.username is not None
        username = participant.username
        user = await self._tokens.call(account, lambda token: self._x.user_by_username(token, username))
        if user is None:
            raise CommandError(f"X has no user @{participant.username}.")
        return user

    # -- helpers --------------------------------------------------------------

    async def _mapping_changed(self, mapping: ChannelMapping) -> None:
        if self._on_mapping_changed is not None:
            try:
                await self._on_mapping_changed(mapping)
            except Exception as exc:  # a view of the change must not undo the change's answer
                log.warning("mapping change not passed on", extra={"error": type(exc).__name__})

    async def _mapping_account(self, ctx: CommandContext) -> Account:
        account = await self._store.account_for_user(ctx.team_id, ctx.user_id)
        if account is None:
            raise CommandError("Connect your X account first: run `/xdm connect`.")
        if account.needs_reconnect:
            raise CommandError(
                f"Your X account @{account.x_username} needs reconnecting: run `/xdm connect`."
            )
        return account

    async def _may_map(self, ctx: CommandContext) -> None:
        """The rules of ``bridge.permissions`` for making a mapping here; raises the refusal."""
        await self._permissions.may_map(ctx.team_id, ctx.channel_id, ctx.user_id)
        await self._refuse_if_mapped(ctx)

    async def _may_change(self, ctx: CommandContext, mapping: ChannelMapping, what: str) -> None:
        account = await self._store.get_account(mapping.account_id)
        owner = account.slack_user_id if account is not None else None
        await self._permissions.may_change(ctx.team_id, ctx.user_id, mapping, owner, what)

    async def _refuse_if_mapped(self, ctx: CommandContext) -> None:
        existing = await self._store.get_mapping(ctx.team_id, ctx.channel_id)
        if existing is not None:
            # Replacing is unlinking and mapping again: only those who may unlink may replace.
            await self._may_change(ctx, existing, "replace")
            raise CommandError(
                f"This channel is already bridged to {_describe(existing)}. Run `/xdm unlink` first."
            )

    async def _map(
        self,
        ctx: CommandContext,
        account: Account,
        kind: MappingKind,
        *,
        conversation_id: str | None = None,
        participant_id: str | None = None,
        participant_username: str | None = None,
        group_participants: tuple[str, ...] = (),
        encrypted: bool = False,
    ) -> ChannelMapping:
        mapping = ChannelMapping(
            team_id=ctx.team_id,
            channel_id=ctx.channel_id,
            kind=kind,
            account_id=account.id,
            conversation_id=conversation_id,
            participant_id=participant_id,
            created_by=ctx.user_id,
            created_at=self._clock.now(),
            participant_username=participant_username,
            group_participants=group_participants,
            encrypted=encrypted,
        )
        # A linked conversation or an existing DM may have history (a new group has none). The
        # request is written with the mapping, in one transaction: a crash cannot split them.
        history = (
            self._inbound is not None
            and self._inbound.wants_history()
            and bool(mapping.conversation_id)
            and kind is not MappingKind.GROUP
        )
        created = await self._store.create_mapping(mapping, history=history)
        if created is None:
            existing = await self._store.get_mapping(ctx.team_id, ctx.channel_id)
            shown = _describe(existing) if existing else "another conversation"
            raise CommandError(f"This channel is already bridged to {shown}. Run `/xdm unlink` first.")
        log.info(
            "channel mapped",
            extra={
                "team": ctx.team_id,
                "channel": ctx.channel_id,
                "kind": kind.value,
                "account_id": account.id,
            },
        )
        self._on_mapped()
        await self._mapping_changed(created)
        if history and self._inbound is not None:
            await self._inbound.history_requested(account.id)
        return created

    @staticmethod
    def _mapped_text(
        ctx: CommandContext, mapping: ChannelMapping, account: Account, names: list[str] | None = None
    ) -> str:
        if mapping.kind is MappingKind.DM:
            where = f"their DMs with {_person(mapping)}"
        elif mapping.kind is MappingKind.GROUP and names:
            # The group is created by the opening message, from the outbox: no id yet.
            where = f"a new X group with {_listed(names)}"
        else:
            where = _describe(mapping)
        # Said in the channel, for everyone in it: whose X account this is, and that the
        # conversation's DMs, other people's included, are now theirs to read (X's policy).
        return (
            f"<@{ctx.user_id}> bridged this channel to {where}. "
            f"Messages posted here go to X as @{account.x_username} (<@{ctx.user_id}>'s X account), "
            "and the direct messages of that conversation, from everyone in it, are posted here "
            "for every member of this channel to read."
        )


ENCRYPTED_LINE = (
    ":lock: This is an encrypted X Chat conversation: messages from here are encrypted and signed "
    "with the account's X Chat keys, which the bridge holds."
)


def _account_subject(account: Account) -> str:
    """Which account a disconnect question is about: reconnecting another X account changes it."""
    return f"{account.id}-{account.x_user_id}"


def _check_includes(account: Account, conversation_id: str) -> None:
    """A 1-to-1 id is its two people's ids: refuse one that leaves out the account's."""
    if "-" not in conversation_id:
        return  # a group id says nothing of its people; the read that follows does
    if account.x_user_id not in conversation_id.split("-"):
        raise CommandError(
            f"`{conversation_id}` is the 1-to-1 conversation of X users "
            f"{' and '.join(conversation_id.split('-'))}, and your X account @{account.x_username} "
            f"(id {account.x_user_id}) is not one of them, so it could neither read nor send there. "
            "A 1-to-1 id with you holds your id and the other person's, smaller first; or use "
            "`/xdm dm @name`."
        )


def _one_line(text: str, limit: int = 200) -> str:
    """A stored reason, short and on one line, for a status reply."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _held(session: ChatSession | None, why_not: str) -> HeldKeys:
    """What ``_chat_session``'s answer says of the account's keys, for a legacy conversation."""
    if session is not None:
        return HeldKeys.USABLE
    return HeldKeys.UNUSABLE if why_not else HeldKeys.NONE


def _someone(x_user_id: str, handles: dict[str, str]) -> str:
    handle = handles.get(x_user_id)
    return f"@{handle}" if handle and handle != x_user_id else f"X user `{x_user_id}`"


def _is_group(mapping: ChannelMapping) -> bool:
    """A group conversation: made as one, or linked by a group id (a 1-to-1 id has a "-")."""
    return mapping.kind is MappingKind.GROUP or bool(
        mapping.conversation_id and "-" not in mapping.conversation_id
    )


def _describe(mapping: ChannelMapping) -> str:
    if mapping.encrypted and mapping.kind is MappingKind.DM:
        return f"the encrypted X Chat conversation with {_person(mapping)}"
    if mapping.encrypted:
        return f"encrypted X Chat conversation `{mapping.conversation_id}`"
    if mapping.kind is MappingKind.GROUP and mapping.conversation_id is None:
        return "a new X group conversation (being created)"
    if mapping.kind is MappingKind.GROUP:
        return f"X group conversation `{mapping.conversation_id}`"
    if mapping.kind is MappingKind.DM:
        return f"the 1-to-1 X DMs with {_person(mapping)}"
    return f"X conversation `{mapping.conversation_id}`"


def _person(mapping: ChannelMapping) -> str:
    """A 1-to-1 mapping's other person: @handle when known, else their X user id."""
    if mapping.participant_username:
        return f"@{mapping.participant_username}"
    return f"X user `{mapping.participant_id}`"


def _listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _names(participants: tuple[Participant, ...]) -> str:
    return ", ".join(str(p) for p in participants)


def _clock_time(epoch: float, now: float) -> str:
    """``14:05 UTC``; with the date when that is more than 12 hours away (a daily window).

    Total: a reset may come from X's headers, and no value of it may make a command fail."""
    try:
        moment = datetime.fromtimestamp(epoch, UTC)
    except (OverflowError, ValueError, OSError):
        return "later"
    if epoch - now > 12 * 3600:
        return f"{moment:%a} {moment.day} {moment:%b}, {moment:%H:%M} UTC"
    return f"{moment:%H:%M} UTC"


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 90:
        return f"{seconds}s"
    if seconds < 5400:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
