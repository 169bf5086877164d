"""A whole bridge on loopback between the simulators, for integration tests.

Fake X and fake Slack are real aiohttp servers; the bridge is the real web app,
started the way ``xdm-bridge serve`` starts it, and every request to it is signed
the way Slack signs. Nothing of our own is mocked.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import json
import re
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
from aiohttp import web

from adapters.sandbox.fake_slack import Button, FakeSlack, SlackCall, SlackResult, SlackSender, run_fake_slack
from adapters.sandbox.fake_x import FakeX, run_fake_x
from adapters.store.crypto import generate_key
from adapters.store.sqlite import open_database
from adapters.web import edge
from adapters.web.app import create_app
from bridge.confirm import CONFIRM_CANCEL, CONFIRM_DISCONNECT, CONFIRM_UNLINK
from bridge.connect import CANCEL_ACTION, CONFIRM_ACTION
from bridge.delivery import DeliveryConfig
from bridge.inbound import InboundConfig
from bridge.ports import Clock
from bridge.settings import Settings
from tests import pg

SIGNING_SECRET = "test-signing-secret"
TEAM = "T0001"
ME = "1000"  # the X account Slack users connect in tests
ALICE, BOB, CAROL, DORA = "2001", "2002", "2003", "2004"
HANDLES = {"U100": "ada", "U200": "grace", "U300": "cleo"}  # Slack's user_name in slash commands
# Quick retries, and no periodic rescan to hide behind: a lost wake-up of the worker makes a
# test time out instead of costing it a fraction of a second.
FAST = DeliveryConfig(retry_base=0.05, retry_cap=0.5, hourglass_after=0.3, rescan_every=600.0)
# Polling as in production, paced by the read budget, but idle polls come quickly: the fake X
# runs read windows of READ_WINDOW seconds instead of 15 minutes (its headers say so).
# No history on linking unless a test asks for it (its read would meet faults meant for others).
# Posts are not paced to Slack's second per channel (the fake Slack does not limit them unless a
# test asks it to): bursts of replies reach it at once; test_inbound.py tests the pace itself.
FAST_INBOUND = InboundConfig(
    min_interval=0.05,
    idle_interval=0.2,
    push_interval=1.0,
    retry_base=0.05,
    retry_cap=0.5,
    backfill=0,
    post_rate=0.0,
)
READ_WINDOW = 2.0


# The database every bridge started here uses: empty for SQLite at the test's DATABASE_PATH, or
# {"DATABASE_URL": …} (the ``on_both_stores`` fixture sets it for the tests that run on both).
DATABASE_ENV: dict[str, str] = {}


@functools.cache
def _migrated_sqlite() -> Path:
    """A SQLite database with every migration applied, made once per test process: a bridge
    started on a new file copies it instead of migrating (0.1-0.25 s of fsyncs per bridge). The
    schema is all a fresh migrate writes (no keys, no rows), so the copy is the same database."""
    folder = Path(tempfile.mkdtemp(prefix="xdm-template-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "migrated.db"
    open_database(str(path)).close()  # the last connection closed: WAL checkpointed into the file
    return path


def fresh_sqlite(path: Path) -> None:
    """Put a migrated, empty database at ``path`` unless one is there (a restarted bridge's)."""
    if not path.exists():
        shutil.copyfile(_migrated_sqlite(), path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def bridge_env(db_path: Path, x_url: str, slack_api_url: str, port: int, **extra: str) -> dict[str, str]:
    """The environment a deployed bridge would have, pointed at the simulators."""
    env = {
        "PORT": str(port),
        "DATABASE_PATH": str(db_path),
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_BOT_TOKEN": "xoxb-test",
        "SLACK_API_URL": slack_api_url,
        "PUBLIC_URL": f"http://127.0.0.1:{port}",
        "X_CLIENT_ID": "test-client",
        "X_CLIENT_SECRET": "test-secret",
        "X_API_URL": x_url,
        "X_AUTHORIZE_URL": f"{x_url}/i/oauth2/authorize",
        "BRIDGE_ENCRYPTION_KEY": generate_key(),
        "X_TIMEOUT_SECONDS": "2",
        "LOG_FORMAT": "text",
    }
    env.update(DATABASE_ENV)
    env.update(extra)
    return env


@dataclass
class Bridge:
    """Handles on every server plus helpers that act like Slack, a browser and X."""

    x: FakeX
    x_url: str
    slack: FakeSlack
    slack_url: str
    url: str
    settings: Settings
    session: aiohttp.ClientSession
    sender: SlackSender
    app: web.Application
    db_path: Path
    user_names: dict[str, str] = field(default_factory=dict)

    async def command(
        self, text: str, *, user: str = "U100", channel: str = "C100"
    ) -> tuple[SlackResult, str]:
        """Run `/xdm …` as Slack would; returns the ack and the response_url used."""
        response_url = self.slack.new_response_url(user=user, channel=channel)
        result = await self.sender.command(
            text,
            user_id=user,
            channel_id=channel,
            response_url=response_url,
            channel_name="support",
            user_name=HANDLES.get(user, ""),
        )
        return result, response_url

    def question_button(self, user: str = "U100", *, confirm: bool = True) -> Button:
        """The newest Confirm (or Cancel) of an unlink or disconnect question shown to ``user``."""
        wanted = (CONFIRM_UNLINK, CONFIRM_DISCONNECT) if confirm else (CONFIRM_CANCEL,)
        found = [b for b in self.slack.buttons(user) if b.action_id in wanted]
        assert found, f"no {wanted} button shown to {user}: {self.slack.buttons()}"
        return found[-1]

    async def ask(self, text: str, *, user: str = "U100", channel: str = "C100") -> tuple[SlackResult, str]:
        """`/xdm unlink` or `/xdm disconnect`: the ack, and the command's response_url once the
        question (with its buttons) reached it; an ack with text answered at once instead."""
        ack, response_url = await self.command(text, user=user, channel=channel)
        assert ack.status == 200, ack.text
        if not ack.text:
            await self.follow_up(response_url)
        return ack, response_url

    async def click_question(
        self, user: str = "U100", *, confirm: bool = True, clicked_by: str | None = None
    ) -> tuple[SlackResult, str]:
        """Click Confirm (or Cancel) on ``user``'s newest question as ``clicked_by`` (default:
        ``user``), a signed ``block_actions``; returns the bridge's HTTP answer and the click's
        response_url."""
        button = self.question_button(user, confirm=confirm)
        response_url = self.slack.click_response_url(button)
        result = await self.sender.click(button, user_id=clicked_by or user, response_url=response_url)
        return result, response_url

    async def confirmed(
        self, text: str, *, user: str = "U100", channel: str = "C100"
    ) -> tuple[SlackResult, str]:
        """Type `/xdm unlink` (or `disconnect`), then Confirm its question as the same person.

        Returns the click's first answer in the shape of a command's ack (``text``,
        ``response_type``), which is what the command used to answer at once, and the click's
        response_url, where any later answer comes (the second on). A command answered at once
        (refused, or nothing to do) is returned as it is, with its own response_url."""
        ack, response_url = await self.ask(text, user=user, channel=channel)
        if ack.text:
            return ack, response_url
        result, click_url = await self.click_question(user)
        assert result.status == 200, result.text
        first = await self.follow_up(click_url)
        return SlackResult(status=200, text=json.dumps(first, ensure_ascii=False), headers={}), click_url

    async def follow_up(self, response_url: str, count: int = 1) -> dict[str, Any]:
        """The ``count``-th message posted to ``response_url`` (the command's later answer)."""
        responses = await self.slack.wait_for_response(response_url, count=count, timeout=10.0)
        return responses[count - 1]

    async def confirm(self, page_url: str, session: aiohttp.ClientSession | None = None) -> str:
        """Open the bridge's connect page and press its button, as a browser would (cookies
        kept in ``session``'s jar); returns X's authorize URL the bridge sends the browser to."""
        browser = session or self.session
        async with browser.get(page_url) as response:
            page = await response.text()
            assert response.status == 200, page
        fields = dict(re.findall(r"name=(\w+) value='([^']*)'", page))
        async with browser.post(f"{self.url}/x/connect", data=fields, allow_redirects=False) as response:
            assert response.status == 303, await response.text()
            return response.headers["Location"]

    def connect_button(self, user: str = "U100", *, confirm: bool = True) -> Button:
        """The newest Confirm (or Cancel) button of a connect question shown to ``user``."""
        action = CONFIRM_ACTION if confirm else CANCEL_ACTION
        found = [b for b in self.slack.buttons(user) if b.action_id == action]
        assert found, f"no {action} button shown to {user}: {self.slack.buttons()}"
        return found[-1]

    async def answer_connect(
        self, user: str = "U100", *, confirm: bool = True, clicked_by: str | None = None
    ) -> tuple[SlackResult, str]:
        """Click Confirm (or Cancel) on ``user``'s connect question, as ``clicked_by`` (default:
        ``user``); returns the bridge's HTTP answer and the click's ``response_url``."""
        button = self.connect_button(user, confirm=confirm)
        response_url = self.slack.click_response_url(button)
        result = await self.sender.click(button, user_id=clicked_by or user, response_url=response_url)
        assert result.status == 200, result.text
        return result, response_url

    async def connect(self, *, user: str = "U100", channel: str = "C100", x_user: str = ME) -> str:
        """`/xdm connect`, the bridge's page, the browser's trip through X, then Confirm in Slack
        (waiting until the bridge answered it); returns the callback page's HTML."""
        ack, _ = await self.command("connect", user=user, channel=channel)
        url = await self.confirm(authorize_url(ack.text))
        self.x.authorizing_user_id = x_user
        async with self.session.get(url, allow_redirects=False) as response:
            assert response.status == 302, await response.text()
            location = response.headers["Location"]
        async with self.session.get(location) as response:
            page = await response.text()
            assert response.status == 200, page
        _, response_url = await self.answer_connect(user)
        told = await self.follow_up(response_url)
        assert "Connected X account" in told["text"], told
        return page

    def notes(self, user: str | None = None) -> list[dict[str, Any]]:
        """Ephemeral notes the bridge posted (``connect`` leaves its question, with buttons, out)."""
        return [e for e in self.slack.ephemerals(user) if "blocks" not in e]

    async def map_link(
        self, conversation_id: str, *, user: str = "U100", channel: str = "C100"
    ) -> SlackResult:
        """`/xdm link`; returns its outcome as an answer of Slack's shape (``text``/``response_type``):
        the bridge reads the conversation at X first and says the outcome through ``response_url``."""
        ack, response_url = await self.command(f"link {conversation_id}", user=user, channel=channel)
        assert ack.status == 200
        if ":x:" in ack.text:
            return ack  # refused at once
        told = await self.follow_up(response_url)
        return SlackResult(status=200, text=json.dumps(told), headers={})

    async def post(
        self, text: str, *, channel: str = "C100", user: str = "U100", **kw: Any
    ) -> tuple[SlackResult, str]:
        """A person posts in a channel; returns Slack's HTTP result and the message ts."""
        result, ts, _ = await self.sender.message(channel, user, text, **kw)
        return result, ts

    async def wait_reaction(self, channel: str, ts: str, name: str, timeout: float = 10.0) -> None:
        await self.slack.wait_for(
            lambda c: (
                c.method == "reactions.add"
                and c.params.get("timestamp") == ts
                and c.params.get("name") == name
                and c.params.get("channel") == channel
            ),
            timeout=timeout,
        )

    async def wait_dms(self, count: int, timeout: float = 10.0) -> None:
        await wait_until(lambda: len(self.x.events) >= count, timeout, f"{count} DMs at X")

    async def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        """Plain SQL (``?`` placeholders) on the bridge's database, whichever store it runs on."""
        return await pg.query(self.settings.database_url or str(self.db_path), query, *params)

    def texts(self, conversation_id: str | None = None) -> list[str]:
        """The texts of the DMs at fake X, oldest first; a media-only DM (no text) reads as ""."""
        events = self.x.events if conversation_id is None else self.x.messages_in(conversation_id)
        return [e.text or "" for e in events]


def note(call: SlackCall) -> bool:
    """A ``chat.postEphemeral`` that is a note: not the connect question, which has buttons."""
    return call.method == "chat.postEphemeral" and "blocks" not in call.params


async def linked(bridge: Bridge, conversation: str = "1000-2001", channel: str = "C100") -> None:
    """The usual start: U100 connects X account 1000 and links ``channel`` to ``conversation``."""
    await bridge.connect()
    ack = await bridge.map_link(conversation, channel=channel)
    assert "bridged this channel" in ack.text, ack.text


def browser_cookies() -> aiohttp.CookieJar:
    """A cookie jar that behaves like a browser's on http://127.0.0.1."""
    return aiohttp.CookieJar(unsafe=True)


def authorize_url(ack_text: str) -> str:
    match = re.search(r"<(https?://[^|>]+)\|", ack_text)
    assert match, f"no authorize link in {ack_text!r}"
    return match.group(1).replace("&amp;", "&")


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


_CHAT_EVENTS = re.compile(r"^/2/chat/conversations/[^/]+/events$")


def polls(x: FakeX) -> int:
    """The reads of new DMs the bridge's poller has sent X so far: ``GET /2/dm_events`` and X
    Chat conversations' events (a backfill's reads of one conversation's history are not polls)."""
    return sum(
        1
        for r in x.all_requests
        if r.method == "GET" and (r.path == "/2/dm_events" or _CHAT_EVENTS.match(r.path))
    )


async def settled(bridge: Bridge, *, reads: int = 2, timeout: float = 10.0) -> None:
    """Wait until nothing more can come of what X holds now, instead of sleeping for it: the
    poller sent X ``reads`` more reads (it reads one at a time, so every read before the last
    has been answered and its events stored), and no inbound row is left queued or posting (each
    is posted or skipped). A duplicate or a stray post a further read could cause shows by then;
    under load this waits longer where a fixed sleep would have seen fewer reads."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    start = polls(bridge.x)
    await wait_until(lambda: polls(bridge.x) >= start + reads, timeout, f"{reads} more reads of X")
    while await bridge.sql("SELECT 1 FROM inbound WHERE state IN ('queued', 'posting') LIMIT 1"):
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for the inbound rows to be done")
        await asyncio.sleep(0.01)


@asynccontextmanager
async def running_bridge(
    tmp_path: Path,
    *,
    delivery: DeliveryConfig = FAST,
    inbound: InboundConfig = FAST_INBOUND,
    env: dict[str, str] | None = None,
    fake_x: FakeX | None = None,
    port: int | None = None,
    before_start: Callable[[FakeSlack], None] | None = None,
    clock: Clock | None = None,
) -> AsyncIterator[Bridge]:
    """Start fake X, fake Slack and the bridge; stop them all afterwards.

    ``before_start`` may set up fake Slack (a failing ``auth.test``, say) before the bridge starts.
    """
    async with AsyncExitStack() as stack:
        x, x_url = await stack.enter_async_context(run_fake_x(fake_x))
        x.add_user(ME, "bridge_owner", "Bridge Owner")
        for user_id, handle in ((ALICE, "alice"), (BOB, "bob"), (CAROL, "carol"), (DORA, "dora")):
            x.add_user(user_id, handle, handle.title())
        x.authorizing_user_id = ME
        x.window_read_seconds = READ_WINDOW
        x.enforce_read_limit = True  # a read over X's budget is a 429, as at X
        slack, slack_url = await stack.enter_async_context(run_fake_slack(team_id=TEAM))
        slack.add_user("U100", display_name="Ada", real_name="Ada Lovelace")
        slack.add_user("U200", display_name="", real_name="Grace Hopper")
        slack.add_user("U300", display_name="Cleo", real_name="Cleo Admin", is_admin=True)
        slack.add_channel("C100", "support")
        slack.add_channel("C200", "sales")
        if before_start is not None:
            before_start(slack)
        # Bound here and handed to the server: a port only looked up (free_port) may be taken by
        # a test on another xdist worker before the bridge binds it.
        listening: socket.socket | None = None
        if port is None:
            listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            stack.callback(listening.close)
            listening.bind(("127.0.0.1", 0))
            port = int(listening.getsockname()[1])
        db_path = tmp_path / "bridge.db"
        # "{SLACK_URL}" in a value: the fake Slack's origin, known only now (SLACK_AUTHORIZE_URL).
        extra = {name: value.replace("{SLACK_URL}", slack_url) for name, value in (env or {}).items()}
        settings = Settings.from_env(bridge_env(db_path, x_url, f"{slack_url}/api/", port, **extra))
        if settings.database_url is None:
            fresh_sqlite(Path(settings.database_path))
        app = create_app(settings, delivery_config=delivery, inbound_config=inbound, clock=clock)
        runner = edge.runner(app, shutdown_timeout=2.0)  # the edge `xdm-bridge serve` listens behind
        stack.push_async_callback(runner.cleanup)
        if listening is not None:
            await edge.start(runner, sock=listening)
        else:
            await edge.start(runner, "127.0.0.1", port)
        # unsafe: keep cookies for an IP address (the bridge is 127.0.0.1), as a browser does.
        session = await stack.enter_async_context(aiohttp.ClientSession(cookie_jar=browser_cookies()))
        url = f"http://127.0.0.1:{port}"
        sender = SlackSender(
            session,
            f"{url}/slack/events",
            SIGNING_SECRET,
            team_id=TEAM,
            triggers=slack.views.issue_trigger_id,
        )
        bridge = Bridge(x, x_url, slack, slack_url, url, settings, session, sender, app, db_path)
        yield bridge
        assert x.violations == [], "requests or responses outside X's OpenAPI spec:\n" + "\n".join(
            x.violations
        )
