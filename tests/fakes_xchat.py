"""In-memory fakes of the X Chat ports, for the core's unit tests.

``MemoryIdentities`` is held to the same contract suite as the real store
(tests/contract/test_xchat_store.py), so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from bridge.errors import XError, XRateLimited, XTransient
from bridge.xchat import IdentityState, NewIdentity, PeerCheck, RegisteredKey, XChatIdentity


class MemoryIdentities:
    """``bridge.xchat.XChatIdentities`` in a dict."""

    def __init__(self) -> None:
        self.rows: dict[str, XChatIdentity] = {}

    async def identity(self, x_user_id: str) -> XChatIdentity | None:
        return self.rows.get(x_user_id)

    async def save_identity(self, x_user_id: str, new: NewIdentity, now: float) -> XChatIdentity:
        if x_user_id not in self.rows:
            self.rows[x_user_id] = XChatIdentity(
                x_user_id=x_user_id,
                private_keys=new.private_keys,
                registration=new.registration,
                public_key=new.public_key,
                fingerprint=new.fingerprint,
                state=IdentityState.SAVED,
                created_at=now,
            )
        return self.rows[x_user_id]

    async def mark_registered(self, x_user_id: str, version: str, now: float) -> None:
        if x_user_id in self.rows:
            self.rows[x_user_id] = replace(
                self.rows[x_user_id],
                state=IdentityState.REGISTERED,
                version=version,
                detail=None,
                registered_at=now,
            )

    async def list_identities(self) -> list[XChatIdentity]:
        return [self.rows[k] for k in sorted(self.rows)]

    async def forget_identity(self, x_user_id: str) -> bool:
        return self.rows.pop(x_user_id, None) is not None

    async def flag_mismatch(self, x_user_id: str, detail: str) -> bool:
        kept = self.rows.get(x_user_id)
        if kept is None or kept.state is not IdentityState.REGISTERED:
            return False
        self.rows[x_user_id] = replace(kept, state=IdentityState.MISMATCH, detail=detail)
        return True


class MemoryPeerChecks:
    """``bridge.xchat.PeerChecks`` in a dict."""

    def __init__(self) -> None:
        self.rows: dict[str, PeerCheck] = {}

    async def peer_checks(self, x_user_ids: Sequence[str]) -> dict[str, PeerCheck]:
        return {i: self.rows[i] for i in x_user_ids if i in self.rows}

    async def save_peer_check(self, check: PeerCheck) -> None:
        self.rows[check.x_user_id] = check


class FakeDirectory:
    """``bridge.xchat.KeyDirectory``: X's registered records, with the faults tests ask for."""

    def __init__(self) -> None:
        self.records: dict[str, list[RegisteredKey]] = {}
        self.calls: list[tuple[str, str]] = []
        self.lose_next_answer = False  # X registers, the answer is lost
        self.fail_next_post = False  # X fails before acting
        self.rate_limited_until: float | None = None
        self.fail_reads: XError | None = None
        self._versions = 500

    async def public_keys(self, token: str, user_id: str) -> list[RegisteredKey]:
        self.calls.append(("get", user_id))
        if self.fail_reads is not None:
            raise self.fail_reads
        return list(self.records.get(user_id, []))

    async def register_public_key(self, token: str, user_id: str, registration: dict[str, Any]) -> str:
        self.calls.append(("post", user_id))
        if self.rate_limited_until is not None:
            until, self.rate_limited_until = self.rate_limited_until, None
            raise XRateLimited("registrations spent", reset_at=until)
        if self.fail_next_post:
            self.fail_next_post = False
            raise XTransient("X failed with HTTP 503", status=503)
        self._versions += 1
        version = str(self._versions)
        key = registration["public_key"]["public_key"]
        self.records.setdefault(user_id, []).append(RegisteredKey(version, key))
        if self.lose_next_answer:
            self.lose_next_answer = False
            raise XTransient("X did not answer (TimeoutError)")
        return version
