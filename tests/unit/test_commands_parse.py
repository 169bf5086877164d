"""Unit tests for bridge.commands.parse: the `/xdm` grammar, table-driven and property-based."""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.commands import (
    MAX_GROUP,
    MIN_GROUP,
    X_CHAT_GROUP_ID,
    Command,
    Connect,
    DirectMessage,
    Help,
    Link,
    NewGroup,
    Participant,
    Status,
    Unlink,
    parse,
)
from bridge.errors import CommandError
from bridge.model import X_CONVERSATION_ID, X_USER_ID, X_USERNAME
from bridge.translate import X_TEXT_LIMIT, render_parts, to_plain

PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

alice, bob, carol = Participant(username="alice"), Participant(username="bob"), Participant(username="carol")


# ---------------------------------------------------------------------------------------------
# Table: every subcommand
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("", Help(), id="empty"),
        pytest.param("   \t\n ", Help(), id="blank"),
        pytest.param("help", Help(), id="help"),
        pytest.param("-h", Help(), id="dash-h"),
        pytest.param("--help", Help(), id="dash-dash-help"),
        pytest.param("?", Help(), id="question-mark"),
        pytest.param("HELP", Help(), id="verb-case-insensitive"),
        pytest.param("frobnicate now", Help(unknown="frobnicate"), id="unknown-verb"),
        pytest.param("Frobnicate", Help(unknown="Frobnicate"), id="unknown-verb-keeps-case"),
        pytest.param("connect", Connect(), id="connect"),
        pytest.param("  Connect  ", Connect(), id="connect-padded"),
        pytest.param("connect please", Connect(), id="connect-ignores-rest"),
        pytest.param("status", Status(), id="status"),
        pytest.param("unlink", Unlink(), id="unlink"),
        pytest.param("disconnect-channel", Unlink(), id="unlink-alias"),
        pytest.param("link 1000-2001", Link("1000-2001"), id="link-one-to-one"),
        pytest.param("link 1880000000000000001", Link("1880000000000000001"), id="link-group-19"),
        pytest.param("link 123456789012345", Link("123456789012345"), id="link-group-15"),
        pytest.param("dm @alice", DirectMessage(alice, ""), id="dm-handle"),
        pytest.param("dm @alice hello  there", DirectMessage(alice, "hello there"), id="dm-message"),
        pytest.param("dm 2001 hi", DirectMessage(Participant(user_id="2001"), "hi"), id="dm-user-id"),
        pytest.param("dm https://x.com/alice", DirectMessage(alice, ""), id="dm-x-profile-url"),
        pytest.param(
            "dm <https://twitter.com/alice|twitter.com/alice> yo",
            DirectMessage(alice, "yo"),
            id="dm-slack-linked-twitter-url",
        ),
        pytest.param("new-group @alice @bob", NewGroup((alice, bob), ""), id="group-two"),
        pytest.param(
            "new-group @alice @bob welcome all", NewGroup((alice, bob), "welcome all"), id="group-message"
        ),
        pytest.param(
            "new-group @alice 2002 @carol",
            NewGroup((alice, Participant(user_id="2002"), carol), ""),
            id="group-handles-and-ids",
        ),
        pytest.param(
            "new-group @alice @bob @alice hi", NewGroup((alice, bob), "hi"), id="group-duplicates-collapse"
        ),
        pytest.param(
            "new-group @alice @bob -- 42 is the answer",
            NewGroup((alice, bob), "42 is the answer"),
            id="group-double-dash-ends-participants",
        ),
        pytest.param(
            "new-group @alice @bob 42 is the answer",
            NewGroup((alice, bob, Participant(user_id="42")), "is the answer"),
            id="group-leading-number-is-a-participant",
        ),
        pytest.param(
            "new-group https://x.com/alice http://www.twitter.com/bob/",
            NewGroup((alice, bob), ""),
            id="group-profile-urls",
        ),
    ],
)
def test_parse_table(text: str, expected: Command) -> None:
    assert parse(text) == expected


