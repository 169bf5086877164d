"""Finishing `/xdm connect`: the OAuth callback, and telling people about their accounts."""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn, Protocol

from bridge.errors import OAuthBrowserError, OAuthScopeError, OAuthStateError, SlackUnreachable, XError
from bridge.model import Account, Button, ChannelMapping, OAuthState, PendingConnection, TokenSet, XUser
from bridge.ports import AccountStore, Clock, ConnectFlowStore, OutboxRelease, SlackClient, XClient, XOAuth
from bridge.retention import X_EVENT_WINDOW_DAYS
from bridge.settings import SCOPES

log = logging.getLogger("bridge.connect")


OPERATOR = "operator"  # ``by`` when the CLI disconnects an account
PENDING_TTL = 300.0  # seconds the Slack user has to confirm an authorization made in a browser
CONFIRM_ACTION = "xdm_connect_confirm"  # the buttons' action_ids (Slack interactivity)
CANCEL_ACTION = "xdm_connect_cancel"


class ConnectStore(AccountStore, ConnectFlowStore, OutboxRelease, Protocol):
    """The roles the connect flow uses: accounts, OAuth states and pending connections, held rows."""


@dataclass(frozen=True)
class ConnectAnswer:
    """A click on a connect question: which button, on which pending connection, by whom."""

    pending_id: str
    team_id: str
    user_id: str
    confirm: bool
    response_url: str | None


def missing_scopes(granted: str) -> list[str]:
    """The scopes the bridge asks for that X's token answer (``scope``, space-separated) left out.

    An answer without ``scope`` grants what was asked (RFC 6749 §5.1), so nothing is missing.
    """
    if not granted.strip():
        return []
    given = set(granted.split())
    return [scope for scope in SCOPES if scope not in given]


def browser_hash(browser_key: str) -> str:
    """What the store keeps of a browser's cookie: enough to recognise it, useless to steal."""
    return hashlib.sha256(browser_key.encode()).hexdigest()


@dataclass(frozen=True)
class Disconnected:
    """What disconnecting an account did."""

    account: Account
    paused: list[ChannelMapping]
    revoked: bool  # X confirmed the revocation of every token we held


def who(by: str) -> str:
    """How an announcement names the person (or operator) who acted."""
    return "The bridge's operator" if by == OPERATOR else f"<@{by}>"


def held_notice(mapping: ChannelMapping, account: Account) -> str:
    """What a channel held for another X account is told (also what `/xdm status` says there)."""
    old = mapping.held_for_username or mapping.held_for
    return (
        f":double_vertical_bar: <@{account.slack_user_id}> now connects X account @{account.x_username}, "
        f"not @{old}, and this channel is bridged to @{old}'s conversation: it stays paused, so "
        f"nothing is sent there as @{account.x_username}. Messages posted here wait for @{old} "
        f"(they go if @{old} is connected again). To bridge this channel as @{account.x_username}, "
        "run `/xdm unlink`, then `/xdm link` or `/xdm dm`."
    )


def consent_text(account: str, retention_days: int) -> str:
    """What a person agrees to by connecting ``account`` (``@handle``, or words for the X account
    not yet chosen): shown on the page before X, and in the question whose click binds it."""
    return (
        f"Channels you bridge will send X direct messages as {account}, and the direct messages "
        f"of those conversations, yours and the other people's, will be posted in those Slack "
        f"channels, where every member of the channel can read them. The bridge keeps its own "
        f"copy for {max(retention_days, X_EVENT_WINDOW_DAYS)} days (Slack keeps the posts as the "
        "workspace keeps messages); `/xdm disconnect` stops it at any time."
    )


@dataclass(frozen=True)
class Consent:
    """Who agreed to what, and when: kept for X's Developer Policy (consent before storing DMs)."""

    team_id: str
    slack_user_id: str
    x_user_id: str
    x_username: str
    text: str
    given_at: float


class Consents(Protocol):
    """Role store: the consents given."""

    async def record_consent(self, consent: Consent) -> None: ...

    async def consents_of(self, team_id: str, slack_user_id: str) -> list[Consent]: ...


