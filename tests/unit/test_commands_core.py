"""`/xdm` commands carried out by CommandService (bridge/commands.py) over the in-memory store
(tests/memory_store.py): what a command changes in the store and what the person who ran it is
told, without a database or a server. The person is named by X user id, so X is never asked;
Slack is a recording stand-in of the calls the service makes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from bridge.budget import Budget
from bridge.commands import CommandContext, CommandService, Reply
from bridge.confirm import Question
from bridge.model import Button, ChannelMapping, MappingKind, OutboxState, SlackMember, TokenSet, XUser
from bridge.tokens import TokenManager
from tests.memory_store import MemoryStore
from tests.virtual_clock import VirtualClock

HERE = CommandContext(team_id="T1", channel_id="C1", user_id="U1")


class Slack:
    """The Slack calls commands make: posts, ephemerals and questions recorded, the bot in every
    channel."""

    def __init__(self) -> None:
        self.ephemerals: list[tuple[str, str, str]] = []  # (channel, user, text)
        self.questions: list[tuple[str, tuple[Button, ...]]] = []
        self.posts: list[tuple[str, str]] = []  # (channel, text) posted as the bot

    async def post_message(self, team_id: str, channel_id: str, text: str) -> str:
        self.posts.append((channel_id, text))
        return f"{len(self.posts)}.000"

    async def post_ephemeral(self, team_id: str, channel_id: str, user_id: str, text: str) -> None:
        self.ephemerals.append((channel_id, user_id, text))

    async def ask(
        self, team_id: str, channel_id: str | None, user_id: str, text: str, buttons: Sequence[Button]
    ) -> None:
        self.questions.append((text, tuple(buttons)))

    async def bot_in_channel(self, team_id: str, channel_id: str) -> bool:
        return True

    async def member(self, team_id: str, user_id: str) -> SlackMember:
        return SlackMember(user_id)  # neither admin nor owner


class Nothing:
    """X (its API and OAuth) where a test must not reach it: any call is a failure."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"X was asked ({name}) where nothing should be")


async def service(store: MemoryStore, slack: Slack, clock: VirtualClock) -> CommandService:
    """U1's X account @me connected, and the service their commands go to."""
    await store.save_account("T1", "U1", XUser("1000", "me"), TokenSet("access", "refresh", None))
    return CommandService(
        store=store,
        x=Nothing(),
        oauth=Nothing(),
        tokens=TokenManager(store, Nothing(), clock, on_revoked=lambda *_: asyncio.sleep(0)),
        budget=Budget(store),
        slack=slack,  # type: ignore[arg-type]
        clock=clock,
        oauth_ready=None,
    )


async def followed(reply: Reply) -> Reply:
    """The reply, once its follow-up (what runs after Slack's acknowledgement) has run."""
    if reply.follow_up is not None:
        await reply.follow_up()
    return reply


async def test_dm_then_unlink_bridges_the_channel_and_stops_it_with_the_right_answers() -> None:
    store, slack, clock = MemoryStore(), Slack(), VirtualClock(start=1_000.0)
    commands = await service(store, slack, clock)

    dm = await followed(await commands.handle(HERE, "dm 2001 hello there"))
    assert dm.text == "Setting up the DM with 2001…"
    mapping = await store.get_mapping("T1", "C1")
    assert mapping is not None
    assert (mapping.kind, mapping.conversation_id, mapping.participant_id, mapping.created_by) == (
        MappingKind.DM,
        "1000-2001",
        "2001",
        "U1",
    )
    [(channel, user, told)] = slack.ephemerals
    assert (channel, user) == ("C1", "U1")
    assert told.startswith("<@U1> bridged this channel to their DMs with X user `2001`.")
    # The opening message is shown in the channel and waits in its outbox, as one written there.
    assert slack.posts == [("C1", "<@U1>'s opening message to X:\nhello there")]
    [opening] = store.rows.values()
    assert (opening.slack_ts, opening.state, opening.author_id) == ("1.000", OutboxState.QUEUED, "U1")

    asked = await followed(await commands.handle(HERE, "unlink"))
    assert asked.text.startswith(
        "Stop bridging <#C1> to the 1-to-1 X DMs with X user `2001` (sent as X account @me)?"
    )
    assert "1 message(s) already accepted for X are still delivered." in asked.text
    [(question_text, buttons)] = slack.questions
    assert question_text == asked.text and await store.get_mapping("T1", "C1") == mapping  # only asked

    question = Question.parse(buttons[0].value)
    assert question is not None and question.verb == "unlink"
    done = await commands.confirmed(question, None)
    assert done.in_channel
    assert done.text == (
        "<@U1> stopped bridging this channel to the 1-to-1 X DMs with X user `2001`. New messages "
        "here no longer go to X. 1 message(s) already accepted will still be delivered."
    )
    assert await store.get_mapping("T1", "C1") is None
    again = await commands.confirmed(question, None)  # the same click twice
    assert again.text == "<#C1> is not bridged to X any more; nothing was changed."


async def test_someone_else_may_not_unlink_the_channel_and_it_stays_bridged() -> None:
    store, slack, clock = MemoryStore(), Slack(), VirtualClock(start=1_000.0)
    commands = await service(store, slack, clock)
    account = await store.account_for_user("T1", "U1")
    assert account is not None
    mapping = ChannelMapping("T1", "C1", MappingKind.LINK, account.id, "1000-2001", None, "U1", 5.0)
    await store.create_mapping(mapping)

    refused = await commands.handle(CommandContext("T1", "C1", "U2"), "unlink")
    assert refused.text == (
        ":x: This channel's bridge belongs to <@U1>: only they or a workspace admin or owner can unlink it."
    )
    assert refused.follow_up is None and slack.questions == []
    assert await store.get_mapping("T1", "C1") == mapping
