"""Install mode: each workspace's bot token, from the installation store, for Bolt and the core.

:class:`Workspaces` finds a workspace's installed bot (``authorize`` for Bolt: the team of the
*signed* request picks the token, nothing else does), refreshes a rotating token before it
expires (one refresh across instances: the store's claim; Slack's refresh tokens are single-use,
so one is never presented twice, and the client that presents it never retries), and handles
``app_uninstalled`` / ``tokens_revoked``: the token goes, the workspace's channels pause (their
history and queued messages stay) until a reinstall resumes them.

:class:`TeamSlack` is the core's ``SlackClient`` over those tokens: each call goes out with the
token of the workspace it names.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import aiohttp
from cachetools import TTLCache
from slack_bolt.authorization import AuthorizeResult
from slack_sdk.errors import SlackApiError
from slack_sdk.oauth.installation_store.models.bot import Bot
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from adapters.slack.api import SlackApi, web_client
from adapters.store.slack_installs import SlackInstallStore
from bridge.errors import SlackRefused
from bridge.media import FileUnavailable, MediaSource
from bridge.model import Button, SlackMember

log = logging.getLogger("adapters.slack.workspaces")

REFRESH_BEFORE = 300.0  # seconds before a rotating token expires that it is refreshed
CACHE_SECONDS = 5.0  # a workspace's bot is read from the store at most this often per instance
WAIT_FOR_OTHER_REFRESH = 5.0  # how long to wait for another instance's refresh to land
DAY = 86_400.0
EXPIRE_EVERY = 3600.0  # seconds between looks for messages that waited too long for a reinstall
NOT_INSTALLED = "the app is not installed in this workspace (it was removed); reinstall it to resume"


class Workspaces:
    """The installed workspaces' bots; ``oauth`` presents refresh tokens and must not retry."""

    def __init__(
        self,
        installs: SlackInstallStore,
        oauth: AsyncWebClient,
        *,
        client_id: str,
        client_secret: str,
        now: Callable[[], float],
        refresh_before: float = REFRESH_BEFORE,
    ) -> None:
        self.installs = installs
        self._oauth = oauth
        self._client_id = client_id
        self._client_secret = client_secret
        self._now = now
        self._refresh_before = refresh_before
        self._cache: TTLCache[str, Bot] = TTLCache(maxsize=10_000, ttl=CACHE_SECONDS)
        self._refreshing: dict[str, asyncio.Lock] = {}
        self._limited_until: dict[str, float] = {}  # team → when Slack's 429 on a refresh ends

    async def bot(self, team_id: str, enterprise_id: str | None = None) -> Bot | None:
        """The bot installed in ``team_id`` (its token fresh), or None when none is."""
        cached = self._cache.get(team_id)
        if cached is not None and not self._due(cached):
            return cached
        found = await self.installs.async_find_bot(enterprise_id=enterprise_id, team_id=team_id)
        if found is None and enterprise_id is None:
            found = await self.installs.find_team(team_id)  # the core names teams only
        if found is None:
            self._cache.pop(team_id, None)
            return None
        if self._due(found):
            found = await self._refreshed(found)
        self._cache[team_id] = found
        return found

    async def authorize(
        self, enterprise_id: str | None, team_id: str | None, is_enterprise_install: bool | None
    ) -> AuthorizeResult | None:
        """Bolt's ``authorize``: the signed request's own workspace's bot, or None (not installed)."""
        if not team_id or is_enterprise_install:
            return None  # org-wide installs are refused at install time (docs/slack.md: Enterprise Grid)
        bot = await self.bot(team_id, enterprise_id)
        if bot is None or (bot.enterprise_id or None) != (enterprise_id or None):
            return None
        return AuthorizeResult(
            enterprise_id=bot.enterprise_id,
            team_id=bot.team_id,
            bot_token=bot.bot_token,
            bot_id=bot.bot_id,
            bot_user_id=bot.bot_user_id,
            bot_scopes=bot.bot_scopes,
        )

    async def uninstalled(
        self, enterprise_id: str | None, team_id: str, reason: str, event_time: float | None = None
    ) -> int:
        """``app_uninstalled`` / ``tokens_revoked``: delete the token, pause the channels.

        ``event_time`` is the event's (Slack's envelope): Slack redelivers an event whose first
        delivery timed out minutes later, as it was, so a removal can arrive after the workspace
        installed the app again; that newer install is kept."""
        paused = await self.installs.remove_workspace(
            enterprise_id, team_id, as_of=event_time, now=self._now()
        )
        self._cache.pop(team_id, None)
        if paused is None:
            log.warning(
                "Slack workspace's removal of the app came after it installed the app again: ignored",
                extra={"team": team_id, "reason": reason},
            )
            return 0
        log.warning(
            "Slack workspace removed the app: its token is deleted and its channels paused until it "
            "installs the app again",
            extra={"team": team_id, "reason": reason, "paused": paused},
        )
        return paused

    async def installed(self, team_id: str) -> int:
        """A workspace (re)installed the app: what its removal paused resumes."""
        self._cache.pop(team_id, None)
        resumed = await self.installs.resume_workspace(team_id)
        log.info("Slack workspace installed the app", extra={"team": team_id, "resumed": resumed})
        return resumed

    async def expire_waiting(self, retention_days: int) -> int:
        """Fail (with a reason) the X messages that waited ``RETENTION_DAYS`` for a workspace that
        removed the app; they stay in the store like any failed message."""
        failed = await self.installs.fail_waiting(
            self._now() - retention_days * DAY,
            f"the Slack workspace removed the app and did not install it again within {retention_days} days",
        )
        if failed:
            log.warning("X messages for a removed Slack workspace failed", extra={"failed": failed})
        return failed

    async def expire_forever(self, retention_days: int, every: float = EXPIRE_EVERY) -> None:
        """``expire_waiting`` at start and then every ``every`` seconds."""
        while True:
            try:
                await self.expire_waiting(retention_days)
            except Exception:
                log.exception("failing messages for removed workspaces failed; trying again later")
            await asyncio.sleep(every)

    def _due(self, bot: Bot) -> bool:
        expires = bot.bot_token_expires_at
        return bool(bot.bot_refresh_token and expires and expires - self._now() < self._refresh_before)

    async def _refreshed(self, bot: Bot) -> Bot:
        """The bot with a fresh token: refreshed here, or by another instance meanwhile."""
        lock = self._refreshing.setdefault(bot.team_id or "", asyncio.Lock())
        async with lock:  # one refresh per instance; the store's claim makes it one across them
            current = await self.installs.async_find_bot(enterprise_id=bot.enterprise_id, team_id=bot.team_id)
            if current is None or not self._due(current):
                return current or bot
            if self._now() < self._limited_until.get(bot.team_id or "", 0.0):
                return current  # still valid (refreshed early); Slack asked to wait
            claim = await self.installs.claim_refresh(current)
            if claim is None:
                return await self._awaited(current)
            return await self._refresh(current, claim)

    async def _refresh(self, bot: Bot, claim: str) -> Bot:
        assert bot.bot_refresh_token is not None
        try:
            response = await self._oauth.oauth_v2_access(
                client_id=self._client_id,
                client_secret=self._client_secret,
                grant_type="refresh_token",
                refresh_token=bot.bot_refresh_token,
            )
        except aiohttp.ClientConnectorError:
            await self.installs.release_refresh(bot, claim)  # never reached Slack: try again later
            log.warning("Slack token refresh: no connection; tried again later", extra={"team": bot.team_id})
            return bot
        except SlackApiError as exc:
            if exc.response.status_code != 429:
                return self._refresh_failed(bot, exc)
            # Rate limited: Slack answers before it looks at the request, so the refresh token
            # was not spent. Kept aside as spent, it cost the workspace its bridge once the
            # current token expired.
            await self.installs.release_refresh(bot, claim)
            given = str(exc.response.headers.get("Retry-After") or "")
            wait = float(given) if given.isdigit() else 1.0
            self._limited_until[bot.team_id or ""] = self._now() + wait
            log.warning(
                "Slack token refresh: rate limited; tried again later",
                extra={"team": bot.team_id, "wait": wait},
            )
            return bot
        except (aiohttp.ClientError, TimeoutError) as exc:
            return self._refresh_failed(bot, exc)
        expires_at = self._now() + float(response.get("expires_in") or 0)
        token, refresh = str(response["access_token"]), str(response["refresh_token"])
        await self.installs.save_refreshed(bot, claim, token, refresh, expires_at)
        log.info("Slack token refreshed", extra={"team": bot.team_id})
        fresh = await self.installs.async_find_bot(enterprise_id=bot.enterprise_id, team_id=bot.team_id)
        return fresh or bot

    def _refresh_failed(self, bot: Bot, exc: Exception) -> Bot:
        """Slack may have taken (or refused) the single-use refresh token: never present it again."""
        error = exc.response.get("error") if isinstance(exc, SlackApiError) else type(exc).__name__
        log.error(
            "Slack token refresh failed (%s): the workspace must install the app again once its "
            "current token expires",
            error,
            extra={"team": bot.team_id},
        )
        return bot

    async def _awaited(self, bot: Bot) -> Bot:
        """Another instance holds the refresh (or just finished it): its tokens once saved, else,
        after a short wait, the current token, which stays good until it expires."""
        while True:
            current = await self.installs.async_find_bot(enterprise_id=bot.enterprise_id, team_id=bot.team_id)
            if current is None or current.bot_token_expires_at != bot.bot_token_expires_at:
                return current or bot  # refreshed meanwhile (or removed)
            claimed_at = await self.installs.refresh_claimed_at(bot)
            if claimed_at is None or self._now() - claimed_at > WAIT_FOR_OTHER_REFRESH:
                # No refresh under way, or one whose outcome nobody learnt: its token may be spent,
                # so it is never tried again; the current token serves until it expires, then the
                # workspace installs the app again.
                return current
            await asyncio.sleep(0.1)