@pytest.mark.parametrize(
    ("text", "message_part"),
    [
        pytest.param("dm", "Usage: `/xdm dm @alice", id="dm-nobody"),
        pytest.param("dm hello", "`hello` is not an X handle", id="dm-not-a-participant"),
        pytest.param("dm @not-a-handle", "is not a valid X handle", id="dm-bad-handle"),
        pytest.param("dm @", "`@` is not a valid X handle", id="dm-bare-at"),
        pytest.param("dm @abcdefghijklmnop", "is not a valid X handle", id="dm-handle-too-long"),
        pytest.param("dm <@U123ABC|ada>", "`@ada` is a Slack member", id="dm-slack-mention-label"),
        pytest.param("dm <@U123ABC>", "`@U123ABC` is a Slack member", id="dm-slack-mention-id"),
        pytest.param("dm 12345678901234567890", "is not an X handle", id="dm-id-too-long"),
        pytest.param("link", "Usage: `/xdm link <conversation id>`", id="link-missing"),
        pytest.param("link 1-2 3-4", "Usage: `/xdm link", id="link-two-ids"),
        pytest.param("link abc", "`abc` is not an X conversation id", id="link-not-digits"),
        pytest.param("link 12345", "is not an X conversation id", id="link-group-too-short"),
        pytest.param("link 1-2-3", "is not an X conversation id", id="link-three-parts"),
        pytest.param("link 12345678901234567890", "is not an X conversation id", id="link-group-too-long"),
        pytest.param("new-group", "at least 2 other participants (you gave 0)", id="group-nobody"),
        pytest.param("new-group @alice", "at least 2 other participants (you gave 1)", id="group-one"),
        pytest.param(
            "new-group @alice @alice", "at least 2 other participants (you gave 1)", id="group-duplicate"
        ),
        pytest.param("new-group hello @alice @bob", "(you gave 0)", id="group-message-first"),
        pytest.param("new-group @alice @b.ob", "`@b.ob` is not a valid X handle", id="group-bad-handle"),
        pytest.param("new-group @alice <@U1|ada>", "is a Slack member", id="group-slack-mention"),
        pytest.param(
            "new-group " + " ".join(f"@u{i}" for i in range(MAX_GROUP + 1)),
            f"at most {MAX_GROUP} other participants in a group (you gave {MAX_GROUP + 1})",
            id="group-too-many",
        ),
    ],
)
def test_parse_errors(text: str, message_part: str) -> None:
    with pytest.raises(CommandError) as caught:
        parse(text)
    assert message_part in str(caught.value)


def test_group_of_exactly_max_participants_is_accepted() -> None:
    command = parse("new-group " + " ".join(f"@u{i}" for i in range(MAX_GROUP)))
    assert isinstance(command, NewGroup)
    assert len(command.participants) == MAX_GROUP


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------

HANDLES = st.text(alphabet=string.ascii_letters + string.digits + "_", min_size=1, max_size=15)
USER_IDS = st.integers(min_value=0, max_value=10**19 - 1).map(str)
PARTICIPANTS = st.one_of(
    HANDLES.map(lambda h: Participant(username=h)), USER_IDS.map(lambda i: Participant(user_id=i))
)
VERBS = ["connect", "help", "status", "unlink", "new-group", "dm", "link", "--", "?", "-h"]
# Text that looks like commands: verbs, handles, ids, mentions, URLs and noise, mixed.
WORDS = st.one_of(
    st.sampled_from([*VERBS, "@", "<@U1>", "<@W9|x>", "https://x.com/a", "<http://twitter.com/b|b>"]),
    HANDLES.map("@{}".format),
    USER_IDS,
    st.text(max_size=12),
)
COMMANDISH = st.lists(WORDS, max_size=12).map(" ".join)
# Message words that cannot be read as a participant (no leading @, not digits, not a URL).
MESSAGE_WORDS = st.lists(
    st.text(alphabet=string.ascii_letters + ",.!", min_size=1, max_size=8), max_size=6
).map(" ".join)


