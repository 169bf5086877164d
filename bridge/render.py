"""A Slack message turned into the DMs X will get: its text in X's words (mentions named, a
thread's parent quoted, the author's name in front), cut into parts, then one DM per file.

Split from ``Delivery``: both senders (legacy DMs and X Chat) render a row the same way before
its first attempt.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from bridge import translate
from bridge.errors import Failure, Undeliverable
from bridge.feedback import ids
from bridge.media import FileUnavailable, MediaPlan, SkippedFile, file_name, plan_files
from bridge.model import OutboxItem, OutboxKind, RenderedPart
from bridge.outcomes import Outcomes
from bridge.ports import RelayedEvents, SlackClient

log = logging.getLogger(__name__)

MENTION_LOOKUPS = 50  # users.info calls one message may cost for its mentions
UNNAMED_USER = "someone"  # a mention beyond that bound, with no label of its own


class RenderStore(RelayedEvents, Protocol):
    """What rendering reads of the store: a thread's parent (a part of ``bridge.ports.Store``)."""


class Renderer:
    """Renders outbox rows; a row that cannot become DMs is failed with its reason."""

    def __init__(self, store: RenderStore, slack: SlackClient, outcomes: Outcomes, relay_format: str) -> None:
        self._store = store
        self._slack = slack
        self._outcomes = outcomes
        self._relay_format = relay_format

    async def render(self, item: OutboxItem) -> list[RenderedPart] | None:
        """Turn the Slack message into the DMs X will get: text parts, then one DM per file.

        None when there is nothing X can take, or the stored message cannot be turned into
        DMs at all (the row is failed and the author told: the same input would fail again).
        """
        try:
            text, blocks, thread_ts, stubs = _source_fields(item.source)
            # Each mentioned user once, and only so many: a message naming thousands of people
            # must not become thousands of users.info calls (the rest read "@someone").
            mentioned = sorted(translate.mentioned_user_ids(text, blocks))[:MENTION_LOOKUPS]
        except Exception as exc:
            await self._unrenderable(item, exc)
            return None
        names = {uid: await self._slack.display_name(item.team_id, uid) for uid in mentioned}
        quoting = thread_ts is not None and thread_ts != item.ref_ts and item.kind is OutboxKind.MESSAGE
        parent = None
        if quoting and thread_ts is not None:
            parent = await self._store.message_text(item.team_id, item.channel_id, thread_ts)
        name = await self._slack.display_name(item.team_id, item.author_id)
        if item.kind is OutboxKind.EDIT and not item.encrypted:  # X Chat shows its own edits
            name = f"{name} (edited)"
        files, unresolved = await self._resolve_files(item, stubs)
        try:
            body = translate.to_plain(text, blocks, user_names=names, unnamed_user=UNNAMED_USER)
            if quoting:
                quote = translate.quote_parent(translate.to_plain(parent) if parent else "a thread")
                body = f"{quote}\n{body}" if body.strip() else quote
            plans, skipped = plan_files(files)
            skipped += unresolved
            parts = self._parts(body, name, plans, files)
        except Exception as exc:
            await self._unrenderable(item, exc)
            return None
        if skipped:
            listed = "\n".join(f"• {s.reason}" for s in skipped)
            await self._outcomes.ephemeral(item, f":warning: Not every file went to X:\n{listed}")
        if not parts:
            if skipped:
                error = Undeliverable("; ".join(s.reason for s in skipped), Failure.FILE_UNUSABLE)
            else:
                error = Undeliverable("the message has no text or file to send", Failure.EMPTY_MESSAGE)
            await self._outcomes.fail(item, error)
            return None
        return parts

    async def _unrenderable(self, item: OutboxItem, exc: Exception) -> None:
        log.error("outbox row cannot be rendered", extra=ids(item), exc_info=exc)
        reason = f"the bridge could not turn it into a DM ({type(exc).__name__}: {exc})"
        await self._outcomes.fail(item, Undeliverable(reason, Failure.OTHER))

    async def _resolve_files(
        self, item: OutboxItem, files: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[SkippedFile]]:
        """Files an event carried only as stubs (``file_access: check_file_info``), completed
        through files.info; a file Slack will not describe is skipped with Slack's reason."""
        resolved: list[dict[str, Any]] = []
        skipped: list[SkippedFile] = []
        for file in files:
            if file.get("file_access") != "check_file_info" or not file.get("id"):
                resolved.append(file)
                continue
            try:
                info = await self._slack.file_info(item.team_id, str(file["id"]))
            except FileUnavailable as exc:
                if exc.retryable:
                    raise  # nothing is sent yet: the whole message waits and renders again
                skipped.append(SkippedFile(str(file["id"]), file_name(file), f"{file_name(file)}: {exc}"))
                continue
            resolved.append({**file, **info, "file_access": "visible"})
        return resolved, skipped

    def _parts(
        self, body: str, name: str, plans: list[MediaPlan], files: list[dict[str, Any]]
    ) -> list[RenderedPart]:
        """Text parts first; X takes one file per DM, so the first file rides with the
        first part and each further file is a DM of its own."""
        fmt = self._relay_format
        texts = translate.render_parts(body, name=name, fmt=fmt) if body.strip() else []
        if plans and not texts:
            texts = translate.render_parts(f"[{plans[0].name}]", name=name, fmt=fmt)
        by_id = {str(f.get("id") or ""): f for f in files}
        parts = [RenderedPart(t) for t in texts]
        for index, plan in enumerate(plans):
            file = by_id.get(plan.file_id, {})
            if index == 0 and parts:
                parts[0] = RenderedPart(parts[0].text, file)
            else:
                parts.append(RenderedPart("", file))
        return parts


def _source_fields(source: Any) -> tuple[str, list[Any] | None, str | None, list[dict[str, Any]]]:
    """Text, blocks, thread_ts and files of a stored Slack message; raises if it is not one."""
    if not isinstance(source, dict):
        raise TypeError(f"the stored message is a {type(source).__name__}, not an object")
    blocks = source.get("blocks") or None
    if blocks is not None and not isinstance(blocks, list):
        raise TypeError("the stored blocks are not a list")
    thread_ts = source.get("thread_ts")
    files = [f for f in source.get("files") or [] if isinstance(f, dict)]
    return str(source.get("text") or ""), blocks, str(thread_ts) if thread_ts else None, files
