"""XApiClient media upload, send with an attachment and delete, against the fake X over loopback."""

from __future__ import annotations

import asyncio
import os
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web

from adapters.sandbox.fake_x import FakeX, one_to_one_id, run_fake_x
from adapters.x.api import XApiClient
from bridge.errors import XAuthExpired, XMediaUnavailable, XRefused, XTransient
from bridge.media import MB, MediaPlan, SkippedFile, plan_media
from bridge.model import Target

ME, BOB, CAROL = "1000", "2002", "2003"


def png(width: int = 3, height: int = 2) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def gif(size: int) -> bytes:
    head = b"GIF89a" + struct.pack("<HH", 4, 4)
    return head + os.urandom(size - len(head))


@dataclass
class Env:
    fake: FakeX
    x: XApiClient
    token: str
    session: aiohttp.ClientSession
    base_url: str

    def client(self, **kwargs: float | int) -> XApiClient:
        return XApiClient(self.session, self.base_url, **kwargs)  # type: ignore[arg-type]

    def requests(self, method: str, path_part: str) -> list[str]:
        return [r.path for r in self.fake.all_requests if r.method == method and path_part in r.path]


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    async with run_fake_x() as (fake, base_url), aiohttp.ClientSession() as session:
        fake.add_user(ME, "me")
        fake.add_user(BOB, "bob")
        fake.add_user(CAROL, "carol")
        fake.media_check_after_secs = 0
        token = fake.issue_token(ME).access_token
        yield Env(fake, XApiClient(session, base_url), token, session, base_url)
        assert fake.violations == []


async def test_image_is_one_multipart_upload(env: Env) -> None:
    data = png()
    media_id = await env.x.upload_media(env.token, data, media_type="image/png", category="dm_image")
    upload = env.fake.media[media_id]
    assert upload.data == data and upload.category == "dm_image" and upload.owner_id == ME and upload.ready
    assert env.requests("POST", "/2/media/upload") == ["/2/media/upload"]
    recorded = env.fake.all_requests[-1]
    assert recorded.headers["content-type"].startswith("multipart/form-data")
    assert recorded.form is not None and recorded.form["media_category"] == "dm_image"


async def test_gif_is_chunked_and_waits_for_processing(env: Env) -> None:
    env.fake.media_processing_polls = 2
    data = gif(10_000)
    x = env.client(chunk_bytes=4096)
    media_id = await x.upload_media(env.token, data, media_type="image/gif", category="dm_gif")
    upload = env.fake.media[media_id]
    assert upload.data == data and upload.category == "dm_gif" and upload.state == "succeeded"
    assert upload.status_polls == 3  # in_progress, in_progress, succeeded
    init = next(r for r in env.fake.all_requests if r.path.endswith("/initialize"))
    assert init.json == {"media_type": "image/gif", "total_bytes": 10_000, "media_category": "dm_gif"}
    appends = [r for r in env.fake.all_requests if r.path.endswith("/append")]
    assert [a.form["segment_index"] for a in appends if a.form] == ["0", "1", "2"]
    assert len(env.requests("POST", "/finalize")) == 1
    statuses = [r.query for r in env.fake.all_requests if r.method == "GET"]
    assert statuses == [{"media_id": media_id, "command": "STATUS"}] * 3


async def test_video_goes_in_chunks_of_at_most_4_mb(env: Env) -> None:
    data = os.urandom(9 * MB)
    media_id = await env.x.upload_media(env.token, data, media_type="video/mp4", category="dm_video")
    assert env.fake.media[media_id].data == data and env.fake.media[media_id].ready
    appends = [r for r in env.fake.all_requests if r.path.endswith("/append")]
    assert len(appends) == 3  # 4 MB + 4 MB + 1 MB; X refuses chunks over 5 MB


async def test_failed_processing_is_refused_with_reason(env: Env) -> None:
    env.fake.media_processing_fails = True
    with pytest.raises(XRefused, match="X could not process the video"):
        await env.x.upload_media(env.token, os.urandom(2048), media_type="video/mp4", category="dm_video")


