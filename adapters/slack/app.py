"""Bolt listeners: Slack payloads in, core calls out.

Bolt runs with ``process_before_response=True``: a message event is committed to
the outbox before Slack gets its 200 (if the commit fails Slack gets a 500 and
retries, so nothing is lost). Slash commands acknowledge at once and carry on
in a tracked background task.

Bolt would call ``auth.test`` lazily on the first event and, if that failed, answer
the event 200 with a "reinstall" text without running the listener: Slack would not
retry and the message would be lost. So :class:`SlackAuthorization` calls it at
start-up (retrying), caches the answer for Bolt, and the web handler answers 503
while it has none, so Slack retries.

A refused token (``invalid_auth``, ``token_revoked``…, or the ``app_uninstalled`` and
``tokens_revoked`` events) is not a blip: it is not retried, and ``/healthz`` says down
until an operator sets a new ``SLACK_BOT_TOKEN``. Events keep being answered (and
messages committed) with the identity already cached, so nothing Slack sends is lost.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import aiohttp
from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.logger.messages import warning_client_prioritized_and_token_skipped, warning_token_skipped
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.api import SLACK_TOKEN_REFUSED, SlackWebClient
from adapters.slack.workspaces import InstallsReady, Workspaces
from bridge.commands import CommandContext, CommandService
from bridge.connect import CANCEL_ACTION, CONFIRM_ACTION, ConnectAnswer, ConnectService
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
        # Likewise "token will be ignored" next to our ``authorize``: it is the same token.
        return record.getMessage() not in (
            warning_client_prioritized_and_token_skipped(),
            warning_token_skipped(),
        )


BOLT_LOG = logging.getLogger("adapters.slack.app.bolt")
BOLT_LOG.addFilter(_ClientWinsNotice())

# Events the manifest subscribes to besides messages (and app_uninstalled, tokens_revoked, which
# have their own listeners); acknowledged so Slack does not retry them.
QUIET_EVENTS = ("member_joined_channel", "member_left_channel")


AUTH_RETRY_BASE = 1.0  # seconds before the start-up auth.test is tried again; doubles
AUTH_RETRY_CAP = 60.0
AUTH_ON_REQUEST_EVERY = 2.0  # a request may try auth.test itself at most this often
AUTH_ON_REQUEST_TIMEOUT = 2.0  # and waits no longer (Slack wants an answer within 3 s)


class SlackNotAuthorized(Exception):
    """Bolt was asked to authorize a request before ``auth.test`` succeeded."""


class SlackAuthorization:
    """The bot's identity (``auth.test``), fetched once and cached for Bolt's ``authorize``."""

    def __init__(self, client: AsyncWebClient, *others: AsyncWebClient) -> None:
        """``client`` calls ``auth.test``; a refusal Slack gives it or ``others`` is noted."""
        self._client = client
        self._lock = asyncio.Lock()
        self._last_attempt = float("-inf")
        self.result: AuthorizeResult | None = None
        self.refused: str | None = None  # why Slack no longer accepts the bot token, for good
        for watched in (client, *others):
            if isinstance(watched, SlackWebClient):
                watched.on_token_refused = self.token_refused

    @property
    def ready(self) -> bool:
        return self.result is not None

    def token_refused(self, reason: str) -> None:
        """Slack refused the bot token for good (``reason``: its error, or the event that said so).

        Said once in the log; ``/healthz`` reports down from now on. Nothing is retried: only a
        new token (and a restart) helps.
        """
        if self.refused is not None:
            return
        self.refused = reason
        log.error(
            "Slack refuses the bot token (%s): nothing reaches Slack until SLACK_BOT_TOKEN holds the "
            "app's current Bot User OAuth Token (xoxb-…, on its OAuth & Permissions page; reinstall the "
            "app if it was removed) and the bridge is restarted",
            reason,
        )

    async def attempt(self, *, unless_tried_since: float | None = None) -> bool:
        """One ``auth.test``; True once authorized. Failures are logged, one line each.

        With ``unless_tried_since``, an attempt made since then (one this call waited for)
        stands: its failure is not followed at once by another call.
        """
        async with self._lock:
            if self.result is not None:
                return True
            if self.refused is not None:
                return False
            if unless_tried_since is not None and self._last_attempt >= unless_tried_since:
                return False
            self._last_attempt = time.monotonic()
            try:
                response = await self._client.auth_test()
            except SlackApiError as exc:
                reason = str(exc.response.get("error") or exc.response.status_code)
                if reason in SLACK_TOKEN_REFUSED:
                    self.token_refused(reason)  # a SlackWebClient has said so already
                    return False
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                reason = f"no answer ({type(exc).__name__})"
            else:
                self.result = AuthorizeResult.from_auth_test_response(
                    auth_test_response=response, bot_token=self._client.token
                )
                log.info(
                    "Slack authorized",
                    extra={"team": self.result.team_id, "bot_user_id": self.result.bot_user_id},
                )
                return True
            log.warning(
                "Slack auth.test failed: %s; Slack requests are answered 503 (Slack retries events) "
                "until it succeeds",
                reason,
            )
            return False

    async def keep_trying(self) -> None:
        """Start-up: try until authorized, backing off; requests may succeed sooner (``on_request``)."""
        delay = AUTH_RETRY_BASE
        while not await self.attempt() and self.refused is None:
            await asyncio.sleep(delay)
            delay = min(delay * 2, AUTH_RETRY_CAP)

    async def on_request(self) -> bool:
        """Authorized, or try now (briefly, and not more often than ``AUTH_ON_REQUEST_EVERY``)."""
        if self.result is not None:
            return True
        if self.refused is not None:
            return False
        recent = time.monotonic() - AUTH_ON_REQUEST_EVERY
        if not self._lock.locked() and self._last_attempt >= recent:
            return False
        # An attempt in flight (the start-up one, say) is waited for, not repeated.
        try:
            return await asyncio.wait_for(self.attempt(unless_tried_since=recent), AUTH_ON_REQUEST_TIMEOUT)
        except TimeoutError:
            return False

    async def authorize(self) -> AuthorizeResult:
        """Bolt's ``authorize``: the cached identity, never a call to Slack."""
        if self.result is None:
            raise SlackNotAuthorized("auth.test has not succeeded yet")
        return self.result


