"""X's push, kept working: the webhook registered and valid, every account subscribed,
deliveries passed on to the reader (a push announces DMs; a read of X says where they
belong), and what was missed while down replayed.

Push only speeds things up. Polling never stops (push may miss group conversations,
and a delivery may be dropped); with push working the poller merely slows to a safety
net. Every way in meets in the store, where ``dm_event_id`` is unique.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bridge.chat_inbound import ChatPush, ChatPushRefused
from bridge.errors import XAuthRevoked, XError
from bridge.inbound import Inbound
from bridge.model import DM_PUSH_TYPES, Account, DmEvent, InboundOrigin, PushEventType
from bridge.ports import AccountReads, Clock, InboundPosting, InboundStatus, MappingLookups, PollLookups, XApp
from bridge.tokens import TokenManager

log = logging.getLogger("bridge.push")

REPLAY_HORIZON = 24 * 3600.0  # X replays the last 24 hours only
RECHECK_EVERY = 3600.0  # X re-checks hourly; so do we (re-validating if X turned it off)


class PushStore(AccountReads, PollLookups, MappingLookups, InboundPosting, InboundStatus, Protocol):
    """The roles push uses: whose accounts a delivery is for, what was relayed, push's last delivery."""


@dataclass
class PushState:
    """What ``/xdm status``, ``doctor`` and ``xdm-bridge webhook status`` show."""

    url: str
    webhook_id: str | None = None
    valid: bool = False
    subscribed: set[int] = field(default_factory=set)
    last_delivery_at: float | None = None
    last_error: str | None = None
    replays: list[str] = field(default_factory=list)


