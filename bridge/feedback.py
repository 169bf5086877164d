"""What Slack shows of the messages on their way to X: the ✅, ⏳ and ⚠️ reactions, and the
ephemeral that tells an author why a message was not sent.

Split from ``Delivery`` (which decides what is sent when): none of this may hold up a send or
stop delivery, so every call here is best effort and logged, and what a killed process did not
get to show is shown by the next start (``recheck_recent_sends``, ``tell_untold_failures``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from bridge.errors import Failure
from bridge.model import OutboxItem, OutboxKind, Unreadable
from bridge.ports import Clock, SlackClient

log = logging.getLogger(__name__)

SENT = "white_check_mark"
WARNING = "warning"
HOURGLASS = "hourglass_flowing_sand"
UNTOLD_BATCH = 100  # failed rows whose authors a stopped process did not tell, read at a time

EventHook = Callable[[str, OutboxItem], Awaitable[None]]
FailedHook = Callable[[OutboxItem, Failure], Awaitable[None]]


class FeedbackStore(Protocol):
    """The outbox's side of feedback (a part of ``bridge.ports.Store``)."""

    async def failures_to_tell(self, limit: int = 100) -> list[tuple[OutboxItem | Unreadable, Failure]]: ...
    async def failure_told(self, item_id: int) -> None: ...
    async def recently_sent(self, since: float, limit: int) -> list[OutboxItem]: ...


class Feedback:
    """Reactions and ephemerals for outbox rows, and the hooks told of each send and failure."""

    def __init__(
        self,
        store: FeedbackStore,
        slack: SlackClient,
        recheck_within: float,
        recheck_limit: int,
        clock: Clock,
    ) -> None:
        self._store = store
        self._slack = slack
        self._recheck_within = recheck_within
        self._recheck_limit = recheck_limit
        self._clock = clock
        self.failing: set[int] = set()  # rows the worker is failing and telling right now
        self.on_event: EventHook | None = None
        self.on_failed: FailedHook | None = None

    async def acknowledge(self, item: OutboxItem) -> None:
        """Slack's side of a send: the ✅ on a message's last part, the ⏳ gone."""
        if item.hourglass:
            await self.unreact(item, HOURGLASS)
        if item.part == item.parts_total - 1 and item.kind is OutboxKind.MESSAGE and not item.deleted:
            await self.react(item, SENT)
        if self.on_event is not None:
            await self.on_event("sent", item)

    async def tell_failure(self, item: OutboxItem | Unreadable, failure: Failure, text: str) -> None:
        """The ⚠️ and the author's ephemeral for a failed row, then the row marked told.

        Failing a row records that its author is still to be told in the same commit, so a
        process stopped before this point leaves the telling to the next start
        (``tell_untold_failures``); one stopped after the ephemeral but before the mark tells
        twice, which is the better side to err on."""
        if item.team_id and item.channel_id:  # an unreadable row may have lost even these
            if item.hourglass:
                await self.unreact(item, HOURGLASS)
            await self.react(item, WARNING)
            if item.author_id:
                await self.ephemeral(item, text)
        await self._store.failure_told(item.id)
        if not isinstance(item, OutboxItem) or not item.team_id or not item.channel_id:
            return
        if self.on_event is not None:
            await self.on_event("failed", item)
        if self.on_failed is not None:
            await self.on_failed(item, failure)

    async def tell_untold_failures(self) -> None:
        """Tell the authors of rows that failed while a process stopped before telling them."""
        told: set[int] = set()
        while True:
            try:
                untold = await self._store.failures_to_tell(UNTOLD_BATCH)
            except Exception as exc:  # the database away: the next start tries again
                log.warning("could not list failures to tell", extra={"error": str(exc)})
                return
            fresh = [(i, f) for i, f in untold if i.id not in told and i.id not in self.failing]
            if not fresh:
                return
            for item, failure in fresh:
                told.add(item.id)
                reason = item.reason if isinstance(item, Unreadable) else (item.last_error or "unknown")
                log.info("telling a failure a stopped process did not", extra=ids(item, reason=reason))
                try:
                    await self.tell_failure(item, failure, not_sent(reason))
                except Exception as exc:
                    log.warning("could not tell a failure", extra=ids(item, error=str(exc)[:200]))

    async def recheck_recent_sends(self) -> None:
        """Give the messages sent just before this worker started their ✅ (and take their ⏳).

        Marking a row sent and reacting in Slack are two steps; a process killed between them
        leaves a delivered message unmarked. Adding a reaction Slack already has is harmless,
        so the last few minutes' sends are simply marked again, one at a time (Slack's tier).
        """
        since = self._clock.now() - self._recheck_within
        try:
            items = await self._store.recently_sent(since, self._recheck_limit)
        except Exception as exc:  # a missing ✅ must never stop delivery
            log.warning("could not list recent sends to mark", extra={"error": str(exc)})
            return
        for item in reversed(items):  # oldest first, as they were sent
            if item.hourglass:
                await self.unreact(item, HOURGLASS)
            if not item.deleted:
                await self.react(item, SENT)

    async def react(self, item: OutboxItem | Unreadable, name: str) -> None:
        try:
            await self._slack.add_reaction(item.team_id, item.channel_id, item.ref_ts, name)
        except Exception as exc:  # a missing reaction must never stop delivery
            log.warning("could not add reaction", extra=ids(item, reaction=name, error=str(exc)))

    async def unreact(self, item: OutboxItem | Unreadable, name: str) -> None:
        try:
            await self._slack.remove_reaction(item.team_id, item.channel_id, item.ref_ts, name)
        except Exception as exc:
            log.warning("could not remove reaction", extra=ids(item, reaction=name, error=str(exc)))

    async def ephemeral(self, item: OutboxItem | Unreadable, text: str) -> None:
        try:
            await self._slack.post_ephemeral(item.team_id, item.channel_id, item.author_id, text)
        except Exception as exc:
            log.warning("could not tell the author", extra=ids(item, error=str(exc)))


def not_sent(reason: str) -> str:
    """What the author of a failed message is told, in an ephemeral beside it."""
    return f":warning: Your message was not sent to X: {reason}"


def ids(item: OutboxItem | Unreadable, **more: object) -> dict[str, object]:
    """A row's identifiers for a log line (never its text)."""
    return {
        "team": item.team_id,
        "channel": item.channel_id,
        "outbox_id": item.id,
        "account_id": item.account_id,
        "slack_ts": item.slack_ts,
        "part": item.part,
        **more,
    }
