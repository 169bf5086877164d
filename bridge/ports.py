"""The ports: everything the core needs from the outside world, as Protocols.

Adapters implement these; the core depends only on them. All I/O is async; the
SQLite store runs its work on one owner thread behind these coroutines.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping as FileInfo
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from bridge.errors import Failure, RateFacts
from bridge.media import MediaSource
from bridge.model import (
    Accepted,
    Account,
    AuthorizationRequest,
    Button,
    ChannelMapping,
    EventPage,
    InboundEvent,
    InboundItem,
    InboundOrigin,
    InboundState,
    IncomingMessage,
    OAuthState,
    OutboxItem,
    OutboxState,
    PendingConnection,
    ReadGap,
    RenderedPart,
    Sent,
    SlackMember,
    Target,
    TokenSet,
    Unreadable,
    XUser,
)


class Clock(Protocol):
    """Time, and waiting for it: ``bridge.scheduler.SystemClock`` in production, virtual time in
    unit tests (tests/virtual_clock.py), so the workers' timing is tested without real sleeps."""

    def now(self) -> float:
        """Wall-clock time in epoch seconds (X's resets are epoch seconds)."""
        ...

    async def sleep(self, seconds: float) -> None: ...

    async def wait(self, event: asyncio.Event, seconds: float) -> bool:
        """Until ``event`` is set (True) or ``seconds`` have passed (False)."""
        ...


class AccountReads(Protocol):
    """Connected X accounts looked up, never changed (``adapters/store/accounts.py`` and
    ``lookups.py``): what commands and the poster ask. Each account read decrypts its tokens."""

    async def get_account(self, account_id: int) -> Account | None: ...
    async def account_for_user(self, team_id: str, slack_user_id: str) -> Account | None: ...
    async def list_accounts(self) -> list[Account]: ...
    async def find_accounts(
        self, *, team_id: str | None = None, x_user_id: str | None = None
    ) -> list[Account]:
        """The accounts matching every filter given (by index: never the whole table)."""
        ...


class AccountStore(AccountReads, Protocol):
    """Connected X accounts and their tokens (``adapters/store/accounts.py``). Every method is
    one transaction."""

    async def save_account(
        self, team_id: str, slack_user_id: str, user: XUser, tokens: TokenSet
    ) -> Account: ...
    async def update_tokens(self, account_id: int, tokens: TokenSet) -> None: ...
    async def set_needs_reconnect(self, account_id: int, needs: bool) -> None: ...
    async def disconnect_account(self, account_id: int, now: float, by: str) -> list[ChannelMapping]:
        """In one transaction: delete the account's tokens, mark it disconnected (and needing
        reconnection), and pause every mapping that sends as it (``paused_by`` = ``by``).

        The account row stays, so its outbox rows keep waiting for it. Returns the mappings
        paused now. ``save_account`` for the same Slack user clears the disconnection.
        """
        ...

    async def resume_mappings(self, account_id: int) -> list[ChannelMapping]:
        """Un-pause the account's paused mappings (it is connected again); returns them.

        Mappings held for another X account (``hold_for_previous_account``) stay paused."""
        ...

    async def hold_for_previous_account(
        self, account_id: int, previous: XUser, current: XUser, now: float
    ) -> list[ChannelMapping]:
        """The account now connects ``current`` instead of ``previous``: hold what was theirs.

        Mappings and unsent rows held for ``current`` are released (due now, in the state they
        had). When ``previous`` is another X user, every mapping of the account bound to a
        conversation id is paused and held for ``previous``, and every unsent row for a
        conversation id goes to state ``held``; returns the mappings newly held.
        """
        ...

    def refresh_lock(self, account_id: int) -> AbstractAsyncContextManager[LockedAccount]:
        """Held while an account's token is re-read and refreshed: X's refresh tokens are single-use,
        so across every instance sharing the store only one refresh per account may run at a time.

        What the refresh reads and writes meanwhile goes through the ``LockedAccount`` it yields,
        never through the store's other calls: a lock that holds a database connection and then
        waits for a second one deadlocks once as many refreshes run as there are connections.
        Its writes are kept even if the block then raises."""
        ...


