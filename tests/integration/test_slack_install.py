"""Install mode ("Add to Slack"): many workspaces on one bridge, each with its own token, none able
to reach another's accounts, channels or messages. Everything over real HTTP: the bridge, the
Slack simulator's authorize page and ``oauth.v2.access``, and X's simulator."""

from __future__ import annotations

import asyncio
import dataclasses
import html
import io
import json
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from adapters.sandbox.fake_slack import SlackSender
from adapters.sandbox.fake_slack_views import SurfaceSender
from adapters.slack.install import REFUSALS
from adapters.store.crypto import TokenCipher, generate_key
from adapters.store.slack_installs import REMOVAL_CLOCK_SLACK
from adapters.web import logs
from adapters.web.logs import JsonFormatter
from bridge.errors import ConfigError
from tests.harness import (
    ALICE,
    BOB,
    SIGNING_SECRET,
    Bridge,
    authorize_url,
    query_of,
    running_bridge,
    wait_until,
)

T1, T2 = "T0001", "T0002"
INSTALL_ENV = {
    "SLACK_BOT_TOKEN": "",
    "SLACK_CLIENT_ID": "1111.2222",
    "SLACK_CLIENT_SECRET": "fake-slack-client-secret",
    "SLACK_AUTHORIZE_URL": "{SLACK_URL}/oauth/v2/authorize",
}
STATE_COOKIE = "slack-app-oauth-state"


@pytest.fixture
async def bridge(tmp_path: Path) -> AsyncIterator[Bridge]:
    async with running_bridge(tmp_path, env=INSTALL_ENV) as running:
        running.slack.installs.add_team(T1, "Team One", bot_user_id="UBOT1", bot_id="BBOT1")
        running.slack.installs.add_team(T2, "Team Two", bot_user_id="UBOT2", bot_id="BBOT2")
        yield running


def in_team(bridge: Bridge, team: str) -> Bridge:
    """The same bridge, with Slack's requests coming from workspace ``team``."""
    sender = SlackSender(bridge.session, f"{bridge.url}/slack/events", SIGNING_SECRET, team_id=team)
    return dataclasses.replace(bridge, sender=sender)


async def start_install(bridge: Bridge) -> tuple[str, str]:
    """Open the bridge's "Add to Slack" page; returns Slack's authorize link and the state cookie."""
    jar = aiohttp.DummyCookieJar()
    async with (
        aiohttp.ClientSession(cookie_jar=jar) as browser,
        browser.get(f"{bridge.url}/slack/install") as response,
    ):
        page = await response.text()
        assert response.status == 200, page
        cookie = response.cookies[STATE_COOKIE].value
    match = re.search(r"href='([^']+)'", page)
    assert match and "Add to Slack" in page, page
    return html.unescape(match.group(1)), cookie


