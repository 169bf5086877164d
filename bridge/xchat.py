"""X Chat identities for accounts the operator controls (a team, brand or support account).

X's encrypted Chat needs keys that live with whoever reads and writes for the account. X's
guidance is that an app may hold the keys of an account it operates, generated and registered by
the app itself, and must never ask people for their Chat PIN or private keys. So only the
operator, from the command line, gives the bridge an identity (``xdm-bridge xchat setup`` or
``import``); nobody can from Slack.

The order of the steps is what keeps a crash harmless: the keys are saved (encrypted) first, then
X is asked whether it already holds them, and only then are they registered. A process killed at
any point leaves keys the next run finishes registering, never a registered key the bridge lost.
Registration is a scarce write at X (a few per account per day), so a second run never makes a
second identity, and a 429 is waited out, not retried with new keys.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from bridge.errors import BridgeError, RateFacts, XAuthRevoked, XError, XRateLimited
from bridge.media import MediaSource
from bridge.model import Account, ChannelMapping
from bridge.ports import Clock

log = logging.getLogger("bridge.xchat")

# Longest wait for X's registration window the command line sits through before saying when to
# come back (X names its 24-hour reset; the saved keys wait for the next run).
LONGEST_WAIT = 15 * 60.0


class IdentityState(StrEnum):
    SAVED = "saved"  # kept; X has not confirmed the public half yet
    REGISTERED = "registered"  # X holds the public half under ``version``
    MISMATCH = "mismatch"  # X's registered key is another one: nothing is encrypted with these


@dataclass(frozen=True)
class NewIdentity:
    """Keys as the crypto library makes them: the private half (never logged) and the public one."""

    private_keys: bytes = field(repr=False)
    registration: dict[str, Any]  # POST /2/users/{id}/public_keys's body
    public_key: str  # the identity public key, base64
    fingerprint: str


@dataclass(frozen=True)
class XChatIdentity:
    """The keys the bridge holds for one X user, and where X stands on them."""

    x_user_id: str
    private_keys: bytes = field(repr=False)
    registration: dict[str, Any]
    public_key: str
    fingerprint: str
    state: IdentityState
    version: str | None = None
    detail: str | None = None
    created_at: float = 0.0
    registered_at: float | None = None


@dataclass(frozen=True)
class RegisteredKey:
    """One record of ``GET /2/users/{id}/public_keys``."""

    version: str
    public_key: str
    signing_public_key: str = ""
    identity_public_key_signature: str = ""


class XChatError(BridgeError):
    """An identity cannot be set up or imported; ``str(err)`` tells the operator what to do."""


class KeysElsewhere(XChatError):
    """X already holds other keys for the account (its owner uses Chat elsewhere): a second
    identity would be one the owner's devices do not know."""


class KeysDoNotMatch(XChatError):
    """Imported keys are not the ones X has registered under the version given."""


class RegistrationDeferred(XChatError):
    """X's registration window is spent for longer than the command waits; the keys are saved."""


class XChatIdentities(Protocol):
    """Role store: the identities (private keys encrypted at rest)."""

    async def identity(self, x_user_id: str) -> XChatIdentity | None: ...

    async def save_identity(self, x_user_id: str, new: NewIdentity, now: float) -> XChatIdentity:
        """Keep ``new`` unless the user has an identity already; either way return the kept one."""
        ...

    async def mark_registered(self, x_user_id: str, version: str, now: float) -> None: ...

    async def list_identities(self) -> list[XChatIdentity]: ...

    async def forget_identity(self, x_user_id: str) -> bool: ...

    async def flag_mismatch(self, x_user_id: str, detail: str) -> bool:
        """Mark a registered identity ``mismatch`` with why; False when it was not registered (already
        flagged, forgotten or never registered): whoever flags first tells the owner."""
        ...


class XChatKeys(Protocol):
    """The crypto library's key handling (X's own chat_xdk in production)."""

    def new_identity(self) -> NewIdentity: ...

    def fingerprint(self, private_keys: bytes) -> str:
        """The library's fingerprint of the keys; raises ``XChatError`` if they are not keys."""
        ...

    def matches(self, private_keys: bytes, registered_public_key: str) -> bool:
        """Are these the keys behind a public key X has registered (in whatever encoding X uses)?"""
        ...


