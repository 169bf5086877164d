"""Rows to domain values and back, shared by both stores (their tables have the same columns)."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from adapters.store.crypto import TokenCipher
from bridge.errors import ConfigError
from bridge.model import (
    Account,
    ChannelMapping,
    EventKind,
    InboundEvent,
    InboundItem,
    InboundOrigin,
    InboundState,
    IncomingMessage,
    MappingKind,
    OutboxItem,
    OutboxKind,
    OutboxState,
    PendingConnection,
    ReadGap,
    Target,
    TokenSet,
    Unreadable,
    XUser,
)
from bridge.reconcile import comparable

log = logging.getLogger(__name__)


class Row(Protocol):
    """A database row by column name: a dict from sqlite-utils, a Record from asyncpg."""

    def __getitem__(self, key: str, /) -> Any: ...
    def get(self, key: str, /) -> Any: ...


D = TypeVar("D")


@functools.cache
def _as_stored(cls: Any, read: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in read)


def by_name(cls: Callable[..., D], row: Row, **read: Any) -> D:
    """The dataclass ``cls`` from the row's columns of its fields' names; ``read``: the fields not
    stored as they are (JSON, enums, 0/1 booleans, NULL for an empty text, another column)."""
    return cls(**{name: row.get(name) for name in _as_stored(cls, tuple(read))}, **read)


def insert_sql(table: str, row: dict[str, Any]) -> str:
    """``INSERT INTO table (columns) VALUES (?, …)`` for ``row`` (``{column: value}``)."""
    return f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})"


def account(row: Row, cipher: TokenCipher, reported: set[int]) -> Account:
    """The account; one whose stored tokens no key opens (its key rotated away, its ciphertext
    corrupt) reads as needing reconnection, with no tokens, so it costs only itself: it is
    not polled, its rows are parked, and connecting it again writes tokens that open. It is
    logged once (by id, never a token) per store: ``reported`` holds the ids told."""
    try:
        tokens = _tokens(row, cipher, row["expires_at"])
    except UNREADABLE:
        if row["id"] not in reported:
            reported.add(row["id"])
            log.error(
                "an X account's stored tokens cannot be decrypted: it needs reconnecting",
                extra={"account_id": row["id"]},
            )
        tokens, unreadable = TokenSet("", None, None, row["scope"] or ""), True
    else:
        reported.discard(row["id"])
        unreadable = False
    return by_name(
        Account,
        row,
        tokens=tokens,
        needs_reconnect=unreadable or bool(row["needs_reconnect"]),
        disconnected=row.get("disconnected_at") is not None,
    )


def needs_reconnect(row: Row, cipher: TokenCipher) -> bool:
    """Whether the account must be connected again: X refused its refresh, or no key opens its
    stored tokens (checked without keeping what they say)."""
    if row["needs_reconnect"]:
        return True
    tokens = [t for t in (row["access_token"], row["refresh_token"]) if t]
    return not all(isinstance(t, str) and cipher.opens(t) for t in tokens)


# What decrypting a stored token raises when no key opens it: not a key's, or not even text.
UNREADABLE = (ConfigError, AttributeError, TypeError, ValueError)


def _tokens(row: Row, cipher: TokenCipher, expires_at: float | None) -> TokenSet:
    access, refresh = row["access_token"], row["refresh_token"]
    return TokenSet(
        access_token=cipher.decrypt(access) if access else "",  # empty once disconnected
        refresh_token=cipher.decrypt(refresh) if refresh else None,
        expires_at=expires_at,
        scope=row["scope"] or "",
    )


def token_columns(tokens: TokenSet, cipher: TokenCipher) -> dict[str, Any]:
    """The four token columns of ``accounts``, in their order there, the tokens encrypted."""
    return {
        "access_token": cipher.encrypt(tokens.access_token),
        "refresh_token": cipher.encrypt(tokens.refresh_token) if tokens.refresh_token else None,
        "expires_at": tokens.expires_at,
        "scope": tokens.scope,
    }


def pending_row(pending: PendingConnection, cipher: TokenCipher) -> dict[str, Any]:
    """A pending connection's columns, its tokens encrypted."""
    access, refresh, expires_at, scope = token_columns(pending.tokens, cipher).values()
    return {
        "id": pending.id,
        "team_id": pending.team_id,
        "slack_user_id": pending.slack_user_id,
        "channel_id": pending.channel_id,
        "response_url": pending.response_url,
        "x_user_id": pending.x_user.id,
        "x_username": pending.x_user.username,
        "access_token": access,
        "refresh_token": refresh,
        "token_expires_at": expires_at,
        "scope": scope,
        "expires_at": pending.expires_at,
    }