async def finish_install(bridge: Bridge, link: str, team: str, cookie: str | None) -> tuple[int, str]:
    """Allow on Slack's page for ``team``, then follow Slack's redirect back with ``cookie``."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as browser:
        async with browser.get(f"{link}&team={team}", allow_redirects=False) as response:
            assert response.status == 302, await response.text()
            back = response.headers["Location"]
        headers = {"Cookie": f"{STATE_COOKIE}={cookie}"} if cookie else {}
        async with browser.get(back, headers=headers) as response:
            return response.status, await response.text()


async def install(bridge: Bridge, team: str) -> str:
    link, cookie = await start_install(bridge)
    status, page = await finish_install(bridge, link, team, cookie)
    assert status == 200 and "is installed in" in page, page
    return page


async def test_the_install_round_trip_keeps_the_workspaces_token_encrypted(bridge: Bridge) -> None:
    link, _ = await start_install(bridge)
    asked = query_of(link)
    assert link.startswith(f"{bridge.slack_url}/oauth/v2/authorize?")
    assert asked["client_id"] == "1111.2222"
    assert asked["redirect_uri"] == f"{bridge.url}/slack/oauth_redirect"
    assert {"chat:write", "commands"} <= set(asked["scope"].split(","))
    page = await install(bridge, T2)
    assert "Team Two" in page
    [token] = bridge.slack.installs.tokens_of(T2)
    [(team, stored)] = await bridge.sql("SELECT team_id, bot_token FROM slack_installations")
    assert team == T2 and token not in stored
    assert TokenCipher(bridge.settings.encryption_keys).decrypt(stored) == token
    with pytest.raises(ConfigError):
        TokenCipher([generate_key()]).decrypt(stored)
    exchange = bridge.slack.calls_to("oauth.v2.access")
    assert [c.ok for c in exchange] == [True]
    # The secret goes in the POST body, never in a URL (and never as a bot token).
    assert exchange[0].http_verb == "POST" and "authorization" not in exchange[0].headers


@pytest.mark.parametrize(
    ("case", "status", "says"),
    [
        ("no-cookie", 400, "not started in this browser"),
        ("other-flows-cookie", 400, "not started in this browser"),
        ("used-twice", 400, "already used or has expired"),
        ("cancelled", 200, "You cancelled"),
        ("made-up-code", 502, "did not accept the authorization code"),
    ],
)
async def test_every_failed_install_is_a_page_saying_what_to_do(
    bridge: Bridge, case: str, status: int, says: str
) -> None:
    link, cookie = await start_install(bridge)
    if case == "no-cookie":
        got = await finish_install(bridge, link, T1, None)
    elif case == "other-flows-cookie":
        _, other = await start_install(bridge)
        got = await finish_install(bridge, link, T1, other)
    elif case == "used-twice":
        await finish_install(bridge, link, T1, cookie)
        got = await finish_install(bridge, link, T1, cookie)
    elif case == "cancelled":
        async with aiohttp.ClientSession() as browser:
            async with browser.get(f"{link}&deny=1", allow_redirects=False) as response:
                back = response.headers["Location"]
            async with browser.get(back, headers={"Cookie": f"{STATE_COOKIE}={cookie}"}) as response:
                got = (response.status, await response.text())
    else:
        state = query_of(link)["state"]
        url = f"{bridge.url}/slack/oauth_redirect?code=made-up&state={state}"
        async with bridge.session.get(url, headers={"Cookie": f"{STATE_COOKIE}={state}"}) as response:
            got = (response.status, await response.text())
    assert got[0] == status and says in got[1], got
    if case != "used-twice":
        assert await bridge.sql("SELECT COUNT(*) FROM slack_installations") == [(0,)]


async def test_an_org_wide_install_is_refused_with_a_page(bridge: Bridge) -> None:
    bridge.slack.installs.add_team("E0001", "Big Org", enterprise_id="E0001", org_wide=True)
    link, cookie = await start_install(bridge)
    status, page = await finish_install(bridge, link, "E0001", cookie)
    assert status == 403 and "org-wide" in page and "each workspace" in page
    assert await bridge.sql("SELECT COUNT(*) FROM slack_installations") == [(0,)]


async def connected_and_linked(
    bridge: Bridge, *, user: str, channel: str, x_user: str, conversation: str
) -> None:
    await bridge.connect(user=user, channel=channel, x_user=x_user)
    ack = await bridge.map_link(conversation, user=user, channel=channel)
    assert "bridged this channel" in ack.text, ack.text


async def test_two_workspaces_bridge_at_once_each_with_its_own_token(bridge: Bridge) -> None:
    await install(bridge, T1)
    await install(bridge, T2)
    one, two = in_team(bridge, T1), in_team(bridge, T2)
    [token_1], [token_2] = bridge.slack.installs.tokens_of(T1), bridge.slack.installs.tokens_of(T2)
    await connected_and_linked(one, user="U100", channel="C100", x_user="1000", conversation="1000-2001")
    await connected_and_linked(two, user="U200", channel="C200", x_user=BOB, conversation="2001-2002")
    await one.post("from team one", channel="C100", user="U100")
    await two.post("from team two", channel="C200", user="U200")
    await bridge.wait_dms(2)
    sent = {e.text: e.sender_id for e in bridge.x.events}
    assert sent == {"Ada: from team one": "1000", "Grace Hopper: from team two": BOB}
    # X's replies reach each workspace's own channel, posted with that workspace's token.
    bridge.x.add_message("1000-2001", ALICE, "to team one")
    bridge.x.add_message("2001-2002", ALICE, "to team two")

    def posts() -> dict[str, tuple[str, str]]:
        return {
            str(c.params.get("text")): (str(c.params.get("channel")), c.headers.get("authorization", ""))
            for c in bridge.slack.calls_to("chat.postMessage")
            if c.params.get("username")
        }

    await wait_until(lambda: len(posts()) >= 2, 10.0, "both replies posted")
    by_text = {text.split(": ", 1)[-1]: where for text, where in posts().items()}
    assert by_text["to team one"] == ("C100", f"Bearer {token_1}")
    assert by_text["to team two"] == ("C200", f"Bearer {token_2}")


async def test_a_workspace_cannot_reach_another_workspaces_channel_account_or_connect_flow(
    bridge: Bridge,
) -> None:
    await install(bridge, T1)
    await install(bridge, T2)
    one, two = in_team(bridge, T1), in_team(bridge, T2)
    await connected_and_linked(one, user="U100", channel="C100", x_user="1000", conversation="1000-2001")
    # Team two names team one's channel and user: no mapping, no account of theirs.
    status, _ = await two.command("status", user="U100", channel="C100")
    assert status.status == 200 and "1000" not in status.text and "@bridge_owner" not in status.text
    unlink, _ = await two.command("unlink", user="U100", channel="C100")
    assert "bridged this channel" not in unlink.text
    assert await bridge.sql("SELECT team_id, channel_id FROM mappings") == [(T1, "C100")]
    # A message signed for team two in team one's channel id (a forged team, a valid signature).
    await two.post("not for team one", channel="C100", user="U100")
    # A workspace that never installed the app gets nothing done either.
    three = in_team(bridge, "T0003")
    await three.post("from nowhere", channel="C100", user="U100")
    await one.post("for team one", channel="C100", user="U100")
    await bridge.wait_dms(1)
    await wait_until(lambda: bool(bridge.x.events), 5.0, "team one's DM")
    assert [e.text for e in bridge.x.events] == ["Ada: for team one"]
    # Someone in team two clicks Confirm on the question team one's U300 got: nothing connects.
    ack, _ = await one.command("connect", user="U300", channel="C100")
    bridge.x.authorizing_user_id = BOB
    async with bridge.session.get(
        await one.confirm(authorize_url(ack.text)), allow_redirects=False
    ) as answer:
        callback = answer.headers["Location"]
    async with bridge.session.get(callback) as answer:
        assert answer.status == 200, await answer.text()
    _, response_url = await two.answer_connect("U300")
    refused = await bridge.follow_up(response_url)
    assert "only they can connect" in refused["text"], refused
    accounts = await bridge.sql("SELECT team_id, slack_user_id FROM accounts ORDER BY team_id")
    assert accounts == [(T1, "U100")]


async def test_an_uninstall_pauses_the_workspace_keeps_its_messages_and_a_reinstall_resumes(
    bridge: Bridge,
) -> None:
    await install(bridge, T2)
    two = in_team(bridge, T2)
    await connected_and_linked(two, user="U200", channel="C200", x_user=BOB, conversation="2001-2002")
    await two.post("before the removal", channel="C200", user="U200")
    await bridge.wait_dms(1)
    result = await two.sender.event({"type": "app_uninstalled"})
    assert result.status == 200
    bridge.slack.installs.uninstall(T2)
    assert await bridge.sql("SELECT COUNT(*) FROM slack_installations") == [(0,)]
    assert await bridge.sql("SELECT paused_by FROM mappings") == [("slack-uninstalled",)]
    # X's reply arrives while the workspace has no token: it waits, nothing lost, nothing posted.
    bridge.x.add_message("2001-2002", ALICE, "while you were away")
    await wait_until_rows(bridge, "SELECT COUNT(*) FROM inbound WHERE state = 'queued'", 1)
    assert not [c for c in bridge.slack.calls_to("chat.postMessage") if c.params.get("username")]
    await install(bridge, T2)
    [new_token] = bridge.slack.installs.tokens_of(T2)
    posted = await bridge.slack.wait_for(
        lambda c: c.method == "chat.postMessage" and "while you were away" in str(c.params.get("text")),
        timeout=10.0,
    )
    assert posted[-1].headers["authorization"] == f"Bearer {new_token}"
    assert await bridge.sql("SELECT paused_at FROM mappings") == [(None,)]


async def test_a_late_retry_of_an_uninstall_leaves_the_install_made_since(bridge: Bridge) -> None:
    """Removed, then added again within minutes (the usual "turn it off and on"), and Slack
    delivers the removal's app_uninstalled again after that (its first delivery timed out:
    Slack retries after 1 and 5 minutes, with the event as it was). The retry deleted the new
    install's token and paused the channels: the workspace the admin had just added back was
    bridged by nothing, its messages waiting, until someone installed the app a third time."""
    await install(bridge, T2)
    two = in_team(bridge, T2)
    await connected_and_linked(two, user="U200", channel="C200", x_user=BOB, conversation="2001-2002")
    await two.post("before the removal", channel="C200", user="U200")
    await bridge.wait_dms(1)
    removal = json.dumps(two.sender.envelope({"type": "app_uninstalled"})).encode()
    assert (await two.sender.raw(removal, "application/json")).status == 200
    bridge.slack.installs.uninstall(T2)
    await asyncio.sleep(REMOVAL_CLOCK_SLACK + 0.2)  # added back a few seconds later
    await install(bridge, T2)
    assert await bridge.sql("SELECT paused_at FROM mappings") == [(None,)]
    retry = {"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
    assert (await two.sender.raw(removal, "application/json", headers=retry)).status == 200
    assert await bridge.sql("SELECT COUNT(*) FROM slack_installations") == [(1,)]
    assert await bridge.sql("SELECT paused_at FROM mappings") == [(None,)]
    [new_token] = bridge.slack.installs.tokens_of(T2)
    bridge.x.add_message("2001-2002", ALICE, "after the reinstall")
    posted = await bridge.slack.wait_for(
        lambda c: c.method == "chat.postMessage" and "after the reinstall" in str(c.params.get("text")),
        timeout=10.0,
    )
    assert posted[-1].headers["authorization"] == f"Bearer {new_token}"


async def wait_until_rows(bridge: Bridge, query: str, count: int) -> None:
    for _ in range(500):
        if (await bridge.sql(query))[0][0] >= count:
            return
        await _pause()
    raise AssertionError(f"{query} never reached {count}")


async def _pause() -> None:
    await asyncio.sleep(0.02)


async def test_a_member_of_another_organisation_in_a_bridged_shared_channel_is_told_not_relayed(
    bridge: Bridge,
) -> None:
    await install(bridge, T1)
    one = in_team(bridge, T1)
    await connected_and_linked(one, user="U100", channel="C100", x_user="1000", conversation="1000-2001")
    # Slack Connect: the event reaches team one's install; its author belongs to another org.
    result, _ = await one.post(
        "from a partner org", channel="C100", user="UEXT", extra={"user_team": "TPARTNER"}
    )
    assert result.status == 200
    told = await bridge.slack.wait_for(
        lambda c: c.method == "chat.postEphemeral" and c.params.get("user") == "UEXT", timeout=10.0
    )
    assert "not sent to X" in str(told[-1].params.get("text"))
    await one.post("from ada", channel="C100", user="U100", extra={"user_team": T1})
    await bridge.wait_dms(1)
    assert [e.text for e in bridge.x.events] == ["Ada: from ada"]


async def test_the_same_user_id_in_another_workspace_cannot_use_or_disconnect_the_account(
    bridge: Bridge,
) -> None:
    await install(bridge, T1)
    await install(bridge, T2)
    one, two = in_team(bridge, T1), in_team(bridge, T2)
    await connected_and_linked(one, user="U100", channel="C100", x_user="1000", conversation="1000-2001")
    # Team two's U100 is another person: they have no X account here, whatever team one's U100 has.
    dm, _ = await two.command("dm @alice", user="U100", channel="C200")
    assert "Connect your X account first" in dm.text, dm.text
    gone, _ = await two.command("disconnect", user="U100", channel="C200")
    assert "no X account connected" in gone.text, gone.text
    assert await bridge.sql("SELECT team_id, disconnected_at FROM accounts") == [(T1, None)]
    assert await bridge.sql("SELECT team_id, channel_id, paused_at FROM mappings") == [(T1, "C100", None)]


@pytest.mark.parametrize(("tokens", "removed"), [({"bot": ["UBOT2"]}, True), ({"oauth": ["U200"]}, False)])
async def test_tokens_revoked_removes_the_workspace_only_for_the_bots_token(
    bridge: Bridge, tokens: dict[str, list[str]], removed: bool
) -> None:
    await install(bridge, T1)
    await install(bridge, T2)
    result = await in_team(bridge, T2).sender.event({"type": "tokens_revoked", "tokens": tokens})
    assert result.status == 200
    left = await bridge.sql("SELECT team_id FROM slack_installations ORDER BY team_id")
    assert left == ([(T1,)] if removed else [(T1,), (T2,)])


async def test_a_workspace_of_an_enterprise_grid_org_installs_and_is_known_by_its_org(bridge: Bridge) -> None:
    bridge.slack.installs.add_team("T0009", "Grid Team", enterprise_id="E0001")
    await install(bridge, "T0009")
    assert await bridge.sql("SELECT enterprise_id, team_id FROM slack_installations") == [("E0001", "T0009")]
    grid = in_team(bridge, "T0009")
    response_url = bridge.slack.new_response_url()
    ack = await grid.sender.command(
        "help", user_id="U100", channel_id="C100", response_url=response_url, enterprise_id="E0001"
    )
    assert ack.status == 200 and "/xdm connect" in ack.text, ack.text
    # The same team id claimed under another org is not that install.
    other = await grid.sender.command(
        "help", user_id="U100", channel_id="C100", response_url=response_url, enterprise_id="E0666"
    )
    assert "/xdm connect" not in other.text


async def test_a_flood_of_install_page_views_is_capped_with_a_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("adapters.store.slack_installs.STATE_CAP", 1)
    async with running_bridge(tmp_path, env=INSTALL_ENV) as bridge:
        await start_install(bridge)
        async with bridge.session.get(f"{bridge.url}/slack/install") as response:
            page = await response.text()
        assert response.status == 503 and "Try again in a few minutes" in page
        assert await bridge.sql("SELECT COUNT(*) FROM slack_oauth_states") == [(1,)]


async def test_each_workspaces_home_and_form_go_out_with_its_own_token(bridge: Bridge) -> None:
    """App Home and the /xdm form in install mode: views are published and opened with the
    token of the workspace whose person asked, never another's or none."""
    await install(bridge, T1)
    await install(bridge, T2)
    [token_1], [token_2] = bridge.slack.installs.tokens_of(T1), bridge.slack.installs.tokens_of(T2)
    for team, user, token in ((T1, "U100", token_1), (T2, "U200", token_2)):
        sender = SlackSender(
            bridge.session,
            f"{bridge.url}/slack/events",
            SIGNING_SECRET,
            team_id=team,
            triggers=bridge.slack.views.issue_trigger_id,
        )
        result = await SurfaceSender(sender, bridge.slack).home_opened(user)
        assert result.status == 200
        await wait_until(
            lambda user=user: any(  # type: ignore[misc]
                c.params.get("user_id") == user for c in bridge.slack.calls_to("views.publish")
            ),
            10.0,
            f"{user}'s Home published",
        )
        [published] = [c for c in bridge.slack.calls_to("views.publish") if c.params.get("user_id") == user]
        assert published.headers.get("authorization") == f"Bearer {token}"
        assert "Connect" in bridge.slack.views.home_text(user)

        before = len(bridge.slack.calls_to("views.open"))
        ack = await sender.command("", user_id=user, channel_id="C100", response_url="", channel_name="x")
        assert ack.status == 200
        opened = bridge.slack.calls_to("views.open")[before:]
        assert [c.headers.get("authorization") for c in opened] == [f"Bearer {token}"]


