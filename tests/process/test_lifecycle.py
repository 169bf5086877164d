"""The real `xdm-bridge serve` process: SIGKILL and restart, SIGTERM, start-up errors.

The server runs as a subprocess (`python -m bridge serve`), exactly as the Procfile
starts it; fake X and fake Slack run in the test process.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import sys
from pathlib import Path

import pytest
from sqlite_utils import Database

from adapters.sandbox.fake_x import FakeX
from migrations import migrations
from tests.harness import ALICE, BOB, CAROL, ME, bridge_env, free_port, wait_until
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
    path = tmp_path / "m.db"
    said = []
    for _ in range(2):
        code, out, err = await start_with({"DATABASE_PATH": str(path)}, "migrate")
        assert code == 0, err
        said.append(out.strip())
    version = len(migrations.pending(Database(memory=True)))
    assert said == [
        f"created database {path} at version {version}",
        f"database {path} is up to date (version {version})",
    ]
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
    assert names[:3] == ["0001_initial", "0002_outbox_kinds_and_media", "0003_pending_channels"]
    assert "0005_media_lifetime_and_attempts" in names and names == sorted(names)
    assert "0004_outbox_deleted_and_one_target" in names and "0008_inbound" in names
    # Every migration the code has, in order (the last one named here would go stale).
    assert names == [m.name for m in migrations.pending(Database(memory=True))]


async def test_the_process_harness_fails_a_test_on_a_request_outside_x_spec(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="outside X's OpenAPI spec"):
        async with world(tmp_path, lambda x: {}) as w:
            base = w.env["X_API_URL"]
            # What a broken bridge could send: a DM with a field X does not define.
            async with w.session.post(
                f"{base}/2/dm_conversations/1000-2001/messages",
                json={"text": "hi", "colour": "red"},
                headers={"Authorization": "Bearer nothing"},
            ):
                pass


async def start_with(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """Run ``python -m bridge ARGS`` to its end; returns the exit code, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", *args, env={**os.environ, **env}, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def one_line_no_traceback(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    # The JSON log may say "database ready" before a later problem; the problem is one plain line.
    plain = [line for line in lines if not line.startswith("{")]
    assert len(plain) == 1, stderr
    return plain[0]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("missing/deeper/bridge.db", "does not exist"),
        ("a-file/bridge.db", "is not a folder"),
        ("", "is a folder"),
    ],
)
async def test_unusable_database_path_stops_serve_and_migrate_with_one_line(
    tmp_path: Path, where: str, expected: str
) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    path = str(tmp_path / where) if where else str(tmp_path)
    env = bridge_env(Path(path), "http://127.0.0.1:9", "http://127.0.0.1:9/api/", free_port())
    for command in (("serve", "--host", "127.0.0.1"), ("migrate",)):
        code, _, err = await start_with({**env, "DATABASE_PATH": path}, *command)
        assert code == 2, err
        line = one_line_no_traceback(err)
        assert line.startswith(f"xdm-bridge: DATABASE_PATH={path!r}: ") and expected in line, line


async def test_port_in_use_stops_serve_with_one_line_before_touching_the_database(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        env = bridge_env(tmp_path / "b.db", "http://127.0.0.1:9", "http://127.0.0.1:9/api/", port)
        code, _, err = await start_with(env, "serve", "--host", "127.0.0.1")
    assert code == 2, err
    line = one_line_no_traceback(err)
    assert (
        line == f"xdm-bridge: PORT={port}: 127.0.0.1:{port} is already in use (another process listens there)"
    )
    assert not (tmp_path / "b.db").exists()


async def test_placeholders_from_the_docs_stop_start_up_naming_each_variable(tmp_path: Path) -> None:
    env = bridge_env(
        tmp_path / "b.db",
        "http://127.0.0.1:9",
        "http://127.0.0.1:9/api/",
        free_port(),
        SLACK_BOT_TOKEN="xoxb-…",
        PUBLIC_URL="https://YOUR-HOST",
    )
    code, _, err = await start_with(env, "serve", "--host", "127.0.0.1")
    assert code == 2 and "Traceback" not in err, err
    assert err.splitlines() == [
        "xdm-bridge: configuration error: SLACK_BOT_TOKEN still holds a placeholder (contains '…') "
        "from the README or .env.example: put the real value there",
        "xdm-bridge: configuration error: PUBLIC_URL still holds a placeholder (contains 'YOUR-HOST') "
        "from the README or .env.example: put the real value there",
    ]
    assert not (tmp_path / "b.db").exists()


async def test_a_refused_slack_token_stops_serve_with_one_line_naming_it(tmp_path: Path) -> None:
    async with world(tmp_path, lambda x: {}, SLACK_BOT_TOKEN="xoxb-not-the-real-one") as w:
        code, _, err = await start_with(w.env, "serve", "--host", "127.0.0.1")
        assert code == 2, err
        line = one_line_no_traceback(err)
        assert line.startswith("xdm-bridge: SLACK_BOT_TOKEN: Slack refuses it (invalid_auth)"), line
        assert "Bot User OAuth Token" in line and "xoxb-not-the-real-one" not in line
        for error in ("token_revoked", "account_inactive"):
            w.slack.fail_next("auth.test", error)
            code, _, err = await start_with(
                {**w.env, "SLACK_BOT_TOKEN": "xoxb-test"}, "serve", "--host", "127.0.0.1"
            )
            assert code == 2 and f"({error})" in one_line_no_traceback(err)


async def test_a_check_mark_that_never_reached_slack_is_added_by_the_next_process(tmp_path: Path) -> None:
    # The row is marked sent, then the ✅ is lost (Slack failed it here; a SIGKILL between the
    # two steps loses it the same way). The next process marks the last minutes' sends again.
    async with world(tmp_path, lambda x: {"C0": x.create_group(ME, [ALICE, BOB])}) as w:
        w.slack.fail_next("reactions.add", "internal_error")
        server = w.server(tmp_path / "server.log")
        await server.start(w.url, w.session)
        result, ts, _ = await w.sender.message("C0", "U100", "hello")
        assert result.status == 200
        await wait_until(lambda: len(w.x.events) == 1, 20, "the DM at X")
        await wait_until(lambda: any(c.method == "reactions.add" for c in w.slack.calls), 20, "the failed ✅")
        assert "white_check_mark" not in w.slack.reactions("C0", ts)
        await server.kill()

        await server.start(w.url, w.session)
        await wait_until(lambda: "white_check_mark" in w.slack.reactions("C0", ts), 20, "the ✅ again")
        assert len(w.x.events) == 1  # marked, not sent again


async def test_an_unreachable_database_url_stops_serve_and_migrate_with_one_line(tmp_path: Path) -> None:
    closed = free_port()  # nothing listens there
    url = f"postgresql://bridge:hunter22@127.0.0.1:{closed}/xdm"
    env = bridge_env(tmp_path / "unused.db", "http://127.0.0.1:9", "http://127.0.0.1:9/api/", free_port())
    for command in (("serve", "--host", "127.0.0.1"), ("migrate",)):
        code, _, err = await start_with({**env, "DATABASE_URL": url}, *command)
        assert code == 1, err
        line = one_line_no_traceback(err)
        assert line.startswith(f"xdm-bridge: database postgresql://bridge:***@127.0.0.1:{closed}/xdm: "), line
        assert "hunter22" not in err
