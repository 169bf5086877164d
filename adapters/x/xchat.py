"""X Chat at the edge: X's own ``chat_xdk`` for the keys, and X's public-key routes.

Every encrypt, decrypt and key operation happens in this process through ``chat_xdk`` (X's
library; it makes no network calls of its own without a Juicebox configuration, which the bridge
never gives it). Public keys come in two encodings: registration bodies and X's records carry the
DER (SPKI) form, while the library's own ``get_public_keys`` gives raw points, so keys are
compared with the library's ``matches_registered_key``, never as strings.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from chat_xdk import Chat

from adapters.x.api import XApiClient
from bridge.errors import XRefused
from bridge.xchat import NewIdentity, RegisteredKey, XChatError

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
