"""Sending a row of an encrypted conversation through X Chat (issue 19), with the account's keys.

Split from ``Delivery`` (which decides what is sent when). The message is encrypted and signed
once and kept with the row before its first attempt; every retry posts those very bytes, and a
row caught ``sending`` is read back for its signed message id before it goes again (X and the
people's apps tell a message by that id, so the other side sees it once). Without usable keys
the row waits with the reason: nothing is ever sent in the clear instead.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from dataclasses import replace
from typing import Any, Protocol

from bridge.budget import Budget, ReadEndpoint
from bridge.errors import (
    RateFacts,
    XAuthRevoked,
    XError,
    XRateLimited,
    XRefused,
    XSentUnconfirmed,
    XTransient,
)
from bridge.feedback import ids
from bridge.media import FileUnavailable, MediaPlan, plan_media
from bridge.model import Account, OutboxItem, OutboxKind, OutboxState, RenderedPart, Sent, one_to_one_id
from bridge.outcomes import LOOK_AGAIN, UNNAMED_NOTE, After, Outcomes
from bridge.ports import Clock, OutboxChat, OutboxSending, RelayedEvents, SlackClient
from bridge.render import Renderer
from bridge.tokens import TokenManager
from bridge.xchat import ChatSend, ChatSession, ChatSessions, KeyMismatch, NoChatIdentity, mismatch_note

log = logging.getLogger(__name__)

CHAT_DELETE_NOTE = "Deleted on X Chat as well, for everyone in the conversation."
CHAT_READ_PAGES = 3  # pages of a conversation read back for a message id before it is posted again
# X Chat's attachment media types by the category a file is planned under (X's examples use 5 for
# any other file).
CHAT_MEDIA_TYPES = {"dm_image": 1, "dm_gif": 2, "dm_video": 3}
CHAT_MEDIA_FILE = 5
# A refusal naming the account's own registered key (not a conversation key, whose staleness is X's
# rule for one message): the identity no longer matches what X holds.
IDENTITY_KEY_REFUSAL = re.compile(r"(public|signing|identity)[ _-]?key", re.IGNORECASE)


class ChatSenderStore(OutboxSending, OutboxChat, RelayedEvents, Protocol):
    """The outbox writes of an X Chat send and what was relayed (parts of ``bridge.ports.Store``)."""


class ChatSender:
    """Delivers rows of encrypted conversations; errors it does not settle go to ``Delivery``."""

    def __init__(
        self,
        store: ChatSenderStore,
        chats: ChatSessions | None,
        slack: SlackClient,
        tokens: TokenManager,
        budget: Budget,
        clock: Clock,
        outcomes: Outcomes,
        renderer: Renderer,
        chat_wait: float,
    ) -> None:
        self._store = store
        self._chats = chats
        self._slack = slack
        self._tokens = tokens
        self._budget = budget
        self._clock = clock
        self._outcomes = outcomes
        self._renderer = renderer
        self._chat_wait = chat_wait

    async def deliver(self, item: OutboxItem, account: Account) -> After:
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
            await self._wait(item, f"waiting: {exc}")
            return LOOK_AGAIN
        except KeyMismatch as exc:
            await self._key_mismatch(item, account, str(exc))
            return LOOK_AGAIN
        target = item.target
        conversation = target.conversation_id or one_to_one_id(account.x_user_id, str(target.participant_id))
        if item.kind is OutboxKind.DELETE:
            await self._delete(item, account, session, conversation)
            return LOOK_AGAIN
        if item.text is None and not item.deleted:
            parts = await self._renderer.render(item)
            if parts is None:
                return LOOK_AGAIN
            item = await self._store.render(item.id, await self._parts(item, parts))
        if item.state is OutboxState.SENDING and item.chat is not None:
            found = await self._find(item, account, session, conversation)
            if found is not None:
                return await self._outcomes.sent(item, found)
        if item.deleted:
            await self._outcomes.cancel(item)
            return LOOK_AGAIN
        return await self._send(item, account, session, conversation)

    async def _parts(self, item: OutboxItem, parts: list[RenderedPart]) -> list[RenderedPart]:
        """The parts as for a DM (the first file rides with the text, each further one alone); an
        edit changes the text only (X Chat's edits carry no files)."""
        if item.kind is OutboxKind.EDIT:
            return [RenderedPart(p.text) for p in parts if p.text] or [RenderedPart(parts[0].text)]
        return parts

    async def _send(
        self, item: OutboxItem, account: Account, session: ChatSession, conversation: str
    ) -> After:
        assert item.text is not None
        if item.chat is None:
            text = item.text
            edit_of = await self._edit_target(item)
            attachments = await self._attachments(item, account, session, conversation)
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
                found = await self._find(item, account, session, conversation)
            budgets = self._budget.correct(account.id, exc.facts)
            return await self._outcomes.sent(item, found or Sent(conversation, None), budgets)
        except XTransient as exc:
            await self._budget.observe(account.id, exc.facts)
            await self._outcomes.retry_later(
                item, exc
            )  # still "sending": read back before the same bytes again
            return LOOK_AGAIN
        except XRateLimited as exc:
            await self._outcomes.rate_limited(item, account, exc, now)
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
        return await self._outcomes.sent(item, sent, self._budget.correct(account.id, posted.facts))

    async def _attachments(
        self, item: OutboxItem, account: Account, session: ChatSession, conversation: str
    ) -> list[dict[str, Any]] | None:
        """The part's file, encrypted and uploaded into the conversation, as the attachment its
        message names ([] without one). A file X or Slack refuses is left out and its author told;
        None when the part was only that file (the row is failed)."""
        if item.media is None:
            return []
        plan = plan_media(item.media)
        if not isinstance(plan, MediaPlan):
            await self._outcomes.without_file(item, plan.reason)
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
            await self._outcomes.without_file(
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

    async def _find(
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

    async def _delete(
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
            await self._outcomes.ephemeral(item, UNNAMED_NOTE.format(what=what))
        elif item.author_id and sequence_ids:
            await self._outcomes.ephemeral(item, CHAT_DELETE_NOTE)

    async def _wait(self, item: OutboxItem, reason: str) -> None:
        state = OutboxState.SENDING if item.state is OutboxState.SENDING else OutboxState.WAITING
        log.warning("encrypted message waits for X Chat keys", extra=ids(item, reason=reason))
        await self._store.reschedule(item.id, state, self._clock.now() + self._chat_wait, reason)

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
        await self._wait(
            item, f"waiting: the X Chat keys of @{account.x_username} no longer match X's; nothing is sent"
        )
