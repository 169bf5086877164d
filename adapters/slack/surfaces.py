"""Bolt listeners for Slack's own surfaces: the App Home, the bridge modal, confirmations.

Every request reaches here signature-checked (the web handler). Who acts and where is read
from the payload Slack signed (its team, its user), never from a setting: with installs the
same listeners serve every workspace, each request with its own workspace's client.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.views import open_modal
from bridge.commands import CommandContext, CommandService
from bridge.confirm import ACTIONS as CONFIRM_ACTIONS
from bridge.confirm import Click, Confirmations
from bridge.home import CONNECT_ACTION, DISCONNECT_ACTION, NEW_BRIDGE_ACTION, UNLINK_ACTION, HomeService
from bridge.modals import BRIDGE_MODAL, PEOPLE_ACTION, ModalService, Origin, bridge_modal, text_modal

log = logging.getLogger("adapters.slack.surfaces")

Spawn = Callable[[Awaitable[None], str], None]


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def who(body: dict[str, Any]) -> tuple[str, str]:
    """(team, user) of an interaction payload, as Slack signed it; empty strings when absent."""
    user, team = body.get("user"), body.get("team")
    user_id = _str(user.get("id")) if isinstance(user, dict) else ""
    team_id = _str(team.get("id")) if isinstance(team, dict) else ""
    if not team_id and isinstance(user, dict):
        team_id = _str(user.get("team_id"))
    return team_id, user_id


@dataclass
class Surfaces:
    """The services behind the surfaces, and how to open the bridge modal from a request."""

    home: HomeService
    modals: ModalService
    confirmations: Confirmations
    commands: CommandService
    spawn: Spawn

    async def open_bridge_modal(
        self, client: AsyncWebClient, trigger_id: str, team_id: str, user_id: str, origin: Origin
    ) -> bool:
        """Open the modal at once (the trigger id lives 3 s), then fill in the conversations."""
        if not trigger_id:
            return False
        opened = await open_modal(client, trigger_id, bridge_modal(origin))
        if opened is None:
            return False
        view_id, view_hash = opened
        self.modals.fill_conversations(team_id, user_id, view_id, view_hash, origin)
        return True

    async def from_command(self, client: AsyncWebClient, command: dict[str, Any]) -> bool:
        """`/xdm` with no text: the modal, opened with the command's trigger id. False if not opened."""
        origin = Origin(
            channel_id=_str(command.get("channel_id")),
            response_url=_str(command.get("response_url")) or None,
            channel_name=_str(command.get("channel_name")),
        )
        return await self.open_bridge_modal(
            client,
            _str(command.get("trigger_id")),
            _str(command.get("team_id")),
            _str(command.get("user_id")),
            origin,
        )


def register(app: AsyncApp, surfaces: Surfaces) -> None:
    """Add the surfaces' listeners to the Bolt app."""
    home, modals, spawn = surfaces.home, surfaces.modals, surfaces.spawn

    @app.event("app_home_opened")
    async def on_home_opened(body: dict[str, Any], event: dict[str, Any]) -> None:
        team, user = _str(body.get("team_id")), _str(event.get("user"))
        if event.get("tab") == "home" and team and user:
            spawn(home.publish(team, user), f"xdm-home-{user}")

    @app.action(CONNECT_ACTION)
    async def on_connect(ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient) -> None:
        await ack()
        team, user = who(body)
        if not (team and user):
            return
        ctx = CommandContext(
            team_id=team, channel_id="", user_id=user, user_name=_str(body["user"].get("name"))
        )
        reply = await surfaces.commands.handle(ctx, "connect")
        await open_modal(client, _str(body.get("trigger_id")), text_modal("Connect X", reply.text))

    @app.action(NEW_BRIDGE_ACTION)
    async def on_new_bridge(ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient) -> None:
        await ack()
        team, user = who(body)
        if team and user:
            await surfaces.open_bridge_modal(client, _str(body.get("trigger_id")), team, user, Origin())

    @app.action(DISCONNECT_ACTION)
    async def on_disconnect(ack: AsyncAck, body: dict[str, Any]) -> None:
        await ack()
        team, user = who(body)
        if team and user:
            spawn(surfaces.confirmations.ask_disconnect(team, user), "xdm-ask-disconnect")

    @app.action(UNLINK_ACTION)
    async def on_unlink(ack: AsyncAck, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        team, user = who(body)
        channel = _str(action.get("value"))
        if team and user and channel:
            spawn(surfaces.confirmations.ask_unlink(team, user, channel), "xdm-ask-unlink")

    @app.action(re.compile(f"^({'|'.join(CONFIRM_ACTIONS)})$"))
    async def on_confirmation(ack: AsyncAck, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        team, user = who(body)
        if not (team and user):
            log.info("malformed confirmation click ignored")
            return
        channel, container = body.get("channel"), body.get("container")
        click = Click(
            action_id=_str(action.get("action_id")),
            value=_str(action.get("value")),
            team_id=team,
            user_id=user,
            response_url=_str(body.get("response_url")) or None,
            channel_id=(_str(channel.get("id")) if isinstance(channel, dict) else "")
            or (_str(container.get("channel_id")) if isinstance(container, dict) else ""),
        )
        spawn(surfaces.confirmations.answer(click), "xdm-confirmation")

    @app.options(PEOPLE_ACTION)
    async def on_people_typed(ack: AsyncAck, body: dict[str, Any]) -> None:
        team, user = who(body)
        options = await modals.people_options(team, user, _str(body.get("value"))) if team and user else []
        await ack(options=options)

    @app.view(BRIDGE_MODAL)
    async def on_bridge_submitted(ack: AsyncAck, body: dict[str, Any], view: dict[str, Any]) -> None:
        team, user = who(body)
        state = view.get("state") if isinstance(view.get("state"), dict) else {}
        values = state.get("values") if isinstance(state, dict) else None
        if not (team and user and isinstance(values, dict)):
            await ack(response_action="errors", errors={"xdm_people": "The submission was not complete."})
            return
        urls = body.get("response_urls")
        first = urls[0] if isinstance(urls, list) and urls and isinstance(urls[0], dict) else {}
        answer = await modals.submit(
            team,
            user,
            view,
            values,
            response_url=_str(first.get("response_url")) or None,
            user_name=_str(body["user"].get("name")),
        )
        await ack(**answer)
