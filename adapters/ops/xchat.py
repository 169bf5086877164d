"""``xdm-bridge xchat …``: give the bridge the X Chat keys of an account the operator controls.

Only the operator does this, from the command line: X's guidance is that an app holds the Chat
keys only of accounts it operates (a team, brand or support account), and never asks people for
their Chat PIN or keys. The command may run while ``serve`` runs on the same database: token
refreshes are locked per account across processes, and ``serve`` reads identities from the store.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from adapters.services import open_clients, open_store
from adapters.store.crypto import TokenCipher
from adapters.store.select import AnyStore
from adapters.store.xchat import XChatIdentityStore
from adapters.x.xchat import ChatKeys, KeyDirectory
from bridge.model import Account
from bridge.settings import Settings
from bridge.tokens import TokenManager
from bridge.xchat import XChatError, XChatIdentity, XChatSetup


class NoSuchAccount(XChatError):
    """No usable connected account has that handle."""


@dataclass(frozen=True)
class Listed:
    """One identity for ``xchat status``, with the handle of an account holding it."""

    identity: XChatIdentity
    handle: str | None


async def setup(settings: Settings, handle: str, say: Callable[[str], None]) -> tuple[XChatIdentity, bool]:
    """``xchat setup @handle``: the identity, and whether anything changed."""

    async def work(service: XChatSetup, account: Account) -> tuple[XChatIdentity, bool]:
        return await service.setup(account)

    result: tuple[XChatIdentity, bool] = await _with_account(settings, handle, say, work)
    return result


async def import_keys(settings: Settings, handle: str, private_keys: bytes, version: str) -> XChatIdentity:
    """``xchat import @handle --keys FILE --version V``."""

    async def work(service: XChatSetup, account: Account) -> XChatIdentity:
        return await service.import_keys(account, private_keys, version)

    result: XChatIdentity = await _with_account(settings, handle, lambda _: None, work)
    return result


async def status(settings: Settings) -> list[Listed]:
    async with open_store(settings) as store:
        handles = {a.x_user_id: a.x_username for a in await store.list_accounts()}
        identities = await _identities(settings, store).list_identities()
        return [Listed(i, handles.get(i.x_user_id)) for i in identities]


async def forget(settings: Settings, handle: str) -> bool:
    """Delete the stored keys of @handle's X user (X keeps its registration)."""
    async with open_store(settings) as store:
        account = await _account(store, handle)
        return await _identities(settings, store).forget_identity(account.x_user_id)


async def _with_account(
    settings: Settings,
    handle: str,
    say: Callable[[str], None],
    work: Callable[[XChatSetup, Account], Awaitable[Any]],
) -> Any:
    async with open_clients(settings) as clients:
        store, clock = clients.store, clients.clock
        account = await _account(store, handle)

        async def revoked(account: Account, reason: str) -> None:
            say(f"X refused @{account.x_username}'s refresh token ({reason}): run /xdm connect again")

        tokens = TokenManager(store, clients.oauth, clock, revoked)
        service = XChatSetup(
            _identities(settings, store),
            ChatKeys(),
            KeyDirectory(clients.x),
            tokens.call,
            clock,
            say=say,
        )
        return await work(service, account)


async def _account(store: AnyStore, handle: str) -> Account:
    wanted = handle.removeprefix("@").lower()
    accounts = [a for a in await store.list_accounts() if a.x_username.lower() == wanted]
    usable = [a for a in accounts if not a.needs_reconnect and not a.disconnected]
    if not usable:
        why = "must reconnect (/xdm connect)" if accounts else "is not connected (/xdm connect first)"
        raise NoSuchAccount(f"the X account @{wanted} {why}; see `xdm-bridge accounts`")
    users = sorted({a.x_user_id for a in usable})
    if len(users) > 1:
        # Handles move on X and the bridge keeps each as it was at connect: keys for the wrong
        # X user would be made (and registered) in the operator's name.
        raise NoSuchAccount(
            f"@{wanted} names {len(users)} X accounts the bridge holds (X user ids {', '.join(users)}): "
            "a handle changed hands since they were connected. Have each owner run /xdm connect again "
            "so the bridge knows their current handle; see `xdm-bridge accounts`"
        )
    return usable[0]


def _identities(settings: Settings, store: AnyStore) -> XChatIdentityStore:
    return XChatIdentityStore(store.engine, TokenCipher(settings.encryption_keys))
