"""The ``SlackClient`` port over slack_sdk's ``AsyncWebClient``."""

from __future__ import annotations

import logging
import time

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

log = logging.getLogger("adapters.slack_api")

NAME_TTL = 3600.0  # display names change rarely; an hour keeps users.info (Tier 4) quiet


def web_client(token: str, base_url: str, session: aiohttp.ClientSession | None = None) -> AsyncWebClient:
    """An AsyncWebClient that retries connection errors, 5xx and 429 (honouring Retry-After)."""
    return AsyncWebClient(
        token=token,
        base_url=base_url,
        session=session,
        retry_handlers=[
            AsyncConnectionErrorRetryHandler(max_retry_count=2),
            AsyncServerErrorRetryHandler(max_retry_count=2),
            AsyncRateLimitErrorRetryHandler(max_retry_count=3),
        ],
    )


class SlackApi:
    """Implements ``bridge.ports.SlackClient`` for one workspace's bot token."""

    def __init__(self, client: AsyncWebClient, session: aiohttp.ClientSession) -> None:
        self._client = client
        self._session = session
        self._names: dict[tuple[str, str], tuple[float, str]] = {}

    async def add_reaction(self, team_id: str, channel_id: str, ts: str, name: str) -> None:
        try:
            await self._client.reactions_add(channel=channel_id, timestamp=ts, name=name)
        except SlackApiError as exc:
            if exc.response.get("error") != "already_reacted":
                raise

    async def remove_reaction(self, team_id: str, channel_id: str, ts: str, name: str) -> None:
        try:
            await self._client.reactions_remove(channel=channel_id, timestamp=ts, name=name)
        except SlackApiError as exc:
            if exc.response.get("error") != "no_reaction":
                raise

    async def post_ephemeral(self, team_id: str, channel_id: str, user_id: str, text: str) -> None:
        await self._client.chat_postEphemeral(channel=channel_id, user=user_id, text=text)

    async def post_message(self, team_id: str, channel_id: str, text: str) -> None:
        await self._client.chat_postMessage(channel=channel_id, text=text)

    async def display_name(self, team_id: str, user_id: str) -> str:
        """The author's display name, else real name, else handle; cached for an hour."""
        key = (team_id, user_id)
        cached = self._names.get(key)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            response = await self._client.users_info(user=user_id)
        except SlackApiError as exc:
            log.warning("users.info failed", extra={"user": user_id, "error": exc.response.get("error")})
            return cached[1] if cached else user_id
        user = response.get("user") or {}
        profile = user.get("profile") or {}
        name = (
            profile.get("display_name")
            or profile.get("real_name")
            or user.get("real_name")
            or user.get("name")
            or user_id
        )
        self._names[key] = (now + NAME_TTL, str(name))
        return str(name)

    async def respond(self, response_url: str, text: str, *, in_channel: bool = False) -> None:
        webhook = AsyncWebhookClient(response_url, session=self._session)
        response = await webhook.send(
            text=text, response_type="in_channel" if in_channel else "ephemeral", replace_original=False
        )
        if response.status_code >= 300:
            log.warning("response_url refused the reply", extra={"status": response.status_code})