class ConnectService:
    """Completes authorizations started by `/xdm connect`, and disconnects accounts."""

    def __init__(
        self,
        *,
        store: ConnectStore,
        oauth: XOAuth,
        x: XClient,
        slack: SlackClient,
        clock: Clock,
        on_connected: Callable[[Account], None] = lambda account: None,
        on_disconnected: Callable[[Account], None] = lambda account: None,
        consents: Consents | None = None,
        retention_days: int = 30,
    ) -> None:
        self._consents = consents
        self._retention_days = retention_days
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
    ) -> PendingConnection | None:
        """Finish one authorization in the browser that confirmed it (``browser_key``, its cookie).

        Nothing is bound yet: the tokens wait as a ``PendingConnection`` and the Slack user who
        ran `/xdm connect` is asked in Slack (``answer`` binds on their click). Whoever opened
        the link chose the X account, so only that Slack user's click may bind it to them.

        Raises ``OAuthBrowserError`` without that cookie and ``OAuthStateError`` for a bad, used
        or expired state: nothing is stored then. Returns None when the user declined on X (they
        are told in Slack). ``OAuthScopeError`` when X granted too little; other failures (X
        refusing the code) propagate as ``XError``/``XAuthRevoked`` after the user has been told.
        """
        if not browser_key:
            raise OAuthBrowserError(
                "This connection can only be finished in the browser where it was confirmed on the "
                "bridge's page, and this browser did not confirm it. Nothing was connected."
            )
        flow = (
            await self._store.consume_oauth_state(state, self._clock.now(), browser_hash(browser_key))
            if state
            else None
        )
        if flow is None:
            raise OAuthStateError(
                "This link is not valid: it was already used, has expired, or was not issued by this bridge."
            )
        await self.discard_expired()
        if error or not code:
            log.info("X authorization declined", extra={"team": flow.team_id, "error": error})
            await self._tell(flow.response_url, flow, "X authorization was cancelled; nothing was connected.")
            return None
        try:
            tokens = await self._oauth.exchange(code, flow.code_verifier)
        except Exception as exc:
            await self._tell(flow.response_url, flow, f":x: Connecting your X account failed: {exc}")
            raise
        missing = missing_scopes(tokens.scope)
        if missing:
            await self._refuse_grant(flow, tokens, missing)
        try:
            user = await self._x.me(tokens.access_token)
        except Exception as exc:
            await self._tell(flow.response_url, flow, f":x: Connecting your X account failed: {exc}")
            raise
        pending = PendingConnection(
            id=secrets.token_urlsafe(24),
            team_id=flow.team_id,
            slack_user_id=flow.slack_user_id,
            channel_id=flow.channel_id,
            response_url=flow.response_url,
            x_user=user,
            tokens=tokens,
            expires_at=self._clock.now() + PENDING_TTL,
        )
        await self._store.save_pending_connection(pending)
        await self._ask(pending)
        log.info(
            "X authorized; waiting for the Slack user's confirmation",
            extra={"team": flow.team_id, "x_user_id": user.id},
        )
        return pending

    async def _ask(self, pending: PendingConnection) -> None:
        """Ask the Slack user (in the channel of their `/xdm connect`, else in a DM) to confirm."""
        text = (
            f"Your `/xdm connect` link was completed in a browser with X account "
            f"*@{pending.x_user.username}*. Confirm to connect @{pending.x_user.username} to your "
            f"Slack account. {consent_text(f'@{pending.x_user.username}', self._retention_days)} If you "
            f"did not just approve @{pending.x_user.username} on X yourself, press Cancel (someone "
            f"else opened your link). This question expires in {int(PENDING_TTL // 60)} minutes."
        )
        buttons = (
            Button(CONFIRM_ACTION, f"Connect @{pending.x_user.username}", pending.id, "primary"),
            Button(CANCEL_ACTION, "Cancel", pending.id, "danger"),
        )
        where = [pending.channel_id, None] if pending.channel_id else [None]
        for channel in where:
            try:
                await self._slack.ask(pending.team_id, channel, pending.slack_user_id, text, buttons)
                return
            except Exception as exc:  # not in that channel, say: a DM reaches them
                log.warning(
                    "could not ask the Slack user to confirm",
                    extra={"channel": channel or "dm", "error": type(exc).__name__},
                )
        # Nobody can confirm it: give X's grant back now rather than when it expires.
        await self._store.take_pending_connection(
            pending.id, pending.team_id, pending.slack_user_id, self._clock.now()
        )
        await self._revoke(pending.tokens, None)
        raise SlackUnreachable(
            "The bridge could not ask you in Slack to confirm this X account, so nothing was "
            "connected. Run /xdm connect in a channel the bridge's bot is in, and try again."
        )

    async def answer(self, choice: ConnectAnswer) -> None:
        """A click on a connect question's Confirm or Cancel (signature already checked).

        Only the Slack user the question was for may answer it, once, before it expires;
        Confirm binds the X account to them, Cancel revokes X's grant.
        """
        await self.discard_expired()
        now = self._clock.now()
        found = await self._store.get_pending_connection(choice.pending_id, now)
        if found is not None and (found.team_id, found.slack_user_id) != (choice.team_id, choice.user_id):
            log.warning(
                "connect answer refused: clicked by another Slack user",
                extra={"team": choice.team_id, "user": choice.user_id},
            )
            await self._reply(
                choice.response_url,
                f":no_entry: This question is for <@{found.slack_user_id}>: only they can connect an X "
                "account to their Slack account. Nothing was changed.",
            )
            return
        taken = await self._store.take_pending_connection(
            choice.pending_id, choice.team_id, choice.user_id, now
        )
        if taken is None:
            await self._reply(
                choice.response_url,
                "This connection was already answered or has expired; nothing was changed. "
                "Run `/xdm connect` to start again.",
            )
            return
        if not choice.confirm:
            revoked = await self._revoke(taken.tokens, None)
            log.info("X connection cancelled in Slack", extra={"team": taken.team_id, "revoked": revoked})
            await self._reply(
                choice.response_url,
                f"Cancelled: X account @{taken.x_user.username} was not connected, and the bridge "
                "gave back the access X granted it.",
                replace=True,
            )
            return
        await self._bind(taken, choice.response_url)

    async def discard_expired(self) -> int:
        """Revoke and forget connections nobody confirmed in time; returns how many."""
        expired = await self._store.take_expired_pending_connections(self._clock.now())
        for pending in expired:
            await self._revoke(pending.tokens, None)
            log.info("unconfirmed X connection expired", extra={"team": pending.team_id})
        return len(expired)

    async def _bind(self, pending: PendingConnection, response_url: str | None) -> Account:
        """The Slack user confirmed: the X account is theirs from now on."""
        user, tokens = pending.x_user, pending.tokens
        if self._consents is not None:
            # X's Developer Policy: explicit consent before DMs are stored. The click that binds
            # is that consent; who gave it, when, and to which words is kept.
            await self._consents.record_consent(
                Consent(
                    pending.team_id,
                    pending.slack_user_id,
                    user.id,
                    user.username,
                    consent_text(f"@{user.username}", self._retention_days),
                    self._clock.now(),
                )
            )
        before = await self._store.account_for_user(pending.team_id, pending.slack_user_id)
        account = await self._store.save_account(pending.team_id, pending.slack_user_id, user, tokens)
        # Before anything is released: what belongs to another X account must not go as this one.
        previous = XUser(before.x_user_id, before.x_username) if before is not None else user
        held = await self._store.hold_for_previous_account(account.id, previous, user, self._clock.now())
        if before is not None and before.x_user_id != user.id:
            # The previous X account's tokens were just overwritten: give its grant back, or X
            # keeps a live one the bridge no longer knows of (and `/xdm disconnect` cannot reach).
            revoked = await self._revoke(before.tokens, before.id)
            log.info(
                "previous X account's grant given back", extra={"account_id": before.id, "revoked": revoked}
            )
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
        if held:
            channels = ", ".join(f"<#{m.channel_id}>" for m in held)
            tail += (
                f" {channels} stay paused: they are bridged to @{previous.username}'s conversations, "
                "not this account's (`/xdm status` there says how to map them again)."
            )
        # The worker and the reader know first: by the time the person reads "connected", the
        # waiting messages are indeed on their way.
        self._on_connected(account)
        await self._reply(
            response_url,
            f":white_check_mark: Connected X account @{user.username}: "
            f"channels you bridge from now on send as this account.{tail}",
            replace=True,
            fallback=pending,
        )
        for mapping in resumed:
            await self._announce(
                mapping,
                f":arrow_forward: <@{account.slack_user_id}> connected X account @{user.username}: "
                f"this channel's bridge to X resumes, sending as @{user.username}. "
                "Messages that waited are on their way.",
            )
        for mapping in held:
            await self._announce(mapping, held_notice(mapping, account))
        return account

    async def disconnect(self, account: Account, by: str) -> Disconnected:
        """Delete the account's tokens, pause its mappings (announced in each channel), revoke at X.

        ``by`` is the Slack user who asked, or ``OPERATOR``. The tokens are deleted before X is
        asked, so a revocation X never confirms still leaves nothing usable behind. Waiting
        messages stay waiting; connecting again (the same Slack user) resumes them.
        """
        paused = await self._store.disconnect_account(account.id, self._clock.now(), by)
        self._on_disconnected(account)
        revoked = await self._revoke(account.tokens, account.id)
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

    async def _refuse_grant(self, pending: OAuthState, tokens: TokenSet, missing: list[str]) -> NoReturn:
        """X granted less than the bridge needs: give the grant back, tell the user, bind nothing."""
        log.warning(
            "X granted too few scopes; nothing connected",
            extra={"team": pending.team_id, "missing": " ".join(missing)},
        )
        await self._revoke(tokens, None)
        text = (
            f"X granted the bridge only part of the access it asks for: {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing, and without "
            f"{'it' if len(missing) == 1 else 'them'} X would refuse the bridge's DMs. "
            "Nothing was connected. Approve every permission X lists when you connect (if X did not "
            "offer them, the bridge's X app needs Direct Message permissions in the X developer portal)."
        )
        await self._tell(pending.response_url, pending, f":x: {text}")
        raise OAuthScopeError(text)

    async def _revoke(self, tokens: TokenSet, account_id: int | None) -> bool:
        """Ask X to revoke both tokens; True when X confirmed every revocation."""
        revoked = True
        # The refresh token first: it is the one that could mint new access tokens.
        for token in (tokens.refresh_token, tokens.access_token):
            if not token:
                continue
            try:
                await self._oauth.revoke(token)
            except XError as exc:
                revoked = False
                log.warning(
                    "X did not confirm a token revocation",
                    extra={"account_id": account_id, "error": type(exc).__name__, "status": exc.status},
                )
        return revoked

    async def _announce(self, mapping: ChannelMapping, text: str) -> None:
        try:
            await self._slack.post_message(mapping.team_id, mapping.channel_id, text)
        except Exception as exc:  # one channel's failure must not keep the others uninformed
            log.warning(
                "could not announce in the channel",
                extra={"channel": mapping.channel_id, "error": type(exc).__name__},
            )

    async def _reply(
        self,
        response_url: str | None,
        text: str,
        *,
        replace: bool = False,
        fallback: PendingConnection | None = None,
    ) -> None:
        """Answer a click through its ``response_url`` (``replace``: in place of the question)."""
        try:
            if response_url:
                await self._slack.respond(response_url, text, replace=replace)
            elif fallback is not None:
                await self._slack.post_message(fallback.team_id, fallback.slack_user_id, text)
        except Exception as exc:
            log.warning("could not answer in Slack", extra={"error": type(exc).__name__})

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