class OAuthStates(Protocol):
    """An X authorization's first step: its OAuth state, from `/xdm connect` to X's callback
    (``adapters/store/accounts.py``)."""

    async def save_oauth_state(self, state: OAuthState) -> None: ...
    async def get_oauth_state(self, state: str, now: float) -> OAuthState | None:
        """The flow, if it is unused, unexpired and not yet confirmed in a browser (read only)."""
        ...

    async def confirm_oauth_state(self, state: str, now: float, browser_hash: str) -> OAuthState | None:
        """Bind the flow to the browser that confirmed it on the connect page.

        Sets ``browser_hash`` only where none is set yet (one browser per flow); None when the
        state is unknown, used, expired or already confirmed.
        """
        ...

    async def consume_oauth_state(self, state: str, now: float, browser_hash: str) -> OAuthState | None:
        """Use the flow once: only if unused, unexpired and confirmed by the browser whose cookie
        hashes to ``browser_hash``. One atomic step, so racing callbacks cannot both win."""
        ...


class ConnectFlowStore(OAuthStates, Protocol):
    """An X authorization on its way to becoming an account: OAuth states, then the connection
    waiting for its Slack user's click (``adapters/store/accounts.py``)."""

    async def save_pending_connection(self, pending: PendingConnection) -> None:
        """Keep an authorization (its tokens encrypted) until its Slack user confirms or cancels."""
        ...

    async def get_pending_connection(self, pending_id: str, now: float) -> PendingConnection | None:
        """The unexpired pending connection (read only: whose it is, for a refusal's wording)."""
        ...

    async def take_pending_connection(
        self, pending_id: str, team_id: str, slack_user_id: str, now: float
    ) -> PendingConnection | None:
        """Remove and return it, only for its own Slack user and before it expires. One atomic
        step: a click replayed (or racing on another instance) gets None."""
        ...

    async def take_expired_pending_connections(self, now: float) -> list[PendingConnection]:
        """Remove and return every pending connection expired by ``now`` (their tokens to revoke)."""
        ...


class MappingLookups(Protocol):
    """The mappings found by index, never by listing the table (``adapters/store/lookups.py``):
    what the poller, push, X Chat reads and the App Home ask."""

    async def find_mappings(
        self,
        *,
        team_id: str | None = None,
        account_id: int | None = None,
        conversation_id: str | None = None,
    ) -> list[ChannelMapping]:
        """The mappings matching every filter given (by index: never the whole table)."""
        ...

    async def accounts_with_groups(self) -> set[int]:
        """Ids of the accounts with a group conversation bridged (kind ``group``, or linked by a
        group's id): the poller reads their groups, which X pushes nothing for."""
        ...

    async def first_bridged_at(self, account_id: int) -> float | None:
        """When the account's first channel still bridged was bridged (None: it bridges none)."""
        ...


class MappingStore(MappingLookups, Protocol):
    """Which Slack channel bridges which X conversation (``adapters/store/mappings.py``). Every
    method is one transaction."""

    async def get_mapping(self, team_id: str, channel_id: str) -> ChannelMapping | None: ...
    async def create_mapping(
        self, mapping: ChannelMapping, *, history: bool = False
    ) -> ChannelMapping | None:
        """Insert; return None when the channel is already mapped (nothing written). With
        ``history`` (and a conversation id), the conversation's history is asked for in the
        same transaction (as ``request_backfill`` at ``created_at``): a crash cannot leave a
        mapping whose history request was lost."""
        ...

    async def delete_mapping(
        self, team_id: str, channel_id: str, *, made: ChannelMapping | None = None
    ) -> ChannelMapping | None:
        """Unmap the channel; with ``made``, only if its mapping is still that one (whoever
        checked ``made`` must not delete a mapping made since). Returns what was deleted."""
        ...

    async def abandon_group(
        self, team_id: str, channel_id: str, group: tuple[str, ...]
    ) -> tuple[ChannelMapping | None, list[OutboxItem]]:
        """X refused for good to create the group ``group``: unmap the channel if it still waits
        for that group, and return the mapping removed and the channel's unfinished rows
        addressed to that group (for the caller to fail), in one transaction."""
        ...

    async def set_conversation_id(self, team_id: str, channel_id: str, conversation_id: str) -> None: ...
    async def list_mappings(self) -> list[ChannelMapping]: ...


