"""What people read in answer to `/xdm`: handles, not ids; each thing said once; dates where due."""

from __future__ import annotations

import re
from pathlib import Path

from tests.harness import ALICE, Bridge, authorize_url, running_bridge


async def said(bridge: Bridge, text: str, *, user: str = "U100") -> str:
    ack, _ = await bridge.command(text, user=user)
    assert ack.status == 200
    answer: str = ack.json()["text"]
    return answer


async def test_one_to_one_is_confirmed_and_shown_by_handle(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        _, response_url = await bridge.command("dm @alice")
        told = (await bridge.follow_up(response_url))["text"]
        assert told == (
            "<@U100> bridged this channel to their DMs with @alice. "
            "Messages posted here go to X as @bridge_owner (<@U100>'s X account), and the direct "
            "messages of that conversation, from everyone in it, are posted here for every member "
            "of this channel to read."
        )
        status = await said(bridge, "status")
        assert "This channel is bridged to the 1-to-1 X DMs with @alice." in status
        assert ALICE not in status and "user" not in status


async def test_status_names_the_sending_account_once(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        bridge.slack.add_user("U300", display_name="bridge_owner")  # the same name on both sides
        await bridge.connect(user="U300")
        await bridge.map_link("1000-2001", user="U300")
        mine = await said(bridge, "status", user="U300")
        assert "Messages are sent as your X account @bridge_owner." in mine.splitlines()
        assert mine.count("bridge_owner") == 1 and "<@U300>" not in mine
        theirs = await said(bridge, "status", user="U100")
        assert "Messages are sent as @bridge_owner, the X account <@U300> connected." in theirs.splitlines()


async def test_a_reset_more_than_12_hours_away_shows_its_date(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        await bridge.map_link("1000-2001")
        _, ts = await bridge.post("uses each window")
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        [budget] = [line for line in (await said(bridge, "status")).splitlines() if "budget" in line]
        soon = r"resets \d\d:\d\d UTC"
        dated = r"resets (Mon|Tue|Wed|Thu|Fri|Sat|Sun) \d{1,2} [A-Z][a-z]{2}, \d\d:\d\d UTC"
        assert re.search(rf"\(15 min, {soon}\)", budget), budget
        assert re.search(rf"\(24 h, {dated}\)", budget), budget
        assert re.search(rf"\(app, 24 h, {dated}\)", budget), budget


async def test_connect_when_connected_says_as_whom_and_offers_to_reconnect(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        first = await said(bridge, "connect")
        assert first.startswith("<") and "Connect your X account" in first
        await bridge.connect()
        again = await said(bridge, "connect")
        assert again.startswith("You are connected as @bridge_owner on X. <")
        assert "|Reconnect>" in again and "switch to another X account" in again
        assert authorize_url(again)  # the link is there and works like the first one


async def test_help_has_one_line_per_command(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        lines = (await said(bridge, "help")).splitlines()
        commands = [line for line in lines if line.startswith("• `/xdm ")]
        assert len(commands) == 7  # connect, new-group, dm, link, unlink, status, disconnect
        assert lines == [lines[0], *commands, lines[-1]]  # a title, the commands, one footnote
