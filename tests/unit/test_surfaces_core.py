"""The pure parts of Slack's surfaces: the Home's view, the modal's decisions, confirmations."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridge.confirm import QUESTION_TTL, Question, question_buttons
from bridge.home import (
    CONNECT_ACTION,
    DISCONNECT_ACTION,
    UNLINK_ACTION,
    ChannelState,
    HomeFacts,
    WorkspaceFacts,
    WorkspaceSettings,
    home_view,
    state_line,
)
from bridge.modals import (
    CONVERSATION_ACTION,
    CONVERSATION_BLOCK,
    MESSAGE_ACTION,
    MESSAGE_BLOCK,
    PEOPLE_ACTION,
    PEOPLE_BLOCK,
    Origin,
    conversations_of,
    person_option,
    submission,
)
from bridge.model import Account, ChannelMapping, DmEvent, EventKind, EventPage, MappingKind, TokenSet, XUser

NOW = 1_800_000_000.0
ACCOUNT = Account(1, "T1", "U1", "1000", "me", TokenSet("a", "r", None))


def mapping(**kw: Any) -> ChannelMapping:
    fields: dict[str, Any] = {
        "team_id": "T1",
        "channel_id": "C1",
        "kind": MappingKind.DM,
        "account_id": 1,
        "conversation_id": "1000-2001",
        "participant_id": "2001",
        "created_by": "U1",
        "created_at": NOW - 60,
        "participant_username": "alice",
    }
    fields.update(kw)
    return ChannelMapping(**fields)


def buttons(view: dict[str, Any]) -> dict[str, str]:
    found = {}
    for block in view["blocks"]:
        for element in [*(block.get("elements") or []), block.get("accessory") or {}]:
            if element.get("type") == "button":
                found[element["text"]["text"]] = element["action_id"]
    return found


def words(view: dict[str, Any]) -> str:
    return json.dumps(view)


def test_a_home_without_an_account_offers_connect_only() -> None:
    view = home_view(HomeFacts("T1", "U1", None), NOW)
    assert view["type"] == "home"
    assert buttons(view) == {"Connect": CONNECT_ACTION}
    assert "Not connected" in words(view) and "Workspace settings" not in words(view)


def test_a_connected_home_shows_the_account_and_each_channel_with_its_state() -> None:
    facts = HomeFacts(
        "T1", "U1", ACCOUNT, (ChannelState(mapping(), waiting=2, failed=1, last_activity=NOW - 5),)
    )
    view = home_view(facts, NOW)
    shown = buttons(view)
    assert shown["Reconnect"] == CONNECT_ACTION and shown["Disconnect"] == DISCONNECT_ACTION
    assert shown["Unlink"] == UNLINK_ACTION
    text = words(view)
    assert "@me" in text and "<#C1>" in text and "1-to-1 DMs with @alice" in text
    assert "2 waiting to go to X" in text and "1 failed" in text and "last activity today" in text
    assert "1000-2001" not in text  # no raw conversation id is shown


def test_an_admin_sees_the_workspace_settings() -> None:
    workspace = WorkspaceFacts(WorkspaceSettings(admin_only=True, retention_days=45), channels=3, accounts=2)
    text = words(home_view(HomeFacts("T1", "U1", None, workspace=workspace), NOW))
    assert "Workspace settings" in text and "admins and owners only" in text and "45 days" in text


def test_without_public_url_there_is_no_connect_button() -> None:
    view = home_view(HomeFacts("T1", "U1", ACCOUNT, can_connect=False), NOW)
    assert "Reconnect" not in buttons(view) and "Disconnect" in buttons(view)


@pytest.mark.parametrize(
    ("changes", "account", "said"),
    [
        ({"paused_at": NOW}, ACCOUNT, "*paused*: the X account was disconnected"),
        ({"paused_at": NOW, "held_for": "9", "held_for_username": "old"}, ACCOUNT, "@old's conversation"),
        (
            {},
            Account(1, "T1", "U1", "1000", "me", TokenSet("a", None, None), needs_reconnect=True),
            "needs reconnecting",
        ),
        ({"kind": MappingKind.GROUP, "conversation_id": None}, ACCOUNT, "created with the first message"),
        ({}, ACCOUNT, "active"),
    ],
)
def test_the_state_of_a_channel_in_words(changes: dict[str, Any], account: Account, said: str) -> None:
    line = state_line(ChannelState(mapping(**changes)), account, NOW)
    assert said in line and "last activity never" in line


def values(people: tuple[str, ...] = (), conversation: str = "", message: str = "") -> dict[str, Any]:
    found: dict[str, Any] = {
        PEOPLE_BLOCK: {PEOPLE_ACTION: {"selected_options": [{"value": p} for p in people]}},
        MESSAGE_BLOCK: {MESSAGE_ACTION: {"value": message or None}},
    }
    if conversation:
        found[CONVERSATION_BLOCK] = {CONVERSATION_ACTION: {"selected_option": {"value": conversation}}}
    return found


@pytest.mark.parametrize(
    ("given", "text"),
    [
        (values(("alice",)), "dm @alice"),
        (values(("alice",), message="@bob hi"), "dm @alice -- @bob hi"),
        (values(("alice", "bob", "alice")), "new-group @alice @bob"),
        (values(("alice", "bob"), message="hello"), "new-group @alice @bob -- hello"),
        (values(conversation="123456789012345678"), "link 123456789012345678"),
    ],
)
def test_a_submission_is_the_typed_command_it_stands_for(given: dict[str, Any], text: str) -> None:
    assert submission(given) == (text, None, {})


@pytest.mark.parametrize(
    ("given", "block"),
    [
        (values(), PEOPLE_BLOCK),
        (values(("alice",), conversation="1-2"), CONVERSATION_BLOCK),
        (values(conversation="1-2", message="hi"), MESSAGE_BLOCK),
        (values(("not a handle!",)), PEOPLE_BLOCK),
        ({}, PEOPLE_BLOCK),
    ],
)
def test_a_submission_that_cannot_run_says_where(given: dict[str, Any], block: str) -> None:
    text, _, errors = submission(given)
    assert text == "" and list(errors) == [block]


def test_the_origin_survives_the_round_trip_and_junk_is_no_origin() -> None:
    origin = Origin("C1", "https://hooks.slack.com/x", "support")
    assert Origin.parse(origin.metadata()) == origin
    assert Origin.parse("not json") == Origin() == Origin.parse("[1]")


def test_a_person_option_says_whether_they_accept_dms() -> None:
    assert "accepts your DMs" in person_option(XUser("2", "alice", "Alice", True))["text"]["text"]
    assert "may not accept" in person_option(XUser("2", "alice", "Alice", False))["text"]["text"]
    assert person_option(XUser("2", "alice"))["text"]["text"] == "@alice"


def test_conversations_are_named_by_their_people() -> None:
    page = EventPage(
        events=(
            DmEvent("3", EventKind.MESSAGE_CREATE, "1000-2001", "2001"),
            DmEvent("2", EventKind.MESSAGE_CREATE, "555555555555555555", "2002"),
            DmEvent("1", EventKind.MESSAGE_CREATE, "1000-2001", "1000"),
        ),
        users={"2001": XUser("2001", "alice"), "2002": XUser("2002", "bob")},
        next_token=None,
    )
    assert [(c.conversation_id, c.label) for c in conversations_of(page, "1000")] == [
        ("1000-2001", "DM with @alice"),
        ("555555555555555555", "Group with @bob"),
    ]


def test_a_question_names_whom_it_asks_about_what_and_when() -> None:
    question = Question("unlink", "T1", "U1", "C1", repr(1765000000.123456), 1765000000)
    assert Question.parse(question.value()) == question
    disconnect = Question("disconnect", "T1", "U1", "", "7-1000", 1765000000)
    assert Question.parse(disconnect.value()) == disconnect
    for junk in (
        "",
        "unlink:T1",
        "drop:T1:U1:C1:1.5:1",
        "unlink::U1:C1:1.5:1",
        "unlink:T1:U1::1.5:1",  # an unlink names its channel
        "unlink:T1:U1:C1::1",  # and the mapping it is about
        "unlink:T1:U1:C1:1.5:soon",
        "unlink:T1:U1:C1",  # a question from before questions named their subject and time
        "unlink:T1:U1:C1:1.5:1:extra",
    ):
        assert Question.parse(junk) is None, junk


def test_a_question_expires_after_ten_minutes() -> None:
    question = Question("disconnect", "T1", "U1", "", "7-1000", 1000)
    assert not question.expired(1000 + QUESTION_TTL)
    assert question.expired(1000 + QUESTION_TTL + 1)
    assert QUESTION_TTL == 600.0


def test_question_buttons_say_what_they_do() -> None:
    for verb, label in (("unlink", "Confirm: Unlink"), ("disconnect", "Confirm: Disconnect")):
        question = Question(verb, "T1", "U1", "C1", "1", 5)
        confirm, cancel = question_buttons(question)
        assert (confirm.text, confirm.style, cancel.text) == (label, "danger", "Cancel")
        assert confirm.value == cancel.value == question.value()