@PROPS
@given(text=st.one_of(st.text(), COMMANDISH))
def test_parse_raises_only_command_error(text: str) -> None:
    try:
        command = parse(text)
    except CommandError as exc:
        assert str(exc), "a CommandError must carry a message for the user"
    else:
        assert isinstance(command, Connect | Help | Status | Unlink | NewGroup | DirectMessage | Link)


@PROPS
@given(participants=st.lists(PARTICIPANTS, max_size=MAX_GROUP + 6), message=MESSAGE_WORDS)
def test_group_participant_count_enforced(participants: list[Participant], message: str) -> None:
    text = "new-group " + " ".join(str(p) for p in participants) + " -- " + message
    unique = list(dict.fromkeys(participants))
    if MIN_GROUP <= len(unique) <= MAX_GROUP:
        assert parse(text) == NewGroup(tuple(unique), message)
    else:
        with pytest.raises(CommandError, match=f"you gave {len(unique)}"):
            parse(text)


@PROPS
@given(participant=PARTICIPANTS, message=MESSAGE_WORDS)
def test_dm_participant_round_trips(participant: Participant, message: str) -> None:
    command = parse(f"dm {participant} {message}")
    assert command == DirectMessage(participant, message)
    # What the bot shows back (`@alice` / `2001`) parses to the same participant.
    assert parse(f"DM {command.participant}") == DirectMessage(participant, "")


@PROPS
@given(handle=HANDLES)
def test_profile_url_and_handle_name_the_same_participant(handle: str) -> None:
    assert parse(f"dm https://x.com/{handle}") == parse(f"dm @{handle}")


@PROPS
@given(
    conversation=st.one_of(
        st.tuples(USER_IDS, USER_IDS).map("-".join),
        st.integers(min_value=10**14, max_value=10**19 - 1).map(str),
    )
)
def test_link_round_trips(conversation: str) -> None:
    assert parse(f"link {conversation}") == Link(conversation)


TOKENS = st.one_of(st.text(min_size=1, max_size=20), WORDS).filter(lambda w: w.split() == [w])


@PROPS
@given(token=TOKENS, message=MESSAGE_WORDS)
def test_dm_names_a_well_formed_participant_or_refuses(token: str, message: str) -> None:
    try:
        command = parse(f"dm {token} {message}")
    except CommandError:
        return
    assert isinstance(command, DirectMessage)
    assert command.message == message
    who = command.participant
    assert (who.username is None) != (who.user_id is None)
    assert (who.username is not None and X_USERNAME.match(who.username)) or (
        who.user_id is not None and X_USER_ID.match(who.user_id)
    )


@PROPS
@given(conversation=st.text(min_size=1).map(lambda s: s.split()[0] if s.split() else "x"))
def test_link_accepts_exactly_conversation_ids(conversation: str) -> None:
    # A legacy DM conversation's id, or an encrypted X Chat group's ("g" and digits).
    if X_CONVERSATION_ID.match(conversation) or X_CHAT_GROUP_ID.match(conversation):
        assert parse(f"link {conversation}") == Link(conversation)
    else:
        with pytest.raises(CommandError):
            parse(f"link {conversation}")


# ---------------------------------------------------------------------------------------------
# Translator pipeline (tests/unit/test_translate.py covers to_plain and render_parts separately
# with restricted names; this checks the delivery worker's composition with any display name).
# ---------------------------------------------------------------------------------------------


@PROPS
@given(
    text=st.one_of(st.text(max_size=400), COMMANDISH),
    name=st.text(max_size=100),
    limit=st.sampled_from([40, 80, 280, X_TEXT_LIMIT]),
)
def test_to_plain_then_render_parts_never_raises(text: str, name: str, limit: int) -> None:
    body = to_plain(f"<@U1> {text}", user_names={"U1": name})
    parts = render_parts(body, name=name, limit=limit)
    assert parts
    assert all(0 < len(p) <= limit for p in parts)


def test_link_takes_an_x_chat_group_id() -> None:
    assert parse("link g1900000000000000042") == Link("g1900000000000000042")
    for wrong in ("g", "gx12", "g12345678901234567890"):
        with pytest.raises(CommandError):
            parse(f"link {wrong}")