class InstallsReady:
    """Install mode's stand-in for ``SlackAuthorization``: each workspace's token comes with its
    install, so there is no start-up ``auth.test`` to wait for."""

    ready = True
    refused: str | None = None

    async def on_request(self) -> bool:
        return True

    async def keep_trying(self) -> None:
        return None

    def token_refused(self, reason: str) -> None:
        """A workspace removing the app concerns that workspace only (``Workspaces.uninstalled``)."""

    async def authorize(self) -> AuthorizeResult:
        raise RuntimeError("install mode authorizes each request by its team (Workspaces.authorize)")


class OAuthWebClient(AsyncWebClient):
    """``oauth.v2.access`` with the client id and secret in the POST body, which Slack accepts as
    it accepts HTTP Basic: slack-sdk builds Basic with aiohttp's deprecated ``BasicAuth``."""

    async def oauth_v2_access(
        self,
        *,
        client_id: str,
        client_secret: str,
        code: str | None = None,
        redirect_uri: str | None = None,
        grant_type: str | None = None,
        refresh_token: str | None = None,
        **kwargs: Any,
    ) -> AsyncSlackResponse:
        given = {
            "code": code,
            "redirect_uri": redirect_uri,
            "grant_type": grant_type,
            "refresh_token": refresh_token,
        }
        data = {"client_id": client_id, "client_secret": client_secret, **kwargs}
        data.update({name: value for name, value in given.items() if value is not None})
        return await self.api_call("oauth.v2.access", data=data)


