"""`xdm-bridge doctor` against the Slack and X simulators and a real database."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from sqlite_utils import Database

from adapters.ops import doctor
from adapters.ops.config_doc import ENV_VARS
from adapters.sandbox.fake_slack import FakeSlack, run_fake_slack
from adapters.sandbox.fake_x import FakeX, run_fake_x
from adapters.store.select import AnyStore, make_store
from bridge.model import TokenSet, XUser
from bridge.settings import Settings
from migrations import migrations
from tests import pg
from tests.harness import ALICE, BOB, ME, TEAM, bridge_env, free_port

ROOT = Path(__file__).resolve().parents[2]
ALL_SCOPES = "dm.read dm.write tweet.read users.read offline.access media.write"
AiohttpServer = Callable[[web.Application], Coroutine[Any, Any, Any]]


@dataclass
class World:
    x: FakeX
    slack: FakeSlack
    env: dict[str, str]
    store: AnyStore


@asynccontextmanager
async def world(tmp_path: Path, **env: str) -> AsyncIterator[World]:
    """The simulators running and an open store; accounts are added by each test."""
    async with AsyncExitStack() as stack:
        x, x_url = await stack.enter_async_context(run_fake_x())
        for user_id, handle in ((ME, "bridge_owner"), (ALICE, "alice"), (BOB, "bob")):
            x.add_user(user_id, handle)
        slack, slack_url = await stack.enter_async_context(run_fake_slack(team_id=TEAM))
        full_env = bridge_env(tmp_path / "bridge.db", x_url, f"{slack_url}/api/", free_port(), **env)
        full_env["PUBLIC_URL"] = "https://bridge.example.com"
        store = make_store(Settings.from_env(full_env))
        await store.open()
        stack.push_async_callback(store.close)
        yield World(x, slack, full_env, store)


async def connect(w: World, slack_user: str, x_user: str, *, scope: str = ALL_SCOPES, **kw: Any) -> int:
    grant = w.x.issue_token(x_user)
    expires_at = kw.get("expires_at", grant.expires_at)
    user = w.x.users[x_user]
    account = await w.store.save_account(
        TEAM,
        slack_user,
        XUser(x_user, user.username),
        TokenSet(grant.access_token, grant.refresh_token, expires_at, scope),
    )
    return account.id


async def cli(env: dict[str, str], *argv: str) -> tuple[int, str]:
    """The real command, as an operator runs it (`python -m bridge` is the `xdm-bridge` script)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", *argv,
        env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode()


def clean_environ() -> dict[str, str]:
    """The test runner's environment without any bridge setting that could leak in."""
    names = {v.name for v in ENV_VARS}
    return {k: v for k, v in os.environ.items() if k not in names}


def by_name(report: doctor.Report, prefix: str) -> list[doctor.Check]:
    return [c for c in report.checks if c.name.startswith(prefix)]


