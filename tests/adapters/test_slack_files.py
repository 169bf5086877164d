"""SlackApi.download_file against the fake Slack over loopback."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from adapters.sandbox.fake_slack import FakeSlack, run_fake_slack
from adapters.slack.api import SlackApi, web_client
from bridge.media import FileTooLarge, FileUnavailable

TEAM = "T0001"


@dataclass
class Env:
    fake: FakeSlack
    session: aiohttp.ClientSession

    def slack(self, token: str | None = None) -> SlackApi:
        client = web_client(token or self.fake.bot_token, self.fake.api_url, self.session)
        return SlackApi(client, self.session)


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    async with run_fake_slack(team_id=TEAM) as (fake, _), aiohttp.ClientSession() as session:
        yield Env(fake, session)


async def test_download_uses_the_bot_token_and_the_download_url(env: Env) -> None:
    content = os.urandom(300_000)
    file = env.fake.add_file("F1", name="shot.png", mimetype="image/png", filetype="png", content=content)
    assert await env.slack().download_file(TEAM, file, max_bytes=5 * 1024 * 1024) == content
    (download,) = env.fake.downloads
    assert download.authorized and download.file_id == "F1" and "/download/" in download.path


async def test_download_falls_back_to_url_private_then_files_info(env: Env) -> None:
    file = env.fake.add_file("F2", name="a.gif", mimetype="image/gif", filetype="gif", content=b"GIF89a..")
    without_download = {k: v for k, v in file.items() if k != "url_private_download"}
    assert await env.slack().download_file(TEAM, without_download, max_bytes=100) == b"GIF89a.."
    assert "/download/" not in env.fake.downloads[-1].path
    # An event may carry only the id (file_access: check_file_info): files.info supplies the URL.
    bare = {"id": "F2", "name": "a.gif", "file_access": "check_file_info"}
    assert await env.slack().download_file(TEAM, bare, max_bytes=100) == b"GIF89a.."
    assert [c.method for c in env.fake.calls][-1] == "files.info"


async def test_html_answer_means_the_token_cannot_read_files(env: Env) -> None:
    file = env.fake.add_file("F3", name="shot.png", mimetype="image/png", filetype="png", content=b"png")
    with pytest.raises(FileUnavailable, match="files:read") as caught:
        await env.slack("xoxb-not-the-bot").download_file(TEAM, file, max_bytes=100)
    assert "shot.png" in str(caught.value) and not caught.value.retryable
    assert env.fake.downloads[-1].authorized is False


async def test_too_big_is_refused(env: Env) -> None:
    content = b"x" * 2048
    file = env.fake.add_file("F4", name="clip.mp4", mimetype="video/mp4", filetype="mp4", content=content)
    with pytest.raises(FileTooLarge, match=re.escape("clip.mp4 is 2 KB; the limit for it is 1 KB")):
        await env.slack().download_file(TEAM, file, max_bytes=1024)
    # Exactly at the cap is fine.
    assert await env.slack().download_file(TEAM, file, max_bytes=2048) == content


async def test_missing_file_is_not_retryable(env: Env) -> None:
    file = env.fake.add_file("F5", name="gone.png", mimetype="image/png", filetype="png", content=b"png")
    ghost = {**file, "url_private_download": file["url_private_download"].replace("F5", "F404")}
    with pytest.raises(FileUnavailable, match="HTTP 404") as caught:
        await env.slack().download_file(TEAM, ghost, max_bytes=100)
    assert not caught.value.retryable
    with pytest.raises(FileUnavailable, match="file_not_found"):
        await env.slack().download_file(TEAM, {"id": "F404", "name": "x.png"}, max_bytes=100)


async def test_too_big_without_content_length_stops_while_streaming(
    env: Env, aiohttp_server: AiohttpServer
) -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        # Like a CDN answering with Transfer-Encoding: chunked: the size is only known by reading.
        assert request.headers["Authorization"] == f"Bearer {env.fake.bot_token}"
        response = web.StreamResponse(headers={"Content-Type": "video/mp4"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(64):
            await response.write(b"v" * 65536)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/files-pri/T0001-F6/download/long.mp4", chunked)
    server = await aiohttp_server(app)
    file = {
        "id": "F6",
        "name": "long.mp4",
        "url_private_download": str(server.make_url("/files-pri/T0001-F6/download/long.mp4")),
    }
    # This server stands in for Slack's file host, so it is the client's Slack API origin.
    slack = SlackApi(web_client(env.fake.bot_token, str(server.make_url("/api/")), env.session), env.session)
    with pytest.raises(FileTooLarge, match=re.escape("long.mp4 is over 1 MB, the limit for it")):
        await slack.download_file(TEAM, file, max_bytes=1024 * 1024)
    assert await slack.download_file(TEAM, file, max_bytes=4 * 1024 * 1024) == b"v" * 4 * 1024 * 1024


async def test_listed_size_over_the_cap_is_refused_before_any_download(env: Env) -> None:
    file = env.fake.add_file("F8", name="huge.mp4", mimetype="video/mp4", filetype="mp4", content=b"v" * 10)
    with pytest.raises(FileTooLarge, match=re.escape("huge.mp4 is 600 MB; the limit for it is 512 MB")):
        async with env.slack().open_file(
            TEAM, {**file, "size": 600 * 1024 * 1024}, max_bytes=512 * 1024 * 1024
        ):
            pass
    assert env.fake.downloads == []


async def test_open_file_streams_with_the_size_up_front(env: Env) -> None:
    content = os.urandom(1_500_000)
    file = env.fake.add_file("F9", name="clip.mp4", mimetype="video/mp4", filetype="mp4", content=content)
    async with env.slack().open_file(TEAM, file, max_bytes=2 * 1024 * 1024) as source:
        assert source.size == len(content)
        pieces = []
        while piece := await source.read(64 * 1024):
            assert len(piece) <= 64 * 1024
            pieces.append(piece)
    assert b"".join(pieces) == content


async def test_file_info_resolves_a_stub_and_says_why_not(env: Env) -> None:
    env.fake.add_file("F10", name="stub.png", mimetype="image/png", filetype="png", content=b"png")
    info = await env.slack().file_info(TEAM, "F10")
    assert info["name"] == "stub.png" and info["mimetype"] == "image/png" and info["size"] == 3
    with pytest.raises(FileUnavailable, match="file_not_found") as caught:
        await env.slack().file_info(TEAM, "F404")
    assert not caught.value.retryable


async def raw_server(answer: bytes) -> tuple[asyncio.Server, str]:
    """A server that answers every request with ``answer`` as is, then hangs up."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/"


async def test_a_download_cut_short_of_its_content_length_is_retryable(env: Env) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nContent-Length: 300000\r\n\r\n"
    server, origin = await raw_server(head + b"v" * 100_000)  # promised 300 kB, gave 100 kB
    file = {"id": "F11", "name": "cut.mp4", "url_private_download": origin + "files-pri/T0001-F11/cut.mp4"}
    # Slack's "API" is that server too, so the bridge will fetch files from it.
    slack = SlackApi(web_client(env.fake.bot_token, origin + "api/", env.session), env.session)
    async with server:
        with pytest.raises(FileUnavailable) as caught:
            async with slack.open_file(TEAM, file, max_bytes=1024 * 1024) as source:
                assert source.size == 300_000
                while await source.read(64 * 1024):
                    pass
    assert caught.value.retryable and "cut.mp4" in str(caught.value)