# slack-sdk writes each call's request and answer at debug level whenever its logger's own level
# allows it (unset, it does): for oauth.v2.access that is the client secret and the code sent,
# the bot token and refresh token answered. This client's logger never goes below info.
OAUTH_CLIENT_LOG = logging.getLogger("adapters.slack.workspaces.oauth_client")
OAUTH_CLIENT_LOG.setLevel(logging.INFO)


def oauth_client(base_url: str, session: aiohttp.ClientSession) -> AsyncWebClient:
    """The client that exchanges codes and refresh tokens: no retries (a code or a refresh token
    presented twice is refused, and a refresh token lost with it), and no debug lines (they would
    hold the secret and the tokens: ``OAUTH_CLIENT_LOG``)."""
    return OAuthWebClient(base_url=base_url, session=session, retry_handlers=[], logger=OAUTH_CLIENT_LOG)


class TeamSlack:
    """``bridge.ports.SlackClient`` for many workspaces: each call with its workspace's token."""

    def __init__(self, workspaces: Workspaces, session: aiohttp.ClientSession, base_url: str) -> None:
        self._workspaces = workspaces
        self._session = session
        self._base_url = base_url
        self._apis: dict[str, tuple[str, SlackApi, AsyncWebClient]] = {}  # team → its token's clients
        self._tokenless = SlackApi(AsyncWebClient(base_url=base_url, session=session), session)

    async def api(self, team_id: str) -> SlackApi:
        """The ``SlackApi`` holding ``team_id``'s current token; ``SlackRefused`` when not installed."""
        return (await self._held(team_id))[1]

    async def client_for(self, team_id: str) -> AsyncWebClient:
        """``team_id``'s Web API client (its current token), for calls outside the core's port
        (views: App Home, modals); ``SlackRefused`` when the app is not installed there."""
        return (await self._held(team_id))[2]

    async def _held(self, team_id: str) -> tuple[str, SlackApi, AsyncWebClient]:
        bot = await self._workspaces.bot(team_id)
        if bot is None or not bot.bot_token:
            raise SlackRefused(NOT_INSTALLED)
        held = self._apis.get(team_id)
        if held is None or held[0] != bot.bot_token:
            client = web_client(bot.bot_token, self._base_url, self._session)
            poster = web_client(bot.bot_token, self._base_url, self._session, idempotent=False)
            held = (bot.bot_token, SlackApi(client, self._session, poster), client)
            self._apis[team_id] = held
        return held

    async def add_reaction(self, team_id: str, channel_id: str, ts: str, name: str) -> None:
        await (await self.api(team_id)).add_reaction(team_id, channel_id, ts, name)

    async def remove_reaction(self, team_id: str, channel_id: str, ts: str, name: str) -> None:
        await (await self.api(team_id)).remove_reaction(team_id, channel_id, ts, name)

    async def post_ephemeral(self, team_id: str, channel_id: str, user_id: str, text: str) -> None:
        await (await self.api(team_id)).post_ephemeral(team_id, channel_id, user_id, text)

    async def ask(
        self, team_id: str, channel_id: str | None, user_id: str, text: str, buttons: Sequence[Button]
    ) -> None:
        await (await self.api(team_id)).ask(team_id, channel_id, user_id, text, buttons)

    async def post_message(self, team_id: str, channel_id: str, text: str) -> str:
        return await (await self.api(team_id)).post_message(team_id, channel_id, text)

    async def post_as(
        self,
        team_id: str,
        channel_id: str,
        text: str,
        *,
        username: str,
        icon_url: str | None,
        metadata: dict[str, Any],
    ) -> str:
        api = await self.api(team_id)
        return await api.post_as(
            team_id, channel_id, text, username=username, icon_url=icon_url, metadata=metadata
        )

    async def upload_file(
        self, team_id: str, channel_id: str, filename: str, data: bytes, *, title: str
    ) -> str:
        return await (await self.api(team_id)).upload_file(team_id, channel_id, filename, data, title=title)

    async def update_message(self, team_id: str, channel_id: str, ts: str, text: str) -> None:
        await (await self.api(team_id)).update_message(team_id, channel_id, ts, text)

    async def delete_message(self, team_id: str, channel_id: str, ts: str) -> bool:
        return await (await self.api(team_id)).delete_message(team_id, channel_id, ts)

    async def find_posted(self, team_id: str, channel_id: str, event_id: str, oldest: float) -> str | None:
        return await (await self.api(team_id)).find_posted(team_id, channel_id, event_id, oldest)

    async def display_name(self, team_id: str, user_id: str) -> str:
        try:
            api = await self.api(team_id)
        except SlackRefused:
            return user_id
        return await api.display_name(team_id, user_id)

    async def member(self, team_id: str, user_id: str) -> SlackMember | None:
        try:
            api = await self.api(team_id)
        except SlackRefused:
            return None
        return await api.member(team_id, user_id)

    async def bot_in_channel(self, team_id: str, channel_id: str) -> bool | None:
        try:
            api = await self.api(team_id)
        except SlackRefused:
            return None
        return await api.bot_in_channel(team_id, channel_id)

    async def bot_name(self, team_id: str) -> str:
        try:
            api = await self.api(team_id)
        except SlackRefused:
            return "xdm"
        return await api.bot_name(team_id)

    async def respond(
        self,
        response_url: str,
        text: str,
        *,
        in_channel: bool = False,
        replace: bool = False,
        buttons: Sequence[Button] = (),
    ) -> None:
        # A response_url carries its own authority: no token needed.
        await self._tokenless.respond(
            response_url, text, in_channel=in_channel, replace=replace, buttons=buttons
        )

    async def download_file(self, team_id: str, file: Mapping[str, Any], *, max_bytes: int) -> bytes:
        return await (await self._file_api(team_id)).download_file(team_id, file, max_bytes=max_bytes)

    async def file_info(self, team_id: str, file_id: str) -> dict[str, Any]:
        return await (await self._file_api(team_id)).file_info(team_id, file_id)

    @contextlib.asynccontextmanager
    async def open_file(
        self, team_id: str, file: Mapping[str, Any], *, max_bytes: int
    ) -> AsyncIterator[MediaSource]:
        api = await self._file_api(team_id)
        async with api.open_file(team_id, file, max_bytes=max_bytes) as source:
            yield source

    async def _file_api(self, team_id: str) -> SlackApi:
        """The files calls' contract is ``FileUnavailable``: a removed workspace's files are."""
        try:
            return await self.api(team_id)
        except SlackRefused as exc:
            raise FileUnavailable(str(exc)) from exc

    def slack_file_host(self, url: str) -> bool:
        return self._tokenless.slack_file_host(url)
