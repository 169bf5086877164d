"""The App Home tab: each person's X account, the channels they bridged, and (for admins) the
workspace's settings.

The view is built here as plain Block Kit data (``home_view``); the adapter publishes it with
``views.publish``. It is built from the signed payload's team and user (``app_home_opened``, a
click) or from the row that changed (an account, a mapping), never from a global: the same
code serves one workspace (a bot token) or many (installs).

``HomeService.changed`` is what the rest of the bridge calls when something a Home shows
changes (connect, disconnect, link, unlink, pause, a failure): it republishes in the
background, so the change itself never waits on Slack.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from bridge.model import Account, ChannelMapping, MappingKind, OutboxState, SlackMember
from bridge.ports import AccountReads, Clock, MappingLookups, OutboxListings, SlackClient

log = logging.getLogger("bridge.home")

# action_ids of the Home's buttons (the adapter routes clicks by them)
CONNECT_ACTION = "xdm_home_connect"  # Connect and Reconnect: both start /xdm connect's flow
DISCONNECT_ACTION = "xdm_home_disconnect"  # asks to confirm first (bridge.confirm)
UNLINK_ACTION = "xdm_home_unlink"  # value: the channel id; asks to confirm first
NEW_BRIDGE_ACTION = "xdm_home_new_bridge"  # opens the same modal as /xdm with no text
ADMIN_TTL = 300.0  # seconds an answer of users.info (is_admin / is_owner) is reused for the Home
MAX_CHANNELS_SHOWN = 40  # a Home holds 100 blocks; each channel takes two


class HomeStore(AccountReads, MappingLookups, OutboxListings, Protocol):
    """The roles the App Home reads: accounts, mappings, each channel's outbox summary."""


@dataclass(frozen=True)
class WorkspaceSettings:
    """What an admin's Home shows of the operator's settings."""

    admin_only: bool = False
    allowed_users: int = 0
    retention_days: int = 30
    relay_threads: str = "all"
    relay_edits: str = "correction"


@dataclass(frozen=True)
class ChannelState:
    """One bridged channel as its owner's Home shows it."""

    mapping: ChannelMapping
    waiting: int = 0  # Slack → X messages not yet sent
    failed: int = 0  # messages X will never get (marked ⚠️ in the channel)
    last_activity: float | None = None  # the newest message sent to X or posted from X


@dataclass(frozen=True)
class WorkspaceFacts:
    """An admin's view of the workspace."""

    settings: WorkspaceSettings
    channels: int
    accounts: int


@dataclass(frozen=True)
class HomeFacts:
    """Everything one person's Home shows."""

    team_id: str
    user_id: str
    account: Account | None
    channels: tuple[ChannelState, ...] = ()
    workspace: WorkspaceFacts | None = None  # only for workspace admins and owners
    can_connect: bool = True  # False when the bridge cannot run X's OAuth (no PUBLIC_URL)


class Activity(Protocol):
    """Role store: when a channel last carried a message (either way)."""

    async def last_activity(self, team_id: str, channel_id: str) -> float | None: ...


class HomeViews(Protocol):
    """The Slack call that shows a Home (``views.publish``)."""

    async def publish_home(self, team_id: str, user_id: str, view: dict[str, Any]) -> None: ...


# -- the view (pure) ---------------------------------------------------------------


def _section(text: str, accessory: dict[str, Any] | None = None) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "section", "text": {"type": "mrkdwn", "text": text}}
    if accessory is not None:
        block["accessory"] = accessory
    return block


def _button(action_id: str, text: str, value: str = "", style: str | None = None) -> dict[str, Any]:
    button: dict[str, Any] = {
        "type": "button",
        "action_id": action_id,
        "text": {"type": "plain_text", "text": text},
        "value": value or action_id,
    }
    if style:
        button["style"] = style
    return button


def _header(text: str) -> dict[str, Any]:
    return {"type": "header", "text": {"type": "plain_text", "text": text}}


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}


def when(epoch: float | None, now: float) -> str:
    """``today 14:05 UTC``, ``3 Dec 09:12 UTC``, or ``never``."""
    if epoch is None:
        return "never"
    try:
        moment = datetime.fromtimestamp(epoch, UTC)
        today = datetime.fromtimestamp(now, UTC)
    except (OverflowError, ValueError, OSError):
        return "unknown"
    if moment.date() == today.date():
        return f"today {moment:%H:%M} UTC"
    return f"{moment.day} {moment:%b} {moment:%H:%M} UTC"