@pytest.mark.usefixtures("on_both_stores")
@pytest.mark.process
async def test_all_good_exits_0_and_says_what_it_checked(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        await connect(w, "U100", ME)
        code, out = await cli({**clean_environ(), **w.env}, "doctor")
        assert code == 0, out
        assert "[ok]   slack: bot @xdm-bridge in workspace Fake Team (T0001)" in out
        assert "[ok]   x @bridge_owner: token works" in out
        assert "the Slack user U100 (workspace T0001)" in out and "<@" not in out  # no Slack markup
        assert "schema up to date" in out and "All checks passed" in out
        assert [c.method for c in w.slack.calls] == ["auth.test"]
        assert sum(r.path == "/2/users/me" for r in w.x.all_requests) == 1

        report = await doctor.run(w.env)
        data = report.as_json()
        assert data["ok"] is True and data["exit_code"] == 0
        assert {c["status"] for c in data["checks"]} == {"ok"}


@pytest.mark.usefixtures("on_both_stores")
async def test_each_problem_is_reported_with_its_fix(tmp_path: Path) -> None:
    async with world(tmp_path, SLACK_BOT_TOKEN="xoxb-not-the-real-one") as w:
        revoked = await connect(w, "U100", ME)
        w.x.revoke_user_tokens(ME)
        parked = await connect(w, "U200", ALICE)
        await w.store.set_needs_reconnect(parked, True)
        await connect(w, "U300", BOB, scope="tweet.read users.read offline.access")
        assert revoked != parked

        report = await doctor.run(w.env)
        assert report.exit_code == 1
        [slack] = by_name(report, "slack")
        assert slack.status == "fail" and "invalid_auth" in slack.detail
        assert slack.fix is not None and "Bot User OAuth Token" in slack.fix
        [owner] = by_name(report, "x @bridge_owner")
        assert owner.status == "fail" and "rejected the access token" in owner.detail
        [alice] = by_name(report, "x @alice")
        assert alice.status == "fail" and "needs reconnecting" in alice.detail
        assert alice.fix is not None and "Slack user U200 " in alice.fix and "/xdm connect" in alice.fix
        [bob] = by_name(report, "x @bob")
        assert bob.status == "fail" and "dm.read, dm.write" in bob.detail
        assert bob.fix is not None and "Direct Message" in bob.fix
        assert all(c.fix for c in report.checks if c.status == "fail")
        text = report.text()
        assert "[FAIL] x @alice" in text and "       fix: " in text and "4 problem(s)" in text


async def test_expired_token_is_reported_not_refreshed(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        await connect(w, "U100", ME, expires_at=time.time() - 10)
        report = await doctor.run(w.env)
        [owner] = by_name(report, "x @bridge_owner")
        assert owner.status == "ok" and "refreshes it on the next send" in owner.detail
        # Refresh tokens are single-use and the server owns their rotation: doctor must not spend one.
        assert w.x.token_requests == []
        assert report.exit_code == 0


@pytest.mark.process
async def test_missing_configuration_exits_2_naming_the_variable(tmp_path: Path) -> None:
    env = bridge_env(tmp_path / "bridge.db", "http://127.0.0.1:9", "http://127.0.0.1:9/api/", 3000)
    del env["X_CLIENT_ID"]
    code, out = await cli({**clean_environ(), **env}, "doctor")
    assert code == 2, out
    lines = out.splitlines()
    problem = next(i for i, line in enumerate(lines) if "X_CLIENT_ID" in line and "[FAIL]" in line)
    assert lines[problem + 1].strip().startswith("fix: set X_CLIENT_ID")
    assert not (tmp_path / "bridge.db").exists()


@pytest.mark.process
async def test_placeholders_copied_from_the_docs_exit_2_naming_each_variable(tmp_path: Path) -> None:
    env = bridge_env(
        tmp_path / "bridge.db",
        "http://127.0.0.1:9",
        "http://127.0.0.1:9/api/",
        3000,
        SLACK_BOT_TOKEN="xoxb-…",
        PUBLIC_URL="https://your-bridge-1234.herokuapp.com",
    )
    code, out = await cli({**clean_environ(), **env}, "doctor")
    assert code == 2, out
    failed = [line for line in out.splitlines() if "[FAIL]" in line]
    assert len(failed) == 2, out
    assert "SLACK_BOT_TOKEN still holds a placeholder" in failed[0]
    assert "PUBLIC_URL still holds a placeholder" in failed[1]


async def test_database_missing_or_behind(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    env = bridge_env(tmp_path / "absent.db", dead, f"{dead}/api/", 3000, PUBLIC_URL="https://b.example")
    report = await doctor.run(env)
    [database] = by_name(report, "database")
    assert database.status == "fail" and "no database at" in database.detail
    assert database.fix is not None and "xdm-bridge migrate" in database.fix
    [slack] = by_name(report, "slack")
    assert slack.status == "fail" and "could not reach Slack" in slack.detail
    # Unknown, not "none yet": advice to run /xdm connect would be wrong while the database is down.
    [x] = [c for c in report.checks if c.name == "x"]
    assert "could not be read" in x.detail and "connect" not in x.detail + (x.fix or "")
    assert report.exit_code == 1

    behind = tmp_path / "behind.db"
    db = Database(str(behind))
    last = migrations.pending(db)[-1].name
    migrations.apply(db, stop_before=last)
    db.close()
    report = await doctor.run({**env, "DATABASE_PATH": str(behind)})
    [database] = by_name(report, "database")
    assert database.status == "fail" and "pending" in database.detail and last in database.detail


async def test_a_postgresql_database_behind_is_reported_not_migrated(pg_url: str, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    env = bridge_env(tmp_path / "unused.db", dead, f"{dead}/api/", 3000, DATABASE_URL=pg_url)
    report = await doctor.run(env)
    [database] = by_name(report, "database")
    assert database.status == "fail" and "migration(s) pending" in database.detail
    assert database.fix is not None and "xdm-bridge migrate" in database.fix
    assert await pg.query(pg_url, "SELECT to_regclass('outbox') IS NULL") == [(True,)]  # left as it was


async def test_missing_slack_scopes_are_named(tmp_path: Path, aiohttp_server: AiohttpServer) -> None:
    async def auth_test(request: web.Request) -> web.Response:
        body = {"ok": True, "team_id": TEAM, "team": "Acme", "user": "xdm-bridge", "user_id": "UBOT"}
        return web.json_response(body, headers={"x-oauth-scopes": "chat:write,commands,users:read"})

    app = web.Application()
    app.router.add_post("/api/auth.test", auth_test)
    server = await aiohttp_server(app)
    async with world(tmp_path, SLACK_API_URL=str(server.make_url("/api/"))) as w:
        await connect(w, "U100", ME)
        report = await doctor.run(w.env)
    [scopes] = by_name(report, "slack scopes")
    assert scopes.status == "fail"
    assert "channels:history" in scopes.detail and "reactions:write" in scopes.detail
    assert "chat:write," not in scopes.detail
    assert scopes.fix is not None and "reinstall" in scopes.fix


@pytest.mark.parametrize("error", ["token_revoked", "account_inactive", "no_permission"])
async def test_a_revoked_or_refused_slack_token_is_reported_with_its_fix(tmp_path: Path, error: str) -> None:
    async with world(tmp_path) as w:
        w.slack.fail_next("auth.test", error)
        report = await doctor.run(w.env)
        assert report.exit_code == 1
        [slack] = by_name(report, "slack")
        assert slack.status == "fail" and error in slack.detail
        assert slack.fix is not None and "SLACK_BOT_TOKEN" in slack.fix and "reinstall" in slack.fix