class PollLookups(Protocol):
    """The accounts the poller reads on each pass: ids by index without decrypting any token,
    then in full only those it works on (``adapters/store/lookups.py``)."""

    async def account_ids_to_read(self) -> list[int]:
        """Ids of the accounts whose DMs are read: connected, not needing reconnection (one whose
        tokens no key opens shows as needing it once read, ``get_account``), in id order."""
        ...

    async def accounts_by_id(self, ids: Sequence[int]) -> list[Account]:
        """The accounts of ``ids`` still in the store, with their tokens, in id order."""
        ...


class InboundTaking(Protocol):
    """X → Slack, the readers' side: events read from X (poll, push placed, history, X Chat)
    taken into rows per channel."""

    async def take_inbound(
        self,
        account_id: int,
        events: Sequence[InboundEvent],
        newest_event_id: str | None,
        now: float,
        *,
        gap: ReadGap | None = None,
        tally: dict[str, int] | None = None,
    ) -> int:
        """Record X events (oldest first) and advance the account's cursor, one take per account
        at a time: in one transaction, or (SQLite, whose one thread must stay free for acks) in
        transactions of a few rows each, the cursor moved (or the gap kept) with the last and the
        account's channels waiting from the first when the read is unfinished.

        Each event lands once per channel, whoever reads it (unique ``dm_event_id`` and
        channel). It is queued for every channel bridging its conversation (an event seen
        before only where that channel was bridged before it was written; history only for
        channels bridged since it was asked for), skipped in the channel it was sent from (in
        the message map, or an outbox row ``sending`` the same text there; elsewhere it is
        news, with ``sent_from_channel`` in its payload), or kept as skipped when no channel
        bridges it. ``from_self`` in a row's payload says its channel's own X account sent it
        (whichever account read it). The cursor only ever moves forward, and moving it closes
        the account's gap. With ``gap`` the read is unfinished: the cursor stays, the gap is
        kept (replacing any), and every channel of the account (or with a row it took) waits
        until the gap is closed, so nothing newer is posted before the older events still to come.
        Returns how many events were queued for Slack; a ``tally`` given is added to:
        ``echoes``, the rows written skipped as the bridge's own sends read back.
        """
        ...


class InboundPosting(Protocol):
    """X → Slack, the poster's side: the rows' channel heads posted into Slack once, in order."""

    async def inbound_heads(
        self, after: tuple[str, str] | None = None, limit: int | None = None
    ) -> list[InboundItem]:
        """Per channel, the queued or posting row with the lowest ``seq``: only heads may be posted.

        In ``(team_id, channel_id)`` order; with ``after``, only the channels that sort after it,
        and at most ``limit`` heads: a big backlog is walked a window at a time, each window
        costing its own size, not the backlog's."""
        ...

    async def mark_posting(self, item_id: int, now: float) -> InboundItem | None:
        """Claim a row for ``chat.postMessage`` (committed before the call); None if it is finished."""
        ...

    async def mark_posted(self, item_id: int, slack_ts: str, now: float) -> InboundItem | None:
        """Record the Slack message (and a message-map entry); returns the channel's next head."""
        ...

    async def reschedule_inbound(
        self, item_id: int, state: InboundState, next_attempt_at: float, error: str | None
    ) -> None:
        """Set a row's state and next attempt (leaving ``posting`` forgets when the post began)."""
        ...

    async def set_inbound_payload(self, item_id: int, payload: dict[str, Any]) -> None:
        """Replace a row's payload (media brought over so far, a note), so a retry resumes there."""
        ...

    async def hold_channel(self, team_id: str, channel_id: str, until: float) -> None:
        """Slack said 429: nothing more is posted to this channel before ``until``."""
        ...

    async def sent_from(self, dm_event_id: str) -> tuple[str, str] | None:
        """(team, channel) a DM the bridge sent came from, or None (the message map's rows of
        what the bridge posted from X do not count)."""
        ...


