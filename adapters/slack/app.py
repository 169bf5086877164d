"""Bolt listeners: Slack payloads in, core calls out.

Bolt runs with ``process_before_response=True``: a message event is committed to
the outbox before Slack gets its 200 (if the commit fails Slack gets a 500 and
retries, so nothing is lost). Slash commands acknowledge at once and carry on
in a tracked background task.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_bolt.logger.messages import warning_client_prioritized_and_token_skipped
from slack_sdk.web.async_client import AsyncWebClient

from bridge.commands import CommandContext, CommandService
from bridge.model import IncomingMessage, MessageChange
from bridge.relay import Relay

log = logging.getLogger("adapters.slack.app")

Spawn = Callable[[Awaitable[None], str], None]


class _ClientWinsNotice(logging.Filter):
    """Drops Bolt's "As you gave `client` as well, `token` will be unused" on every start.

    Bolt reads ``SLACK_BOT_TOKEN`` from the environment by itself, even when given a client,
    and there is no argument that stops it. The client we give it carries the token Settings
    read from that same variable, so the notice tells an operator nothing.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != warning_client_prioritized_and_token_skipped()


BOLT_LOG = logging.getLogger("adapters.slack.app.bolt")
BOLT_LOG.addFilter(_ClientWinsNotice())

# Events the manifest subscribes to besides messages; acknowledged so Slack does not retry them.
QUIET_EVENTS = ("member_joined_channel", "member_left_channel", "app_uninstalled", "tokens_revoked")


def scrub(text: str) -> str:
    """Replace lone surrogates (valid JSON, invalid UTF-8) so the text can be stored and sent."""
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace") if _has_surrogate(text) else text


def _has_surrogate(text: str) -> bool:
    return any("\ud800" <= ch <= "\udfff" for ch in text)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _dicts(value: Any) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list):
        return ()
    # Round-trip through JSON with ASCII escapes: drops nothing, and lone surrogates stay escaped.
    return tuple(json.loads(scrub(json.dumps(item))) for item in value if isinstance(item, dict))


def incoming_message(body: dict[str, Any], event: dict[str, Any]) -> IncomingMessage | None:
    """Reduce a Slack ``message`` event to what the core needs; None when it is not well formed."""
    team = _str(body.get("team_id")) or _str(event.get("team"))
    channel, ts = _str(event.get("channel")), _str(event.get("ts"))
    user, subtype, bot_id = event.get("user"), event.get("subtype"), event.get("bot_id")
    thread_ts, text = event.get("thread_ts"), event.get("text", "")
    optional = (user, subtype, bot_id, thread_ts)
    if not (team and channel and ts) or any(v is not None and not isinstance(v, str) for v in optional):
        return None
    if text is not None and not isinstance(text, str):
        return None
    return IncomingMessage(
        team_id=team,
        channel_id=channel,
        ts=ts,
        user_id=user,
        text=scrub(text or ""),
        event_id=_str(body.get("event_id")),
        subtype=subtype,
        bot_id=bot_id,
        thread_ts=thread_ts,
        blocks=_dicts(event.get("blocks")),
        files=_dicts(event.get("files")),
    )


def message_change(body: dict[str, Any], event: dict[str, Any]) -> MessageChange | None:
    """Reduce a ``message_changed`` event; None when it lacks what an edit needs."""
    new, old = event.get("message"), event.get("previous_message")
    team, channel = body.get("team_id"), event.get("channel")
    if not (
        isinstance(new, dict) and isinstance(old, dict) and isinstance(team, str) and isinstance(channel, str)
    ):
        return None
    ts = new.get("ts") or old.get("ts")
    if not isinstance(ts, str):
        return None
    return MessageChange(
        team_id=team,
        channel_id=channel,
        ts=ts,
        event_ts=str(event.get("ts") or event.get("event_ts") or ts),
        text=scrub(str(new.get("text") or "")),
        previous_text=scrub(str(old.get("text") or "")),
        user_id=_str(new.get("user")),
        bot_id=_str(new.get("bot_id")),
        blocks=_dicts(new.get("blocks")),
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
        logger=BOLT_LOG,
    )

    @app.event("message")
    async def on_message(body: dict[str, Any], event: dict[str, Any]) -> None:
        subtype = event.get("subtype")
        if subtype == "message_changed":
            change = message_change(body, event)
            if change is not None:
                await relay.edit(change)
            return
        if subtype == "message_deleted":
            team = str(body.get("team_id") or "")
            deleted, channel = event.get("deleted_ts"), event.get("channel")
            if team and isinstance(deleted, str) and isinstance(channel, str):
                await relay.delete(team, channel, deleted, str(event.get("ts") or deleted))
            return
        message = incoming_message(body, event)
        if message is None:
            log.info("malformed message event ignored", extra={"event_id": str(body.get("event_id"))[:40]})
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
            team_name=str(command.get("team_domain") or ""),
        )
        reply = await commands.handle(ctx, scrub(str(command.get("text") or "")))
        await ack(text=reply.text, response_type="in_channel" if reply.in_channel else "ephemeral")
        if reply.follow_up is not None:
            spawn(reply.follow_up(), f"xdm-command-{ctx.channel_id}")

    return app


async def _ignore(body: dict[str, Any]) -> None:
    log.debug("event acknowledged", extra={"event_id": body.get("event_id")})
