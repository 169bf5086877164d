"""Finishing `/xdm connect`: the OAuth callback, and telling people about their accounts."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from bridge.errors import OAuthBrowserError, OAuthStateError, XError
from bridge.model import Account, Mapping, OAuthState
from bridge.ports import Clock, SlackClient, Store, XClient, XOAuth

log = logging.getLogger("bridge.connect")


OPERATOR = "operator"  # ``by`` when the CLI disconnects an account


def browser_hash(browser_key: str) -> str:
    """What the store keeps of a browser's cookie: enough to recognise it, useless to steal."""
    return hashlib.sha256(browser_key.encode()).hexdigest()


@dataclass(frozen=True)
class Disconnected:
    """What disconnecting an account did."""

    account: Account
    paused: list[Mapping]
    revoked: bool  # X confirmed the revocation of every token we held


def who(by: str) -> str:
    """How an announcement names the person (or operator) who acted."""
    return "The bridge's operator" if by == OPERATOR else f"<@{by}>"


class ConnectService:
    """Completes authorizations started by `/xdm connect`, and disconnects accounts."""

    def __init__(
        self,
        *,
        store: Store,
        oauth: XOAuth,
        x: XClient,
        slack: SlackClient,
        clock: Clock,
        on_connected: Callable[[Account], None] = lambda account: None,
        on_disconnected: Callable[[Account], None] = lambda account: None,
    ) -> None:
        self._store = store
        self._oauth = oauth
        self._x = x
        self._slack = slack
        self._clock = clock
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected

    async def pending(self, state: str) -> OAuthState:
        """The flow the connect page describes; raises ``OAuthStateError`` when it cannot go on."""
        found = await self._store.get_oauth_state(state, self._clock.now()) if state else None
        if found is None:
            raise OAuthStateError(
                "This link is not valid: it was already used or opened, has expired, "
                "or was not issued by this bridge."
            )
        return found

    async def confirm(self, state: str, browser_key: str) -> tuple[OAuthState, str]:
        """The person confirmed on the connect page: bind the flow to their browser's ``browser_key``.

        Returns the flow and X's authorize URL to send the browser to. Only that browser can
        complete the callback afterwards (``complete``).
        """
        found = (
            await self._store.confirm_oauth_state(state, self._clock.now(), browser_hash(browser_key))
            if state
            else None
        )
        if found is None:
            raise OAuthStateError(
                "This link is not valid: it was already used or confirmed, has expired, "
                "or was not issued by this bridge."
            )
        log.info("X connection confirmed in a browser", extra={"team": found.team_id})
        return found, self._oauth.authorize_url(found.state, found.code_verifier)

    async def complete(
        self, state: str, code: str | None, error: str | None, browser_key: str | None
    ) -> tuple[Account, OAuthState] | None:
        """Finish one authorization in the browser that confirmed it (``browser_key``, its cookie).

        Raises ``OAuthBrowserError`` without that cookie and ``OAuthStateError`` for a bad, used
        or expired state: nothing is stored then. Returns None when the user declined on X (they
        are told in Slack). Other failures (X refusing the code) propagate as
        ``XError``/``XAuthRevoked`` after the user has been told.
        """
        if not browser_key:
            raise OAuthBrowserError(
                "This connection can only be finished in the browser where it was confirmed on the "
                "bridge's page, and this browser did not confirm it. Nothing was connected."
            )
        pending = (
            await self._store.consume_oauth_state(state, self._clock.now(), browser_hash(browser_key))
            if state
            else None
        )
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
        resumed = await self._store.resume_mappings(account.id)
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
        for mapping in resumed:
            await self._announce(
                mapping,
                f":arrow_forward: <@{account.slack_user_id}> connected X account @{user.username}: "
                f"this channel's bridge to X resumes, sending as @{user.username}. "
                "Messages that waited are on their way.",
            )
        return account, pending

    async def disconnect(self, account: Account, by: str) -> Disconnected:
        """Delete the account's tokens, pause its mappings (announced in each channel), revoke at X.

        ``by`` is the Slack user who asked, or ``OPERATOR``. The tokens are deleted before X is
        asked, so a revocation X never confirms still leaves nothing usable behind. Waiting
        messages stay waiting; connecting again (the same Slack user) resumes them.
        """
        paused = await self._store.disconnect_account(account.id, self._clock.now(), by)
        self._on_disconnected(account)
        revoked = True
        # The refresh token first: it is the one that could mint new access tokens.
        for token in (account.tokens.refresh_token, account.tokens.access_token):
            if not token:
                continue
            try:
                await self._oauth.revoke(token)
            except XError as exc:
                revoked = False
                log.warning(
                    "X did not confirm a token revocation",
                    extra={"account_id": account.id, "error": type(exc).__name__, "status": exc.status},
                )
        log.info(
            "X account disconnected",
            extra={"account_id": account.id, "by": by, "paused": len(paused), "revoked": revoked},
        )
        for mapping in paused:
            await self._announce(
                mapping,
                f":double_vertical_bar: {who(by)} disconnected X account @{account.x_username}, so this "
                "channel's bridge to X is paused. Messages posted here wait, and go to X when "
                f"<@{account.slack_user_id}> runs `/xdm connect` again.",
            )
        return Disconnected(account, paused, revoked)

    async def _announce(self, mapping: Mapping, text: str) -> None:
        try:
            await self._slack.post_message(mapping.team_id, mapping.channel_id, text)
        except Exception as exc:  # one channel's failure must not keep the others uninformed
            log.warning(
                "could not announce in the channel",
                extra={"channel": mapping.channel_id, "error": type(exc).__name__},
            )

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