class InboundStatus(Protocol):
    """X → Slack as status reads see it (`/xdm status`, push health)."""

    async def latest_inbound_at(self, origin: InboundOrigin) -> float | None:
        """When the newest row that came by ``origin`` (poll, push, backfill) was recorded."""
        ...

    async def inbound_summary(
        self, account_id: int, team_id: str | None = None, channel_id: str | None = None
    ) -> dict[str, Any]:
        """``newest_event_id``, ``read_at``, ``catching_up`` (a read is unfinished, see
        ``take_inbound``), ``last_event_at``, ``counts`` by state, ``pending``
        (the account's), ``channel_pending`` (the given channel's), ``channel_failed`` and
        ``channel_last_failure`` (its rows Slack refused for good, and the newest one's reason),
        ``next_read_at`` and
        ``pushed`` (as the leader last saved them)."""
        ...


class InboundStore(InboundTaking, InboundPosting, InboundStatus, Protocol):
    """X → Slack: events taken from X into rows per channel, posted to Slack a channel head at a
    time (``adapters/store/inbound.py``)."""


class BackfillRequests(Protocol):
    """Conversation histories still to read (``adapters/store/inbound.py``)."""

    async def request_backfill(self, account_id: int, conversation_id: str, bridged_at: float) -> None:
        """A channel bridged at ``bridged_at`` wants the conversation's history: kept until
        ``finish_backfill`` (a later request for the same conversation replaces it)."""
        ...

    async def pending_backfills(self) -> list[tuple[int, str, float]]:
        """(account id, conversation id, bridged at) of every history still wanted."""
        ...

    async def finish_backfill(self, account_id: int, conversation_id: str, bridged_at: float) -> None:
        """The history asked for at ``bridged_at`` is queued (a newer request stays)."""
        ...


class CursorStore(BackfillRequests, Protocol):
    """Where each account's reads of X stand: its cursor and unfinished read, the leader's next
    read, and conversation histories still to read."""

    async def get_cursor(self, account_id: int) -> str | None:
        """The newest X ``dm_event_id`` already taken for this account, or None before its first read."""
        ...

    async def read_gap(self, account_id: int) -> ReadGap | None:
        """The account's unfinished read (kept by ``take_inbound``), or None."""
        ...

    async def set_next_read(self, account_id: int, at: float, *, pushed: bool = False) -> None:
        """When the leader reads this account's DMs next, and whether X pushes to it (for
        `/xdm status` on any instance)."""
        ...


class BudgetStore(Protocol):
    """X's rate-limit windows, persisted so restarts keep respecting them."""

    async def load_budgets(self) -> list[dict[str, Any]]:
        """Every saved window: ``key``, ``limit_``, ``remaining``, ``reset_at``."""
        ...

    async def save_budgets(self, windows: Sequence[tuple[str, int, int, float]]) -> None:
        """(key, limit, remaining, reset_at) for several windows, in one transaction (the last
        one given for a key wins)."""
        ...


class RelayedEvents(Protocol):
    """What became of relayed messages: their X events, a thread's parent (``store/relay.py``)."""

    async def relayed_events(self, team_id: str, channel_id: str, ref_ts: str) -> list[str | None]: ...
    async def message_text(self, team_id: str, channel_id: str, ts: str) -> str | None: ...
    async def known_event_ids(self, event_ids: Sequence[str]) -> set[str]: ...


class RelayStore(RelayedEvents, Protocol):
    """What Slack hands the bridge, taken into the outbox (``adapters/store/relay.py``)."""

    async def accept_if_mapped(self, message: IncomingMessage, now: float) -> Accepted | None:
        """Commit the message to its channel's outbox, the channel's mapping looked up in the same
        transaction; None if unmapped, ``new=False`` when this event or message was seen before.

        The new row comes back when it is its channel's head, so it can be sent without a scan.
        """
        ...

    async def accept_edit(
        self, team_id: str, channel_id: str, ref_ts: str, edit_ts: str, source: dict[str, Any], now: float
    ) -> str:
        """ "updated" (no part handed to X yet, in any unsent state: the text is replaced and the
        row rendered again), "queued" (a correction follows) or "unknown"."""
        ...

    async def accept_delete(
        self, team_id: str, channel_id: str, ref_ts: str, delete_ts: str, now: float
    ) -> str:
        """ "cancelled" (nothing reached X), "queued" (X's copies will be deleted) or "unknown".

        A part caught ``sending`` is marked deleted: it is read back (and deleted on X if it
        landed) but never sent again; ``reschedule`` turns it ``cancelled`` instead of requeuing.
        """
        ...


