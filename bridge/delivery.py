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
import contextlib
import functools
import logging
import re
from collections import defaultdict
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from bridge import reconcile, translate
from bridge.budget import MAX_RESET_AHEAD, Budget, BudgetRow, ReadEndpoint, read_endpoint
from bridge.errors import (
    BridgeError,
    Failure,
    RateFacts,
    Undeliverable,
    XAuthExpired,
    XAuthRevoked,
    XError,
    XMediaUnavailable,
    XRateLimited,
    XRefused,
    XSentUnconfirmed,
    XTransient,
    failure_of,
)
from bridge.feedback import HOURGLASS, EventHook, FailedHook, Feedback, ids, not_sent
from bridge.media import (
    MAX_UNFINISHED_UPLOADS,
    MEDIA_REUSE_SECONDS,
    FileUnavailable,
    MediaPlan,
    SkippedFile,
    file_name,
    plan_files,
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
from bridge.scheduler import AcksFirst, Lanes, WakeLoop, backoff, drain
from bridge.tokens import TokenManager
from bridge.xchat import (
    ChatSend,
    ChatSession,
    ChatSessions,
    KeyMismatch,
    NoChatIdentity,
    XChatError,
    mismatch_note,
)

log = logging.getLogger("bridge.delivery")

UNTIL_RECONNECTED = 1e15  # next_attempt_at of rows parked until their account is reconnected
MENTION_LOOKUPS = 50  # users.info calls one message may cost for its mentions
UNNAMED_USER = "someone"  # a mention beyond that bound, with no label of its own
READ_WAIT_CAP = 16 * 60.0  # a read window is 15 minutes: never wait on one for longer
MIN_RATE_PAUSE = 1.0  # a 429 waits at least this long, whatever its reset says
CRASH_PAUSE = 1.0  # an account whose task crashed (a bug) is left alone this long
MAX_UNEXPECTED = 5  # unexpected errors before an unsent row is failed rather than retried
UNNAMED_NOTE = (
    "{what} not deleted on X: X took it without saying which DM it made, so the bridge cannot name "
    "it to delete it. Delete it in X's app if it must go."
)
DELETE_NOTE = (
    "Deleted on X as well. Note that X removes a DM only from the sending account's view: "
    "the other people in the conversation may still see it."
)
CHAT_DELETE_NOTE = "Deleted on X Chat as well, for everyone in the conversation."
CHAT_READ_PAGES = 3  # pages of a conversation read back for a message id before it is posted again
# X Chat's attachment media types by the category a file is planned under (X's examples use 5 for
# any other file).
CHAT_MEDIA_TYPES = {"dm_image": 1, "dm_gif": 2, "dm_video": 3}
CHAT_MEDIA_FILE = 5
# A refusal naming the account's own registered key (not a conversation key, whose staleness is X's
# rule for one message): the identity no longer matches what X holds.
IDENTITY_KEY_REFUSAL = re.compile(r"(public|signing|identity)[ _-]?key", re.IGNORECASE)


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


@dataclass(frozen=True)
class _After:
    """What one delivery leaves for its account's task."""

    following: OutboxItem | None = None  # the channel's next row, when this one reached X
    settled: bool = False  # reached X: nothing changed that the scheduler must look at


LOOK_AGAIN = _After()


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
        self._scans: dict[int, reconcile.Scan] = {}  # read-backs paused for the read budget, by row
        self._failures: dict[int, int] = defaultdict(int)  # row -> failed attempts since it last moved
        self._cooldown: dict[int, float] = {}  # account -> when a crashed task's account may start again
        self._turn = 0
        self._feedback = Feedback(
            store, slack, self._config.recheck_sent_within, self._config.recheck_sent_limit, clock
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
                    await self._fail(item, Undeliverable(item.reason, Failure.OTHER))
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
                    f"waiting for X's rate limit until {_hhmm(until)}",
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

    async def _deliver(self, item: OutboxItem) -> _After:
        """Deliver one row; when it reached X, say which row is next in its channel."""
        try:
            account = await self._tokens.account(item.account_id)
            if account is None:
                await self._fail(
                    item,
                    Undeliverable(
                        "the X account this channel sends as was disconnected", Failure.ACCOUNT_DISCONNECTED
                    ),
                )
                return LOOK_AGAIN
            if account.needs_reconnect:
                await self._park(item, account)
                return LOOK_AGAIN
            if item.encrypted:
                # Only ever through X Chat with the account's keys: never the legacy DM, in the clear.
                return await self._deliver_chat(item, account)
            if item.kind is OutboxKind.DELETE:
                await self._delete(item, account)
                return LOOK_AGAIN
            parts: list[RenderedPart] | None = None
            if item.text is None and not item.deleted:
                parts = await self._render(item)
                if parts is None:
                    return LOOK_AGAIN
                if any(p.media is not None for p in parts):
                    # Uploads come before the claim and may fail for good: keep every part first.
                    item, parts = await self._store.render(item.id, parts), None
            if item.state is OutboxState.SENDING:
                found = await self._reconcile(item, account)
                if found is not None:
                    return await self._sent(item, found)
            if item.deleted:
                # Deleted in Slack mid-send, and X does not have it: it is never sent again.
                await self._cancel(item)
                return LOOK_AGAIN
            return await self._send(item, account, parts)
        except XRateLimited as exc:
            # From reading events back, uploading media or deleting: each has its own window,
            # separate from the DM POST budget, so only this row waits.
            until = self._pause_until(exc.reset_at)
            log.warning("X rate limit on a read, upload or delete", extra=ids(item, until=until))
            await self._store.reschedule(item.id, item.state, until, f"rate limited until {_hhmm(until)}")
        except XTransient as exc:
            await self._retry_later(item, exc)
        except XRefused as exc:
            await self._fail(item, exc)
        except FileUnavailable as exc:
            if exc.retryable:
                await self._retry_later(item, exc)
            else:
                await self._fail(item, exc)
        except XChatError as exc:
            # An encrypted conversation the account's keys cannot write to (no key of its own in
            # it, say): the same attempt would fail again, so the author is told why.
            await self._fail(item, Undeliverable(f"X Chat: {exc}", Failure.OTHER))
        except (XAuthExpired, XAuthRevoked) as exc:
            # Parked only when the account really needs reconnecting: then it is flagged and its
            # owner was told (TokenManager), and `/xdm connect` releases the row. Anything else
            # (a disconnection seen late, a 401 that outlived a refresh) is tried again later.
            account = await self._tokens.account(item.account_id)
            if account is not None and account.needs_reconnect:
                await self._park(item, account)
            else:
                await self._retry_later(item, exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("unexpected delivery error", extra=ids(item))
            await self._unexpected(item, exc)
        return LOOK_AGAIN

    async def _send(self, item: OutboxItem, account: Account, parts: list[RenderedPart] | None) -> _After:
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
            await self._retry_later(item, exc)
            return LOOK_AGAIN
        except XRateLimited as exc:
            await self._rate_limited(item, account, exc, self._clock.now())
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
            await self._retry_later(item, exc)
            return LOOK_AGAIN
        try:
            return await self._sent(item, sent, self._budget.correct(account.id, facts))
        except Exception as exc:
            # X has it, we could not record it: left "sending", reconciliation will find it.
            log.exception("could not record a DM that X took", extra=ids(item))
            await self._retry_later(item, exc)
            return LOOK_AGAIN

    async def _settle_unconfirmed(self, item: OutboxItem, account: Account, exc: XSentUnconfirmed) -> _After:
        """X answered 2xx without saying which DM it made: read it back for its id if X lets us
        now; otherwise (X does not list it yet, the read budget is spent, X fails) record it as
        sent without an id. Never sent again: a 2xx is a send."""
        budgets = self._budget.correct(account.id, exc.facts)
        found: Sent | None = None
        try:
            found = await self._reconcile(item, account)
        except (XError, XAuthRevoked) as error:
            log.warning(
                "X took a DM without saying which; reading it back failed", extra=ids(item, error=str(error))
            )
        finally:
            self._scans.pop(item.id, None)
        if found is not None:
            return await self._sent(item, found, budgets)
        target = item.target
        conversation = exc.conversation_id or target.conversation_id
        if conversation is None and target.participant_id is not None:
            conversation = one_to_one_id(account.x_user_id, target.participant_id)
        log.warning(
            "X took a DM without saying which and the read-back did not find it: recorded as sent "
            "without an id, not sent again",
            extra=ids(item, conversation=conversation),
        )
        after = await self._sent(item, Sent(dm_conversation_id=conversation, dm_event_id=None), budgets)
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
            await self._fail(other, error)
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

    async def _sent(self, item: OutboxItem, sent: Sent, budgets: Sequence[BudgetRow] = ()) -> _After:
        following = await self._store.mark_sent(item.id, sent, self._clock.now(), budgets)
        self._failures.pop(item.id, None)
        log.info("relayed to X", extra=ids(item, dm_event_id=sent.dm_event_id))
        self._follow_up(self._feedback.acknowledge(item), item)
        return _After(following, settled=True)

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
            await self._without_file(item, plan.reason)
            return None, False
        if item.media_unfinished >= MAX_UNFINISHED_UPLOADS:
            # Begun that often and never finished: the process died during it (out of memory, say).
            # Trying again would take it down again, and every other channel with it.
            reason = f"{plan.name}: the bridge stopped {item.media_unfinished} times while uploading it"
            await self._without_file(item, reason)
            return None, False
        await self._store.begin_media_upload(item.id)  # committed before the risky part
        try:
            media_id = await self._tokens.call(account, functools.partial(self._upload, item, plan))
        except (XRefused, FileUnavailable) as exc:
            if isinstance(exc, FileUnavailable) and exc.retryable:
                raise
            reason = str(exc) if isinstance(exc, FileUnavailable) else f"{plan.name}: {exc}"
            await self._without_file(item, reason)
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
            await self._without_file(item, f"{file_name(item.media or {})}: {exc}")
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

    async def _without_file(self, item: OutboxItem, reason: str) -> None:
        """Give up a part's file for good; its text still goes. A part that is only the file fails."""
        if not item.text:
            await self._store.mark_failed(item.id, reason, Failure.FILE_UNUSABLE)
            log.warning("file not sent to X", extra=ids(item, reason=reason))
            text = f":warning: A file of your message was not sent to X: {reason}"
            await self._feedback.tell_failure(item, Failure.FILE_UNUSABLE, text)
            return
        await self._store.drop_media(item.id)
        log.warning("file not sent to X; the text goes alone", extra=ids(item, reason=reason))
        await self._feedback.ephemeral(
            item, f":warning: A file was not sent to X: {reason}. The text of your message goes without it."
        )

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

    async def _reconcile(self, item: OutboxItem, account: Account) -> Sent | None:
        """Did an earlier attempt reach X? Read the conversation back until events are older
        than the attempt (see bridge/reconcile), within the read budget.

        When the budget runs out first, the row waits for it (still ``sending``: never resent
        while undecided) and the reading goes on from where it stopped. A reading X ends before
        it got back to the attempt decides nothing: the row waits and reads again.
        """
        assert item.text is not None
        scan = self._scans.get(item.id)
        if scan is None or scan.text != item.text:
            attempt_at = item.sending_since or item.created_at
            scan = reconcile.Scan(attempt_at, account.x_user_id, item.text, item.media_id)
        passed = 0
        while not scan.done:
            read = functools.partial(self._x.event_page, target=item.target, pagination_token=scan.token)

            async def read_page(read: Any = read) -> tuple[Any, RateFacts]:
                page = await self._tokens.call(account, read)
                return page, page.facts

            try:
                # A read: it draws on the account's window of the endpoint it reads (X counts each
                # apart), shared with inbound polling (every conversation) or placing pushes (a 1-to-1).
                page = await self._budget.read(
                    account.id, self._clock.now, read_page, endpoint=read_endpoint(item.target)
                )
            except XRefused as exc:
                # A refusal says nothing about whether X has the message: read again later, from
                # the newest page (a page token may have gone stale while the reading waited).
                self._scans.pop(item.id, None)
                raise XTransient(
                    f"X did not let the bridge check whether it has the message ({exc})",
                    status=exc.status,
                    facts=exc.facts,
                ) from exc
            now = self._clock.now()
            passed += 1
            if scan.take(page, now):
                break
            self._scans[item.id] = scan
            spent = page.facts.window_remaining == 0
            if spent or passed >= reconcile.MAX_PAGES_PER_PASS:
                reset = page.facts.window_reset
                until = scan.to_local(reset) if spent and reset is not None else now + 60.0
                until = min(max(until, now + 1.0), now + READ_WAIT_CAP)
                log.info(
                    "reconciling: read budget spent; reading on later", extra=ids(item, pages=scan.pages)
                )
                raise XRateLimited("read budget spent while reconciling", reset_at=until, facts=page.facts)
        self._scans.pop(item.id, None)
        target = item.target
        if target.new_group is not None:
            # Creating a group: the account's events in every conversation were read, and only
            # a group (not a 1-to-1 "a-b") no row has claimed can be the one this attempt made.
            scan.candidates = [
                c for c in scan.candidates if c.conversation_id and "-" not in c.conversation_id
            ]
        known = await self._store.known_event_ids([e.id for e in scan.candidates])
        event = scan.oldest(known)
        if event is not None:
            conversation = (
                target.conversation_id
                or (event.conversation_id if target.new_group is not None else None)
                or one_to_one_id(account.x_user_id, str(target.participant_id))
            )
            log.info("reconciled: X had the message already", extra=ids(item, dm_event_id=event.id))
            return Sent(dm_conversation_id=conversation, dm_event_id=event.id)
        if not scan.reached:
            # X ended the reading before it got back to the attempt (paging in circles, say):
            # not finding it proves nothing, so the row stays "sending" and is read again later.
            log.warning("reconciling: X's paging ended early; reading again later", extra=ids(item))
            raise XTransient(f"X's events ended after {scan.pages} pages, before the attempt")
        log.info("reconciled: not on X, sending again", extra=ids(item, pages=scan.pages))
        return None

    async def _render(self, item: OutboxItem) -> list[RenderedPart] | None:
        """Turn the Slack message into the DMs X will get: text parts, then one DM per file.

        None when there is nothing X can take, or the stored message cannot be turned into
        DMs at all (the row is failed and the author told: the same input would fail again).
        """
        try:
            text, blocks, thread_ts, stubs = _source_fields(item.source)
            # Each mentioned user once, and only so many: a message naming thousands of people
            # must not become thousands of users.info calls (the rest read "@someone").
            mentioned = sorted(translate.mentioned_user_ids(text, blocks))[:MENTION_LOOKUPS]
        except Exception as exc:
            await self._unrenderable(item, exc)
            return None
        names = {uid: await self._slack.display_name(item.team_id, uid) for uid in mentioned}
        quoting = thread_ts is not None and thread_ts != item.ref_ts and item.kind is OutboxKind.MESSAGE
        parent = None
        if quoting and thread_ts is not None:
            parent = await self._store.message_text(item.team_id, item.channel_id, thread_ts)
        name = await self._slack.display_name(item.team_id, item.author_id)
        if item.kind is OutboxKind.EDIT and not item.encrypted:  # X Chat shows its own edits
            name = f"{name} (edited)"
        files, unresolved = await self._resolve_files(item, stubs)
        try:
            body = translate.to_plain(text, blocks, user_names=names, unnamed_user=UNNAMED_USER)
            if quoting:
                quote = translate.quote_parent(translate.to_plain(parent) if parent else "a thread")
                body = f"{quote}\n{body}" if body.strip() else quote
            plans, skipped = plan_files(files)
            skipped += unresolved
            parts = self._parts(body, name, plans, files)
        except Exception as exc:
            await self._unrenderable(item, exc)
            return None
        if skipped:
            listed = "\n".join(f"• {s.reason}" for s in skipped)
            await self._feedback.ephemeral(item, f":warning: Not every file went to X:\n{listed}")
        if not parts:
            if skipped:
                error = Undeliverable("; ".join(s.reason for s in skipped), Failure.FILE_UNUSABLE)
            else:
                error = Undeliverable("the message has no text or file to send", Failure.EMPTY_MESSAGE)
            await self._fail(item, error)
            return None
        return parts

    async def _unrenderable(self, item: OutboxItem, exc: Exception) -> None:
        log.error("outbox row cannot be rendered", extra=ids(item), exc_info=exc)
        reason = f"the bridge could not turn it into a DM ({type(exc).__name__}: {exc})"
        await self._fail(item, Undeliverable(reason, Failure.OTHER))

    async def _resolve_files(
        self, item: OutboxItem, files: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[SkippedFile]]:
        """Files an event carried only as stubs (``file_access: check_file_info``), completed
        through files.info; a file Slack will not describe is skipped with Slack's reason."""
        resolved: list[dict[str, Any]] = []
        skipped: list[SkippedFile] = []
        for file in files:
            if file.get("file_access") != "check_file_info" or not file.get("id"):
                resolved.append(file)
                continue
            try:
                info = await self._slack.file_info(item.team_id, str(file["id"]))
            except FileUnavailable as exc:
                if exc.retryable:
                    raise  # nothing is sent yet: the whole message waits and renders again
                skipped.append(SkippedFile(str(file["id"]), file_name(file), f"{file_name(file)}: {exc}"))
                continue
            resolved.append({**file, **info, "file_access": "visible"})
        return resolved, skipped

    def _parts(
        self, body: str, name: str, plans: list[MediaPlan], files: list[dict[str, Any]]
    ) -> list[RenderedPart]:
        """Text parts first; X takes one file per DM, so the first file rides with the
        first part and each further file is a DM of its own."""
        fmt = self._config.relay_format
        texts = translate.render_parts(body, name=name, fmt=fmt) if body.strip() else []
        if plans and not texts:
            texts = translate.render_parts(f"[{plans[0].name}]", name=name, fmt=fmt)
        by_id = {str(f.get("id") or ""): f for f in files}
        parts = [RenderedPart(t) for t in texts]
        for index, plan in enumerate(plans):
            file = by_id.get(plan.file_id, {})
            if index == 0 and parts:
                parts[0] = RenderedPart(parts[0].text, file)
            else:
                parts.append(RenderedPart("", file))
        return parts

    # -- encrypted X Chat conversations (issue 19) ------------------------------

    async def _deliver_chat(self, item: OutboxItem, account: Account) -> _After:
        """A row of an encrypted conversation: encrypted and signed once, kept with the row before
        its first attempt, and that same message posted on every retry (X and the people's apps
        tell a message by its signed id, so the other side sees it once).

        Without usable keys (none held, or X's registered key is another) the row waits with the
        reason: nothing goes in the clear instead."""
        try:
            if self._chats is None:
                raise NoChatIdentity("this bridge was started without X Chat")
            session = await self._chats.session(account)
            await self._tokens.call(account, session.check_keys)
        except NoChatIdentity as exc:
            await self._chat_wait(item, f"waiting: {exc}")
            return LOOK_AGAIN
        except KeyMismatch as exc:
            await self._key_mismatch(item, account, str(exc))
            return LOOK_AGAIN
        target = item.target
        conversation = target.conversation_id or one_to_one_id(account.x_user_id, str(target.participant_id))
        if item.kind is OutboxKind.DELETE:
            await self._chat_delete(item, account, session, conversation)
            return LOOK_AGAIN
        if item.text is None and not item.deleted:
            parts = await self._render(item)
            if parts is None:
                return LOOK_AGAIN
            item = await self._store.render(item.id, await self._chat_parts(item, parts))
        if item.state is OutboxState.SENDING and item.chat is not None:
            found = await self._chat_find(item, account, session, conversation)
            if found is not None:
                return await self._sent(item, found)
        if item.deleted:
            await self._cancel(item)
            return LOOK_AGAIN
        return await self._chat_send(item, account, session, conversation)

    async def _chat_parts(self, item: OutboxItem, parts: list[RenderedPart]) -> list[RenderedPart]:
        """The parts as for a DM (the first file rides with the text, each further one alone); an
        edit changes the text only (X Chat's edits carry no files)."""
        if item.kind is OutboxKind.EDIT:
            return [RenderedPart(p.text) for p in parts if p.text] or [RenderedPart(parts[0].text)]
        return parts

    async def _chat_send(
        self, item: OutboxItem, account: Account, session: ChatSession, conversation: str
    ) -> _After:
        assert item.text is not None
        if item.chat is None:
            text = item.text
            edit_of = await self._edit_target(item)
            attachments = await self._chat_attachments(item, account, session, conversation)
            if attachments is None:
                return LOOK_AGAIN  # a file alone, given up: its row was failed and the author told

            async def prepare(token: str) -> ChatSend:
                if edit_of is not None:
                    return await session.prepare_edit(token, conversation, edit_of, text)
                return await session.prepare_text(token, conversation, text, attachments)

            message = await self._tokens.call(account, prepare)
            # Kept (committed) before the first attempt: every retry posts these very bytes.
            kept = await self._store.keep_chat(
                item.id, text, {"message_id": message.message_id, "body": message.body}
            )
            if kept is None:
                return LOOK_AGAIN  # edited, deleted or finished meanwhile
            item = kept
        assert item.chat is not None
        prepared = ChatSend(str(item.chat["message_id"]), dict(item.chat["body"]))
        now = self._clock.now()
        claimed = await self._store.mark_sending(item.id, now, self._budget.count(account.id, now))
        if claimed is None:
            return LOOK_AGAIN
        item = claimed
        try:
            posted = await self._tokens.call(account, lambda t: session.send(t, conversation, prepared))
        except XSentUnconfirmed as exc:
            found = None
            with contextlib.suppress(XError, XAuthRevoked):
                found = await self._chat_find(item, account, session, conversation)
            budgets = self._budget.correct(account.id, exc.facts)
            return await self._sent(item, found or Sent(conversation, None), budgets)
        except XTransient as exc:
            await self._budget.observe(account.id, exc.facts)
            await self._retry_later(item, exc)  # still "sending": read back before the same bytes again
            return LOOK_AGAIN
        except XRateLimited as exc:
            await self._rate_limited(item, account, exc, now)
            return LOOK_AGAIN
        except XRefused as exc:
            await self._budget.observe(account.id, exc.facts)
            if IDENTITY_KEY_REFUSAL.search(str(exc)) and exc.status in (400, 403, 409):
                # Refused, so X never took it: made again with the next keys, not these.
                await self._store.drop_chat(item.id)
                await self._key_mismatch(replace(item, state=OutboxState.WAITING), account, str(exc))
                return LOOK_AGAIN
            raise  # X's own rule (a message request, a group limit…): the author is told why
        sent = Sent(conversation, posted.sequence_id)
        return await self._sent(item, sent, self._budget.correct(account.id, posted.facts))

    async def _chat_attachments(
        self, item: OutboxItem, account: Account, session: ChatSession, conversation: str
    ) -> list[dict[str, Any]] | None:
        """The part's file, encrypted and uploaded into the conversation, as the attachment its
        message names ([] without one). A file X or Slack refuses is left out and its author told;
        None when the part was only that file (the row is failed)."""
        if item.media is None:
            return []
        plan = plan_media(item.media)
        if not isinstance(plan, MediaPlan):
            await self._without_file(item, plan.reason)
            return [] if item.text else None
        media_type = CHAT_MEDIA_TYPES.get(plan.category, CHAT_MEDIA_FILE)

        async def upload(token: str) -> dict[str, Any]:
            assert item.media is not None
            async with self._slack.open_file(item.team_id, item.media, max_bytes=plan.max_bytes) as source:
                return await session.upload_media(
                    token, conversation, source, filename=plan.name, media_type=media_type
                )

        try:
            attachment = await self._tokens.call(account, upload)
        except (XRefused, FileUnavailable) as exc:
            if isinstance(exc, FileUnavailable) and exc.retryable:
                raise
            await self._without_file(
                item, str(exc) if isinstance(exc, FileUnavailable) else f"{plan.name}: {exc}"
            )
            return [] if item.text else None
        log.info("uploaded file to X Chat", extra=ids(item, file=plan.name, category=plan.category))
        return [attachment]

    async def _edit_target(self, item: OutboxItem) -> str | None:
        """For a Slack edit's first part: the sequence id of the message it edits, if X named it."""
        if item.kind is not OutboxKind.EDIT or item.part != 0:
            return None
        relayed = await self._store.relayed_events(item.team_id, item.channel_id, item.ref_ts)
        return relayed[0] if relayed else None

    async def _chat_find(
        self, item: OutboxItem, account: Account, session: ChatSession, conversation: str
    ) -> Sent | None:
        """Did an attempt reach X? Read the conversation back for the row's signed message id
        (a few pages, within the read budget). None: not seen, so the same message goes again."""
        assert item.chat is not None
        wanted = str(item.chat["message_id"])
        token: str | None = None
        for _ in range(CHAT_READ_PAGES):
            read = functools.partial(session.read, conversation_id=conversation, pagination_token=token)

            async def read_page(read: Any = read) -> tuple[Any, RateFacts]:
                return await self._tokens.call(account, read), RateFacts()

            page = await self._budget.read(account.id, self._clock.now, read_page, endpoint=ReadEndpoint.CHAT)
            for event in page.events:
                if event.message_id == wanted and event.sender_id == account.x_user_id:
                    log.info(
                        "reconciled: X had the message already", extra=ids(item, sequence=event.sequence_id)
                    )
                    return Sent(conversation, event.sequence_id)
            token = page.next_token
            if token is None:
                break
        return None

    async def _chat_delete(
        self, item: OutboxItem, account: Account, session: ChatSession, conversation: str
    ) -> None:
        """X Chat's own signed delete, for everyone, of every part and edit sent for the message."""
        relayed = await self._store.relayed_events(item.team_id, item.channel_id, item.ref_ts)
        sequence_ids = [e for e in relayed if e is not None]
        if sequence_ids:
            body = session.prepare_delete(conversation, sequence_ids)
            await self._tokens.call(account, lambda t: session.delete(t, conversation, body))
        await self._store.mark_done(item.id, self._clock.now())
        log.info("deleted on X Chat", extra=ids(item, events=len(sequence_ids)))
        unnamed = len(relayed) - len(sequence_ids)
        if item.author_id and unnamed:
            what = "Part of this message was" if sequence_ids else "This message was"
            await self._feedback.ephemeral(item, UNNAMED_NOTE.format(what=what))
        elif item.author_id and sequence_ids:
            await self._feedback.ephemeral(item, CHAT_DELETE_NOTE)

    async def _chat_wait(self, item: OutboxItem, reason: str) -> None:
        state = OutboxState.SENDING if item.state is OutboxState.SENDING else OutboxState.WAITING
        log.warning("encrypted message waits for X Chat keys", extra=ids(item, reason=reason))
        await self._store.reschedule(item.id, state, self._clock.now() + self._config.chat_wait, reason)

    async def _key_mismatch(self, item: OutboxItem, account: Account, detail: str) -> None:
        """X's registered key is no longer the bridge's: the identity is flagged, its owner told
        once, and the row waits (nothing is ever sent in the clear instead)."""
        assert self._chats is not None
        if await self._chats.flag_mismatch(account, detail):
            log.error("X Chat keys no longer match X's", extra=ids(item, detail=detail[:200]))
            try:
                await self._slack.post_ephemeral(
                    item.team_id, item.channel_id, account.slack_user_id, mismatch_note(account)
                )
            except Exception as exc:
                log.warning("could not tell the owner", extra=ids(item, error=str(exc)[:200]))
        await self._chat_wait(
            item, f"waiting: the X Chat keys of @{account.x_username} no longer match X's; nothing is sent"
        )

    # -- outcomes ------------------------------------------------------------

    def _pause_until(self, reset_at: float) -> float:
        """When a rate-limited row may try again: never at once, never past X's longest window."""
        now = self._clock.now()
        return min(max(reset_at, now + MIN_RATE_PAUSE), now + MAX_RESET_AHEAD)

    async def _rate_limited(self, item: OutboxItem, account: Account, exc: XRateLimited, now: float) -> None:
        """X's 429 for a send (legacy or X Chat): the account pauses until the window X names, and
        the row waits with that time shown."""
        until = await self._budget.rate_limited(account.id, exc.facts, exc.reset_at, now)
        log.warning("X rate limit hit; pausing account", extra=ids(item, until=until))
        await self._store.reschedule(
            item.id, OutboxState.WAITING, until, f"rate limited until {_hhmm(until)}", held_since=now
        )

    async def _retry_later(self, item: OutboxItem, exc: Exception) -> None:
        # Failures since the row last moved count too: a row that fails before its claim (a
        # read-back, an upload) backs off as one that fails after it.
        self._failures[item.id] += 1
        attempts = max(1, item.attempts, self._failures[item.id])
        delay = backoff(attempts, self._config.retry_base, self._config.retry_cap)
        state = OutboxState.SENDING if item.state is OutboxState.SENDING else OutboxState.QUEUED
        log.warning(
            "X send failed for now; retrying", extra=ids(item, error=str(exc), retry_in=round(delay, 2))
        )
        await self._store.reschedule(
            item.id, state, self._clock.now() + delay, str(exc) or type(exc).__name__
        )

    async def _unexpected(self, item: OutboxItem, exc: Exception) -> None:
        """An error no rule covers (a bug, a corrupt value): retried a few times, then an unsent
        row is failed with the reason, so it cannot hold its channel forever. A ``sending`` row
        keeps being read back instead: X may have it."""
        if item.state is not OutboxState.SENDING and self._failures[item.id] + 1 >= MAX_UNEXPECTED:
            reason = f"the bridge kept failing on it ({type(exc).__name__}: {exc})"
            await self._fail(item, Undeliverable(reason, Failure.OTHER))
        else:
            await self._retry_later(item, exc)

    async def _cancel(self, item: OutboxItem) -> None:
        reason = "deleted in Slack before it was sent"
        await self._store.reschedule(item.id, OutboxState.CANCELLED, 0.0, reason)
        self._failures.pop(item.id, None)
        self._scans.pop(item.id, None)
        log.info("deleted in Slack mid-send and not on X: not sent", extra=ids(item))

    async def _fail(self, item: OutboxItem | Unreadable, error: BridgeError) -> None:
        """Give up on ``item`` for good: ``str(error)`` is recorded and told, its failure counted."""
        reason = str(error)
        failure = failure_of(error)
        self._feedback.failing.add(item.id)
        try:
            await self._store.mark_failed(item.id, reason, failure)
            self._failures.pop(item.id, None)
            log.warning("message not sent to X", extra=ids(item, reason=reason))
            await self._feedback.tell_failure(item, failure, not_sent(reason))
        finally:
            self._feedback.failing.discard(item.id)

    async def _group_refused(self, item: OutboxItem, error: XRefused) -> None:
        """X refused for good to create the group this row was to create.

        No group exists, so the channel is unmapped (it would be a bridge to nothing) and the
        channel told who may try again. The rows waiting behind it for that group fail with the
        same reason rather than each asking X again.
        """
        assert item.target.new_group is not None
        await self._fail(item, error)
        mapping, behind = await self._store.abandon_group(
            item.team_id, item.channel_id, item.target.new_group
        )
        for other in behind:
            await self._fail(other, error)
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

    async def _park(self, item: OutboxItem, account: Account) -> None:
        state = OutboxState.SENDING if item.state is OutboxState.SENDING else OutboxState.WAITING
        await self._store.reschedule(
            item.id,
            state,
            UNTIL_RECONNECTED,
            f"waiting for <@{account.slack_user_id}> to reconnect @{account.x_username} with /xdm connect",
        )


def _is_group(conversation_id: str | None) -> bool:
    return bool(conversation_id) and "-" not in str(conversation_id)


def _hhmm(epoch: float) -> str:
    """A time of day for people; total, since a reset may come from X's headers."""
    try:
        return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M:%S UTC")
    except (OverflowError, ValueError, OSError):
        return "later"


def _source_fields(source: Any) -> tuple[str, list[Any] | None, str | None, list[dict[str, Any]]]:
    """Text, blocks, thread_ts and files of a stored Slack message; raises if it is not one."""
    if not isinstance(source, dict):
        raise TypeError(f"the stored message is a {type(source).__name__}, not an object")
    blocks = source.get("blocks") or None
    if blocks is not None and not isinstance(blocks, list):
        raise TypeError("the stored blocks are not a list")
    thread_ts = source.get("thread_ts")
    files = [f for f in source.get("files") or [] if isinstance(f, dict)]
    return str(source.get("text") or ""), blocks, str(thread_ts) if thread_ts else None, files