def pending_connection(row: Row, cipher: TokenCipher) -> PendingConnection | None:
    """The pending connection; None when no key opens its tokens (a rotated key: it is only
    minutes old and can simply be asked for again)."""
    try:
        tokens = _tokens(row, cipher, row["token_expires_at"])
    except UNREADABLE:
        log.warning("a pending X connection's tokens cannot be decrypted", extra={"team": row["team_id"]})
        return None
    return by_name(
        PendingConnection,
        row,
        channel_id=row["channel_id"] or "",
        x_user=XUser(row["x_user_id"], row["x_username"]),
        tokens=tokens,
    )


def mapping(row: Row) -> ChannelMapping:
    return by_name(
        ChannelMapping,
        row,
        kind=MappingKind(row["kind"]),
        created_by=row["created_by"] or "",
        created_at=row["created_at"] or 0.0,
        group_participants=tuple(json.loads(row.get("participant_ids") or "[]")),
        encrypted=bool(row.get("encrypted") or False),
    )


def mapping_row(mapping: ChannelMapping) -> dict[str, Any]:
    """The columns ``create_mapping`` writes."""
    return {
        "team_id": mapping.team_id,
        "channel_id": mapping.channel_id,
        "kind": mapping.kind.value,
        "account_id": mapping.account_id,
        "conversation_id": mapping.conversation_id,
        "participant_id": mapping.participant_id,
        "created_by": mapping.created_by,
        "created_at": mapping.created_at,
        "participant_username": mapping.participant_username,
        "participant_ids": json.dumps(list(mapping.group_participants))
        if mapping.group_participants
        else None,
        "encrypted": mapping.encrypted,
    }


def item(row: Row) -> OutboxItem:
    """The row as the core's value. SQLite keeps any type in any column, so each value is checked
    as it is read: a row no code path writes raises (``readable`` reports it). The checks go in
    one pass (this runs two or three times per relayed message)."""
    source = json.loads(row["source"] or "{}")
    media = json.loads(row["media"]) if row["media"] else None
    if not isinstance(source, dict) or not (media is None or isinstance(media, dict)):
        raise TypeError("source or media is not a JSON object")
    attempts, unfinished = row["attempts"] or 0, row.get("media_unfinished") or 0
    author_id, ref_ts = row["author_id"] or "", row["ref_ts"] or row["slack_ts"]
    _check(
        (row["id"], row["seq"], row["part"], row["parts_total"], row["account_id"], attempts, unfinished),
        (row["team_id"], row["channel_id"], row["slack_ts"], author_id, ref_ts),
        (row["text"], row["dm_event_id"], row["media_id"]),
    )
    sending_since, held_since, uploaded_at = (
        row["sending_since"],
        row["held_since"],
        row.get("media_uploaded_at"),
    )
    return by_name(
        OutboxItem,
        row,
        author_id=author_id,
        target=target(row),
        source=source,
        state=OutboxState(row["state"]),
        attempts=attempts,
        next_attempt_at=time(row["next_attempt_at"] or 0.0),
        created_at=time(row["created_at"] or 0.0),
        sending_since=None if sending_since is None else time(sending_since),
        held_since=None if held_since is None else time(held_since),
        hourglass=bool(row["hourglass"]),
        kind=OutboxKind(row["kind"] or "message"),
        ref_ts=ref_ts,
        media=media,
        media_uploaded_at=None if uploaded_at is None else time(uploaded_at),
        media_unfinished=unfinished,
        deleted=row.get("deleted_at") is not None,
        encrypted=bool(row.get("encrypted") or False),
        chat=chat_message(row.get("chat")),
    )


def _check(numbers: tuple[Any, ...], texts: tuple[Any, ...], optional_texts: tuple[Any, ...]) -> None:
    """Integers (not booleans), text, and text or NULL, as the columns hold them."""
    for value in numbers:
        if type(value) is not int:
            raise TypeError(f"{value!r} is not an integer")
    for value in texts:
        if type(value) is not str:
            raise TypeError(f"{value!r} is not text")
    for value in optional_texts:
        if value is not None and type(value) is not str:
            raise TypeError(f"{value!r} is not text")