async def test_debug_logs_of_an_install_hold_no_token_refresh_token_or_client_secret(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LOG_LEVEL=debug (what an operator sets to see a problem) and an install with rotating
    tokens: slack-sdk logs each call's body at debug, oauth.v2.access's among them (the client
    secret and code sent, the bot token and its refresh token answered). None may reach a log."""
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    monkeypatch.setattr(logs, "_KNOWN", sorted(bridge.settings.secrets, key=len, reverse=True))
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        bridge.slack.installs.token_rotation = True
        await install(bridge, T2)
        await in_team(bridge, T2).sender.message("C100", "U100", "hello")
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    written = lines.getvalue()
    assert "oauth.v2.access" in written  # the exchange was logged (at debug), so this looks at it
    [token] = bridge.slack.installs.tokens_of(T2)
    [refresh] = await bridge.sql("SELECT bot_refresh_token FROM slack_installations")
    cipher = TokenCipher(bridge.settings.encryption_keys)
    for secret in (token, cipher.decrypt(refresh[0]), INSTALL_ENV["SLACK_CLIENT_SECRET"]):
        assert secret not in written
    assert "xoxe-" not in written and "xoxb-" not in written


async def test_made_up_oauth_errors_cost_a_line_a_minute_and_are_not_echoed(
    bridge: Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    """Anyone can open Slack's redirect with any ``error=``: each made-up reason must not be a
    new log line (a line a minute per reason is no cap when the reasons are endless), nor a new
    entry kept in memory, nor words of the sender's shown on the bridge's page."""
    planted = "Your workspace is suspended. Call +1 555 0100 to restore it"
    with caplog.at_level(logging.INFO, "adapters"):
        for n in range(30):
            async with bridge.session.get(
                f"{bridge.url}/slack/oauth_redirect", params={"error": f"{planted} {n}"}
            ) as response:
                page = await response.text()
                assert response.status == 400, page
                assert "Call +1" not in page and "Start again from the install page" in page
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("adapters.slack.install")]
    assert len(lines) <= 1, lines
    assert not [key for key in REFUSALS._last if "555" in key]  # no reason of theirs kept
    async with bridge.session.get(
        f"{bridge.url}/slack/oauth_redirect", params={"error": "access_denied"}
    ) as response:
        assert "You cancelled on Slack" in await response.text()  # Slack's own reasons still read
