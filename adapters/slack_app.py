"""Bolt listeners: Slack payloads in, core calls out.

Bolt runs with ``process_before_response=True``: a message event is committed to
the outbox before Slack gets its 200 (if the commit fails Slack gets a 500 and
retries, so nothing is lost). Slash commands acknowledge at once and carry on
in a tracked background task.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from bridge.commands import CommandContext, CommandService
from bridge.model import IncomingMessage
from bridge.relay import Relay

log = logging.getLogger("adapters.slack_app")

Spawn = Callable[[Awaitable[None], str], None]

# Events the manifest subscribes to besides messages; acknowledged so Slack does not retry them.
QUIET_EVENTS = ("member_joined_channel", "member_left_channel", "app_uninstalled", "tokens_revoked")


def incoming_message(body: dict[str, Any], event: dict[str, Any]) -> IncomingMessage:
    """Reduce a Slack ``message`` event to what the core needs."""
    return IncomingMessage(
        team_id=str(body.get("team_id") or event.get("team") or ""),
        channel_id=str(event.get("channel") or ""),
        ts=str(event.get("ts") or ""),
        user_id=event.get("user"),
        text=str(event.get("text") or ""),
        event_id=body.get("event_id"),
        subtype=event.get("subtype"),
        bot_id=event.get("bot_id"),
        thread_ts=event.get("thread_ts"),
        blocks=tuple(b for b in event.get("blocks") or () if isinstance(b, dict)),
        files=tuple(f for f in event.get("files") or () if isinstance(f, dict)),
    )


def build_bolt_app(
    *,
    signing_secret: str,
    client: AsyncWebClient,
    relay: Relay,
    commands: CommandService,
    spawn: Spawn,
) -> AsyncApp:
    """The Bolt app for one workspace (bot token in ``client``)."""
    app = AsyncApp(
        signing_secret=signing_secret,
        client=client,
        process_before_response=True,
        raise_error_for_unhandled_request=False,
        logger=logging.getLogger("adapters.slack_app.bolt"),
    )

    @app.event("message")
    async def on_message(body: dict[str, Any], event: dict[str, Any]) -> None:
        message = incoming_message(body, event)
        if not message.channel_id or not message.ts or not message.team_id:
            log.info(
                "message event without channel/ts/team ignored", extra={"event_id": body.get("event_id")}
            )
            return
        await relay.accept(message)

    for name in QUIET_EVENTS:
        app.event(name)(_ignore)

    @app.command("/xdm")
    async def on_xdm(ack: AsyncAck, command: dict[str, Any]) -> None:
        ctx = CommandContext(
            team_id=str(command.get("team_id") or ""),
            channel_id=str(command.get("channel_id") or ""),
            user_id=str(command.get("user_id") or ""),
            response_url=command.get("response_url"),
            channel_name=str(command.get("channel_name") or ""),
            user_name=str(command.get("user_name") or ""),
        )
        reply = await commands.handle(ctx, str(command.get("text") or ""))
        await ack(text=reply.text, response_type="in_channel" if reply.in_channel else "ephemeral")
        if reply.follow_up is not None:
            spawn(reply.follow_up(), f"xdm-command-{ctx.channel_id}")

    return app


async def _ignore(body: dict[str, Any]) -> None:
    log.debug("event acknowledged", extra={"event_id": body.get("event_id")})