class OutboxInDoubt(Protocol):
    """The outbox's side of the poster's echo check (``store/outbox.py``)."""

    async def send_in_doubt(
        self, team_id: str, channel_id: str, conversation_id: str | None, account_ids: Sequence[int]
    ) -> bool:
        """Is a part caught ``sending`` in this channel, or one of ``account_ids``' in a channel
        they bridge to ``conversation_id``? By the pending rows only (index), never the history:
        the poster asks it for each X message its own account wrote."""
        ...


class OutboxRelease(Protocol):
    """The outbox's side of a reconnection (``store/outbox.py``): the connect flow's only call."""

    async def release_account(self, account_id: int, now: float) -> int:
        """Make every unfinished row of the account due now, whatever it waited for (a reconnection,
        a retry); ``sending`` rows stay ``sending``, so they are read back before any resend.
        Returns how many."""
        ...


class OutboxSending(Protocol):
    """A row on its way to X: rendered, claimed before its POST, or later (``store/outbox.py``)."""

    async def render(self, item_id: int, parts: Sequence[RenderedPart]) -> OutboxItem:
        """Give an unrendered row its text; extra parts become rows right behind it."""
        ...

    async def mark_sending(
        self,
        item_id: int,
        now: float,
        budgets: Sequence[tuple[str, int, int, float]] = (),
        *,
        parts: Sequence[RenderedPart] | None = None,
        source: dict[str, Any] | None = None,
    ) -> OutboxItem | None:
        """Claim a row for its POST, committed before it; ``budgets`` are saved in the same transaction.

        With ``parts`` the row is rendered in the same transaction, but only if its source is
        still ``source`` (an edit may have landed meanwhile). Returns the row as claimed, or None
        when it was cancelled, finished or edited since it was read: nothing is written then.
        """
        ...

    async def reschedule(
        self,
        item_id: int,
        state: OutboxState,
        next_attempt_at: float,
        error: str | None,
        *,
        held_since: float | None = None,
    ) -> None:
        """Set state and next attempt of a row still pending (a cancelled or finished row is left
        alone); ``held_since`` records when a hold began (kept if already set)."""
        ...

    async def mark_done(self, item_id: int, now: float) -> None:
        """Finish a row that has no DM of its own (a delete)."""
        ...


class OutboxChat(Protocol):
    """An encrypted row's X Chat message, made once and kept with it (``store/outbox.py``)."""

    async def keep_chat(self, item_id: int, text: str, chat: dict[str, Any]) -> OutboxItem | None:
        """Keep the row's X Chat message (encrypted and signed from ``text``) before its first
        attempt, unless it has one: the row as kept, or None when its text changed (an edit) or it
        was finished or deleted since. Only a row that still reads ``text`` takes it."""
        ...

    async def drop_chat(self, item_id: int) -> None:
        """Forget the row's prepared X Chat message: X refused it (it never took it), and it was
        signed with keys X no longer holds; the row is encrypted again with the next keys."""
        ...


class OutboxSettling(Protocol):
    """A row settled: sent, or failed for good (``store/outbox.py``)."""

    async def mark_sent(
        self, item_id: int, sent: Sent, now: float, budgets: Sequence[tuple[str, int, int, float]] = ()
    ) -> OutboxItem | None:
        """Record the DM in the message map (and the conversation id on a 1-to-1 mapping).

        Returns the channel's new head (its next unfinished row), if any, read in the same trip.
        """
        ...

    async def mark_failed(self, item_id: int, error: str, failure: Failure = Failure.OTHER) -> None:
        """Fail the row for good, its author still to be told (``failures_to_tell``)."""
        ...


