"""`/xdm` end to end: signed slash commands in, X calls and Slack replies out."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.harness import ALICE, BOB, CAROL, ME, Bridge, authorize_url, query_of, running_bridge


async def test_connect_round_trip_stores_encrypted_account(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        ack, _ = await bridge.command("connect")
        assert ack.status == 200
        assert authorize_url(ack.text).startswith(f"{bridge.url}/x/connect?state=")  # the bridge's page first
        x_url = await bridge.confirm(authorize_url(ack.text))
        params = query_of(x_url)
        assert params["response_type"] == "code"
        assert params["client_id"] == "test-client"
        assert params["redirect_uri"] == f"{bridge.url}/x/oauth/callback"
        assert params["scope"] == "dm.read dm.write tweet.read users.read offline.access media.write"
        assert params["code_challenge_method"] == "S256"
        assert len(params["state"]) >= 32 and len(params["code_challenge"]) == 43

        async with bridge.session.get(x_url, allow_redirects=False) as response:
            location = response.headers["Location"]
        async with bridge.session.get(location) as response:
            page = await response.text()
        assert response.status == 200
        assert "@bridge_owner" in page and "text/html" in response.headers["Content-Type"]

        _, click_url = await bridge.answer_connect("U100")
        told = await bridge.follow_up(click_url)
        assert "Connected X account @bridge_owner" in told["text"]
        grants = [r["grant_type"] for r in bridge.x.token_requests]
        assert grants == ["authorization_code"]

        rows = await bridge.sql(
            "SELECT team_id, slack_user_id, x_user_id, x_username, access_token, refresh_token FROM accounts"
        )
        assert len(rows) == 1
        team, slack_user, x_user, username, access, refresh = rows[0]
        assert (team, slack_user, x_user, username) == ("T0001", "U100", ME, "bridge_owner")
        live_tokens = set(bridge.x.access_tokens) | set(bridge.x.refresh_tokens)
        assert access not in live_tokens and refresh not in live_tokens  # stored encrypted
        assert access.startswith("gAAAA")  # a Fernet token


async def test_bad_reused_and_expired_state_store_nothing(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        async with bridge.session.get(f"{bridge.url}/x/oauth/callback?state=forged&code=abc") as response:
            assert response.status == 400
            assert "did not confirm it" in await response.text()  # no flow cookie in this browser

        await bridge.connect()
        # The state just used cannot be replayed.
        ack, _ = await bridge.command("connect", user="U200")
        url = await bridge.confirm(authorize_url(ack.text))
        async with bridge.session.get(url, allow_redirects=False) as response:
            location = response.headers["Location"]
        async with bridge.session.get(location) as response:
            assert response.status == 200
        async with bridge.session.get(location) as response:
            assert response.status == 400
        _, click_url = await bridge.answer_connect("U200")
        await bridge.follow_up(click_url)

        # An expired state is refused even with a fresh code.
        ack, _ = await bridge.command("connect", user="U300")
        url = await bridge.confirm(authorize_url(ack.text))
        await bridge.sql("UPDATE oauth_states SET expires_at = 0 WHERE used = 0")
        async with bridge.session.get(url, allow_redirects=False) as response:
            location = response.headers["Location"]
        async with bridge.session.get(location) as response:
            assert response.status == 400
            assert "expired" in await response.text()

        users = [r[0] for r in await bridge.sql("SELECT slack_user_id FROM accounts")]
        assert sorted(users) == ["U100", "U200"]


async def test_declined_authorization_connects_nothing(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        ack, response_url = await bridge.command("connect")
        bridge.x.deny_next_authorize = True
        x_url = await bridge.confirm(authorize_url(ack.text))
        async with bridge.session.get(x_url, allow_redirects=False) as response:
            location = response.headers["Location"]
        async with bridge.session.get(location) as response:
            assert response.status == 200
            assert "cancelled" in await response.text()
        assert "cancelled" in (await bridge.follow_up(response_url))["text"]
        assert await bridge.sql("SELECT COUNT(*) FROM accounts") == [(0,)]


async def opening_ts(bridge: Bridge) -> str:
    """The ts of the bot's post showing a command's opening message (its ✅ goes there)."""
    [call] = await bridge.slack.wait_for(
        lambda c: c.method == "chat.postMessage" and "opening message" in str(c.params.get("text")),
        timeout=10.0,
    )
    return str(call.response["ts"])


async def test_new_group_creates_conversation_and_tells_channel(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        ack, response_url = await bridge.command("new-group @alice @bob Welcome aboard")
        assert ack.status == 200 and "Creating an X group" in ack.text
        told = await bridge.follow_up(response_url)
        assert told["response_type"] == "in_channel"
        assert "@alice" in told["text"] and "@bob" in told["text"] and "@bridge_owner" in told["text"]

        # The opening message creates the group from the outbox, ✅ on its post in the channel.
        await bridge.wait_reaction("C100", await opening_ts(bridge), "white_check_mark")
        [conversation] = [c for c in bridge.x.conversations.values() if len(c.participants) == 3]
        assert set(conversation.participants) == {ME, ALICE, BOB}
        assert bridge.texts(conversation.id) == ["Ada: Welcome aboard"]

        # Messages in the channel now go to that group, through /2/dm_conversations/{id}/messages.
        _, ts = await bridge.post("hello group")
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        assert bridge.texts(conversation.id) == ["Ada: Welcome aboard", "Ada: hello group"]
        posts = [r.path for r in bridge.x.all_requests if r.method == "POST" and r.path.endswith("/messages")]
        assert posts == [f"/2/dm_conversations/{conversation.id}/messages"]


async def test_new_group_default_opening_names_channel_and_numeric_ids(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        _, response_url = await bridge.command(f"new-group {ALICE} {BOB}")
        await bridge.follow_up(response_url)
        await bridge.wait_reaction("C100", await opening_ts(bridge), "white_check_mark")
        [event] = bridge.x.events
        assert event.text == "Ada: This group is bridged to #support on Slack."


async def test_new_group_errors_are_specific(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        ack, _ = await bridge.command("new-group @alice @bob")
        assert "/xdm connect" in ack.text  # not connected yet

        await bridge.connect()
        ack, _ = await bridge.command("new-group @alice")
        assert "at least 2" in ack.text
        many = " ".join(str(3000 + i) for i in range(50))
        ack, _ = await bridge.command(f"new-group {many}")
        assert "at most 49" in ack.text
        ack, _ = await bridge.command("new-group @alice @this_is_way_too_long_for_x")
        assert "not a valid X handle" in ack.text
        ack, _ = await bridge.command("new-group <@U123|bob> @alice")
        assert "Slack member" in ack.text

        ack, response_url = await bridge.command("new-group @alice @nobody_here")
        assert ack.status == 200
        told = await bridge.follow_up(response_url)
        assert "X has no user @nobody_here" in told["text"]
        assert bridge.x.conversations == {}
        assert bridge.x.dm_posts == 0


async def test_mapped_channel_refuses_second_mapping(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        await bridge.map_link("1000-2001")
        for text in ("link 1000-2002", "new-group @alice @bob", "dm @carol"):
            ack, _ = await bridge.command(text)
            assert "already bridged to X conversation `1000-2001`" in ack.text, text
        assert bridge.x.dm_posts == 0


async def test_dm_with_message_sends_and_maps_one_to_one(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        ack, response_url = await bridge.command("dm @alice Hi Alice")
        assert ack.status == 200
        told = await bridge.follow_up(response_url)
        assert told["response_type"] == "in_channel" and "@alice" in told["text"]
        await bridge.wait_reaction("C100", await opening_ts(bridge), "white_check_mark")
        assert bridge.texts("1000-2001") == ["Ada: Hi Alice"]

        _, ts = await bridge.post("second")
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        paths = [
            r.path for r in bridge.x.all_requests if r.method == "POST" and "/dm_conversations" in r.path
        ]
        assert paths == [f"/2/dm_conversations/with/{ALICE}/messages"] * 2
        assert bridge.texts("1000-2001") == ["Ada: Hi Alice", "Ada: second"]
        rows = await bridge.sql("SELECT kind, conversation_id, participant_id FROM mappings")
        assert rows == [("dm", "1000-2001", ALICE)]


async def test_dm_without_message_maps_without_sending(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        _, response_url = await bridge.command("dm @bob")
        told = await bridge.follow_up(response_url)
        assert "their DMs with @bob" in told["text"]
        assert bridge.x.dm_posts == 0
        ack, _ = await bridge.command("dm")
        assert "Usage" in ack.text
        ack, _ = await bridge.command("dm hello")
        assert "not an X handle" in ack.text


async def test_link_validates_conversation_id(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        for bad in ("abc", "123", "12-ab", "1234567890123456789012"):
            ack, _ = await bridge.command(f"link {bad}")
            assert "is not an X conversation id" in ack.text, bad
        ack, _ = await bridge.command("link")
        assert "Usage" in ack.text
        ack = await bridge.map_link("1000-2001")
        assert "bridged this channel to X conversation `1000-2001`" in ack.text
        assert ack.json()["response_type"] == "in_channel"


async def test_unlink_status_help(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        ack, _ = await bridge.command("status")
        assert "not bridged" in ack.text and "/xdm connect" in ack.text
        await bridge.connect()
        await bridge.map_link("1000-2001")
        ack, _ = await bridge.command("status")
        assert "X conversation `1000-2001`" in ack.text
        assert "sent as your X account @bridge_owner" in ack.text
        assert "No messages waiting" in ack.text
        assert "X DM budget left" in ack.text

        ack, _ = await bridge.confirmed("unlink")
        assert ack.json()["response_type"] == "in_channel"
        assert "stopped bridging" in ack.text
        ack, _ = await bridge.confirmed("unlink")
        assert "nothing to unlink" in ack.text

        await bridge.post("not relayed any more")
        ack, _ = await bridge.command("help")
        assert "/xdm new-group" in ack.text and "/xdm link" in ack.text
        ack, _ = await bridge.command("frobnicate")
        assert "I don't know `frobnicate`" in ack.text and "/xdm dm" in ack.text
        assert bridge.x.dm_posts == 0


async def test_connect_without_public_url_says_why(tmp_path: Path) -> None:
    async with running_bridge(tmp_path, env={"PUBLIC_URL": ""}) as bridge:
        ack, _ = await bridge.command("connect")
        assert "PUBLIC_URL is not set" in ack.text


async def test_commands_ack_fast_while_x_hangs(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        bridge.x.timeout_seconds = 5.0
        bridge.x.inject("timeout", path_contains="/2/users/by/username")
        loop = asyncio.get_running_loop()
        started = loop.time()
        ack, response_url = await bridge.command("new-group @alice @bob")
        assert ack.status == 200 and loop.time() - started < 2.0
        told = await bridge.follow_up(response_url)
        assert "X" in told["text"]  # the failure is reported later, not swallowed


async def test_link_refuses_a_one_to_one_id_the_account_is_not_in(tmp_path: Path) -> None:
    """`/xdm link 123-456`: a 1-to-1 id names its two people; unless one is the account, X
    would refuse every message, so nothing is mapped and X is not even asked."""
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        for foreign in ("123-456", f"{ALICE}-{BOB}"):
            ack, _ = await bridge.command(f"link {foreign}")
            assert ack.json()["response_type"] == "ephemeral"
            assert f"`{foreign}`" in ack.text and "@bridge_owner" in ack.text and ME in ack.text, ack.text
        assert await bridge.sql("SELECT COUNT(*) FROM mappings") == [(0,)]
        assert [r for r in bridge.x.all_requests if r.path.startswith("/2/dm_conversations/")] == []


async def test_link_reads_the_conversation_once_before_announcing_it(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        strangers = bridge.x.create_group(ALICE, [BOB, CAROL])  # a group the account is not in
        _, response_url = await bridge.command(f"link {strangers}")
        told = await bridge.follow_up(response_url)
        assert told["response_type"] == "ephemeral" and f"`{strangers}`" in told["text"]
        assert "cannot read" in told["text"] and "@bridge_owner" in told["text"], told
        assert await bridge.sql("SELECT COUNT(*) FROM mappings") == [(0,)]

        ours = bridge.x.create_group(ME, [ALICE, BOB])
        ack = await bridge.map_link(ours)
        assert ack.json()["response_type"] == "in_channel" and f"`{ours}`" in ack.text
        reads = [r for r in bridge.x.all_requests if r.path.startswith("/2/dm_conversations/")]
        assert [(r.path, r.query["max_results"]) for r in reads] == [
            (f"/2/dm_conversations/{strangers}/dm_events", "1"),
            (f"/2/dm_conversations/{ours}/dm_events", "1"),
        ]
        assert await bridge.sql("SELECT conversation_id FROM mappings") == [(ours,)]


async def test_connect_with_dm_scopes_missing_says_so_and_binds_nothing(tmp_path: Path) -> None:
    """X's token answer lists the scopes granted: without the DM ones, connecting would only
    end in a 403 on the first message, so the page and the Slack user are told at once."""
    async with running_bridge(tmp_path) as bridge:
        bridge.x.withheld_scopes = {"dm.write", "offline.access"}  # an app without DM permission
        ack, response_url = await bridge.command("connect")
        x_url = await bridge.confirm(authorize_url(ack.text))
        async with bridge.session.get(x_url, allow_redirects=False) as response:
            callback = response.headers["Location"]
        async with bridge.session.get(callback) as response:
            page = await response.text()
        assert response.status == 403, page
        assert "dm.write" in page and "offline.access" in page and "Nothing was connected" in page
        told = await bridge.follow_up(response_url)
        assert "dm.write" in told["text"] and "offline.access" in told["text"], told
        assert await bridge.sql("SELECT COUNT(*) FROM accounts") == [(0,)]
        granted = [t for t in bridge.x.access_tokens.values() if t.user_id == ME]
        assert granted and all(t.revoked for t in granted)  # the useless grant is given back


async def test_link_with_the_read_budget_spent_says_until_when_and_links_nothing(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        # X says the read window is spent for the next 15 minutes: too long to wait for.
        bridge.x.injected_reset_seconds = 900
        bridge.x.inject("429", path_contains="/2/dm_conversations/")
        _, response_url = await bridge.command(f"link {ME}-{ALICE}")
        told = await bridge.follow_up(response_url)
        assert "read budget is spent until" in told["text"] and "nothing was linked" in told["text"], told
        assert await bridge.sql("SELECT COUNT(*) FROM mappings") == [(0,)]
        reads = [r for r in bridge.x.all_requests if r.path.startswith("/2/dm_conversations/")]
        assert len(reads) == 1  # asked once; not again before the window opens


async def test_link_waits_for_a_read_window_about_to_open(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        bridge.x.injected_reset_seconds = 1  # spent, but open again in a moment
        bridge.x.inject("429", path_contains="/2/dm_conversations/")
        ack = await bridge.map_link(f"{ME}-{ALICE}")
        assert "bridged this channel" in ack.text
        reads = [r for r in bridge.x.all_requests if r.path.startswith("/2/dm_conversations/")]
        assert len(reads) == 2  # refused once, then read when the window opened
