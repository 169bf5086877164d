"""``xdm-bridge accounts disconnect``: what `/xdm disconnect` does, for an operator.

The CLI is its own process, so it builds the few pieces it needs (the store, an HTTP
session, X's OAuth client, the Slack client for the channel notices) and runs the
core's ``ConnectService.disconnect``. A running server notices within its account
cache's lifetime (``bridge.tokens.ACCOUNT_TTL``); until then a send with the revoked
token is refused by X and parks like any other.
"""

from __future__ import annotations

import time

import aiohttp

from adapters.slack.api import SlackApi, web_client
from adapters.slack.workspaces import TeamSlack, Workspaces
from adapters.slack.workspaces import oauth_client as slack_oauth_client
from adapters.store.crypto import TokenCipher
from adapters.store.select import AnyStore, make_store
from adapters.store.slack_installs import SlackInstallStore
from adapters.x.api import XApiClient
from adapters.x.oauth import oauth_client
from bridge.connect import OPERATOR, ConnectService, Disconnected
from bridge.scheduler import SystemClock
from bridge.settings import Settings


class NoSuchAccount(Exception):
    """The id names no account, or one already disconnected; ``str`` says which."""


def _slack(settings: Settings, store: AnyStore, session: aiohttp.ClientSession) -> SlackApi | TeamSlack:
    """The channel notices go out with the bot token, or (install mode) each workspace's own."""
    if not settings.slack_install_mode:
        return SlackApi(web_client(settings.bot_token, settings.slack_api_url, session), session)
    assert settings.slack_client_id and settings.slack_client_secret
    installs = SlackInstallStore(store.engine, TokenCipher(settings.encryption_keys), time.time)
    workspaces = Workspaces(
        installs,
        slack_oauth_client(settings.slack_api_url, session),
        client_id=settings.slack_client_id,
        client_secret=settings.slack_client_secret,
        now=time.time,
    )
    return TeamSlack(workspaces, session, settings.slack_api_url)


async def disconnect(settings: Settings, account_id: int) -> Disconnected:
    """Revoke, delete the tokens, pause the account's mappings and tell their channels.

    The database must exist (the caller checks: a typo must not create an empty one).
    """
    store = make_store(settings)  # SQLite, or PostgreSQL with DATABASE_URL
    await store.open()
    try:
        async with aiohttp.ClientSession() as session:
            account = await store.get_account(account_id)
            if account is None:
                raise NoSuchAccount(f"no X account with id {account_id} (see `xdm-bridge accounts`)")
            if account.disconnected:
                raise NoSuchAccount(f"account {account_id} (@{account.x_username}) is already disconnected")
            service = ConnectService(
                store=store,
                oauth=oauth_client(session, settings),
                x=XApiClient(session, settings.x_api_url, timeout=settings.x_timeout_seconds),
                slack=_slack(settings, store, session),
                clock=SystemClock(),
            )
            return await service.disconnect(account, OPERATOR)
    finally:
        await store.close()
