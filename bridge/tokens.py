"""Access tokens that are fresh when used.

X access tokens live two hours and refresh tokens rotate: each refresh returns
a new one and the old one stops working. So refreshes are serialised per
account (one ``asyncio.Lock`` each in this process, and the store's
``refresh_lock`` across instances sharing a database), the account is re-read
under the lock (through the lock's own row handle: the lock may hold a database
connection, and must never wait for another), and
the new pair is saved before the access token is used: a crash after X rotated
the token but before we saved it is the only way to lose it.

The worker asks for an account on every send, so accounts are kept here for a
short while: every change this process makes (a refresh, a refusal, a
reconnection through ``forget``) updates the copy at once, and the time limit
covers changes made from outside (the CLI).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import NoReturn, TypeVar

from bridge.errors import XAuthExpired, XAuthRevoked, XTransient
from bridge.model import Account
from bridge.ports import AccountStore, Clock, LockedAccount, XOAuth

log = logging.getLogger("bridge.tokens")

REFRESH_LEEWAY = 120.0  # refresh this long before expiry, so a send never carries a dying token
ACCOUNT_TTL = 30.0  # how long a cached account is trusted without reading it again

RevokedHook = Callable[[Account, str], Awaitable[None]]
T = TypeVar("T")


class TokenManager:
    """Hands out usable access tokens; marks accounts for reconnection when X refuses a refresh."""

    def __init__(self, store: AccountStore, oauth: XOAuth, clock: Clock, on_revoked: RevokedHook) -> None:
        self._store = store
        self._oauth = oauth
        self._clock = clock
        self._on_revoked = on_revoked
        self._locks: dict[int, asyncio.Lock] = {}
        self._accounts: dict[int, tuple[float, Account]] = {}

    async def account(self, account_id: int) -> Account | None:
        """The account (None once disconnected), read from the database at most every ``ACCOUNT_TTL``."""
        now = self._clock.now()
        cached = self._accounts.get(account_id)
        if cached is not None and 0.0 <= now - cached[0] < ACCOUNT_TTL:
            return cached[1]
        account = await self._store.get_account(account_id)
        self._remember(account_id, account)
        return account

    def forget(self, account_id: int) -> None:
        """The account changed elsewhere (reconnected): read it again next time."""
        self._accounts.pop(account_id, None)

    def _remember(self, account_id: int, account: Account | None) -> None:
        if account is None:
            self._accounts.pop(account_id, None)
        else:
            self._accounts[account_id] = (self._clock.now(), account)

    def _lock(self, account_id: int) -> asyncio.Lock:
        return self._locks.setdefault(account_id, asyncio.Lock())

    def _fresh(self, account: Account) -> bool:
        expires_at = account.tokens.expires_at
        return expires_at is None or expires_at - REFRESH_LEEWAY > self._clock.now()

    async def access_token(self, account: Account) -> str:
        """A token good for the next request, refreshing first when it is about to expire."""
        if account.needs_reconnect:
            raise XAuthRevoked("the X account needs to be reconnected")
        if self._fresh(account):
            return account.tokens.access_token
        return await self._refreshed(account, self._fresh)

    async def call(
        self, account: Account, request: Callable[[str], Awaitable[T]], *, token: str | None = None
    ) -> T:
        """Run one X request with a usable token; on a 401, refresh once and run it again.

        Every X call the bridge makes on an account's behalf goes through here (sends,
        read-backs, uploads, deletes, lookups), so a token X stopped accepting is refreshed
        in one place. A refresh X refuses flags the account and tells its owner
        (``XAuthRevoked``); a 401 to the token just refreshed is not proof of that, so it is
        ``XTransient``: the caller tries again later.

        ``token`` is one the caller already fetched with ``access_token``.
        """
        token = token if token is not None else await self.access_token(account)
        try:
            return await request(token)
        except XAuthExpired:
            fresh = await self.after_unauthorized(account, token)
        try:
            return await request(fresh)
        except XAuthExpired as exc:
            log.warning("X refused a freshly refreshed token", extra={"account_id": account.id})
            raise XTransient(
                f"X refused the account's new token too ({exc})", status=exc.status, facts=exc.facts
            ) from exc

    async def after_unauthorized(self, account: Account, rejected: str) -> str:
        """X said 401 to ``rejected``: refresh once (unless someone already has) and return the new token."""
        return await self._refreshed(account, lambda current: current.tokens.access_token != rejected)

    async def _refreshed(self, account: Account, usable: Callable[[Account], bool]) -> str:
        """Under the account's refresh lock: the token someone else just got if ``usable``, else a
        new one. X refusing the refresh is told to the owner once the lock is released (telling
        them needs Slack, and perhaps the store, which the lock must not wait on)."""
        try:
            async with self._lock(account.id), self._store.refresh_lock(account.id) as row:
                current = await self._reload(account, row)
                if usable(current):
                    return current.tokens.access_token
                return await self._refresh(current, row)
        except _Refused as refused:
            await self._on_revoked(refused.account, refused.reason)
            raise XAuthRevoked(refused.reason) from None

    async def _reload(self, account: Account, row: LockedAccount) -> Account:
        current = await row.read()
        self._remember(account.id, current)
        if current is None:
            raise XAuthRevoked("the X account was disconnected")
        if current.needs_reconnect:
            raise XAuthRevoked("the X account needs to be reconnected")
        return current

    async def _refresh(self, account: Account, row: LockedAccount) -> str:
        refresh_token = account.tokens.refresh_token
        if not refresh_token:
            await self._flag(account, row, "X gave no refresh token (was offline.access granted?)")
        try:
            tokens = await self._oauth.refresh(refresh_token)
        except XAuthRevoked as exc:
            await self._flag(account, row, str(exc))
        except XTransient:
            log.warning("token refresh failed for now; will retry", extra={"account_id": account.id})
            raise
        await row.save_tokens(tokens)
        self._remember(account.id, replace(account, tokens=tokens))
        log.info("refreshed X token", extra={"account_id": account.id})
        return tokens.access_token

    async def _flag(self, account: Account, row: LockedAccount, reason: str) -> NoReturn:
        await row.flag_reconnect()
        self._remember(account.id, replace(account, needs_reconnect=True))
        log.warning("X account needs reconnection", extra={"account_id": account.id, "reason": reason})
        raise _Refused(account, reason)


class _Refused(Exception):
    """X refused an account's refresh (carried out of the refresh lock to tell its owner)."""

    def __init__(self, account: Account, reason: str) -> None:
        super().__init__(reason)
        self.account = account
        self.reason = reason
