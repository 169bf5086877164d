"""bridge.media: which Slack files go to X, under which category, and why others do not."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.media import (
    DM_GIF,
    DM_IMAGE,
    DM_VIDEO,
    MB,
    MediaPlan,
    SkippedFile,
    human_size,
    plan_files,
    plan_media,
)


def slack_file(
    name: str, mimetype: str, filetype: str, size: int | None = 1000, **extra: Any
) -> dict[str, Any]:
    file: dict[str, Any] = {
        "id": "F1",
        "name": name,
        "mimetype": mimetype,
        "filetype": filetype,
        "mode": "hosted",
    }
    if size is not None:
        file["size"] = size
    file.update(extra)
    return file


@pytest.mark.parametrize(
    ("name", "mimetype", "filetype", "media_type", "category"),
    [
        ("photo.jpg", "image/jpeg", "jpg", "image/jpeg", DM_IMAGE),
        ("shot.png", "image/png", "png", "image/png", DM_IMAGE),
        ("sticker.webp", "image/webp", "webp", "image/webp", DM_IMAGE),
        ("party.gif", "image/gif", "gif", "image/gif", DM_GIF),
        ("clip.mp4", "video/mp4", "mp4", "video/mp4", DM_VIDEO),
        ("take.mov", "video/quicktime", "mov", "video/quicktime", DM_VIDEO),
        # A generic mimetype falls back to Slack's filetype.
        ("odd.mov", "application/octet-stream", "mov", "video/quicktime", DM_VIDEO),
        ("odd.jpg", "", "jpg", "image/jpeg", DM_IMAGE),
    ],
)
def test_supported_files_get_a_category(
    name: str, mimetype: str, filetype: str, media_type: str, category: str
) -> None:
    plan = plan_media(slack_file(name, mimetype, filetype))
    assert plan == MediaPlan(file_id="F1", name=name, media_type=media_type, category=category, size=1000)
    assert plan.chunked is (category != DM_IMAGE)


@pytest.mark.parametrize(
    ("file", "reason"),
    [
        (
            slack_file("report.pdf", "application/pdf", "pdf"),
            "report.pdf: X DMs take images, GIFs and videos only",
        ),
        (
            slack_file("notes.txt", "text/plain", "text", mode="snippet"),
            "notes.txt: X DMs take images, GIFs and videos only",
        ),
        (slack_file("scan.tiff", "image/tiff", "tiff"), "scan.tiff: X DMs take images, GIFs and videos only"),
        (slack_file("clip.mp4", "video/mp4", "mp4", size=700 * MB), "clip.mp4 is 700 MB; X allows 512 MB"),
        (slack_file("big.png", "image/png", "png", size=5 * MB + 1), "big.png is 5.1 MB; X allows 5 MB"),
        (slack_file("huge.gif", "image/gif", "gif", size=20 * MB), "huge.gif is 20 MB; X allows 15 MB"),
        (
            slack_file("gone.png", "image/png", "png", mode="tombstone"),
            "gone.png: not sent to X because it was deleted",
        ),
        (
            slack_file("doc.png", "image/png", "png", mode="external", is_external=True),
            "doc.png: not sent to X because it is a link to a file stored outside Slack",
        ),
        (slack_file("zero.png", "image/png", "png", size=0), "zero.png is empty"),
    ],
)
def test_unsupported_or_oversized_files_are_skipped_with_a_reason(file: dict[str, Any], reason: str) -> None:
    outcome = plan_media(file)
    assert isinstance(outcome, SkippedFile)
    assert outcome.reason == reason and str(outcome) == reason and outcome.file_id == "F1"


def test_limits_are_inclusive_and_unknown_size_is_allowed() -> None:
    assert isinstance(plan_media(slack_file("a.png", "image/png", "png", size=5 * MB)), MediaPlan)
    assert isinstance(plan_media(slack_file("a.gif", "image/gif", "gif", size=15 * MB)), MediaPlan)
    assert isinstance(plan_media(slack_file("a.mp4", "video/mp4", "mp4", size=512 * MB)), MediaPlan)
    plan = plan_media(slack_file("a.mp4", "video/mp4", "mp4", size=None))
    assert isinstance(plan, MediaPlan) and plan.size is None and plan.max_bytes == 512 * MB


def test_plan_files_keeps_order_and_splits_skips() -> None:
    files = [
        slack_file("one.png", "image/png", "png", id="F1"),
        slack_file("report.pdf", "application/pdf", "pdf", id="F2"),
        slack_file("two.gif", "image/gif", "gif", id="F3"),
    ]
    plans, skipped = plan_files(files)
    assert [p.file_id for p in plans] == ["F1", "F3"]
    assert [s.file_id for s in skipped] == ["F2"]


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (700 * MB, "700 MB"),
        (512 * MB + 1, "513 MB"),
        (5 * MB, "5 MB"),
        (MB + MB // 2, "1.5 MB"),
        (2048, "2 KB"),
    ],
)
def test_human_size_rounds_up(size: int, text: str) -> None:
    assert human_size(size) == text
