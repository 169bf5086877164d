"""What becomes of one outbox row: sent, failed for good, tried again later, paused for X's rate
limit, cancelled, parked until a reconnection, or sent without its file.

Split from ``Delivery`` (which decides what is sent when) so that its senders, the legacy DM one
(``bridge.sender``) and the X Chat one (``bridge.chat_sender``), settle a row the same way: one
count of failures per row, one backoff, one way of telling an author.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from bridge.budget import MAX_RESET_AHEAD, Budget, BudgetRow
from bridge.errors import BridgeError, Failure, Undeliverable, XRateLimited, failure_of
from bridge.feedback import Feedback, ids, not_sent
from bridge.model import Account, OutboxItem, OutboxState, Sent, Unreadable
from bridge.ports import Clock, OutboxMediaStore, OutboxSending, OutboxSettling
from bridge.scheduler import backoff

log = logging.getLogger(__name__)

UNTIL_RECONNECTED = 1e15  # next_attempt_at of rows parked until their account is reconnected
MIN_RATE_PAUSE = 1.0  # a 429 waits at least this long, whatever its reset says
MAX_UNEXPECTED = 5  # unexpected errors before an unsent row is failed rather than retried
UNNAMED_NOTE = (
    "{what} not deleted on X: X took it without saying which DM it made, so the bridge cannot name "
    "it to delete it. Delete it in X's app if it must go."
)

FollowUp = Callable[[Awaitable[None], OutboxItem | None], None]


@dataclass(frozen=True)
class After:
    """What one delivery leaves for its account's task."""

    following: OutboxItem | None = None  # the channel's next row, when this one reached X
    settled: bool = False  # reached X: nothing changed that the scheduler must look at


LOOK_AGAIN = After()


class OutcomeStore(OutboxSettling, OutboxSending, OutboxMediaStore, Protocol):
    """The outbox writes that settle a row (parts of ``bridge.ports.Store``)."""


class Outcomes:
    """Settles rows for Delivery and its senders; counts each row's failures since it last moved."""

    def __init__(
        self,
        store: OutcomeStore,
        feedback: Feedback,
        budget: Budget,
        clock: Clock,
        follow_up: FollowUp,
        retry_base: float,
        retry_cap: float,
    ) -> None:
        self._store = store
        self._feedback = feedback
        self._budget = budget
        self._clock = clock
        self._follow_up = follow_up
        self._retry_base = retry_base
        self._retry_cap = retry_cap
        self._failures: dict[int, int] = defaultdict(int)  # row -> failed attempts since it last moved

    async def sent(self, item: OutboxItem, sent: Sent, budgets: Sequence[BudgetRow] = ()) -> After:
        """X has the row's DM: recorded, its ✅ left to a follow-up; the channel's next row returned."""
        following = await self._store.mark_sent(item.id, sent, self._clock.now(), budgets)
        self._failures.pop(item.id, None)
        log.info("relayed to X", extra=ids(item, dm_event_id=sent.dm_event_id))
        self._follow_up(self._feedback.acknowledge(item), item)
        return After(following, settled=True)

    def pause_until(self, reset_at: float) -> float:
        """When a rate-limited row may try again: never at once, never past X's longest window."""
        now = self._clock.now()
        return min(max(reset_at, now + MIN_RATE_PAUSE), now + MAX_RESET_AHEAD)

    async def rate_limited(self, item: OutboxItem, account: Account, exc: XRateLimited, now: float) -> None:
        """X's 429 for a send (legacy or X Chat): the account pauses until the window X names, and
        the row waits with that time shown."""
        until = await self._budget.rate_limited(account.id, exc.facts, exc.reset_at, now)
        log.warning("X rate limit hit; pausing account", extra=ids(item, until=until))
        await self._store.reschedule(
            item.id, OutboxState.WAITING, until, f"rate limited until {hhmm(until)}", held_since=now
        )

    async def retry_later(self, item: OutboxItem, exc: Exception) -> None:
        # Failures since the row last moved count too: a row that fails before its claim (a
        # read-back, an upload) backs off as one that fails after it.
        self._failures[item.id] += 1
        attempts = max(1, item.attempts, self._failures[item.id])
        delay = backoff(attempts, self._retry_base, self._retry_cap)
        state = OutboxState.SENDING if item.state is OutboxState.SENDING else OutboxState.QUEUED
        log.warning(
            "X send failed for now; retrying", extra=ids(item, error=str(exc), retry_in=round(delay, 2))
        )
        await self._store.reschedule(
            item.id, state, self._clock.now() + delay, str(exc) or type(exc).__name__
        )

    async def unexpected(self, item: OutboxItem, exc: Exception) -> None:
        """An error no rule covers (a bug, a corrupt value): retried a few times, then an unsent
        row is failed with the reason, so it cannot hold its channel forever. A ``sending`` row
        keeps being read back instead: X may have it."""
        if item.state is not OutboxState.SENDING and self._failures[item.id] + 1 >= MAX_UNEXPECTED:
            reason = f"the bridge kept failing on it ({type(exc).__name__}: {exc})"
            await self.fail(item, Undeliverable(reason, Failure.OTHER))
        else:
            await self.retry_later(item, exc)

    async def cancel(self, item: OutboxItem) -> None:
        """Deleted in Slack mid-send, and X does not have it: it is never sent again."""
        reason = "deleted in Slack before it was sent"
        await self._store.reschedule(item.id, OutboxState.CANCELLED, 0.0, reason)
        self._failures.pop(item.id, None)
        log.info("deleted in Slack mid-send and not on X: not sent", extra=ids(item))

    async def fail(self, item: OutboxItem | Unreadable, error: BridgeError) -> None:
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

    async def park(self, item: OutboxItem, account: Account) -> None:
        """The account needs reconnecting: the row waits for ``/xdm connect`` (still ``sending``
        if it was, so it is read back first)."""
        state = OutboxState.SENDING if item.state is OutboxState.SENDING else OutboxState.WAITING
        await self._store.reschedule(
            item.id,
            state,
            UNTIL_RECONNECTED,
            f"waiting for <@{account.slack_user_id}> to reconnect @{account.x_username} with /xdm connect",
        )

    async def without_file(self, item: OutboxItem, reason: str) -> None:
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

    async def ephemeral(self, item: OutboxItem, text: str) -> None:
        """A note to the row's author (best effort)."""
        await self._feedback.ephemeral(item, text)


def hhmm(epoch: float) -> str:
    """A time of day for people; total, since a reset may come from X's headers."""
    try:
        return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M:%S UTC")
    except (OverflowError, ValueError, OSError):
        return "later"