async def test_processing_that_outlasts_the_timeout_is_transient(env: Env) -> None:
    env.fake.media_processing_polls = 1000
    env.fake.media_check_after_secs = 1
    x = env.client(media_timeout=0.3)
    with pytest.raises(XTransient, match="had not finished processing"):
        await x.upload_media(env.token, gif(512), media_type="image/gif", category="dm_gif")
    assert len(env.requests("GET", "/2/media/upload")) == 1


async def test_oversized_files_are_refused_by_plan_and_by_x(env: Env) -> None:
    file = {"id": "F9", "name": "big.png", "mimetype": "image/png", "filetype": "png", "size": 6 * MB}
    skipped = plan_media(file)
    assert isinstance(skipped, SkippedFile) and skipped.reason == "big.png is 6 MB; X allows 5 MB"
    # Should Slack's size be wrong, X's own limit still stops it, as a permanent refusal.
    with pytest.raises(XRefused, match="HTTP 400"):
        await env.x.upload_media(
            env.token, b"\x89PNG" + bytes(6 * MB), media_type="image/png", category="dm_image"
        )
    assert env.fake.media == {}


async def test_upload_errors_map_to_the_xerror_family(env: Env) -> None:
    env.fake.inject("401", path_contains="/2/media/upload")
    with pytest.raises(XAuthExpired):
        await env.x.upload_media(env.token, png(), media_type="image/png", category="dm_image")
    env.fake.inject("503", path_contains="/append")
    with pytest.raises(XTransient):
        await env.x.upload_media(env.token, gif(100), media_type="image/gif", category="dm_gif")


async def test_send_with_media_id_reaches_x(env: Env) -> None:
    plan = plan_media({"id": "F1", "name": "a.png", "mimetype": "image/png", "filetype": "png", "size": 100})
    assert isinstance(plan, MediaPlan)
    media_id = await env.x.upload_media(env.token, png(), media_type=plan.media_type, category=plan.category)
    sent, _ = await env.x.send(env.token, Target(participant_id=BOB), "look", media_id=media_id)
    event = env.fake.events[-1]
    assert event.id == sent.dm_event_id and event.media_ids == (media_id,) and event.text == "look"
    assert env.fake.all_requests[-1].json == {"text": "look", "attachments": [{"media_id": media_id}]}

    # Empty text is left out: the attachment alone is the DM (here to a conversation id).
    other = await env.x.upload_media(env.token, png(), media_type="image/png", category="dm_image")
    target = Target(conversation_id=one_to_one_id(ME, BOB))
    await env.x.send(env.token, target, "", media_id=other)
    assert env.fake.events[-1].media_ids == (other,) and env.fake.events[-1].text is None
    assert env.fake.all_requests[-1].json == {"attachments": [{"media_id": other}]}


async def test_send_without_media_is_unchanged(env: Env) -> None:
    await env.x.send(env.token, Target(participant_id=BOB), "plain")
    assert env.fake.all_requests[-1].json == {"text": "plain"} and env.fake.events[-1].media_ids == ()
    with pytest.raises(ValueError, match="text or a media_id"):
        await env.x.send(env.token, Target(participant_id=BOB), "")


async def test_delete_event(env: Env) -> None:
    sent, _ = await env.x.send(env.token, Target(participant_id=BOB), "oops")
    assert sent.dm_event_id is not None
    await env.x.delete_event(env.token, sent.dm_event_id)
    assert env.fake.events[-1].deleted
    # Deleting again, or an id X never had, is quiet.
    await env.x.delete_event(env.token, sent.dm_event_id)
    await env.x.delete_event(env.token, "1234567890")
    assert [r.method for r in env.fake.all_requests[-3:]] == ["DELETE"] * 3


async def test_delete_of_someone_elses_event_is_refused(env: Env) -> None:
    bob = env.fake.issue_token(BOB).access_token
    sent, _ = await env.x.send(bob, Target(participant_id=ME), "from bob")
    assert sent.dm_event_id is not None
    with pytest.raises(XRefused, match="HTTP 403"):
        await env.x.delete_event(env.token, sent.dm_event_id)
    assert not env.fake.events[-1].deleted


