"""Did an earlier attempt reach X? Reading a conversation back before a resend.

A row left ``sending`` (a crash, a time-out) may or may not be on X, and X has no
idempotency key. So the worker reads the conversation back, newest first, page by page,
until the events are older than the attempt, and takes the oldest event of ours with the
same text that no other row has claimed. A :class:`Scan` is that reading's state (pure); it
can stop when the read budget is spent and go on later from where it was. The
:class:`Reconciler` does the reading for ``Delivery``'s legacy DM sender: found on X, the row
is sent; read back to the attempt without it, the row goes again; X refusing the read, paging
in circles or the budget running out decide nothing, and the row waits, still ``sending``.

Only a reading that got back to the attempt (an event older than it, or the start of the
conversation) can say "not on X". One that X ends otherwise (a page token seen before, more
pages than any real conversation has) is undecided: the row must not be sent again on it.

Two things make a plain comparison miss our own send, and so send it twice:

- clocks: the attempt's time is ours, the events' times are X's. The attempt is moved onto
  X's clock with the offset between our clock and X's ``Date`` header (of the same read),
  so a bridge clock ahead of X's cannot push our send out of the window. The offset only
  ever moves the cutoff earlier, by a day at most: a ``Date`` ahead of ours (a wrong clock
  at X's front end, or ours behind) costs a few more pages, never a send judged older
  than it was;
- links: X stores every link in a DM as a ``t.co`` address. Each is put back from the
  expanded URL X returns in the event's entities, links are normalised on both sides, and
  a ``t.co`` address X did not expand matches any link of ours in its place. A DM with
  media may also end in a link X added to the attachment itself: that one is left out.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from bridge.budget import Budget, read_endpoint
from bridge.errors import RateFacts, XRateLimited, XRefused, XTransient
from bridge.feedback import ids
from bridge.model import Account, DmEvent, EventPage, OutboxItem, Sent, one_to_one_id
from bridge.ports import Clock, RelayedEvents, XClient
from bridge.tokens import TokenManager

log = logging.getLogger(__name__)

MARGIN = 120.0  # seconds before the attempt (on X's clock) that still count as "this attempt"
# The most our clock is believed to run ahead of X's: a Date header further behind is broken,
# and would otherwise send the reading back through the whole conversation.
MAX_SKEW = 24 * 3600.0
MAX_PAGES_PER_PASS = 15  # X's read budget: 15 reads per 15 minutes per user (NOTES §4.2)
# 10,000 events after one attempt is beyond any real conversation (X sends 15 per 15 minutes):
# a reading that long is X paging in circles, and must end rather than hold the channel forever.
MAX_PAGES = 100
READ_WAIT_CAP = 16 * 60.0  # a read window is 15 minutes: never wait on one for longer

_SCHEME_URL = re.compile(r"\bhttps?://([^\s/?#]+)([^\s]*)", re.IGNORECASE)
_T_CO = re.compile(r"https?://t\.co/[A-Za-z0-9]+")
_TRAILING_T_CO = re.compile(r"\s*https?://t\.co/[A-Za-z0-9]+\s*$")


def comparable(text: str) -> str:
    """``text`` with links in one spelling: no scheme, host in lower case, no lone trailing slash."""

    def one(match: re.Match[str]) -> str:
        host, rest = match.group(1).lower(), match.group(2)
        return host + ("" if rest == "/" else rest)

    return _SCHEME_URL.sub(one, text).strip()


def same_text(ours: str, event: DmEvent) -> bool:
    """Whether ``event`` carries the text we sent, whatever X did to its links."""
    theirs = event.written
    if comparable(theirs) == comparable(ours):
        return True
    if event.media_keys:
        # A DM with media may end in a t.co link to it that X did not expand for us.
        bare = _TRAILING_T_CO.sub("", theirs)
        if bare != theirs and comparable(bare) == comparable(ours):
            return True
    pieces = _T_CO.split(theirs.strip())
    if len(pieces) == 1:
        return False
    # Links X rewrote without telling us the original: any link-like word of ours fits there.
    pattern = r"\S+".join(re.escape(piece) for piece in pieces)
    return re.fullmatch(pattern, ours.strip()) is not None


@dataclass
class Scan:
    """Reading one conversation back for one attempt; feed it pages with :meth:`take`."""

    attempt_at: float  # when the attempt was claimed, on our clock
    sender_id: str
    text: str
    media_id: str | None = None  # the attempt's attachment, if any
    offset: float | None = None  # our clock minus X's, from the first page read
    token: str | None = None  # where the next page starts
    pages: int = 0
    done: bool = False
    reached: bool = False  # got back to the attempt: finding nothing then means "not on X"
    candidates: list[DmEvent] = field(default_factory=list)
    seen_tokens: set[str] = field(default_factory=set)

    @property
    def cutoff(self) -> float:
        """The attempt on X's clock, less the margin: events older than this are not it."""
        return self.attempt_at - min(max(0.0, self.offset or 0.0), MAX_SKEW) - MARGIN

    def take(self, page: EventPage, now: float) -> bool:
        """Look through one page (read at ``now`` on our clock); True when the reading is done."""
        if self.offset is None:
            self.offset = now - page.server_time if page.server_time is not None else 0.0
        self.pages += 1
        cutoff = self.cutoff
        for event in page.events:
            if event.created_at is not None and event.created_at < cutoff:
                self.reached = True  # newest first: everything from here on is older still
                continue
            if event.sender_id == self.sender_id and same_text(self.text, event) and self._same_media(event):
                self.candidates.append(event)
        if self.token is not None:
            self.seen_tokens.add(self.token)
        self.token = page.next_token
        if self.token is None:
            self.reached = True  # the start of the conversation (as far as X keeps it)
        # An empty page that points further back is read on: X may page through a gap.
        circling = self.token is not None and self.token in self.seen_tokens
        self.done = self.reached or circling or self.pages >= MAX_PAGES
        return self.done

    def _same_media(self, event: DmEvent) -> bool:
        """An event listing attachments carries ours (X's media key ends in the media id),
        or none when we attached none. One listing nothing is not held against it."""
        if not event.media_keys:
            return True
        return self.media_id is not None and any(
            k.rsplit("_", 1)[-1] == self.media_id for k in event.media_keys
        )

    def to_local(self, x_time: float) -> float:
        """A time on X's clock (a rate-limit reset, say) on ours."""
        return x_time + (self.offset or 0.0)

    def oldest(self, claimed: set[str]) -> DmEvent | None:
        """The earliest candidate no other row has claimed (the attempt came before any resend)."""
        free = [e for e in self.candidates if e.id not in claimed]
        return min(free, key=lambda e: (len(e.id), e.id), default=None)