class KeyDirectory(Protocol):
    """X's public-key endpoints, on a user token."""

    async def public_keys(self, token: str, user_id: str) -> list[RegisteredKey]: ...

    async def register_public_key(self, token: str, user_id: str, registration: dict[str, Any]) -> str:
        """Register; X's ``public_key_version``."""
        ...


# A request on the account's token (``TokenManager.call``: refreshed once on a 401).
OnToken = Callable[[Account, Callable[[str], Awaitable[Any]]], Awaitable[Any]]


class XChatSetup:
    """``xchat setup`` and ``xchat import``: keys saved first, then registered with X once."""

    def __init__(
        self,
        identities: XChatIdentities,
        keys: XChatKeys,
        directory: KeyDirectory,
        on_token: OnToken,
        clock: Clock,
        *,
        say: Callable[[str], None] = lambda _: None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        longest_wait: float = LONGEST_WAIT,
    ) -> None:
        self._identities = identities
        self._keys = keys
        self._directory = directory
        self._on_token = on_token
        self._clock = clock
        self._say = say
        self._sleep = sleep
        self._longest_wait = longest_wait

    async def setup(self, account: Account) -> tuple[XChatIdentity, bool]:
        """The account's identity, registered; and whether this call changed anything."""
        kept = await self._identities.identity(account.x_user_id)
        if kept is not None and kept.state is IdentityState.REGISTERED:
            return kept, False  # a second run: no request to X at all
        if kept is None:
            # Saved before X hears of it: a crash after X registered it leaves keys we still hold.
            kept = await self._identities.save_identity(
                account.x_user_id, self._keys.new_identity(), self._clock.now()
            )
            log.info("X Chat keys made and saved", extra={"account_id": account.id})
        registered = await self._registered(account)
        mine = [r for r in registered if self._keys.matches(kept.private_keys, r.public_key)]
        if mine:  # X registered them before a crash or a lost answer: adopt, do not post again
            return await self._registered_as(account, kept, mine[-1].version), True
        if registered:
            raise KeysElsewhere(
                f"@{account.x_username} already has X Chat keys registered that the bridge does not "
                "hold (its owner uses Chat in an X app): registering another identity could cut those "
                f"devices off. Import those keys with `xdm-bridge xchat import @{account.x_username} "
                "--keys FILE --version V`, or use a dedicated team account"
            )
        version = await self._register(account, kept)
        return await self._registered_as(account, kept, version), True

    async def import_keys(self, account: Account, private_keys: bytes, version: str) -> XChatIdentity:
        """Keys made elsewhere (an X app's export): kept once X confirms they are registered."""
        fingerprint = self._keys.fingerprint(private_keys)
        registered = await self._registered(account)
        found = [
            r for r in registered if r.version == version and self._keys.matches(private_keys, r.public_key)
        ]
        if not found:
            known = ", ".join(r.version for r in registered) or "none"
            raise KeysDoNotMatch(
                f"X has no key version {version} with these keys for @{account.x_username} "
                f"(its registered versions: {known}); nothing was saved"
            )
        # Made elsewhere, so there is no registration body of ours: X's record is the public half.
        new = NewIdentity(private_keys, {}, found[0].public_key, fingerprint)
        kept = await self._identities.identity(account.x_user_id)
        if kept is not None and kept.public_key != new.public_key:
            await self._identities.forget_identity(account.x_user_id)
        kept = await self._identities.save_identity(account.x_user_id, new, self._clock.now())
        return await self._registered_as(account, kept, version)

    async def _registered(self, account: Account) -> list[RegisteredKey]:
        async def read(token: str) -> list[RegisteredKey]:
            return await self._directory.public_keys(token, account.x_user_id)

        keys: list[RegisteredKey] = await self._on_token(account, read)
        return keys

    async def _register(self, account: Account, kept: XChatIdentity) -> str:
        async def register(token: str) -> str:
            return await self._directory.register_public_key(token, account.x_user_id, kept.registration)

        while True:
            try:
                version: str = await self._on_token(account, register)
                return version
            except XRateLimited as exc:
                wait = max(1.0, exc.reset_at - self._clock.now())
                if wait > self._longest_wait:
                    raise RegistrationDeferred(
                        f"X allows only a few key registrations per account per day, and its window "
                        f"opens again in {_duration(wait)}. The keys are saved: run this command "
                        "again then; it registers the same keys."
                    ) from exc
                self._say(
                    f"X allows only a few key registrations per account per day; waiting "
                    f"{_duration(wait)} for its window to open (the keys are saved)."
                )
                await self._sleep(wait)

    async def _registered_as(self, account: Account, kept: XChatIdentity, version: str) -> XChatIdentity:
        now = self._clock.now()
        await self._identities.mark_registered(account.x_user_id, version, now)
        log.info("X Chat keys registered", extra={"account_id": account.id, "version": version})
        return XChatIdentity(
            x_user_id=kept.x_user_id,
            private_keys=kept.private_keys,
            registration=kept.registration,
            public_key=kept.public_key,
            fingerprint=kept.fingerprint,
            state=IdentityState.REGISTERED,
            version=version,
            created_at=kept.created_at,
            registered_at=now,
        )


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


