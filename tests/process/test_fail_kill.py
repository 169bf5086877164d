"""A message X refused for good, and a process killed before its author heard.

Failing a row and telling its author (the ⚠️ and an ephemeral) are two steps. The failure is
recorded with "author not told yet", so the next start tells them; before, a failed row was
final and a SIGKILL between the steps left its author never knowing (the fault model found it).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from adapters.sandbox.fake_x import FakeX
from tests.harness import ME, wait_until
from tests.process.support import world

REFUSER = "2099"


async def test_an_author_not_told_before_a_kill_is_told_by_the_next_start(tmp_path: Path) -> None:
    def channels(x: FakeX) -> dict[str, str]:
        x.add_user(REFUSER, "zed", accepts_dms=False)
        return {"C100": f"{ME}-{REFUSER}"}

    async with world(tmp_path, channels) as w:
        w.slack.hold("reactions.add")  # Slack slow: the ⚠️ waits, the process dies meanwhile
        server = w.server(tmp_path / "server.log")
        await server.start(w.url, w.session)
        result, ts, _ = await w.sender.message("C100", "U100", "hello zed")
        assert result.status == 200

        def failed() -> bool:
            rows = sqlite3.connect(w.db_path).execute("SELECT state FROM outbox").fetchall()
            return rows == [("failed",)]

        await wait_until(failed, 20, "the row failed")
        await wait_until(lambda: w.slack.held("reactions.add") >= 1, 20, "the ⚠️ under way")
        await server.kill()
        assert w.slack.ephemerals("U100") == []  # nobody told yet

        w.slack.hold("reactions.add").set()
        await server.start(w.url, w.session)
        await w.slack.wait_for(lambda c: c.method == "chat.postEphemeral")
        [note] = w.slack.ephemerals("U100")
        assert "not sent to X" in note["text"]
        await wait_until(lambda: "warning" in w.slack.reactions("C100", ts), 20, "the ⚠️")
        assert await server.terminate() == 0
        rows = sqlite3.connect(w.db_path).execute("SELECT state, untold_failure FROM outbox").fetchall()
        assert rows == [("failed", None)]
        assert len(w.x.events) == 0
