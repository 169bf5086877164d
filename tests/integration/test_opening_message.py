"""A command's opening message goes through the outbox: formatted, reconciled, never doubled."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from adapters.sandbox.fake_x import FaultKind
from tests.harness import ALICE, BOB, ME, Bridge, running_bridge, wait_until


async def opening_ts(bridge: Bridge) -> str:
    [call] = await bridge.slack.wait_for(
        lambda c: c.method == "chat.postMessage" and "opening message" in str(c.params.get("text")),
        timeout=10.0,
    )
    return str(call.response["ts"])


def groups(bridge: Bridge) -> list[str]:
    return [c.id for c in bridge.x.conversations.values() if set(c.participants) == {ME, ALICE, BOB}]


async def mapped_conversation(bridge: Bridge) -> str | None:
    found = await bridge.sql("SELECT conversation_id FROM mappings WHERE channel_id = 'C100'")
    return found[0][0] if found else None


async def test_dm_opening_message_reads_like_a_channel_message(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        # Slack escapes &, < and > in a slash command's text, as in a message's.
        await bridge.command("dm @alice Q&amp;A &lt;today&gt; :tada:")
        await bridge.wait_reaction("C100", await opening_ts(bridge), "white_check_mark")
        assert bridge.texts("1000-2001") == ["Ada: Q&A <today> 🎉"]


@pytest.mark.parametrize("fault", ["lost_response", "record_then_hang"])
async def test_group_created_once_when_the_answer_is_lost(tmp_path: Path, fault: FaultKind) -> None:
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        bridge.x.timeout_seconds = 3.0
        bridge.x.inject(fault, path_contains="/2/dm_conversations")
        _, response_url = await bridge.command("new-group @alice @bob Welcome aboard")
        told = await bridge.follow_up(response_url)
        assert told["response_type"] == "in_channel", told
        # Posted while X holds the answer: it waits behind the opening and goes to the new group.
        _, meanwhile = await bridge.post("meanwhile", blocks=[])
        await bridge.wait_reaction("C100", await opening_ts(bridge), "white_check_mark", timeout=20.0)
        await bridge.wait_reaction("C100", meanwhile, "white_check_mark", timeout=20.0)
        [group] = groups(bridge)
        assert bridge.texts(group) == ["Ada: Welcome aboard", "Ada: meanwhile"]
        assert await mapped_conversation(bridge) == group
        assert any(r.path == "/2/dm_events" for r in bridge.x.all_requests)  # settled by reading

        _, ts = await bridge.post("next message")
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        assert bridge.texts(group) == ["Ada: Welcome aboard", "Ada: meanwhile", "Ada: next message"]
        assert groups(bridge) == [group]


async def test_a_doubled_or_retried_command_never_makes_two_groups(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        (_, first), (_, second) = await asyncio.gather(
            bridge.command("new-group @alice @bob Hello"), bridge.command("new-group @alice @bob Hello")
        )
        answers = [(await bridge.follow_up(url))["text"] for url in (first, second) if url]
        assert sum("already bridged" in a for a in answers) <= 1
        await bridge.wait_reaction("C100", await opening_ts(bridge), "white_check_mark")
        # The user retries once more after it worked.
        ack, _ = await bridge.command("new-group @alice @bob Hello")
        assert "already bridged" in ack.text
        assert len(groups(bridge)) == 1
        assert bridge.texts(groups(bridge)[0]) == ["Ada: Hello"]


async def test_a_group_x_refuses_for_good_unbridges_the_channel_and_says_so(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        bridge.x.users[BOB].accepts_dms = False  # X refuses any group with Bob in it: a 403
        _, response_url = await bridge.command("new-group @alice @bob Welcome aboard")
        await bridge.follow_up(response_url)
        # Posted while the opening message waits: it would have gone to the same group.
        _, queued = await bridge.post("second", blocks=[])
        opening = await opening_ts(bridge)
        await bridge.wait_reaction("C100", opening, "warning", timeout=10.0)
        await bridge.wait_reaction("C100", queued, "warning", timeout=10.0)
        creating = [r for r in bridge.x.all_requests if (r.method, r.path) == ("POST", "/2/dm_conversations")]
        assert len(creating) == 1  # the queued message did not ask X again
        assert groups(bridge) == []
        # The channel is told, and no longer bridged to a group that will never exist.
        [note] = await bridge.slack.wait_for(
            lambda c: c.method == "chat.postMessage" and "could not create" in str(c.params.get("text"))
        )
        text = str(note.params["text"])
        assert note.params["channel"] == "C100" and "<@U100>" in text and "no longer bridged" in text, text
        assert any("Forbidden" in e["text"] or "cannot" in e["text"] for e in bridge.slack.ephemerals("U100"))
        assert await bridge.sql("SELECT count(*) FROM mappings WHERE channel_id = 'C100'") == [(0,)]
        status, _ = await bridge.command("status")
        assert "not bridged" in status.text and "2 message(s) could not be sent" in status.text, status.text
        # The maker may try again once X would accept the group.
        bridge.x.users[BOB].accepts_dms = True
        ack, _ = await bridge.command("new-group @alice @bob Second try")
        assert "already bridged" not in ack.text
        await wait_until(lambda: len(groups(bridge)) == 1, 10.0, "the second try's group")