class Push:
    """Registration, subscriptions, replay, and taking deliveries in."""

    def __init__(
        self,
        store: PushStore,
        app: XApp,
        tokens: TokenManager,
        inbound: Inbound,
        clock: Clock,
        url: str,
        *,
        recheck_every: float = RECHECK_EVERY,
    ) -> None:
        self._store = store
        self._app = app
        self._tokens = tokens
        self._inbound = inbound
        self._clock = clock
        self._recheck_every = recheck_every
        self.state = PushState(url)
        self._stop = asyncio.Event()
        self._recheck = asyncio.Event()
        # Where a delivery's DMs go: this instance's reader, or (a standby) the leader's.
        self.on_pushed: Callable[[int, Sequence[DmEvent]], None] = inbound.rang

    def active(self, account_id: int) -> bool:
        """Push is delivering for this account (so polling may slow to a safety net)."""
        return self.state.valid and account_id in self.state.subscribed

    def recheck(self) -> None:
        """An account connected: subscribe it now."""
        self._recheck.set()

    async def run(self) -> None:
        """Set up, replay the downtime, then re-check hourly until ``stop`` (once set up, if
        ``stop`` came first)."""
        started = self._clock.now()
        await self.ensure()
        with contextlib.suppress(XError, XAuthRevoked):
            await self.replay_downtime(started)
        while not self._stop.is_set():
            self._recheck.clear()
            waits = [asyncio.ensure_future(self._stop.wait()), asyncio.ensure_future(self._recheck.wait())]
            await asyncio.wait(waits, timeout=self._recheck_every, return_when=asyncio.FIRST_COMPLETED)
            for waiting in waits:
                waiting.cancel()
            if not self._stop.is_set():
                await self.ensure()

    def stop(self) -> None:
        self._stop.set()

    def resume(self) -> None:
        """Allow ``run`` again after ``stop`` (an instance that leads again on PostgreSQL): the
        worker's, when it starts leading; not ``run``'s, so a ``stop`` before it began still ends it."""
        self._stop.clear()

    async def ensure(self) -> None:
        """The webhook exists and is valid; every connected account is subscribed to it."""
        try:
            await self._ensure_webhook()
            if self.state.webhook_id is not None and self.state.valid:
                await self._ensure_subscriptions(self.state.webhook_id)
            self.state.last_error = None
        except (XError, XAuthRevoked) as exc:
            self.state.last_error = str(exc)
            log.warning("X push is not set up; polling carries on", extra={"error": str(exc)})

    async def _ensure_webhook(self) -> None:
        mine = [w for w in await self._app.list_webhooks() if w.get("url") == self.state.url]
        if not mine:
            created = await self._app.create_webhook(self.state.url)
            self.state.webhook_id, self.state.valid = str(created["id"]), bool(created.get("valid"))
            log.info("X webhook registered", extra={"webhook_id": self.state.webhook_id})
            return
        webhook = mine[0]
        self.state.webhook_id = str(webhook["id"])
        self.state.valid = bool(webhook.get("valid"))
        if not self.state.valid:
            self.state.valid = await self._app.validate_webhook(self.state.webhook_id)
            log.info("X webhook re-validated", extra={"valid": self.state.valid})

    async def _ensure_subscriptions(self, webhook_id: str) -> None:
        existing = {
            (str(s.get("event_type")), str((s.get("filter") or {}).get("user_id")))
            for s in await self._app.list_subscriptions()
            if str(s.get("webhook_id")) == webhook_id
        }
        subscribed: set[int] = set()
        for account in await self._store.list_accounts():
            if account.needs_reconnect:
                continue
            try:
                wanted: tuple[PushEventType, ...] = DM_PUSH_TYPES
                if self._inbound.chats is not None and await self._inbound.chats.has_keys(account):
                    wanted = (*DM_PUSH_TYPES, PushEventType.CHAT_RECEIVED)  # X bills each: only with keys
                for event_type in wanted:
                    if (event_type, account.x_user_id) not in existing:
                        subscribe = functools.partial(
                            self._subscribe,
                            event_type=event_type,
                            user_id=account.x_user_id,
                            webhook_id=webhook_id,
                        )
                        await self._tokens.call(account, subscribe)
                        log.info(
                            "subscribed to X push", extra={"account_id": account.id, "event": event_type}
                        )
                subscribed.add(account.id)
            except (XError, XAuthRevoked) as exc:
                log.warning(
                    "could not subscribe an account to push",
                    extra={"account_id": account.id, "error": str(exc)},
                )
        self.state.subscribed = subscribed

    async def _subscribe(self, token: str, *, event_type: str, user_id: str, webhook_id: str) -> None:
        await self._app.subscribe(token, event_type, user_id, webhook_id)

    async def replay_downtime(self, now: float) -> str | None:
        """Ask X to push again what it pushed since the last delivery we took (within 24 h)."""
        since = await self._store.latest_inbound_at(InboundOrigin.PUSH)
        if since is None or self.state.webhook_id is None or not self.state.valid:
            return None
        return await self.replay(max(since, now - REPLAY_HORIZON + 60.0), now)

    async def replay(self, start: float, end: float) -> str | None:
        if self.state.webhook_id is None:
            return None
        job = await self._app.replay(self.state.webhook_id, start, end)
        self.state.replays.append(job)
        log.info("X push replay requested", extra={"job_id": job, "from": start, "to": end})
        return job

    async def take(self, user_id: str, dms: Sequence[DmEvent]) -> int:
        """A verified delivery for the subscription of X user ``user_id``, announcing DMs: each
        of that user's accounts places them from X soon (``on_pushed``, ``Inbound.rang``: the
        push names no conversation). Returns how many accounts were told."""
        self.state.last_delivery_at = self._clock.now()
        # As polling: not for an account that is disconnected (its owner took the bridge's access
        # back, so its DMs are not kept) or must reconnect. Nothing is lost: push only speeds things
        # up, and the read from the kept cursor after reconnecting brings the same events.
        accounts: list[Account] = [
            a for a in await self._store.find_accounts(x_user_id=user_id) if not a.needs_reconnect
        ]
        # The bridge's own sends come back as dm.sent: their place is known (the message map), and
        # a read for them would spend X's small read budget on nothing new.
        news = [dm for dm in dms if await self._store.sent_from(dm.id) is None] if accounts else []
        if news:
            for account in accounts:
                self.on_pushed(account.id, news)
        return len(accounts)

    async def take_chat(self, user_id: str | None, pushes: Sequence[ChatPush]) -> int:
        """A verified delivery of X Chat events (``chat.received``): each is checked with the keys
        of the accounts that bridge its conversation (``user_id``'s, when the push names a
        subscriber), and a read of the account's conversations is rung (``on_pushed``), as a DM
        push's: the read posts it, in order, once. Returns how many did not verify (forged or
        tampered with: never posted; the caller refuses the push and counts them)."""
        self.state.last_delivery_at = self._clock.now()
        chats = self._inbound.chats
        if chats is None:
            return 0
        found = [await self._store.find_mappings(conversation_id=p.conversation_id) for p in pushes]
        if user_id is None:  # the accounts bridging these conversations only: never every token
            wanted = sorted({m.account_id for mappings in found for m in mappings if m.encrypted})
            candidates = await self._store.accounts_by_id(wanted)
        else:
            candidates = await self._store.find_accounts(x_user_id=user_id)
        accounts = {a.id: a for a in candidates if not a.needs_reconnect}
        refused = 0
        for push, mappings in zip(pushes, found, strict=True):
            bridging = sorted({m.account_id for m in mappings if m.encrypted and m.account_id in accounts})
            try:
                for account_id in bridging:
                    await chats.verify_push(accounts[account_id], push)
            except ChatPushRefused as exc:
                log.warning(
                    "an X Chat push was refused: its event does not verify",
                    extra={"conversation": push.conversation_id, "error": str(exc)},
                )
                refused += 1
                continue
            for account_id in bridging:
                self.on_pushed(account_id, ())
        return refused

    def describe(self) -> dict[str, Any]:
        return {
            "url": self.state.url,
            "webhook_id": self.state.webhook_id,
            "valid": self.state.valid,
            "subscribed_accounts": sorted(self.state.subscribed),
            "last_delivery_at": self.state.last_delivery_at,
            "last_error": self.state.last_error,
        }
