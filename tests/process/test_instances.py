"""More than one `serve`: several instances on PostgreSQL, exactly one on a SQLite file."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

from adapters.sandbox.fake_slack import SlackSender
from adapters.sandbox.fake_x import FakeX
from tests.harness import ALICE, BOB, CAROL, ME, SIGNING_SECRET, TEAM, free_port, wait_until
from tests.process.support import ROOT, Server, world


async def test_a_second_serve_on_the_same_sqlite_file_refuses_to_start(tmp_path: Path) -> None:
    async with world(tmp_path, lambda x: {"C100": "1000-2001"}) as w:
        first = w.server(tmp_path / "first.log")
        await first.start(w.url, w.session)
        second = w.server(tmp_path / "second.log", port=free_port())
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge", "serve", "--host", "127.0.0.1",
            env={**os.environ, **second.env}, cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 1
        message = err.decode().strip()
        assert message.startswith("xdm-bridge: another xdm-bridge serve (pid ")
        assert str(w.db_path) in message and "DATABASE_URL" in message
        assert "Traceback" not in message
        # The lock goes with its holder, however it ends.
        await first.kill()
        await second.start(second.url, w.session)
        assert await second.terminate() == 0


async def leader_of(servers: list[Server], session: object, timeout: float = 10.0) -> Server:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for server in servers:
            health = await server.health(session)  # type: ignore[arg-type]
            if health is not None and health["worker"] in ("ok", "starting"):
                return server
        await asyncio.sleep(0.05)
    raise AssertionError("no instance leads")


@pytest.mark.usefixtures("on_postgres")
async def test_two_instances_share_the_work_and_a_standby_takes_over_a_killed_leader(tmp_path: Path) -> None:
    groups: dict[str, str] = {}

    def make_groups(x: FakeX) -> dict[str, str]:
        groups.update({f"C{i}": x.create_group(ME, [ALICE, BOB, CAROL]) for i in range(4)})
        return groups

    async with world(tmp_path, make_groups, X_TIMEOUT_SECONDS="10", METRICS_TOKEN="operator") as w:
        w.x.user_limit_15m = 12  # delivery spread over windows, so the kill lands mid-delivery
        w.x.window_15m_seconds = 1.0
        servers = [w.server(tmp_path / "a.log"), w.server(tmp_path / "b.log", port=free_port())]
        for server in servers:
            await server.start(server.url, w.session)
        senders = [
            SlackSender(w.session, f"{s.url}/slack/events", SIGNING_SECRET, team_id=TEAM) for s in servers
        ]
        expected: dict[str, list[str]] = {c: [] for c in groups}
        for i in range(60):  # spread over both instances: every instance accepts
            channel = f"C{i % 4}"
            result, _, _ = await senders[i % 2].message(channel, "U100", f"{channel} #{i}")
            assert result.status == 200
            expected[channel].append(f"Ada: {channel} #{i}")

        leader = await leader_of(servers, w.session)
        [standby] = [s for s in servers if s is not leader]
        health = await standby.health(w.session)
        assert health is not None and health["worker"] == "standby" and health["status"] == "ok"

        # Kill the leader exactly when X has recorded a DM whose answer never came back.
        await wait_until(lambda: len(w.x.events) >= 15, 20, "a first batch at X")
        w.x.timeout_seconds = 30.0
        w.x.inject("record_then_hang")
        await wait_until(lambda: any(k == "record_then_hang" for k, _ in w.x.faults_served), 20, "hung send")
        assert await w.sql("SELECT COUNT(*) FROM outbox WHERE state = 'sending'") == [(1,)]
        await leader.kill()
        assert await leader_of([standby], w.session) is standby

        await wait_until(lambda: len(w.x.events) >= 60, 40, "all 60 DMs")
        await asyncio.sleep(1.5)  # room for any duplicate to show up
        assert await standby.terminate() == 0
        for channel, conversation in groups.items():
            assert [e.text for e in w.x.messages_in(conversation)] == expected[channel], channel
        assert len(w.x.events) == 60
        assert w.x.rate_limited_count == 0
        assert await w.sql("SELECT state, COUNT(*) FROM outbox GROUP BY state") == [("sent", 60)]
        log = (tmp_path / "a.log").read_text() + (tmp_path / "b.log").read_text()
        assert "reconciled: X had the message already" in log
