"""Confirm / Cancel before the buttons that undo something: unlink a channel, disconnect an account.

A Home's Unlink or Disconnect button does not act: it asks (a direct message from the bot, with
Confirm and Cancel buttons, as the connect question does), and the Confirm click runs the same
code as the typed `/xdm unlink` and `/xdm disconnect`, with the same permission checks. A click
is honoured only from the person the question was for (the value names them; Slack's signature,
checked before anything, vouches for who clicked); anyone else is told so, and nothing changes.
The typed commands act at once: typing them is the deliberate act a click is not.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bridge.commands import CommandContext, CommandService
from bridge.model import Button
from bridge.ports import SlackClient, Store

log = logging.getLogger("bridge.confirm")

CONFIRM_UNLINK = "xdm_confirm_unlink"
CONFIRM_DISCONNECT = "xdm_confirm_disconnect"
CONFIRM_CANCEL = "xdm_confirm_cancel"
ACTIONS = (CONFIRM_UNLINK, CONFIRM_DISCONNECT, CONFIRM_CANCEL)
_VERBS = {CONFIRM_UNLINK: "unlink", CONFIRM_DISCONNECT: "disconnect"}


@dataclass(frozen=True)
class Question:
    """What a question asks, and of whom (a button's value carries it)."""

    verb: str  # "unlink" | "disconnect"
    team_id: str
    user_id: str
    channel_id: str = ""

    def value(self) -> str:
        return f"{self.verb}:{self.team_id}:{self.user_id}:{self.channel_id}"

    @classmethod
    def parse(cls, value: str) -> Question | None:
        parts = value.split(":")
        if len(parts) != 4 or parts[0] not in _VERBS.values() or not (parts[1] and parts[2]):
            return None
        return cls(parts[0], parts[1], parts[2], parts[3])


@dataclass(frozen=True)
class Click:
    """A click on a question's button, from a payload whose signature was checked."""

    action_id: str
    value: str
    team_id: str
    user_id: str
    response_url: str | None


class Confirmations:
    """Asks before unlink and disconnect, and carries out the confirmed ones."""

    def __init__(
        self,
        *,
        commands: CommandService,
        store: Store,
        slack: SlackClient,
        spawn: Callable[[Awaitable[None], str], None],
    ) -> None:
        self._commands = commands
        self._store = store
        self._slack = slack
        self._spawn = spawn

    async def ask_unlink(self, team_id: str, user_id: str, channel_id: str) -> None:
        """Ask ``user_id`` to confirm unbridging ``channel_id`` (a DM from the bot)."""
        mapping = await self._store.get_mapping(team_id, channel_id)
        if mapping is None:
            await self._tell(team_id, user_id, f"<#{channel_id}> is not bridged to X any more.")
            return
        text = (
            f"Stop bridging <#{channel_id}> to X? New messages there will no longer go to X, and "
            "X's messages will no longer be posted there."
        )
        await self._ask(Question("unlink", team_id, user_id, channel_id), text, CONFIRM_UNLINK, "Unlink")

    async def ask_disconnect(self, team_id: str, user_id: str) -> None:
        """Ask ``user_id`` to confirm disconnecting their X account (a DM from the bot)."""
        account = await self._store.account_for_user(team_id, user_id)
        if account is None or account.disconnected:
            await self._tell(team_id, user_id, "You have no X account connected; nothing to disconnect.")
            return
        text = (
            f"Disconnect X account @{account.x_username}? The bridge gives X's access back and deletes "
            "its tokens; the channels bridged as it pause until you connect again."
        )
        await self._ask(Question("disconnect", team_id, user_id), text, CONFIRM_DISCONNECT, "Disconnect")

    async def _ask(self, question: Question, text: str, action_id: str, verb: str) -> None:
        buttons = (
            Button(action_id, f"Confirm: {verb}", question.value(), "danger"),
            Button(CONFIRM_CANCEL, "Cancel", question.value()),
        )
        try:
            await self._slack.ask(question.team_id, None, question.user_id, text, buttons)
        except Exception as exc:
            log.warning(
                "could not ask to confirm", extra={"verb": question.verb, "error": type(exc).__name__}
            )

    async def _tell(self, team_id: str, user_id: str, text: str) -> None:
        try:
            await self._slack.post_message(team_id, user_id, text)
        except Exception as exc:
            log.warning("could not tell the user", extra={"error": type(exc).__name__})

    async def answer(self, click: Click) -> None:
        """A click on Confirm or Cancel; acts only for the person the question was for."""
        question = Question.parse(click.value)
        if question is None:
            log.info("malformed confirmation ignored", extra={"team": click.team_id})
            return
        if (question.team_id, question.user_id) != (click.team_id, click.user_id):
            log.warning(
                "confirmation refused: clicked by another Slack user",
                extra={"team": click.team_id, "user": click.user_id},
            )
            await self._respond(
                click,
                f":no_entry: This question is for <@{question.user_id}>: only they can answer it. "
                "Nothing was changed.",
            )
            return
        if click.action_id == CONFIRM_CANCEL:
            await self._respond(click, "Cancelled; nothing was changed.", replace=True)
            return
        if _VERBS.get(click.action_id) != question.verb:
            log.info("confirmation with a mismatched button ignored", extra={"team": click.team_id})
            return
        ctx = CommandContext(
            team_id=question.team_id,
            channel_id=question.channel_id,
            user_id=question.user_id,
            response_url=click.response_url,
        )
        reply = await self._commands.handle(ctx, question.verb)
        if reply.in_channel and question.channel_id:
            # What the typed command says in the channel is said there too.
            try:
                await self._slack.post_message(question.team_id, question.channel_id, reply.text)
            except Exception as exc:
                log.warning("could not announce in the channel", extra={"error": type(exc).__name__})
        await self._respond(click, reply.text, replace=True)
        if reply.follow_up is not None:
            self._spawn(reply.follow_up(), f"xdm-confirm-{question.verb}")

    async def _respond(self, click: Click, text: str, *, replace: bool = False) -> None:
        try:
            if click.response_url:
                await self._slack.respond(click.response_url, text, replace=replace)
            else:
                await self._slack.post_message(click.team_id, click.user_id, text)
        except Exception as exc:
            log.warning("could not answer the click", extra={"error": type(exc).__name__})