def scrub(text: str) -> str:
    """Replace lone surrogates (valid JSON, invalid UTF-8) so the text can be stored and sent."""
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace") if _has_surrogate(text) else text


_SURROGATE = re.compile("[\ud800-\udfff]")


def _has_surrogate(text: str) -> bool:
    # A regular expression, not a loop over the characters: this runs on every message's text
    # before its ack (a 4,000-character message took ~100 µs of the event loop that way).
    return _SURROGATE.search(text) is not None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _dicts(value: Any) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list):
        return ()
    # As parsed from this request's JSON body, not copied (nothing changes them): their lone
    # surrogates, if any, stay escaped wherever they are written as JSON (ASCII escapes), as they
    # did through the JSON round trip that used to copy each one here before the ack.
    return tuple(item for item in value if isinstance(item, dict))


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
        author_team_id=_str(event.get("user_team")),
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


def connect_answer(body: dict[str, Any], action: dict[str, Any]) -> ConnectAnswer | None:
    """Reduce a click on a connect question (``block_actions``); None when it is not well formed."""
    user, team = body.get("user"), body.get("team")
    user_id = _str(user.get("id")) if isinstance(user, dict) else None
    team_id = _str(team.get("id")) if isinstance(team, dict) else None
    if team_id is None and isinstance(user, dict):
        team_id = _str(user.get("team_id"))
    value = _str(action.get("value"))
    if not (user_id and team_id and value):
        return None
    return ConnectAnswer(
        pending_id=value,
        team_id=team_id,
        user_id=user_id,
        confirm=action.get("action_id") == CONFIRM_ACTION,
        response_url=_str(body.get("response_url")),
    )


