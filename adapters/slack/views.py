"""The Web API calls behind Slack's surfaces: ``views.publish``, ``views.open``, ``views.update``.

Each call names the workspace it is for; ``client_for`` gives that workspace's client (one bot
token: always the same client; installs: the team's own token), so the same code serves both.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient

log = logging.getLogger("adapters.slack.views")

ClientFor = Callable[[str], Awaitable[AsyncWebClient]]


def single_workspace(client: AsyncWebClient) -> ClientFor:
    """``client_for`` of a bridge with one bot token."""

    async def client_for(team_id: str) -> AsyncWebClient:
        return client

    return client_for


class SlackViews:
    """Implements ``bridge.home.HomeViews`` and ``bridge.modals.ModalViews``."""

    def __init__(self, client_for: ClientFor) -> None:
        self._client_for = client_for

    async def publish_home(self, team_id: str, user_id: str, view: dict[str, Any]) -> None:
        client = await self._client_for(team_id)
        await client.views_publish(user_id=user_id, view=view)

    async def update_view(self, team_id: str, view_id: str, view: dict[str, Any], view_hash: str) -> None:
        """Replace an open modal; with ``view_hash``, only if it is still the view of that hash."""
        client = await self._client_for(team_id)
        await client.views_update(view_id=view_id, view=view, hash=view_hash or None)


async def open_modal(client: AsyncWebClient, trigger_id: str, view: dict[str, Any]) -> tuple[str, str] | None:
    """Open a modal with a request's trigger id; its (view id, hash), or None when Slack refused.

    Called with the client Bolt gave the request (the requesting workspace's)."""
    try:
        response = await client.views_open(trigger_id=trigger_id, view=view)
    except Exception as exc:
        error = getattr(getattr(exc, "response", None), "get", lambda _k: None)("error")
        log.warning("modal not opened", extra={"error": str(error or type(exc).__name__)})
        return None
    opened = response.get("view") or {}
    return str(opened.get("id") or ""), str(opened.get("hash") or "")
