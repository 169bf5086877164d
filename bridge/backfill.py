"""X → Slack, the backfill: a newly bridged conversation's history, posted once, marked as history.

`/xdm link` writes the request with the mapping (``MappingStore.create_mapping``), so a crash
between the link and the read does not lose it. Each pass of the poller (``bridge/inbound.py``)
asks which histories are still wanted and reads them here: the last ``InboundConfig.backfill``
messages written before the channel was bridged, oldest first, from the reads the poller leaves
in reserve (a spent budget waits). A request is finished only once its history is queued; a
crash before reads it again, and the queue's unique key keeps what was queued from being queued
twice. What came after the link is the poller's.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from bridge.errors import XAuthRevoked, XError, XRateLimited, XRefused
from bridge.model import (
    Account,
    DmEvent,
    EventKind,
    EventPage,
    InboundEvent,
    InboundOrigin,
    XUser,
    inbound_event,
)
from bridge.ports import BackfillRequests, Clock, XClient
from bridge.tokens import TokenManager

if TYPE_CHECKING:
    from bridge.inbound import InboundConfig

log = logging.getLogger(__name__)

# One read of a conversation's page, within its endpoint's budget (``Inbound._counted_read``).
HistoryRead = Callable[[Account, Callable[[], Awaitable[tuple[EventPage, Any]]]], Awaitable[EventPage]]
# Queue events into the store for Slack; returns how many were new (``Inbound.take``).
Take = Callable[[int, list[InboundEvent]], Awaitable[int]]


class Backfill:
    """Reads the histories still wanted and queues them (in the leader's process, on the poller's
    passes)."""

    def __init__(
        self,
        store: BackfillRequests,
        x: XClient,
        tokens: TokenManager,
        clock: Clock,
        config: InboundConfig,
        read: HistoryRead,
        take: Take,
    ) -> None:
        self._store = store
        self._x = x
        self._tokens = tokens
        self._clock = clock
        self._config = config
        self._read = read
        self._take = take

    @property
    def wanted(self) -> bool:
        """Is a newly bridged conversation's history posted (``backfill`` messages of it)?"""
        return self._config.backfill > 0

    async def requests(self) -> dict[int, list[tuple[str, float]]]:
        """Per account, (conversation id, bridged at) of each history still wanted."""
        wanted: dict[int, list[tuple[str, float]]] = {}
        for account_id, conversation_id, bridged_at in await self._store.pending_backfills():
            wanted.setdefault(account_id, []).append((conversation_id, bridged_at))
        return wanted

    async def account(self, account: Account, wanted: list[tuple[str, float]]) -> float | None:
        """Queue the history of each conversation ``wanted`` for the account, oldest first.

        Returns when to try again what could not be read now (X's window spent, or X failing),
        or None when every request was finished (queued, or X shows no history to this account).
        """
        retry_at: float | None = None
        for conversation_id, bridged_at in wanted:
            if self._config.backfill <= 0:
                await self._store.finish_backfill(account.id, conversation_id, bridged_at)
                continue
            ids = {"account_id": account.id, "conversation": conversation_id}
            try:
                messages, users = await self.history(account, conversation_id, bridged_at)
            except XRateLimited as exc:
                return _sooner(retry_at, exc.reset_at)  # the rest wait for the same window
            except XRefused as exc:
                # X will not show this conversation to this account: there is no history to post.
                log.warning("could not read a conversation's history", extra={**ids, "error": str(exc)})
                await self._store.finish_backfill(account.id, conversation_id, bridged_at)
                continue
            except (XError, XAuthRevoked) as exc:
                # Kept: read again later (after a reconnect, if the account needs one).
                log.warning(
                    "reading a conversation's history failed; trying again", extra={**ids, "error": str(exc)}
                )
                retry_at = _sooner(retry_at, self._clock.now() + self._config.min_interval * 4)
                continue
            events = [inbound_event(e, users, InboundOrigin.BACKFILL, bridged_at) for e in messages]
            queued = await self._take(account.id, events)
            await self._store.finish_backfill(account.id, conversation_id, bridged_at)
            log.info("history queued for Slack", extra={**ids, "count": queued})
        return retry_at

    async def history(
        self, account: Account, conversation_id: str, bridged_at: float
    ) -> tuple[list[DmEvent], dict[str, XUser]]:
        """The last ``backfill`` messages written before the conversation was bridged, oldest
        first. X shows the newest first, and what came after the link (the poller's) is among
        them: page back until there are enough, X has no more, or ``max_pages`` were read."""
        size = self._config.backfill
        older: dict[str, DmEvent] = {}
        users: dict[str, XUser] = {}
        token: str | None = None
        for _ in range(self._config.max_pages):

            async def call(token: str | None = token) -> tuple[EventPage, Any]:
                return await self._tokens.call(
                    account,
                    lambda t: self._x.dm_events(
                        t, max_results=size, conversation_id=conversation_id, pagination_token=token
                    ),
                )

            try:
                page = await self._read(account, call)
            except XRefused:
                if token is None:
                    raise
                break  # X no longer takes its own token: what was read is the history
            users.update(page.users)
            for event in page.events:
                if event.kind is EventKind.MESSAGE_CREATE and (event.created_at or 0.0) < bridged_at:
                    older[event.id] = event
            if len(older) >= size or page.next_token is None or page.next_token == token:
                break
            token = page.next_token
        return sorted(older.values(), key=lambda e: int(e.id))[-size:], users


def _sooner(at: float | None, other: float) -> float:
    return other if at is None else min(at, other)