def readable(row: Row) -> OutboxItem | Unreadable:
    """The row as an ``OutboxItem``, or what is needed to fail it when its columns make none."""
    try:
        return item(row)
    except (ValueError, TypeError, KeyError) as exc:  # JSONDecodeError is a ValueError
        log.error("outbox row cannot be read", extra={"outbox_id": row.get("id"), "error": str(exc)})

        def text(name: str) -> str:
            value = row.get(name)
            return value if isinstance(value, str) else ""

        account_id = row.get("account_id")
        return Unreadable(
            id=row["id"],
            team_id=text("team_id"),
            channel_id=text("channel_id"),
            slack_ts=text("slack_ts"),
            ref_ts=text("ref_ts") or text("slack_ts"),
            author_id=text("author_id"),
            account_id=account_id if isinstance(account_id, int) else None,
            reason=f"the bridge's stored copy of it could not be read ({exc})",
        )


def chat_message(value: Any) -> dict[str, Any] | None:
    """A row's prepared X Chat message (``chat``), or None; anything else is not a row we wrote."""
    if value is None:
        return None
    chat = json.loads(value)
    if not isinstance(chat, dict) or not isinstance(chat.get("message_id"), str):
        raise TypeError("the prepared X Chat message is not an object with a message id")
    return chat


def time(value: Any) -> float:
    """A stored time; NaN or infinity is none (a row due at NaN would never wait, nor at
    infinity ever go, and either would hold its channel)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(f"{value!r} is not a time")
    return float(value)


def target(row: Row) -> Target:
    """A row's target; a group X has created (``target_conversation``) wins over creating it."""
    participant, conversation = row["target_participant"], row["target_conversation"]
    group = row.get("target_group")
    _check((), (), (participant, conversation, group))
    if participant is None and conversation is None and group:
        members = tuple(json.loads(group))
        _check((), members, ())
        return Target(new_group=members)
    return Target(participant_id=participant, conversation_id=conversation)


def message_source(message: IncomingMessage) -> str:
    """The JSON an accepted message keeps for rendering."""
    source = {
        "user_id": message.user_id,
        "text": message.text,
        "blocks": list(message.blocks),
        "files": list(message.files),
        "thread_ts": message.thread_ts,
        "subtype": message.subtype,
    }
    return json.dumps(source, separators=(",", ":"))


def json_or_none(value: dict[str, Any] | None) -> str | None:
    return json.dumps(value, separators=(",", ":")) if value is not None else None


NOT_BRIDGED = "no channel bridges this conversation"  # an inbound row kept, not queued


# Is the channel of the inbound row ``i`` paused (held until it is resumed)?
_PAUSED = (
    "EXISTS (SELECT 1 FROM mappings AS m WHERE m.team_id = i.team_id AND m.channel_id = i.channel_id "
    "AND m.paused_at IS NOT NULL)"
)


# When a channel's next inbound row (``i``) waits, SQL shared by both stores (``number`` turns an
# event id column into a number the engine compares): the channel is paused (its account
# disconnected, or held for a previous X account) until it is resumed; or it is bridged and a
# read of its account's DMs is unfinished (a gap, see ``ReadGap``): older events are still to
# come, and X's order comes first. A row another account's read took waits on that account's
# gap only until the channel's own account has read past it (all older events are rows then):
# an account that is never read again (disconnected mid-gap) holds no one else's channel for
# ever. A channel no longer bridged gets nothing more, so it waits for nothing. A channel bridged
# to an encrypted X Chat conversation waits while a read of that conversation is unfinished
# (``xchat_cursors.gap_newest``): X Chat is read one conversation at a time, so only its own.
def inbound_waits(number: Callable[[str], str]) -> str:
    return (
        f"{_PAUSED} "
        "OR EXISTS (SELECT 1 FROM mappings AS m JOIN xchat_cursors AS x ON x.gap_newest IS NOT NULL "
        "AND x.account_id = m.account_id AND x.conversation_id = m.conversation_id "
        "WHERE m.team_id = i.team_id AND m.channel_id = i.channel_id AND m.encrypted) "
        "OR EXISTS (SELECT 1 FROM mappings AS m JOIN cursors AS c ON c.gap_newest IS NOT NULL "
        "AND c.account_id = m.account_id WHERE m.team_id = i.team_id AND m.channel_id = i.channel_id) "
        "OR EXISTS (SELECT 1 FROM mappings AS m JOIN cursors AS c ON c.gap_newest IS NOT NULL "
        "AND c.account_id = i.account_id WHERE m.team_id = i.team_id AND m.channel_id = i.channel_id "
        "AND m.account_id <> i.account_id AND NOT EXISTS (SELECT 1 FROM cursors AS own "
        f"WHERE own.account_id = m.account_id AND {number('own.newest_event_id')} >= i.seq))"
    )


