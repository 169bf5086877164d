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
"""

from __future__ import annotations

import asyncio
import functools
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
    XError,
    XMediaUnavailable,
    XRateLimited,
    XRefused,
    XSentUnconfirmed,
    XTransient,
)
from bridge.feedback import HOURGLASS, EventHook, FailedHook, Feedback, ids
from bridge.media import (
    MAX_UNFINISHED_UPLOADS,
    MEDIA_REUSE_SECONDS,
    FileUnavailable,
    MediaPlan,
    file_name,
    plan_media,
)
from bridge.model import (
    Account,
    OutboxItem,
    OutboxKind,
    OutboxState,
    RenderedPart,
    Sent,
    Unreadable,
    one_to_one_id,
)
from bridge.outcomes import LOOK_AGAIN, UNNAMED_NOTE, UNTIL_RECONNECTED, After, Outcomes, hhmm
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
from bridge.scheduler import Lanes, WakeLoop, drain
from bridge.tokens import TokenManager
from bridge.xchat import ChatSessions, XChatError

log = logging.getLogger("bridge.delivery")

CRASH_PAUSE = 1.0  # an account whose task crashed (a bug) is left alone this long
DELETE_NOTE = (
    "Deleted on X as well. Note that X removes a DM only from the sending account's view: "
    "the other people in the conversation may still see it."
)


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
    ) -> None:
        self._store = store
        self._chats = chats
        self._x = x
        self._slack = slack
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
        task = asyncio.ensure_future(work)
        task.set_name(f"follow-up-{item.id if item else 'start'}")
        self._followups.add(task)
        task.add_done_callback(self._followups.discard)

    # -- one send ----------------------------------------------------------

    async def _drive(self, item: OutboxItem) -> bool:
        """Deliver ``item``, then its channel's next rows while the account has nothing else due.

        Returns whether the scheduler should look again (anything but an emptied channel)."""
        current = item
        while True:
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
            if item.kind is OutboxKind.DELETE:
                await self._delete(item, account)
                return LOOK_AGAIN
            parts: list[RenderedPart] | None = None
            if item.text is None and not item.deleted:
                parts = await self._renderer.render(item)
                if parts is None:
                    return LOOK_AGAIN
                if any(p.media is not None for p in parts):
                    # Uploads come before the claim and may fail for good: keep every part first.
                    item, parts = await self._store.render(item.id, parts), None
            if item.state is OutboxState.SENDING:
                found = await self._reconciler.find(item, account)
                if found is not None:
                    return await self._outcomes.sent(item, found)
            if item.deleted:
                # Deleted in Slack mid-send, and X does not have it: it is never sent again.
                self._reconciler.forget(item.id)
                await self._outcomes.cancel(item)
                return LOOK_AGAIN
            return await self._send(item, account, parts)
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

    async def _send(self, item: OutboxItem, account: Account, parts: list[RenderedPart] | None) -> After:
        """Claim the row (rendering it in the same write when ``parts`` are given), POST, record."""
        token = await self._tokens.access_token(account)
        media_id, fresh = await self._media_id(item, account) if item.media else (None, False)
        if item.media and media_id is None and not item.text:
            return LOOK_AGAIN  # a file alone, given up: its row was failed and the author told
        now = self._clock.now()
        # Counted before the claim; a claim refused below leaves the window one too full until X's
        # next headers correct it: erring on the safe side, and only after a Slack edit or delete.
        claimed = await self._store.mark_sending(
            item.id,
            now,
            self._budget.count(account.id, now),
            parts=parts,
            source=item.source if parts is not None else None,
        )
        if claimed is None:
            log.info("outbox row changed before its send; looking again", extra=ids(item))
            return LOOK_AGAIN
        item = claimed
        assert item.text is not None
        try:
            text = item.text
            sent, facts = await self._tokens.call(
                account, lambda t: self._x.send(t, item.target, text, media_id=media_id), token=token
            )
        except XSentUnconfirmed as exc:
            # A 2xx: X took it, whatever else its answer lacks. Never sent again.
            return await self._settle_unconfirmed(item, account, exc)
        except XTransient as exc:
            # The POST may have reached X: keep the row "sending" so it is reconciled. A 5xx
            # is no proof either way: X's front end answers 503/504 after its back end took
            # the DM often enough to post it twice.
            await self._budget.observe(account.id, exc.facts)
            await self._outcomes.retry_later(item, exc)
            return LOOK_AGAIN
        except XRateLimited as exc:
            await self._outcomes.rate_limited(item, account, exc, self._clock.now())
            return LOOK_AGAIN
        except XMediaUnavailable as exc:
            # X refused the POST (it did not take the message) because of the attached file.
            await self._budget.observe(account.id, exc.facts)
            await self._media_refused(item, exc, fresh)
            return LOOK_AGAIN
        except XRefused as exc:
            await self._budget.observe(account.id, exc.facts)
            if item.target.new_group is not None:
                await self._group_refused(item, exc)
                return LOOK_AGAIN
            raise
        except (XAuthExpired, XAuthRevoked):
            raise  # X answered 401: it did not take the message
        except Exception as exc:
            # Not an answer from X, so X may have the message: the claimed row stays "sending"
            # and is reconciled before any resend (the caller's handler would requeue it).
            log.exception("unexpected error sending to X", extra=ids(item))
            await self._outcomes.retry_later(item, exc)
            return LOOK_AGAIN
        try:
            return await self._outcomes.sent(item, sent, self._budget.correct(account.id, facts))
        except Exception as exc:
            # X has it, we could not record it: left "sending", reconciliation will find it.
            log.exception("could not record a DM that X took", extra=ids(item))
            await self._outcomes.retry_later(item, exc)
            return LOOK_AGAIN

    async def _settle_unconfirmed(self, item: OutboxItem, account: Account, exc: XSentUnconfirmed) -> After:
        """X answered 2xx without saying which DM it made: read it back for its id if X lets us
        now; otherwise (X does not list it yet, the read budget is spent, X fails) record it as
        sent without an id. Never sent again: a 2xx is a send."""
        budgets = self._budget.correct(account.id, exc.facts)
        found: Sent | None = None
        try:
            found = await self._reconciler.find(item, account)
        except (XError, XAuthRevoked) as error:
            log.warning(
                "X took a DM without saying which; reading it back failed", extra=ids(item, error=str(error))
            )
        finally:
            self._reconciler.forget(item.id)
        if found is not None:
            return await self._outcomes.sent(item, found, budgets)
        target = item.target
        conversation = exc.conversation_id or target.conversation_id
        if conversation is None and target.participant_id is not None:
            conversation = one_to_one_id(account.x_user_id, target.participant_id)
        log.warning(
            "X took a DM without saying which and the read-back did not find it: recorded as sent "
            "without an id, not sent again",
            extra=ids(item, conversation=conversation),
        )
        after = await self._outcomes.sent(
            item, Sent(dm_conversation_id=conversation, dm_event_id=None), budgets
        )
        if target.new_group is not None and conversation is None:
            await self._group_unnamed(item)
            return LOOK_AGAIN
        return after

    async def _group_unnamed(self, item: OutboxItem) -> None:
        """X created the group (a 2xx) but neither said nor showed which conversation it is. Sending
        the rows behind would create another group each: they fail instead, the channel is no
        longer bridged, and told how to bridge it to the group that exists."""
        assert item.target.new_group is not None
        error = Undeliverable("X created the group but did not say which conversation it is", Failure.OTHER)
        mapping, behind = await self._store.abandon_group(
            item.team_id, item.channel_id, item.target.new_group
        )
        for other in behind:
            await self._outcomes.fail(other, error)
        if mapping is None:
            return
        text = (
            ":warning: X created the group this channel was bridged to (its first message went), but "
            "did not say which conversation it is, so this channel is no longer bridged to X. "
            f"<@{mapping.created_by}> may find the group's id on X and `/xdm link` it here."
        )
        try:
            await self._slack.post_message(mapping.team_id, mapping.channel_id, text)
        except Exception as error:  # the authors of the rows behind were told in their ephemerals
            log.warning("could not tell the channel", extra=ids(item, error=str(error)[:200]))

    async def _media_id(self, item: OutboxItem, account: Account) -> tuple[str | None, bool]:
        """X's id for the part's file, and whether it was uploaded just now.

        An id is reused on a retry while X still keeps it (24 h, less a margin). None means the
        file was given up for good (X or Slack refused it, or uploading it keeps killing the
        process): the part's text goes alone and the author is told which file did not.
        """
        assert item.media is not None
        now = self._clock.now()
        uploaded_at = item.media_uploaded_at
        if item.media_id and uploaded_at is not None and 0 <= now - uploaded_at < MEDIA_REUSE_SECONDS:
            return item.media_id, False
        plan = plan_media(item.media)
        if not isinstance(plan, MediaPlan):
            await self._outcomes.without_file(item, plan.reason)
            return None, False
        if item.media_unfinished >= MAX_UNFINISHED_UPLOADS:
            # Begun that often and never finished: the process died during it (out of memory, say).
            # Trying again would take it down again, and every other channel with it.
            reason = f"{plan.name}: the bridge stopped {item.media_unfinished} times while uploading it"
            await self._outcomes.without_file(item, reason)
            return None, False
        await self._store.begin_media_upload(item.id)  # committed before the risky part
        try:
            media_id = await self._tokens.call(account, functools.partial(self._upload, item, plan))
        except (XRefused, FileUnavailable) as exc:
            if isinstance(exc, FileUnavailable) and exc.retryable:
                raise
            reason = str(exc) if isinstance(exc, FileUnavailable) else f"{plan.name}: {exc}"
            await self._outcomes.without_file(item, reason)
            return None, False
        finally:
            # It ended without taking the process down (a refusal and a shutdown included).
            await self._store.end_media_upload(item.id)
        await self._store.set_media_id(item.id, media_id, self._clock.now())
        log.info("uploaded file to X", extra=ids(item, file=plan.name, category=plan.category))
        return media_id, True

    async def _upload(self, item: OutboxItem, plan: MediaPlan, token: str) -> str:
        """Stream the Slack file into X's upload: memory holds a chunk, never the file."""
        assert item.media is not None
        async with self._slack.open_file(item.team_id, item.media, max_bytes=plan.max_bytes) as source:
            return await self._x.upload_media(
                token, source, media_type=plan.media_type, category=plan.category
            )

    async def _media_refused(self, item: OutboxItem, exc: XMediaUnavailable, fresh: bool) -> None:
        """X did not take the DM because of its media id: upload again, unless it was new."""
        if fresh:
            await self._outcomes.without_file(item, f"{file_name(item.media or {})}: {exc}")
            if not item.text:
                return
            reason = "X refused the file; sending the text alone"
        else:
            log.info(
                "X no longer knows the media id; uploading again", extra=ids(item, media_id=item.media_id)
            )
            await self._store.set_media_id(item.id, None)
            reason = "X no longer had the file; uploading it again"
        await self._store.reschedule(item.id, OutboxState.QUEUED, self._clock.now(), reason)

    async def _delete(self, item: OutboxItem, account: Account) -> None:
        """Delete X's copies of a message deleted in Slack (only the sender's view, X says)."""
        relayed = await self._store.relayed_events(item.team_id, item.channel_id, item.ref_ts)
        event_ids = [e for e in relayed if e is not None]
        for event_id in event_ids:
            await self._tokens.call(account, functools.partial(self._x.delete_event, event_id=event_id))
        await self._store.mark_done(item.id, self._clock.now())
        unnamed = len(relayed) - len(event_ids)  # X took them without saying which DM: no id to delete
        log.info("deleted on X", extra=ids(item, events=len(event_ids), unnamed=unnamed))
        if item.author_id and unnamed:
            what = "Part of this message was" if event_ids else "This message was"
            await self._feedback.ephemeral(item, UNNAMED_NOTE.format(what=what))
        elif item.author_id and event_ids:
            await self._feedback.ephemeral(item, DELETE_NOTE)

    # -- encrypted X Chat conversations (issue 19) ------------------------------

    # -- outcomes ------------------------------------------------------------

    async def _group_refused(self, item: OutboxItem, error: XRefused) -> None:
        """X refused for good to create the group this row was to create.

        No group exists, so the channel is unmapped (it would be a bridge to nothing) and the
        channel told who may try again. The rows waiting behind it for that group fail with the
        same reason rather than each asking X again.
        """
        assert item.target.new_group is not None
        await self._outcomes.fail(item, error)
        mapping, behind = await self._store.abandon_group(
            item.team_id, item.channel_id, item.target.new_group
        )
        for other in behind:
            await self._outcomes.fail(other, error)
        if mapping is None:
            return  # unlinked or remapped meanwhile: nothing of the channel's to undo
        log.warning("X refused to create a group; channel unmapped", extra=ids(item, failed=len(behind)))
        text = (
            f":x: X could not create the group this channel was bridged to ({error}), so this channel "
            f"is no longer bridged to X. <@{mapping.created_by}> may run `/xdm new-group` again once "
            "that is fixed."
        )
        try:
            await self._slack.post_message(mapping.team_id, mapping.channel_id, text)
        except Exception as exc:  # the authors were told in their ephemerals
            log.warning("could not tell the channel", extra=ids(item, error=str(exc)[:200]))


def _is_group(conversation_id: str | None) -> bool:
    return bool(conversation_id) and "-" not in str(conversation_id)
