"""X's DM budgets: sends (per-account 15-minute and 24-hour windows and the app's 24-hour
window) and reads (per-account 15-minute window for the DM event GETs).

Seeded with what X documents today (15 per 15 minutes and 1,440 per 24 hours per
user, 1,440 per 24 hours per app) and corrected by every DM POST response's
headers, up or down: X knows the app's tier, the bridge does not. A limit the
operator set is a ceiling instead: headers may lower it, never raise it. The worker asks
``blocked_until`` before each send and never sends while a known remaining count
is 0, so in steady state the bridge provokes no 429 at all.

Reads: X documents 15 per 15 minutes per user for each DM event GET, counted separately:
``GET /2/dm_events`` (every conversation: the inbound poller), ``GET /2/dm_events/{id}`` (one
event: placing a pushed DM), ``GET /2/dm_conversations/{id}/dm_events`` (one conversation:
backfill, ``/xdm link``'s check, delivery's read-back) and
``GET /2/dm_conversations/with/{participant_id}/dm_events`` (a 1-to-1 by its peer: placing
pushed DMs, delivery's read-back). The bridge keeps one window per account and endpoint
(``ReadEndpoint``): every read is counted before it goes, reads of one window never overlap
(``reading``), and the headers of the endpoint that answered correct that endpoint's window
only (they only lower what is left, so X's counter cannot be overrun). A read X refused (4xx)
without rate headers is given back: X's limiter puts its headers on every answer it counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from bridge.errors import RateFacts, XAuthExpired, XError, XRateLimited, XRefused
from bridge.model import Target
from bridge.ports import BudgetStore

log = logging.getLogger("bridge.budget")

BudgetRow = tuple[str, int, int, float]  # key, limit, remaining, reset_at
T = TypeVar("T")

FIFTEEN_MINUTES = 15 * 60.0
ONE_DAY = 24 * 3600.0
APP = "app"
# When a 429 carries no usable reset, wait this long before trying again.
FALLBACK_PAUSE = 60.0
# X's documented DM POST limits (https://docs.x.com/x-api/fundamentals/rate-limits), the starting point when
# the operator set none.
DEFAULT_USER_15M = 15
DEFAULT_USER_24H = 1440
DEFAULT_APP_24H = 1440
DEFAULT_READS_15M = 15  # each DM event GET, per user, counted separately (same page)


class ReadEndpoint(StrEnum):
    """X's DM event reads, each with its own per-user window. The value ends the window's key
    (``account:<id>:<value>``): ``reads`` is the key the one read window had, kept for the poller."""

    EVENTS = "reads"  # GET /2/dm_events: every conversation of the account
    EVENT = "reads_event"  # GET /2/dm_events/{event_id}: one event
    CONVERSATION = "reads_conversation"  # GET /2/dm_conversations/{id}/dm_events
    WITH = "reads_with"  # GET /2/dm_conversations/with/{participant_id}/dm_events
    CHAT = "reads_chat"  # GET /2/chat/conversations/{id}/events: one encrypted X Chat conversation

    @property
    def path(self) -> str:
        """X's path template, for logs, metrics and the bench."""
        return _READ_PATHS[self]


def read_endpoint(target: Target) -> ReadEndpoint:
    """The endpoint ``XClient.event_page`` reads for ``target``: every conversation for a group
    being created (its id not known yet), else the conversation, or the 1-to-1 by its peer."""
    if target.new_group is not None:
        return ReadEndpoint.EVENTS
    return ReadEndpoint.CONVERSATION if target.conversation_id is not None else ReadEndpoint.WITH


_READ_PATHS = {
    ReadEndpoint.EVENTS: "/2/dm_events",
    ReadEndpoint.EVENT: "/2/dm_events/{event_id}",
    ReadEndpoint.CONVERSATION: "/2/dm_conversations/{id}/dm_events",
    ReadEndpoint.WITH: "/2/dm_conversations/with/{participant_id}/dm_events",
    ReadEndpoint.CHAT: "/2/chat/conversations/{id}/events",
}
# No window of X's lasts longer than a day: a reset further ahead than this is not believed.
MAX_RESET_AHEAD = ONE_DAY + 15 * 60.0
MAX_COUNT = 10**9  # a limit or remaining count beyond this is not a count