def inbound_gauges_sql(number: Callable[[str], str], index_hint: str = "") -> str:
    """One pass over the rows still to post (the partial index ``inbound_pending``: the backlog,
    never the history), each classed as ``inbound_waits`` classes it: held by a paused channel,
    waiting for an unfinished read (catching up), or neither."""
    return (
        "SELECT COUNT(*) AS waiting, COALESCE(SUM(CASE WHEN paused THEN 1 ELSE 0 END), 0) AS held, "
        "COALESCE(SUM(CASE WHEN waits AND NOT paused THEN 1 ELSE 0 END), 0) AS catching_up, "
        "MIN(created_at) AS oldest FROM ("
        f"SELECT i.created_at, {_PAUSED} AS paused, ({inbound_waits(number)}) AS waits "
        f"FROM inbound AS i {index_hint} WHERE i.state IN ('queued', 'posting')) AS w"
    )


def inbound_gauges(row: Row | None) -> dict[str, Any]:
    waiting = int(row["waiting"] or 0) if row else 0
    held = int(row["held"] or 0) if row else 0
    catching_up = int(row["catching_up"] or 0) if row else 0
    return {
        "queued": waiting - held - catching_up,
        "held": held,
        "catching_up": catching_up,
        "oldest_waiting_at": None if row is None or row["oldest"] is None else float(row["oldest"]),
    }


# Inbound rows done with (the same predicate as the partial index inbound_finished_created_at).
INBOUND_FINISHED = "state IN ('posted', 'skipped', 'failed')"

FAILED_COUNT_SQL = (
    "SELECT COUNT(*) AS n FROM inbound WHERE team_id = ? AND channel_id = ? AND state = 'failed'"
)
# Is a read of the channel's encrypted X Chat conversation unfinished (its rows wait)?
CHAT_GAP_SQL = (
    "SELECT COUNT(*) AS n FROM mappings AS m JOIN xchat_cursors AS x ON x.gap_newest IS NOT NULL "
    "AND x.account_id = m.account_id AND x.conversation_id = m.conversation_id "
    "WHERE m.team_id = ? AND m.channel_id = ? AND m.encrypted"
)
FAILED_LAST_SQL = (
    "SELECT last_error FROM inbound WHERE team_id = ? AND channel_id = ? AND state = 'failed' "
    "ORDER BY id DESC LIMIT 1"
)


def read_gap(row: Row) -> ReadGap | None:
    """The unfinished read kept in a ``cursors`` row, if any."""
    if row["gap_newest"] is None:
        return None
    return ReadGap(
        token=row["gap_token"],
        newest=str(row["gap_newest"]),
        oldest=None if row["gap_oldest"] is None else str(row["gap_oldest"]),
        restarts=int(row["gap_restarts"] or 0),
        opened_at=float(row["gap_opened_at"] or 0.0),
    )


def from_self(event: InboundEvent, x_user_id: str | None) -> bool:
    """Did the X account ``x_user_id`` itself send this event (from X's app, say)?"""
    return event.sender_id is not None and event.sender_id == x_user_id


def news_for(bridged_at: float, event: InboundEvent, already_taken: bool) -> bool:
    """Is this X event for a channel bridged at ``bridged_at``? History (a backfill) is for the
    channels bridged when it was asked for (``bridged_at`` in its payload) or since; an event
    first seen now is news everywhere its conversation is bridged; one seen before (a replayed
    or doubled push) only where the channel was bridged before it was written, so a channel
    linked later does not get an old message as if it were new."""
    if event.origin is InboundOrigin.BACKFILL:
        asked = event.payload.get("bridged_at")
        return not isinstance(asked, (int, float)) or bridged_at >= asked
    written = event.payload.get("created_at")
    return not already_taken or not isinstance(written, (int, float)) or written >= bridged_at


