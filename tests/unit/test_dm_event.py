"""One X DM event type: each wire shape (a REST page, a push delivery) has one parser into
``DmEvent``; kinds and origins are enums whose text is what the database and X already use."""

from __future__ import annotations

import json
from typing import Any

import pytest

from adapters.store import rows
from adapters.x import push
from adapters.x.api import event_page_of
from bridge.model import (
    DM_EVENT_KINDS,
    DM_PUSH_TYPES,
    DmEvent,
    EventKind,
    InboundEvent,
    InboundOrigin,
    InboundState,
    PushEventType,
    XUser,
    inbound_event,
)
from bridge.reconcile import same_text

# A GET /2/dm_events answer as X writes it (NOTES §1.2): links as t.co with their entities,
# attachments by media key with the media expanded, users expanded.
REST_PAGE: dict[str, Any] = {
    "data": [
        {
            "id": "1900000000000000003",
            "event_type": "MessageCreate",
            "dm_conversation_id": "1000-2001",
            "sender_id": "2001",
            "text": "see https://t.co/abc and https://t.co/pic",
            "created_at": "2026-12-07T20:00:00.000Z",
            "entities": {
                "urls": [
                    {"url": "https://t.co/abc", "expanded_url": "https://example.com/a"},
                    {"url": "https://t.co/pic", "expanded_url": "https://x.com/messages/media/9"},
                ]
            },
            "attachments": {"media_keys": ["3_77", "3_78"]},
        },
        {
            "id": "1900000000000000002",
            "event_type": "ParticipantsJoin",
            "dm_conversation_id": "555555555555555555",
            "participant_ids": ["2002"],
        },
        {"id": "1900000000000000001", "event_type": "MessageDelete"},  # not a kind asked for
        {"id": "not-an-id", "event_type": "MessageCreate", "text": "x"},  # not one of X's ids
        "nonsense",
    ],
    "includes": {
        "users": [{"id": "2001", "username": "alice", "name": "Alice"}],
        "media": [
            {"media_key": "3_77", "type": "photo", "url": "https://ton.x.com/1.1/ton/data/dm/1/2/a.jpg"}
        ],
    },
    "meta": {"next_token": "older"},
}


def test_a_rest_page_parses_into_dm_events_with_enum_kinds() -> None:
    page = event_page_of(REST_PAGE, server_time=1.0)
    message, joined = page.events
    assert message == DmEvent(
        id="1900000000000000003",
        kind=EventKind.MESSAGE_CREATE,
        conversation_id="1000-2001",
        sender_id="2001",
        text="see https://t.co/abc and https://t.co/pic",  # as X stores it
        created_at=message.created_at,
        links=(
            ("https://t.co/abc", "https://example.com/a"),
            ("https://t.co/pic", "https://x.com/messages/media/9"),
        ),
        media=(
            {"media_key": "3_77", "type": "photo", "url": "https://ton.x.com/1.1/ton/data/dm/1/2/a.jpg"},
            {"media_key": "3_78"},  # X expanded only one: the key alone
        ),
    )
    assert message.created_at is not None and message.created_at > 1.7e9
    assert message.kind is EventKind.MESSAGE_CREATE and message.media_keys == ("3_77", "3_78")
    # As the sender wrote it: the link put back, the one to its own attachment taken out.
    assert message.written == "see https://example.com/a and "
    assert joined.kind is EventKind.PARTICIPANTS_JOIN and joined.participant_ids == ("2002",)
    assert page.users == {"2001": XUser("2001", "alice", "Alice")}
    assert (page.next_token, page.server_time) == ("older", 1.0)


def test_the_same_rest_event_serves_the_read_back_and_the_poster() -> None:
    """Delivery's read-back (``same_text``) and inbound's payload read one ``DmEvent``."""
    [event] = event_page_of({"data": [REST_PAGE["data"][0]]}).events
    assert same_text("see https://example.com/a and", event)
    queued = inbound_event(event, {"2001": XUser("2001", "alice")}, InboundOrigin.PUSH)
    assert queued == InboundEvent(
        dm_event_id=event.id,
        kind=EventKind.MESSAGE_CREATE,
        conversation_id="1000-2001",
        sender_id="2001",
        payload=queued.payload,
        origin=InboundOrigin.PUSH,
    )
    assert queued.payload["text"] == event.written
    assert [m["media_key"] for m in queued.payload["media"]] == ["3_77", "3_78"]
    assert "history" not in queued.payload
    history = inbound_event(event, {}, InboundOrigin.BACKFILL, bridged_at=5.0)
    assert (history.payload["history"], history.payload["bridged_at"]) == (True, 5.0)


