"""The delivery worker: drains the outbox into X, exactly once, in order, within budget.

Rules it keeps:
- only the oldest unfinished row of a channel (its *head*) may be sent, so a
  channel's messages reach X in the order they were posted;
- one send in flight per X account (the budget is then exact), accounts in
  parallel; channels that share an account take turns (least recently served first);
  a channel with its account to itself goes straight on to its next row when one is
  sent, without waiting for the next scan;
- a send waits for nothing it does not need: the ✅ and friends go to Slack after it;
- a row is marked ``sending`` (committed) before its POST; a row found in that
  state later (a crash, a timeout) is reconciled against the conversation's
  recent events before any resend, because X has no idempotency key;
- nothing accepted is dropped: rate limits and reconnections make rows wait,
  transient errors back off, only X's permanent refusals fail a row.
- one row never stops another: a row that cannot be read or rendered is failed with
  its reason (its author told) and the rest flows; every retry path waits first (a
  crashed task pauses its account), so nothing spins against X;
- every X call goes through the token manager's one refresh-on-401 path;
- an unclear read-back (a refusal, an error, garbage) never concludes "not sent": the
  row stays ``sending`` and reads again later;
- any 2xx is a send, even one that does not say which DM X made: read back for its id, else
  recorded as sent without one, never sent again;
- a row deleted in Slack while ``sending`` is only read back, never sent again.

This module keeps the scheduling (turns per account, one head in flight per channel, rate
pauses) and the one place a row's errors are settled. One row's delivery is delegated:
``bridge.sender`` (legacy DMs and their files), ``bridge.chat_sender`` (X Chat),
``bridge.reconcile`` (the read-back before a resend), ``bridge.render`` (Slack's message as
DMs) and ``bridge.outcomes`` (sent, failed, retried, parked), Slack's side to ``bridge.feedback``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol

from bridge.budget import Budget
from bridge.chat_sender import ChatSender
from bridge.errors import (
    Failure,
    Undeliverable,
    XAuthExpired,
    XAuthRevoked,
    XRateLimited,
    XRefused,
    XTransient,
)
from bridge.feedback import HOURGLASS, EventHook, FailedHook, Feedback, ids
from bridge.media import FileUnavailable
from bridge.model import OutboxItem, OutboxState, Unreadable
from bridge.outcomes import LOOK_AGAIN, UNTIL_RECONNECTED, After, Outcomes, hhmm
from bridge.ports import (
    Clock,
    MappingStore,
    OutboxMediaStore,
    OutboxStore,
    RelayStore,
    SlackClient,
    UpkeepStore,
    XClient,
)
from bridge.reconcile import Reconciler
from bridge.render import Renderer
from bridge.scheduler import AcksFirst, Lanes, WakeLoop, drain
from bridge.sender import Sender
from bridge.tokens import TokenManager
from bridge.xchat import ChatSessions, XChatError

log = logging.getLogger("bridge.delivery")

CRASH_PAUSE = 1.0  # an account whose task crashed (a bug) is left alone this long


class DeliveryStore(OutboxStore, OutboxMediaStore, RelayStore, MappingStore, UpkeepStore, Protocol):
    """The roles Delivery uses: the outbox and its files, what was relayed, a group's mapping."""


@dataclass(frozen=True)
class DeliveryConfig:
    """Knobs, mostly for tests; the defaults are production values."""

    relay_format: str = "{name}: {text}"
    retry_base: float = 2.0
    retry_cap: float = 300.0
    hourglass_after: float = 5.0
    max_parallel_accounts: int = 32
    rescan_every: float = 30.0
    min_scan_interval: float = 0.005
    #: At start, the ✅ of messages sent this recently is added again (a kill may have cut it off).
    recheck_sent_within: float = 300.0
    recheck_sent_limit: int = 50
    #: A row of an encrypted conversation without usable X Chat keys looks again this often.
    chat_wait: float = 300.0


