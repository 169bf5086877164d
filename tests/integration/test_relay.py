"""Relaying channel messages to X: filters, dedupe, reactions, and X's failures."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from tests.harness import ALICE, linked, note, running_bridge


async def test_message_relayed_with_display_name_and_check_mark(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        result, ts = await bridge.post("Hello X &amp; friends")
        assert result.status == 200
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        assert bridge.texts("1000-2001") == ["Ada: Hello X & friends"]
        # Falls back to the real name when there is no display name.
        _, ts2 = await bridge.post("second", user="U200")
        await bridge.wait_reaction("C100", ts2, "white_check_mark")
        assert bridge.texts("1000-2001")[-1] == "Grace Hopper: second"
        rows = await bridge.sql("SELECT slack_ts, part, conversation_id FROM message_map ORDER BY created_at")
        assert [r[0] for r in rows] == [ts, ts2]


async def test_outbox_row_committed_before_slack_gets_200(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        bridge.x.timeout_seconds = 3.0
        bridge.x.inject("timeout")  # X hangs: the row must still be durable at the 200
        result, ts = await bridge.post("durable")
        assert result.status == 200
        rows = await bridge.sql("SELECT slack_ts FROM outbox")
        assert rows == [(ts,)]


async def test_bot_unmapped_and_non_message_events_never_relayed(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        fixtures = Path(__file__).parents[1] / "fixtures" / "slack"
        for name in (
            "event-message-bot_message-classic.json",
            "event-message-bot_message-username-icons.json",  # the shape of our X replies' echo
            "event-message-from-app-bot-no-subtype.json",
            "event-message-channel_join.json",
        ):
            event = json.loads((fixtures / name).read_text())["event"]
            event["channel"] = "C100"
            result = await bridge.sender.event(event)
            assert result.status == 200, name
        # Our own bot's post (bot_id of the auth.test answer) is filtered too.
        await bridge.sender.message("C100", "UBOT", "echo", bot_id="BBOT")
        # A person in an unmapped channel.
        await bridge.post("elsewhere", channel="C999")
        # Then a real message, which must be the only DM.
        _, ts = await bridge.post("only me")
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        assert bridge.texts() == ["Ada: only me"]


async def test_slack_retries_and_duplicates_send_one_dm(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        event = bridge.sender.message_event("C100", "U100", "once only")
        first = await bridge.sender.event(event, event_id="Ev0001")
        retry = await bridge.sender.event(event, event_id="Ev0001", retry_num=1, retry_reason="http_timeout")
        again = await bridge.sender.event(event, event_id="Ev0002")  # same message, new envelope
        assert (first.status, retry.status, again.status) == (200, 200, 200)
        await bridge.wait_reaction("C100", event["ts"], "white_check_mark")
        await asyncio.sleep(0.3)
        assert bridge.texts() == ["Ada: once only"]


async def test_forged_signature_and_stale_timestamp_rejected(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        forged, _, _ = await bridge.sender.message(
            "C100", "U100", "forged", signature_override="v0=" + "0" * 64
        )
        assert forged.status == 401
        stale, _, _ = await bridge.sender.message(
            "C100", "U100", "stale", timestamp_override=int(time.time()) - 600
        )
        assert stale.status == 401
        junk = await bridge.sender.raw(
            b"{}", "application/json", headers={"X-Slack-Request-Timestamp": "soon"}
        )
        assert junk.status == 401
        forged_cmd = await bridge.sender.command(
            "link 1000-2002",
            user_id="U100",
            channel_id="C200",
            response_url="http://x",
            signature_override="v0=00",
        )
        assert forged_cmd.status == 401
        await asyncio.sleep(0.2)
        assert bridge.x.dm_posts == 0
        assert await bridge.sql("SELECT COUNT(*) FROM outbox") == [(0,)]
        assert await bridge.sql("SELECT COUNT(*) FROM mappings") == [(1,)]


async def test_relay_through_participant_endpoint(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        _, response_url = await bridge.command("dm @alice")
        await bridge.follow_up(response_url)
        _, ts = await bridge.post("via participant")
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        [post] = [r for r in bridge.x.all_requests if r.method == "POST" and "/dm_conversations" in r.path]
        assert post.path == f"/2/dm_conversations/with/{ALICE}/messages"
        assert post.json == {"text": "Ada: via participant"}


async def test_429_waits_for_reset_then_sends(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        bridge.x.injected_reset_seconds = 1.0
        bridge.x.inject("429")
        started = time.time()
        _, ts = await bridge.post("patience")
        await bridge.wait_reaction("C100", ts, "white_check_mark", timeout=15.0)
        assert bridge.texts() == ["Ada: patience"]
        assert bridge.x.rate_limited_count == 1
        assert time.time() - started >= 0.5  # it waited for the reset rather than hammering


async def test_403_marks_warning_and_tells_author(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        bridge.x.inject("403")
        _, ts = await bridge.post("refused")
        await bridge.wait_reaction("C100", ts, "warning")
        [ephemeral] = await bridge.slack.wait_for(note)
        assert ephemeral.params["user"] == "U100"
        assert "was not sent to X" in ephemeral.params["text"]
        assert "white_check_mark" not in bridge.slack.reactions("C100", ts)
        [state] = await bridge.sql("SELECT state, last_error FROM outbox")
        assert state[0] == "failed" and state[1]
        # The next message is not held up by the failed one.
        _, ts2 = await bridge.post("next")
        await bridge.wait_reaction("C100", ts2, "white_check_mark")


async def test_recipient_refusing_dms_fails_with_reason(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        bridge.x.users[ALICE].accepts_dms = False
        await linked(bridge)
        _, ts = await bridge.post("are you there")
        await bridge.wait_reaction("C100", ts, "warning")
        [ephemeral] = await bridge.slack.wait_for(note)
        assert (
            "cannot send messages" in ephemeral.params["text"].lower() or "accept" in ephemeral.params["text"]
        )


async def test_5xx_retried_with_backoff(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        bridge.x.inject("503", count=2)
        _, ts = await bridge.post("eventually")
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        assert bridge.texts() == ["Ada: eventually"]
        assert [kind for kind, _ in bridge.x.faults_served] == ["503", "503"]


async def test_expired_token_refreshed_once_then_sent(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        bridge.x.inject("401")
        _, ts = await bridge.post("after refresh")
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        grants = [r["grant_type"] for r in bridge.x.token_requests]
        assert grants == ["authorization_code", "refresh_token"]
        assert bridge.texts() == ["Ada: after refresh"]


async def test_revoked_account_waits_then_flows_after_reconnect(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        bridge.x.revoke_user_tokens("1000")
        _, ts = await bridge.post("held for reconnect")
        # The owner is told in a DM from the bot, and the message waits (not failed).
        await bridge.slack.wait_for(
            lambda c: c.method == "chat.postMessage" and c.params.get("channel") == "U100", timeout=10.0
        )
        deadline = time.monotonic() + 5.0
        while await bridge.sql("SELECT state FROM outbox") != [("waiting",)]:
            assert time.monotonic() < deadline, "timed out waiting for the waiting row"
            await asyncio.sleep(0.01)
        assert await bridge.sql("SELECT needs_reconnect FROM accounts") == [(1,)]
        ack, _ = await bridge.command("new-group @alice @bob")
        assert "needs reconnecting" in ack.text

        await bridge.connect()
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        assert bridge.texts() == ["Ada: held for reconnect"]
        assert "warning" not in bridge.slack.reactions("C100", ts)


async def test_healthz_reports_database(tmp_path: Path) -> None:
    async with running_bridge(tmp_path, env={"METRICS_TOKEN": "ops-token"}) as bridge:
        headers = {"Authorization": "Bearer ops-token"}
        async with bridge.session.get(f"{bridge.url}/healthz", headers=headers) as response:
            body = await response.json()
        assert response.status == 200, body
        assert body["status"] == "ok" and body["database"] == "ok"
