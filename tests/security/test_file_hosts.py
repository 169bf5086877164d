"""The bot token goes only to Slack's file hosts: never to a host a file URL or a redirect names."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from adapters.slack.api import SlackApi, web_client
from bridge.media import FileUnavailable
from tests.harness import running_bridge, wait_until

TOKEN = "xoxb-secret-bot-token"


class Foreign:
    """A host that is not Slack's, recording every request that reaches it."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(dict(request.headers))
        return web.Response(body=b"PNG", content_type="image/png")


@pytest.fixture
async def foreign(aiohttp_server: AiohttpServer) -> AsyncIterator[tuple[Foreign, str]]:
    host = Foreign()
    app = web.Application()
    app.router.add_get("/{tail:.*}", host.handle)
    server = await aiohttp_server(app)
    yield host, str(server.make_url("/steal.png"))


async def slack_host(aiohttp_server: AiohttpServer, redirect_to: str) -> str:
    """A stand-in Slack API and file host whose file answer is a redirect to ``redirect_to``."""

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(redirect_to)

    async def local(request: web.Request) -> web.Response:
        return web.Response(body=b"GIF89a", content_type="image/gif")

    app = web.Application()
    app.router.add_get("/files-pri/T1-F1/download/a.png", redirect)
    app.router.add_get("/files-pri/T1-F2/download/b.gif", local)
    server = await aiohttp_server(app)
    return str(server.make_url("/"))


@pytest.mark.parametrize(
    "url",
    [
        "https://files.slack.com/files-pri/T1-F1/download/a.png",
        "https://slack.com/files-pri/T1-F1/a.png",
        "https://files-edu.slack.com/files-pri/T1-F1/a.png",
    ],
)
async def test_slack_hosts_are_allowed(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        assert SlackApi(web_client(TOKEN, "https://slack.com/api/", session), session).slack_file_host(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://files.slack.com/files-pri/T1-F1/a.png",  # not https: the token would cross in clear
        "https://files.slack.com.evil.example/a.png",
        "https://evilslack.com/a.png",
        "https://files.slack.com@evil.example/a.png",
        "https://user:pw@files.slack.com/a.png",
        "https://files.slack.com:8443/a.png",
        "https://evil.example/?files.slack.com",
        "ftp://files.slack.com/a.png",
        "https://[::1/a.png",
        # The resolver stops at a NUL: this name is looked up as evil.example (TLS then refuses
        # the name, but the request must not get that far).
        "https://evil.example\x00.slack.com/a.png",
        "https://evil.example;.slack.com/a.png",
        "https://evil.example%2f.slack.com/a.png",
    ],
)
async def test_other_hosts_are_refused(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        assert not SlackApi(web_client(TOKEN, "https://slack.com/api/", session), session).slack_file_host(
            url
        )


async def test_a_file_url_on_a_foreign_host_gets_no_request(foreign: tuple[Foreign, str]) -> None:
    host, url = foreign
    async with aiohttp.ClientSession() as session:
        api = SlackApi(web_client(TOKEN, "https://slack.com/api/", session), session)
        with pytest.raises(FileUnavailable, match="could not be fetched") as caught:
            await api.download_file(
                "T1", {"id": "F1", "name": "a.png", "url_private_download": url}, max_bytes=100
            )
    assert not caught.value.retryable
    assert host.requests == []


async def test_a_redirect_to_a_foreign_host_is_not_followed(
    foreign: tuple[Foreign, str], aiohttp_server: AiohttpServer
) -> None:
    host, url = foreign
    base = await slack_host(aiohttp_server, url)
    async with aiohttp.ClientSession() as session:
        api = SlackApi(web_client(TOKEN, f"{base}api/", session), session)
        file = {"id": "F1", "name": "a.png", "url_private_download": f"{base}files-pri/T1-F1/download/a.png"}
        with pytest.raises(FileUnavailable, match="could not be fetched"):
            await api.download_file("T1", file, max_bytes=100)
        # A redirect that stays on Slack's host is followed.
        inside = await slack_host(aiohttp_server, "/files-pri/T1-F2/download/b.gif")
        api = SlackApi(web_client(TOKEN, f"{inside}api/", session), session)
        file = {
            "id": "F1",
            "name": "a.png",
            "url_private_download": f"{inside}files-pri/T1-F1/download/a.png",
        }
        assert await api.download_file("T1", file, max_bytes=100) == b"GIF89a"
    assert host.requests == []


async def test_the_author_is_told_and_the_foreign_host_sees_nothing(
    tmp_path: Path, foreign: tuple[Foreign, str]
) -> None:
    host, url = foreign
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        await bridge.map_link("1000-2001")
        stolen = {"id": "F9", "name": "bait.png", "mimetype": "image/png", "url_private_download": url}
        await bridge.post("look", files=[stolen])
        await wait_until(
            lambda: any(
                c.method == "chat.postEphemeral" and "could not be fetched" in str(c.params.get("text"))
                for c in bridge.slack.calls
            ),
            10.0,
            "the author told",
        )
        assert host.requests == []
