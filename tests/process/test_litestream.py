"""SQLite on a disk that does not last: with LITESTREAM_REPLICA_URL, a lost database comes back."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import time
from pathlib import Path

from adapters.ops.litestream import binary
from tests.harness import wait_until
from tests.process.support import world


def replicated_outbox(replica_url: str, scratch: Path) -> list[tuple[str, str]]:
    """What the replica holds now: restore it to a scratch file and read the outbox."""
    scratch.unlink(missing_ok=True)
    subprocess.run(
        [binary(), "restore", "-if-replica-exists", "-o", str(scratch), replica_url],
        check=True,
        capture_output=True,
    )
    if not scratch.exists():
        return []
    with sqlite3.connect(scratch) as db:
        return db.execute("SELECT slack_ts, state FROM outbox ORDER BY id").fetchall()


def wipe(db_path: Path) -> None:
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)


async def test_kill_delete_restart_brings_everything_back(tmp_path: Path) -> None:
    replica = f"file://{tmp_path / 'replica'}"
    async with world(tmp_path, lambda x: {"C100": "1000-2001"}, LITESTREAM_REPLICA_URL=replica) as w:
        server = w.server(tmp_path / "server.log")
        await server.start(w.url, w.session)
        _, ts, _ = await w.sender.message("C100", "U100", "kept")
        await wait_until(lambda: len(w.x.events) == 1, 10, "the DM")

        # Litestream ships changes about once a second: wait until the replica has the sent row.
        deadline = time.monotonic() + 30
        while replicated_outbox(replica, tmp_path / "peek.db") != [(ts, "sent")]:
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            await asyncio.sleep(0.2)

        await server.kill()  # the dyno goes, and its disk with it
        wipe(w.db_path)

        again = w.server(tmp_path / "again.log")
        await again.start(w.url, w.session)
        assert w.db_path.exists()
        assert await w.sql("SELECT slack_ts, state FROM outbox") == [(ts, "sent")]
        # The account, its tokens and the mapping came back too: the next message goes out.
        await w.sender.message("C100", "U100", "after the restore")
        await wait_until(lambda: len(w.x.events) == 2, 10, "the second DM")
        assert [e.text for e in w.x.events] == ["Ada: kept", "Ada: after the restore"]
        assert await again.terminate() == 0
        assert "serving under litestream replicate" in (tmp_path / "server.log").read_text()