class OutboxStore(OutboxInDoubt, OutboxRelease, OutboxSending, OutboxChat, OutboxSettling, Protocol):
    """The delivery worker's outbox: heads, claims, sends, retries, failures (``store/outbox.py``)."""

    async def outbox_heads(self) -> list[OutboxItem | Unreadable]:
        """Per channel, the oldest row not yet sent or failed: only heads may be sent.

        A head whose stored columns make no ``OutboxItem`` comes back as ``Unreadable`` (still
        pending): the worker fails it, so it holds up neither its channel nor anyone else.
        """
        ...

    async def failures_to_tell(self, limit: int = 100) -> list[tuple[OutboxItem | Unreadable, Failure]]:
        """Failed rows whose author was not told yet (the process stopped in between), oldest first."""
        ...

    async def failure_told(self, item_id: int) -> None: ...

    async def set_hourglass(self, item_id: int, on: bool) -> None: ...


class OutboxMediaStore(Protocol):
    """A row's media upload to X (``adapters/store/outbox.py``)."""

    async def set_media_id(
        self, item_id: int, media_id: str | None, uploaded_at: float | None = None
    ) -> None:
        """Keep X's id for the row's file (None forgets it); also ends the upload attempt."""
        ...

    async def begin_media_upload(self, item_id: int) -> None:
        """Count an upload attempt, committed before it starts: a crash during it leaves the count."""
        ...

    async def end_media_upload(self, item_id: int) -> None:
        """The upload attempt ended without taking the process down."""
        ...

    async def drop_media(self, item_id: int) -> None:
        """Give up the row's file for good; its text (if any) goes alone."""
        ...


class OutboxListings(Protocol):
    """The outbox as status reads and start-up see it (``adapters/store/upkeep.py``)."""

    async def outbox_summary(
        self, team_id: str | None = None, channel_id: str | None = None
    ) -> dict[str, Any]: ...

    async def list_outbox(self, states: Sequence[OutboxState], limit: int = 100) -> list[OutboxItem]: ...

    async def recently_sent(self, since: float, limit: int) -> list[OutboxItem]:
        """The last parts of messages marked sent at or after ``since``, newest first.

        Delivery adds their ✅ again at start-up: a process killed between marking a row sent
        and reacting in Slack would otherwise leave a delivered message without its mark.
        """
        ...


class UpkeepStore(OutboxListings, Protocol):
    """Retention, gauges and listings (``adapters/store/upkeep.py``)."""

    async def prune_batch(
        self, now: float, *, keep_after: float, inbound_keep_after: float, batch: int
    ) -> int:
        """Delete at most ``batch`` rows of each kind past retention; returns how many went.

        Finished outbox rows and message maps created before ``keep_after``; finished inbound
        rows taken before ``inbound_keep_after``; Slack event ids past Slack's retry horizon.
        Unfinished rows are never deleted.
        """
        ...

    async def outbox_gauges(self) -> dict[str, Any]:
        """``pending`` rows and ``oldest_pending_at``, read from the index of unfinished rows."""
        ...

    async def inbound_gauges(self) -> dict[str, Any]:
        """Inbound rows waiting to be posted (``queued`` or ``posting``), from the partial index of
        unfinished rows (cost follows the backlog, not the history): ``held`` (their channel is
        paused), ``catching_up`` (an unfinished read holds their channel), ``queued`` (the rest),
        and ``oldest_waiting_at`` (None when none waits)."""
        ...


class Store(
    AccountStore,
    ConnectFlowStore,
    MappingStore,
    PollLookups,
    InboundStore,
    CursorStore,
    BudgetStore,
    RelayStore,
    OutboxStore,
    OutboxMediaStore,
    UpkeepStore,
    Protocol,
):
    """Durable state: every role's port, and the roles not split out yet. Every method is one
    transaction."""

    async def ping(self) -> bool: ...


class LockedAccount(Protocol):
    """One account's row while its refresh lock is held (``Store.refresh_lock``)."""

    async def read(self) -> Account | None: ...
    async def save_tokens(self, tokens: TokenSet) -> None: ...
    async def flag_reconnect(self) -> None:
        """X refused the refresh: the account needs to be connected again."""
        ...


