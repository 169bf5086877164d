"""Requests Slack did not sign, or signed long ago: refused, and nothing is relayed."""

from __future__ import annotations

import json
import time
from pathlib import Path

from adapters.sandbox.fake_slack import SlackSender
from tests.harness import linked, running_bridge, wait_until


def message_body(bridge_sender: SlackSender, text: str) -> bytes:
    event = {"type": "message", "channel": "C100", "user": "U100", "text": text, "ts": f"{time.time():.6f}"}
    return json.dumps(bridge_sender.envelope(event)).encode()


async def test_forged_stale_and_replayed_requests_relay_nothing(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        sender = bridge.sender

        forged = await sender.raw(
            message_body(sender, "forged"), "application/json", signature_override="v0=" + "a" * 64
        )
        assert forged.status == 401
        # Signed with another secret (an attacker's guess), timestamp fresh.
        other = SlackSender(bridge.session, sender.events_url, "not-the-signing-secret", team_id="T0001")
        assert (await other.raw(message_body(other, "wrong secret"), "application/json")).status == 401
        # Properly signed, but six minutes ago: outside Slack's five-minute window.
        stale = await sender.raw(
            message_body(sender, "stale"), "application/json", timestamp_override=int(time.time()) - 360
        )
        assert stale.status == 401
        unsigned = await sender.raw(message_body(sender, "unsigned"), "application/json", sign=False)
        assert unsigned.status == 401

        # A genuine request replayed byte for byte (same signature, same event id): relayed once.
        body = message_body(sender, "genuine")
        headers = sender.sign(body)
        for _ in range(3):
            replay = await sender.raw(body, "application/json", sign=False, headers=headers)
            assert replay.status == 200
        # ... and the same bytes with a body changed under the old signature are refused.
        tampered = body.replace(b"genuine", b"tampered")
        assert (await sender.raw(tampered, "application/json", sign=False, headers=headers)).status == 401

        await wait_until(lambda: len(bridge.x.events) >= 1, 10.0, "the genuine message")
        await bridge.post("after")  # a later message flows after it, so nothing else is pending
        await wait_until(lambda: len(bridge.x.events) >= 2, 10.0, "the later message")
        assert bridge.texts() == ["Ada: genuine", "Ada: after"]
