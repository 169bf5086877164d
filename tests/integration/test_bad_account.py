"""One account whose stored tokens cannot be decrypted stops nobody else's messages.

Its key rotated away, or its ciphertext corrupt: listing accounts (the inbound poller's every
round, push subscriptions) used to raise for all. Now that account alone reads as needing
reconnection: its own messages wait for `/xdm connect`, everyone else's flow both ways.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from adapters.store.crypto import TokenCipher, generate_key
from bridge.poster import METADATA_TYPE
from tests.harness import ALICE, BOB, CAROL, ME, Bridge, linked, running_bridge, wait_until

pytestmark = pytest.mark.usefixtures("on_both_stores")


def posts_from_x(bridge: Bridge, channel: str) -> list[str]:
    return [
        str(m["text"])
        for m in bridge.slack.posted(channel)
        if (m.get("metadata") or {}).get("event_type") == METADATA_TYPE
    ]


async def test_an_account_whose_tokens_cannot_be_decrypted_stops_nobody_elses_messages(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge, f"{ME}-{ALICE}", "C100")  # U100 as bridge_owner: the good account
        await bridge.connect(user="U200", channel="C200", x_user=BOB)
        await bridge.map_link(f"{BOB}-{CAROL}", user="U200", channel="C200")
        [(bad_id,)] = await bridge.sql("SELECT id FROM accounts WHERE slack_user_id = 'U200'")
        retired = TokenCipher([generate_key()]).encrypt("a token under a key no longer configured")
        await bridge.sql(
            "UPDATE accounts SET access_token = ?, refresh_token = ? WHERE id = ?",
            retired,
            "corrupt-ciphertext",
            bad_id,
        )

        # The good account's messages go both ways.
        _, ts = await bridge.post("to alice", channel="C100")
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        bridge.x.add_event(f"{ME}-{ALICE}", ALICE, "from alice")
        await wait_until(lambda: posts_from_x(bridge, "C100") == ["from alice"], 10.0, "alice's reply")
        assert bridge.texts(f"{ME}-{ALICE}") == ["Ada: to alice", "from alice"]

        # The bad one's wait for its owner to connect again; nothing goes out as it.
        await bridge.post("to carol", channel="C200", user="U200")
        parked = "SELECT state, last_error FROM outbox WHERE channel_id = 'C200'"
        for _ in range(500):
            if [state for state, _ in await bridge.sql(parked)] == ["waiting"]:
                break
            await asyncio.sleep(0.02)
        [(state, reason)] = await bridge.sql(parked)
        assert state == "waiting" and "/xdm connect" in reason, (state, reason)
        assert bridge.x.messages_in(f"{BOB}-{CAROL}") == []
        ack, _ = await bridge.command("status", user="U200", channel="C200")
        assert "needs reconnecting" in ack.text, ack.text

        told = [r for r in caplog.records if getattr(r, "account_id", None) == bad_id and r.levelno >= 40]
        assert len(told) == 1 and "cannot be decrypted" in told[0].getMessage()  # once, not per poll
        logged = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
        assert retired not in logged and "corrupt-ciphertext" not in logged

        # Connecting again mends it: what waited goes, as BOB.
        await bridge.connect(user="U200", channel="C200", x_user=BOB)
        await wait_until(lambda: bool(bridge.x.messages_in(f"{BOB}-{CAROL}")), 10.0, "the parked message")
        assert bridge.texts(f"{BOB}-{CAROL}") == ["Grace Hopper: to carol"]