# -- peers on X Chat -------------------------------------------------------------------------------

PEER_CHECK_TTL = 24 * 3600.0  # X Chat registration changes rarely: ask X about a person once a day


@dataclass(frozen=True)
class PeerCheck:
    """What X said when last asked whether a person has X Chat keys registered."""

    x_user_id: str
    on_chat: bool
    checked_at: float


class PeerChecks(Protocol):
    """Role store: the last answer for each person (so every instance, and status, reads it free)."""

    async def peer_checks(self, x_user_ids: Sequence[str]) -> dict[str, PeerCheck]: ...

    async def save_peer_check(self, check: PeerCheck) -> None: ...


class ChatPeers:
    """Who among a conversation's people is on X Chat, so a one-way bridge is said, not hidden.

    X upgrades a conversation to encrypted Chat once the other person registers for it, and its
    legacy DM API may then show only what the bridge sends: replies never come back. Whether a
    person has registered keys is readable with the account's own token. X does not document its
    answer for someone who has not: no record, an empty answer and a not-found all mean "not on
    X Chat", and then nothing about encryption is said. An answer X did not give (a 429, a
    time-out) is no answer: nothing is said or kept, and the next check asks again.
    """

    def __init__(
        self,
        checks: PeerChecks,
        directory: KeyDirectory,
        on_token: OnToken,
        clock: Clock,
        *,
        ttl: float = PEER_CHECK_TTL,
    ) -> None:
        self._checks = checks
        self._directory = directory
        self._on_token = on_token
        self._clock = clock
        self._ttl = ttl

    async def on_chat(self, account: Account, x_user_ids: Sequence[str]) -> list[str]:
        """Those of ``x_user_ids`` on X Chat; asks X only about people not asked within a day."""
        wanted = [i for i in dict.fromkeys(x_user_ids) if i != account.x_user_id]
        now = self._clock.now()
        known = await self._checks.peer_checks(wanted)
        for user_id in wanted:
            if user_id in known and now - known[user_id].checked_at < self._ttl:
                continue
            try:
                keys = await self._on_token(account, _reader(self._directory, user_id))
            except (XError, XAuthRevoked) as exc:
                log.info("could not ask X whether a person uses X Chat", extra={"error": str(exc)[:200]})
                known.pop(user_id, None)
                continue
            known[user_id] = PeerCheck(user_id, bool(keys), now)
            await self._checks.save_peer_check(known[user_id])
        return [i for i in wanted if i in known and known[i].on_chat]

    async def known_on_chat(self, x_user_ids: Sequence[str]) -> list[str]:
        """From the kept answers alone, asking X nothing (status, metrics)."""
        known = await self._checks.peer_checks(list(dict.fromkeys(x_user_ids)))
        return [i for i in dict.fromkeys(x_user_ids) if i in known and known[i].on_chat]


