"""X Chat in the X simulator: the server's part, and the simulated people's phones.

X relays only ciphertext. Its one job a simulator must copy is to wrap what clients post into the
Thrift ``MessageEvent`` envelope that ``chat_xdk`` reads back (binary protocol; field ids from
X's ``chat-xdk`` thrift/event.thrift): 1 sequence id, 2 message id, 3 sender, 4 conversation
(``min:max`` or ``g…``), 6 time in ms, 7 the detail union, 9 the signature. A message's detail is
``{1: MessageCreateEvent}`` as posted; an action (a key change, a group made, a delete) brings its
detail whole. Key changes (union field 3) are listed apart, in ``meta.conversation_key_events``.

The simulated people hold real keys (``chat_xdk``), so what the bridge encrypts is decrypted and
its signatures checked as a real phone would, and what they say is encrypted for real. What X
checks on its servers and cannot be seen offline (stale key versions, message requests, group
limits) is not modelled; a sender outside a conversation is refused, and a message id posted
twice is kept once, as a retry of the same signed message must be.
"""

from __future__ import annotations

import base64
import itertools
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import chat_xdk
from chat_xdk import Chat

T_STOP, T_STRING, T_STRUCT = 0, 11, 12
KEY_CHANGE = 3  # MessageEventDetail's union field for a conversation key change


def _field_header(kind: int, field_id: int) -> bytes:
    return bytes([kind]) + struct.pack(">h", field_id)


