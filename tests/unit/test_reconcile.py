"""bridge/reconcile: matching our own sends among X's events, and where reading back stops."""

from __future__ import annotations

from bridge.model import DmEvent, EventPage
from bridge.reconcile import MARGIN, Scan, comparable, same_text


def event(
    text: str, *, id: str = "10", sender: str = "1000", at: float | None = 1000.0, **links: str
) -> DmEvent:
    return DmEvent(id=id, text=text, sender_id=sender, created_at=at, links=tuple(links.items()))


def test_links_compare_in_one_spelling() -> None:
    assert comparable("see HTTPS://Example.COM/ now") == "see example.com now"
    assert comparable("see http://example.com/A?b=1") == "see example.com/A?b=1"  # paths keep their case


def test_t_co_links_are_put_back_from_the_expanded_urls() -> None:
    x = event(
        "Ada: docs https://t.co/abc and https://t.co/def",
        **{"https://t.co/abc": "https://example.com/a", "https://t.co/def": "http://example.org"},
    )
    assert same_text("Ada: docs https://example.com/a and example.org", x)
    assert not same_text("Ada: docs https://example.com/b and example.org", x)


def test_unexpanded_t_co_links_match_any_link_in_their_place() -> None:
    x = event("Ada: see https://t.co/abc please")
    assert same_text("Ada: see https://example.com/x please", x)
    assert not same_text("Ada: see https://example.com/x now", x)
    assert not same_text("Ada: see two words please", x)


def test_the_attempt_is_judged_on_xs_clock() -> None:
    # Our clock is 300 s ahead of X's: our attempt at 10_300 is X's 10_000.
    scan = Scan(attempt_at=10_300.0, sender_id="1000", text="Ada: hi")
    ours = event("Ada: hi", id="12", at=10_001.0)
    older = event("Ada: hi", id="11", at=10_000.0 - MARGIN - 1)
    page = EventPage(events=(ours, older), next_token="more-pages-here!", server_time=10_050.0)
    assert scan.take(page, now=10_350.0)  # done: the second event is older than the attempt
    assert scan.offset == 300.0 and scan.candidates == [ours]
    assert scan.oldest(set()) == ours and scan.oldest({"12"}) is None
    assert scan.to_local(10_900.0) == 11_200.0


def test_reading_goes_on_while_events_are_newer_than_the_attempt() -> None:
    scan = Scan(attempt_at=10_000.0, sender_id="1000", text="Ada: hi")
    first = EventPage(events=(event("other", at=10_500.0),), next_token="page-two-token-xx", server_time=None)
    assert not scan.take(first, now=10_600.0) and scan.token == "page-two-token-xx" and scan.offset == 0.0
    last = EventPage(events=(event("Ada: hi", id="9", at=9_990.0),), next_token=None, server_time=None)
    assert scan.take(last, now=10_601.0) and [e.id for e in scan.candidates] == ["9"]


def test_a_reading_that_goes_in_circles_ends() -> None:
    scan = Scan(attempt_at=10_000.0, sender_id="1000", text="Ada: hi")
    page = EventPage(events=(event("other", at=10_500.0),), next_token="same-token-again!", server_time=None)
    assert not scan.take(page, now=10_600.0)
    assert scan.take(page, now=10_601.0)  # X handed out the same token twice


def test_attachments_tell_file_only_dms_apart() -> None:
    scan = Scan(attempt_at=1000.0, sender_id="1000", text="", media_id="77")
    theirs = DmEvent(id="11", text="", sender_id="1000", created_at=1001.0, media_keys=("3_76",))
    ours = DmEvent(id="12", text="", sender_id="1000", created_at=1002.0, media_keys=("3_77",))
    plain = DmEvent(id="13", text="", sender_id="1000", created_at=1003.0)
    scan.take(EventPage(events=(plain, ours, theirs), next_token=None, server_time=None), now=1004.0)
    assert [e.id for e in scan.candidates] == ["13", "12"]
    assert not Scan(1000.0, "1000", "", None)._same_media(ours)  # we attached nothing
