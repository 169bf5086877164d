"""A file whose upload takes the process down must not take it down forever.

The out-of-memory kill of a big upload is stood in for by SIGKILL while X holds the
upload's append: the row's upload attempt was recorded before it began, so after the
second death the restarted bridge gives the file up, sends the text and tells the author.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from tests.harness import wait_until
from tests.process.support import world


async def test_an_upload_that_kills_the_process_twice_is_given_up_and_the_text_sent(tmp_path: Path) -> None:
    async with world(tmp_path, lambda x: {"C100": "1000-2001"}, X_TIMEOUT_SECONDS="30") as w:
        clip = w.slack.add_file(
            "F1", name="clip.mp4", mimetype="video/mp4", filetype="mp4", content=os.urandom(300_000)
        )
        w.x.timeout_seconds = 60.0
        w.x.inject("timeout", count=5, path_contains="/append")
        server = w.server(tmp_path / "server.log")
        await server.start(w.url, w.session)
        result, _ts, _ = await w.sender.message("C100", "U100", "watch this", files=[clip])
        assert result.status == 200

        def appends_held() -> int:
            return sum(1 for _, path in w.x.faults_served if path.endswith("/append"))

        for crash in (1, 2):

            def under_way(n: int = crash) -> bool:
                return appends_held() == n

            await wait_until(under_way, 20, f"upload {crash} under way")
            await server.kill()  # as the kernel's OOM killer would
            (unfinished,) = (
                sqlite3.connect(w.db_path).execute("SELECT media_unfinished FROM outbox").fetchone()
            )
            assert unfinished == crash
            await server.start(w.url, w.session)

        await wait_until(lambda: len(w.x.events) == 1, 20, "the text at X")
        await w.slack.wait_for(lambda c: c.method == "chat.postEphemeral")
        assert await server.terminate() == 0
        [event] = w.x.events
        assert event.text == "Ada: watch this" and event.media_ids == ()
        assert len(w.slack.downloads) == 2  # the third process never touched the file
        [note] = w.slack.ephemerals("U100")
        assert "clip.mp4" in note["text"] and "stopped 2 times" in note["text"]
        rows = sqlite3.connect(w.db_path).execute("SELECT state, media FROM outbox").fetchall()
        assert rows == [("sent", None)]
