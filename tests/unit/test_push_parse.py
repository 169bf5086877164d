"""X's push, the pure parts: what the CRC route signs, and reading a signed delivery."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.web.logs import Sparse
from adapters.x import push
from bridge.model import DmEvent

SECRET = "consumer-secret"


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
def test_no_token_the_crc_route_signs_is_a_delivery(token: str) -> None:
    """The CRC answer is the HMAC a delivery is signed with: a signed token must never read as one."""
    answer = push.crc_response(SECRET, token)
    if answer is None:
        return
    with pytest.raises(push.MalformedDelivery):
        push.parse_delivery(token.encode())


@pytest.mark.parametrize(
    "token", ["d0uKpSQxv0kUOiTy2NC2RuYxq4AX3MIdtOgu5v2nNoA", "abcdefgh", "a+b/c=d_e-f" * 3]
)
def test_tokens_shaped_as_xs_are_answered(token: str) -> None:
    assert push.crc_response(SECRET, token) == {"response_token": push._sign(SECRET, token.encode())}


@pytest.mark.parametrize("token", ["", "short", "a" * 129, "has space", '{"data": {}}', "ünïcode-token"])
def test_other_tokens_are_not_signed(token: str) -> None:
    assert push.crc_response(SECRET, token) is None


def test_a_recurring_line_is_logged_once_per_period_with_what_was_folded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    sparse = Sparse(logging.getLogger("test.sparse"), every=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "test.sparse"):
        logged = [sparse.warning("refused", "signature") for _ in range(100)]
        assert sparse.warning("refused", "crc")  # another reason has its own period
        now[0] = 61.0
        assert sparse.warning("refused", "signature")
    assert logged.count(True) == 1
    records = [r for r in caplog.records if r.name == "test.sparse"]
    assert [(r.__dict__["reason"], r.__dict__["similar_since_last"]) for r in records] == [
        ("signature", 0),
        ("crc", 0),
        ("signature", 99),
    ]


def _delivery(events: object, **data: object) -> bytes:
    payload = {"direct_message_events": events}
    envelope = {"filter": {"user_id": "1000"}, "event_type": "dm.received", "payload": payload, **data}
    return json.dumps({"data": envelope}).encode()


def _dm(event_id: object = "2080765901528535096", **create: object) -> dict[str, object]:
    message_create: dict[str, object] = {
        "target": {"recipient_id": "1000"},
        "sender_id": "2001",
        "message_data": {"text": "hi"},
        **create,
    }
    return {"type": "message_create", "id": event_id, "message_create": message_create}


def test_a_delivery_announces_its_dms_and_skips_other_event_types() -> None:
    typing = {"type": "indicate_typing", "sender_id": "2001"}
    delivery = push.parse_delivery(_delivery([_dm("5"), typing, _dm("7")]))
    assert (delivery.user_id, delivery.event_type, delivery.event_ids) == ("1000", "dm.received", ("5", "7"))
    # Who wrote each and to whom: the 1-to-1 read first to place it (never taken as its conversation).
    assert delivery.dms[0] == DmEvent("5", sender_id="2001", recipient_id="1000")
    assert delivery.dms[0].peer("1000") == "2001"
    sent = push.parse_delivery(_delivery([_dm("9", sender_id="1000", target={"recipient_id": "2001"})]))
    assert sent.dms[0].peer("1000") == "2001"  # sent from X itself: the recipient's 1-to-1
    unnamed = push.parse_delivery(_delivery([_dm("9", target={})]))
    assert unnamed.dms == (DmEvent("9", sender_id="2001", recipient_id=None),)
    assert (
        DmEvent("9", sender_id="1000", recipient_id=None).peer("1000") is None
    )  # no 1-to-1 named: looked up by its id
    receipt = push.parse_delivery(_delivery("anything", event_type="dm.read"))
    assert receipt.event_ids == () and receipt.chats == ()


def test_an_x_chat_push_carries_its_ciphertext_with_or_without_a_subscriber() -> None:
    payload = {"conversation_id": "1000-2001", "sender_id": "2001", "encoded_event": "AAEC+/8="}
    named = {"filter": {"user_id": "1000"}, "event_type": "chat.received", "payload": payload}
    delivery = push.parse_delivery(json.dumps({"data": named}).encode())
    assert delivery.user_id == "1000" and delivery.event_ids == ()
    [chat] = delivery.chats
    assert (chat.conversation_id, chat.sender_id, chat.encoded_event) == ("1000-2001", "2001", "AAEC+/8=")
    # X's own samples show no filter: the conversation says whose it is.
    bare = push.parse_delivery(
        json.dumps({"data": {"event_type": "chat.received", "payload": payload}}).encode()
    )
    assert bare.user_id is None and bare.chats == delivery.chats


@pytest.mark.parametrize(
    "payload",
    [
        "ciphertext",
        {"conversation_id": "1000_2001", "sender_id": "2001", "encoded_event": "AAEC"},
        {"conversation_id": "g42", "sender_id": 2001, "encoded_event": "AAEC"},
        {"conversation_id": "g42", "sender_id": "2001", "encoded_event": "not base64!"},
        {"conversation_id": "g42", "sender_id": "2001"},
        {
            "conversation_id": "g42",
            "sender_id": "2001",
            "encoded_event": "AAEC",
            "conversation_key_change_event": 5,
        },
    ],
)
def test_a_malformed_x_chat_push_is_refused(payload: object) -> None:
    body = {"data": {"filter": {"user_id": "1000"}, "event_type": "chat.received", "payload": payload}}
    with pytest.raises(push.MalformedDelivery) as refused:
        push.parse_delivery(json.dumps(body).encode())
    assert refused.value.reason == "chat_event"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff{", "not_json"),
        (b"[" * 100_000, "not_json"),
        (b'{"data": []}', "envelope"),
        (b'{"data": {"filter": {"user_id": 1000}, "event_type": "dm.received"}}', "envelope"),
        (_delivery({"not": "a list"}), "events"),
        (_delivery(["a string"]), "event"),
        (_delivery([{"type": "message_create", "id": "5"}]), "event"),
        (_delivery([_dm(sender_id=2001)]), "event"),
        (_delivery([_dm(target=[])]), "event"),
        (_delivery([_dm(message_data={"text": 5})]), "event"),
        (_delivery([_dm(str(2**63))]), "event_id"),
        (_delivery([_dm(5)]), "event_id"),
    ],
)
def test_a_malformed_delivery_is_refused_for_one_reason(body: bytes, reason: str) -> None:
    with pytest.raises(push.MalformedDelivery) as refused:
        push.parse_delivery(body)
    assert refused.value.reason == reason and reason in push.MALFORMED_REASONS


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


@given(_JSON, st.sampled_from(["dm.received", "dm.sent", "chat.received"]))
def test_any_signed_body_is_read_or_refused_never_an_error(events: object, event_type: str) -> None:
    """Whatever X (or a bug at X) signs: a delivery of X ids, or ``MalformedDelivery``."""
    for body in (_delivery(events, event_type=event_type), json.dumps(events).encode()):
        try:
            delivery = push.parse_delivery(body)
        except push.MalformedDelivery as exc:
            assert exc.reason in push.MALFORMED_REASONS
        else:
            assert all(push.snowflake(i) for i in delivery.event_ids)


@given(st.lists(st.integers(min_value=0, max_value=2**64), max_size=5))
def test_ids_are_taken_only_within_64_bits(ids: list[int]) -> None:
    body = _delivery([_dm(str(i)) for i in ids])
    if all(i <= push.MAX_ID for i in ids):
        assert push.parse_delivery(body).event_ids == tuple(str(i) for i in ids)
    else:
        with pytest.raises(push.MalformedDelivery):
            push.parse_delivery(body)
