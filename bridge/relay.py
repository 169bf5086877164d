"""Accepting Slack messages for relay: filter, dedupe, commit to the outbox.

This runs before Slack gets its HTTP 200, so it only decides and commits; the
delivery worker does everything slow (names, translation, X).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from bridge.model import IncomingMessage, MessageChange, OutboxItem
from bridge.ports import Clock, MappingStore, RelayStore
from bridge.settings import EditPolicy, ThreadPolicy

log = logging.getLogger("bridge.relay")

# Message subtypes that carry something a person wrote. Everything else
# (joins, topic changes, bot posts, edits and deletes) is not a new message.
RELAYED_SUBTYPES = frozenset({None, "thread_broadcast", "file_share", "me_message"})
# Said (ephemeral) to a member of another workspace who writes in a bridged shared channel.
OTHER_WORKSPACE = (
    "This channel is bridged to X by the workspace that shares it with you, with the X account of one "
    "of its members. Messages from members of other workspaces or organisations are not sent to X: "
    "your message stays in Slack only."
)


class RelayingStore(RelayStore, MappingStore, Protocol):
    """The roles the relay uses: taking Slack's messages in, by their channel's mapping."""


class Relay:
    """Turns Slack message events into outbox rows.

    ``ready`` is told about new work: the new row itself when it can be sent right away
    (its channel's head), else None (the worker looks for it).
    """

    def __init__(
        self,
        store: RelayingStore,
        clock: Clock,
        ready: Callable[[OutboxItem | None], None],
        *,
        threads: ThreadPolicy = "all",
        edits: EditPolicy = "correction",
    ) -> None:
        self._store = store
        self._clock = clock
        self._ready = ready
        self._threads = threads
        self._edits = edits
        self.on_accepted: Callable[[IncomingMessage], None] | None = None
        # Told when a message is refused with a reason its author should read (``OTHER_WORKSPACE``).
        self.on_refused: Callable[[IncomingMessage, str], None] | None = None

    def wanted(self, message: IncomingMessage) -> bool:
        """Would this message be relayed if its channel is mapped?"""
        if message.is_from_bot or message.subtype not in RELAYED_SUBTYPES:
            return False
        is_reply = message.thread_ts is not None and message.thread_ts != message.ts
        if is_reply and message.subtype != "thread_broadcast":
            return self._threads == "all"
        if is_reply:
            return self._threads in ("all", "broadcast")
        return True

    async def accept(self, message: IncomingMessage) -> bool:
        """Commit ``message`` to the outbox if it should go to X; True when newly accepted."""
        if not self.wanted(message):
            return False
        if message.from_other_workspace:
            # Slack Connect: the sending X account belongs to a member of this workspace, who did
            # not speak for people of another organisation (nor did they consent to X).
            if self.on_refused is not None and await self._store.get_mapping(
                message.team_id, message.channel_id
            ):
                log.info(
                    "message from another workspace not relayed",
                    extra={"team": message.team_id, "channel": message.channel_id},
                )
                self.on_refused(message, OTHER_WORKSPACE)
            return False
        accepted = await self._store.accept_if_mapped(message, self._clock.now())
        if accepted is None:
            return False
        if accepted.new:
            log.info(
                "accepted for relay",
                extra={"team": message.team_id, "channel": message.channel_id, "slack_ts": message.ts},
            )
            self._ready(accepted.head)
            if self.on_accepted is not None:
                self.on_accepted(message)
        else:
            log.info(
                "duplicate delivery ignored",
                extra={"team": message.team_id, "channel": message.channel_id, "event_id": message.event_id},
            )
        return accepted.new

    async def edit(self, change: MessageChange) -> str:
        """A ``message_changed`` event. Only a real change of text is an edit (unfurls are not).

        Returns what happened: "ignored", "unknown" (never relayed), "updated" (not yet sent,
        so the new text simply replaces the old) or "queued" (a correction will follow).
        """
        if self._edits == "ignore" or change.bot_id is not None or change.text == change.previous_text:
            return "ignored"
        if await self._store.get_mapping(change.team_id, change.channel_id) is None:
            return "ignored"
        source = {"text": change.text, "blocks": list(change.blocks), "user_id": change.user_id}
        outcome = await self._store.accept_edit(
            change.team_id, change.channel_id, change.ts, change.event_ts, source, self._clock.now()
        )
        log.info("edit", extra={"team": change.team_id, "channel": change.channel_id, "outcome": outcome})
        if outcome == "queued":
            self._ready(None)
        return outcome

    async def delete(self, team_id: str, channel_id: str, deleted_ts: str, event_ts: str) -> str:
        """A ``message_deleted`` event: delete X's copies, or cancel parts not yet sent."""
        outcome = await self._store.accept_delete(
            team_id, channel_id, deleted_ts, event_ts, self._clock.now()
        )
        log.info("delete", extra={"team": team_id, "channel": channel_id, "outcome": outcome})
        if outcome == "queued":
            self._ready(None)
        return outcome
