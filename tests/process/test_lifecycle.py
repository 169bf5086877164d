"""The real `xdm-bridge serve` process: SIGKILL and restart, SIGTERM, start-up errors.

The server runs as a subprocess (`python -m bridge serve`), exactly as the Procfile
starts it; fake X and fake Slack run in the test process.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from pathlib import Path

import pytest

from adapters.sandbox.fake_x import FakeX
from tests.harness import ALICE, BOB, CAROL, ME, wait_until
from tests.process.support import ROOT, world


@pytest.mark.usefixtures("on_both_stores")
async def test_sigkill_mid_delivery_then_restart_delivers_everything_once_in_order(tmp_path: Path) -> None:
    groups: dict[str, str] = {}

    def make_groups(x: FakeX) -> dict[str, str]:
        groups.update({f"C{i}": x.create_group(ME, [ALICE, BOB, CAROL]) for i in range(4)})
        return groups

    async with world(tmp_path, make_groups, X_TIMEOUT_SECONDS="10") as w:
        w.x.user_limit_15m = 12  # spread delivery over a few windows so there is a "mid"
        w.x.window_15m_seconds = 1.0
        server = w.server(tmp_path / "server.log")
        await server.start(w.url, w.session)

        expected: dict[str, list[str]] = {c: [] for c in groups}
        for i in range(60):
            channel = f"C{i % 4}"
            result, _, _ = await w.sender.message(channel, "U100", f"{channel} #{i}")
            assert result.status == 200
            expected[channel].append(f"Ada: {channel} #{i}")

        # First kill: at an arbitrary point of the backlog.
        await wait_until(lambda: len(w.x.events) >= 15, 20, "a first batch at X")
        await server.kill()
        await server.start(w.url, w.session)

        # Second kill: exactly when X has recorded a DM whose answer the bridge never got.
        w.x.timeout_seconds = 30.0
        w.x.inject("record_then_hang")
        await wait_until(lambda: any(k == "record_then_hang" for k, _ in w.x.faults_served), 20, "hung send")
        state = await w.sql("SELECT COUNT(*) FROM outbox WHERE state = 'sending'")
        assert state == [(1,)]  # the row that X has, but we do not know it
        await server.kill()
        await server.start(w.url, w.session)

        await wait_until(lambda: len(w.x.events) >= 60, 40, "all 60 DMs")
        await asyncio.sleep(1.5)  # room for any duplicate to show up
        assert await server.terminate() == 0
        for channel, conversation in groups.items():
            assert [e.text for e in w.x.messages_in(conversation)] == expected[channel], channel
        assert len(w.x.events) == 60
        rows = await w.sql("SELECT state, COUNT(*) FROM outbox GROUP BY state")
        assert rows == [("sent", 60)]
        assert "reconciled: X had the message already" in (tmp_path / "server.log").read_text()


@pytest.mark.usefixtures("on_both_stores")
async def test_sigterm_finishes_in_flight_send_and_exits_cleanly(tmp_path: Path) -> None:
    async with world(tmp_path, lambda x: {"C100": "1000-2001"}) as w:
        server = w.server(tmp_path / "server.log")
        await server.start(w.url, w.session)
        result, ts, _ = await w.sender.message("C100", "U100", "before shutdown")
        assert result.status == 200
        await wait_until(lambda: len(w.x.events) == 1, 10, "the DM")
        await w.slack.wait_for(lambda c: c.method == "reactions.add" and c.params.get("timestamp") == ts)
        assert await server.terminate() == 0
        log = (tmp_path / "server.log").read_text()
        assert "shut down cleanly" in log
        # A restart on the same database picks up where it left off, with nothing resent.
        await server.start(w.url, w.session)
        await asyncio.sleep(0.5)
        assert await server.terminate() == 0
        assert [e.text for e in w.x.events] == ["Ada: before shutdown"]


async def test_missing_configuration_stops_start_up_with_one_line_each(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "X_", "BRIDGE_"))}
    env["DATABASE_PATH"] = str(tmp_path / "b.db")
    env["SLACK_BOT_TOKEN"] = "not-a-bot-token"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "serve", env=env, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    lines = stderr.decode().strip().splitlines()
    assert any("SLACK_SIGNING_SECRET is not set" in line for line in lines)
    assert any("SLACK_BOT_TOKEN must be a bot token" in line for line in lines)
    assert any("BRIDGE_ENCRYPTION_KEY is not set" in line and "xdm-bridge keygen" in line for line in lines)
    assert all(line.startswith("xdm-bridge: configuration error:") for line in lines)
    assert not (tmp_path / "b.db").exists()


async def test_migrate_applies_schema_and_is_idempotent(tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_PATH": str(tmp_path / "m.db")}
    for _ in range(2):
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge", "migrate", env=env, cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0, err.decode()
        assert b"up to date" in out
    db = sqlite3.connect(tmp_path / "m.db")
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {
        "accounts",
        "oauth_states",
        "mappings",
        "outbox",
        "message_map",
        "budgets",
        "seen_events",
    } <= tables
    names = [r[0] for r in db.execute("SELECT name FROM _sqlite_migrations ORDER BY id")]
    assert names == ["0001_initial", "0002_outbox_kinds_and_media", "0003_pending_channels"]
