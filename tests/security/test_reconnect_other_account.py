"""Reconnecting as a different X account never sends as a stranger into the old account's conversations.

`/xdm disconnect` then `/xdm connect` resumes the paused mappings, but a mapping bound to a
conversation id belongs to the X account it was made with: if the new account is another one,
such mappings stay paused (held for the old account), their waiting messages wait, and the
channel is told how to map again.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.harness import ALICE, BOB, CAROL, ME, Bridge, linked, running_bridge, wait_until


async def rows_become(bridge: Bridge, sql: str, expected: list[tuple[Any, ...]], what: str) -> None:
    """Wait (up to 10 s) until ``sql`` on the bridge's database answers ``expected``."""
    found: list[tuple[Any, ...]] = []
    for _ in range(500):
        found = await bridge.sql(sql)
        if found == expected:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"waiting for {what}: {sql} gave {found}, not {expected}")


def notices(bridge: Bridge, channel: str) -> list[str]:
    return [
        str(c.params.get("text"))
        for c in bridge.slack.calls
        if c.method == "chat.postMessage" and c.params.get("channel") == channel
    ]


async def disconnected_with_waiting_messages(bridge: Bridge) -> None:
    """C100 linked to 1000-2001 (by id), C200 a `/xdm dm` to @bob; one message waits in each."""
    await linked(bridge)
    ack, response_url = await bridge.command("dm @bob", channel="C200")
    assert ack.status == 200
    assert "@bob" in (await bridge.follow_up(response_url))["text"]
    ack, response_url = await bridge.confirmed("disconnect")
    await bridge.follow_up(response_url, count=2)
    await bridge.post("written for bridge_owner", blocks=[])
    await bridge.post("to bob, whoever sends it", channel="C200", blocks=[])
    await rows_become(
        bridge,
        "SELECT COUNT(*) FROM outbox WHERE state = 'waiting'",
        [(2,)],
        "both messages parked until a reconnection",
    )


async def test_reconnecting_as_another_account_keeps_the_old_accounts_conversations_paused(
    tmp_path: Path,
) -> None:
    async with running_bridge(tmp_path) as bridge:
        await disconnected_with_waiting_messages(bridge)

        page = await bridge.connect(x_user=CAROL)
        assert "@carol" in page

        # The DM mapping names its person, not a conversation: it resumes, sending as @carol.
        await wait_until(lambda: bool(bridge.texts()), 10.0, "the dm mapping's message")
        assert [(e.sender_id, e.text) for e in bridge.x.events] == [(CAROL, "Ada: to bob, whoever sends it")]
        assert bridge.x.events[0].conversation_id == f"{BOB}-{CAROL}"
        held = await bridge.sql("SELECT channel_id, paused_at IS NOT NULL FROM mappings ORDER BY channel_id")
        assert held == [("C100", 1), ("C200", 0)]
        await wait_until(
            lambda: any("@carol" in n and "@bridge_owner" in n for n in notices(bridge, "C100")),
            5.0,
            "the held channel told",
        )
        [notice] = [n for n in notices(bridge, "C100") if "@carol" in n]
        assert "/xdm unlink" in notice and "/xdm link" in notice and "wait" in notice

        # Nothing goes to bridge_owner's conversation as @carol, not even what is posted now.
        result, _ = await bridge.post("posted after the switch", blocks=[])
        assert result.status == 200
        ack, _ = await bridge.command("status")
        assert "@carol" in ack.text and "@bridge_owner" in ack.text and "/xdm unlink" in ack.text
        assert "2 message(s)" in ack.text, ack.text
        assert bridge.x.messages_in(f"{ME}-{ALICE}") == []
        assert len(bridge.x.events) == 1

        # Mapping again as @carol: new messages flow; the held ones still wait for bridge_owner.
        ack, _ = await bridge.confirmed("unlink")
        assert "stopped bridging" in ack.text
        await bridge.map_link(f"{BOB}-{CAROL}")
        await bridge.post("as carol now", blocks=[])
        await wait_until(lambda: len(bridge.x.events) == 2, 10.0, "the new mapping's message")
        assert [(e.sender_id, e.text) for e in bridge.x.events][1] == (CAROL, "Ada: as carol now")
        assert await bridge.sql("SELECT COUNT(*) FROM outbox WHERE state = 'held'") == [(2,)]

        # bridge_owner connected again: what was written for it goes, as it, to its conversation.
        await bridge.connect(x_user=ME)
        await wait_until(lambda: len(bridge.x.events) == 4, 10.0, "the held messages")
        assert [(e.sender_id, e.text) for e in bridge.x.messages_in(f"{ME}-{ALICE}")] == [
            (ME, "Ada: written for bridge_owner"),
            (ME, "Ada: posted after the switch"),
        ]