def _string(field_id: int, value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return _field_header(T_STRING, field_id) + struct.pack(">i", len(raw)) + raw


def _struct(field_id: int, body: bytes) -> bytes:
    """``body`` is a whole struct, its STOP byte included."""
    return _field_header(T_STRUCT, field_id) + body


def first_field_id(struct_bytes: bytes) -> int:
    """The id of a union's one field (its first field header)."""
    return int(struct.unpack(">h", struct_bytes[1:3])[0]) if struct_bytes and struct_bytes[0] else 0


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def signature_struct(signature: dict[str, Any]) -> bytes:
    """A ``MessageEventSignature`` from an action signature's JSON."""
    raw = (
        _string(1, signature["signature"])
        + _string(2, signature["public_key_version"])
        + _string(3, signature["signature_version"])
    )
    if signature.get("signing_public_key"):
        raw += _string(4, signature["signing_public_key"])
    return raw + bytes([T_STOP])


def envelope(
    sequence: str,
    message_id: str,
    sender: str,
    conversation: str,
    ms: int,
    detail: bytes,
    signature: bytes | None,
) -> str:
    """The ``MessageEvent`` X wraps a posted message or action in, base64."""
    raw = (
        _string(1, sequence)
        + _string(2, message_id)
        + _string(3, sender)
        + _string(4, conversation)
        + _string(6, str(ms))
        + _struct(7, detail)
    )
    if signature is not None:
        raw += _struct(9, signature)
    return b64(raw + bytes([T_STOP]))


def message_detail(encoded_create_event: str) -> bytes:
    """A posted message's detail union: ``{1: MessageCreateEvent}``."""
    return _struct(1, unb64(encoded_create_event)) + bytes([T_STOP])


def canonical(path_id: str, caller: str) -> str:
    """A conversation id as events carry it: ``min:max`` for 1-to-1 (from a peer id, ``A-B`` or
    ``A:B``), ``g…`` for groups."""
    if path_id.startswith("g"):
        return path_id
    ids = path_id.replace(":", "-").split("-")
    if len(ids) == 1:
        ids = [caller, ids[0]]
    low, high = sorted(ids, key=int)
    return f"{low}:{high}"


def path_form(conversation_id: str) -> str:
    """The id as X's REST fields and URL paths carry it (``A-B``)."""
    return conversation_id.replace(":", "-")


@dataclass
class Conversation:
    id: str  # canonical
    members: set[str]
    events: list[dict[str, Any]] = field(default_factory=list)  # oldest first
    key_events: list[str] = field(default_factory=list)
    sent: dict[str, str] = field(default_factory=dict)  # message id -> its envelope
    group_name: str | None = None
    admins: list[str] = field(default_factory=list)
    created_ms: int = 0
    updated_ms: int = 0


class NotMember(Exception):
    """The caller is not in the conversation."""


class ChatServer:
    """X's side of X Chat: conversations of envelopes, media blobs, and the people's phones."""

    def __init__(self, clock: Any, public_keys: dict[str, list[dict[str, Any]]], register: Any) -> None:
        self._clock = clock
        self._public_keys = public_keys
        self._register = register  # FakeX.register_keys
        self.conversations: dict[str, Conversation] = {}
        self.media: dict[tuple[str, str], bytes] = {}
        self.uploads: dict[str, dict[str, Any]] = {}
        self.phones: dict[str, Chat] = {}
        self._sequence = itertools.count(1_900_000_000_000_000_001)
        self._keys_of: dict[tuple[str, str], tuple[str, bytes]] = {}  # (person, conv) -> (version, key)
        # Told of each message posted (conversation, sender, sequence id, envelope): X's push.
        self.on_message: Any = None

    # -- the server ----------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def conversation(
        self, path_id: str, caller: str, *, create_with: list[str] | None = None
    ) -> Conversation:
        cid = canonical(path_id, caller)
        found = self.conversations.get(cid)
        if found is None and create_with is not None:
            now = self._now_ms()
            found = self.conversations[cid] = Conversation(
                cid, set(create_with), created_ms=now, updated_ms=now
            )
        if found is None or caller not in found.members:
            raise NotMember(f"{caller} is not in conversation {path_form(cid)}")
        return found

    def _envelope(
        self, conv: Conversation, sender: str, message_id: str, detail: bytes, signature: bytes | None
    ) -> tuple[str, str]:
        sequence = str(next(self._sequence))
        return sequence, envelope(sequence, message_id, sender, conv.id, self._now_ms(), detail, signature)

    def _keep(self, conv: Conversation, sender: str, sequence: str, encoded: str, *, key_event: bool) -> None:
        conv.updated_ms = self._now_ms()
        if key_event:
            conv.key_events.append(encoded)
            return
        conv.events.append(
            {
                "id": sequence,
                "sender_id": sender,
                "conversation_id": path_form(conv.id),
                "created_at": _iso(conv.updated_ms),
                "encoded_event": encoded,
            }
        )

    def take_actions(self, conv: Conversation, caller: str, actions: list[dict[str, Any]]) -> list[str]:
        """Key changes, group creation, deletes: each signed detail wrapped as it came."""
        sequences = []
        for action in actions:
            detail = unb64(action["encoded_message_event_detail"])
            sequence, encoded = self._envelope(
                conv,
                caller,
                action["message_id"],
                detail,
                signature_struct(action["message_event_signature"]),
            )
            self._keep(conv, caller, sequence, encoded, key_event=first_field_id(detail) == KEY_CHANGE)
            sequences.append(sequence)
        return sequences

    def post_message(self, conv: Conversation, caller: str, body: dict[str, Any]) -> str:
        """A message; the same message id twice is one message (a retry of the same signed bytes)."""
        message_id = body["message_id"]
        if message_id in conv.sent:
            return conv.sent[message_id]
        raw_signature = body.get("encoded_message_event_signature")
        signature = unb64(raw_signature) if raw_signature else None
        detail = message_detail(body["encoded_message_create_event"])
        sequence, encoded = self._envelope(conv, caller, message_id, detail, signature)
        conv.sent[message_id] = encoded
        self._keep(conv, caller, sequence, encoded, key_event=False)
        if self.on_message is not None:
            self.on_message(conv, caller, encoded)
        return encoded

    def media_initialize(self, caller: str, body: dict[str, Any]) -> dict[str, str]:
        """An upload of an encrypted file into a conversation the caller is in."""
        conv = self.conversation(body["conversation_id"], caller)
        session_id, key = str(next(self._sequence)), f"mhk{next(self._sequence)}"
        self.uploads[session_id] = {"conv": conv.id, "key": key, "parts": {}, "total": body["total_bytes"]}
        return {"conversation_id": path_form(conv.id), "media_hash_key": key, "session_id": session_id}

    def media_append(self, session_id: str, body: dict[str, Any]) -> None:
        self.uploads[session_id]["parts"][int(body["segment_index"])] = unb64(body["media"])

    def media_finalize(self, session_id: str, body: dict[str, Any]) -> bool:
        """Keep the file, if every segment came and they add up to the size announced."""
        upload = self.uploads.get(session_id)
        parts = upload["parts"] if upload else {}
        if upload is None or sorted(parts) != list(range(int(body["num_parts"]))):
            return False
        blob = b"".join(parts[i] for i in sorted(parts))
        if len(blob) != int(upload["total"]):
            return False
        del self.uploads[session_id]
        self.media[(upload["conv"], upload["key"])] = blob
        return True

    def new_group_id(self) -> str:
        return f"g{next(self._sequence)}"

    def create_group(self, caller: str, body: dict[str, Any]) -> tuple[str, str]:
        cid = body["conversation_id"]
        now = self._now_ms()
        conv = self.conversations.setdefault(cid, Conversation(cid, set(), created_ms=now, updated_ms=now))
        conv.members.update(str(m) for m in body["group_members"])
        conv.admins = [str(a) for a in body.get("group_admins") or [caller]]
        conv.group_name = body.get("group_name")
        if caller not in conv.members:
            raise NotMember(f"{caller} made a group without themselves")
        sequences = self.take_actions(conv, caller, body.get("action_signatures") or [])
        return path_form(cid), sequences[0] if sequences else ""

    def events_page(
        self, conv: Conversation, max_results: int, before: int | None, token_for: Callable[[int], str]
    ) -> dict[str, Any]:
        """Newest first, older than ``before`` (the sequence id a pagination token pages back
        from); ``next_token`` (``token_for`` the page's oldest) while older events remain. As at
        X, a token stays true when new events arrive: it names where to go on, not a position."""
        newest_first = sorted(conv.events, key=lambda e: int(e["id"]), reverse=True)
        if before is not None:
            newest_first = [e for e in newest_first if int(e["id"]) < before]
        page, rest = newest_first[:max_results], newest_first[max_results:]
        meta: dict[str, Any] = {"result_count": len(page), "conversation_key_events": list(conv.key_events)}
        if page and rest:
            meta["next_token"] = token_for(int(page[-1]["id"]))
            meta["has_more"] = True
        return {"data": page, "meta": meta}

    def listing(self, caller: str) -> list[dict[str, Any]]:
        listed = []
        for conv in self.conversations.values():
            if caller not in conv.members:
                continue
            entry: dict[str, Any] = {
                "id": path_form(conv.id),
                "type": "Group" if conv.id.startswith("g") else "OneToOne",
                "created_at": _iso(conv.created_ms),
                "updated_at": _iso(conv.updated_ms),
            }
            ids = sorted(conv.members, key=int)
            if conv.id.startswith("g"):
                entry.update(member_ids=ids, admin_ids=conv.admins, group_name=conv.group_name or "")
            else:
                entry["participant_ids"] = ids
            listed.append(entry)
        return listed

    # -- the simulated people's phones ----------------------------------------------------------

    def enroll(self, user_id: str) -> Chat:
        """Give a simulated person X Chat keys, registered with X."""
        phone = Chat()
        made = phone.generate_keypairs()
        public = made.public_key
        version = self._register(
            user_id,
            {
                "public_key": {
                    "public_key": public.public_key,
                    "signing_public_key": public.signing_public_key,
                    "identity_public_key_signature": public.identity_public_key_signature,
                }
            },
        )
        phone.set_identity(user_id, version)
        self.phones[user_id] = phone
        return phone

    def _phone(self, user_id: str) -> Chat:
        phone = self.phones[user_id]
        phone.set_signing_keys(self.signing_entries())
        return phone

    def signing_entries(self) -> list[dict[str, Any]]:
        return [
            {
                "user_id": user_id,
                "public_key_version": record["public_key_version"],
                "public_key": record["signing_public_key"],
                "identity_public_key": record["public_key"],
                "identity_public_key_signature": record["identity_public_key_signature"],
            }
            for user_id, records in self._public_keys.items()
            for record in records
        ]

    def key_entries(self, user_ids: list[str]) -> list[dict[str, Any]]:
        return [
            {"user_id": u, "public_key": r["public_key"], "key_version": r["public_key_version"]}
            for u in user_ids
            for r in self._public_keys.get(u, [])[-1:]
        ]

    def person_opens(self, user_id: str, peer_id: str) -> str:
        """A simulated person starts an encrypted 1-to-1 with ``peer_id`` from their phone."""
        phone = self._phone(user_id)
        prepared = phone.prepare_conversation_key_change(self.key_entries([user_id, peer_id]))
        conv = self.conversation(peer_id, user_id, create_with=[user_id, peer_id])
        actions = [signed_action(phone, s) for s in prepared["action_signatures"]]
        self.take_actions(conv, user_id, actions)
        return path_form(conv.id)

    def person_creates_group(self, user_id: str, member_ids: list[str], title: str) -> str:
        """A simulated person makes an encrypted group from their phone (they are its admin)."""
        phone = self._phone(user_id)
        members = list(dict.fromkeys([user_id, *member_ids]))
        group_id = self.new_group_id()
        prepared = phone.prepare_group_create(
            self.key_entries(members), group_id, members, [user_id], title=title
        )
        actions = [signed_action(phone, s) for s in prepared["action_signatures"]]
        body = {"conversation_id": group_id, "group_members": members, "group_admins": [user_id],
                "group_name": title, "action_signatures": actions}  # fmt: skip
        cid, _ = self.create_group(user_id, body)
        return cid

    def person_says(self, user_id: str, path_id: str, text: str) -> str:
        """A simulated person sends ``text`` from their phone; returns its message id."""
        conv = self.conversation(path_id, user_id)
        version, key = self._conversation_key(user_id, conv)
        prepared = self._phone(user_id).encrypt_message(
            conv.id, text, conversation_key=key, conversation_key_version=version
        )
        self.post_message(
            conv,
            user_id,
            {
                "message_id": prepared.message_id,
                "encoded_message_create_event": prepared.encrypted_content,
                "encoded_message_event_signature": prepared.encoded_event_signature,
            },
        )
        return str(prepared.message_id)

    def person_sends_media(
        self, user_id: str, path_id: str, data: bytes, filename: str, text: str = ""
    ) -> str:
        """A simulated person sends a file from their phone: encrypted with the conversation key
        (chat_xdk's stream encryption), uploaded, and attached to a message. Its media hash key."""
        conv = self.conversation(path_id, user_id)
        version, key = self._conversation_key(user_id, conv)
        phone = self._phone(user_id)
        media_hash_key = f"m{next(self._sequence)}"
        self.media[(conv.id, media_hash_key)] = bytes(phone.encrypt_stream(data, key))
        attachment: dict[str, Any] = {
            "attachment_type": "media",
            "media_hash_key": media_hash_key,
            "filesize_bytes": len(data),
            "filename": filename,
        }
        try:
            width, height = chat_xdk.detect_image_dimensions(data)
            attachment.update(width=width, height=height, media_type=1)
        except Exception:  # not an image: a generic file (X's examples use 5)
            attachment.update(width=0, height=0, media_type=5)
        prepared = phone.encrypt_message(
            conv.id, text, conversation_key=key, conversation_key_version=version, attachments=[attachment]
        )
        body = {
            "message_id": prepared.message_id,
            "encoded_message_create_event": prepared.encrypted_content,
            "encoded_message_event_signature": prepared.encoded_event_signature,
        }
        self.post_message(conv, user_id, body)
        return media_hash_key

    def person_edits(self, user_id: str, path_id: str, sequence_id: str, text: str) -> None:
        """A simulated person edits their message at ``sequence_id`` (X Chat's signed edit event)."""
        conv = self.conversation(path_id, user_id)
        version, key = self._conversation_key(user_id, conv)
        prepared = self._phone(user_id).encrypt_edit(
            conversation_id=conv.id, target_message_sequence_id=sequence_id, updated_text=text,
            conversation_key=key, conversation_key_version=version,
        )  # fmt: skip
        body = {
            "message_id": prepared.message_id,
            "encoded_message_create_event": prepared.encrypted_content,
            "encoded_message_event_signature": prepared.encoded_event_signature,
        }
        self.post_message(conv, user_id, body)

    def person_deletes(self, user_id: str, path_id: str, sequence_id: str) -> None:
        """A simulated person deletes their message at ``sequence_id`` for everyone (signed)."""
        conv = self.conversation(path_id, user_id)
        phone = self._phone(user_id)
        signature = phone.prepare_message_delete(conv.id, [sequence_id], True)
        self.take_actions(conv, user_id, [signed_action(phone, signature)])

    def person_forges(self, user_id: str, path_id: str, text: str, *, as_user: str) -> None:
        """A simulated person's phone posts a message claiming ``as_user`` wrote it (signed with
        its own key, so a reader that checks signatures refuses it)."""
        conv = self.conversation(path_id, user_id)
        version, key = self._conversation_key(user_id, conv)
        claimed = self._public_keys[as_user][-1]["public_key_version"]
        prepared = self._phone(user_id).encrypt_message(
            conv.id, text, sender_id=as_user, signing_key_version=claimed,
            conversation_key=key, conversation_key_version=version,
        )  # fmt: skip
        body = {
            "message_id": prepared.message_id,
            "encoded_message_create_event": prepared.encrypted_content,
            "encoded_message_event_signature": prepared.encoded_event_signature,
        }
        self.post_message(conv, as_user, body)

    def received(self, user_id: str, path_id: str) -> list[dict[str, Any]]:
        """What a simulated person's phone shows of a conversation: decrypted, verified events
        (oldest first), and ``errors`` for what it refused."""
        conv = self.conversation(path_id, user_id)
        batch = conv.key_events + [e["encoded_event"] for e in conv.events]
        result = self._phone(user_id).decrypt_events(batch, self.signing_entries())
        return [m["event"] for m in result["messages"] if m["event"]["type"] != "KeyChange"] + [
            {"type": "Error", "error": error} for error in result["errors"].values()
        ]

    def received_media(self, user_id: str, path_id: str, media_hash_key: str) -> bytes:
        """A file a simulated person's phone downloads and decrypts (truncation is refused)."""
        conv = self.conversation(path_id, user_id)
        _, key = self._conversation_key(user_id, conv)
        return bytes(self._phone(user_id).decrypt_stream(self.media[(conv.id, media_hash_key)], key))

    def _conversation_key(self, user_id: str, conv: Conversation) -> tuple[str, bytes]:
        result = self._phone(user_id).decrypt_events(list(conv.key_events), self.signing_entries())
        keys = result["conversation_keys"]
        version = keys["latest_version"]
        return version, keys["keys"][version]


def _iso(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def signed_action(phone: Chat, signature: dict[str, Any]) -> dict[str, Any]:
    """One of a phone's action signatures as X's API takes it (``action_signatures[]``)."""
    return {
        "message_id": signature["message_id"],
        "encoded_message_event_detail": signature["encoded_message_event_detail"],
        "message_event_signature": {
            "signature": signature["signature"],
            "signature_version": signature["signature_version"],
            "public_key_version": signature["public_key_version"],
            "signing_public_key": phone.get_public_keys().signing,
        },
    }
