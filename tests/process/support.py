"""Running `python -m bridge serve` as a subprocess, between fakes running in the test process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from adapters.sandbox.fake_slack import FakeSlack, SlackSender, run_fake_slack
from adapters.sandbox.fake_x import FakeX, run_fake_x
from adapters.store.select import make_store
from bridge.model import ChannelMapping, MappingKind, TokenSet, XUser
from bridge.settings import Settings
from tests import pg
from tests.harness import ALICE, BOB, CAROL, ME, SIGNING_SECRET, TEAM, bridge_env, free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class World:
    x: FakeX
    slack: FakeSlack
    env: dict[str, str]
    url: str
    session: aiohttp.ClientSession
    sender: SlackSender
    db_path: Path
    servers: list[Server] = field(default_factory=list)

    async def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        """Plain SQL (``?`` placeholders) on the world's database, SQLite or PostgreSQL."""
        return await pg.query(self.env.get("DATABASE_URL") or str(self.db_path), query, *params)

    def server(self, log_path: Path, *, port: int | None = None, max_files: int | None = None) -> Server:
        """A server for this world; it is killed when the world ends, even if the test failed.

        ``port``: another instance on the same database, listening elsewhere (``server.url``).
        ``max_files`` lowers the process's file descriptor limit (RLIMIT_NOFILE)."""
        env = dict(self.env)
        if port is not None:
            env.update(PORT=str(port), PUBLIC_URL=f"http://127.0.0.1:{port}")
        server = Server(env, log_path, max_files=max_files)
        self.servers.append(server)
        return server


@asynccontextmanager
async def world(
    tmp_path: Path, channels: Callable[[FakeX], dict[str, str]], **env: str
) -> AsyncIterator[World]:
    """Fakes running, a connected account and mapped channels in the database; no server yet."""
    async with AsyncExitStack() as stack:
        x, x_url = await stack.enter_async_context(run_fake_x())
        x.add_user(ME, "bridge_owner")
        for user_id, handle in ((ALICE, "alice"), (BOB, "bob"), (CAROL, "carol")):
            x.add_user(user_id, handle)
        slack, slack_url = await stack.enter_async_context(run_fake_slack(team_id=TEAM))
        slack.add_user("U100", display_name="Ada")
        port = free_port()
        db_path = tmp_path / "bridge.db"
        full_env = bridge_env(db_path, x_url, f"{slack_url}/api/", port, LOG_FORMAT="json", **env)
        store = make_store(Settings.from_env(full_env))
        await store.open()
        grant = x.issue_token(ME)
        account = await store.save_account(
            TEAM,
            "U100",
            XUser(ME, "bridge_owner"),
            TokenSet(grant.access_token, grant.refresh_token, grant.expires_at),
        )
        for channel, conversation in channels(x).items():
            await store.create_mapping(
                ChannelMapping(
                    TEAM, channel, MappingKind.LINK, account.id, conversation, None, "U100", time.time()
                )
            )
        await store.close()
        session = await stack.enter_async_context(aiohttp.ClientSession())
        url = f"http://127.0.0.1:{port}"
        sender = SlackSender(session, f"{url}/slack/events", SIGNING_SECRET, team_id=TEAM)
        w = World(x, slack, full_env, url, session, sender, db_path)
        try:
            yield w
        finally:
            for server in w.servers:
                if server.process is not None and server.process.returncode is None:
                    await server.kill()
        # As in-process tests (tests/harness.py): a request or answer outside X's spec fails the test.
        assert x.violations == [], "requests or responses outside X's OpenAPI spec:\n" + "\n".join(
            x.violations
        )


class Server:
    """One `python -m bridge serve` subprocess."""

    def __init__(self, env: dict[str, str], log_path: Path, *, max_files: int | None = None) -> None:
        self.env = env
        self.log_path = log_path
        self.max_files = max_files
        self.process: asyncio.subprocess.Process | None = None
        self.url = f"http://127.0.0.1:{env['PORT']}"

    async def health(self, session: aiohttp.ClientSession) -> dict[str, Any] | None:
        """The /healthz body (in full with the world's METRICS_TOKEN), or None while it does not answer."""
        token = self.env.get("METRICS_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            # Bounded: a /healthz that hangs is a failure to see, not a test that never ends.
            timeout = aiohttp.ClientTimeout(total=15)
            async with session.get(f"{self.url}/healthz", headers=headers, timeout=timeout) as response:
                body: dict[str, Any] = await response.json()
                return body
        except aiohttp.ClientError:
            return None

    async def start(self, url: str, session: aiohttp.ClientSession) -> None:
        log = self.log_path.open("ab")
        limit = self.max_files

        def lower_limit() -> None:
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge", "serve", "--host", "127.0.0.1",
            env={**os.environ, **self.env}, cwd=ROOT, stdout=log, stderr=log, preexec_fn=lower_limit,
            start_new_session=True,  # its own process group: a kill takes any child (Litestream's) too
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.process.returncode is None, self.log_path.read_text()
            try:
                async with session.get(f"{url}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
        raise AssertionError("server did not become healthy:\n" + self.log_path.read_text())

    async def kill(self) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        await self.process.wait()

    async def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), 30)