ECHO_IN_FLIGHT = "relayed from Slack by the bridge (matched in the outbox)"
ECHO_UNCONFIRMED = "relayed from Slack by the bridge (X took it without naming it; matched now)"
# The outbox rows a DM of the channel's own account may be: sent, but X never said which event
# (delivery's ``_settle_unconfirmed``). Oldest first.
UNCONFIRMED_SENDS = (
    "SELECT id, slack_ts, part, text FROM outbox WHERE team_id = ? AND channel_id = ? "
    "AND state = 'sent' AND dm_event_id IS NULL AND text IS NOT NULL ORDER BY seq, part"
)


def unconfirmed_match(candidates: Iterable[Row], event: InboundEvent) -> Row | None:
    """The send X took without naming it that ``event`` is (same text, links in one spelling)."""
    theirs = comparable(str(event.payload.get("text") or ""))
    return next((r for r in candidates if comparable(str(r["text"])) == theirs), None)


@dataclass(frozen=True)
class ChannelRow:
    """What one bridged channel gets of an X event: the inbound row to write, before the
    outbox check that only the store can make (``check_outbox``)."""

    where: tuple[str, str]
    payload: dict[str, Any]
    state: InboundState
    why: str | None
    check_outbox: bool  # the channel's own account wrote it and no send names it: in flight?


def channel_rows(
    mappings: Iterable[Row],
    event: InboundEvent,
    known: set[tuple[str, str]],
    sent_from: tuple[str, str] | None,
) -> list[ChannelRow]:
    """The rule both stores follow to fan an X event out to the channels bridged to its
    conversation (``mappings``: team_id, channel_id, created_at and the channel's own
    ``x_user_id``): each channel once (``known`` already have it), only where it is news,
    never back into the channel that sent it (``sent_from``), marked in a sibling channel."""
    found: list[ChannelRow] = []
    for mapping in mappings:
        where = (str(mapping["team_id"]), str(mapping["channel_id"]))
        if where in known or not news_for(mapping["created_at"], event, bool(known)):
            continue
        # "From self" is the channel's own X account's message, whichever account read it.
        mine = from_self(event, mapping["x_user_id"])
        payload = {**event.payload, "from_self": mine}
        state, why = InboundState.QUEUED, None
        if sent_from == where:
            state, why = InboundState.SKIPPED, "relayed from Slack by the bridge"
        elif sent_from is not None:
            payload["sent_from_channel"] = sent_from[1]  # news here: sent from the other channel
        found.append(ChannelRow(where, payload, state, why, check_outbox=mine and sent_from is None))
    return found


INBOUND_COLUMNS = (
    "dm_event_id, seq, account_id, conversation_id, team_id, channel_id, event_type, sender_id, "
    "payload, origin, state, attempts, next_attempt_at, last_error, created_at"
)


def inbound_values(
    account_id: int,
    event: InboundEvent,
    where: tuple[str | None, str | None],
    payload: dict[str, Any],
    state: InboundState,
    why: str | None,
    now: float,
) -> list[Any]:
    """One inbound row as the values of ``INBOUND_COLUMNS`` but ``attempts`` and
    ``next_attempt_at`` (both 0 for a new row, written as literals by the stores)."""
    return [
        event.dm_event_id,
        snowflake(event.dm_event_id),
        account_id,
        event.conversation_id,
        where[0],
        where[1],
        str(event.kind),  # the enum's text: the database keeps plain strings
        event.sender_id,
        json.dumps(payload, separators=(",", ":")),
        str(event.origin),
        state.value,
        why,
        now,
    ]


def snowflake(event_id: str) -> int:
    """X's ids are snowflakes: as integers they sort in X's order (non-digits sort first)."""
    return int(event_id) if event_id.isdigit() and len(event_id) <= 19 else 0


def inbound_item(row: Row) -> InboundItem:
    return by_name(
        InboundItem,
        row,
        conversation_id=row["conversation_id"] or "",
        team_id=row["team_id"] or "",
        channel_id=row["channel_id"] or "",
        kind=EventKind(row["event_type"] or EventKind.MESSAGE_CREATE),
        payload=json.loads(row["payload"] or "{}"),
        origin=InboundOrigin(row["origin"]),
        state=InboundState(row["state"]),
        next_attempt_at=time(row["next_attempt_at"] or 0.0),
        created_at=row["created_at"] or 0.0,
    )