class XClient(Protocol):
    """X API v2, user context. Raises the ``XError`` family; ``facts`` carry rate-limit headers."""

    async def me(self, token: str) -> XUser: ...
    async def user_by_username(self, token: str, username: str) -> XUser | None: ...
    async def send(
        self, token: str, target: Target, text: str, *, media_id: str | None = None
    ) -> tuple[Sent, RateFacts]:
        """Send one DM; empty ``text`` is left out, so a ``media_id`` alone is a valid DM.

        A ``target.new_group`` creates that group with this DM (``Sent`` names the new group).
        """
        ...

    async def create_group(
        self, token: str, participant_ids: Sequence[str], text: str
    ) -> tuple[Sent, RateFacts]: ...
    async def event_page(
        self, token: str, target: Target, *, pagination_token: str | None = None, max_results: int = 100
    ) -> EventPage:
        """One page of the conversation's message events, newest first (``next_token`` pages back).

        For a ``new_group`` target (its id not known yet), the account's events in every conversation.
        """
        ...

    async def dm_events(
        self,
        token: str,
        *,
        max_results: int,
        pagination_token: str | None = None,
        conversation_id: str | None = None,
        participant_id: str | None = None,
    ) -> tuple[EventPage, RateFacts]:
        """One page of events, newest first: every conversation's (``GET /2/dm_events``),
        with ``conversation_id`` that one's, with ``participant_id`` the 1-to-1 with that user's
        (``GET /2/dm_conversations/with/{participant_id}/dm_events``). Each is a read on the
        window of its endpoint (``bridge.budget.ReadEndpoint``)."""
        ...

    async def dm_event(self, token: str, event_id: str) -> tuple[EventPage, RateFacts]:
        """``GET /2/dm_events/{event_id}``: a page of that one event (its conversation named), or
        an empty page when X does not show it (not yet listed, or deleted)."""
        ...

    async def download_dm_media(self, token: str, url: str) -> bytes:
        """The bytes of a DM attachment, from the TON URL X gave for it."""
        ...

    async def upload_media(self, token: str, media: MediaSource, *, media_type: str, category: str) -> str:
        """Upload DM media (``category`` dm_image/dm_gif/dm_video); the id is ready to attach.

        ``media`` is read piece by piece into X's chunked upload: memory stays bounded by a chunk.

        Raises ``XRefused`` when X refuses or fails to process it, ``XTransient`` when
        processing outlasts the client's media timeout.
        """
        ...

    async def delete_event(self, token: str, event_id: str) -> None:
        """Delete a DM the token's user sent; an event X no longer knows is not an error."""
        ...


class XApp(Protocol):
    """X's app-only surface for push: webhooks (Bearer) and activity subscriptions."""

    async def list_webhooks(self) -> list[dict[str, Any]]: ...
    async def create_webhook(self, url: str) -> dict[str, Any]:
        """Register ``url``; X checks it with a CRC first. Returns ``{id, url, valid, created_at}``."""
        ...

    async def validate_webhook(self, webhook_id: str) -> bool:
        """Re-run the CRC; True when the webhook is valid again."""
        ...

    async def replay(self, webhook_id: str, start: float, end: float) -> str:
        """Ask X to push again what it pushed (or tried to) between ``start`` and ``end``."""
        ...

    async def list_subscriptions(self) -> list[dict[str, Any]]: ...
    async def subscribe(self, user_token: str, event_type: str, user_id: str, webhook_id: str) -> None:
        """Subscribe a user to a private event type, with that user's own token."""
        ...


class XOAuth(Protocol):
    """OAuth 2.0 Authorization Code with PKCE against X."""

    def begin(self) -> AuthorizationRequest: ...
    def authorize_url(self, state: str, code_verifier: str) -> str:
        """X's authorize URL for a flow ``begin`` started (its S256 challenge from the verifier)."""
        ...

    async def exchange(self, code: str, code_verifier: str) -> TokenSet: ...
    async def refresh(self, refresh_token: str) -> TokenSet:
        """Raise ``XAuthRevoked`` when X refuses the refresh token for good."""
        ...

    async def revoke(self, token: str) -> None:
        """Ask X to revoke an access or refresh token (``POST /2/oauth2/revoke``).

        Raises ``XTransient`` when X did not confirm (no answer, 5xx) and ``XRefused`` for a 4xx.
        """
        ...


