"""Typed `/xdm unlink` and `/xdm disconnect` ask first: Confirm / Cancel on an ephemeral question.

The question comes through the command's response_url with its buttons; a click is a signed
``block_actions`` from the fake Slack, honoured only from the person who typed the command,
within 10 minutes, and only on the state the question described. Each test runs on both stores.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from bridge.confirm import CONFIRM_CANCEL, CONFIRM_DISCONNECT, CONFIRM_UNLINK, QUESTION_TTL
from bridge.scheduler import SystemClock
from tests.harness import Bridge, linked, running_bridge


class ShiftedClock(SystemClock):
    """Real time plus a shift the test moves forward (the bridge's clock only)."""

    def __init__(self) -> None:
        self.shift = 0.0

    def now(self) -> float:
        return time.time() + self.shift


async def mapped_channels(bridge: Bridge) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in await bridge.sql("SELECT channel_id, conversation_id FROM mappings")]


def question_text(bridge: Bridge, user: str = "U100") -> str:
    """The newest ephemeral question (with buttons) ``user`` sees."""
    asked = [e for e in bridge.slack.ephemerals(user) if e.get("blocks")]
    assert asked, f"no question shown to {user}"
    return str(asked[-1]["text"])


async def test_typed_unlink_asks_and_nothing_changes_until_confirm(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        ack, response_url = await bridge.ask("unlink")
        assert ack.text == ""  # the question comes through response_url, buttons and all
        [asked] = bridge.slack.responses[response_url.rsplit("/", 1)[-1]]
        assert asked["response_type"] == "ephemeral"
        text = question_text(bridge)
        assert "Stop bridging <#C100> to X conversation `1000-2001`" in text
        assert "sent as X account @bridge_owner" in text and "no longer go to X" in text
        labels = [(b.action_id, b.text) for b in bridge.slack.buttons("U100")]
        assert labels == [(CONFIRM_UNLINK, "Confirm: Unlink"), (CONFIRM_CANCEL, "Cancel")]

        # Asked, not done: the channel is still bridged and its messages still go to X.
        assert await mapped_channels(bridge) == [("C100", "1000-2001")]
        _, ts = await bridge.post("still bridged")
        await bridge.wait_reaction("C100", ts, "white_check_mark")

        result, click_url = await bridge.click_question("U100")
        assert result.status == 200
        announced = await bridge.follow_up(click_url)
        assert announced["response_type"] == "in_channel" and "<@U100> stopped bridging" in announced["text"]
        replaced = await bridge.follow_up(click_url, count=2)
        assert replaced["replace_original"] is True and "stopped bridging" in replaced["text"]
        assert await mapped_channels(bridge) == []
        assert not bridge.slack.buttons("U100"), "the question's buttons went with its answer"


async def test_typed_unlink_says_what_still_goes_to_x(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        bridge.x.injected_reset_seconds = 30.0
        bridge.x.inject("429")  # the message is accepted and waits for X's window
        await bridge.post("accepted, waiting")
        await bridge.ask("unlink")
        assert "1 message(s) already accepted for X are still delivered" in question_text(bridge)


async def test_another_users_click_is_refused_and_cancel_changes_nothing(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        await bridge.ask("unlink")
        # Grace (no admin) clicks Ada's Confirm, signed by Slack: refused, nothing changes.
        result, url = await bridge.click_question("U100", clicked_by="U200")
        assert result.status == 200
        told = await bridge.follow_up(url)
        assert "only they can answer" in told["text"] and not told.get("replace_original")
        assert await mapped_channels(bridge) == [("C100", "1000-2001")]
        assert bridge.question_button("U100"), "Ada's question still stands"

        result, url = await bridge.click_question("U100", confirm=False)
        told = await bridge.follow_up(url)
        assert told["text"] == "Cancelled; nothing was changed." and told["replace_original"] is True
        assert await mapped_channels(bridge) == [("C100", "1000-2001")]
        assert not bridge.slack.buttons("U100"), "the question's buttons went with its answer"


async def test_an_unsigned_or_forged_click_is_a_401(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        await bridge.ask("unlink")
        confirm = bridge.question_button("U100")
        url = bridge.slack.click_response_url(confirm)
        forged = await bridge.sender.click(
            confirm, user_id="U100", response_url=url, signature_override="v0=" + "0" * 64
        )
        assert forged.status == 401
        payload = bridge.sender.block_actions(confirm, user_id="U100", response_url=url)
        unsigned = await bridge.sender.raw(
            urlencode({"payload": json.dumps(payload)}).encode(),
            "application/x-www-form-urlencoded",
            sign=False,
        )
        assert unsigned.status == 401
        assert await mapped_channels(bridge) == [("C100", "1000-2001")]
        assert not bridge.slack.responses.get(url.rsplit("/", 1)[-1])  # nothing answered either click


async def test_a_confirm_after_the_mapping_changed_changes_nothing(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        await bridge.ask("unlink")
        stale = bridge.question_button("U100")
        # Meanwhile the channel is unlinked (a second question, confirmed) and bridged elsewhere.
        ack, _ = await bridge.confirmed("unlink")
        assert "stopped bridging" in ack.text
        assert "bridged this channel" in (await bridge.map_link("1000-2002")).text

        url = bridge.slack.click_response_url(stale)
        assert (await bridge.sender.click(stale, user_id="U100", response_url=url)).status == 200
        told = await bridge.follow_up(url)
        assert "changed since you were asked" in told["text"] and "1000-2002" in told["text"]
        assert "Nothing was changed" in told["text"]
        assert await mapped_channels(bridge) == [("C100", "1000-2002")]

        # Confirmed twice (a second click sent before the first answer replaced the question).
        await bridge.ask("unlink")
        twice = bridge.question_button("U100")
        _, first = await bridge.click_question("U100")
        await bridge.follow_up(first, count=2)
        url = bridge.slack.click_response_url(twice)
        assert (await bridge.sender.click(twice, user_id="U100", response_url=url)).status == 200
        told = await bridge.follow_up(url)
        assert "not bridged to X any more; nothing was changed" in told["text"]


async def test_a_question_older_than_ten_minutes_is_not_carried_out(tmp_path: Path) -> None:
    clock = ShiftedClock()
    async with running_bridge(tmp_path, clock=clock) as bridge:
        await linked(bridge)
        await bridge.ask("unlink")
        clock.shift = QUESTION_TTL + 60
        result, url = await bridge.click_question("U100")
        assert result.status == 200
        told = await bridge.follow_up(url)
        assert "expired" in told["text"] and "Run `/xdm unlink` again" in told["text"]
        assert told["replace_original"] is True
        assert await mapped_channels(bridge) == [("C100", "1000-2001")]


async def test_typed_disconnect_asks_and_cancel_then_confirm(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        ack, _ = await bridge.ask("disconnect")
        assert ack.text == ""
        text = question_text(bridge)
        assert "Disconnect X account @bridge_owner" in text
        assert "<#C100>" in text and "wait" in text and "not lost" in text
        assert [b.text for b in bridge.slack.buttons("U100")] == ["Confirm: Disconnect", "Cancel"]
        assert bridge.question_button("U100").action_id == CONFIRM_DISCONNECT

        _, url = await bridge.click_question("U100", confirm=False)
        assert "nothing was changed" in (await bridge.follow_up(url))["text"]
        assert await bridge.sql("SELECT disconnected_at FROM accounts") == [(None,)]
        assert not bridge.slack.buttons("U100")

        ack, url = await bridge.confirmed("disconnect")
        assert "Disconnecting @bridge_owner" in ack.text
        done = await bridge.follow_up(url, count=2)
        assert "Disconnected X account @bridge_owner" in done["text"] and done["replace_original"] is True
        assert await bridge.sql("SELECT COUNT(*) FROM accounts WHERE disconnected_at IS NULL") == [(0,)]


async def test_a_disconnect_confirmed_after_another_account_was_connected_changes_nothing(
    tmp_path: Path,
) -> None:
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        await bridge.ask("disconnect")
        stale = bridge.question_button("U100")
        _, url = await bridge.confirmed("disconnect")
        await bridge.follow_up(url, count=2)
        await bridge.connect(x_user="2003")  # @carol now

        url = bridge.slack.click_response_url(stale)
        await bridge.sender.click(stale, user_id="U100", response_url=url)
        told = await bridge.follow_up(url)
        assert "changed since you were asked" in told["text"] and "@carol" in told["text"]
        assert await bridge.sql("SELECT COUNT(*) FROM accounts WHERE disconnected_at IS NULL") == [(1,)]


async def test_permission_is_checked_again_when_confirm_is_clicked(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)  # Ada's mapping
        # Cleo, a workspace admin, may unlink it: she is asked.
        await bridge.ask("unlink", user="U300")
        assert "Stop bridging <#C100>" in question_text(bridge, "U300")
        bridge.slack.add_user("U300", display_name="Cleo", real_name="Cleo Admin", is_admin=False)
        _, url = await bridge.click_question("U300")
        told = await bridge.follow_up(url)
        assert told["text"].startswith(":x:") and "belongs to <@U100>" in told["text"]
        assert await mapped_channels(bridge) == [("C100", "1000-2001")]

        # Grace, no admin, is refused at once: no question to confirm.
        ack, _ = await bridge.command("unlink", user="U200")
        assert "belongs to <@U100>" in ack.text and not bridge.slack.buttons("U200")


async def test_a_button_from_before_questions_named_their_subject_is_answered_not_acted_on(
    tmp_path: Path,
) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        await bridge.ask("unlink")
        # A question sent before this version: its value names only team, user and channel.
        old = dataclasses.replace(bridge.question_button("U100"), value="unlink:T0001:U100:C100")
        url = bridge.slack.click_response_url(old)
        assert (await bridge.sender.click(old, user_id="U100", response_url=url)).status == 200
        told = await bridge.follow_up(url)
        assert "Nothing was changed; run the command again" in told["text"]
        assert await mapped_channels(bridge) == [("C100", "1000-2001")]
