"""Slack token rotation: a rotating bot token is refreshed before it expires, once across instances
(Slack's refresh tokens are single-use), against the Slack simulator over HTTP, on both stores."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import aiohttp
import pytest
from slack_sdk.oauth.installation_store.models.installation import Installation

from adapters.sandbox.fake_slack import FakeSlack, run_fake_slack
from adapters.slack.workspaces import TeamSlack, Workspaces, oauth_client
from adapters.store.crypto import TokenCipher
from adapters.store.slack_installs import SlackInstallStore
from bridge.errors import SlackRefused
from tests.contract.conftest import Engine

REFRESH_BEFORE = 60.0


@dataclass
class World:
    slack: FakeSlack
    instances: list[Workspaces]


@asynccontextmanager
async def two_instances(engine: Engine) -> AsyncIterator[World]:
    """Two bridges' ``Workspaces`` on one database, and a Slack whose tokens rotate."""
    async with AsyncExitStack() as stack:
        slack, _ = await stack.enter_async_context(run_fake_slack())
        slack.installs.token_rotation = True
        slack.installs.token_lifetime = 30  # due at once: under REFRESH_BEFORE
        slack.installs.add_team("T1", "One")
        session = await stack.enter_async_context(aiohttp.ClientSession())
        instances = []
        for _ in range(2):
            store = engine.store()
            await store.open()
            stack.push_async_callback(store.close)
            installs = SlackInstallStore(store.engine, TokenCipher([engine.key]), time.time)
            instances.append(
                Workspaces(
                    installs,
                    oauth_client(slack.api_url, session),
                    client_id=slack.installs.client_id,
                    client_secret=slack.installs.client_secret,
                    now=time.time,
                    refresh_before=REFRESH_BEFORE,
                )
            )
        granted = slack.installs.grant("T1")
        await instances[0].installs.async_save(
            Installation(
                team_id="T1",
                bot_token=granted["access_token"],
                bot_refresh_token=granted["refresh_token"],
                bot_token_expires_in=granted["expires_in"],
                bot_scopes="chat:write",
                user_id="U1",
            )
        )
        slack.installs.token_lifetime = 43_200  # the refreshed tokens last
        yield World(slack, instances)


async def test_two_instances_needing_a_fresh_token_at_once_refresh_it_once(engine: Engine) -> None:
    async with two_instances(engine) as world:
        original = world.slack.installs.tokens_of("T1")[-1]
        bots = await asyncio.gather(*(w.bot("T1") for w in world.instances for _ in range(3)))
        assert len(world.slack.installs.refreshes) == 1  # one refresh token, presented once
        newest = world.slack.installs.tokens_of("T1")[-1]
        # The winner's callers get the new token; a caller that came while the refresh was in
        # flight elsewhere may get the current one, which is still valid (it is refreshed early).
        given = {b.bot_token for b in bots if b is not None}
        assert newest in given and given <= {newest, original}
        # Fresh now: later calls refresh nothing, and every client made for the workspace has the new token.
        assert (await world.instances[1].bot("T1")) is not None
        async with aiohttp.ClientSession() as session:
            teams = TeamSlack(world.instances[1], session, world.slack.api_url)
            assert (await teams.client_for("T1")).token == newest
            assert (await teams.bot_name("T1")) == world.slack.bot_name  # auth.test with that token
            with pytest.raises(SlackRefused):
                await teams.client_for("T9")  # not installed
        assert len(world.slack.installs.refreshes) == 1


async def test_a_refresh_whose_answer_was_lost_is_never_presented_again(engine: Engine) -> None:
    async with two_instances(engine) as world:
        first, second = world.instances
        world.slack.drop_after("oauth.v2.access")  # Slack refreshes, the answer never arrives
        old = await first.bot("T1")
        assert old is not None and len(world.slack.installs.refreshes) == 1
        # Neither instance presents that refresh token again; the current token serves meanwhile.
        again = await asyncio.gather(first.bot("T1"), second.bot("T1"))
        assert len(world.slack.installs.refreshes) == 1
        assert {b.bot_token for b in again if b is not None} == {old.bot_token}


async def test_a_refresh_slack_refused_unseen_is_tried_again(engine: Engine) -> None:
    """A 429 (Slack's rate limit, answered before it looks at the request) means Slack never
    took the single-use refresh token: it is presented again, not kept aside as spent. It was
    kept aside, so one rate-limited refresh cost the workspace its bridge when the current token
    expired 12 hours later (the operator told to have the app installed again)."""
    async with two_instances(engine) as world:
        first, second = world.instances
        original = world.slack.installs.tokens_of("T1")[-1]
        world.slack.ratelimit_next("oauth.v2.access", retry_after=0)
        old = await first.bot("T1")
        assert old is not None and old.bot_token == original  # the current token serves meanwhile
        assert world.slack.installs.refreshes == []
        fresh = await second.bot("T1")
        assert len(world.slack.installs.refreshes) == 1
        newest = world.slack.installs.tokens_of("T1")[-1]
        assert fresh is not None and fresh.bot_token == newest != original


@pytest.fixture(autouse=True)
def _quick_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    # An instance waits this long for another's refresh; the lost-answer case waits it out once.
    monkeypatch.setattr("adapters.slack.workspaces.WAIT_FOR_OTHER_REFRESH", 3.0)
