"""X → Slack for encrypted X Chat conversations: read, decrypt, verify, then the legacy queue.

X Chat has no inbox read across conversations (``GET /2/dm_events``): each bridged encrypted
conversation is read on its own, ``GET /2/chat/conversations/{id}/events``, newest first, back to
where the last read stopped (a cursor per account and conversation, in the store). Reads draw on
the account's one read budget, as the legacy reads do (X publishes no limit for X Chat's reads;
its headers decide), through ``Inbound``'s counted read.

What a read gives is decrypted and verified at the edge (X's ``chat_xdk``): an event whose
signature or encryption does not verify is never shown; it is counted (``chat_refused``) once,
when first read. What verifies becomes inbound rows, the legacy path's: posted as the sender, in
the conversation's order (X's sequence ids are snowflakes: the row's ``seq``), exactly once (rows
are unique per event and channel, so a read again after a crash or restart queues nothing new;
the cursor only saves reading). Edits and deletes made on X are rows too, in their place in the
order, that update or delete the Slack message their target was posted as.

A backlog bigger than one read takes (``max_pages``, or the read budget running out first) is
read on, not lost: X pages a conversation's events newest first only, so the read is left
unfinished, a gap kept in the store with X's pagination token and the newest sequence id seen;
the cursor stays where it was, what was read is queued, and the conversation's channels post
nothing meanwhile (``rows.inbound_waits``), so nothing newer goes before the older events still
to come. The next reads (after a restart too) go on from the token until they reach the cursor;
then it moves to the kept newest and the channels post, in the conversation's order. A token X
refuses (expired) is read again from the newest, as the legacy poller does.

Echoes: the bridge's own sends come back in the conversation's events. Delivery records each
send's sequence id, so the legacy rules apply as they are: one the store knows as sent from a
channel is skipped there, one read while its channel has a send in doubt waits for it to settle,
and one the team account wrote in an X app is posted, marked "sent from X".
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bridge.errors import BridgeError, RateFacts, XAuthRevoked, XError, XRefused
from bridge.model import Account, ChannelMapping, EventKind, InboundEvent, InboundOrigin, XUser
from bridge.ports import Clock, MappingLookups
from bridge.tokens import TokenManager
from bridge.xchat import ChatEvent, ChatEventKind, ChatPage

log = logging.getLogger("bridge.chat_inbound")

FULL_PAGE = 100  # X's largest page: once a first page is all new, read back in big steps
MAX_PAGES = 20  # per conversation and read; a longer backlog is read on by the next reads
TOKEN_RESTARTS = 3  # X refused an unfinished read's token: read again from the newest


class ChatInboundStore(MappingLookups, Protocol):
    """The roles X Chat reads use: which encrypted conversations an account bridges."""


@dataclass(frozen=True)
class ChatGap:
    """An unfinished read of one conversation: the next read goes on from ``token`` (X's
    pagination token; None: from the newest again) back to the cursor, which then moves to
    ``newest`` (the newest sequence id any of its reads saw)."""

    token: str | None
    newest: str
    restarts: int = 0


@dataclass(frozen=True)
class ChatPush:
    """One ``chat.received`` push: only ciphertext and routing (X's Activity API). Its event is
    verified with the account's keys before a read of its conversation is rung."""

    conversation_id: str
    sender_id: str
    encoded_event: str = field(repr=False)
    key_change_event: str | None = field(default=None, repr=False)


class ChatPushRefused(BridgeError):
    """A pushed X Chat event whose signature (or its key change's) does not verify: forged or
    tampered with. Never posted; the push is refused and counted."""


class ChatReader(Protocol):
    """One account's X Chat, decrypted and verified (``adapters.x.xchat.ChatConversations``)."""

    user_id: str

    async def events(
        self, token: str, conversation_id: str, *, max_results: int, pagination_token: str | None = None
    ) -> tuple[ChatPage, RateFacts]: ...

    async def users(self, token: str, user_ids: list[str]) -> dict[str, XUser]: ...

    async def media(self, token: str, conversation_id: str, media_hash_key: str, key_version: str) -> bytes:
        """An attachment, downloaded and decrypted (raises ``XError`` when it cannot be)."""
        ...

    async def verify_pushed(self, token: str, push: ChatPush) -> str | None:
        """The sequence id of a pushed event that verifies; None when it cannot be checked yet
        (its conversation key is not known before a read); raises ``ChatPushRefused``."""
        ...


class ChatReaders(Protocol):
    """Each account's reader, from its stored X Chat identity."""

    async def reader(self, account: Account) -> ChatReader | None:
        """None when the bridge holds no identity registered with X for the account."""
        ...


class ChatCursors(Protocol):
    """Role store: how far each encrypted conversation has been read, and where X's events were
    posted (``adapters.store.xchat.ChatCursorStore``)."""

    async def chat_cursor(self, account_id: int, conversation_id: str) -> str | None: ...

    async def save_chat_cursor(
        self, account_id: int, conversation_id: str, sequence_id: str, now: float
    ) -> None:
        """Move the cursor forward to ``sequence_id`` (never back)."""
        ...

    async def chat_gap(self, account_id: int, conversation_id: str) -> ChatGap | None:
        """The conversation's unfinished read, if any."""
        ...

    async def save_chat_gap(self, account_id: int, conversation_id: str, gap: ChatGap, now: float) -> None:
        """Keep (or open) the conversation's unfinished read: its channels wait until it closes."""
        ...

    async def close_chat_gap(
        self, account_id: int, conversation_id: str, sequence_id: str, now: float
    ) -> None:
        """The unfinished read reached the cursor: move it to ``sequence_id`` and let the
        conversation's channels post, in one step."""
        ...

    async def posted_ts(self, team_id: str, channel_id: str, dm_event_id: str, author: str) -> str | None:
        """The Slack ts X event ``dm_event_id`` of ``author``'s was posted as in that channel, or
        None (not posted there, or not theirs)."""
        ...


# ``Inbound.budgeted_read``: one read within the account's read budget, counted by outcome.
BudgetedRead = Callable[
    [Account, Callable[[], Awaitable[tuple[ChatPage, RateFacts]]], int], Awaitable[ChatPage]
]


@dataclass
class ChatRead:
    """One poll of an account's encrypted conversations: the events new since the last read
    (oldest first per conversation) and where each conversation's cursor goes once they are taken."""

    events: list[InboundEvent] = field(default_factory=list)
    cursors: list[tuple[str, str]] = field(default_factory=list)
    # Conversations whose read reached the cursor after an unfinished one: closed on ``taken``.
    closing: set[str] = field(default_factory=set)
    # Conversations whose read is unfinished: (the gap to keep before the events are taken, its
    # token where this read started, so a crash before ``taken`` reads them again; the gap to go
    # on from once they are in the store).
    gaps: list[tuple[str, ChatGap, ChatGap]] = field(default_factory=list)
    # Why the poll stopped before the last conversation (the read budget spent, X failing): what
    # was read whole before it is taken, then this is raised (``Inbound`` schedules the retry).
    failure: XError | None = None


class ChatInbound:
    """Reads the account's encrypted conversations and queues what is new (leader only)."""

    def __init__(
        self,
        store: ChatInboundStore,
        cursors: ChatCursors,
        readers: ChatReaders,
        tokens: TokenManager,
        clock: Clock,
        *,
        page_size: int = 10,
        reserve: int = 2,
        max_pages: int = MAX_PAGES,
        full_page: int = FULL_PAGE,
        token_restarts: int = TOKEN_RESTARTS,
    ) -> None:
        self._store = store
        self._cursors = cursors
        self._readers = readers
        self._tokens = tokens
        self._clock = clock
        self._page_size = page_size
        self._reserve = reserve
        self._max_pages = max_pages
        self._full_page = full_page
        self._token_restarts = token_restarts
        self._pushed: dict[int, set[str]] = {}  # sequence ids pushed, not read yet, per account
        self._turn: dict[int, int] = {}  # which conversation each account's next poll reads first
        # ``(kind, label)``: ``chat_refused`` (an event that did not verify), ``echo``.
        self.on_event: Callable[[str, str], None] = lambda kind, label: None

    def pushed(self, account_id: int, sequence_id: str) -> None:
        """X pushed this event: the read that takes it counts it as pushed."""
        kept = self._pushed.setdefault(account_id, set())
        if len(kept) < 1000 and sequence_id.isdigit():
            kept.add(sequence_id)

    async def has_keys(self, account: Account) -> bool:
        """Does the bridge hold X Chat keys, registered with X, for the account?"""
        return await self._readers.reader(account) is not None

    async def verify_push(self, account: Account, push: ChatPush) -> str | None:
        """Check a pushed event with the account's keys: its sequence id (the read it rings counts
        it as pushed), or None when it cannot be checked now (no keys held, X not answering for
        the sender's keys, its conversation key not read yet): the read that follows checks it.
        Raises ``ChatPushRefused`` for an event that does not verify."""
        reader = await self._readers.reader(account)
        if reader is None:
            return None
        try:
            sequence_id: str | None = await self._tokens.call(
                account, lambda t: reader.verify_pushed(t, push)
            )
        except (XError, XAuthRevoked) as exc:
            log.info("a pushed X Chat event could not be checked now", extra={"error": str(exc)[:200]})
            return None
        if sequence_id:
            self.pushed(account.id, sequence_id)
        return sequence_id

    async def media(
        self, account: Account, conversation_id: str, media_hash_key: str, key_version: str
    ) -> bytes:
        """An X Chat attachment's bytes, decrypted with the account's keys."""
        reader = await self._readers.reader(account)
        if reader is None:
            raise XRefused("the bridge holds no X Chat keys for the account any more")
        data: bytes = await self._tokens.call(
            account, lambda t: reader.media(t, conversation_id, media_hash_key, key_version)
        )
        return data

    async def target_ts(self, team_id: str, channel_id: str, sequence_id: str, author: str) -> str | None:
        """The Slack message an X Chat event of ``author``'s was posted as in this channel (what
        their edit or delete made on X follows), or None.

        Each X Chat event is signed by its own sender only: a member of a group can sign an edit
        or a delete naming anyone's message. Only the author's own is followed, else a message
        posted in Slack as Alice could be rewritten or removed at Bob's word."""
        return await self._cursors.posted_ts(team_id, channel_id, sequence_id, author)

    async def poll(self, account: Account, read: BudgetedRead) -> ChatRead:
        """Read every encrypted conversation the account bridges: the events new since the last
        read, for ``Store.take_inbound``; ``taken`` moves the cursors once they are in the store
        (a crash between the two reads them again, and the store's unique rows keep them once)."""
        mappings = [
            m
            for m in await self._store.find_mappings(account_id=account.id)
            if m.encrypted and m.conversation_id
        ]
        done = ChatRead()
        if not mappings:
            return done
        reader = await self._readers.reader(account)
        if reader is None:
            log.warning(
                "encrypted conversations bridged, but no X Chat keys registered for the account: not read",
                extra={"account_id": account.id},
            )
            return done
        conversations = list(_conversations(mappings).items())
        # Each poll starts one conversation further, so a budget that runs out part-way through
        # the account's conversations does not always leave the same ones unread.
        turn = self._turn.get(account.id, 0) % len(conversations)
        self._turn[account.id] = turn + 1
        for conversation_id, since in conversations[turn:] + conversations[:turn]:
            try:
                await self._conversation(account, reader, read, conversation_id, since, done)
            except XError as exc:
                # Nothing read of this conversation (what a read in part took is a gap, kept).
                done.failure = exc
            if done.failure is not None:
                break
        return done

    async def holding(self, account: Account, done: ChatRead) -> None:
        """Before the events of ``done`` go into the store: the conversations read in part wait
        (their channels post nothing newer before the older events still to come)."""
        now = self._clock.now()
        for conversation_id, before, _ in done.gaps:
            await self._cursors.save_chat_gap(account.id, conversation_id, before, now)

    async def taken(self, account: Account, done: ChatRead) -> None:
        """The events of ``done`` are in the store: move the cursors past them, or keep where an
        unfinished read goes on from; a read that reached its cursor lets its channels post."""
        now = self._clock.now()
        for conversation_id, _, after in done.gaps:
            await self._cursors.save_chat_gap(account.id, conversation_id, after, now)
        for conversation_id, newest in done.cursors:
            if conversation_id in done.closing:
                await self._cursors.close_chat_gap(account.id, conversation_id, newest, now)
                log.info(
                    "the unfinished X Chat read is complete: posting resumes",
                    extra={"account_id": account.id, "conversation": conversation_id},
                )
            else:
                await self._cursors.save_chat_cursor(account.id, conversation_id, newest, now)

    async def _conversation(
        self,
        account: Account,
        reader: ChatReader,
        read: BudgetedRead,
        conversation_id: str,
        since: float,
        done: ChatRead,
    ) -> None:
        cursor = await self._cursors.chat_cursor(account.id, conversation_id)
        gap = await self._cursors.chat_gap(account.id, conversation_id)
        floor = int(cursor) if cursor and cursor.isdigit() else None
        collected: dict[int, ChatEvent] = {}
        refused: set[str] = set()
        newest: int | None = int(gap.newest) if gap and gap.newest.isdigit() else None
        token = gap.token if gap else None
        started_from = token  # where this read began: kept until what it read is in the store
        restarts = gap.restarts if gap else 0
        finished = False
        pages = 0
        while pages < self._max_pages:
            size = self._page_size if pages == 0 and gap is None else self._full_page

            async def call(token: str | None = token, size: int = size) -> tuple[ChatPage, RateFacts]:
                result: tuple[ChatPage, RateFacts] = await self._tokens.call(
                    account,
                    lambda t: reader.events(t, conversation_id, max_results=size, pagination_token=token),
                )
                return result

            try:
                page = await read(account, call, self._reserve)
            except XRefused as exc:
                if token is None or exc.status != 400:
                    raise
                # X no longer knows the token (expired: X does not say how long one lives).
                pages += 1
                restarts += 1
                finished = self._token_refused(account, conversation_id, restarts)
                if finished:
                    break
                token = started_from = None
                continue
            except XError as exc:
                if pages == 0:
                    raise
                done.failure = exc  # what was read so far is kept (a gap); the poll fails after that
                break
            pages += 1
            seen = [int(e.sequence_id) for e in page.events if e.sequence_id.isdigit()]
            seen += [int(i) for i in page.refused_ids if i.isdigit()]
            newest = max([newest or 0, *seen]) if seen else newest
            finished = floor is not None and any(s <= floor for s in seen)
            for event in page.events:
                if event.sequence_id.isdigit() and (floor is None or int(event.sequence_id) > floor):
                    collected[int(event.sequence_id)] = event
            refused.update(i for i in page.refused_ids if i.isdigit() and (floor is None or int(i) > floor))
            older = any(e.created_at is not None and e.created_at < since for e in page.events)
            if older or page.next_token is None or page.next_token == token:
                finished = True
            if finished:
                break
            token = page.next_token
        for _ in refused:
            self.on_event("chat_refused", "read")
        if refused:
            log.warning(
                "X Chat events that do not verify were refused (not posted)",
                extra={"account_id": account.id, "conversation": conversation_id, "count": len(refused)},
            )
        # What was written since the channel was bridged is new, anything older is not posted (X
        # Chat history is not backfilled). On every read, not the first only: a cursor outlives
        # its mapping, so a conversation unlinked and bridged again reads from where the old
        # bridging stopped, and what was written in between was never meant for Slack.
        collected = {s: e for s, e in collected.items() if e.created_at is None or e.created_at >= since}
        if finished:
            if newest is not None or floor is None or gap is not None:
                done.cursors.append((conversation_id, str(newest or 0)))
            if gap is not None:
                done.closing.add(conversation_id)
        elif newest is not None:
            kept = str(newest)
            done.gaps.append(
                (conversation_id, ChatGap(started_from, kept, restarts), ChatGap(token, kept, restarts))
            )
            if gap is None:
                log.warning(
                    "more new X Chat events than one read takes: the next reads go on from where "
                    "this one stopped; the conversation's channels wait until then, to keep X's order",
                    extra={"account_id": account.id, "conversation": conversation_id, "pages": pages},
                )
        done.events += await self._inbound(account, reader, [collected[s] for s in sorted(collected)])

    def _token_refused(self, account: Account, conversation_id: str, restarts: int) -> bool:
        """X refused an unfinished read's pagination token. Read back from the newest again
        (what was read already is read, and billed, again; nothing is lost): False. After
        ``token_restarts`` of those, give the gap up (the read counts as finished; the events
        between the oldest read and the cursor are never read, X showing no way to them): True."""
        ids = {"account_id": account.id, "conversation": conversation_id, "restarts": restarts}
        if restarts > self._token_restarts:
            log.warning(
                "X refused the saved pagination token again: the unfinished X Chat read is given "
                "up; events newer than the cursor and older than the oldest read are not posted",
                extra=ids,
            )
            return True
        log.warning(
            "X refused the saved pagination token (expired?): reading back from the newest event "
            "again; events already taken are read (and billed) again, none is lost",
            extra=ids,
        )
        return False

    async def _inbound(
        self, account: Account, reader: ChatReader, events: list[ChatEvent]
    ) -> list[InboundEvent]:
        shown: list[ChatEvent] = []
        for event in events:
            if event.kind is ChatEventKind.REACTION:
                continue  # not carried to Slack (yet)
            shown.append(event)
        users = await self._users(account, reader, sorted({e.sender_id for e in shown if e.sender_id}))
        pushed = self._pushed.get(account.id, set())
        found = [_inbound_event(e, users, _origin(e.sequence_id in pushed)) for e in shown]
        pushed.difference_update(e.sequence_id for e in events)
        return found

    async def _users(self, account: Account, reader: ChatReader, user_ids: list[str]) -> dict[str, XUser]:
        if not user_ids:
            return {}
        try:
            users: dict[str, XUser] = await self._tokens.call(account, lambda t: reader.users(t, user_ids))
        except (XError, XAuthRevoked) as exc:
            # Posted under their X id rather than held back: the message matters more than the name.
            log.info("could not look up X Chat senders", extra={"error": str(exc)[:200]})
            return {}
        return users


def _conversations(mappings: Sequence[ChannelMapping]) -> dict[str, float]:
    """Each encrypted conversation once, with when its first channel was bridged."""
    found: dict[str, float] = {}
    for mapping in mappings:
        assert mapping.conversation_id is not None
        found[mapping.conversation_id] = min(
            found.get(mapping.conversation_id, mapping.created_at), mapping.created_at
        )
    return found


def _sender(users: dict[str, XUser], sender_id: str) -> dict[str, Any]:
    user = users.get(sender_id)
    if user is None:
        return {"id": sender_id, "username": "", "name": "", "avatar": ""}
    return {"id": user.id, "username": user.username, "name": user.name, "avatar": user.profile_image_url}


def _origin(pushed: bool) -> InboundOrigin:
    return InboundOrigin.PUSH if pushed else InboundOrigin.POLL


def _inbound_event(event: ChatEvent, users: dict[str, XUser], origin: InboundOrigin) -> InboundEvent:
    """The store's row of a verified X Chat event: what posting it (or following it) needs."""
    payload: dict[str, Any] = {
        "text": event.text,
        "created_at": event.created_at,
        "sender": _sender(users, event.sender_id),
        "message_id": event.message_id,
        "encrypted": True,
    }
    kind = EventKind.MESSAGE_CREATE
    if event.kind is ChatEventKind.EDIT:
        kind, payload["edit_of"] = EventKind.CHAT_EDIT, event.target_sequence_id
    elif event.kind is ChatEventKind.DELETE:
        kind, payload["delete_of"] = EventKind.CHAT_DELETE, event.target_sequence_id
    media = [_attachment(a, event.key_version) for a in event.attachments]
    if any(media):
        # As the legacy path's media (brought over by the poster, progress kept in the row),
        # marked as X Chat's: downloaded from X Chat and decrypted.
        payload["media"] = [m for m in media if m]
    return InboundEvent(
        dm_event_id=event.sequence_id,
        kind=kind,
        conversation_id=event.conversation_id,
        sender_id=event.sender_id,
        payload=payload,
        origin=origin,
    )


def _attachment(attachment: dict[str, Any], key_version: str | None) -> dict[str, Any]:
    """A decrypted message's media attachment as an inbound media entry ({} for other kinds,
    a link card say)."""
    inner = attachment.get("media")
    media: dict[str, Any] = inner if isinstance(inner, dict) else attachment
    key = str(media.get("media_hash_key") or "")
    if not key or not key_version:
        return {}
    name = str(media.get("filename") or "")
    return {"media_key": key, "chat": True, "key_version": key_version, "filename": name}