def plausible_reset(reset: float | None, now: float) -> float | None:
    """``reset`` if it is a time within X's longest window from ``now``; otherwise None.

    The adapter already drops implausible headers; this guards what the store hands back
    (an older version saved whatever X sent) and what the core is given.
    """
    if reset is None or not isinstance(reset, int | float) or reset != reset:  # NaN
        return None
    if reset <= 0 or reset > now + MAX_RESET_AHEAD:
        return None
    return float(reset)


def _count(value: object, default: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT:
        return value
    return default


@dataclass
class Window:
    """One fixed window. ``reset_at == 0`` means not started: it starts at first use.

    ``ceiling`` is the operator's limit (None: none set, X's headers alone decide)."""

    key: str
    length: float
    ceiling: int | None
    limit: int
    remaining: int
    reset_at: float = 0.0

    def roll(self, now: float) -> None:
        if self.reset_at and now >= self.reset_at:
            self.remaining = self.limit
            self.reset_at = 0.0

    def blocked_until(self, now: float) -> float | None:
        self.roll(now)
        if self.remaining > 0:
            return None
        return self.reset_at or None

    def consume(self, now: float) -> None:
        self.roll(now)
        if not self.reset_at:
            self.reset_at = now + self.length
        self.remaining = max(0, self.remaining - 1)

    def observe(self, limit: int | None, remaining: int | None, reset: float | None, *, shared: bool) -> None:
        """Take what X reported. ``shared`` windows (the app's) also keep local counts, since
        other accounts' sends may be in flight that this response does not yet include."""
        if remaining is None:
            return
        header_limit = limit if limit is not None else max(self.limit, remaining)
        used = max(0, header_limit - remaining)
        effective_limit = self.capped(header_limit)
        new_remaining = max(0, min(remaining, effective_limit - used))
        if shared and reset is not None and abs(reset - self.reset_at) < 1.0:
            # Our own count of sends in this window, carried over to the limit X now reports.
            new_remaining = min(new_remaining, max(0, effective_limit - (self.limit - self.remaining)))
        self.limit = effective_limit
        self.remaining = new_remaining
        if reset is not None:
            self.reset_at = reset

    def capped(self, limit: int) -> int:
        return limit if self.ceiling is None else min(self.ceiling, limit)

    def exhaust(self, reset: float) -> None:
        self.remaining = 0
        self.reset_at = max(self.reset_at, reset)

    def snapshot(self) -> dict[str, Any]:
        return {"limit": self.limit, "remaining": self.remaining, "reset_at": self.reset_at or None}


class Budget:
    """All windows, persisted to the store after each change so restarts respect them."""

    def __init__(
        self,
        store: BudgetStore,
        *,
        user_15m: int | None = None,
        user_24h: int | None = None,
        app_24h: int | None = None,
        fallback_pause: float = FALLBACK_PAUSE,
        reads_15m: int | None = None,
    ) -> None:
        """Each limit: the operator's ceiling, or None to start from X's documented figure."""
        self._store = store
        self._fallback_pause = fallback_pause
        self._limits = {
            "15m": (FIFTEEN_MINUTES, user_15m, DEFAULT_USER_15M),
            "24h": (ONE_DAY, user_24h, DEFAULT_USER_24H),
            **{e.value: (FIFTEEN_MINUTES, reads_15m, DEFAULT_READS_15M) for e in ReadEndpoint},
        }
        self._app_limit = (ONE_DAY, app_24h, DEFAULT_APP_24H)
        self._windows: dict[str, Window] = {}
        self._read_locks: dict[tuple[int, ReadEndpoint], asyncio.Lock] = {}
        self._reset_from_headers: set[str] = set()
        self.reads_made = 0  # every read request sent (bench and tests)
        self.reads_by_endpoint: dict[ReadEndpoint, int] = dict.fromkeys(ReadEndpoint, 0)

    async def load(self, now: float) -> None:
        """Read the saved windows; values no window could have (an old version saved X's
        headers unchecked) are dropped, so one bad row cannot wedge an account or a status."""
        for row in await self._store.load_budgets():
            key = str(row.get("key") or "")
            if key != f"{APP}:24h" and key.rsplit(":", 1)[-1] not in self._limits:
                log.warning("unknown budget window ignored", extra={"key": key})
                continue
            window = self._window(key)
            reset_at = plausible_reset(row.get("reset_at"), now)
            if reset_at is None and row.get("reset_at"):
                log.warning("implausible saved budget reset ignored", extra={"key": key})
            window.limit = window.capped(_count(row.get("limit_"), window.limit))
            window.remaining = min(window.limit, _count(row.get("remaining"), window.limit))
            window.reset_at = reset_at or 0.0
            if not window.reset_at:
                window.remaining = window.limit  # a window with no known end is not exhausted

    def _window(self, key: str) -> Window:
        window = self._windows.get(key)
        if window is None:
            if key == f"{APP}:24h":
                length, ceiling, default = self._app_limit
            else:
                length, ceiling, default = self._limits[key.rsplit(":", 1)[1]]
            start = default if ceiling is None else ceiling
            window = Window(key, length, ceiling, start, start)
            self._windows[key] = window
        return window

    def _account_windows(self, account_id: int) -> tuple[Window, Window, Window]:
        return (
            self._window(f"account:{account_id}:15m"),
            self._window(f"account:{account_id}:24h"),
            self._window(f"{APP}:24h"),
        )

    def blocked_until(self, account_id: int, now: float) -> float | None:
        """None when a DM may go now; otherwise the latest reset among exhausted windows."""
        blocks = [w.blocked_until(now) for w in self._account_windows(account_id)]
        waits = [b for b in blocks if b is not None]
        return max(waits) if waits else None

    def count(self, account_id: int, now: float) -> list[BudgetRow]:
        """Count a DM POST before it is sent (so concurrent senders cannot overspend).

        Returns the windows' new state for the caller to persist with its own write.
        """
        for window in self._account_windows(account_id):
            window.consume(now)
        return self.rows(account_id)

    def correct(self, account_id: int, facts: RateFacts) -> list[BudgetRow]:
        """Correct the windows from one DM POST response's headers; returns them to persist."""
        if not facts.is_empty():
            minute, day, app = self._account_windows(account_id)
            minute.observe(facts.window_limit, facts.window_remaining, facts.window_reset, shared=False)
            day.observe(facts.user_day_limit, facts.user_day_remaining, facts.user_day_reset, shared=False)
            app.observe(facts.app_day_limit, facts.app_day_remaining, facts.app_day_reset, shared=True)
        return self.rows(account_id)

    def rows(self, account_id: int) -> list[BudgetRow]:
        return [(w.key, w.limit, w.remaining, w.reset_at) for w in self._account_windows(account_id)]

    async def consume(self, account_id: int, now: float) -> None:
        """``count`` and persist at once."""
        await self._store.save_budgets(self.count(account_id, now))

    async def observe(self, account_id: int, facts: RateFacts) -> None:
        """``correct`` and persist at once."""
        if not facts.is_empty():
            await self._store.save_budgets(self.correct(account_id, facts))

    async def rate_limited(self, account_id: int, facts: RateFacts, reset_at: float, now: float) -> float:
        """X said 429: pause until the latest applicable reset and return it.

        The 24-hour headers are checked first: a 429 from a daily cap can arrive with
        ``x-rate-limit-remaining`` above 0, and retrying every 15 minutes would be wrong.
        """
        await self.observe(account_id, facts)
        minute, day, app = self._account_windows(account_id)
        exhausted = False
        if facts.user_day_remaining == 0 and facts.user_day_reset:
            day.exhaust(facts.user_day_reset)
            exhausted = True
        if facts.app_day_remaining == 0 and facts.app_day_reset:
            app.exhaust(facts.app_day_reset)
            exhausted = True
        if not exhausted:
            believed = plausible_reset(reset_at, now) if facts.window_reset is not None else None
            if believed is not None and believed > now:
                minute.exhaust(believed)
            else:
                # X named no time: pause for the fallback, not until the end of our own guess of
                # the window (which can be 15 minutes away, for one 429 that may have been a glitch).
                minute.remaining, minute.reset_at = 0, now + self._fallback_pause
        await self._persist(account_id)
        until = self.blocked_until(account_id, now)
        return until if until is not None else now + self._fallback_pause

    def snapshot(self, account_id: int, now: float) -> dict[str, dict[str, Any]]:
        minute, day, app = self._account_windows(account_id)
        for window in (minute, day, app):
            window.roll(now)
        return {"15m": minute.snapshot(), "24h": day.snapshot(), "app_24h": app.snapshot()}

    async def _persist(self, account_id: int) -> None:
        await self._store.save_budgets(self.rows(account_id))

    # -- reads -------------------------------------------------------------

    def _read_window(self, account_id: int, endpoint: ReadEndpoint = ReadEndpoint.EVENTS) -> Window:
        return self._window(f"account:{account_id}:{endpoint.value}")

    def read_blocked_until(
        self, account_id: int, now: float, *, keep: int = 0, endpoint: ReadEndpoint = ReadEndpoint.EVENTS
    ) -> float | None:
        """None when a read may go now leaving ``keep`` reads in the window; else when it resets."""
        window = self._read_window(account_id, endpoint)
        window.roll(now)
        if window.remaining > keep:
            return None
        return window.reset_at or now + FALLBACK_PAUSE

    def reads_left(
        self, account_id: int, now: float, endpoint: ReadEndpoint = ReadEndpoint.EVENTS
    ) -> tuple[int, int, float | None]:
        """(remaining, limit, reset_at) of the account's read window of ``endpoint``."""
        window = self._read_window(account_id, endpoint)
        window.roll(now)
        return window.remaining, window.limit, window.reset_at or None

    async def stored_reads_left(
        self, account_id: int, now: float, endpoint: ReadEndpoint = ReadEndpoint.EVENTS
    ) -> tuple[int, int, float | None]:
        """``reads_left`` as the store has it (every read is saved before it is made): what the
        leader has spent, seen from any instance (a standby's own windows are never used)."""
        mine = self._read_window(account_id, endpoint)
        window = Window(mine.key, mine.length, mine.ceiling, mine.limit, mine.remaining, mine.reset_at)
        for row in await self._store.load_budgets():
            if row.get("key") == window.key:
                window.limit = window.capped(_count(row.get("limit_"), window.limit))
                window.remaining = min(window.limit, _count(row.get("remaining"), window.limit))
                window.reset_at = plausible_reset(row.get("reset_at"), now) or 0.0
                if not window.reset_at:
                    window.remaining = window.limit
        window.roll(now)
        return window.remaining, window.limit, window.reset_at or None

    async def adopt_stored_reads(
        self, account_id: int, now: float, endpoint: ReadEndpoint = ReadEndpoint.EVENTS
    ) -> None:
        """Lower this instance's view of the account's read window to what the store has.

        For a read made outside the poller (`/xdm link`'s check), possibly on a standby whose
        windows are never otherwise used: it must spend from what the leader has spent (saved
        before each read), not from the full window the standby loaded at start."""
        remaining, _, reset_at = await self.stored_reads_left(account_id, now, endpoint)
        window = self._read_window(account_id, endpoint)
        window.roll(now)
        if reset_at is not None and remaining < window.remaining:
            window.remaining, window.reset_at = remaining, reset_at

    @asynccontextmanager
    async def reading(
        self, account_id: int, endpoint: ReadEndpoint = ReadEndpoint.EVENTS
    ) -> AsyncIterator[None]:
        """Hold the turn of the account's window of ``endpoint``: its reads go one at a time, so
        headers are exact. Reads of other endpoints go meanwhile (X counts them apart)."""
        lock = self._read_locks.setdefault((account_id, endpoint), asyncio.Lock())
        async with lock:
            yield

    async def read(
        self,
        account_id: int,
        now: Callable[[], float],
        call: Callable[[], Awaitable[tuple[T, RateFacts]]],
        *,
        keep: int = 0,
        endpoint: ReadEndpoint = ReadEndpoint.EVENTS,
    ) -> T:
        """Make one read of ``endpoint`` within the account's window of it; raise ``XRateLimited``
        (without asking X) when it would leave fewer than ``keep`` reads for others."""
        async with self.reading(account_id, endpoint):
            started = now()
            blocked = self.read_blocked_until(account_id, started, keep=keep, endpoint=endpoint)
            if blocked is not None:
                raise XRateLimited("the DM read budget is spent for now", reset_at=blocked)
            window = self._read_window(account_id, endpoint)
            if not window.reset_at or started >= window.reset_at:
                self._reset_from_headers.discard(window.key)  # a new window: its end is our guess
            before = (window.remaining, window.reset_at)
            window.consume(started)
            self.reads_made += 1
            self.reads_by_endpoint[endpoint] += 1
            await self._store.save_budgets([self._row(window)])
            try:
                result, facts = await call()
            except (XRefused, XAuthExpired) as exc:
                if exc.facts.window_remaining is None:
                    # Refused before X's limiter counted it (a counted answer carries its headers):
                    # kept, such reads would spend the window for nothing and hold every read of
                    # the account, read-backs included, until the end the bridge guessed for it.
                    # The read turn is still held, so nothing else moved the window meanwhile.
                    window.remaining, window.reset_at = before
                    await self._store.save_budgets([self._row(window)])
                else:
                    await self._observe_read(window, exc.facts)
                raise
            except XRateLimited as exc:
                reset = exc.facts.window_reset if exc.facts is not None else None
                if reset is not None and reset > started:
                    # X's word on the counter that refused, even sooner than the end an earlier
                    # answer gave the window.
                    window.remaining, window.reset_at = 0, plausible_reset(exc.reset_at, started) or reset
                    self._reset_from_headers.add(window.key)
                else:
                    # X named no time: pause for the fallback, not until the end of our own
                    # guess of the window (read-backs before a resend wait on this too).
                    window.remaining, window.reset_at = 0, started + self._fallback_pause
                await self._store.save_budgets([self._row(window)])
                raise
            except XError as exc:
                await self._observe_read(window, exc.facts)
                raise
            await self._observe_read(window, facts)
            return result

    async def _observe_read(self, window: Window, facts: RateFacts) -> None:
        """The headers of the endpoint that answered, for its own window: they only lower what is
        left (a read of the window may have gone since X counted this one), and X's reset
        replaces the bridge's guess of when the window ends."""
        if facts.window_remaining is None:
            return
        if facts.window_limit is not None:
            window.limit = window.capped(facts.window_limit)
        window.remaining = max(0, min(window.remaining, facts.window_remaining, window.limit))
        if facts.window_reset is not None:
            # X's reset replaces our guess; after that, the later of what X said.
            known = window.key in self._reset_from_headers
            window.reset_at = max(window.reset_at, facts.window_reset) if known else facts.window_reset
            self._reset_from_headers.add(window.key)
        await self._store.save_budgets([self._row(window)])

    @staticmethod
    def _row(window: Window) -> BudgetRow:
        return (window.key, window.limit, window.remaining, window.reset_at)
