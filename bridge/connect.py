"""Finishing `/xdm connect`: the OAuth callback, and telling people about their accounts."""

from __future__ import annotations

import logging
from collections.abc import Callable

from bridge.errors import OAuthStateError
from bridge.model import Account, OAuthState
from bridge.ports import Clock, SlackClient, Store, XClient, XOAuth

log = logging.getLogger("bridge.connect")


class ConnectService:
    """Completes authorizations started by `/xdm connect`."""

    def __init__(
        self,
        *,
        store: Store,
        oauth: XOAuth,
        x: XClient,
        slack: SlackClient,
        clock: Clock,
        on_connected: Callable[[Account], None] = lambda account: None,
    ) -> None:
        self._store = store
        self._oauth = oauth
        self._x = x
        self._slack = slack
        self._clock = clock
        self._on_connected = on_connected

    async def complete(self, state: str, code: str | None, error: str | None) -> Account | None:
        """Finish one authorization. Raises ``OAuthStateError`` for a bad, used or expired state.

        Returns None when the user declined on X (they are told in Slack).
        Other failures (X refusing the code) propagate as ``XError``/``XAuthRevoked``
        after the user has been told.
        """
        pending = await self._store.consume_oauth_state(state, self._clock.now()) if state else None
        if pending is None:
            raise OAuthStateError(
                "This link is not valid: it was already used, has expired, or was not issued by this bridge."
            )
        if error or not code:
            log.info("X authorization declined", extra={"team": pending.team_id, "error": error})
            await self._tell(
                pending.response_url, pending, "X authorization was cancelled; nothing was connected."
            )
            return None
        try:
            tokens = await self._oauth.exchange(code, pending.code_verifier)
            user = await self._x.me(tokens.access_token)
        except Exception as exc:
            await self._tell(pending.response_url, pending, f":x: Connecting your X account failed: {exc}")
            raise
        account = await self._store.save_account(pending.team_id, pending.slack_user_id, user, tokens)
        released = await self._store.release_account(account.id, self._clock.now())
        log.info(
            "X account connected",
            extra={
                "team": pending.team_id,
                "account_id": account.id,
                "x_user_id": user.id,
                "released": released,
            },
        )
        tail = f" {released} waiting message(s) are on their way." if released else ""
        await self._tell(
            pending.response_url,
            pending,
            f":white_check_mark: Connected X account @{user.username}: "
            f"channels you bridge from now on send as this account.{tail}",
        )
        self._on_connected(account)
        return account

    async def _tell(self, response_url: str | None, pending: OAuthState, text: str) -> None:
        try:
            if response_url:
                await self._slack.respond(response_url, text)
            else:
                await self._slack.post_message(pending.team_id, pending.slack_user_id, text)
        except Exception as exc:  # the browser page still tells them
            log.warning("could not tell the user in Slack", extra={"error": str(exc)})

    async def needs_reconnect(self, account: Account, reason: str) -> None:
        """Tell an account's owner (in a DM from the bot) that X refused its refresh token."""
        text = (
            f":warning: X no longer accepts the bridge's access to @{account.x_username} ({reason}). "
            "Run `/xdm connect` to reconnect; messages waiting for it will be sent then."
        )
        try:
            await self._slack.post_message(account.team_id, account.slack_user_id, text)
        except Exception as exc:
            log.warning(
                "could not tell the account owner", extra={"account_id": account.id, "error": str(exc)}
            )
