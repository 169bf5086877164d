"""What X reads is what the Slack author meant: text, long messages, threads, edits, deletes, files."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.harness import linked, note, running_bridge

PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
    b"\x00\x00\x00\rIDATx\x9cc\xf8\xcf\xc0\xf0\x1f\x00\x05\x00\x01\xff\x89\x99=\x1d\x00\x00\x00\x00IEND\xaeB`\x82"
)
GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,"
    b"\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)


async def test_slack_markup_reads_naturally_on_x(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        text = "Hi <@U200> see <#C100|support> and <https://example.com|the docs> <!here> :tada: a &lt;b&gt;"
        _, ts = await bridge.post(text, blocks=[])
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        assert bridge.texts() == [
            "Ada: Hi @Grace Hopper see #support and the docs (https://example.com) @here 🎉 a <b>"
        ]


async def test_long_message_split_into_numbered_parts_all_mapped(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        paragraph = "This sentence is part of a long support answer. " * 60
        text = "\n\n".join(f"{i}: {paragraph.strip()}" for i in range(8))
        assert len(text) > 20_000
        _, ts = await bridge.post(text, blocks=[])
        await bridge.wait_reaction("C100", ts, "white_check_mark", timeout=15.0)
        texts = bridge.texts()
        assert len(texts) >= 3 and all(len(t) <= 10_000 for t in texts)
        assert all(t.startswith("Ada: ") for t in texts)
        rows = await bridge.sql(
            "SELECT part, dm_event_id FROM message_map WHERE slack_ts = ? ORDER BY part", ts
        )
        assert [r[1] for r in rows] == [e.id for e in bridge.x.events]


async def test_thread_reply_quotes_its_parent(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        _, parent = await bridge.post("Is the outage over?", blocks=[])
        _, reply = await bridge.post("Yes, since noon", thread_ts=parent, blocks=[])
        await bridge.wait_reaction("C100", reply, "white_check_mark")
        quoted = bridge.texts()[1]
        assert "Is the outage over?" in quoted and quoted.endswith("Yes, since noon")


async def test_thread_replies_not_relayed_when_policy_is_none(tmp_path: Path) -> None:
    async with running_bridge(tmp_path, env={"RELAY_THREADS": "none"}) as bridge:
        await linked(bridge)
        _, parent = await bridge.post("top level", blocks=[])
        await bridge.post("in the thread", thread_ts=parent, blocks=[])
        _, after = await bridge.post("next top level", blocks=[])
        await bridge.wait_reaction("C100", after, "white_check_mark")
        assert bridge.texts() == ["Ada: top level", "Ada: next top level"]


async def test_edit_sends_correction_but_unfurl_does_not(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        _, ts = await bridge.post("the meeting is at 3", blocks=[])
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        edit_ts = bridge.sender.new_ts()
        changed = {
            "type": "message",
            "subtype": "message_changed",
            "channel": "C100",
            "hidden": True,
            "ts": edit_ts,
            "event_ts": edit_ts,
            "message": {"type": "message", "user": "U100", "text": "the meeting is at 4", "ts": ts},
            "previous_message": {"type": "message", "user": "U100", "text": "the meeting is at 3", "ts": ts},
        }
        assert (await bridge.sender.event(changed)).status == 200
        await bridge.wait_dms(2)
        assert bridge.texts()[1] == "Ada (edited): the meeting is at 4"
        unfurl_ts = bridge.sender.new_ts()
        unfurl = {
            **changed,
            "ts": unfurl_ts,
            "event_ts": unfurl_ts,
            "message": {**changed["message"], "text": "the meeting is at 4", "attachments": [{"id": 1}]},  # type: ignore[dict-item]
            "previous_message": {**changed["message"], "text": "the meeting is at 4"},  # type: ignore[dict-item]
        }
        assert (await bridge.sender.event(unfurl)).status == 200
        await asyncio.sleep(0.4)
        assert len(bridge.x.events) == 2


async def test_delete_removes_relayed_parts_and_explains(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        _, ts = await bridge.post("oops, wrong channel", blocks=[])
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        deleted = {
            "type": "message",
            "subtype": "message_deleted",
            "channel": "C100",
            "hidden": True,
            "deleted_ts": ts,
            "ts": bridge.sender.new_ts(),
            "previous_message": {"type": "message", "user": "U100", "text": "oops, wrong channel", "ts": ts},
        }
        assert (await bridge.sender.event(deleted)).status == 200
        [ephemeral] = await bridge.slack.wait_for(note)
        assert "only from the sending account's view" in ephemeral.params["text"]
        deletes = [r for r in bridge.x.all_requests if r.method == "DELETE"]
        assert [r.path for r in deletes] == [f"/2/dm_events/{bridge.x.events[0].id}"]
        assert bridge.x.events[0].deleted


async def test_image_goes_with_text_and_further_files_as_own_dms(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        bridge.x.media_check_after_secs = 0
        photo = bridge.slack.add_file(
            "F1", name="photo.png", mimetype="image/png", filetype="png", content=PNG
        )
        anim = bridge.slack.add_file("F2", name="wave.gif", mimetype="image/gif", filetype="gif", content=GIF)
        _, ts = await bridge.post("two files", files=[photo, anim], blocks=[])
        await bridge.wait_reaction("C100", ts, "white_check_mark", timeout=15.0)
        first, second = bridge.x.events
        assert first.text == "Ada: two files" and len(first.media_ids) == 1
        assert not second.text and len(second.media_ids) == 1
        categories = sorted(m.category for m in bridge.x.media.values())
        assert categories == ["dm_gif", "dm_image"]
        chunked = [r.path for r in bridge.x.all_requests if "/media/upload/" in r.path]
        assert any(p.endswith("/finalize") for p in chunked)  # the GIF went through the chunked path


async def test_unsupported_file_is_reported_and_text_still_goes(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        pdf = bridge.slack.add_file(
            "F3", name="report.pdf", mimetype="application/pdf", filetype="pdf", content=b"%PDF-1.4"
        )
        _, ts = await bridge.post("see attached", files=[pdf], blocks=[])
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        assert bridge.texts() == ["Ada: see attached"]
        [ephemeral] = await bridge.slack.wait_for(note)
        assert (
            "report.pdf" in ephemeral.params["text"] and "images, GIFs and videos" in ephemeral.params["text"]
        )

        _, only_pdf = await bridge.post("", files=[pdf], blocks=[])
        await bridge.wait_reaction("C100", only_pdf, "warning")
        assert len(bridge.x.events) == 1
