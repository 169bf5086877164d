"""Confirm / Cancel before what undoes something: unlink a channel, disconnect an account.

Neither acts when asked. The typed `/xdm unlink` and `/xdm disconnect` answer with a question
(an ephemeral message through the command's ``response_url``); the Home's Unlink and Disconnect
buttons send the same question as a direct message from the bot. The question says in words
what will happen and carries **Confirm: …** and **Cancel**. Its text is written once, by
``CommandService.question`` (the typed command and the Home ask through it), and a Confirm click
runs ``CommandService.confirmed``, which checks again at click time who may do it and whether the
channel's bridge, or the account, is still the one the question named.

A click is honoured only from the person the question was for (the value names them; Slack's
signature, checked before anything, vouches for who clicked), only within ``QUESTION_TTL`` of
the question, and only on the state it named; any other click gets a clear answer and nothing
changes.

There is no way to skip the question (no ``--yes``): a slash command is signed by Slack just as a
click is, so a flag would not keep anyone out; it would only let a pasted or mistyped line do at
once what the question is there to stop. An operator acting without Slack has
``xdm-bridge accounts disconnect``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bridge.model import Button
from bridge.ports import Clock, SlackClient

if TYPE_CHECKING:  # commands.py builds the questions, so it imports this module
    from bridge.commands import CommandService

log = logging.getLogger("bridge.confirm")

CONFIRM_UNLINK = "xdm_confirm_unlink"
CONFIRM_DISCONNECT = "xdm_confirm_disconnect"
CONFIRM_CANCEL = "xdm_confirm_cancel"
ACTIONS = (CONFIRM_UNLINK, CONFIRM_DISCONNECT, CONFIRM_CANCEL)
_VERBS = {CONFIRM_UNLINK: "unlink", CONFIRM_DISCONNECT: "disconnect"}
_ACTION_OF = {verb: action for action, verb in _VERBS.items()}
_LABELS = {"unlink": "Unlink", "disconnect": "Disconnect"}
QUESTION_TTL = 600.0  # seconds a question may be answered; later, it is asked again


@dataclass(frozen=True)
class Question:
    """What a question asks, of whom, about what and when (a button's value carries it).

    ``subject`` names the state the question described: for unlink the channel's mapping (its
    ``created_at``), for disconnect the account (``<id>-<X user id>``). A confirm on any other
    state (unlinked and bridged again, another account connected) changes nothing.
    """

    verb: str  # "unlink" | "disconnect"
    team_id: str
    user_id: str
    channel_id: str = ""
    subject: str = ""
    asked_at: int = 0  # epoch seconds

    def value(self) -> str:
        fields = (self.verb, self.team_id, self.user_id, self.channel_id, self.subject, str(self.asked_at))
        return ":".join(fields)

    @classmethod
    def parse(cls, value: str) -> Question | None:
        parts = value.split(":")
        if len(parts) != 6:
            return None
        verb, team_id, user_id, channel_id, subject, asked_at = parts
        if verb not in _LABELS or not (team_id and user_id and subject and asked_at.isdigit()):
            return None
        if verb == "unlink" and not channel_id:
            return None
        return cls(verb, team_id, user_id, channel_id, subject, int(asked_at))

    def expired(self, now: float) -> bool:
        return now - self.asked_at > QUESTION_TTL


def question_buttons(question: Question) -> tuple[Button, ...]:
    """**Confirm: Unlink** (or Disconnect) and **Cancel**, both carrying the question."""
    value = question.value()
    return (
        Button(_ACTION_OF[question.verb], f"Confirm: {_LABELS[question.verb]}", value, "danger"),
        Button(CONFIRM_CANCEL, "Cancel", value),
    )


@dataclass(frozen=True)
class Click:
    """A click on a question's button, from a payload whose signature was checked."""

    action_id: str
    value: str
    team_id: str
    user_id: str
    response_url: str | None
    channel_id: str = ""  # where the clicked message is (a channel, or the bot's DM)


class Confirmations:
    """Asks from the Home, and answers the clicks on every question."""

    def __init__(
        self,
        *,
        commands: CommandService,
        slack: SlackClient,
        clock: Clock,
        spawn: Callable[[Awaitable[None], str], None],
    ) -> None:
        self._commands = commands
        self._slack = slack
        self._clock = clock
        self._spawn = spawn

    async def ask_unlink(self, team_id: str, user_id: str, channel_id: str) -> None:
        """Ask ``user_id`` to confirm unbridging ``channel_id`` (a DM from the bot)."""
        await self._ask_in_dm("unlink", team_id, user_id, channel_id)

    async def ask_disconnect(self, team_id: str, user_id: str) -> None:
        """Ask ``user_id`` to confirm disconnecting their X account (a DM from the bot)."""
        await self._ask_in_dm("disconnect", team_id, user_id, "")

    async def _ask_in_dm(self, verb: str, team_id: str, user_id: str, channel_id: str) -> None:
        reply = await self._commands.question(verb, team_id, user_id, channel_id)
        try:
            if reply.buttons:
                await self._slack.ask(team_id, None, user_id, reply.text, reply.buttons)
            else:  # nothing to confirm (already done, or not theirs to do): say so
                await self._slack.post_message(team_id, user_id, reply.text)
        except Exception as exc:
            log.warning("could not ask to confirm", extra={"verb": verb, "error": type(exc).__name__})

    async def answer(self, click: Click) -> None:
        """A click on Confirm or Cancel; acts only for the person the question was for."""
        question = Question.parse(click.value)
        if question is None or _VERBS.get(click.action_id, question.verb) != question.verb:
            log.info("malformed confirmation refused", extra={"team": click.team_id})
            await self._respond(
                click,
                ":x: This button is not one the bridge can answer any more (it may come from an older "
                "version of the bridge). Nothing was changed; run the command again.",
            )
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
        if question.expired(self._clock.now()):
            minutes = int(QUESTION_TTL // 60)
            await self._respond(
                click,
                f"This question expired (it was asked more than {minutes} minutes ago); nothing was "
                f"changed. Run `/xdm {question.verb}` again if you still want to.",
                replace=True,
            )
            return
        reply = await self._commands.confirmed(question, click.response_url)
        if reply.in_channel and question.channel_id:
            await self._announce(click, question.channel_id, reply.text)
        await self._respond(click, reply.text, replace=True)
        if reply.follow_up is not None:
            self._spawn(reply.follow_up(), f"xdm-confirm-{question.verb}")

    async def _announce(self, click: Click, channel_id: str, text: str) -> None:
        """What the command says in the channel is said there: through the click's response_url
        when the question was asked in that channel (the bot need not be a member), else posted."""
        try:
            if click.response_url and click.channel_id == channel_id:
                await self._slack.respond(click.response_url, text, in_channel=True)
            else:
                await self._slack.post_message(click.team_id, channel_id, text)
        except Exception as exc:
            log.warning("could not announce in the channel", extra={"error": type(exc).__name__})

    async def _respond(self, click: Click, text: str, *, replace: bool = False) -> None:
        try:
            if click.response_url:
                await self._slack.respond(click.response_url, text, replace=replace)
            else:
                await self._slack.post_message(click.team_id, click.user_id, text)
        except Exception as exc:
            log.warning("could not answer the click", extra={"error": type(exc).__name__})