def state_line(channel: ChannelState, account: Account | None, now: float) -> str:
    """A bridged channel's state in words: paused, failed, waiting, or working."""
    mapping = channel.mapping
    parts: list[str] = []
    if mapping.held_for is not None:
        parts.append(f"*paused*: bridged to @{mapping.held_for_username or mapping.held_for}'s conversation")
    elif mapping.paused_at is not None:
        parts.append("*paused*: the X account was disconnected; messages wait for a reconnection")
    elif account is not None and account.needs_reconnect:
        parts.append("*waiting*: the X account needs reconnecting")
    elif mapping.kind is MappingKind.GROUP and mapping.conversation_id is None:
        parts.append("*waiting*: the X group is created with the first message")
    else:
        parts.append("active")
    if channel.waiting:
        parts.append(f"{channel.waiting} waiting to go to X")
    if channel.failed:
        parts.append(f"*{channel.failed} failed* (marked :warning: in the channel)")
    parts.append(f"last activity {when(channel.last_activity, now)}")
    return " · ".join(parts)


def describe_target(mapping: ChannelMapping) -> str:
    """What a channel is bridged to, in words (no raw ids where a handle is known)."""
    if mapping.kind is MappingKind.DM:
        who = f"@{mapping.participant_username}" if mapping.participant_username else "one person"
        return f"1-to-1 DMs with {who}"
    if mapping.kind is MappingKind.GROUP:
        return "a new X group" if mapping.conversation_id is None else "an X group"
    return "an X group" if mapping.conversation_id and "-" not in mapping.conversation_id else "an X DM"


def _account_blocks(facts: HomeFacts) -> list[dict[str, Any]]:
    account = facts.account
    if account is None or account.disconnected:
        text = "*Your X account*\nNot connected. Connect it to bridge channels to X DMs."
        if not facts.can_connect:
            return [_section(text + "\n_Connecting is not set up on this bridge (PUBLIC_URL)._")]
        return [_section(text, _button(CONNECT_ACTION, "Connect", style="primary"))]
    state = " · *needs reconnecting*" if account.needs_reconnect else ""
    blocks = [_section(f"*Your X account*\n@{account.x_username}{state}")]
    buttons = [_button(DISCONNECT_ACTION, "Disconnect", style="danger")]
    if facts.can_connect:
        style = "primary" if account.needs_reconnect else None
        buttons.insert(0, _button(CONNECT_ACTION, "Reconnect", style=style))
    blocks.append({"type": "actions", "block_id": "xdm_home_account", "elements": buttons})
    return blocks


def _channel_blocks(facts: HomeFacts, now: float) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = [_header("Your bridged channels")]
    if not facts.channels:
        blocks.append(_section("None yet. Run `/xdm` in a channel the bridge's bot is in."))
    for channel in facts.channels[:MAX_CHANNELS_SHOWN]:
        mapping = channel.mapping
        text = (
            f"<#{mapping.channel_id}> → {describe_target(mapping)}\n{state_line(channel, facts.account, now)}"
        )
        unlink = _button(UNLINK_ACTION, "Unlink", mapping.channel_id)
        blocks.append(_section(text, unlink))
    hidden = len(facts.channels) - MAX_CHANNELS_SHOWN
    if hidden > 0:
        blocks.append(_context(f"And {hidden} more; `/xdm status` in a channel tells its state."))
    return blocks


def _workspace_blocks(workspace: WorkspaceFacts) -> list[dict[str, Any]]:
    settings = workspace.settings
    if settings.admin_only:
        who = "workspace admins and owners only (XDM_ADMIN_ONLY)"
    elif settings.allowed_users:
        who = f"{settings.allowed_users} listed people and admins (XDM_ALLOWED_USERS)"
    else:
        who = "everyone"
    fields = [
        f"*Who may bridge*\n{who}",
        f"*Kept for*\n{settings.retention_days} days (RETENTION_DAYS)",
        f"*Thread replies sent*\n{settings.relay_threads} (RELAY_THREADS)",
        f"*Edits*\n{settings.relay_edits} (RELAY_EDITS)",
        f"*Bridged channels*\n{workspace.channels}",
        f"*Connected X accounts*\n{workspace.accounts}",
    ]
    return [
        {"type": "divider"},
        _header("Workspace settings (admins)"),
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]},
        _context("Set by the bridge's operator in its environment; see the README."),
    ]


