"""Unit tests for bridge.translate: Slack text/blocks → plain text, and message splitting."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.translate import X_TEXT_LIMIT, mentioned_user_ids, quote_parent, render_parts, to_plain, to_slack

FIXTURES = Path(__file__).parents[1] / "fixtures" / "slack"

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def load_event(name: str) -> dict[str, Any]:
    """The `event` of a captured Slack payload. A missing fixture folder is a failure, not a skip."""
    if not FIXTURES.is_dir():
        pytest.fail(f"Slack fixtures folder missing: {FIXTURES}")
    event: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))["event"]
    return event


def text_el(text: str, **style: bool) -> dict[str, Any]:
    element: dict[str, Any] = {"type": "text", "text": text}
    if style:
        element["style"] = style
    return element


def section(*elements: dict[str, Any]) -> dict[str, Any]:
    return {"type": "rich_text_section", "elements": list(elements)}


def rich(*elements: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"type": "rich_text", "block_id": "b1", "elements": list(elements)}]


# ---------------------------------------------------------------------------------------------
# Captured fixtures
# ---------------------------------------------------------------------------------------------

MENTION_FIXTURE = "event-message-mention-channel-link-url.json"
PLAIN_FIXTURE = "event-message-plain.json"


@pytest.mark.parametrize(
    ("fixture", "use_blocks", "kwargs", "expected"),
    [
        pytest.param(PLAIN_FIXTURE, False, {}, "Hello World!", id="plain-text"),
        pytest.param(PLAIN_FIXTURE, True, {}, "Hello World!", id="plain-blocks"),
        pytest.param(
            MENTION_FIXTURE,
            False,
            {},
            "#general 🐱 @U043H11ES4V https://google.com text text text",
            id="mention-text",
        ),
        pytest.param(
            MENTION_FIXTURE,
            True,
            {},
            # blocks name no channel; the label comes from the <#C…|general> token in text
            "#general 🐱 @U043H11ES4V https://google.com text text text",
            id="mention-blocks",
        ),
        pytest.param(
            MENTION_FIXTURE,
            False,
            {"user_names": {"U043H11ES4V": "Jade Tester"}},
            "#general 🐱 @Jade Tester https://google.com text text text",
            id="mention-text-resolved",
        ),
        pytest.param(
            MENTION_FIXTURE,
            True,
            {"user_names": {"U043H11ES4V": "Jade Tester"}, "channel_names": {"C043YJGBY49": "general-2"}},
            "#general-2 🐱 @Jade Tester https://google.com text text text",
            id="mention-blocks-resolved",
        ),
        pytest.param(
            "event-message-channel_join.json",
            False,
            {"user_names": {"U0442US8QGH": "xdm-bridge"}},
            "@xdm-bridge has joined the channel",
            id="channel-join",
        ),
        pytest.param("event-message-thread_broadcast.json", False, {}, "Hi there!", id="thread-broadcast"),
    ],
)
def test_fixture_payloads(fixture: str, use_blocks: bool, kwargs: dict[str, Any], expected: str) -> None:
    event = load_event(fixture)
    blocks = event["blocks"] if use_blocks else None
    assert to_plain(event["text"], blocks, **kwargs) == expected


def test_fixture_blocks_alone_use_ids() -> None:
    event = load_event(MENTION_FIXTURE)
    assert to_plain("", event["blocks"]) == "#C043YJGBY49 🐱 @U043H11ES4V https://google.com text text text"


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        pytest.param(MENTION_FIXTURE, {"U043H11ES4V"}, id="mention"),
        pytest.param(PLAIN_FIXTURE, set(), id="plain"),
        pytest.param("event-message-channel_join.json", {"U0442US8QGH"}, id="channel-join"),
    ],
)
def test_fixture_mentioned_user_ids(fixture: str, expected: set[str]) -> None:
    event = load_event(fixture)
    assert mentioned_user_ids(event["text"], event.get("blocks")) == expected


def test_thread_root_quote_from_fixture() -> None:
    root = load_event("event-message-thread_broadcast.json")["root"]
    assert quote_parent(to_plain(root["text"])) == '↪ re: "Write in the thread 🙇"'


# ---------------------------------------------------------------------------------------------
# Wire text
# ---------------------------------------------------------------------------------------------

USERS = {"U123": "Ada Lovelace", "W777": "Grace"}
CHANNELS = {"C9": "random"}

TEXT_CASES = [
    # mentions
    ("user-unknown", "<@U123> hi", {}, "@U123 hi"),
    ("user-resolved", "<@U123> hi", {"user_names": USERS}, "@Ada Lovelace hi"),
    ("user-enterprise-id", "cc <@W777>", {"user_names": USERS}, "cc @Grace"),
    ("user-label", "<@U55|ada> hi", {}, "@ada hi"),
    ("user-name-beats-label", "<@U123|ada>", {"user_names": USERS}, "@Ada Lovelace"),
    ("channel-label", "see <#C043YJGBY49|general>", {}, "see #general"),
    ("channel-empty-label", "see <#C1|>", {}, "see #C1"),
    ("channel-bare", "see <#C1>", {}, "see #C1"),
    ("channel-lookup", "see <#C9|old-name>", {"channel_names": CHANNELS}, "see #random"),
    # links
    ("link-bare", "<https://google.com>", {}, "https://google.com"),
    ("link-labelled", "<https://x.y|the docs>", {}, "the docs (https://x.y)"),
    ("link-label-is-url", "<https://x.y/a|https://x.y/a>", {}, "https://x.y/a"),
    ("link-label-no-scheme", "<http://example.com|example.com>", {}, "http://example.com"),
    ("link-escaped-query", "<https://x.y/?a=1&amp;b=2|A &amp; B>", {}, "A & B (https://x.y/?a=1&b=2)"),
    ("link-emoji-in-url-untouched", "<https://x.y/:tada:/z>", {}, "https://x.y/:tada:/z"),
    ("mailto-same", "<mailto:a@b.c|a@b.c>", {}, "a@b.c"),
    ("mailto-labelled", "<mailto:a@b.c|Ada>", {}, "Ada (a@b.c)"),
    (
        "app-attachment-link",
        "this is a fake pr with a link\n\n<https://myteam.slack.com/archives/C07KTH1T4CQ/p1730339894629249"
        "|https://myteam.slack.com/archives/C07KTH1T4CQ/p1730339894629249>",
        {},
        "this is a fake pr with a link\n\nhttps://myteam.slack.com/archives/C07KTH1T4CQ/p1730339894629249",
    ),
    # specials
    ("here", "<!here> standup", {}, "@here standup"),
    ("here-labelled", "<!here|here> standup", {}, "@here standup"),
    ("channel-broadcast", "<!channel>", {}, "@channel"),
    ("everyone", "<!everyone|@everyone>", {}, "@everyone"),
    ("subteam", "<!subteam^S0123|@oncall> ping", {}, "@oncall ping"),
    ("date-fallback", "due <!date^1392734382^{date_short}|Feb 18, 2014>", {}, "due Feb 18, 2014"),
    ("date-no-fallback", "<!date^0^{date}>", {}, "1970-01-01 00:00 UTC"),
    # escaping
    ("entities", "hi &amp; &lt;b&gt;", {}, "hi & <b>"),
    ("escaped-mention-is-text", "&lt;@U1&gt; is not a mention", {}, "<@U1> is not a mention"),
    ("single-pass-unescape", "&amp;lt; stays", {}, "&lt; stays"),
    ("other-entities-untouched", "&quot;x&quot; &#39;", {}, "&quot;x&quot; &#39;"),
    ("quote", "&gt; quoted\nreply", {}, "> quoted\nreply"),
    # emoji
    ("emoji", "party :tada:", {}, "party 🎉"),
    ("emoji-plus1", ":+1: :-1:", {}, "👍 👎"),
    ("emoji-thumbsup-alias", ":thumbsup:", {}, "👍"),
    ("emoji-simple-smile-fallback", ":simple_smile:", {}, "🙂"),
    ("emoji-slightly-smiling", ":slightly_smiling_face:", {}, "🙂"),
    ("emoji-skin-tone", ":wave::skin-tone-3:", {}, "👋🏼"),
    ("emoji-thumbsup-skin-tone", ":thumbsup::skin-tone-2:", {}, "👍🏻"),
    ("emoji-skin-tone-6", ":+1::skin-tone-6:", {}, "👍🏿"),
    ("emoji-hyphen-name", ":man-shrugging:", {}, "🤷\u200d♂️"),
    ("emoji-hyphen-name-skin", ":man-shrugging::skin-tone-4:", {}, "🤷🏽\u200d♂️"),
    ("emoji-male-prefix", ":male-technologist:", {}, "👨\u200d💻"),
    ("emoji-flag", ":flag-us: :flag-gb:", {}, "🇺🇸 🇬🇧"),
    ("emoji-tone-on-non-modifier", ":heart::skin-tone-2:", {}, "❤️"),
    ("emoji-custom-verbatim", ":partyparrot: :shipit:", {}, ":partyparrot: :shipit:"),
    ("emoji-custom-with-tone", ":blob::skin-tone-3:", {}, ":blob::skin-tone-3:"),
    ("clock-time-untouched", "at 10:30:45 and 12:100:00", {}, "at 10:30:45 and 12:100:00"),
    # code
    ("inline-code-keeps-shortcode", "run `:tada:` now :tada:", {}, "run `:tada:` now 🎉"),
    ("code-block-verbatim", "```x = :tada:\n&lt;y&gt;```\n:tada:", {}, "```x = :tada:\n<y>```\n🎉"),
    ("code-block-link", "```curl <https://a.b/c?d=1&amp;e=2>```", {}, "```curl https://a.b/c?d=1&e=2```"),
    ("code-token-no-double-unescape", "```<https://a.b|x &amp;lt; y>```", {}, "```x &lt; y (https://a.b)```"),
    ("unclosed-fence", "```:tada:", {}, "```🎉"),
    ("empty", "", {}, ""),
]


@pytest.mark.parametrize(
    ("text", "kwargs", "expected"), [c[1:] for c in TEXT_CASES], ids=[c[0] for c in TEXT_CASES]
)
def test_text_to_plain(text: str, kwargs: dict[str, Any], expected: str) -> None:
    assert to_plain(text, **kwargs) == expected


# ---------------------------------------------------------------------------------------------
# rich_text blocks
# ---------------------------------------------------------------------------------------------

BLOCK_CASES: list[tuple[str, list[dict[str, Any]], str, dict[str, Any], str]] = [
    (
        "styles-are-plain",
        rich(
            section(
                text_el("bold", bold=True),
                text_el(" "),
                text_el("it", italic=True),
                text_el(" x", strike=True),
            )
        ),
        "*bold* _it_ ~x~",
        {},
        "bold it x",
    ),
    (
        "inline-code-backticks-merged",
        rich(
            section(
                text_el("run "),
                text_el("make ", code=True),
                text_el("test", code=True, bold=True),
                text_el(" :tada:"),
            )
        ),
        "run `make test` :tada:",
        {},
        "run `make test` 🎉",
    ),
    ("inline-code-no-emoji", rich(section(text_el(":tada:", code=True))), "`:tada:`", {}, "`:tada:`"),
    (
        "link-with-text",
        rich(section({"type": "link", "url": "https://x.y", "text": "docs"})),
        "<https://x.y|docs>",
        {},
        "docs (https://x.y)",
    ),
    ("link-bare", rich(section({"type": "link", "url": "https://x.y"})), "<https://x.y>", {}, "https://x.y"),
    (
        "link-text-equals-url",
        rich(section({"type": "link", "url": "https://x.y", "text": "x.y"})),
        "<https://x.y|x.y>",
        {},
        "https://x.y",
    ),
    (
        "link-mailto",
        rich(section({"type": "link", "url": "mailto:a@b.c", "text": "a@b.c"})),
        "<mailto:a@b.c|a@b.c>",
        {},
        "a@b.c",
    ),
    (
        "raw-text-not-unescaped",
        rich(section(text_el("a &amp; b < c"))),
        "a &amp;amp; b &lt; c",
        {},
        "a &amp; b < c",
    ),
    (
        "user-and-channel-resolved",
        rich(
            section(
                {"type": "user", "user_id": "U123"}, text_el(" in "), {"type": "channel", "channel_id": "C9"}
            )
        ),
        "<@U123> in <#C9>",
        {"user_names": USERS, "channel_names": CHANNELS},
        "@Ada Lovelace in #random",
    ),
    ("user-unresolved", rich(section({"type": "user", "user_id": "U5"})), "", {}, "@U5"),
    (
        "user-label-from-text",
        rich(section({"type": "user", "user_id": "U5"})),
        "<@U5|bob>",
        {},
        "@bob",
    ),
    (
        "emoji-unicode",
        rich(section({"type": "emoji", "name": "cat", "unicode": "1f431"})),
        ":cat:",
        {},
        "🐱",
    ),
    (
        "emoji-unicode-with-tone",
        rich(section({"type": "emoji", "name": "wave", "unicode": "1f44b-1f3fc", "skin_tone": 3})),
        ":wave::skin-tone-3:",
        {},
        "👋🏼",
    ),
    (
        "emoji-tone-applied",
        rich(section({"type": "emoji", "name": "+1", "unicode": "1f44d", "skin_tone": 2})),
        ":+1::skin-tone-2:",
        {},
        "👍🏻",
    ),
    ("emoji-name-only", rich(section({"type": "emoji", "name": "simple_smile"})), ":simple_smile:", {}, "🙂"),
    (
        "emoji-custom",
        rich(section({"type": "emoji", "name": "partyparrot"})),
        ":partyparrot:",
        {},
        ":partyparrot:",
    ),
    (
        "broadcast",
        rich(section({"type": "broadcast", "range": "here"}, text_el(" standup"))),
        "<!here> standup",
        {},
        "@here standup",
    ),
    (
        "usergroup-label-from-text",
        rich(section({"type": "usergroup", "usergroup_id": "S1"})),
        "<!subteam^S1|@oncall>",
        {},
        "@oncall",
    ),
    ("usergroup-bare", rich(section({"type": "usergroup", "usergroup_id": "S1"})), "", {}, "@S1"),
    (
        "date",
        rich(section({"type": "date", "timestamp": 1392734382, "format": "{date}", "fallback": "Feb 18"})),
        "<!date^1392734382^{date}|Feb 18>",
        {},
        "Feb 18",
    ),
    (
        "color",
        rich(section(text_el("brand "), {"type": "color", "value": "#FF0000"})),
        "",
        {},
        "brand #FF0000",
    ),
    (
        "bullet-list-nested",
        rich(
            section(text_el("Plan:\n")),
            {"type": "rich_text_list", "style": "bullet", "indent": 0, "elements": [section(text_el("one"))]},
            {
                "type": "rich_text_list",
                "style": "bullet",
                "indent": 1,
                "elements": [section(text_el("sub :tada:"))],
            },
            {"type": "rich_text_list", "style": "bullet", "indent": 0, "elements": [section(text_el("two"))]},
            section(text_el("done")),
        ),
        "",
        {},
        "Plan:\n• one\n  • sub 🎉\n• two\ndone",
    ),
    (
        "ordered-list-offset",
        rich(
            {
                "type": "rich_text_list",
                "style": "ordered",
                "elements": [section(text_el("a")), section(text_el("b"))],
            },
            {
                "type": "rich_text_list",
                "style": "ordered",
                "indent": 1,
                "elements": [section(text_el("b.1"))],
            },
            {"type": "rich_text_list", "style": "ordered", "offset": 2, "elements": [section(text_el("c"))]},
        ),
        "",
        {},
        "1. a\n2. b\n  1. b.1\n3. c",
    ),
    (
        "quote",
        rich(
            {"type": "rich_text_quote", "elements": [text_el("line one\nline two")]},
            section(text_el("reply")),
        ),
        "&gt; line one\n&gt; line two\nreply",
        {},
        "> line one\n> line two\nreply",
    ),
    (
        "preformatted-verbatim",
        rich(
            section(text_el("look:\n")),
            {"type": "rich_text_preformatted", "elements": [text_el("x = :tada:\n  <y>")], "border": 0},
        ),
        "look:\n```x = :tada:\n  &lt;y&gt;```",
        {},
        "look:\n```x = :tada:\n  <y>```",
    ),
    (
        "preformatted-emoji-element-verbatim",
        rich(
            {
                "type": "rich_text_preformatted",
                "elements": [{"type": "emoji", "name": "tada", "unicode": "1f389"}],
            }
        ),
        "",
        {},
        "```:tada:```",
    ),
    # fallbacks to text
    ("malformed-unknown-element", rich(section({"type": "hologram"})), "hi :tada:", {}, "hi 🎉"),
    ("malformed-text-not-str", rich(section({"type": "text", "text": 5})), "hi", {}, "hi"),
    ("malformed-elements-not-list", [{"type": "rich_text", "elements": "nope"}], "hi", {}, "hi"),
    (
        "non-rich-text-block",
        [{"type": "section", "text": {"type": "mrkdwn", "text": "x"}}],
        "<@U1|ann>",
        {},
        "@ann",
    ),
    ("empty-rich-text-uses-text", rich(), "from text", {}, "from text"),
    ("empty-blocks-list", [], "from text", {}, "from text"),
]


@pytest.mark.parametrize(
    ("blocks", "text", "kwargs", "expected"), [c[1:] for c in BLOCK_CASES], ids=[c[0] for c in BLOCK_CASES]
)
def test_blocks_to_plain(
    blocks: list[dict[str, Any]], text: str, kwargs: dict[str, Any], expected: str
) -> None:
    assert to_plain(text, blocks, **kwargs) == expected


PARITY_IDS = [
    "styles-are-plain",
    "inline-code-backticks-merged",
    "link-with-text",
    "link-bare",
    "link-mailto",
    "raw-text-not-unescaped",
    "user-and-channel-resolved",
    "emoji-unicode-with-tone",
    "emoji-tone-applied",
    "broadcast",
    "usergroup-label-from-text",
    "date",
    "quote",
    "preformatted-verbatim",
]


@pytest.mark.parametrize("case_id", PARITY_IDS)
def test_blocks_and_text_agree(case_id: str) -> None:
    """Where the wire text carries the same content, both paths render identically."""
    (case,) = [c for c in BLOCK_CASES if c[0] == case_id]
    _, blocks, text, kwargs, _ = case
    if case_id == "styles-are-plain":  # Slack keeps *bold* markers in text; blocks drop them
        text = "bold it x"
    assert to_plain(text, blocks, **kwargs) == to_plain(text, **kwargs)


@pytest.mark.parametrize(
    "blocks",
    [
        pytest.param({"type": "rich_text"}, id="dict-not-list"),
        pytest.param("rich_text", id="string"),
        pytest.param([None, 3], id="junk-items"),
        pytest.param(
            [{"type": "rich_text", "elements": [{"type": "rich_text_list", "indent": "x"}]}], id="bad-indent"
        ),
        pytest.param([{"type": "rich_text", "elements": [section({"type": "emoji"})]}], id="emoji-no-name"),
        pytest.param(
            [{"type": "rich_text", "elements": [section({"type": "date", "timestamp": 1e300})]}],
            id="huge-date",
        ),
    ],
)
def test_malformed_blocks_fall_back_to_text(blocks: Any) -> None:
    assert to_plain("fallback &amp; :tada:", blocks) == "fallback & 🎉"


def test_huge_indent_is_clamped() -> None:
    blocks = rich(
        {"type": "rich_text_list", "style": "bullet", "indent": 10**9, "elements": [section(text_el("x"))]}
    )
    assert to_plain("", blocks) == " " * 16 + "• x"


# ---------------------------------------------------------------------------------------------
# mentioned_user_ids
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "blocks", "expected"),
    [
        pytest.param("<@U1> and <@W2|grace>", None, {"U1", "W2"}, id="text"),
        pytest.param("&lt;@U1&gt; typed", None, set(), id="escaped-not-mention"),
        pytest.param("<#C1|general> <!here> <@B1>", None, set(), id="not-users"),
        pytest.param("", rich(section({"type": "user", "user_id": "U9"})), {"U9"}, id="blocks"),
        pytest.param(
            "<@U1>",
            rich({"type": "rich_text_list", "elements": [section({"type": "user", "user_id": "W3"})]}),
            {"U1", "W3"},
            id="text-and-nested-blocks",
        ),
        pytest.param("", [{"type": "user", "user_id": 5}, "x", None], set(), id="malformed-blocks"),
    ],
)
def test_mentioned_user_ids(text: str, blocks: Any, expected: set[str]) -> None:
    assert mentioned_user_ids(text, blocks) == expected


def test_mentioned_user_ids_survives_cycles() -> None:
    element: dict[str, Any] = {"type": "rich_text_section", "elements": [{"type": "user", "user_id": "U7"}]}
    element["elements"].append(element)
    blocks = [{"type": "rich_text", "elements": [element]}]
    assert mentioned_user_ids("", blocks) == {"U7"}
    assert to_plain("fallback", blocks) == "fallback"


# ---------------------------------------------------------------------------------------------
# render_parts
# ---------------------------------------------------------------------------------------------

NUMBERING = re.compile(r" \((\d+)/(\d+)\)$")


def chunks_of(parts: list[str], prefix: str) -> list[str]:
    """Recover the body chunks from parts rendered with fmt "{name}: {text}"."""
    assert all(p.startswith(prefix) for p in parts), parts
    bodies = [p[len(prefix) :] for p in parts]
    if len(parts) == 1 and not NUMBERING.search(bodies[0]):
        return bodies
    out = []
    for i, b in enumerate(bodies, start=1):
        m = NUMBERING.search(b)
        assert m is not None, b
        assert (int(m.group(1)), int(m.group(2))) == (i, len(parts))
        out.append(b[: m.start()])
    return out


def non_ws(s: str) -> str:
    return "".join(c for c in s if not c.isspace())


@pytest.mark.parametrize(
    ("body", "limit", "expected"),
    [
        pytest.param("hello", 40, ["ann: hello"], id="fits"),
        pytest.param("x" * 35, 40, ["ann: " + "x" * 35], id="exactly-limit"),
        pytest.param(
            "First paragraph here.\n\nSecond one here.",
            40,
            ["ann: First paragraph here. (1/2)", "ann: Second one here. (2/2)"],
            id="paragraphs",
        ),
        pytest.param(
            "line one is here\nline two is here\nline three",
            40,
            ["ann: line one is here (1/2)", "ann: line two is here\nline three (2/2)"],
            id="lines",
        ),
        pytest.param(
            "One short sentence. Another short one! Third?",
            40,
            ["ann: One short sentence. (1/2)", "ann: Another short one! Third? (2/2)"],
            id="sentences",
        ),
        pytest.param(
            "alpha beta gamma delta epsilon zeta eta theta",
            40,
            ["ann: alpha beta gamma delta (1/2)", "ann: epsilon zeta eta theta (2/2)"],
            id="words",
        ),
        pytest.param(
            "y" * 60,
            40,
            ["ann: " + "y" * 29 + " (1/3)", "ann: " + "y" * 29 + " (2/3)", "ann: yy (3/3)"],
            id="hard-cut",
        ),
    ],
)
def test_render_parts_table(body: str, limit: int, expected: list[str]) -> None:
    parts = render_parts(body, name="ann", limit=limit)
    assert parts == expected
    assert all(len(p) <= limit for p in parts)


def test_render_parts_line_split_keeps_lines_together_when_they_fit() -> None:
    parts = render_parts("aaaa\nbbbb\n" + "c" * 28, name="ann", limit=40)
    assert parts == ["ann: aaaa\nbbbb (1/2)", "ann: " + "c" * 28 + " (2/2)"]


def test_render_parts_numbering_width_grows_with_count() -> None:
    body = " ".join(f"w{i:03d}" for i in range(300))
    # with 1-digit numbering 13 chars fit ("w000 w001"); with "(1/150)" only 9 do — still 2 words
    parts = render_parts(body, name="ann", limit=24)
    assert len(parts) == 150
    assert parts[0] == "ann: w000 w001 (1/150)"
    assert parts[-1] == "ann: w298 w299 (150/150)"
    assert all(len(p) <= 24 for p in parts)
    assert non_ws("".join(chunks_of(parts, "ann: "))) == non_ws(body)


def test_render_parts_long_name_is_truncated() -> None:
    parts = render_parts("hello world " * 10, name="N" * 100, limit=40)
    assert all(len(p) <= 40 for p in parts)
    assert all(p.startswith("N" * 17 + "…: ") for p in parts)


def test_render_parts_long_name_short_body_single_part() -> None:
    assert render_parts("hi", name="N" * 100, limit=40) == ["N" * 17 + "…: hi"]


def test_render_parts_custom_format() -> None:
    parts = render_parts("one two three four five six", name="ann", fmt="[{name}] {text}", limit=26)
    assert parts == ["[ann] one two three (1/2)", "[ann] four five six (2/2)"]


def test_render_parts_does_not_split_emoji_sequence() -> None:
    family = "👨\u200d👩\u200d👧\u200d👦"  # 7 code points
    body = "x" * 26 + family + "y" * 40
    parts = render_parts(body, name="ann", limit=40)
    assert all(len(p) <= 40 for p in parts)
    assert any(family in p for p in parts)


def test_render_parts_tiny_limit_gives_name_room_to_numbering() -> None:
    # limit 12: one char per part → 60 parts; " (60/60)" beside "ann: " leaves no room for
    # text, so the name shrinks to "…" rather than failing
    parts = render_parts(" ".join(["ab"] * 30), name="ann", limit=12)
    assert len(parts) == 60
    assert parts[0] == "…: a (1/60)"
    assert parts[-1] == "…: b (60/60)"
    assert all(len(p) <= 12 for p in parts)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param("", ["N" * 17 + "…: "], id="empty"),
        pytest.param(" \n" * 30, ["N" * 17 + "…: "], id="blank"),
    ],
)
def test_render_parts_blank_body(body: str, expected: list[str]) -> None:
    assert render_parts(body, name="N" * 40, limit=40) == expected


@pytest.mark.parametrize(
    ("fmt", "limit"),
    [
        pytest.param("{name}", 40, id="no-text"),
        pytest.param("{text} {text}", 40, id="text-twice"),
        pytest.param("{who}: {text}", 40, id="unknown-field"),
        pytest.param("{name}: {text:>5}", 40, id="format-spec"),
        pytest.param("{name}: {text}", 8, id="limit-too-small"),
    ],
)
def test_render_parts_rejects_bad_config(fmt: str, limit: int) -> None:
    with pytest.raises(ValueError):
        render_parts("some long body text that needs splitting", name="ann", fmt=fmt, limit=limit)


def test_render_parts_x_limit_large_body() -> None:
    paragraph = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 9).strip()
    body = "\n\n".join([paragraph] * 70)[:35_000]
    assert len(body) == 35_000
    parts = render_parts(body, name="Ada Lovelace")
    assert X_TEXT_LIMIT == 10_000
    assert len(parts) == 4
    assert all(0 < len(p) <= X_TEXT_LIMIT for p in parts)
    chunks = chunks_of(parts, "Ada Lovelace: ")
    assert non_ws("".join(chunks)) == non_ws(body)
    # split on paragraph boundaries: every chunk but the last ends a paragraph
    assert all(c.endswith(paragraph[-20:]) for c in chunks[:-1])


# ---------------------------------------------------------------------------------------------
# quote_parent
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parent", "max_chars", "expected"),
    [
        pytest.param("short one", 80, '↪ re: "short one"', id="short"),
        pytest.param("multi\nline\n\n  text", 80, '↪ re: "multi line text"', id="collapse-whitespace"),
        pytest.param("the quick brown fox jumps over", 20, '↪ re: "the quick brown fox…"', id="word-cut"),
        pytest.param("x" * 50, 10, '↪ re: "' + "x" * 9 + '…"', id="hard-cut"),
        pytest.param("", 80, "↪ re: (thread)", id="empty"),
        pytest.param("abc", 0, '↪ re: "…"', id="tiny-max"),
    ],
)
def test_quote_parent(parent: str, max_chars: int, expected: str) -> None:
    assert quote_parent(parent, max_chars=max_chars) == expected


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------

SLACKISH = st.lists(
    st.one_of(
        st.sampled_from(
            [
                "<@U1>",
                "<@U1|x>",
                "<#C1|general>",
                "<#C1|>",
                "<https://a.b|c>",
                "<https://a.b>",
                "<mailto:a@b.c|a@b.c>",
                "<!here>",
                "<!subteam^S1|@t>",
                "<!date^x^y|z>",
                "<!date^99999999999999999999>",
                "<!>",
                "<>",
                "<|>",
                "<@|>",
                ":tada:",
                ":wave::skin-tone-3:",
                ":skin-tone-9:",
                "::",
                "```",
                "`",
                "&amp;",
                "&lt;",
                "&gt;",
                "&",
                "<",
                ">",
                "|",
                "\n",
                " ",
                ":flag-zz:",
                ":-:",
            ]
        ),
        st.text(max_size=8),
    ),
    max_size=30,
).map("".join)

JSONISH: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)

ELEMENT_TYPES = [
    "rich_text",
    "rich_text_section",
    "rich_text_list",
    "rich_text_quote",
    "rich_text_preformatted",
    "text",
    "link",
    "user",
    "channel",
    "emoji",
    "broadcast",
    "usergroup",
    "date",
    "color",
    "bogus",
]
FIELD_VALUES = st.one_of(
    st.text(max_size=12),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.none(),
    st.booleans(),
    st.sampled_from(["1f44d", "1f44b-1f3fc", "zz", "110000", "d800", "ordered", "bullet", "here", "tada"]),
    st.dictionaries(st.sampled_from(["code", "bold"]), st.booleans(), max_size=2),
)
RICHISH: st.SearchStrategy[Any] = st.recursive(
    st.fixed_dictionaries(
        {"type": st.sampled_from(ELEMENT_TYPES)},
        optional={
            k: FIELD_VALUES
            for k in [
                "text",
                "url",
                "name",
                "unicode",
                "skin_tone",
                "style",
                "indent",
                "offset",
                "user_id",
                "channel_id",
                "usergroup_id",
                "range",
                "timestamp",
                "fallback",
                "value",
            ]
        },
    ),
    lambda children: st.fixed_dictionaries(
        {"type": st.sampled_from(ELEMENT_TYPES), "elements": st.lists(children, max_size=4)},
        optional={"style": FIELD_VALUES, "indent": FIELD_VALUES, "offset": FIELD_VALUES},
    ),
    max_leaves=15,
)


@FAST
@given(text=st.one_of(st.text(), SLACKISH))
def test_to_plain_never_raises_on_text(text: str) -> None:
    result = to_plain(text, user_names={"U1": "Ann"}, channel_names={"C1": "gen"})
    assert isinstance(result, str)
    assert mentioned_user_ids(text) <= {m for m in re.findall(r"<@([UW][A-Z0-9]+)", text)}


@FAST
@given(text=SLACKISH, blocks=st.one_of(JSONISH, st.lists(RICHISH, max_size=3)))
def test_to_plain_never_raises_on_blocks(text: str, blocks: Any) -> None:
    assert isinstance(to_plain(text, blocks), str)
    assert isinstance(mentioned_user_ids(text, blocks), set)


BODY_PIECES = st.one_of(
    st.text(max_size=20),
    st.text(alphabet="abc", min_size=50, max_size=700),  # long words, no spaces
    st.sampled_from(
        [
            "\n",
            "\n\n",
            "\n \n\n",
            " ",
            "  ",
            ". ",
            "! ",
            "\t",
            "👍🏽",
            "👨\u200d👩\u200d👧",
            "e\u0301",
            "日本語。",
        ]
    ),
)
BODIES = st.lists(BODY_PIECES, max_size=40).map("".join)
NAMES = st.text(alphabet=st.characters(exclude_characters=":\n\r", exclude_categories=["Cs"]), max_size=60)


@FAST
@given(body=BODIES, limit=st.integers(min_value=30, max_value=500), name=NAMES)
def test_render_parts_properties(body: str, limit: int, name: str) -> None:
    parts = render_parts(body, name=name, limit=limit)
    assert parts
    assert all(p and len(p) <= limit for p in parts)
    prefix_name = parts[0].split(": ", 1)[0]
    chunks = chunks_of(parts, prefix_name + ": ")
    if len(parts) > 1:
        assert all(c.strip() for c in chunks)
    assert non_ws("".join(chunks)) == non_ws(body)


def test_x_text_for_slack_escapes_only_slacks_control_characters() -> None:
    """Posted with Slack's markup off: ``&<>`` escaped (no ``<@U…>`` or ``<!channel>`` can ping),
    everything else byte for byte as typed on X, links with ``_`` or ``~`` included."""
    typed = "*b* _i_ ~s~ `c` > q <@U1> <!channel> &amp; https://x.com/a_b~c"
    assert to_slack(typed) == (
        "*b* _i_ ~s~ `c` &gt; q &lt;@U1&gt; &lt;!channel&gt; &amp;amp; https://x.com/a_b~c"
    )
