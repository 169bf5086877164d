"""Installs ("Add to Slack") and their OAuth states: one SQL on both engines, held to one contract."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from slack_sdk.oauth.installation_store.models.installation import Installation

from adapters.store.crypto import TokenCipher, generate_key
from adapters.store.keys import rotate_keys
from adapters.store.select import AnyStore, operator_engine
from adapters.store.slack_installs import SlackInstallStore, SlackStateStore, TooManyInstalls
from bridge.errors import ConfigError
from bridge.model import ChannelMapping, MappingKind, TokenSet, XUser
from tests.contract.conftest import Engine


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


@asynccontextmanager
async def opened(engine: Engine) -> AsyncIterator[AnyStore]:
    store = engine.store()
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def installation(team: str = "T1", token: str = "xoxb-1", **kw: object) -> Installation:
    fields: dict[str, object] = {
        "app_id": "A1",
        "team_id": team,
        "team_name": f"Team {team}",
        "bot_token": token,
        "bot_id": "B1",
        "bot_user_id": "UBOT",
        "bot_scopes": "chat:write,commands",
        "user_id": "UINSTALLER",
        "installed_at": 1_000_000.0,
        **kw,
    }
    return Installation(**fields)  # type: ignore[arg-type]


async def test_an_install_is_kept_per_workspace_with_its_token_encrypted(engine: Engine) -> None:
    async with opened(engine) as store:
        installs = SlackInstallStore(store.engine, TokenCipher([engine.key]), Clock())
        await installs.async_save(installation("T1", "xoxb-one"))
        await installs.async_save(installation("T2", "xoxb-two"))
        one = await installs.async_find_bot(enterprise_id=None, team_id="T1")
        assert (
            one is not None and one.bot_token == "xoxb-one" and one.bot_scopes == ["chat:write", "commands"]
        )
        found = await installs.async_find_installation(enterprise_id=None, team_id="T2")
        assert found is not None and found.bot_token == "xoxb-two" and found.team_name == "Team T2"
        # Another org's workspace with the same team id is not this one (keyed by enterprise too).
        assert await installs.async_find_bot(enterprise_id="E9", team_id="T1") is None
        assert await installs.async_find_bot(enterprise_id=None, team_id="T3") is None
        stored = await engine.sql("SELECT bot_token, installer_user_id FROM slack_installations")
        assert all(not row[0].startswith("xoxb-") for row in stored)
        assert {row[1] for row in stored} == {"UINSTALLER"}
        # Without the key that encrypted it, the token cannot be read.
        stranger = SlackInstallStore(store.engine, TokenCipher([generate_key()]), Clock())
        with pytest.raises(ConfigError):
            await stranger.async_find_bot(enterprise_id=None, team_id="T1")


async def test_a_reinstall_replaces_the_token_and_an_uninstall_deletes_it(engine: Engine) -> None:
    async with opened(engine) as store:
        installs = SlackInstallStore(store.engine, TokenCipher([engine.key]), Clock())
        await installs.async_save(installation("T1", "xoxb-old"))
        await installs.async_save(installation("T1", "xoxb-new"))
        assert [b.bot_token for b in await installs.list_bots()] == ["xoxb-new"]
        await installs.async_delete_all(enterprise_id=None, team_id="T1")
        assert await installs.async_find_bot(enterprise_id=None, team_id="T1") is None
        assert await engine.sql("SELECT COUNT(*) FROM slack_installations") == [(0,)]


async def test_rotate_keys_re_encrypts_the_bot_tokens(engine: Engine) -> None:
    async with opened(engine) as store:
        installs = SlackInstallStore(store.engine, TokenCipher([engine.key]), Clock())
        await installs.async_save(
            installation("T1", "xoxb-one", bot_refresh_token="xoxe-1-r", bot_token_expires_in=43200)
        )
    new = generate_key()
    # The CLI's own path: the operator's engine on the database, no store opened.
    async with operator_engine(engine.location) as on_database:
        assert await rotate_keys(on_database, TokenCipher([new, engine.key])) == 2
    async with opened(engine) as store:
        installs = SlackInstallStore(store.engine, TokenCipher([new]), Clock())
        bot = await installs.async_find_bot(enterprise_id=None, team_id="T1")
        assert bot is not None and (bot.bot_token, bot.bot_refresh_token) == ("xoxb-one", "xoxe-1-r")


async def test_an_oauth_state_is_used_once_and_never_after_it_expires(engine: Engine) -> None:
    async with opened(engine) as store:
        clock = Clock()
        states = SlackStateStore(store.engine, clock, ttl=600)
        state, late = await states.async_issue(), await states.async_issue()
        assert state != late
        assert await states.async_consume("made-up") is False
        assert await states.async_consume(state) is True
        assert await states.async_consume(state) is False
        clock.t += 601
        assert await states.async_consume(late) is False


async def test_two_instances_racing_one_refresh_let_exactly_one_present_the_token(engine: Engine) -> None:
    async with opened(engine) as first, opened(engine) as second:
        clock = Clock()
        a = SlackInstallStore(first.engine, TokenCipher([engine.key]), clock)
        b = SlackInstallStore(second.engine, TokenCipher([engine.key]), clock)
        await a.async_save(installation("T1", "xoxb-1", bot_refresh_token="xoxe-1", bot_token_expires_in=60))
        bot = await a.async_find_bot(enterprise_id=None, team_id="T1")
        assert bot is not None
        claims = await asyncio.gather(*(s.claim_refresh(bot) for s in (a, b, a, b)))
        winners = [c for c in claims if c is not None]
        assert len(winners) == 1
        # Nobody takes it again while it is held, nor after a refresh under a stale view.
        assert await b.claim_refresh(bot) is None
        assert await a.save_refreshed(bot, "someone-else", "xoxb-x", "xoxe-x", 2.0) is False
        assert await a.save_refreshed(bot, winners[0], "xoxb-2", "xoxe-2", 1_043_200.7) is True
        assert await b.claim_refresh(bot) is None  # its expiry is the old one: already refreshed
        fresh = await b.async_find_bot(enterprise_id=None, team_id="T1")
        assert fresh is not None and (fresh.bot_token, fresh.bot_refresh_token) == ("xoxb-2", "xoxe-2")
        claim = await b.claim_refresh(fresh)
        assert claim is not None
        await b.release_refresh(fresh, claim)
        assert await a.claim_refresh(fresh) is not None


async def test_an_uninstall_pauses_only_that_workspaces_channels_and_a_reinstall_resumes_them(
    engine: Engine,
) -> None:
    async with opened(engine) as store:
        installs = SlackInstallStore(store.engine, TokenCipher([engine.key]), Clock())
        mine = await store.save_account("T1", "U1", XUser("1000", "me"), TokenSet("a", "r", None))
        theirs = await store.save_account("T2", "U1", XUser("2000", "them"), TokenSet("a", "r", None))
        for team, account in (("T1", mine), ("T2", theirs)):
            await store.create_mapping(
                ChannelMapping(team, "C1", MappingKind.DM, account.id, None, "9", "U1", 0.0)
            )
        assert await installs.pause_workspace("T1", 5.0) == 1
        paused = await store.get_mapping("T1", "C1")
        assert paused is not None and paused.paused_at == 5.0 and paused.paused_by == "slack-uninstalled"
        other = await store.get_mapping("T2", "C1")
        assert other is not None and other.paused_at is None
        assert await installs.resume_workspace("T2") == 0
        assert await installs.resume_workspace("T1") == 1
        resumed = await store.get_mapping("T1", "C1")
        assert resumed is not None and resumed.paused_at is None


async def test_x_messages_waiting_past_retention_for_a_removed_workspace_fail_with_a_reason(
    engine: Engine,
) -> None:
    async with opened(engine) as store:
        installs = SlackInstallStore(store.engine, TokenCipher([engine.key]), Clock())
        for team in ("T1", "T2"):
            account = await store.save_account(team, "U1", XUser(f"{team}00", "me"), TokenSet("a", "r", None))
            await store.create_mapping(
                ChannelMapping(team, "C1", MappingKind.DM, account.id, None, "9", "U1", 0.0)
            )
        for n, (team, created) in enumerate((("T1", 10.0), ("T1", 500.0), ("T2", 10.0))):
            await engine.sql(
                "INSERT INTO inbound (dm_event_id, seq, team_id, channel_id, origin, state, created_at) "
                "VALUES (?, ?, ?, 'C1', 'poll', 'queued', ?)",
                f"e{n}",
                n,
                team,
                created,
            )
        await installs.pause_workspace("T1", 5.0)
        assert await installs.fail_waiting(100.0, "removed") == 1
        rows = await engine.sql("SELECT dm_event_id, state, last_error FROM inbound ORDER BY dm_event_id")
        # Only the old row of the removed workspace; the newer one waits on, the other team's is untouched.
        assert rows == [("e0", "failed", "removed"), ("e1", "queued", None), ("e2", "queued", None)]


async def test_install_links_open_at_once_are_capped_and_expired_ones_make_room(engine: Engine) -> None:
    async with opened(engine) as store:
        clock = Clock()
        states = SlackStateStore(store.engine, clock, ttl=600, cap=2)
        await states.async_issue()
        await states.async_issue()
        with pytest.raises(TooManyInstalls):
            await states.async_issue()
        clock.t += 601
        assert await states.async_issue()  # the expired two went first
