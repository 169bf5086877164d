"""Who may bridge, unlink and replace: tried as another member of the workspace would."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.harness import running_bridge


def mappings(db_path: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(db_path) as db:
        return db.execute("SELECT channel_id, conversation_id, created_by FROM mappings").fetchall()


async def test_another_member_can_neither_unlink_nor_relink_a_mapping(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        await bridge.map_link("1000-2001")
        await bridge.connect(user="U200", x_user="2002")

        ack, _ = await bridge.command("unlink", user="U200")
        assert "belongs to <@U100>" in ack.text and "workspace admin or owner" in ack.text
        assert "unlink" in ack.text and ack.json()["response_type"] == "ephemeral"
        for text in ("link 2002-2003", "dm @carol", "new-group @alice @carol"):
            ack, _ = await bridge.command(text, user="U200")
            assert "belongs to <@U100>" in ack.text and "replace" in ack.text, text
        assert mappings(bridge.db_path) == [("C100", "1000-2001", "U100")]
        assert bridge.x.dm_posts == 0 and bridge.x.conversations == {}

        # A workspace admin may, and the channel is told who did it.
        ack, _ = await bridge.confirmed("unlink", user="U300")
        assert ack.json()["response_type"] == "in_channel"
        assert "<@U300> stopped bridging" in ack.text
        assert mappings(bridge.db_path) == []


async def test_the_maker_may_unlink_and_the_channel_is_told_who(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        ack = await bridge.map_link("1000-2001")
        assert ack.json()["response_type"] == "in_channel" and "<@U100> bridged this channel" in ack.text
        ack, _ = await bridge.confirmed("unlink")
        assert ack.json()["response_type"] == "in_channel" and "<@U100> stopped bridging" in ack.text


async def test_admin_only_refuses_members_and_names_the_setting(tmp_path: Path) -> None:
    async with running_bridge(tmp_path, env={"XDM_ADMIN_ONLY": "1"}) as bridge:
        await bridge.connect()
        for text in ("link 1000-2001", "dm @alice hello", "new-group @alice @bob"):
            ack, _ = await bridge.command(text)
            assert "XDM_ADMIN_ONLY" in ack.text and "admins and owners" in ack.text, text
        assert mappings(bridge.db_path) == [] and bridge.x.dm_posts == 0

        await bridge.connect(user="U300", x_user="2004")
        ack = await bridge.map_link("2001-2004", user="U300")
        assert "<@U300> bridged this channel" in ack.text
        assert mappings(bridge.db_path) == [("C100", "2001-2004", "U300")]


async def test_allowed_users_lets_only_them_and_admins_map(tmp_path: Path) -> None:
    async with running_bridge(tmp_path, env={"XDM_ALLOWED_USERS": "U200, W999"}) as bridge:
        await bridge.connect()
        ack, _ = await bridge.command("link 1000-2001")
        assert "XDM_ALLOWED_USERS" in ack.text
        await bridge.connect(user="U200", x_user="2002")
        ack = await bridge.map_link("2001-2002", user="U200")
        assert "<@U200> bridged this channel" in ack.text
        await bridge.connect(user="U300", x_user="2004")
        ack = await bridge.map_link("2001-2004", user="U300", channel="C200")
        assert "<@U300> bridged this channel" in ack.text


async def test_a_channel_the_bot_is_not_in_is_not_mapped(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        bridge.slack.add_channel("C300", "outside", is_member=False)
        await bridge.connect()
        for channel in ("C300", "C404"):  # C404: private, so Slack hides it from the bot
            for text in ("link 1000-2001", "dm @alice hello", "new-group @alice @bob"):
                ack, _ = await bridge.command(text, channel=channel)
                assert "/invite @xdm-bridge" in ack.text, (channel, text)
        assert mappings(bridge.db_path) == [] and bridge.x.dm_posts == 0


def test_policy_settings_are_read_and_checked() -> None:
    from bridge.errors import ConfigError
    from bridge.settings import Settings
    from tests.harness import bridge_env

    env = bridge_env(Path("x.db"), "http://x", "http://s/api/", 3000)
    settings = Settings.from_env({**env, "XDM_ADMIN_ONLY": "1", "XDM_ALLOWED_USERS": "U1AB, W2CD"})
    assert settings.admin_only and settings.allowed_users == frozenset({"U1AB", "W2CD"})
    try:
        Settings.from_env({**env, "XDM_ADMIN_ONLY": "maybe", "XDM_ALLOWED_USERS": "@bob"})
    except ConfigError as exc:
        assert "XDM_ADMIN_ONLY='maybe'" in str(exc) and "XDM_ALLOWED_USERS holds '@bob'" in str(exc)
    else:
        raise AssertionError("bad policy settings were accepted")


def test_policy_refusal_names_the_setting_and_lets_admins_through() -> None:
    from bridge.model import SlackMember
    from bridge.permissions import Policy, policy_refusal

    member, admin, owner = (
        SlackMember("U1"),
        SlackMember("U2", is_admin=True),
        SlackMember("U3", is_owner=True),
    )
    assert policy_refusal(Policy(), "U1", member) is None
    assert policy_refusal(Policy(), "U1", None) is None  # no rules: Slack need not be asked
    only_admins = Policy(admin_only=True)
    assert "XDM_ADMIN_ONLY" in (policy_refusal(only_admins, "U1", member) or "")
    assert (
        policy_refusal(only_admins, "U2", admin) is None and policy_refusal(only_admins, "U3", owner) is None
    )
    assert "try again" in (policy_refusal(only_admins, "U1", None) or "")  # fail closed
    listed = Policy(allowed_users=frozenset({"U1"}))
    assert policy_refusal(listed, "U1", member) is None and policy_refusal(listed, "U2", admin) is None
    assert "XDM_ALLOWED_USERS" in (policy_refusal(listed, "U9", SlackMember("U9")) or "")
    assert policy_refusal(listed, "U1", None) is None  # listed people need no users.info
