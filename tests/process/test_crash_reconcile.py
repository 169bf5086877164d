"""SIGKILL while X holds the answer to a send, then a busy conversation: still exactly once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.harness import ALICE, wait_until
from tests.process.support import world


@pytest.mark.usefixtures("on_both_stores")
async def test_kill_mid_send_then_150_dms_before_the_restart_is_no_duplicate(tmp_path: Path) -> None:
    conversation = "1000-2001"
    async with world(tmp_path, lambda x: {"C100": conversation}, X_TIMEOUT_SECONDS="30") as w:
        w.x.timeout_seconds = 60.0
        w.x.inject("record_then_hang")
        server = w.server(tmp_path / "server.log")
        await server.start(w.url, w.session)
        result, ts, _ = await w.sender.message("C100", "U100", "sent just before the crash")
        assert result.status == 200
        await wait_until(lambda: len(w.x.events) == 1, 20, "X to record the DM")
        await server.kill()
        for i in range(150):  # the conversation goes on while the bridge is down
            w.x.add_message(conversation, ALICE, f"while you were out {i}")
        await server.start(w.url, w.session)
        await w.slack.wait_for(lambda c: c.method == "reactions.add" and c.params.get("timestamp") == ts)
        await asyncio.sleep(0.5)  # room for a duplicate to show up
        assert await server.terminate() == 0
        ours = [e for e in w.x.events if e.sender_id == "1000"]
        assert [e.text for e in ours] == ["Ada: sent just before the crash"]
        assert await w.sql("SELECT state, dm_event_id FROM outbox") == [("sent", ours[0].id)]
        assert "reconciled: X had the message already" in (tmp_path / "server.log").read_text()