class Delivery:
    """Owns the background task that sends outbox rows."""

    def __init__(
        self,
        store: DeliveryStore,
        x: XClient,
        slack: SlackClient,
        tokens: TokenManager,
        budget: Budget,
        clock: Clock,
        config: DeliveryConfig | None = None,
        chats: ChatSessions | None = None,
        acks: AcksFirst | None = None,
    ) -> None:
        self._store = store
        # Slack's acks go first: each send and each reaction waits its turn while they queue.
        self._acks = acks
        self._tokens = tokens
        self._budget = budget
        self._clock = clock
        self._config = config or DeliveryConfig()
        self._loop = WakeLoop(
            "delivery scheduling", clock, self._schedule, min_gap=self._config.min_scan_interval
        )
        self._stopping = False
        self._serving: dict[int, tuple[str, str]] = {}  # busy account -> the channel it is sending
        self._recheck: set[int] = set()  # busy accounts offered work: scan when their task ends
        self._contended: set[int] = set()  # accounts with more than one channel due (last scan)
        self._lanes: Lanes[int, bool] = Lanes("deliver")  # by account: one send at a time each
        self._followups: set[asyncio.Task[None]] = set()
        self._served: dict[tuple[str, str], int] = defaultdict(int)
        self._cooldown: dict[int, float] = {}  # account -> when a crashed task's account may start again
        self._turn = 0
        self._feedback = Feedback(
            store, slack, self._config.recheck_sent_within, self._config.recheck_sent_limit, clock
        )
        self._outcomes = Outcomes(
            store,
            self._feedback,
            budget,
            clock,
            self._follow_up,
            self._config.retry_base,
            self._config.retry_cap,
        )
        self._reconciler = Reconciler(store, x, tokens, budget, clock)
        self._renderer = Renderer(store, slack, self._outcomes, self._config.relay_format)
        self._sender = Sender(
            store, x, slack, tokens, budget, clock, self._outcomes, self._renderer, self._reconciler
        )
        self._chat = ChatSender(
            store, chats, slack, tokens, budget, clock, self._outcomes, self._renderer, self._config.chat_wait
        )

    # -- control -----------------------------------------------------------

    @property
    def on_event(self) -> EventHook | None:
        """Told each row sent or failed, as ``("sent" | "failed", item)``."""
        return self._feedback.on_event

    @on_event.setter
    def on_event(self, hook: EventHook | None) -> None:
        self._feedback.on_event = hook

    @property
    def on_failed(self) -> FailedHook | None:
        """Told why a row failed for good, as a type (metrics count it; sentences may change)."""
        return self._feedback.on_failed

    @on_failed.setter
    def on_failed(self, hook: FailedHook | None) -> None:
        self._feedback.on_failed = hook

    def wake(self) -> None:
        """Something changed (new rows, a reconnection): look again now."""
        self._loop.wake()

    @property
    def heartbeat(self) -> float:
        """When the scheduler last finished a look (health checks read it)."""
        return self._loop.heartbeat

    def offer(self, head: OutboxItem | None) -> None:
        """New work. A channel's head whose account is idle starts at once, with no scan;
        anything else (or None) is left to the scheduler's next look."""
        if head is None:
            self.wake()
        elif self._may_start(head):
            self._start(head)
        elif self._serving.get(head.account_id) == (head.team_id, head.channel_id):
            # That channel's task will reach this row itself; if it stops first, it scans.
            self._recheck.add(head.account_id)
        else:
            self.wake()

    def _may_start(self, item: OutboxItem) -> bool:
        """May a new task start ``item`` now, as the scheduler would?"""
        return (
            item.account_id not in self._serving
            and len(self._serving) < self._config.max_parallel_accounts
            and self._clear_to_send(item)
        )

    def _clear_to_send(self, item: OutboxItem) -> bool:
        """Due, within budget, and no other channel of its account waiting for a turn."""
        now = self._clock.now()
        return not (
            self._stopping
            or item.account_id in self._contended
            or item.next_attempt_at > now
            or self._cooldown.get(item.account_id, 0.0) > now
            or self._budget.blocked_until(item.account_id, now) is not None
        )

    async def run(self) -> None:
        """The worker loop; returns when ``stop`` is called."""
        self._follow_up(self._feedback.recheck_recent_sends(), None)
        self._follow_up(self._feedback.tell_untold_failures(), None)
        await self._loop.run()

    async def stop(self, grace: float = 20.0) -> None:
        """Stop taking new sends; let in-flight sends finish for up to ``grace`` seconds.

        A send cut off here stays ``sending`` in the database and is reconciled
        against X on the next start, so abandoning it is safe.
        """
        self._stopping = True
        self._loop.stop()
        deadline = self._clock.now() + grace
        abandoned = await self._lanes.drain(grace)
        if abandoned:
            log.warning("abandoned work at shutdown", extra={"what": "in-flight sends", "count": abandoned})
        abandoned = await drain(self._followups, deadline - self._clock.now())
        if abandoned:
            log.warning("abandoned work at shutdown", extra={"what": "Slack reactions", "count": abandoned})

    @property
    def in_flight(self) -> int:
        return len(self._lanes)

    # -- scheduling --------------------------------------------------------

    async def _schedule(self) -> float:
        """Start what may start; return how long to sleep before looking again."""
        if self._acks is not None:
            await self._acks.turn()  # a look is relay work too (each accepted message wakes one)
        now = self._clock.now()
        heads = await self._store.outbox_heads()
        by_account: dict[int, list[OutboxItem]] = defaultdict(list)
        wake_at = now + self._config.rescan_every
        for item in heads:
            if isinstance(item, Unreadable):
                try:
                    await self._outcomes.fail(item, Undeliverable(item.reason, Failure.OTHER))
                    wake_at = now  # its channel's next row is the head now
                except Exception:
                    log.exception("could not fail an unreadable outbox row", extra={"outbox_id": item.id})
                    wake_at = min(wake_at, now + CRASH_PAUSE)
                continue
            if item.next_attempt_at > now:
                if item.next_attempt_at < UNTIL_RECONNECTED:
                    wake_at = min(wake_at, item.next_attempt_at)
                continue
            by_account[item.account_id].append(item)
        self._contended = {
            account_id
            for account_id, items in by_account.items()
            if len({(i.team_id, i.channel_id) for i in items}) > 1
        }

        for account_id, items in by_account.items():
            if account_id in self._serving:
                continue
            cooldown = self._cooldown.get(account_id, 0.0)
            if cooldown > now:
                wake_at = min(wake_at, cooldown)
                continue
            self._cooldown.pop(account_id, None)
            blocked = self._budget.blocked_until(account_id, now)
            if blocked is not None:
                wake_at = min(wake_at, blocked)
                await self._hold(items, now, blocked)
                wake_at = min(wake_at, *(self._hourglass_due(i, now) for i in items))
                continue
            if len(self._serving) >= self._config.max_parallel_accounts:
                break
            item = min(items, key=lambda i: (self._served[(i.team_id, i.channel_id)], i.seq, i.part))
            self._start(item)
        return wake_at - now

    def _serve(self, item: OutboxItem) -> None:
        """The item's channel has its turn; its account is busy until the task sending it ends."""
        self._turn += 1
        self._served[(item.team_id, item.channel_id)] = self._turn
        self._serving[item.account_id] = (item.team_id, item.channel_id)

    def _start(self, item: OutboxItem) -> None:
        """A task for the item's account: it sends this item, then its channel's next while it may."""
        account_id = item.account_id
        self._serve(item)

        def done(t: asyncio.Task[bool]) -> None:
            self._serving.pop(account_id, None)
            failed = not t.cancelled() and t.exception() is not None
            if failed:  # _deliver handles every error; this would be a bug in the worker itself
                log.error("delivery task failed", exc_info=t.exception())
                # Its row did not move: starting it again at once would spin against X.
                self._cooldown[account_id] = self._clock.now() + CRASH_PAUSE
            # Look again unless the task emptied its channel and nothing else waits for the account.
            waiting = account_id in self._recheck or account_id in self._contended
            self._recheck.discard(account_id)
            if waiting or failed or t.cancelled() or t.result():
                self._loop.wake()

        self._lanes.start(account_id, self._drive(item), done, label=str(item.id))

    async def _hold(self, items: list[OutboxItem], now: float, until: float) -> None:
        """Mark heads held for budget as waiting; past a few seconds, show the hourglass."""
        for item in items:
            if item.state is OutboxState.QUEUED:
                await self._store.reschedule(
                    item.id,
                    OutboxState.WAITING,
                    item.next_attempt_at,
                    f"waiting for X's rate limit until {hhmm(until)}",
                    held_since=now,
                )
            held_since = item.held_since if item.held_since is not None else now
            if not item.hourglass and now - held_since >= self._config.hourglass_after:
                await self._store.set_hourglass(item.id, True)
                await self._feedback.react(item, HOURGLASS)

    def _hourglass_due(self, item: OutboxItem, now: float) -> float:
        if item.hourglass:
            return now + self._config.rescan_every
        held_since = item.held_since if item.held_since is not None else now
        return max(now, held_since + self._config.hourglass_after)

    def _follow_up(self, work: Awaitable[None], item: OutboxItem | None) -> None:
        """Run Slack-side work after a send without holding the account's next send."""
        task = asyncio.ensure_future(self._in_turn(work))
        task.set_name(f"follow-up-{item.id if item else 'start'}")
        self._followups.add(task)
        task.add_done_callback(self._followups.discard)

    async def _in_turn(self, work: Awaitable[None]) -> None:
        if self._acks is not None:
            await self._acks.turn()
        await work

    # -- one send ----------------------------------------------------------

    async def _drive(self, item: OutboxItem) -> bool:
        """Deliver ``item``, then its channel's next rows while the account has nothing else due.

        Returns whether the scheduler should look again (anything but an emptied channel)."""
        current = item
        while True:
            if self._acks is not None:
                await self._acks.turn()
            after = await self._deliver(current)
            following = self._next_in_turn(current, after.following)
            if following is None:
                return not after.settled or after.following is not None
            current = following

    def _next_in_turn(self, done: OutboxItem, following: OutboxItem | None) -> OutboxItem | None:
        """The channel's next row, if this task may send it now (the scheduler would pick it anyway);
        otherwise the account is released and the scheduler decides (⏳, turns, wake-ups)."""
        if following is None or following.account_id != done.account_id or not self._clear_to_send(following):
            return None
        self._serve(following)
        return following

    async def _deliver(self, item: OutboxItem) -> After:
        """Deliver one row; when it reached X, say which row is next in its channel."""
        try:
            account = await self._tokens.account(item.account_id)
            if account is None:
                await self._outcomes.fail(
                    item,
                    Undeliverable(
                        "the X account this channel sends as was disconnected", Failure.ACCOUNT_DISCONNECTED
                    ),
                )
                return LOOK_AGAIN
            if account.needs_reconnect:
                await self._outcomes.park(item, account)
                return LOOK_AGAIN
            if item.encrypted:
                # Only ever through X Chat with the account's keys: never the legacy DM, in the clear.
                return await self._chat.deliver(item, account)
            return await self._sender.deliver(item, account)
        except XRateLimited as exc:
            # From reading events back, uploading media or deleting: each has its own window,
            # separate from the DM POST budget, so only this row waits.
            until = self._outcomes.pause_until(exc.reset_at)
            log.warning("X rate limit on a read, upload or delete", extra=ids(item, until=until))
            await self._store.reschedule(item.id, item.state, until, f"rate limited until {hhmm(until)}")
        except XTransient as exc:
            await self._outcomes.retry_later(item, exc)
        except XRefused as exc:
            await self._outcomes.fail(item, exc)
        except FileUnavailable as exc:
            if exc.retryable:
                await self._outcomes.retry_later(item, exc)
            else:
                await self._outcomes.fail(item, exc)
        except XChatError as exc:
            # An encrypted conversation the account's keys cannot write to (no key of its own in
            # it, say): the same attempt would fail again, so the author is told why.
            await self._outcomes.fail(item, Undeliverable(f"X Chat: {exc}", Failure.OTHER))
        except (XAuthExpired, XAuthRevoked) as exc:
            # Parked only when the account really needs reconnecting: then it is flagged and its
            # owner was told (TokenManager), and `/xdm connect` releases the row. Anything else
            # (a disconnection seen late, a 401 that outlived a refresh) is tried again later.
            account = await self._tokens.account(item.account_id)
            if account is not None and account.needs_reconnect:
                await self._outcomes.park(item, account)
            else:
                await self._outcomes.retry_later(item, exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("unexpected delivery error", extra=ids(item))
            await self._outcomes.unexpected(item, exc)
        return LOOK_AGAIN

    # -- encrypted X Chat conversations (issue 19) ------------------------------

    # -- outcomes ------------------------------------------------------------
