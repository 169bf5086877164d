"""Which Slack files can travel to X as DM media, and how (X NOTES §6).

Pure decisions, no I/O: :func:`plan_media` turns one Slack ``files[]`` element into
either a :class:`MediaPlan` (upload it under this category) or a :class:`SkippedFile`
whose ``reason`` is written for the Slack author. Failures while fetching a file
from Slack are :class:`FileUnavailable`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bridge.errors import BridgeError, Failure

MB = 1024 * 1024
#: X keeps an uploaded media id for 24 h (NOTES §6); one older than this is uploaded again.
MEDIA_REUSE_SECONDS = 23 * 3600.0
#: Uploads of one row begun and never finished (the process died) before its file is given up.
MAX_UNFINISHED_UPLOADS = 2

DM_IMAGE = "dm_image"
DM_GIF = "dm_gif"
DM_VIDEO = "dm_video"

#: X's size limits per DM media category (NOTES §6.2).
SIZE_LIMITS: dict[str, int] = {DM_IMAGE: 5 * MB, DM_GIF: 15 * MB, DM_VIDEO: 512 * MB}

# Slack mimetype -> (X media_type, category). X's media_type enum is in the spec's
# InitializeMediaUploadRequest; "image/jpg" is a non-standard spelling some clients send.
_BY_MIMETYPE: dict[str, tuple[str, str]] = {
    "image/jpeg": ("image/jpeg", DM_IMAGE),
    "image/jpg": ("image/jpeg", DM_IMAGE),
    "image/pjpeg": ("image/jpeg", DM_IMAGE),
    "image/png": ("image/png", DM_IMAGE),
    "image/webp": ("image/webp", DM_IMAGE),
    "image/gif": ("image/gif", DM_GIF),
    "video/mp4": ("video/mp4", DM_VIDEO),
    "video/quicktime": ("video/quicktime", DM_VIDEO),
}

# Slack filetype (used when the mimetype is missing or generic) -> Slack mimetype.
_BY_FILETYPE: dict[str, str] = {
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "gif": "image/gif",
    "mp4": "video/mp4",
    "mov": "video/quicktime",
    "quicktime": "video/quicktime",
}

# Slack file modes that never carry downloadable bytes, in words for the author.
_UNUSABLE_MODES: dict[str, str] = {
    "external": "it is a link to a file stored outside Slack",
    "tombstone": "it was deleted",
    "hidden_by_limit": "it is hidden by the workspace's plan limits",
}


class FileUnavailable(BridgeError):
    """A Slack file could not be fetched; ``str(err)`` explains it to the author.

    ``retryable`` is True for failures worth trying again later (no answer, a 5xx),
    False when trying again cannot help until someone changes something.
    """

    failure = Failure.FILE_UNUSABLE

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class FileTooLarge(FileUnavailable):
    """The download was bigger than the cap it was given (the listed size was wrong or absent)."""


class MediaSource(Protocol):
    """A file's bytes as a stream: ``size`` known up front (X's upload needs it first),
    read in pieces so no more than a piece is ever held in memory."""

    @property
    def size(self) -> int: ...

    async def read(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer only at the end); ``b""`` once everything was read."""
        ...


class BytesSource:
    """A :class:`MediaSource` over bytes already in memory (small files, tests)."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._at = 0

    @property
    def size(self) -> int:
        return len(self._data)

    async def read(self, n: int) -> bytes:
        piece = self._data[self._at : self._at + n]
        self._at += len(piece)
        return bytes(piece)


async def read_exactly(source: MediaSource, n: int) -> bytes:
    """``n`` bytes from ``source`` (fewer only at its end), however it splits them."""
    pieces: list[bytes] = []
    wanted = n
    while wanted > 0:
        piece = await source.read(wanted)
        if not piece:
            break
        pieces.append(piece)
        wanted -= len(piece)
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


@dataclass(frozen=True)
class MediaPlan:
    """Send this Slack file to X: upload ``size`` bytes as ``media_type`` under ``category``."""

    file_id: str
    name: str
    media_type: str
    category: str
    size: int | None
    """Slack's listed size, or None when Slack did not say."""

    @property
    def max_bytes(self) -> int:
        """The cap to download with: X's limit for the category."""
        return SIZE_LIMITS[self.category]

    @property
    def chunked(self) -> bool:
        """GIF and video go through initialize/append/finalize; images are one request."""
        return self.category != DM_IMAGE


@dataclass(frozen=True)
class SkippedFile:
    """A Slack file that will not be sent; ``reason`` is one sentence for the author."""

    file_id: str
    name: str
    reason: str

    def __str__(self) -> str:
        return self.reason


def human_size(size: int) -> str:
    """``734003200`` -> ``"700 MB"``; rounds up, so a file just over a limit never reads as equal."""
    if size < MB:
        return f"{math.ceil(size / 1024)} KB"
    megabytes = size / MB
    if megabytes >= 10:
        return f"{math.ceil(megabytes)} MB"
    tenths = math.ceil(megabytes * 10) / 10
    return f"{tenths:g} MB"


def file_name(file: Mapping[str, Any]) -> str:
    """The name to show the author for a Slack file."""
    return str(file.get("name") or file.get("title") or file.get("id") or "file")


def _kind(file: Mapping[str, Any]) -> tuple[str, str] | None:
    mimetype = str(file.get("mimetype") or "").split(";")[0].strip().lower()
    found = _BY_MIMETYPE.get(mimetype)
    if found is None and mimetype in ("", "application/octet-stream", "binary"):
        fallback = _BY_FILETYPE.get(str(file.get("filetype") or "").lower())
        found = _BY_MIMETYPE.get(fallback) if fallback else None
    return found


def plan_media(file: Mapping[str, Any]) -> MediaPlan | SkippedFile:
    """Decide how one Slack ``files[]`` element goes to X, or why it does not."""
    file_id = str(file.get("id") or "")
    name = file_name(file)
    mode = str(file.get("mode") or "hosted")
    if mode in _UNUSABLE_MODES or file.get("is_external") is True:
        why = _UNUSABLE_MODES.get(mode, _UNUSABLE_MODES["external"])
        return SkippedFile(file_id, name, f"{name}: not sent to X because {why}")
    kind = _kind(file)
    if kind is None:
        return SkippedFile(file_id, name, f"{name}: X DMs take images, GIFs and videos only")
    media_type, category = kind
    raw_size = file.get("size")
    size = raw_size if isinstance(raw_size, int) and not isinstance(raw_size, bool) else None
    limit = SIZE_LIMITS[category]
    if size is not None and size > limit:
        return SkippedFile(file_id, name, f"{name} is {human_size(size)}; X allows {human_size(limit)}")
    if size == 0:
        return SkippedFile(file_id, name, f"{name} is empty")
    return MediaPlan(file_id=file_id, name=name, media_type=media_type, category=category, size=size)


def plan_files(files: Sequence[Mapping[str, Any]]) -> tuple[list[MediaPlan], list[SkippedFile]]:
    """Split a message's files into those to send (in order) and those skipped."""
    plans: list[MediaPlan] = []
    skipped: list[SkippedFile] = []
    for file in files:
        outcome = plan_media(file)
        if isinstance(outcome, MediaPlan):
            plans.append(outcome)
        else:
            skipped.append(outcome)
    return plans, skipped