class ReadBackStore(RelayedEvents, Protocol):
    """Which events the bridge itself sent (a part of ``bridge.ports.Store``)."""


class Reconciler:
    """Reads a conversation back for rows left ``sending``, within the account's read budget;
    a reading paused for the budget is kept, by row, and goes on from where it stopped."""

    def __init__(
        self, store: ReadBackStore, x: XClient, tokens: TokenManager, budget: Budget, clock: Clock
    ) -> None:
        self._store = store
        self._x = x
        self._tokens = tokens
        self._budget = budget
        self._clock = clock
        self._scans: dict[int, Scan] = {}  # read-backs paused for the read budget, by row

    def forget(self, item_id: int) -> None:
        """Drop the row's paused reading, if any: the next one starts from the newest page."""
        self._scans.pop(item_id, None)

    async def find(self, item: OutboxItem, account: Account) -> Sent | None:
        """Did an earlier attempt reach X? Read the conversation back until events are older
        than the attempt (see :class:`Scan`), within the read budget.

        When the budget runs out first, the row waits for it (still ``sending``: never resent
        while undecided) and the reading goes on from where it stopped. A reading X ends before
        it got back to the attempt decides nothing: the row waits and reads again.
        """
        assert item.text is not None
        scan = self._scans.get(item.id)
        if scan is None or scan.text != item.text:
            attempt_at = item.sending_since or item.created_at
            scan = Scan(attempt_at, account.x_user_id, item.text, item.media_id)
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
            if spent or passed >= MAX_PAGES_PER_PASS:
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
