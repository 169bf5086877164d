"""Files on their way to X: ids that expire, stubs to resolve, refusals that must not cost the text."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from aiohttp import web

from adapters.sandbox.fake_x import FakeX
from bridge.scheduler import SystemClock
from tests.harness import Bridge, linked, running_bridge, wait_until
from tests.integration.test_fidelity import GIF, PNG


class ShiftedClock(SystemClock):
    """Real time plus a shift the test moves forward; shared by the bridge and fake X."""

    def __init__(self) -> None:
        self.shift = 0.0

    def now(self) -> float:
        return time.time() + self.shift

    def __call__(self) -> float:
        return self.now()


def uploads(bridge: Bridge) -> list[str]:
    return [r.path for r in bridge.x.all_requests if r.method == "POST" and r.path == "/2/media/upload"]


async def outbox_errors(bridge: Bridge) -> list[tuple[Any, ...]]:
    return await bridge.sql("SELECT state, last_error FROM outbox ORDER BY id")


async def held_past_a_day(bridge: Bridge, clock: ShiftedClock) -> list[int]:
    """The first send of a photo fails (503) after its upload; then a day goes by.

    Returns the statuses X gave the DM POSTs (401s left out: X's access token aged too)."""
    statuses: list[int] = []
    bridge.x.inject("503")
    photo = bridge.slack.add_file("F1", name="photo.png", mimetype="image/png", filetype="png", content=PNG)

    def after_503(request: web.Request, response: web.StreamResponse) -> None:
        if request.method == "POST" and request.path.endswith("/messages"):
            statuses.append(response.status)
            if response.status == 503:
                clock.shift += 25 * 3600  # held a day, for a rate limit say: X's id is gone

    bridge.x.response_hook = after_503
    _, ts = await bridge.post("the photo", files=[photo], blocks=[])
    await bridge.wait_reaction("C100", ts, "white_check_mark", timeout=15.0)
    [event] = bridge.x.events
    assert event.text == "Ada: the photo" and len(event.media_ids) == 1
    assert len(uploads(bridge)) == 2 and event.media_ids[0] == bridge.x.media[event.media_ids[0]].id
    first_upload = min(bridge.x.media)
    assert event.media_ids[0] != first_upload  # the expired id was not attached
    return [s for s in statuses if s != 401]


async def test_media_id_older_than_xs_lifetime_is_uploaded_again(tmp_path: Path) -> None:
    clock = ShiftedClock()
    async with running_bridge(tmp_path, fake_x=FakeX(clock=clock), clock=clock) as bridge:
        await linked(bridge)
        assert await held_past_a_day(bridge, clock) == [503, 201]  # no 400 on the way


async def test_media_id_x_no_longer_knows_is_uploaded_again(tmp_path: Path) -> None:
    clock = ShiftedClock()  # only X's clock moves: the bridge believes its id is fresh
    async with running_bridge(tmp_path, fake_x=FakeX(clock=clock)) as bridge:
        await linked(bridge)
        assert await held_past_a_day(bridge, clock) == [503, 400, 201]
        assert await outbox_errors(bridge) == [("sent", None)]


async def test_file_shared_as_a_stub_is_resolved_through_files_info(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        bridge.slack.add_file("F7", name="stub.png", mimetype="image/png", filetype="png", content=PNG)
        stub = {"id": "F7", "file_access": "check_file_info", "created": int(time.time()), "user": "U100"}
        _, ts = await bridge.post("a stub", files=[stub], blocks=[])
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        [event] = bridge.x.events
        assert event.text == "Ada: a stub" and len(event.media_ids) == 1
        assert bridge.x.media[event.media_ids[0]].data == PNG
        assert any(c.method == "files.info" for c in bridge.slack.calls)
        assert bridge.notes() == []


async def test_file_x_refuses_for_good_does_not_cost_the_text(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        bridge.x.media_check_after_secs = 0
        bridge.x.media_processing_fails = True  # X cannot process the GIFs
        anim = bridge.slack.add_file("F2", name="wave.gif", mimetype="image/gif", filetype="gif", content=GIF)
        more = bridge.slack.add_file("F3", name="more.gif", mimetype="image/gif", filetype="gif", content=GIF)
        _, ts = await bridge.post("the words matter", files=[anim, more], blocks=[])
        await wait_until(lambda: len(bridge.notes()) >= 2, 10.0, "both files reported")
        await bridge.wait_reaction("C100", ts, "warning")
        assert bridge.texts() == ["Ada: the words matter"] and bridge.x.events[0].media_ids == ()
        notes = [e["text"] for e in bridge.notes("U100")]
        assert "wave.gif" in notes[0] and "goes without it" in notes[0]
        assert "more.gif" in notes[1] and "X could not process the GIF" in notes[1]
        assert [state for state, _ in await outbox_errors(bridge)] == ["sent", "failed"]


async def test_a_file_slack_will_not_give_costs_only_itself(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        photo = bridge.slack.add_file(
            "F1", name="gone.png", mimetype="image/png", filetype="png", content=PNG
        )
        deleted = {**photo, "url_private_download": photo["url_private_download"].replace("F1", "F404")}
        ghost = {"id": "F405", "file_access": "check_file_info"}  # files.info: file_not_found
        _, ts = await bridge.post("still worth reading", files=[deleted, ghost], blocks=[])
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        await wait_until(lambda: len(bridge.notes()) == 2, 10.0, "both files reported")
        assert bridge.texts() == ["Ada: still worth reading"] and bridge.x.media == {}
        notes = " ".join(e["text"] for e in bridge.notes("U100"))
        assert "F405" in notes and "file_not_found" in notes
        assert "gone.png" in notes and "HTTP 404" in notes