async def test_switching_back_to_the_old_account_resumes_the_held_channel(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await disconnected_with_waiting_messages(bridge)
        await bridge.connect(x_user=CAROL)
        await wait_until(lambda: len(bridge.x.events) == 1, 10.0, "the dm mapping's message")
        # Reconnect (no disconnect in between) as the account the channel was linked with.
        await bridge.connect(x_user=ME)
        await wait_until(lambda: bool(bridge.x.messages_in(f"{ME}-{ALICE}")), 10.0, "the held message")
        assert bridge.texts(f"{ME}-{ALICE}") == ["Ada: written for bridge_owner"]
        assert await bridge.sql("SELECT COUNT(*) FROM mappings WHERE paused_at IS NOT NULL") == [(0,)]
        ack, _ = await bridge.command("status")
        assert "paused" not in ack.text and "held" not in ack.text


async def test_reconnecting_as_another_account_without_disconnecting_holds_the_links_too(
    tmp_path: Path,
) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        await bridge.connect(x_user=BOB)  # "Reconnect … to switch to another X account"
        await bridge.post("must not reach 1000-2001 as bob", blocks=[])
        ack, _ = await bridge.command("status")
        assert "@bob" in ack.text and "@bridge_owner" in ack.text and "1 message(s)" in ack.text
        assert bridge.x.events == []
        assert await bridge.sql("SELECT paused_at IS NOT NULL FROM mappings") == [(1,)]


async def test_reconnecting_the_same_account_resumes_everything(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await disconnected_with_waiting_messages(bridge)
        await bridge.connect(x_user=ME)
        await wait_until(lambda: len(bridge.x.events) == 2, 10.0, "both waiting messages")
        assert {e.sender_id for e in bridge.x.events} == {ME}
        assert await bridge.sql("SELECT COUNT(*) FROM mappings WHERE paused_at IS NOT NULL") == [(0,)]
        assert not any("not @" in n for n in notices(bridge, "C100"))


async def test_edits_and_deletes_in_a_held_channel_wait_for_the_old_account_too(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        _, sent_ts = await bridge.post("sent as bridge_owner", blocks=[])
        await bridge.wait_reaction("C100", sent_ts, "white_check_mark")
        await bridge.connect(x_user=CAROL)
        _, held_ts = await bridge.post("held for bridge_owner", blocks=[])
        # A correction of what bridge_owner sent, and a delete: neither may go as @carol.
        await edit(bridge, sent_ts, "sent as bridge_owner", "sent as bridge_owner, corrected")
        await edit(bridge, held_ts, "held for bridge_owner", "held, and edited")
        held_rows = await bridge.sql("SELECT kind, state FROM outbox WHERE state = 'held' ORDER BY id")
        assert held_rows == [("message", "held"), ("edit", "held")]
        await delete(bridge, sent_ts, "sent as bridge_owner, corrected")
        # The correction never reached X, so it is simply dropped; the delete waits.
        held_rows = await bridge.sql("SELECT kind, state FROM outbox WHERE state = 'held' ORDER BY id")
        assert held_rows == [("message", "held"), ("delete", "held")]
        assert [e.sender_id for e in bridge.x.events] == [ME]
        assert not any(e.deleted for e in bridge.x.events)

        await bridge.connect(x_user=ME)
        await wait_until(lambda: bridge.x.events[0].deleted, 10.0, "bridge_owner's delete")
        await wait_until(lambda: len(bridge.x.events) >= 2, 10.0, "the held message")
        assert {e.sender_id for e in bridge.x.events} == {ME}
        assert [e.text for e in bridge.x.events if not e.deleted] == ["Ada: held, and edited"]


async def edit(bridge: Bridge, ts: str, old: str, new: str) -> None:
    edit_ts = bridge.sender.new_ts()
    event = {
        "type": "message",
        "subtype": "message_changed",
        "channel": "C100",
        "hidden": True,
        "ts": edit_ts,
        "event_ts": edit_ts,
        "message": {"type": "message", "user": "U100", "text": new, "ts": ts},
        "previous_message": {"type": "message", "user": "U100", "text": old, "ts": ts},
    }
    assert (await bridge.sender.event(event)).status == 200


async def delete(bridge: Bridge, ts: str, text: str) -> None:
    event = {
        "type": "message",
        "subtype": "message_deleted",
        "channel": "C100",
        "hidden": True,
        "deleted_ts": ts,
        "ts": bridge.sender.new_ts(),
        "previous_message": {"type": "message", "user": "U100", "text": text, "ts": ts},
    }
    assert (await bridge.sender.event(event)).status == 200
