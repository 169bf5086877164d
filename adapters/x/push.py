"""X's push (XAA webhooks): CRC answers, delivery signatures, payloads into core events.

Both the CRC and the signature are HMAC-SHA256 keyed with the X app's OAuth 1.0a
consumer secret (API Key Secret), base64 with a ``sha256=`` prefix (INBOUND.md §2).
Deliveries carry the legacy ``direct_message_events`` shape, not v2 ``DmEvent``, and
no conversation id: a 1-to-1's is built from the two user ids (INBOUND.md §3).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any

from bridge.model import XEvent, XUser, one_to_one_id

SIGNATURE_HEADER = "x-twitter-webhooks-signature"
DM_EVENT_TYPES = ("dm.received", "dm.sent")


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
    """Does the delivery's signature header match its raw body? (constant time)"""
    return bool(signature) and hmac.compare_digest(_sign(secret, body), str(signature))


@dataclass(frozen=True)
class Delivery:
    """One push: whose subscription (``user_id``), what kind, and the events it carries."""

    user_id: str
    event_type: str
    events: tuple[XEvent, ...]
    users: dict[str, XUser]


class MalformedDelivery(ValueError):
    """A signed body that is not an XAA delivery we can read."""


def parse_delivery(body: bytes) -> Delivery:
    """Turn a delivery into core events. Raises ``MalformedDelivery``; unknown event types
    (XChat ciphertext, read receipts…) come back with no events."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedDelivery("not JSON") from exc
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, dict):
        raise MalformedDelivery("no data object")
    filter_ = _dict(data.get("filter"))
    user_id = str(filter_.get("user_id") or "")
    event_type = str(data.get("event_type") or "")
    if not user_id.isdigit():
        raise MalformedDelivery("no filter.user_id")
    if event_type not in DM_EVENT_TYPES:
        return Delivery(user_id, event_type, (), {})
    payload = _dict(data.get("payload"))
    users = _users(payload.get("users"))
    events = tuple(e for raw in payload.get("direct_message_events") or [] if (e := _event(raw)) is not None)
    return Delivery(user_id, event_type, events, users)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _users(raw: Any) -> dict[str, XUser]:
    users: dict[str, XUser] = {}
    if isinstance(raw, dict):
        for key, value in raw.items():
            inner = value.get("data") if isinstance(value, dict) else None
            if isinstance(inner, dict):
                users[str(key)] = XUser(
                    id=str(inner.get("id") or key),
                    username=str(inner.get("username") or ""),
                    name=str(inner.get("name") or ""),
                    profile_image_url=str(inner.get("profile_image_url") or ""),
                )
    return users


def _event(raw: Any) -> XEvent | None:
    if not isinstance(raw, dict) or raw.get("type") != "message_create":
        return None
    event_id = str(raw.get("id") or "")
    create = raw.get("message_create")
    if not event_id.isdigit() or not isinstance(create, dict):
        return None
    sender = str(create.get("sender_id") or "")
    target = _dict(create.get("target"))
    recipient = str(target.get("recipient_id") or "")
    if not (sender.isdigit() and recipient.isdigit()):
        return None
    message = _dict(create.get("message_data"))
    if message.get("attachment"):
        return None  # media: left to polling, whose answer names the file to download
    stamp = str(raw.get("created_timestamp") or "")
    return XEvent(
        id=event_id,
        kind="MessageCreate",
        # Push names one recipient: a 1-to-1 (groups come by polling, INBOUND.md §3).
        conversation_id=one_to_one_id(sender, recipient),
        sender_id=sender,
        text=str(message.get("text") or ""),
        created_at=int(stamp) / 1000 if stamp.isdigit() else None,
    )
