"""X's push (XAA webhooks): CRC answers, delivery signatures, and the DMs a delivery announces.

Both the CRC and the signature are HMAC-SHA256 keyed with the X app's OAuth 1.0a
consumer secret (API Key Secret), base64 with a ``sha256=`` prefix
(https://docs.x.com/x-api/webhooks/introduction). Deliveries carry the legacy
``direct_message_events`` shape, not v2 ``DmEvent``, and no conversation id
(https://docs.x.com/x-api/activity/event-payloads): they announce DMs, which the bridge then
reads from X.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any

from bridge.chat_inbound import ChatPush
from bridge.model import DM_PUSH_TYPES, DmEvent, PushEventType

SIGNATURE_HEADER = "x-twitter-webhooks-signature"


def _sign(secret: str, message: bytes) -> str:
    digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return "sha256=" + base64.b64encode(digest).decode()


# X's CRC tokens are a few dozen base64 characters. The CRC answer is the very HMAC that signs
# a delivery (same key, same scheme, fixed by X: no domain separation is possible), so whatever
# the CRC route signs, anyone could push. Only this shape is signed, and nothing of this shape
# is a delivery: a delivery is a JSON object, and "{" (or the whitespace before it) is not in
# the alphabet.
CRC_TOKEN = re.compile(r"[A-Za-z0-9+/=_-]{8,128}")


def crc_response(secret: str, crc_token: str) -> dict[str, str] | None:
    """The body X expects for ``GET …?crc_token=…``; None for a token not shaped as X's (never
    signed: see ``CRC_TOKEN``)."""
    if CRC_TOKEN.fullmatch(crc_token) is None:
        return None
    return {"response_token": _sign(secret, crc_token.encode())}


def verify(secret: str, body: bytes, signature: str | None) -> bool:
    """Does the delivery's signature header match its raw body? (constant time)

    Compared as bytes: ``compare_digest`` raises on two ``str`` when one is not ASCII, and the
    header is whatever the sender put there (aiohttp keeps bytes that are not UTF-8 as surrogates).
    """
    if not signature:
        return False
    given = signature.encode("utf-8", "surrogatepass")
    return hmac.compare_digest(_sign(secret, body).encode(), given)


@dataclass(frozen=True)
class Delivery:
    """One push: whose subscription (``user_id``), what kind, and the DMs it announces.

    Each DM is a ``DmEvent`` with only its id, sender and recipient (its text is not kept). The
    legacy payload names no conversation, and a group message pushed in it would look like a
    1-to-1 (one ``recipient_id``): nothing in it says for certain where a DM belongs, so the
    bridge reads X for that (``Inbound.rang``), the 1-to-1 its sender and recipient name first.
    An X Chat push (``chat.received``) carries its one event as ciphertext (``chats``), and may
    name no subscriber (X's samples show no ``filter``): then ``user_id`` is None."""

    user_id: str | None
    event_type: str
    dms: tuple[DmEvent, ...]
    chats: tuple[ChatPush, ...] = ()

    @property
    def event_ids(self) -> tuple[str, ...]:
        return tuple(dm.id for dm in self.dms)


MALFORMED_REASONS = ("not_json", "envelope", "events", "event", "event_id", "chat_event")
# X Chat conversation ids in REST fields and paths: a peer id, "A-B" or "g…" (X's OpenAPI pattern).
_CHAT_CONVERSATION = re.compile(r"[0-9]{1,19}|[0-9]{1,19}-[0-9]{1,19}|g[0-9]{1,19}")
_BASE64 = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")
MAX_CHAT_EVENT = 1024 * 1024  # characters of base64: a Thrift envelope, never a file


class MalformedDelivery(ValueError):
    """A signed body that is not an XAA delivery we can read; ``reason`` is one of
    ``MALFORMED_REASONS`` (a metric label: a fixed set)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


_DIGITS = re.compile(r"[0-9]{1,19}")
MAX_ID = 2**63 - 1  # X's ids are 64-bit signed snowflakes (and PostgreSQL's bigint)


def snowflake(value: Any) -> bool:
    """Is ``value`` an X id as X writes them: a string of at most 19 digits, within 64 bits?"""
    return isinstance(value, str) and _DIGITS.fullmatch(value) is not None and int(value) <= MAX_ID


def parse_delivery(body: bytes) -> Delivery:
    """Read a delivery; raises ``MalformedDelivery``. Unknown event types (XChat ciphertext,
    read receipts…) come back with no DMs; so do direct message events of other types."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise MalformedDelivery("not_json", "not JSON") from exc
    data = document.get("data") if isinstance(document, dict) else None
    if (
        isinstance(data, dict)
        and data.get("event_type") == PushEventType.CHAT_RECEIVED
        and "filter" not in data
    ):
        return Delivery(None, PushEventType.CHAT_RECEIVED, (), (_chat_push(data.get("payload")),))
    if not isinstance(data, dict) or not isinstance(data.get("filter"), dict):
        raise MalformedDelivery("envelope", "no data.filter object")
    user_id = data["filter"].get("user_id")
    event_type = data.get("event_type")
    if not snowflake(user_id) or not isinstance(event_type, str):
        raise MalformedDelivery("envelope", "no filter.user_id or event_type")
    if event_type == PushEventType.CHAT_RECEIVED:
        return Delivery(user_id, event_type, (), (_chat_push(data.get("payload")),))
    if event_type not in DM_PUSH_TYPES:
        return Delivery(user_id, event_type, ())
    payload = data.get("payload")
    events = payload.get("direct_message_events") if isinstance(payload, dict) else None
    if not isinstance(events, list):
        raise MalformedDelivery("events", "no list of direct_message_events")
    return Delivery(user_id, event_type, tuple(dm for raw in events if (dm := _message(raw)) is not None))


def _message(raw: Any) -> DmEvent | None:
    """A ``message_create`` event (None for other types); raises on a malformed one."""
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        raise MalformedDelivery("event", "an event is not an object with a type")
    if raw["type"] != "message_create":
        return None
    create = raw.get("message_create")
    if not isinstance(create, dict):
        raise MalformedDelivery("event", "a message_create event has no message_create object")
    # Only the ids are used, but a DM of the wrong shape is not one of X's: refused, not guessed
    # at. (A group's push might name no recipient: the target may be missing.)
    target, message = create.get("target", {}), create.get("message_data", {})
    if (
        not snowflake(create.get("sender_id"))
        or not isinstance(target, dict)
        or ("recipient_id" in target and not snowflake(target["recipient_id"]))
        or not isinstance(message, dict)
        or not isinstance(message.get("text", ""), str)
    ):
        raise MalformedDelivery("event", "a message_create event is not shaped as X's")
    if not snowflake(raw.get("id")):
        raise MalformedDelivery("event_id", "a message_create event has no X id")
    return DmEvent(raw["id"], sender_id=create["sender_id"], recipient_id=target.get("recipient_id"))


def _chat_push(payload: Any) -> ChatPush:
    """An X Chat push's one event, its fields shaped as X's; raises ``MalformedDelivery``. Only
    the shape is checked here: whether the event verifies is for the account's keys to say."""
    if not isinstance(payload, dict):
        raise MalformedDelivery("chat_event", "a chat.received push has no payload object")
    conversation = payload.get("conversation_id")
    sender, event = payload.get("sender_id"), payload.get("encoded_event")
    key_change = payload.get("conversation_key_change_event")
    if not isinstance(conversation, str) or _CHAT_CONVERSATION.fullmatch(conversation) is None:
        raise MalformedDelivery("chat_event", "a chat.received push names no X Chat conversation")
    if not snowflake(sender):
        raise MalformedDelivery("chat_event", "a chat.received push has no sender_id")
    if not _base64(event) or (key_change is not None and not _base64(key_change)):
        raise MalformedDelivery("chat_event", "a chat.received push's event is not base64")
    return ChatPush(conversation, str(sender), str(event), str(key_change) if key_change else None)


def _base64(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= MAX_CHAT_EVENT and _BASE64.fullmatch(value) is not None