def _reader(directory: KeyDirectory, user_id: str) -> Callable[[str], Awaitable[list[RegisteredKey]]]:
    async def read(token: str) -> list[RegisteredKey]:
        return await directory.public_keys(token, user_id)

    return read


class HeldKeys(StrEnum):
    """The X Chat keys the bridge holds for the account of a conversation bridged over X's legacy
    DM API, which decide why replies from people on X Chat may not come back."""

    NONE = "none"  # no keys for the account
    UNUSABLE = "unusable"  # keys, but not usable now: not registered with X yet, or no longer X's
    USABLE = "usable"  # keys, but this conversation is a legacy one, which they do not open


def one_way_note(
    names: Sequence[str], account: str, keys: HeldKeys = HeldKeys.NONE, *, group: bool = False
) -> str:
    """What a channel is told when people of its legacy conversation are on X Chat (``account``:
    the bridged X account's handle; ``group``: the conversation is a group)."""
    who = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
    verb = "uses" if len(names) == 1 else "use"
    never = "their replies may never appear here."
    if keys is HeldKeys.USABLE:
        instead = (
            "an encrypted group needs everyone in it on X Chat"
            if group
            else "`/xdm dm` bridges the encrypted one instead"
        )
        return (
            f":lock: {who} {verb} X's encrypted Chat, but this channel is bridged to a legacy DM "
            f"conversation, not an encrypted one ({instead}). Messages from this channel still reach "
            f"X; the X Chat keys the bridge holds for @{account} open only encrypted conversations, "
            f"and X may not pass on replies written in X Chat: {never}"
        )
    held = (
        f"the X Chat keys the bridge holds for @{account} cannot be used now (not registered with X "
        "yet, or no longer X's: an operator's `xdm-bridge xchat status` says which)"
        if keys is HeldKeys.UNUSABLE
        else f"the bridge holds none for @{account}"
    )
    return (
        f":lock: {who} {verb} X's encrypted Chat. Messages from this channel still reach X, but X "
        f"lets an app read encrypted replies only with the Chat keys of the account, and {held}: {never}"
    )


def conversation_peers(mapping: ChannelMapping, own_x_user_id: str) -> list[str]:
    """The other people of a mapping's conversation, as far as the mapping knows them (a linked
    group's members are not kept: none)."""
    if mapping.participant_id:
        return [mapping.participant_id]
    if mapping.conversation_id and "-" in mapping.conversation_id:
        return [i for i in mapping.conversation_id.split("-") if i != own_x_user_id]
    return list(mapping.group_participants)


# -- encrypted conversations ------------------------------------------------------------------------


class ChatEventKind(StrEnum):
    TEXT = "text"
    EDIT = "edit"
    DELETE = "delete"
    REACTION = "reaction"
    OTHER = "other"  # typing, read marks, group changes…: nothing to show


@dataclass(frozen=True)
class ChatSend:
    """A message ready to post: signed and encrypted once. Kept with its outbox row, so a retry
    after a lost answer posts the very same bytes and the other side sees one message."""

    message_id: str
    body: dict[str, Any]


@dataclass(frozen=True)
class ChatEvent:
    """One decrypted, verified X Chat event."""

    sequence_id: str  # X's place in the conversation (what edits and deletes point at)
    message_id: str  # the sender's signed id (what duplicates are told apart by)
    sender_id: str
    conversation_id: str  # path form, "A-B" or "g…"
    kind: ChatEventKind
    text: str = ""
    target_sequence_id: str | None = None
    created_at: float | None = None
    attachments: tuple[dict[str, Any], ...] = ()
    key_version: str | None = None  # the conversation key it was encrypted with (its media too)


@dataclass(frozen=True)
class ChatPage:
    """What one read of a conversation gave: events newest first, as X lists them."""

    events: tuple[ChatEvent, ...]
    refused: int  # events whose signature or encryption did not verify: never shown, counted
    next_token: str | None = None
    refused_ids: tuple[str, ...] = ()  # the sequence ids X gave the refused events (not key events)