class CountingSource:
    """A MediaSource that records how much was asked of it at once, like a Slack stream."""

    def __init__(self, data: bytes, piece: int = 100_000) -> None:
        self.data = data
        self.at = 0
        self.piece = piece  # a network stream hands out less than asked
        self.largest_ask = 0

    @property
    def size(self) -> int:
        return len(self.data)

    async def read(self, n: int) -> bytes:
        self.largest_ask = max(self.largest_ask, n)
        piece = self.data[self.at : self.at + min(n, self.piece)]
        self.at += len(piece)
        return piece


async def test_chunked_upload_reads_the_source_a_chunk_at_a_time(env: Env) -> None:
    data = os.urandom(3 * MB + 17)
    source = CountingSource(data)
    x = env.client(chunk_bytes=MB)
    media_id = await x.upload_media(env.token, source, media_type="video/mp4", category="dm_video")
    assert env.fake.media[media_id].data == data
    assert source.largest_ask <= MB  # never more than one chunk asked of the stream
    init = next(r for r in env.fake.all_requests if r.path.endswith("/initialize"))
    assert init.json is not None and init.json["total_bytes"] == len(data)  # size told before any byte
    assert len(env.requests("POST", "/append")) == 4


async def test_a_source_shorter_than_announced_is_not_finalized(env: Env) -> None:
    class Short(CountingSource):
        @property
        def size(self) -> int:
            return len(self.data) + 10

    with pytest.raises(XTransient, match="bytes of the"):
        await env.x.upload_media(env.token, Short(gif(5000)), media_type="image/gif", category="dm_gif")
    assert env.requests("POST", "/finalize") == []


async def test_an_expired_media_id_is_told_apart_from_other_refusals(env: Env) -> None:
    media_id = await env.x.upload_media(env.token, png(), media_type="image/png", category="dm_image")
    env.fake.media[media_id].created_at -= 25 * 3600  # X keeps media 24 h
    with pytest.raises(XMediaUnavailable, match="attachment"):
        await env.x.send(env.token, Target(participant_id=BOB), "late", media_id=media_id)
    env.fake.max_text_length = 3
    fresh = await env.x.upload_media(env.token, png(), media_type="image/png", category="dm_image")
    with pytest.raises(XRefused) as caught:
        await env.x.send(env.token, Target(participant_id=BOB), "too long", media_id=fresh)
    assert not isinstance(caught.value, XMediaUnavailable)
    assert env.fake.events == []


def answer_check_after(env: Env, raw: bytes) -> None:
    """X's processing answers say ``check_after_secs: <raw>`` (after the spec check saw 0)."""

    def hook(request: web.Request, response: web.StreamResponse) -> None:
        if isinstance(response, web.Response) and isinstance(response.body, bytes):
            response.body = response.body.replace(b'"check_after_secs": 0', b'"check_after_secs": ' + raw)

    env.fake.response_hook = hook


async def test_a_check_after_that_is_not_a_number_does_not_hang_the_upload(env: Env) -> None:
    env.fake.media_processing_polls = 2
    answer_check_after(env, b"NaN")  # Python's json reads it; sleeping on it would never end
    upload = env.x.upload_media(env.token, gif(512), media_type="image/gif", category="dm_gif")
    assert await asyncio.wait_for(upload, timeout=60.0)
    assert len(env.requests("GET", "/2/media/upload")) == 3


async def test_x_saying_check_again_now_forever_is_polled_with_growing_pauses(env: Env) -> None:
    env.fake.media_processing_polls = 1_000_000  # never done, and always "check after 0 s"
    x = env.client(media_timeout=3.0)
    with pytest.raises(XTransient, match="had not finished processing"):
        await x.upload_media(env.token, gif(512), media_type="image/gif", category="dm_gif")
    assert len(env.requests("GET", "/2/media/upload")) <= 12  # not hundreds in a hot loop
