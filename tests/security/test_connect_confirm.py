"""A connect link finished by someone else binds nothing: the Slack user who asked confirms in Slack.

Whoever opens a `/xdm connect` link chooses the X account on X's page. X's callback therefore
only keeps the tokens, pending, and the bridge asks the Slack user who ran the command (an
ephemeral question with Confirm/Cancel); only their signed click binds the account.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlencode

import aiohttp

from adapters.sandbox.fake_slack import SlackResult
from tests.harness import ALICE, ME, Bridge, authorize_url, browser_cookies, running_bridge


async def authorize_in(
    bridge: Bridge, browser: aiohttp.ClientSession, x_user: str, *, user: str = "U100"
) -> str:
    """`/xdm connect` by ``user``; the link opened and approved on X as ``x_user`` in ``browser``.
    Returns the callback page (asserting it answered 200)."""
    ack, _ = await bridge.command("connect", user=user)
    x_url = await bridge.confirm(authorize_url(ack.text), browser)
    bridge.x.authorizing_user_id = x_user
    async with browser.get(x_url, allow_redirects=False) as response:
        callback = response.headers["Location"]
    async with browser.get(callback) as response:
        page = await response.text()
        assert response.status == 200, page
    return page


async def accounts(bridge: Bridge) -> list[tuple[str, str]]:
    return [(str(u), str(x)) for u, x in await bridge.sql("SELECT slack_user_id, x_user_id FROM accounts")]


async def pending_count(bridge: Bridge) -> int:
    [(count,)] = await bridge.sql("SELECT COUNT(*) FROM pending_connections")
    return int(count)


def revoked_at_x(bridge: Bridge, x_user: str) -> bool:
    tokens = [t for t in bridge.x.access_tokens.values() if t.user_id == x_user]
    return bool(tokens) and all(t.revoked for t in tokens)


async def test_a_forwarded_link_binds_nothing_and_the_asker_can_cancel_it(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        # U100's link, opened first in someone else's browser, who approves their own X account.
        async with aiohttp.ClientSession(cookie_jar=browser_cookies()) as forwarder:
            page = await authorize_in(bridge, forwarder, ALICE)
        assert "Confirm in Slack" in page and "@alice" in page and "not connected yet" in page
        assert await accounts(bridge) == [] and await pending_count(bridge) == 1

        # The question reaches U100 alone, in the channel they typed the command in.
        [question] = [e for e in bridge.slack.ephemerals("U100") if e.get("blocks")]
        assert question["channel"] == "C100" and "@alice" in question["text"]
        labels = [b.text for b in bridge.slack.buttons("U100")]
        assert labels == ["Connect @alice", "Cancel"]

        # Another Slack user's click (a crafted payload, signed) is refused and changes nothing.
        _, response_url = await bridge.answer_connect("U100", clicked_by="U200")
        refused = await bridge.follow_up(response_url)
        assert "only they can" in refused["text"] and refused.get("replace_original") is False
        assert await accounts(bridge) == [] and await pending_count(bridge) == 1

        # U100 did not approve @alice: Cancel gives X's grant back.
        _, response_url = await bridge.answer_connect("U100", confirm=False)
        cancelled = await bridge.follow_up(response_url)
        assert "Cancelled" in cancelled["text"] and cancelled["replace_original"] is True
        assert bridge.slack.buttons("U100") == []  # the question was replaced by the answer
        assert await accounts(bridge) == [] and await pending_count(bridge) == 0
        assert revoked_at_x(bridge, ALICE)


async def test_the_asker_confirms_once_and_a_replayed_click_does_nothing_more(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        page = await authorize_in(bridge, bridge.session, ME)
        assert "@bridge_owner" in page and await accounts(bridge) == []
        stored = await bridge.sql("SELECT access_token FROM pending_connections")
        assert stored and all(str(v).startswith("gAAAA") for (v,) in stored)  # encrypted as accounts are

        button = bridge.connect_button("U100")
        first_url = bridge.slack.click_response_url(button)
        assert (await bridge.sender.click(button, user_id="U100", response_url=first_url)).status == 200
        told = await bridge.follow_up(first_url)
        assert "Connected X account @bridge_owner" in told["text"] and told["replace_original"] is True
        assert await accounts(bridge) == [("U100", ME)] and await pending_count(bridge) == 0
        [(updated_at,)] = await bridge.sql("SELECT updated_at FROM accounts")

        replay_url = bridge.slack.click_response_url(button)  # the same click, delivered again
        assert (await bridge.sender.click(button, user_id="U100", response_url=replay_url)).status == 200
        again = await bridge.follow_up(replay_url)
        assert "already answered or has expired" in again["text"]
        assert await bridge.sql("SELECT updated_at FROM accounts") == [(updated_at,)]
        assert len(bridge.slack.responses[first_url.rsplit("/", 1)[-1]]) == 1
        assert [r["grant_type"] for r in bridge.x.token_requests] == ["authorization_code"]


async def test_unsigned_and_badly_signed_clicks_are_refused(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await authorize_in(bridge, bridge.session, ME)
        button = bridge.connect_button("U100")
        response_url = bridge.slack.click_response_url(button)
        results: list[SlackResult] = [
            await bridge.sender.click(
                button, user_id="U100", response_url=response_url, signature_override="v0=00"
            ),
            await bridge.sender.click(
                button, user_id="U100", response_url=response_url, timestamp_override=1
            ),
        ]
        payload = bridge.sender.block_actions(button, user_id="U100", response_url=response_url)
        body = urlencode({"payload": json.dumps(payload)}).encode()
        results.append(await bridge.sender.raw(body, "application/x-www-form-urlencoded", sign=False))
        assert [r.status for r in results] == [401, 401, 401]
        assert await accounts(bridge) == [] and await pending_count(bridge) == 1
        assert bridge.slack.responses[response_url.rsplit("/", 1)[-1]] == []


async def test_an_unanswered_question_expires_and_xs_grant_is_revoked(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await authorize_in(bridge, bridge.session, ME)
        await bridge.sql("UPDATE pending_connections SET expires_at = 0")
        _, response_url = await bridge.answer_connect("U100")
        told = await bridge.follow_up(response_url)
        assert "expired" in told["text"]
        assert await accounts(bridge) == [] and await pending_count(bridge) == 0
        assert revoked_at_x(bridge, ME)


async def test_the_question_goes_by_direct_message_where_the_bot_cannot_post(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        bridge.slack.channel_errors["C100"] = "not_in_channel"
        await authorize_in(bridge, bridge.session, ME)
        [button, _] = bridge.slack.buttons("U100")
        assert not button.ephemeral and button.channel == "U100"  # the bot's DM to U100
        _, response_url = await bridge.answer_connect("U100")
        assert "Connected X account" in (await bridge.follow_up(response_url))["text"]
        assert await accounts(bridge) == [("U100", ME)]


async def test_connecting_another_x_account_gives_the_previous_ones_grant_back(tmp_path: Path) -> None:
    """U100 connects @bridge_owner, then confirms @alice instead: the bridge overwrote
    @bridge_owner's tokens without revoking them, so X kept a live grant (a refresh token, in any
    backup of the database) that the bridge no longer knew of and `/xdm disconnect` could not
    reach. Reconnecting the same X account keeps its grant."""
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect(x_user=ME)
        await bridge.connect(x_user=ME)  # the same account again: nothing to give back
        assert not any(t.revoked for t in bridge.x.access_tokens.values() if t.user_id == ME)
        held = [t for t in bridge.x.access_tokens.values() if t.user_id == ME][-1]  # what the bridge holds
        await bridge.connect(x_user=ALICE)
        assert await accounts(bridge) == [("U100", ALICE)]
        assert held.revoked
        assert not any(t.revoked for t in bridge.x.access_tokens.values() if t.user_id == ALICE)
