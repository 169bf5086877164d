"""X Chat at the edge: X's own ``chat_xdk`` for the keys, and X's public-key routes.

Every encrypt, decrypt and key operation happens in this process through ``chat_xdk`` (X's
library; it makes no network calls of its own without a Juicebox configuration, which the bridge
never gives it). Public keys come in two encodings: registration bodies and X's records carry the
DER (SPKI) form, while the library's own ``get_public_keys`` gives raw points, so keys are
compared with the library's ``matches_registered_key``, never as strings.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import struct
import time
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import chat_xdk
from cachetools import LRUCache
from chat_xdk import Chat

from adapters.x.api import XApiClient
from bridge.chat_inbound import ChatPush, ChatPushRefused
from bridge.errors import RateFacts, XRefused
from bridge.media import MediaSource
from bridge.model import Account, XUser, one_to_one_id
from bridge.xchat import (
    ChatEvent,
    ChatEventKind,
    ChatPage,
    ChatPosted,
    ChatSend,
    IdentityState,
    KeyMismatch,
    NewIdentity,
    NoChatIdentity,
    RegisteredKey,
    XChatError,
    XChatIdentities,
    XChatIdentity,
)

log = logging.getLogger("adapters.x.xchat")

# How long a conversation key read from X, or X's word that the account's key is still the one
# registered, is used before asking again (each is a read; a message must not cost one).
KEY_CACHE_SECONDS = 300.0
READ_PIECE = 1 << 20  # a file is read from Slack, and encrypted, a MiB at a time
SEGMENT = 3 * 1024 * 1024  # ciphertext per append (X's own examples use 3 MB segments)

# chat_xdk's import needs a version; the key material alone decides what is compared here.
_ANY_VERSION = "0"


class ChatKeys:
    """``bridge.xchat.XChatKeys`` with chat_xdk."""

    def new_identity(self) -> NewIdentity:
        chat = Chat()
        made = chat.generate_keypairs()
        public = made.public_key
        registration = {
            "public_key": {
                "public_key": public.public_key,
                "signing_public_key": public.signing_public_key,
                "identity_public_key_signature": public.identity_public_key_signature,
                "signing_public_key_signature": public.signing_public_key_signature,
                "public_key_fingerprint": public.public_key_fingerprint,
                "registration_method": public.registration_method,
            },
            "version": str(made.version),
            "generate_version": bool(made.generate_version),
        }
        return NewIdentity(
            private_keys=bytes(chat.export_keys()),
            registration=registration,
            public_key=public.public_key,
            fingerprint=public.public_key_fingerprint,
        )

    def fingerprint(self, private_keys: bytes) -> str:
        fingerprint: str = _loaded(private_keys).get_public_key_fingerprint()
        return fingerprint

    def matches(self, private_keys: bytes, registered_public_key: str) -> bool:
        try:
            return bool(_loaded(private_keys).matches_registered_key(registered_public_key))
        except ValueError:
            return False  # X's record is not a key the library reads: not ours


def _loaded(private_keys: bytes) -> Any:
    chat = Chat()
    try:
        chat.import_keys(bytes(private_keys), _ANY_VERSION)
    except ValueError as exc:
        raise XChatError(
            f"these are not X Chat keys ({len(private_keys)} bytes; an export holds 64: the identity "
            "key and the signing key)"
        ) from exc
    return chat


class KeyDirectory:
    """``bridge.xchat.KeyDirectory``: ``GET``/``POST /2/users/{id}/public_keys`` on a user token."""

    def __init__(self, api: XApiClient) -> None:
        self._api = api

    async def public_keys(self, token: str, user_id: str) -> list[RegisteredKey]:
        path = f"/2/users/{quote(user_id, safe='')}/public_keys"
        status, headers, payload = await self._api._call("GET", path, token)
        if status == 404:
            return []  # X's answer for someone never registered is not documented: all mean "none"
        try:
            self._api._raise_for(status, headers, payload)
        except XRefused as exc:
            if exc.status == 404:
                return []
            raise
        return registered_keys(payload)

    async def register_public_key(self, token: str, user_id: str, registration: dict[str, Any]) -> str:
        path = f"/2/users/{quote(user_id, safe='')}/public_keys"
        status, headers, payload = await self._api._call("POST", path, token, body=registration)
        self._api._raise_for(status, headers, payload)
        data = payload.get("data") if isinstance(payload, dict) else None
        version = data.get("public_key_version") if isinstance(data, dict) else None
        if not isinstance(version, str | int) or str(version) == "":
            raise XChatError(
                f"X answered HTTP {status} to the key registration without a public_key_version; "
                "run the command again: it checks what X registered before posting anything"
            )
        return str(version)


def registered_keys(payload: Any) -> list[RegisteredKey]:
    """X's records, skipping any that is not an object with a key and a version."""
    data = payload.get("data") if isinstance(payload, dict) else None
    records = data if isinstance(data, list) else []
    keys = []
    for record in records:
        if not isinstance(record, dict):
            continue
        key, version = record.get("public_key"), record.get("public_key_version")
        if isinstance(key, str) and key and isinstance(version, str | int) and str(version):
            keys.append(
                RegisteredKey(
                    version=str(version),
                    public_key=key,
                    signing_public_key=str(record.get("signing_public_key") or ""),
                    identity_public_key_signature=str(record.get("identity_public_key_signature") or ""),
                )
            )
    return keys


