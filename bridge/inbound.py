"""X → Slack: read what people answer on X and post it into the bridged channel.

Two workers, one queue:
- the *poller* reads ``GET /2/dm_events`` for each connected account (one request covers
  all its conversations, groups included), newest first, paging back only until the last
  event already taken; new events and the moved cursor are committed together, so a
  restart neither reposts nor skips. A burst bigger than one poll reads is an unfinished
  read (a gap, with X's pagination token) kept in the store: the next polls go on from
  there, the cursor moves when it is closed, and the account's channels wait meanwhile
  (X's order). Reads draw on the account's window of ``GET /2/dm_events`` (``Budget.read``;
  X counts each DM read endpoint apart); the interval spreads what is left of the window
  over the time left in it while the account is active (an event taken, by poll or push, or a
  DM sent: ``note_activity``), push or not, since X may not push groups and may lose a push;
  slower when idle, slower still when push delivers and the account has no group; and a read
  is never made that would provoke a 429.
- pushed DMs (``rang``) name no conversation: each is *placed* by a read that names it, the
  1-to-1 the push names first, then the DM by its id, then the poller's read (``_next_step``),
  each from its own window; one a list read leaves out is looked up by its id, never let go.
- the *poster* (``bridge/poster.py``) posts each queued event into its channel with
  ``chat.postMessage`` as the X sender, one channel head at a time (X's order), exactly once:
  the row is marked ``posting`` before the call and carries the ``dm_event_id`` in Slack message metadata;
  a row found ``posting`` later is looked up in the channel's history before any repost.
  Slack's 429 holds the channel back (in order); nothing is dropped. A paused channel (its
  account disconnected, or held for a previous X account) is not posted to: its rows wait.

Every channel bridged to a conversation gets each event once (rows are per event and
channel). Echoes never happen: events the bridge sent from a channel are recognised by the
store (message map, or the outbox row still ``sending`` that text) and never posted back
there; in another channel on the same conversation they are news, marked as sent from the
first. The Slack listener ignores bot posts, so what this module posts is never relayed to X.
History asked for on linking is a row in the store until it is queued, so a crash between
the request and the read does not lose it; the poller's passes read it (``bridge/backfill.py``).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

from bridge.backfill import Backfill
from bridge.budget import Budget, ReadEndpoint
from bridge.chat_inbound import ChatInbound
from bridge.errors import (
    RateFacts,
    XAuthExpired,
    XAuthRevoked,
    XError,
    XRateLimited,
    XRefused,
)
from bridge.model import (
    Account,
    DmEvent,
    EventPage,
    InboundEvent,
    InboundItem,
    InboundOrigin,
    InboundState,
    ReadGap,
    XUser,
    inbound_event,
    one_to_one_id,
)
from bridge.ports import Clock, CursorStore, InboundTaking, MappingLookups, PollLookups, SlackClient, XClient
from bridge.poster import Poster, PosterStore
from bridge.scheduler import WakeLoop, backoff
from bridge.tokens import TokenManager

log = logging.getLogger("bridge.inbound")
T = TypeVar("T")

RUNG_TRIES = 3  # list reads a pushed DM may be missing from before it is looked up by its id alone
LOOKUP_TRIES = 6  # lookups of a pushed DM by its id that do not find it (deleted on X) before it is let go
RUNG_KEPT = 200  # pushed DM ids kept per account, awaiting the read that names their conversation
REORDER_HOLD = 2.0  # seconds a channel's newer rows wait for an older pushed DM not placed yet


class InboundWorkStore(PosterStore, PollLookups, MappingLookups, CursorStore, InboundTaking, Protocol):
    """The roles the poller (accounts to read, their cursors and wanted histories, the events
    taken) and its poster use."""


@dataclass
class _Pushed:
    """A pushed DM not placed yet (its conversation unknown), and what was tried for it."""

    dm: DmEvent  # as the push named it: id, sender and recipient
    at: float  # when it was pushed
    misses: int = 0  # list reads that did not show it
    lookups: int = 0  # lookups by its id that did not find it
    alone: bool = False  # not in the 1-to-1 its push names (a group, or X's list behind): by its id
    not_before: float = 0.0  # a lookup that missed it waits a little before the next


@dataclass(frozen=True)
class _Step:
    """One placing read: ``WITH`` the 1-to-1 with ``key`` (a peer) for ``ids``, or ``EVENT``
    (``key`` the DM's id)."""

    endpoint: ReadEndpoint
    key: str
    ids: tuple[str, ...]


@dataclass(frozen=True)
class InboundConfig:
    """Knobs, mostly for tests; the defaults are production values."""

    page_size: int = 10  # max_results: X bills each event read, so keep pages small
    max_pages: int = 5  # per poll; a longer gap is caught up on the next polls
    reserve: int = 2  # reads left in each window for delivery's read-back and backfill
    min_interval: float = 5.0
    idle_interval: float = 180.0  # no new event for ``active_for``: poll at most this often
    active_for: float = 600.0
    push_interval: float = 900.0  # with push working, polling is only a safety net
    retry_base: float = 1.0
    retry_cap: float = 300.0
    backfill: int = 20
    token_restarts: int = 3  # X refused an unfinished read's token: read again from the newest
    chat_max_pages: int = 20  # per X Chat conversation and read; a longer backlog: the next reads
    chat_full_page: int = 100  # an X Chat read's pages after its first (X's largest)
    # Channels posted to at once: a backlog waits its turn, a window at a time, and leaves the
    # store (one thread on SQLite) to acks and delivery too; Slack allows about one post a second
    # per channel anyway.
    post_channels: int = 16
    # Slack's chat.postMessage limit, about one post a second per channel with short bursts: the
    # poster paces each channel to it (a token bucket) rather than meeting 429s.
    post_rate: float = 1.0
    post_burst: int = 3


@dataclass
class _Read:
    """One poll's read of an account's DMs, going on from the unfinished read ``start`` if any."""

    start: ReadGap | None
    collected: list[DmEvent] = field(default_factory=list)
    users: dict[str, XUser] = field(default_factory=dict)
    pages: int = 0
    finished: bool = False  # back at the cursor, or at the end of what X shows

    def __post_init__(self) -> None:
        self.token = self.start.token if self.start else None
        self.newest = self.start.newest if self.start else None
        self.oldest = self.start.oldest if self.start else None
        self.restarts = self.start.restarts if self.start else 0
        # The oldest event of this poll's page before, which a page asked for with its token
        # must go past. (Not the gap's oldest: after X refused a token, the read back from the
        # newest goes through events older than that again.)
        self.behind: int | None = None

    def take(self, page: EventPage, floor: int | None, wanted: frozenset[str] = frozenset()) -> bool:
        """The page's events newer than ``floor`` (the cursor), and the ``wanted`` ones (pushed
        DMs not placed yet: X may list a DM after a newer one, past the cursor); finished at the
        cursor. False when X's pagination goes nowhere: a page asked for with a token names that
        token again, or shows nothing older than the page before (X going round in circles)."""
        asked = self.token
        self.pages += 1
        self.users.update(page.users)
        ids = [int(event.id) for event in page.events]
        for event in page.events:
            if self.newest is None or int(event.id) > int(self.newest):
                self.newest = event.id
            if floor is not None and int(event.id) <= floor:
                self.finished = True
                if event.id in wanted:
                    self.collected.append(event)
                continue
            if self.oldest is None or int(event.id) < int(self.oldest):
                self.oldest = event.id
            self.collected.append(event)
        if self.finished:
            return True
        stuck = (
            asked is not None
            and page.next_token is not None
            and (
                page.next_token == asked
                or (self.behind is not None and bool(ids) and min(ids) >= self.behind)
            )
        )
        self.behind = min(ids) if ids else self.behind
        self.token = page.next_token
        self.finished = page.next_token is None
        return not stuck

    def left(self, now: float) -> ReadGap:
        """What the next polls go on from."""
        assert self.newest is not None
        opened_at = self.start.opened_at if self.start else now
        return ReadGap(self.token, self.newest, self.oldest, self.restarts, opened_at)


def _origin(pushed: bool) -> InboundOrigin:
    """A DM a push announced came by push, even though a read of X placed it."""
    return InboundOrigin.PUSH if pushed else InboundOrigin.POLL


class Inbound:
    """Owns the poller, the poster and the backfill (all in the leader's process)."""

    def __init__(
        self,
        store: InboundWorkStore,
        x: XClient,
        slack: SlackClient,
        tokens: TokenManager,
        budget: Budget,
        clock: Clock,
        config: InboundConfig | None = None,
    ) -> None:
        self._store = store
        self._x = x
        self._slack = slack
        self._tokens = tokens
        self._budget = budget
        self._clock = clock
        self._config = config or InboundConfig()
        self._poller = WakeLoop(
            "inbound polling", clock, self._poll_due, retry_after=self._config.min_interval
        )
        self.poster = Poster(store, x, slack, tokens, clock, self._config, self._held_until, self._emit)
        self.backfill = Backfill(store, x, tokens, clock, self._config, self._history_read, self.take)
        self._stopping = False
        self._next_poll: dict[int, float] = {}
        self._last_activity: dict[int, float] = {}
        self._has_groups: set[int] = set()  # accounts with a bridged group conversation
        self._recent_new: dict[int, int] = {}  # events the last poll found new, per account
        self._pushed: dict[int, dict[str, _Pushed]] = {}  # pushed DMs not placed yet, per account
        self._place_at: dict[int, float] = {}  # when an account's pushed DMs are placed next
        self._placed: dict[int, int] = {}  # events placing pushes took since the poller's last read
        self._read_at: dict[int, float] = {}  # when each account's last read began
        self._polling: asyncio.Task[None] | None = None  # the poller's loop while ``run`` runs
        self.push_active: Callable[[int], bool] = lambda account_id: False
        # Encrypted X Chat conversations (bridge/chat_inbound.py), read with each account's poll
        # (and their media and edits brought over by the poster).
        self._chats: ChatInbound | None = None
        # What an operator counts (adapters/web/metrics.py), as ``(kind, label)``: ``posted``
        # (the row's origin), ``echo`` (a row not posted back where it was sent from),
        # ``failed`` (Slack's error code for the message), ``read`` (a DM event read by outcome)
        # and ``read_endpoint`` (a read made, by ``ReadEndpoint`` value): see ``_counted_read``.
        self.on_event: Callable[[str, str], None] | None = None

    @property
    def chats(self) -> ChatInbound | None:
        return self._chats

    @chats.setter
    def chats(self, chats: ChatInbound | None) -> None:
        self._chats = chats
        self.poster.chats = chats

    @property
    def on_posted(self) -> Callable[[InboundItem], None] | None:
        """Told each row posted to Slack."""
        return self.poster.on_posted

    @on_posted.setter
    def on_posted(self, hook: Callable[[InboundItem], None] | None) -> None:
        self.poster.on_posted = hook

    def _emit(self, kind: str, label: str) -> None:
        if self.on_event is not None:
            try:
                self.on_event(kind, label)
            except Exception:  # counting must never stop a message
                log.exception("inbound event hook failed")

    def _count_echoes(self, tally: dict[str, int]) -> None:
        for _ in range(tally.get("echoes", 0)):
            self._emit("echo", "store")

    # -- control -----------------------------------------------------------

    def poll_soon(self, account_id: int | None = None) -> None:
        """Read now (within budget): a mapping was made, an account connected (its paused
        channels may post what waits for them, too)."""
        if account_id is None:
            self._next_poll.clear()
        else:
            self._next_poll.pop(account_id, None)
        self._poller.wake()
        self.poster.wake()

    def rang(self, account_id: int, dms: Sequence[DmEvent]) -> None:
        """X pushed these DMs for the account: place each in its conversation soon, as the read
        budgets allow (``_place``; pushes arriving together share reads).

        A push says that DMs exist, not where they belong: the legacy payload names no
        conversation, and a group's message pushed in it would read as a 1-to-1. A read of X
        names each event's conversation, brings its media and its sender's avatar; what it takes
        of these ids counts as pushed (origin ``push``).

        No DMs named (an X Chat push: its conversation is read with the account's next read,
        which the push makes now, within the read budgets)."""
        if not dms:
            self.poll_soon(account_id)
            return
        now = self._clock.now()
        pending = self._pushed.setdefault(account_id, {})
        for dm in dms:
            if dm.id.isdigit() and dm.id not in pending:
                pending[dm.id] = _Pushed(dm, now)
        while len(pending) > RUNG_KEPT:
            dropped = pending.pop(next(iter(pending)))
            log.warning(
                "too many pushed DMs wait to be placed: one is left to polling",
                extra={"account_id": account_id, "dm_event_id": dropped.dm.id},
            )
        if pending:
            self._place_at[account_id] = now
            self._poller.wake()

    def _bell_delay(self, account_id: int, endpoint: ReadEndpoint = ReadEndpoint.EVENTS) -> float:
        """How long a read of ``endpoint`` made for pushed DMs waits: no more while over a quarter
        of the window's spare reads are left (conversations come in bursts: X allows 15 reads
        in 15 minutes per endpoint, and each burst should see its DMs within seconds); the last
        quarter is spread over the time left in the window, so a long conversation slows to an
        even pace instead of spending the window and waiting for its end. The reserve (reads of
        ``GET /2/dm_events`` and of a 1-to-1 kept for delivery's read-back and backfill) is never
        used. A read of ``GET /2/dm_events`` also waits ``min_interval`` after the poller's last
        (pushes close together share it)."""
        config = self._config
        now = self._clock.now()
        gap = 0.0
        if endpoint is ReadEndpoint.EVENTS:
            gap = max(0.0, self._read_at.get(account_id, -math.inf) + config.min_interval - now)
        reserve = 0 if endpoint is ReadEndpoint.EVENT else config.reserve
        remaining, limit, reset_at = self._budget.reads_left(account_id, now, endpoint)
        spare = remaining - reserve
        if reset_at is None or spare > (limit - reserve) // 4:
            return gap
        if spare <= 0:
            return max(gap, reset_at - now)
        return max(gap, (reset_at - now) / spare)

    def _listed(self, account_id: int, events: Sequence[DmEvent]) -> set[str]:
        """After a list read of ``GET /2/dm_events``: the pushed DMs it placed (let go), and a
        miss for each one it did not show (after ``RUNG_TRIES`` of those, it is looked up by its
        id: X may list a DM after newer ones, or never in this list)."""
        pending = self._pushed.get(account_id)
        if not pending:
            return set()
        found = {e.id for e in events} & pending.keys()
        for event_id in list(pending):
            if event_id in found:
                del pending[event_id]
            else:
                pending[event_id].misses += 1
        return found

    def _next_step(self, account: Account) -> _Step | None:
        """The next placing read that may go now, for the oldest pushed DM it can place; None when
        the budgets hold every one back (the poller's read places them then: ``_place``).

        Cheapest certain read first:
        1. ``GET /2/dm_conversations/with/{peer}/dm_events``, the 1-to-1 the push names (its
           sender, or for a DM the account sent from X, its recipient): a DM found there IS in
           that 1-to-1, and one read places every pushed DM of it with the DM just before them
           (an older DM whose push comes late is taken in X's order). Its window is used by
           nothing else but delivery's read-back (whose reserve is kept).
        2. ``GET /2/dm_events/{id}``, one read per DM, names the DM's conversation for certain:
           for what the 1-to-1 did not show (a group's message, X's list behind its push, a DM
           the poller's reads missed ``RUNG_TRIES`` times) or while that window is paced.
        3. Otherwise ``GET /2/dm_events``, the poller's read of every conversation, which places
           them all at once; its window is also the safety net's and the groups'.
        """
        now = self._clock.now()
        pending = self._pushed.get(account.id) or {}
        due = sorted((p for p in pending.values() if p.not_before <= now), key=lambda p: int(p.dm.id))
        if not due:
            return None
        me = account.x_user_id

        def paired(p: _Pushed) -> str | None:
            return None if p.alone or p.misses >= RUNG_TRIES else p.dm.peer(me)

        with_free = self._bell_delay(account.id, ReadEndpoint.WITH) <= 0
        event_free = self._bell_delay(account.id, ReadEndpoint.EVENT) <= 0
        for p in due:
            peer = paired(p)
            if peer is not None and with_free:
                ids = tuple(q.dm.id for q in due if paired(q) == peer)
                return _Step(ReadEndpoint.WITH, peer, ids)
            if event_free:
                return _Step(ReadEndpoint.EVENT, p.dm.id, (p.dm.id,))
        return None

    async def _place(self, account: Account) -> None:
        """Place the account's pushed DMs: each read ``_next_step`` names, while the budgets let
        them go at once; what is left is placed by the poller's next read (as soon as its window
        allows) or by a later step. Never fails the poll loop."""
        self._place_at.pop(account.id, None)
        try:
            for _ in range(RUNG_KEPT):  # each step places or rules out at least one DM
                step = self._next_step(account)
                if step is None:
                    break
                await self._place_step(account, step)
        except XRateLimited:
            pass  # X's word on a window: the plan below sees it
        except (XAuthExpired, XAuthRevoked):
            return  # the poller says the account needs reconnecting
        except Exception:
            log.exception("placing pushed DMs failed", extra={"account_id": account.id})
        self._plan_next(account.id)

    def _plan_next(self, account_id: int) -> None:
        """When the account's pushed DMs not placed yet are tried next: the poller's read at its
        window's pace for those due now, a placing step when its window or a lookup's wait allows."""
        pending = self._pushed.get(account_id)
        if not pending:
            return
        now = self._clock.now()
        due = any(p.not_before <= now for p in pending.values())
        if due:
            ring = now + self._bell_delay(account_id)
            self._next_poll[account_id] = min(self._next_poll.get(account_id, ring), ring)
        waits = [p.not_before for p in pending.values() if p.not_before > now]
        if due:
            waits.append(
                now
                + min(
                    self._bell_delay(account_id, ReadEndpoint.WITH),
                    self._bell_delay(account_id, ReadEndpoint.EVENT),
                )
            )
        at = max(now + self._config.min_interval / 10, min(waits))
        self._place_at[account_id] = min(self._place_at.get(account_id, at), at)

    async def _place_step(self, account: Account, step: _Step) -> None:
        """One placing read; what it shows of the pushed DMs is queued (with, from a 1-to-1, the
        DMs newer than the cursor that came before them), what it does not is tried otherwise."""
        pending = self._pushed.setdefault(account.id, {})
        if step.endpoint is ReadEndpoint.WITH:
            size = min(100, len(step.ids) + 1)  # and the DM just before them: X's order (a late push)

            async def call() -> tuple[EventPage, Any]:
                return await self._tokens.call(
                    account, lambda t: self._x.dm_events(t, max_results=size, participant_id=step.key)
                )

            conversation = one_to_one_id(account.x_user_id, step.key)
        else:

            async def call() -> tuple[EventPage, Any]:
                return await self._tokens.call(account, lambda t: self._x.dm_event(t, step.key))

            conversation = None
        keep = 0 if step.endpoint is ReadEndpoint.EVENT else self._config.reserve
        try:
            page = await self._counted_read(account, call, keep=keep, endpoint=step.endpoint)
        except XRefused as exc:
            # X will not show that 1-to-1 (or that DM) to the account: try the other ways.
            log.warning(
                "a pushed DM could not be read this way",
                extra={"account_id": account.id, "endpoint": step.endpoint.path, "error": str(exc)},
            )
            page = EventPage(events=(), next_token=None)
        except (XRateLimited, XAuthExpired, XAuthRevoked):
            raise
        except XError as exc:
            log.warning(
                "placing a pushed DM failed for now",
                extra={"account_id": account.id, "endpoint": step.endpoint.path, "error": str(exc)},
            )
            for event_id in step.ids:
                if (p := pending.get(event_id)) is not None:
                    p.not_before = self._clock.now() + self._config.min_interval
            return
        events = [
            e if e.conversation_id or conversation is None else replace(e, conversation_id=conversation)
            for e in page.events
        ]
        # Placed for certain: a DM a 1-to-1's read shows is in that 1-to-1 (whatever id X wrote).
        events = [
            e
            for e in events
            if e.conversation_id and (conversation is None or e.conversation_id == conversation)
        ]
        found = {e.id for e in events} & set(step.ids)
        cursor = await self._store.get_cursor(account.id)
        floor = int(cursor) if cursor and cursor.isdigit() else None
        taken = [e for e in events if e.id in found or (floor is not None and int(e.id) > floor)]
        if taken:
            await self.take(
                account.id,
                [
                    inbound_event(e, page.users, _origin(e.id in pending))
                    for e in sorted(taken, key=lambda e: int(e.id))
                ],
            )
        now = self._clock.now()
        if floor is not None:  # newer than the cursor: the poller's next read lists them again
            self._placed[account.id] = self._placed.get(account.id, 0) + sum(int(e.id) > floor for e in taken)
        for event_id in [e.id for e in taken]:
            pending.pop(event_id, None)
        for event_id in set(step.ids) - found:
            missed = pending.get(event_id)
            if missed is None:
                continue
            if step.endpoint is ReadEndpoint.WITH:
                missed.alone = True  # not in that 1-to-1 as X lists it now: looked up by its id
                continue
            missed.lookups += 1
            if missed.lookups >= LOOKUP_TRIES:
                del pending[event_id]
                log.warning(
                    "a pushed DM is not on X (deleted?): left to polling",
                    extra={"account_id": account.id, "dm_event_id": event_id},
                )
            else:
                missed.not_before = now + backoff(
                    missed.lookups, self._config.retry_base, self._config.retry_cap
                )

    def _held_until(self, item: InboundItem, now: float) -> float | None:
        """Until when a channel's next row waits: an older DM of its account was pushed moments
        ago and is not placed yet, and may belong before it (X's order). At most ``REORDER_HOLD``
        after that push: a DM the budgets cannot place soon does not hold the channel."""
        pending = self._pushed.get(item.account_id)
        if not pending or item.state is not InboundState.QUEUED:
            return None
        holds = [p.at + REORDER_HOLD for p in pending.values() if int(p.dm.id) < item.seq]
        until = max(holds, default=0.0)
        return until if until > now else None

    def wants_history(self) -> bool:
        """Is a newly bridged conversation's history posted (``backfill`` messages of it)?"""
        return self.backfill.wanted

    async def history_requested(self, account_id: int) -> None:
        """A channel was just bridged and its history asked for (the request was written with the
        mapping, ``Store.create_mapping``): read it soon. What was written before the channel was
        bridged is posted once, marked as history; the poller takes what comes after. The request
        stays in the store until the history is queued, so a crash before then does not lose it."""
        self._poller.wake()

    def wake(self) -> None:
        """New rows are queued: post them."""
        self.poster.wake()

    def next_poll_at(self, account_id: int) -> float | None:
        """When this instance (leading) reads the account next; the store has it for all."""
        return self._next_poll.get(account_id)

    @property
    def heartbeat(self) -> float:
        """When the poller last finished a look (health checks read it)."""
        return self._poller.heartbeat

    def resume(self) -> None:
        """Allow ``run`` again after ``stop`` (an instance that leads again on PostgreSQL): the
        state it keeps is a schedule, the store has the rest. The worker's, when it starts
        leading; not ``run``'s own, since a ``stop`` that comes before the task running it has
        started must still end it."""
        self._stopping = False
        self._poller.resume()
        self.poster.resume()

    async def run(self) -> None:
        """Both loops; returns when ``stop`` is called (at once, if ``stop`` came first)."""
        polling = asyncio.create_task(self._poller.run(), name="inbound-polling")
        self._polling = polling
        try:
            # asyncio.wait: a read cut short by ``stop`` ends the loop, not ``run`` with an error.
            await asyncio.gather(asyncio.wait({polling}), self.poster.run())
        finally:
            polling.cancel()

    async def stop(self, grace: float = 10.0) -> None:
        """Stop taking new work; posts cut off here stay ``posting`` and are checked on restart."""
        self._stopping = True
        self._poller.stop()
        await self.poster.stop(grace)
        polling = self._polling
        if polling is not None and not polling.done():
            # A read taking a big backlog into the store (many transactions) is cut short past the
            # grace: its cursor has not moved, so the next start reads those events again and
            # takes what is not in the store yet. Shutting down must not wait for it.
            await asyncio.wait({polling}, timeout=grace)
            polling.cancel()
            await asyncio.wait({polling})

    # -- polling -----------------------------------------------------------

    async def _poll_due(self) -> float:
        """Poll every account that is due; return how long until the next one is.

        The pass asks the store for ids (no token decrypted) and reads in full only the accounts
        it works on: those due, placing pushed DMs, or with a history wanted (one read each time)."""
        now = self._clock.now()
        ids = await self._store.account_ids_to_read()
        self._has_groups = await self._store.accounts_with_groups()
        wanted = await self.backfill.requests()
        read = await self._accounts([i for i in ids if i in wanted])
        await asyncio.gather(*(self._backfill_account(a, wanted[a.id]) for a in read.values()))
        due_ids = [i for i in ids if self._next_poll.get(i, 0.0) <= now]
        placing_ids = [i for i in ids if self._place_at.get(i, math.inf) <= now]
        read.update(await self._accounts([i for i in {*due_ids, *placing_ids} if i not in read]))
        due = [read[i] for i in due_ids if i in read]
        placing = [read[i] for i in placing_ids if i in read]
        await asyncio.gather(*(self._poll_account(a) for a in due), *(self._place(a) for a in placing))
        for account in due:
            if account.id in self._next_poll:
                # Kept in the store: `/xdm status` on any instance says when the next read is.
                await self._store.set_next_read(
                    account.id, self._next_poll[account.id], pushed=self.push_active(account.id)
                )
        upcoming = [self._next_poll[i] for i in ids if i in self._next_poll]
        upcoming += [self._place_at[i] for i in ids if i in self._place_at]
        return (min(upcoming) if upcoming else now + self._config.idle_interval) - self._clock.now()

    async def _accounts(self, ids: Iterable[int]) -> dict[int, Account]:
        """The accounts ``ids`` with their tokens, those still readable (not disconnected meanwhile,
        their tokens opened by a key)."""
        wanted = sorted(ids)
        found = await self._store.accounts_by_id(wanted) if wanted else []
        return {a.id: a for a in found if not a.needs_reconnect}

    async def _poll_account(self, account: Account) -> None:
        self._read_at[account.id] = self._clock.now()
        try:
            queued = await self.poll(account)
            if self.chats is not None:
                queued += await self._poll_chats(account, self.chats)
            if queued:
                self._last_activity[account.id] = self._clock.now()
        except XRateLimited as exc:
            log.info("DM reads wait for the budget", extra={"account_id": account.id, "until": exc.reset_at})
            self._next_poll[account.id] = max(exc.reset_at, self._clock.now() + self._config.min_interval)
            return
        except (XAuthExpired, XAuthRevoked):
            log.warning("cannot read DMs: the account needs reconnecting", extra={"account_id": account.id})
            self._next_poll[account.id] = self._clock.now() + self._config.idle_interval
            return
        except XError as exc:
            log.warning("reading DMs failed", extra={"account_id": account.id, "error": str(exc)})
            self._next_poll[account.id] = self._clock.now() + self._config.min_interval * 4
            return
        now = self._clock.now()
        self._next_poll[account.id] = now + self.interval(account.id)
        if self._pushed.get(account.id):  # pushed DMs X did not show yet: placed otherwise
            self._place_at[account.id] = min(self._place_at.get(account.id, now), now)

    async def _poll_chats(self, account: Account, chats: ChatInbound) -> int:
        """The account's encrypted conversations, read and queued like its legacy DMs; each
        conversation's cursor moves once what was read is in the store."""
        done = await chats.poll(account, self._chat_read)
        queued = 0
        if done.events or done.cursors or done.gaps:
            tally: dict[str, int] = {}
            # A conversation read in part holds its channels before its rows are in the store.
            await chats.holding(account, done)
            now = self._clock.now()
            queued = await self._store.take_inbound(account.id, done.events, None, now, tally=tally)
            await chats.taken(account, done)
            self._count_echoes(tally)
        if done.closing:
            self.wake()  # the rows an unfinished read held are due now, though none may be new
        if queued:
            log.info("X Chat events queued for Slack", extra={"account_id": account.id, "count": queued})
            self.wake()
        if done.failure is not None:
            raise done.failure
        return queued

    async def _history_read(
        self, account: Account, call: Callable[[], Awaitable[tuple[EventPage, Any]]]
    ) -> EventPage:
        return await self._counted_read(account, call, endpoint=ReadEndpoint.CONVERSATION)

    async def _chat_read(
        self, account: Account, call: Callable[[], Awaitable[tuple[T, RateFacts]]], keep: int
    ) -> T:
        return await self._counted_read(account, call, keep=keep, endpoint=ReadEndpoint.CHAT)

    def interval(self, account_id: int) -> float:
        """Seconds to the next read: what is left of the window spread over the time left in it
        (keeping ``reserve`` reads back), never faster than ``min_interval``. Only while the account
        is idle (nothing for ``active_for``): ``idle_interval`` at least, ``push_interval`` when push
        delivers and it has no group (polling never stops)."""
        config = self._config
        now = self._clock.now()
        remaining, limit, reset_at = self._budget.reads_left(account_id, now)
        spare = remaining - config.reserve
        window = 15 * 60.0
        if spare <= 0:
            paced = (reset_at - now) if reset_at else window / max(1, limit - config.reserve)
        elif reset_at:
            paced = (reset_at - now) / spare
        else:
            paced = window / max(1, limit - config.reserve)
        interval = max(config.min_interval, paced)
        if now - self._last_activity.get(account_id, -1e18) <= config.active_for:
            # Active (events taken, by poll or push, or sends): groups X may not push, and pushes
            # X may lose, are read at the budget's pace, push or not.
            return interval
        interval = max(interval, config.idle_interval)
        if self.push_active(account_id) and account_id not in self._has_groups:
            # Push may miss group conversations (X documents it for 1-to-1s only): only without any
            # is polling a mere safety net.
            interval = max(interval, config.push_interval)
        return interval

    def note_activity(self, account_id: int) -> None:
        """The account's conversations are active (an event taken, a DM sent): read at the
        budget's pace from now on, bringing forward a read scheduled at the idle pace."""
        now = self._clock.now()
        self._last_activity[account_id] = now
        scheduled = self._next_poll.get(account_id)
        if scheduled is None:
            return  # not read yet, or reading now: the poller schedules it at the new pace
        sooner = now + self.interval(account_id)
        if sooner < scheduled:
            self._next_poll[account_id] = sooner
            self._poller.wake()

    async def poll(self, account: Account) -> int:
        """Read new events for one account and queue them; returns how many were queued.

        Newest first, back to the cursor. When X has more new events than one poll reads
        (``max_pages``), or the read is cut short (the budget, X failing), the read is left
        unfinished: a gap kept in the store with X's pagination token. The next polls (after a
        restart too) page on from there, and the cursor moves only once they reach it. The
        account's channels post nothing meanwhile: nothing newer goes before the older events
        still to come (X's order), and a burst arrives whole, a poll interval or more later.
        """
        cursor = await self._store.get_cursor(account.id)
        gap = await self._store.read_gap(account.id)
        floor = int(cursor) if cursor and cursor.isdigit() else None
        read = _Read(gap)
        failure: XError | None = None
        since = await self._starting_point(account) if floor is None else None
        wanted = frozenset(self._pushed.get(account.id) or ())
        placed = placed_before = self._placed.pop(account.id, 0)
        placed += len(wanted)  # pushed and not placed yet: newer than the cursor too, most likely
        while read.pages < self._config.max_pages and not read.finished:
            try:
                full = gap is not None or read.pages > 0 or floor is None
                page = await self._read_page(account, read.token, full=full, placed=placed)
                placed = 0  # the first page asked for them
            except XRefused as exc:
                if read.token is None or exc.status != 400:
                    raise
                # X no longer knows the token (expired: X does not say how long one lives).
                read.pages += 1
                if not self._token_refused(account, read, floor):
                    break
                continue
            except XError as exc:
                if read.pages == 0 or floor is None:
                    raise
                failure = exc  # what was read so far is kept (a gap); the poll fails after that
                break
            if not read.take(page, floor, wanted):
                if not self._token_refused(account, read, floor, looping=True):
                    break
                continue
            if since is not None and any((e.created_at or 0.0) < since for e in page.events):
                break  # the first read is back before the account's first channel was bridged
        if since is not None:
            read.finished = True  # the first read only sets the starting point (below)
            # The first read of an account sets the starting point: what was written since its
            # first channel was bridged is new; anything older is history (backfill's job).
            read.collected = [e for e in read.collected if e.created_at is not None and e.created_at >= since]
            # With no event at all yet, everything X shows later is new: "0" says "read before".
            read.newest = read.newest or "0"
            log.info("inbound cursor set", extra={"account_id": account.id, "newest": read.newest})
        # What came since, less what placing pushes had taken (the next read's guess of its size).
        self._recent_new[account.id] = max(0, len(read.collected) - placed_before)
        pushed = self._listed(account.id, read.collected)
        events = [
            inbound_event(e, read.users, _origin(e.id in pushed))
            for e in sorted(read.collected, key=lambda e: int(e.id))
        ]
        now = self._clock.now()
        left = None if read.finished or read.newest is None else read.left(now)
        ids = {"account_id": account.id}
        if left is not None and gap is None:
            log.warning(
                "more new DM events than one poll reads: the next polls read on from where this one "
                "stopped; this account's channels wait until then, to keep X's order",
                extra={**ids, "pages": read.pages, "cut_short": None if failure is None else str(failure)},
            )
        tally: dict[str, int] = {}
        queued = await self._store.take_inbound(
            account.id, events, None if left is not None else read.newest, now, gap=left, tally=tally
        )
        self._count_echoes(tally)
        if queued:
            log.info("X events queued for Slack", extra={**ids, "count": queued})
            self.wake()
        if gap is not None and left is None:
            log.info("the unfinished DM read is complete: posting resumes", extra=ids)
            self.wake()  # the rows it held are due now, though none may be new
        if failure is not None:
            raise failure
        return queued

    async def _starting_point(self, account: Account) -> float:
        """When the account's first channel was bridged: its first read takes what came since
        (paging back that far, a late first read too), anything older is history."""
        first = await self._store.first_bridged_at(account.id)
        return self._clock.now() if first is None else first

    def _token_refused(
        self, account: Account, read: _Read, floor: int | None, *, looping: bool = False
    ) -> bool:
        """X refused the pagination token of an unfinished read (``looping``: its pages go
        nowhere). Read back from the newest again (what was read already is read, and billed,
        again; nothing is lost): True. After ``token_restarts`` of those, give the gap up: the
        read counts as finished, and events older than the oldest read and newer than the old
        cursor are never read (X shows no way to reach them without a token): False."""
        read.restarts += 1
        why = "X's pagination goes round in circles" if looping else "X refused the saved pagination token"
        ids = {"account_id": account.id, "restarts": read.restarts}
        if read.restarts > self._config.token_restarts:
            log.warning(
                f"{why} again: the unfinished DM read is given up; events "
                "newer than the old cursor and older than the oldest read are not posted",
                extra={**ids, "cursor": floor, "oldest_read": read.oldest},
            )
            read.finished = True
            return False
        log.warning(
            f"{why}{'' if looping else ' (expired?)'}: reading back from the newest event "
            "again; events already taken are read (and billed) again, none is lost",
            extra=ids,
        )
        read.token = None
        read.behind = None
        return True

    async def _read_page(
        self, account: Account, pagination_token: str | None, *, full: bool, placed: int = 0
    ) -> EventPage:
        # X bills every event returned and has no "since": ask for about as many as came last
        # time, plus one to see the cursor, paging back (another read, a full page) only when
        # all were new. DMs pushed since the last read are newer than the cursor: asked for too
        # (those placed already are billed once a day, already), so they cost no second read and
        # no unfinished read that would hold the account's channels.
        expected = self._recent_new.get(account.id, 0) + 1
        size = self._config.page_size if full else max(2, min(self._config.page_size, expected))
        size = min(100, size + placed)

        async def call() -> tuple[EventPage, Any]:
            return await self._tokens.call(
                account, lambda t: self._x.dm_events(t, max_results=size, pagination_token=pagination_token)
            )

        return await self._counted_read(account, call, keep=self._config.reserve)

    async def _counted_read(
        self,
        account: Account,
        call: Callable[[], Awaitable[tuple[T, Any]]],
        *,
        keep: int = 0,
        endpoint: ReadEndpoint = ReadEndpoint.EVENTS,
    ) -> T:
        """One read within the endpoint's budget, reported by outcome: ``ok``, ``rate_limited``
        (X's 429), ``refused``, ``auth`` (the account's token), ``error`` (X failing), or ``held``
        (not made: the budget kept it back, so X was not asked); and each read made, by endpoint
        (``read_endpoint``, the ``ReadEndpoint`` value)."""
        made = False

        async def counted() -> tuple[T, Any]:
            nonlocal made
            made = True
            self._emit("read_endpoint", endpoint.value)
            try:
                result = await call()
            except XRateLimited:
                self._emit("read", "rate_limited")
                raise
            except (XAuthExpired, XAuthRevoked):
                self._emit("read", "auth")
                raise
            except XRefused:
                self._emit("read", "refused")
                raise
            except Exception:  # a cancelled read (shutting down) is not X failing
                self._emit("read", "error")
                raise
            self._emit("read", "ok")
            return result

        try:
            return await self._budget.read(account.id, self._clock.now, counted, keep=keep, endpoint=endpoint)
        except XRateLimited:
            if not made:
                self._emit("read", "held")
            raise

    async def _backfill_account(self, account: Account, wanted: list[tuple[str, float]]) -> None:
        retry_at = await self.backfill.account(account, wanted)
        if retry_at is not None:  # a pass then, whenever the account is read next
            self._next_poll[account.id] = min(self._next_poll.get(account.id, retry_at), retry_at)

    async def take(self, account_id: int, events: list[InboundEvent]) -> int:
        """Queue events that came some other way (backfill); returns how many were new."""
        tally: dict[str, int] = {}
        queued = await self._store.take_inbound(account_id, events, None, self._clock.now(), tally=tally)
        self._count_echoes(tally)
        if queued:
            self.note_activity(account_id)
            self.wake()
        return queued