def home_view(facts: HomeFacts, now: float) -> dict[str, Any]:
    """The Home tab of ``facts.user_id``, as ``views.publish`` takes it."""
    blocks: list[dict[str, Any]] = [_header("xdm-bridge: Slack ↔ X DMs")]
    blocks += _account_blocks(facts)
    blocks.append({"type": "divider"})
    blocks += _channel_blocks(facts, now)
    if facts.account is not None and not facts.account.disconnected:
        new = _button(NEW_BRIDGE_ACTION, "Bridge a channel")
        blocks.append(_section("Bridge a channel to X: run `/xdm` in it, or pick people here.", new))
    if facts.workspace is not None:
        blocks += _workspace_blocks(facts.workspace)
    return {"type": "home", "callback_id": "xdm_home", "blocks": blocks}


# -- gathering and publishing ---------------------------------------------------------


def owned_by(mapping: ChannelMapping, user_id: str, account: Account | None) -> bool:
    """A mapping is someone's when they made it or it sends as their X account."""
    return mapping.created_by == user_id or (account is not None and mapping.account_id == account.id)


class HomeService:
    """Builds and publishes Homes; republishes them when what they show changes."""

    def __init__(
        self,
        *,
        store: HomeStore,
        slack: SlackClient,
        views: HomeViews,
        activity: Activity,
        clock: Clock,
        settings: WorkspaceSettings,
        spawn: Callable[[Awaitable[None], str], None],
        can_connect: bool = True,
    ) -> None:
        self._store = store
        self._slack = slack
        self._views = views
        self._activity = activity
        self._clock = clock
        self._settings = settings
        self._spawn = spawn
        self._can_connect = can_connect
        self._admins: dict[tuple[str, str], tuple[SlackMember | None, float]] = {}

    async def facts(self, team_id: str, user_id: str) -> HomeFacts:
        """What ``user_id`` of ``team_id`` sees on their Home."""
        account = await self._store.account_for_user(team_id, user_id)
        mappings = await self._store.find_mappings(team_id=team_id)
        mine = [m for m in mappings if owned_by(m, user_id, account)]
        channels = tuple([await self._channel(m) for m in sorted(mine, key=lambda m: m.created_at)])
        workspace = None
        if await self._is_admin(team_id, user_id):
            accounts = await self._store.find_accounts(team_id=team_id)
            connected = sum(1 for a in accounts if not a.disconnected)
            workspace = WorkspaceFacts(self._settings, len(mappings), connected)
        return HomeFacts(team_id, user_id, account, channels, workspace, self._can_connect)

    async def _channel(self, mapping: ChannelMapping) -> ChannelState:
        summary = await self._store.outbox_summary(mapping.team_id, mapping.channel_id)
        last = await self._activity.last_activity(mapping.team_id, mapping.channel_id)
        return ChannelState(mapping, summary["pending"], summary["counts"].get(OutboxState.FAILED, 0), last)

    async def _is_admin(self, team_id: str, user_id: str) -> bool:
        """users.info's is_admin / is_owner, reused for ``ADMIN_TTL`` (a Home is opened often)."""
        now = self._clock.now()
        cached = self._admins.get((team_id, user_id))
        if cached is None or now - cached[1] > ADMIN_TTL:
            member = await self._slack.member(team_id, user_id)
            cached = (member, now)
            if member is not None:  # Slack not answering is asked again next time
                self._admins[(team_id, user_id)] = cached
        member = cached[0]
        return member is not None and member.is_admin_or_owner

    async def publish(self, team_id: str, user_id: str) -> None:
        """Build and publish one Home. A failure is logged, never raised: a Home is a view."""
        try:
            view = home_view(await self.facts(team_id, user_id), self._clock.now())
            await self._views.publish_home(team_id, user_id, view)
        except Exception as exc:
            log.warning(
                "App Home not published",
                extra={"team": team_id, "user": user_id, "error": type(exc).__name__},
            )

    def changed(self, team_id: str, *user_ids: str) -> None:
        """Something these people's Homes show changed: republish them in the background."""
        for user_id in dict.fromkeys(u for u in user_ids if u):
            self._spawn(self.publish(team_id, user_id), f"xdm-home-{user_id}")

    async def mapping_changed(self, mapping: ChannelMapping) -> None:
        """A channel was bridged, unlinked, paused or failed: its owners' Homes change."""
        account = await self._store.get_account(mapping.account_id)
        self.changed(mapping.team_id, mapping.created_by, account.slack_user_id if account else "")

    def account_changed(self, account: Account) -> None:
        """An account was connected or disconnected: its owner's Home changes."""
        self.changed(account.team_id, account.slack_user_id)

    async def accounts_changed(self, accounts: Sequence[Account]) -> None:
        for account in accounts:
            self.account_changed(account)
