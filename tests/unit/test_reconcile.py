"""bridge/reconcile: matching our own sends among X's events, and where reading back stops."""

from __future__ import annotations

from bridge.model import DmEvent, EventPage
from bridge.reconcile import MARGIN, MAX_PAGES, Scan, comparable, same_text


def event(
    text: str,
    *,
    id: str = "10",
    sender: str = "1000",
    at: float | None = 1000.0,
    links: dict[str, str] | None = None,
) -> DmEvent:
    links = links or {}
    return DmEvent(id=id, text=text, sender_id=sender, created_at=at, links=tuple(links.items()))


def test_links_compare_in_one_spelling() -> None:
    assert comparable("see HTTPS://Example.COM/ now") == "see example.com now"
    assert comparable("see http://example.com/A?b=1") == "see example.com/A?b=1"  # paths keep their case


def test_t_co_links_are_put_back_from_the_expanded_urls() -> None:
    x = event(
        "Ada: docs https://t.co/abc and https://t.co/def",
        links={"https://t.co/abc": "https://example.com/a", "https://t.co/def": "http://example.org"},
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
    theirs = DmEvent(id="11", text="", sender_id="1000", created_at=1001.0, media=({"media_key": "3_76"},))
    ours = DmEvent(id="12", text="", sender_id="1000", created_at=1002.0, media=({"media_key": "3_77"},))
    plain = DmEvent(id="13", text="", sender_id="1000", created_at=1003.0)
    scan.take(EventPage(events=(plain, ours, theirs), next_token=None, server_time=None), now=1004.0)
    assert [e.id for e in scan.candidates] == ["13", "12"]
    assert not Scan(1000.0, "1000", "", None)._same_media(ours)  # we attached nothing


def test_a_date_header_ahead_of_xs_events_cannot_hide_our_send() -> None:
    # X's Date says an hour later than both our clock and its own event times (a front end
    # with a wrong clock): trusting it would put the cutoff after our send and resend it.
    scan = Scan(attempt_at=10_000.0, sender_id="1000", text="Ada: hi")
    ours = event("Ada: hi", id="12", at=10_001.0)
    page = EventPage(events=(ours,), next_token=None, server_time=10_050.0 + 3600.0)
    assert scan.take(page, now=10_050.0)
    assert scan.candidates == [ours] and scan.reached


def test_an_empty_page_that_points_further_back_is_read_on() -> None:
    scan = Scan(attempt_at=10_000.0, sender_id="1000", text="Ada: hi")
    empty = EventPage(events=(), next_token="page-two-token-xx", server_time=None)
    assert not scan.take(empty, now=10_050.0)
    ours = event("Ada: hi", id="12", at=10_001.0)
    assert scan.take(EventPage(events=(ours,), next_token=None, server_time=None), now=10_051.0)
    assert scan.candidates == [ours] and scan.reached


def test_an_empty_conversation_is_a_reading_that_reached_the_start() -> None:
    scan = Scan(attempt_at=10_000.0, sender_id="1000", text="Ada: hi")
    assert scan.take(EventPage(events=(), next_token=None, server_time=None), now=10_050.0)
    assert scan.reached and scan.candidates == []


def test_a_reading_in_circles_of_any_length_ends_undecided() -> None:
    scan = Scan(attempt_at=10_000.0, sender_id="1000", text="Ada: hi")
    newer = (event("other", at=10_500.0),)
    tokens = ["token-aaaaaaaaaaaaa", "token-bbbbbbbbbbbbb", "token-aaaaaaaaaaaaa"]
    done = [scan.take(EventPage(events=newer, next_token=t, server_time=None), now=10_600.0) for t in tokens]
    assert done == [False, False, True]
    assert not scan.reached  # it never got back to the attempt: no "not sent" from this


def test_a_reading_that_never_gets_back_to_the_attempt_ends_undecided() -> None:
    scan = Scan(attempt_at=10_000.0, sender_id="1000", text="Ada: hi")
    newer = (event("other", at=10_500.0),)
    for n in range(MAX_PAGES):
        page = EventPage(events=newer, next_token=f"token-{n:016d}", server_time=None)
        if scan.take(page, now=10_600.0):
            break
    assert scan.done and scan.pages == MAX_PAGES and not scan.reached


def test_events_older_than_the_attempt_are_a_reading_that_reached_it() -> None:
    scan = Scan(attempt_at=10_000.0, sender_id="1000", text="Ada: hi")
    page = EventPage(events=(event("other", at=1_000.0),), next_token="more-pages-here!", server_time=None)
    assert scan.take(page, now=10_600.0) and scan.reached


def test_a_date_header_years_behind_reads_back_a_day_not_the_whole_conversation() -> None:
    # A Date years in the past would move the cutoff years back: every page of the
    # conversation read, then undecided, again and again. A day of skew is the most it buys.
    scan = Scan(attempt_at=1_000_000.0, sender_id="1000", text="Ada: hi")
    two_days_back = event("other", at=1_000_000.0 - 2 * 86_400)
    page = EventPage(events=(two_days_back,), next_token="more-pages-here!", server_time=1_000.0)
    assert scan.take(page, now=1_000_050.0) and scan.reached


def test_the_link_x_adds_for_an_attachment_is_not_held_against_our_text() -> None:
    # X's older DM format (and perhaps v2) ends a DM with media with a t.co link to the
    # attachment, which the text we sent never had.
    media_page = {"https://t.co/m3d": "https://twitter.com/messages/media/1880000000000000005"}
    with_entity = DmEvent(
        id="12",
        text="Ada: photo https://t.co/m3d",
        sender_id="1000",
        created_at=1001.0,
        links=tuple(media_page.items()),
        media=({"media_key": "3_77"},),
    )
    assert same_text("Ada: photo", with_entity)
    file_only = DmEvent(
        id="13",
        text="https://t.co/m3d",
        sender_id="1000",
        created_at=1001.0,
        links=tuple(media_page.items()),
        media=({"media_key": "3_77"},),
    )
    assert same_text("", file_only)
    no_entity = DmEvent(
        id="14",
        text="Ada: photo https://t.co/m3d",
        sender_id="1000",
        created_at=1001.0,
        media=({"media_key": "3_77"},),
    )
    assert same_text("Ada: photo", no_entity)
    assert not same_text("Ada: photos", no_entity)
    # Without an attachment, a trailing link is the text's own and must match ours.
    plain = DmEvent(id="15", text="Ada: photo https://t.co/m3d", sender_id="1000", created_at=1001.0)
    assert not same_text("Ada: photo", plain)