@dataclass(frozen=True)
class ChatPosted:
    """X's answer to a posted X Chat message: the message's place in the conversation (its
    sequence id, what edits and deletes name), when the answer could be read, and its headers."""

    sequence_id: str | None
    facts: RateFacts = field(default_factory=RateFacts)


class NoChatIdentity(XChatError):
    """The bridge holds no usable X Chat identity for the account (none set up, not registered
    yet, or flagged ``mismatch``); ``str(err)`` says which and what the operator runs."""


class KeyMismatch(XChatError):
    """X's registered key for the account is no longer the one the bridge holds: nothing may be
    encrypted or signed with it (its readers would refuse it, or X would)."""


class ChatSession(Protocol):
    """One account's encrypted X Chat conversations, through the identity the bridge holds for it.

    Every call that talks to X takes the account's token (``TokenManager.call`` refreshes it);
    the encryption and signatures happen in the adapter, so the core sees conversations and events.
    """

    user_id: str

    async def check_keys(self, token: str) -> None:
        """Raise ``KeyMismatch`` when X no longer has this identity's key registered (asked at most
        every few minutes; between checks, the last answer stands)."""
        ...

    async def open_one_to_one(self, token: str, peer_id: str) -> str:
        """A 1-to-1 with ``peer_id`` the account can write to (made, with its key, if needed); its id."""
        ...

    async def create_group(self, token: str, member_ids: list[str], title: str) -> str: ...

    async def conversations(self, token: str) -> list[str]:
        """The ids of the account's X Chat conversations (``GET /2/chat/conversations``)."""
        ...

    async def prepare_text(
        self, token: str, conversation_id: str, text: str, attachments: list[dict[str, Any]] | None = None
    ) -> ChatSend: ...

    async def upload_media(
        self, token: str, conversation_id: str, source: MediaSource, *, filename: str, media_type: int
    ) -> dict[str, Any]:
        """Encrypt and upload a file into the conversation; the attachment a message names it by."""
        ...

    async def prepare_edit(
        self, token: str, conversation_id: str, target_sequence_id: str, text: str
    ) -> ChatSend: ...

    def prepare_delete(self, conversation_id: str, sequence_ids: list[str]) -> dict[str, Any]: ...

    async def send(self, token: str, conversation_id: str, message: ChatSend) -> ChatPosted:
        """Post a prepared message; raises ``XSentUnconfirmed`` for a 2xx it cannot read."""
        ...

    async def delete(self, token: str, conversation_id: str, body: dict[str, Any]) -> None: ...

    async def read(
        self, token: str, conversation_id: str, *, max_results: int = 50, pagination_token: str | None = None
    ) -> ChatPage: ...


class ChatSessions(Protocol):
    """The X Chat session of each account the bridge holds keys for, read from the store on every
    call: an identity ``xchat setup`` saves while ``serve`` runs is used on the next command."""

    async def session(self, account: Account) -> ChatSession:
        """The account's session; raises ``NoChatIdentity`` saying why there is none."""
        ...

    async def has_identity(self, account: Account) -> bool:
        """Whether the account has an identity at all (registered or not, matching or not)."""
        ...

    async def flag_mismatch(self, account: Account, detail: str) -> bool:
        """Flag the account's identity ``mismatch``; True when this call flagged it."""
        ...


def mismatch_note(account: Account) -> str:
    """What the account's owner is told in Slack when its keys no longer match X's."""
    return (
        f":closed_lock_with_key: X no longer has the X Chat keys the bridge holds for @{account.x_username} "
        "registered (they were replaced in an X app, or revoked). Nothing is sent to its encrypted "
        "conversations, and nothing in the clear instead: the messages wait. An operator can run "
        f"`xdm-bridge xchat import @{account.x_username} --keys FILE --version V` with the keys X "
        "holds now, or `xdm-bridge xchat forget` and `setup` again."
    )
