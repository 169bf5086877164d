"""Accepting Slack messages for relay: filter, dedupe, commit to the outbox.

This runs before Slack gets its HTTP 200, so it only decides and commits; the
delivery worker does everything slow (names, translation, X).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from bridge.model import IncomingMessage
from bridge.ports import Clock, Store
from bridge.settings import ThreadPolicy

log = logging.getLogger("bridge.relay")

# Message subtypes that carry something a person wrote. Everything else
# (joins, topic changes, bot posts, edits and deletes) is not a new message.
RELAYED_SUBTYPES = frozenset({None, "thread_broadcast", "file_share", "me_message"})


class Relay:
    """Turns Slack message events into outbox rows."""

    def __init__(
        self, store: Store, clock: Clock, wake: Callable[[], None], *, threads: ThreadPolicy = "all"
    ) -> None:
        self._store = store
        self._clock = clock
        self._wake = wake
        self._threads = threads
        self.on_accepted: Callable[[IncomingMessage], None] | None = None

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
        mapping = await self._store.get_mapping(message.team_id, message.channel_id)
        if mapping is None:
            return False
        accepted = await self._store.accept(message, mapping, self._clock.now())
        if accepted:
            log.info(
                "accepted for relay",
                extra={"team": message.team_id, "channel": message.channel_id, "slack_ts": message.ts},
            )
            self._wake()
            if self.on_accepted is not None:
                self.on_accepted(message)
        else:
            log.info(
                "duplicate delivery ignored",
                extra={"team": message.team_id, "channel": message.channel_id, "event_id": message.event_id},
            )
        return accepted
