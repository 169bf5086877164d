"""Sending a row as a legacy X DM (``POST /2/dm_conversations/...``): its files uploaded to X
first, the row claimed (committed) before its POST, X's answer recorded; a group created by
its first message; a Slack delete carried to X.

Split from ``Delivery`` (which decides what is sent when). A row found ``sending`` (a crash, a
time-out) is read back (``bridge.reconcile.Reconciler``) before any resend, because X has no
idempotency key; any 2xx is a send, even one that does not say which DM X made.
"""

from __future__ import annotations

import functools
import logging
from typing import Protocol

from bridge.budget import Budget
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
from bridge.feedback import ids
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
    one_to_one_id,
)
from bridge.outcomes import LOOK_AGAIN, UNNAMED_NOTE, After, Outcomes
from bridge.ports import (
    Clock,
    MappingStore,
    OutboxMediaStore,
    OutboxSending,
    RelayedEvents,
    SlackClient,
    XClient,
)
from bridge.reconcile import Reconciler
from bridge.render import Renderer
from bridge.tokens import TokenManager

log = logging.getLogger(__name__)

DELETE_NOTE = (
    "Deleted on X as well. Note that X removes a DM only from the sending account's view: "
    "the other people in the conversation may still see it."
)


class SenderStore(OutboxSending, OutboxMediaStore, RelayedEvents, MappingStore, Protocol):
    """The outbox writes of a DM send, its file and its group (parts of ``bridge.ports.Store``)."""


class Sender:
    """Delivers rows of legacy DM conversations; errors it does not settle go to ``Delivery``."""

    def __init__(
        self,
        store: SenderStore,
        x: XClient,
        slack: SlackClient,
        tokens: TokenManager,
        budget: Budget,
        clock: Clock,
        outcomes: Outcomes,
        renderer: Renderer,
        reconciler: Reconciler,
    ) -> None:
        self._store = store
        self._x = x
        self._slack = slack
        self._tokens = tokens
        self._budget = budget
        self._clock = clock
        self._outcomes = outcomes
        self._renderer = renderer
        self._reconciler = reconciler

    async def deliver(self, item: OutboxItem, account: Account) -> After:
        """Render the row if it is not yet, read it back if it is ``sending``, then send it."""
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
            await self._outcomes.ephemeral(item, UNNAMED_NOTE.format(what=what))
        elif item.author_id and event_ids:
            await self._outcomes.ephemeral(item, DELETE_NOTE)

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
