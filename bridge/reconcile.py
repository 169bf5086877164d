"""Did an earlier attempt reach X? The pure half of reading a conversation back.

A row left ``sending`` (a crash, a time-out) may or may not be on X, and X has no
idempotency key. So the worker reads the conversation back, newest first, page by page,
until the events are older than the attempt, and takes the oldest event of ours with the
same text that no other row has claimed. A :class:`Scan` is that reading's state; it can
stop when the read budget is spent and go on later from where it was.

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

import re
from dataclasses import dataclass, field

from bridge.model import DmEvent, EventPage

MARGIN = 120.0  # seconds before the attempt (on X's clock) that still count as "this attempt"
# The most our clock is believed to run ahead of X's: a Date header further behind is broken,
# and would otherwise send the reading back through the whole conversation.
MAX_SKEW = 24 * 3600.0
MAX_PAGES_PER_PASS = 15  # X's read budget: 15 reads per 15 minutes per user (NOTES §4.2)
# 10,000 events after one attempt is beyond any real conversation (X sends 15 per 15 minutes):
# a reading that long is X paging in circles, and must end rather than hold the channel forever.
MAX_PAGES = 100

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