class SlackClient(Protocol):
    """The Slack Web API calls the core makes."""

    async def add_reaction(self, team_id: str, channel_id: str, ts: str, name: str) -> None: ...
    async def remove_reaction(self, team_id: str, channel_id: str, ts: str, name: str) -> None: ...
    async def post_ephemeral(self, team_id: str, channel_id: str, user_id: str, text: str) -> None: ...
    async def ask(
        self, team_id: str, channel_id: str | None, user_id: str, text: str, buttons: Sequence[Button]
    ) -> None:
        """Ask ``user_id`` with buttons: an ephemeral message in ``channel_id``, or a direct
        message from the bot when it is None. Clicks come back through Slack's interactivity."""
        ...

    async def post_message(self, team_id: str, channel_id: str, text: str) -> str:
        """Post as the bot; returns the message's ts."""

    async def post_as(
        self,
        team_id: str,
        channel_id: str,
        text: str,
        *,
        username: str,
        icon_url: str | None,
        metadata: dict[str, Any],
    ) -> str:
        """Post as someone else (``chat:write.customize``) with message metadata; returns the ts.

        The text is shown literally, with Slack's markup off (``mrkdwn: false``): ``*_~`` and
        backticks never format, a leading ``>`` never quotes. Only ``&``, ``<`` and ``>`` must be
        escaped (``translate.to_slack``); ``<…>`` tokens the caller writes itself still work.

        Raises ``SlackRateLimited`` (Retry-After), ``SlackTransient`` or ``SlackRefused``.
        """
        ...

    async def upload_file(
        self, team_id: str, channel_id: str, filename: str, data: bytes, *, title: str
    ) -> str:
        """Share a file into a channel (``files:write``); returns Slack's file id."""
        ...

    async def update_message(self, team_id: str, channel_id: str, ts: str, text: str) -> None:
        """``chat.update`` of a message the bot posted (its sender's name and avatar stay), the
        text shown literally as ``post_as``'s. Raises as ``post_as`` does."""
        ...

    async def delete_message(self, team_id: str, channel_id: str, ts: str) -> bool:
        """``chat.delete`` of a message the bot posted; False when Slack has no such message
        (deleted already). Raises as ``post_as`` does."""
        ...

    async def find_posted(self, team_id: str, channel_id: str, event_id: str, oldest: float) -> str | None:
        """The ts of a message we posted since ``oldest`` whose metadata carries ``event_id``."""
        ...

    async def display_name(self, team_id: str, user_id: str) -> str: ...
    async def member(self, team_id: str, user_id: str) -> SlackMember | None:
        """Whether ``user_id`` is a workspace admin or owner (``users.info``); None if Slack cannot say."""
        ...

    async def bot_in_channel(self, team_id: str, channel_id: str) -> bool | None:
        """Whether the bot is a member of the channel (``conversations.info`` ``is_member``).

        False also when Slack does not show the bot the channel at all (a private channel it
        is not in); None when Slack could not be asked.
        """
        ...

    async def bot_name(self, team_id: str) -> str:
        """The bot's user name, for "/invite @name" (``auth.test``)."""
        ...

    async def respond(
        self,
        response_url: str,
        text: str,
        *,
        in_channel: bool = False,
        replace: bool = False,
        buttons: Sequence[Button] = (),
    ) -> None:
        """Answer through a ``response_url``; ``replace`` replaces the message whose button was
        clicked (its buttons go with it). With ``buttons`` the answer is a question (its clicks
        come back through Slack's interactivity)."""
        ...

    async def file_info(self, team_id: str, file_id: str) -> dict[str, Any]:
        """The full ``files[]`` object of a file an event carried only as a stub (``check_file_info``).

        Raises ``bridge.media.FileUnavailable`` (``retryable`` when Slack did not answer).
        """
        ...

    def open_file(
        self, team_id: str, file: FileInfo[str, Any], *, max_bytes: int
    ) -> AbstractAsyncContextManager[MediaSource]:
        """A Slack ``files[]`` element's bytes as a stream, fetched with the bot token.

        Refuses before reading anything when Slack's size is over ``max_bytes``. Raises
        ``bridge.media.FileUnavailable`` (``FileTooLarge`` past ``max_bytes``).
        """
        ...