@pytest.mark.parametrize("answer", [None, [], {"data": None}, {"data": "x"}, {"meta": []}])
def test_a_rest_answer_that_is_no_page_has_no_events(answer: Any) -> None:
    page = event_page_of(answer)
    assert (page.events, page.users, page.next_token) == ((), {}, None)


def test_a_push_delivery_parses_into_the_same_type() -> None:
    body = {
        "data": {
            "filter": {"user_id": "1000"},
            "event_type": "dm.received",
            "payload": {
                "direct_message_events": [
                    {
                        "type": "message_create",
                        "id": "1900000000000000003",
                        "message_create": {
                            "target": {"recipient_id": "1000"},
                            "sender_id": "2001",
                            "message_data": {"text": "private"},
                        },
                    }
                ]
            },
        }
    }
    [dm] = push.parse_delivery(json.dumps(body).encode()).dms
    assert isinstance(dm, DmEvent) and dm.kind is EventKind.MESSAGE_CREATE
    assert (dm.id, dm.sender_id, dm.recipient_id, dm.conversation_id) == (
        "1900000000000000003",
        "2001",
        "1000",
        None,
    )
    assert dm.text == ""  # a push announces a DM; its text is read from X, never kept from the push
    assert dm.peer("1000") == "2001" and dm.peer("2001") == "1000"


def test_kinds_and_origins_keep_the_stored_text() -> None:
    """StrEnums: the database and X's wire keep the same strings, no migration."""
    assert [k.value for k in DM_EVENT_KINDS] == ["MessageCreate", "ParticipantsJoin", "ParticipantsLeave"]
    assert {o.value for o in InboundOrigin} == {"poll", "push", "backfill", "sent"}
    assert (EventKind.CHAT_EDIT.value, EventKind.CHAT_DELETE.value) == ("ChatEdit", "ChatDelete")
    assert [k for k in EventKind if k.follow_up] == [EventKind.CHAT_EDIT, EventKind.CHAT_DELETE]
    assert [k for k in EventKind if k.membership] == [
        EventKind.PARTICIPANTS_JOIN,
        EventKind.PARTICIPANTS_LEAVE,
    ]
    assert json.dumps([EventKind.MESSAGE_CREATE, InboundOrigin.PUSH]) == '["MessageCreate", "push"]'
    assert [t.value for t in PushEventType] == ["dm.received", "dm.sent", "chat.received"]
    assert DM_PUSH_TYPES == (PushEventType.DM_RECEIVED, PushEventType.DM_SENT)


def test_the_store_edge_writes_plain_text_and_reads_enums_back() -> None:
    event = InboundEvent("7", EventKind.CHAT_DELETE, "g1", "2001", {"delete_of": "6"}, InboundOrigin.BACKFILL)
    values = rows.inbound_values(1, event, ("T1", "C1"), event.payload, InboundState.QUEUED, None, 2.0)
    assert type(values[6]) is str and values[6] == "ChatDelete"
    assert type(values[9]) is str and values[9] == "backfill"
    columns = [c.strip() for c in rows.INBOUND_COLUMNS.split(",")]
    row = dict(zip(columns, [*values[:11], 0, 0.0, None, 2.0], strict=True))
    item = rows.inbound_item({**row, "id": 1, "posting_since": None, "slack_ts": None})
    assert item.kind is EventKind.CHAT_DELETE and item.origin is InboundOrigin.BACKFILL
    legacy = rows.inbound_item({**row, "id": 2, "event_type": None, "posting_since": None, "slack_ts": None})
    assert legacy.kind is EventKind.MESSAGE_CREATE  # rows of old versions name no kind