class ChatConversations:
    """One account's encrypted conversations: its keys loaded into chat_xdk, the people's signing
    keys (fetched from X and checked against their identity keys), and the conversation keys read
    from each conversation's key-change events.

    Every method that talks to X takes the account's token, as the legacy client does, so the
    caller's ``TokenManager.call`` refreshes it in one place.
    """

    def __init__(self, api: XApiClient, identity: XChatIdentity) -> None:
        if identity.version is None:
            raise XChatError("these X Chat keys are not registered with X yet: run `xdm-bridge xchat setup`")
        self._api = api
        self._directory = KeyDirectory(api)
        self.user_id = identity.x_user_id
        self._chat = Chat()
        self._chat.import_keys(bytes(identity.private_keys), identity.version)
        self._chat.set_identity(identity.x_user_id, identity.version)
        self._version = identity.version
        self._records: dict[str, list[RegisteredKey]] = {}
        self._conversation_keys: dict[str, tuple[float, str, bytes]] = {}  # id -> (read at, version, key)
        self._keys_checked_at: float | None = None
        # Conversation keys read are kept, so a pushed event (no key change with it) decrypts.
        self._chat.set_cache_keys(True)
        self._users: dict[str, XUser] = {}
        self._fetched_at: dict[str, float] = {}  # when each person's keys were fetched (monotonic)
        self._read_started = 0.0
        self._retried: LRUCache[str, bool] = LRUCache(
            10_000
        )  # failed events whose signers were fetched again
        self._keys: dict[str, dict[str, bytes]] = {}  # conversation -> key version -> key

    # -- keys -----------------------------------------------------------------------------------

    async def _people(self, token: str, user_ids: list[str]) -> None:
        """Fetch and check the keys of people not seen yet; hand every signing key to chat_xdk."""
        for user_id in dict.fromkeys(user_ids):
            if user_id in self._records:
                continue
            records = await self._directory.public_keys(token, user_id)
            self._fetched_at[user_id] = time.monotonic()
            self._records[user_id] = [
                r
                for r in records
                if self._chat.verify_key_binding(
                    r.public_key, r.signing_public_key, r.identity_public_key_signature
                )
            ]
        self._chat.set_signing_keys(
            [
                {
                    "user_id": user_id,
                    "public_key_version": r.version,
                    "public_key": r.signing_public_key,
                    "identity_public_key": r.public_key,
                    "identity_public_key_signature": r.identity_public_key_signature,
                }
                for user_id, records in self._records.items()
                for r in records
            ]
        )

    def _entries(self, user_ids: list[str]) -> list[dict[str, str]]:
        entries = []
        for user_id in user_ids:
            records = self._records.get(user_id) or []
            if not records:
                raise XChatError(f"X user {user_id} has no X Chat keys: the conversation cannot be encrypted")
            latest = records[-1]
            entries.append(
                {"user_id": user_id, "public_key": latest.public_key, "key_version": latest.version}
            )
        return entries

    def _signed(self, signature: dict[str, Any]) -> dict[str, Any]:
        action = {
            "message_id": signature["message_id"],
            "encoded_message_event_detail": signature["encoded_message_event_detail"],
            "message_event_signature": {
                "signature": signature["signature"],
                "signature_version": signature["signature_version"],
                "public_key_version": signature["public_key_version"],
                "signing_public_key": self._chat.get_public_keys().signing,
            },
        }
        if signature.get("signature_payload"):
            action["signature_payload"] = signature["signature_payload"]
        return action

    def _key_change(self, prepared: dict[str, Any]) -> dict[str, Any]:
        """A ``prepare_*`` result as X's key-change fields: the key wrapped for each participant,
        and the signed actions (a key change; with a group, its creation too)."""
        return {
            "conversation_key_version": prepared["conversation_key_version"],
            "conversation_participant_keys": [
                {
                    "user_id": str(p["user_id"]),
                    "encrypted_conversation_key": p["encrypted_key"],
                    "public_key_version": str(p["public_key_version"]),
                }
                for p in prepared["participant_keys"]
            ],
            "action_signatures": [self._signed(s) for s in prepared["action_signatures"]],
        }

    # -- conversations --------------------------------------------------------------------------

    async def check_keys(self, token: str) -> None:
        """``KeyMismatch`` when X's newest registered key for the account is not this identity's."""
        now = time.monotonic()
        if self._keys_checked_at is not None and now - self._keys_checked_at < KEY_CACHE_SECONDS:
            return
        records = await self._directory.public_keys(token, self.user_id)
        newest = records[-1] if records else None
        if newest is None or not self._chat.matches_registered_key(newest.public_key):
            shown = f"version {newest.version}" if newest is not None else "none"
            raise KeyMismatch(
                f"X's registered X Chat key for this account ({shown}) is not the one the bridge holds "
                f"(version {self._version})"
            )
        self._keys_checked_at = now

    async def conversations(self, token: str) -> list[str]:
        """Every X Chat conversation X lists for the account (a few pages of 100 at most)."""
        found: list[str] = []
        params = {"max_results": "100"}
        for _ in range(10):
            status, headers, payload = await self._api._call(
                "GET", "/2/chat/conversations", token, params=params
            )
            self._api._raise_for(status, headers, payload)
            data = payload.get("data") if isinstance(payload, dict) else None
            found += [str(c["id"]) for c in data or [] if isinstance(c, dict) and c.get("id")]
            meta = payload.get("meta") if isinstance(payload, dict) else None
            next_token = meta.get("next_token") if isinstance(meta, dict) else None
            if not next_token:
                break
            params = {"max_results": "100", "pagination_token": str(next_token)}
        return found

    async def open_one_to_one(self, token: str, peer_id: str) -> str:
        """The encrypted 1-to-1 with ``peer_id``: one whose key the account can open is used as it
        is; otherwise a conversation key is made and posted. Its id (``A-B``)."""
        existing = one_to_one_id(self.user_id, peer_id)
        try:
            await self._conversation_key(token, existing)
            return existing
        except (XRefused, XChatError):
            pass  # not a conversation yet, or none of its keys is the account's: make one
        return await self._new_key(token, peer_id)

    async def _new_key(self, token: str, peer_id: str) -> str:
        """Post a new conversation key for the 1-to-1 with ``peer_id``, wrapped for both people's
        current keys (a first contact, or the account's keys were replaced); the conversation's id."""
        self._conversation_keys.pop(one_to_one_id(self.user_id, peer_id), None)
        await self._people(token, [self.user_id, peer_id])
        prepared = self._chat.prepare_conversation_key_change(self._entries([self.user_id, peer_id]))
        data = await self._post(token, f"/2/chat/conversations/{peer_id}/keys", self._key_change(prepared))
        return str(data.get("conversation_id") or one_to_one_id(self.user_id, peer_id))

    async def create_group(self, token: str, member_ids: list[str], title: str) -> str:
        """A new encrypted group of the account and ``member_ids``; its id (``g…``)."""
        members = list(dict.fromkeys([self.user_id, *member_ids]))
        await self._people(token, members)
        entries = self._entries(members)  # everyone's keys checked before X is asked for a group
        group_id = str(
            (await self._post(token, "/2/chat/conversations/group/initialize", None))["conversation_id"]
        )
        # The name X shows must be byte-identical to the signed title; a comma is not allowed in it.
        title = title.replace(",", " ")
        prepared = self._chat.prepare_group_create(entries, group_id, members, [self.user_id], title=title)
        body = {
            "conversation_id": group_id,
            "group_members": members,
            "group_admins": [self.user_id],
            "group_name": title,
            **self._key_change(prepared),
        }
        await self._post(token, "/2/chat/conversations/group", body)
        return group_id

    async def prepare_text(
        self, token: str, conversation_id: str, text: str, attachments: list[dict[str, Any]] | None = None
    ) -> ChatSend:
        """Encrypt and sign ``text`` (and the uploaded files' ``attachments``) once, with the
        conversation's newest key."""
        version, key = await self._writable_key(token, conversation_id)
        prepared = self._chat.encrypt_message(
            _canonical(conversation_id),
            text,
            conversation_key=key,
            conversation_key_version=version,
            attachments=attachments or None,
        )
        return _send(prepared)

    async def upload_media(
        self, token: str, conversation_id: str, source: MediaSource, *, filename: str, media_type: int
    ) -> dict[str, Any]:
        """Encrypt a file with the conversation's key as it is read (a MiB in memory, a segment
        of ciphertext at most) into X Chat's upload; the attachment that names it in a message."""
        _, key = await self._writable_key(token, conversation_id)
        body = {"conversation_id": _canonical(conversation_id)}
        started = await self._post(
            token,
            "/2/chat/media/upload/initialize",
            {**body, "total_bytes": chat_xdk.encrypted_stream_size(source.size)},
        )
        session, hash_key = str(started["session_id"]), str(started["media_hash_key"])
        upload = {**body, "media_hash_key": hash_key}
        encryptor = self._chat.stream_encryptor(key)
        pending, parts, head, size = bytearray(), 0, b"", 0
        while piece := await source.read(READ_PIECE):
            head, size = head or piece, size + len(piece)
            pending += encryptor.push(piece)
            while len(pending) >= SEGMENT:
                await self._append(token, session, upload, parts, bytes(pending[:SEGMENT]))
                del pending[:SEGMENT]
                parts += 1
        pending += encryptor.finish()
        if pending:
            await self._append(token, session, upload, parts, bytes(pending))
            parts += 1
        finalize = {**upload, "num_parts": str(parts)}
        await self._post(token, f"/2/chat/media/upload/{session}/finalize", finalize)
        width, height = _dimensions(head) if media_type in (1, 2) else (0, 0)
        return {
            "attachment_type": "media",
            "media_hash_key": hash_key,
            "width": width,
            "height": height,
            "filesize_bytes": size,
            "filename": filename,
            "media_type": media_type,
        }

    async def _append(
        self, token: str, session: str, upload: dict[str, str], index: int, segment: bytes
    ) -> None:
        body = {**upload, "segment_index": index, "media": base64.b64encode(segment).decode()}
        await self._post(token, f"/2/chat/media/upload/{session}/append", body)

    async def prepare_edit(
        self, token: str, conversation_id: str, target_sequence_id: str, text: str
    ) -> ChatSend:
        """X Chat's own edit of the account's message at ``target_sequence_id``, signed once."""
        version, key = await self._writable_key(token, conversation_id)
        prepared = self._chat.encrypt_edit(
            conversation_id=_canonical(conversation_id),
            target_message_sequence_id=target_sequence_id,
            updated_text=text,
            conversation_key=key,
            conversation_key_version=version,
        )
        return _send(prepared)

    def prepare_delete(self, conversation_id: str, sequence_ids: list[str]) -> dict[str, Any]:
        """A signed delete-for-all of the account's own messages (by their sequence ids)."""
        signature = self._chat.prepare_message_delete(_canonical(conversation_id), sequence_ids, True)
        return {
            "delete_message_action": "delete_for_all",
            "sequence_ids": sequence_ids,
            "action_signatures": [self._signed(signature)],
        }

    async def send(self, token: str, conversation_id: str, message: ChatSend) -> ChatPosted:
        """Post a prepared message (the same bytes on every retry). A 2xx whose body cannot be read
        is still a send (``XSentUnconfirmed``); one without a readable envelope names no sequence."""
        path = f"/2/chat/conversations/{conversation_id}/messages"
        status, headers, payload = await self._api._post_send(path, token, message.body)
        try:
            facts = self._api._raise_for(status, headers, payload)
        except XRefused:
            # A refusal may be of the key version the message was encrypted with: read it again.
            self._conversation_keys.pop(conversation_id, None)
            raise
        data = payload.get("data") if isinstance(payload, dict) else None
        encoded = data.get("encoded_message_event") if isinstance(data, dict) else None
        return ChatPosted(sequence_of(encoded) if isinstance(encoded, str) else None, facts)

    async def delete(self, token: str, conversation_id: str, body: dict[str, Any]) -> None:
        await self._post(token, f"/2/chat/conversations/{conversation_id}/messages/delete", body)

    async def read(
        self, token: str, conversation_id: str, *, max_results: int = 50, pagination_token: str | None = None
    ) -> ChatPage:
        """One page of a conversation, decrypted; an event that does not verify is refused and counted."""
        page, _ = await self.events(
            token, conversation_id, max_results=max_results, pagination_token=pagination_token
        )
        return page

    async def events(
        self, token: str, conversation_id: str, *, max_results: int, pagination_token: str | None = None
    ) -> tuple[ChatPage, RateFacts]:
        """``read``, with what X's headers said of the read budget (``bridge.chat_inbound``)."""
        params = {"max_results": str(max(1, min(100, max_results)))}
        if pagination_token:
            params["pagination_token"] = pagination_token
        path = f"/2/chat/conversations/{conversation_id}/events"
        status, headers, payload = await self._api._call("GET", path, token, params=params)
        facts = self._api._raise_for(status, headers, payload)
        data = payload.get("data") if isinstance(payload, dict) else None
        meta = payload.get("meta") if isinstance(payload, dict) else None
        items = [e for e in data or [] if isinstance(e, dict) and isinstance(e.get("encoded_event"), str)]
        key_events = [k for k in (meta or {}).get("conversation_key_events") or [] if isinstance(k, str)]
        # The key events' signers too (their envelopes name them, the JSON does not): the account
        # and, in a 1-to-1, the other person; a group's other members as they write.
        people = [self.user_id, *_one_to_one_people(conversation_id)]
        people += [str(e.get("sender_id") or "") for e in items if e.get("sender_id")]
        self._read_started = time.monotonic()
        await self._people(token, people)
        batch = key_events + [e["encoded_event"] for e in items]
        result = self._chat.decrypt_events(batch)
        stale = self._stale(result.get("errors") or {}, items, key_events, people)
        if stale:
            # Keys kept from earlier may be old ones (a new phone registers new keys): fetched
            # again before anything is refused as forged.
            for user_id in stale:
                self._records.pop(user_id, None)
            await self._people(token, stale)
            result = self._chat.decrypt_events(batch)
        mine, elsewhere = _own_messages(self._signed_id(conversation_id), result)
        self._keep_keys(conversation_id, self._keys_of(conversation_id, mine))
        events = [_event(m["event"], conversation_id) for m in mine]
        shown = tuple(e for e in events if e is not None and e.kind is not ChatEventKind.OTHER)
        # Errors are indexed over the whole batch; a key event that fails is as much a refusal.
        errors = result.get("errors") or {}
        refused_ids = tuple(
            str(items[int(i) - len(key_events)].get("id") or "")
            for i in errors
            if str(i).isdigit() and int(i) >= len(key_events)
        )
        # An event signed for another conversation (served here by X) is refused as a forgery is.
        ids_of = {e["encoded_event"]: str(e.get("id") or "") for e in items}
        refused_ids += tuple(ids_of[b] for b in elsewhere if b in ids_of)
        if elsewhere:
            log.warning(
                "X Chat events of another conversation were served in this one: refused",
                extra={"conversation": conversation_id, "count": len(elsewhere)},
            )
        newest_first = tuple(sorted(shown, key=lambda e: int(e.sequence_id), reverse=True))
        next_token = (meta or {}).get("next_token")
        return ChatPage(newest_first, len(errors) + len(elsewhere), next_token, refused_ids), facts

    async def verify_pushed(self, token: str, push: ChatPush) -> str | None:
        """A pushed event checked with chat_xdk: its sequence id; None while its conversation
        key is unknown (the library checks signatures before it decrypts, so a forgery is
        caught even then); ``ChatPushRefused`` when it does not verify, with the sender's keys
        fetched again first if they were kept from earlier (new keys on a new phone)."""
        started = time.monotonic()
        await self._people(token, [push.sender_id])
        try:
            return self._check_pushed(push)
        except ChatPushRefused:
            failed = f"push {hashlib.sha256(push.encoded_event.encode()).hexdigest()}"
            if self._fetched_at.get(push.sender_id, started) >= started or failed in self._retried:
                raise
            self._retried[failed] = True
            self._records.pop(push.sender_id, None)
            await self._people(token, [push.sender_id])
            return self._check_pushed(push)

    def _check_pushed(self, push: ChatPush) -> str | None:
        if push.key_change_event:
            result = self._chat.decrypt_events([push.key_change_event])
            if result.get("errors"):
                raise ChatPushRefused("the pushed conversation key change does not verify")
            if _own_messages(self._signed_id(push.conversation_id), result)[1]:
                raise ChatPushRefused("the pushed key change is another conversation's")
        try:
            event = self._chat.decrypt_event(push.encoded_event)
        except (ValueError, TypeError) as exc:
            if "no matching key" in str(exc):
                return None
            raise ChatPushRefused(
                f"the pushed event does not verify: {str(exc).splitlines()[0][:160]}"
            ) from exc
        if not event.get("verified", False):
            raise ChatPushRefused("the pushed event is not signed")
        if str(event.get("conversation_id") or "") != self._signed_id(push.conversation_id):
            raise ChatPushRefused("the pushed event is signed for another conversation")
        return str(event.get("sequence_id") or "") or None

    def _stale(
        self, errors: dict[str, Any], items: list[dict[str, Any]], key_events: list[str], people: list[str]
    ) -> list[str]:
        """The signers of events that failed for the first time, whose keys were fetched before
        this read (a failed key event's signer is not named: every person of the read). Once per
        failed event, so a forger makes the bridge ask X again once per forgery, not per read."""
        suspects: list[str] = []
        for index in errors:
            position = int(index) - len(key_events) if str(index).isdigit() else -1
            if 0 <= position < len(items):
                failed, signers = (
                    f"event {items[position].get('id')}",
                    [str(items[position].get("sender_id") or "")],
                )
            elif 0 <= int(index) < len(key_events):
                failed, signers = f"key {hashlib.sha256(key_events[int(index)].encode()).hexdigest()}", people
            else:
                continue
            if failed not in self._retried:
                self._retried[failed] = True
                suspects += signers
        return [
            u
            for u in dict.fromkeys(suspects)
            if u and self._fetched_at.get(u, self._read_started) < self._read_started
        ]

    def _signed_id(self, conversation_id: str) -> str:
        """The id an event of ``conversation_id`` is signed for (``_canonical``); a bare peer id
        (X's push may name a 1-to-1 so) is the account's 1-to-1 with that person."""
        if conversation_id.isdigit():
            conversation_id = f"{self.user_id}-{conversation_id}"
        try:
            return _canonical(conversation_id)
        except ValueError:
            return conversation_id  # not an id X Chat signs: nothing is this conversation's

    def _keys_of(self, conversation_id: str, mine: list[dict[str, Any]]) -> dict[str, Any]:
        """The conversation keys of ``conversation_id``'s own key changes (``mine``).

        chat_xdk gives the keys of every key change in a batch, whatever conversation each is
        signed for: X serving another conversation's key change here (one whose other people
        hold its key) would have the bridge encrypt this conversation's messages for them."""
        key_changes = [str(m["original_b64"]) for m in mine if m["event"].get("type") == "KeyChange"]
        if not key_changes:
            return {}
        found: dict[str, Any] = self._chat.decrypt_events(key_changes).get("conversation_keys") or {}
        return found

    def _keep_keys(self, conversation_id: str, keys_found: dict[str, Any]) -> None:
        keys = keys_found.get("keys") or {}
        kept = self._keys.setdefault(conversation_id, {})
        kept.update({str(version): bytes(key) for version, key in keys.items()})

    async def media(self, token: str, conversation_id: str, media_hash_key: str, key_version: str) -> bytes:
        """An attachment's bytes: downloaded, then decrypted with the conversation key it was
        sent under (read from the conversation's key events if this process has not yet).
        A truncated or tampered file is refused by the library (``XRefused``)."""
        if key_version not in self._keys.get(conversation_id, {}):
            path = f"/2/chat/conversations/{conversation_id}/events"
            status, headers, payload = await self._api._call("GET", path, token, params={"max_results": "1"})
            self._api._raise_for(status, headers, payload)
            meta = payload.get("meta") if isinstance(payload, dict) else None
            key_events = [k for k in (meta or {}).get("conversation_key_events") or [] if isinstance(k, str)]
            await self._people(token, [self.user_id, *_one_to_one_people(conversation_id)])
            mine, _ = _own_messages(self._signed_id(conversation_id), self._chat.decrypt_events(key_events))
            self._keep_keys(conversation_id, self._keys_of(conversation_id, mine))
        key = self._keys.get(conversation_id, {}).get(key_version)
        if key is None:
            raise XRefused("the attachment's conversation key is not one the account can open")
        blob = await self._api.download_chat_media(token, conversation_id, media_hash_key)
        try:
            return bytes(self._chat.decrypt_stream(blob, key))
        except (ValueError, TypeError) as exc:
            raise XRefused("the attachment does not decrypt (truncated or tampered with)") from exc

    async def users(self, token: str, user_ids: list[str]) -> dict[str, XUser]:
        """Names and avatars of senders (for posting as them), asked of X once per process."""
        wanted = [u for u in dict.fromkeys(user_ids) if u and u not in self._users]
        if wanted:
            self._users.update(await self._api.users_by_ids(token, wanted))
        return {u: self._users[u] for u in user_ids if u in self._users}

    async def _writable_key(self, token: str, conversation_id: str) -> tuple[str, bytes]:
        """The conversation key to encrypt with. A 1-to-1 whose keys none is wrapped for the
        account's current keys (they were replaced: ``xchat import`` or a new ``setup``) gets a
        new key first, as X's apps rotate one; a group's admin must add the new keys."""
        try:
            return await self._conversation_key(token, conversation_id)
        except XChatError:
            if conversation_id.startswith("g"):
                raise
            peers = [i for i in conversation_id.replace(":", "-").split("-") if i != self.user_id]
            if len(peers) != 1:
                raise
            await self._new_key(token, peers[0])
            return await self._conversation_key(token, conversation_id)

    async def _conversation_key(self, token: str, conversation_id: str) -> tuple[str, bytes]:
        cached = self._conversation_keys.get(conversation_id)
        if cached is not None and time.monotonic() - cached[0] < KEY_CACHE_SECONDS:
            return cached[1], cached[2]
        version, key = await self._read_conversation_key(token, conversation_id)
        self._conversation_keys[conversation_id] = (time.monotonic(), version, key)
        return version, key

    async def _read_conversation_key(self, token: str, conversation_id: str) -> tuple[str, bytes]:
        page = await self._api._call(
            "GET", f"/2/chat/conversations/{conversation_id}/events", token, params={"max_results": "1"}
        )
        status, headers, payload = page
        self._api._raise_for(status, headers, payload)
        meta = payload.get("meta") if isinstance(payload, dict) else None
        key_events = [k for k in (meta or {}).get("conversation_key_events") or [] if isinstance(k, str)]
        mine, _ = _own_messages(self._signed_id(conversation_id), self._chat.decrypt_events(key_events))
        keys = self._keys_of(conversation_id, mine)
        version = keys.get("latest_version")
        if not version or version not in (keys.get("keys") or {}):
            raise XChatError(f"conversation {conversation_id} has no key the account can open")
        return str(version), bytes(keys["keys"][version])

    async def _post(self, token: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        answered, headers, payload = await self._api._call("POST", path, token, body=body)
        self._api._raise_for(answered, headers, payload)
        data = payload.get("data") if isinstance(payload, dict) else None
        return data if isinstance(data, dict) else {}


class AccountChats:
    """``bridge.xchat.ChatSessions``: each account's session, built from the identity the store
    holds when asked (a new or replaced identity is used at once, without a restart)."""

    def __init__(self, api: XApiClient, identities: XChatIdentities) -> None:
        self._api = api
        self._identities = identities
        self._sessions: dict[str, tuple[tuple[str, str | None], ChatConversations]] = {}

    async def session(self, account: Account) -> ChatConversations:
        identity = await self._identities.identity(account.x_user_id)
        if identity is None:
            raise NoChatIdentity(
                f"the bridge holds no X Chat keys for @{account.x_username} "
                f"(an operator runs `xdm-bridge xchat setup @{account.x_username}`)"
            )
        if identity.state is IdentityState.MISMATCH:
            raise NoChatIdentity(
                f"the X Chat keys the bridge holds for @{account.x_username} no longer match X's "
                f"(an operator runs `xdm-bridge xchat import` or `setup` again)"
            )
        if identity.state is not IdentityState.REGISTERED or identity.version is None:
            raise NoChatIdentity(
                f"the X Chat keys of @{account.x_username} are not registered with X yet "
                f"(an operator runs `xdm-bridge xchat setup @{account.x_username}` again)"
            )
        key = (identity.fingerprint, identity.version)
        kept = self._sessions.get(account.x_user_id)
        if kept is None or kept[0] != key:
            kept = (key, ChatConversations(self._api, identity))
            self._sessions[account.x_user_id] = kept
        return kept[1]

    async def reader(self, account: Account) -> ChatConversations | None:
        """``bridge.chat_inbound.ChatReaders``: the account's session, or None while it has no
        usable identity (none, not registered yet, or ``mismatch``): nothing of it is read then."""
        try:
            return await self.session(account)
        except NoChatIdentity:
            self._sessions.pop(account.x_user_id, None)
            return None

    async def has_identity(self, account: Account) -> bool:
        return await self._identities.identity(account.x_user_id) is not None

    async def flag_mismatch(self, account: Account, detail: str) -> bool:
        self._sessions.pop(account.x_user_id, None)
        return await self._identities.flag_mismatch(account.x_user_id, detail)


def sequence_of(encoded_event: str) -> str | None:
    """The sequence id (field 1) of a base64 Thrift ``MessageEvent``, as X's answer to a send
    carries it; None when it cannot be read (the send stands: a 2xx is a send)."""
    try:
        raw = base64.b64decode(encoded_event + "=" * (-len(encoded_event) % 4))
    except (binascii.Error, ValueError):
        return None
    at = 0
    try:
        while at < len(raw) and raw[at] != 0:
            kind = raw[at]
            field_id = struct.unpack_from(">h", raw, at + 1)[0]
            at += 3
            if kind == 11:  # string (and binary)
                size = struct.unpack_from(">i", raw, at)[0]
                value = raw[at + 4 : at + 4 + size]
                if field_id == 1:
                    return value.decode() or None
                at += 4 + size
            else:
                at = _skip(raw, at, kind)
    except (struct.error, UnicodeDecodeError, ValueError):
        return None
    return None


_FIXED = {2: 1, 3: 1, 4: 8, 6: 2, 8: 4, 10: 8}  # Thrift binary sizes: bool, byte, double, i16, i32, i64


def _skip(raw: bytes, at: int, kind: int) -> int:
    """Past one Thrift value of ``kind`` starting at ``at``."""
    if kind in _FIXED:
        return at + _FIXED[kind]
    if kind == 11:
        return at + 4 + int(struct.unpack_from(">i", raw, at)[0])
    if kind == 12:
        while raw[at] != 0:
            inner = raw[at]
            at = _skip(raw, at + 3, inner)
        return at + 1
    if kind in (14, 15):  # set, list
        inner, count = raw[at], struct.unpack_from(">i", raw, at + 1)[0]
        at += 5
        for _ in range(count):
            at = _skip(raw, at, inner)
        return at
    if kind == 13:  # map
        key, value, count = raw[at], raw[at + 1], struct.unpack_from(">i", raw, at + 2)[0]
        at += 6
        for _ in range(count):
            at = _skip(raw, _skip(raw, at, key), value)
        return at
    raise ValueError(f"not a Thrift type: {kind}")


def _dimensions(head: bytes) -> tuple[int, int]:
    """An image's width and height from its first bytes (0, 0 when the library cannot tell)."""
    try:
        found = chat_xdk.detect_image_dimensions(head)
    except ValueError:
        return 0, 0
    return (int(found[0]), int(found[1])) if found else (0, 0)


def _own_messages(signed_id: str, result: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """A decryption's messages signed for conversation ``signed_id`` (``_canonical``: the id
    signatures bind), and the raw events of those signed for another conversation."""
    canonical = signed_id
    mine: list[dict[str, Any]] = []
    elsewhere: list[str] = []
    for message in result.get("messages") or []:
        if str(message["event"].get("conversation_id") or "") == canonical:
            mine.append(message)
        else:
            elsewhere.append(str(message.get("original_b64") or ""))
    return mine, elsewhere


def _one_to_one_people(conversation_id: str) -> list[str]:
    """Both people of a 1-to-1 id (``A-B`` or ``A:B``); none for a group or a bare peer id."""
    ids = conversation_id.replace(":", "-").split("-")
    return ids if len(ids) == 2 and all(i.isdigit() for i in ids) else []


def _canonical(conversation_id: str) -> str:
    """The id signatures bind: ``min:max`` for a 1-to-1, ``g…`` for a group."""
    if conversation_id.startswith("g"):
        return conversation_id
    low, high = sorted(conversation_id.replace(":", "-").split("-"), key=int)
    return f"{low}:{high}"


def _send(prepared: Any) -> ChatSend:
    body = {
        "message_id": prepared.message_id,
        "encoded_message_create_event": prepared.encrypted_content,
        "encoded_message_event_signature": prepared.encoded_event_signature,
    }
    return ChatSend(str(prepared.message_id), body)


def _event(raw: dict[str, Any], conversation_id: str) -> ChatEvent | None:
    """chat_xdk's decrypted event as the core's, or None when it did not verify."""
    if not raw.get("verified", False):
        return None
    stamp = str(raw.get("created_at_msec") or "")
    base = ChatEvent(
        sequence_id=str(raw.get("sequence_id") or ""),
        message_id=str(raw.get("id") or ""),
        sender_id=str(raw.get("sender_id") or ""),
        conversation_id=conversation_id,
        kind=ChatEventKind.OTHER,  # typing, read marks, group changes…: nothing to show
        created_at=int(stamp) / 1000 if stamp.isdigit() else None,
        key_version=str(raw.get("key_version") or "") or None,
    )
    content = raw.get("content") or {}
    if raw.get("type") == "MessageDeleted":
        # Its "message_ids" are the deleted messages' sequence ids, whatever the name says.
        targets = raw.get("message_ids") or []
        return replace(
            base, kind=ChatEventKind.DELETE, target_sequence_id=str(targets[0]) if targets else None
        )
    if raw.get("type") != "Message":
        return base
    match content.get("content_type"):
        case "Text":
            attachments = tuple(a for a in content.get("attachments") or [] if isinstance(a, dict))
            return replace(
                base, kind=ChatEventKind.TEXT, text=str(content.get("text") or ""), attachments=attachments
            )
        case "Edit":
            target = str(content.get("target_message_id") or "") or None
            return replace(
                base,
                kind=ChatEventKind.EDIT,
                text=str(content.get("new_text") or ""),
                target_sequence_id=target,
            )
        case "Reaction":
            return replace(base, kind=ChatEventKind.REACTION, text=str(content.get("emoji") or ""))
    return base
