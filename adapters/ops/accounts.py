"""``xdm-bridge accounts disconnect``: what `/xdm disconnect` does, for an operator.

The CLI is its own process, so it opens the few pieces it needs from the composition root
(``adapters.services.open_clients``: the store, X's OAuth client, the Slack client for the
channel notices, the same as ``serve``'s) and runs the core's ``ConnectService.disconnect``.
A running server notices within its account cache's lifetime (``bridge.tokens.ACCOUNT_TTL``);
until then a send with the revoked token is refused by X and parks like any other.
"""

from __future__ import annotations

from adapters.services import open_clients
from bridge.connect import OPERATOR, ConnectService, Disconnected
from bridge.settings import Settings


class NoSuchAccount(Exception):
    """The id names no account, or one already disconnected; ``str`` says which."""


async def disconnect(settings: Settings, account_id: int) -> Disconnected:
    """Revoke, delete the tokens, pause the account's mappings and tell their channels.

    The database must exist (the caller checks: a typo must not create an empty one).
    """
    async with open_clients(settings) as clients:
        account = await clients.store.get_account(account_id)
        if account is None:
            raise NoSuchAccount(f"no X account with id {account_id} (see `xdm-bridge accounts`)")
        if account.disconnected:
            raise NoSuchAccount(f"account {account_id} (@{account.x_username}) is already disconnected")
        service = ConnectService(
            store=clients.store, oauth=clients.oauth, x=clients.x, slack=clients.slack, clock=clients.clock
        )
        return await service.disconnect(account, OPERATOR)