def build_bolt_app(
    *,
    signing_secret: str,
    authorization: SlackAuthorization | InstallsReady,
    relay: Relay,
    commands: CommandService,
    spawn: Spawn,
    connections: ConnectService | None = None,
    open_modal: Callable[[AsyncWebClient, dict[str, Any]], Awaitable[bool]] | None = None,
    client: AsyncWebClient | None = None,
    workspaces: Workspaces | None = None,
) -> AsyncApp:
    """The Bolt app for one workspace, authorized by ``authorization``; or, with ``workspaces``
    (install mode), for every installed workspace, each request by its own team's token.

    ``open_modal`` opens the bridge modal for a `/xdm` with no text (``adapters.slack.surfaces``);
    without it, or when Slack refuses it, that command answers with the help. ``client`` is
    where the ``client`` Bolt gives each listener calls (SLACK_API_URL), with the request's token.

    Requests reach it verified: the web handler checks each signature once, so Bolt's own
    check is off.
    """

    async def authorize() -> AuthorizeResult:
        # A plain function: Bolt passes arguments by the names it finds in the signature.
        return await authorization.authorize()

    app = AsyncApp(
        signing_secret=signing_secret,
        authorize=authorize if workspaces is None else _by_team(workspaces),
        client=client,
        request_verification_enabled=False,
        process_before_response=True,
        raise_error_for_unhandled_request=False,
        logger=BOLT_LOG,
        # The name Bolt would take from this file's name anyway (its listeners' loggers are named
        # by it). Given, because without it Bolt reads it from inspect.stack(), which loads the
        # source lines of every frame of the caller's stack: ~0.25 s of CPU per app under pytest.
        name="app.py",
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

    async def token_gone(body: dict[str, Any], reason: str) -> None:
        if workspaces is None:
            authorization.token_refused(reason)
            return
        # The signed request's own team: a workspace can only ever remove itself.
        team = _str(body.get("team_id"))
        when = body.get("event_time")
        if team:
            await workspaces.uninstalled(
                _str(body.get("enterprise_id")),
                team,
                reason,
                float(when) if isinstance(when, int | float) and not isinstance(when, bool) else None,
            )

    @app.event("app_uninstalled")
    async def on_uninstalled(body: dict[str, Any]) -> None:
        await token_gone(body, "app_uninstalled")

    @app.event("tokens_revoked")
    async def on_tokens_revoked(body: dict[str, Any], event: dict[str, Any]) -> None:
        tokens = event.get("tokens")
        # User tokens may be revoked too; the bridge holds only the bot's.
        if isinstance(tokens, dict) and tokens.get("bot"):
            await token_gone(body, "tokens_revoked")

    @app.command("/xdm")
    async def on_xdm(ack: AsyncAck, command: dict[str, Any], client: AsyncWebClient) -> None:
        # First, before anything slow: the command's trigger id opens a modal for 3 s only.
        blank = not str(command.get("text") or "").strip()
        if blank and open_modal is not None and await open_modal(client, command):
            await ack()
            return
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
        if reply.buttons:
            await ack()  # a question: its follow-up shows it, buttons and all, through response_url
        else:
            await ack(text=reply.text, response_type="in_channel" if reply.in_channel else "ephemeral")
        if reply.follow_up is not None:
            spawn(reply.follow_up(), f"xdm-command-{ctx.channel_id}")

    if connections is not None:
        answering = connections

        @app.action(re.compile(f"^({CONFIRM_ACTION}|{CANCEL_ACTION})$"))
        async def on_connect_answer(ack: AsyncAck, body: dict[str, Any], action: dict[str, Any]) -> None:
            # Reaches here only signature-checked (the web handler); whose click it may be is
            # the core's question (``ConnectService.answer``).
            await ack()
            answer = connect_answer(body, action)
            if answer is None:
                log.info("malformed connect answer ignored")
                return
            spawn(answering.answer(answer), "xdm-connect-answer")

    return app


def _by_team(workspaces: Workspaces) -> Callable[..., Awaitable[AuthorizeResult]]:
    """Bolt's ``authorize`` in install mode: the token of the signed request's own team."""

    async def authorize(
        enterprise_id: str | None, team_id: str | None, context: dict[str, Any]
    ) -> AuthorizeResult | None:
        return await workspaces.authorize(enterprise_id, team_id, bool(context.get("is_enterprise_install")))

    # Bolt takes None for "not installed in this workspace" (its own store-backed authorize returns
    # it too) and answers with its reinstall message; its annotation says otherwise.
    return cast(Callable[..., Awaitable[AuthorizeResult]], authorize)


async def _ignore(body: dict[str, Any]) -> None:
    log.debug("event acknowledged", extra={"event_id": body.get("event_id")})
