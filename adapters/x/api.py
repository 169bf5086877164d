"""The ``XClient`` port over aiohttp: X API v2, user context.

Requests follow X's OpenAPI spec (v2.167). Responses are turned into the core's
terms here: rate-limit headers into ``RateFacts``, failures into the ``XError``
family, so nothing above this module sees HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from bridge.budget import MAX_COUNT, MAX_RESET_AHEAD
from bridge.errors import (
    Failure,
    RateFacts,
    XAuthExpired,
    XMediaUnavailable,
    XRateLimited,
    XRefused,
    XSentUnconfirmed,
    XTransient,
)
from bridge.media import BytesSource, MediaSource, read_exactly
from bridge.model import DM_EVENT_KINDS, DmEvent, EventKind, EventPage, Sent, Target, XUser

log = logging.getLogger("adapters.x.api")

MB = 1024 * 1024
MAX_SEGMENTS = 1000  # append's segment_index is 0..999 (spec AppendMediaUploadRequest)
# The least pause before each STATUS poll, doubling from one poll to the next up to the cap:
# X's "check again after 0 s" is taken at its word once, not 3,000 times in three seconds.
POLL_FLOOR = 0.05
POLL_FLOOR_CAP = 5.0

# Legacy numeric codes X still uses for DM refusals (NOTES §3.3), in words a Slack user can act on.
REFUSAL_CODES = {
    349: "the recipient does not accept DMs from this account (their settings, or a block)",
    150: "the recipient only accepts DMs from accounts they follow",
    151: "X rejected the message (it may look like a duplicate)",
    226: "X's spam filter flagged the message as automated",
    354: "the message is longer than X allows",
    93: "the X app is not allowed to send Direct Messages",
    476: "the recipient only accepts DMs from verified accounts",
}
REFUSAL_FAILURES = {
    349: Failure.RECIPIENT_REFUSES_DMS,
    150: Failure.RECIPIENT_REFUSES_DMS,
    476: Failure.RECIPIENT_REFUSES_DMS,
    226: Failure.SPAM_FILTER,
    151: Failure.DUPLICATE,
    354: Failure.TOO_LONG,
    93: Failure.APP_NOT_PERMITTED,
}


def rate_facts(headers: Mapping[str, str], now: float | None = None) -> RateFacts:
    """Read X's rate-limit headers; absent, malformed or implausible ones stay None.

    Counts must be whole numbers from 0 to ``MAX_COUNT``; a reset must be epoch seconds
    after ``now`` and at most ``MAX_RESET_AHEAD`` later. What fails is dropped here, at the
    edge, so nothing past it (the budget, the database, ``/xdm status``) ever sees it.
    """
    now = time.time() if now is None else now

    def digits(name: str) -> int | None:
        raw = headers.get(name)
        if raw is None:
            return None
        raw = raw.strip()
        if raw.isascii() and raw.isdigit() and len(raw) <= 12:
            return int(raw)
        log.warning("X rate-limit header ignored", extra={"header": name, "value": raw[:40]})
        return None

    def number(name: str) -> int | None:
        value = digits(name)
        if value is not None and value > MAX_COUNT:
            log.warning("X rate-limit count ignored", extra={"header": name, "value": value})
            return None
        return value

    def epoch(name: str) -> float | None:
        value = digits(name)
        if value is not None and not now < value <= now + MAX_RESET_AHEAD:
            log.warning("X rate-limit reset ignored", extra={"header": name, "value": value})
            return None
        return None if value is None else float(value)

    return RateFacts(
        window_limit=number("x-rate-limit-limit"),
        window_remaining=number("x-rate-limit-remaining"),
        window_reset=epoch("x-rate-limit-reset"),
        user_day_limit=number("x-user-limit-24hour-limit"),
        user_day_remaining=number("x-user-limit-24hour-remaining"),
        user_day_reset=epoch("x-user-limit-24hour-reset"),
        app_day_limit=number("x-app-limit-24hour-limit"),
        app_day_remaining=number("x-app-limit-24hour-remaining"),
        app_day_reset=epoch("x-app-limit-24hour-reset"),
    )


def latest_reset(facts: RateFacts, now: float, fallback: float = 60.0) -> float:
    """When a 429 ends: a spent 24-hour cap wins over the 15-minute window (NOTES §4.5)."""
    resets = []
    if facts.user_day_remaining == 0 and facts.user_day_reset:
        resets.append(facts.user_day_reset)
    if facts.app_day_remaining == 0 and facts.app_day_reset:
        resets.append(facts.app_day_reset)
    if not resets and facts.window_reset:
        resets.append(facts.window_reset)
    later = [r for r in resets if r > now]
    return max(later) if later else now + fallback


def error_code(payload: Any) -> int | None:
    """The legacy ``errors[0].code`` of an error answer, if it has one."""
    errors = payload.get("errors") if isinstance(payload, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        code = errors[0].get("code")
        if isinstance(code, int) and not isinstance(code, bool):
            return code
    return None


def describe_error(status: int, payload: Any) -> str:
    """One sentence from either error shape: problem+json or ``{"errors": [{code, message}]}``."""
    if isinstance(payload, dict):
        errors = payload.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            first = errors[0]
            code = first.get("code")
            if isinstance(code, int) and code in REFUSAL_CODES:
                return REFUSAL_CODES[code]
            message = first.get("message") or first.get("detail")
            if message:
                return str(message)
        detail = payload.get("detail") or payload.get("title")
        if detail:
            return str(detail)
    return f"HTTP {status}"


def _parse_time(raw: Any) -> float | None:
    if not isinstance(raw, str):
        return None
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class XApiClient:
    """Implements ``bridge.ports.XClient``."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        timeout: float = 20.0,
        media_timeout: float = 120.0,
        chunk_bytes: int = 4 * MB,
        fallback_pause: float = 60.0,
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._media_timeout = media_timeout  # upper bound on waiting for X to process a GIF/video
        self._chunk_bytes = chunk_bytes
        self._fallback_pause = fallback_pause  # a 429 with no usable reset waits this long

    async def _call(
        self,
        method: str,
        path: str,
        token: str,
        *,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        form: aiohttp.FormData | None = None,
    ) -> tuple[int, Mapping[str, str], Any]:
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        started = time.monotonic()
        status: int | None = None
        response_headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
        try:
            async with self._session.request(
                method,
                self._base + path,
                json=body,
                data=form,
                params=params,
                headers=headers,
                timeout=self._timeout,
            ) as response:
                status, response_headers = response.status, response.headers
                try:
                    payload = await response.json(content_type=None)
                except ValueError:
                    if 200 <= status < 300:
                        # X acted (or not) and said so in words we cannot read: as unclear as no
                        # answer at all (status None), so a send is reconciled, never assumed.
                        raise XTransient(
                            f"X answered HTTP {status} with a body that is not JSON",
                            status=status,
                            facts=rate_facts(response.headers),
                        ) from None
                    payload = None  # an error page; its status says enough
        except (aiohttp.ClientError, TimeoutError) as exc:
            if status is not None and 200 <= status < 300:
                # X said 2xx, then its body was cut or stalled: it acted, whatever the body said
                # (a send is a send: ``_post_send``), not "no answer".
                raise XTransient(
                    f"X answered HTTP {status}, then its body did not arrive ({type(exc).__name__})",
                    status=status,
                    facts=rate_facts(response_headers),
                ) from exc
            # No answer: the request may or may not have reached X (status None = ambiguous).
            raise XTransient(f"X did not answer ({type(exc).__name__})") from exc
        log.debug(
            "X request",
            extra={
                "method": method,
                "path": path,
                "status": status,
                "ms": round((time.monotonic() - started) * 1000, 1),
            },
        )
        return status, response_headers, payload

    def _raise_for(self, status: int, headers: Mapping[str, str], payload: Any) -> RateFacts:
        now = time.time()
        facts = rate_facts(headers, now)
        if 200 <= status < 300:
            return facts
        reason = describe_error(status, payload)
        if status == 401:
            raise XAuthExpired(f"X rejected the access token: {reason}", status=status, facts=facts)
        if status == 429:
            reset_at = latest_reset(facts, now, self._fallback_pause)
            raise XRateLimited(f"X rate limit: {reason}", reset_at=reset_at, facts=facts)
        if status >= 500 or status == 408:
            raise XTransient(f"X failed with HTTP {status}: {reason}", status=status, facts=facts)
        failure = REFUSAL_FAILURES.get(error_code(payload) or 0)
        raise XRefused(f"X refused it (HTTP {status}): {reason}", status=status, facts=facts, failure=failure)

    @staticmethod
    def _sent(status: int, payload: Any, facts: RateFacts, *, creates_group: bool = False) -> Sent:
        """What a 2xx to a send says X made. A 2xx is a send even when it does not say which
        DM (``XSentUnconfirmed``: read back, never sent again). A group's creation must also
        say which conversation it made: every later row of the channel is sent there, and one
        sent as a creation again would make another group."""
        data = payload.get("data") if isinstance(payload, dict) else None
        data = data if isinstance(data, dict) else {}
        conversation, event = data.get("dm_conversation_id"), data.get("dm_event_id")
        conversation = str(conversation) if isinstance(conversation, str | int) and conversation else None
        missing = "dm_event_id" if not isinstance(event, str | int) or not str(event) else None
        if missing is None and creates_group and conversation is None:
            missing = "dm_conversation_id"
        if missing is not None:
            raise XSentUnconfirmed(
                f"X answered HTTP {status} to the send without a {missing}",
                conversation_id=conversation,
                status=status,
                facts=facts,
            )
        return Sent(dm_conversation_id=conversation, dm_event_id=str(event))

    async def _post_send(
        self, path: str, token: str, body: dict[str, Any]
    ) -> tuple[int, Mapping[str, str], Any]:
        """A send's POST. A 2xx whose body cannot be read is still a send (``XSentUnconfirmed``)."""
        try:
            return await self._call("POST", path, token, body=body)
        except XTransient as exc:
            if exc.status is not None and 200 <= exc.status < 300:
                raise XSentUnconfirmed(str(exc), status=exc.status, facts=exc.facts) from exc
            raise

    async def me(self, token: str) -> XUser:
        status, headers, payload = await self._call("GET", "/2/users/me", token)
        self._raise_for(status, headers, payload)
        user = _user(payload)
        if user is None:
            raise XTransient("X's /2/users/me answer had no user")
        return user

    async def user_by_username(self, token: str, username: str) -> XUser | None:
        path = f"/2/users/by/username/{quote(username, safe='')}"
        status, headers, payload = await self._call(
            "GET", path, token, params={"user.fields": "receives_your_dm"}
        )
        if status == 404:
            return None
        self._raise_for(status, headers, payload)
        return _user(payload)

    async def users_by_ids(self, token: str, user_ids: Sequence[str]) -> dict[str, XUser]:
        """``GET /2/users?ids=`` (at most 100): names and avatars of people by id; ids X does not
        show are left out."""
        wanted = list(dict.fromkeys(user_ids))[:100]
        if not wanted:
            return {}
        params = {"ids": ",".join(wanted), "user.fields": "profile_image_url"}
        status, headers, payload = await self._call("GET", "/2/users", token, params=params)
        self._raise_for(status, headers, payload)
        records = payload.get("data") if isinstance(payload, dict) else None
        found = (_user({"data": r}) for r in records or [] if isinstance(r, dict))
        return {u.id: u for u in found if u is not None}

    async def send(
        self, token: str, target: Target, text: str, *, media_id: str | None = None
    ) -> tuple[Sent, RateFacts]:
        """Send one DM; ``media_id`` (from :meth:`upload_media`) attaches X's one allowed file.

        A ``new_group`` target creates the group (``POST /2/dm_conversations``) with this DM.
        """
        body: dict[str, Any] = {}
        if text:
            body["text"] = text
        if media_id is not None:
            body["attachments"] = [{"media_id": media_id}]
        if not body:
            raise ValueError("a DM needs text or a media_id")
        if target.new_group is not None:
            path = "/2/dm_conversations"
            body = {"conversation_type": "Group", "participant_ids": list(target.new_group), "message": body}
        elif target.participant_id is not None:
            path = f"/2/dm_conversations/with/{target.participant_id}/messages"
        else:
            path = f"/2/dm_conversations/{target.conversation_id}/messages"
        status, headers, payload = await self._post_send(path, token, body)
        if media_id is not None and status == 400 and _about_media(payload):
            reason = describe_error(status, payload)
            raise XMediaUnavailable(
                f"X refused the attachment: {reason}",
                status=status,
                facts=rate_facts(headers),
                failure=Failure.FILE_UNUSABLE,
            )
        facts = self._raise_for(status, headers, payload)
        return self._sent(status, payload, facts, creates_group=target.new_group is not None), facts

    async def create_group(
        self, token: str, participant_ids: Sequence[str], text: str
    ) -> tuple[Sent, RateFacts]:
        body = {
            "conversation_type": "Group",
            "participant_ids": list(participant_ids),
            "message": {"text": text},
        }
        status, headers, payload = await self._post_send("/2/dm_conversations", token, body)
        facts = self._raise_for(status, headers, payload)
        return self._sent(status, payload, facts, creates_group=True), facts

    async def event_page(
        self, token: str, target: Target, *, pagination_token: str | None = None, max_results: int = 100
    ) -> EventPage:
        """One page of a conversation's ``MessageCreate`` events, newest first.

        Links come back as X stores them (``t.co``) with the expanded URLs from the events'
        entities; ``server_time`` is X's ``Date`` header, so callers can judge times by X's clock.
        """
        if target.new_group is not None:
            path = "/2/dm_events"  # the group's id is not known yet: every conversation of the account
        elif target.conversation_id is not None:
            path = f"/2/dm_conversations/{target.conversation_id}/dm_events"
        else:
            path = f"/2/dm_conversations/with/{target.participant_id}/dm_events"
        params = {
            "max_results": str(max_results),
            "event_types": "MessageCreate",
            "dm_event.fields": "id,text,created_at,event_type,dm_conversation_id,entities,attachments",
            "expansions": "sender_id",
        }
        if pagination_token is not None:
            params["pagination_token"] = pagination_token
        status, headers, payload = await self._call("GET", path, token, params=params)
        facts = self._raise_for(status, headers, payload)
        # An answer that is not a list of events says nothing: "no events" must never be read
        # into it (the caller would conclude a DM is not on X, and send it twice).
        if not isinstance(payload, dict):
            raise XTransient("X's list of DM events was not JSON", status=status, facts=facts)
        data = payload.get("data", [])
        if not isinstance(data, list):
            raise XTransient("X's list of DM events had no list of events", status=status, facts=facts)
        return event_page_of(payload, server_time=_http_date(headers.get("Date")), facts=facts)

    async def dm_events(
        self,
        token: str,
        *,
        max_results: int,
        pagination_token: str | None = None,
        conversation_id: str | None = None,
        participant_id: str | None = None,
    ) -> tuple[EventPage, RateFacts]:
        """One page of ``GET /2/dm_events`` (all the user's conversations, newest first), of
        one conversation's (``GET /2/dm_conversations/{id}/dm_events``) for backfill, or of the
        1-to-1 with ``participant_id`` (``GET /2/dm_conversations/with/{id}/dm_events``).

        ``sender_id`` and ``participant_ids`` are asked for as expansions (spec 2.167 dropped
        them from ``dm_event.fields``, NOTES §1.2); malformed events are left out, never fatal.
        Links come with the ``entities`` asked for: ``DmEvent.written`` puts X's ``t.co``
        addresses back.
        """
        params = {
            "max_results": str(max(1, min(100, max_results))),
            "event_types": ",".join(DM_EVENT_KINDS),
            **_INBOX_FIELDS,
        }
        if pagination_token:
            params["pagination_token"] = pagination_token
        if conversation_id:
            path = f"/2/dm_conversations/{quote(conversation_id, safe='')}/dm_events"
        elif participant_id:
            path = f"/2/dm_conversations/with/{quote(participant_id, safe='')}/dm_events"
        else:
            path = "/2/dm_events"
        status, headers, payload = await self._call("GET", path, token, params=params)
        facts = self._raise_for(status, headers, payload)
        page = event_page_of(payload, server_time=_http_date(headers.get("Date")), facts=facts)
        if conversation_id:
            # The per-conversation answer may leave dm_conversation_id out: it is the one asked for.
            events = tuple(
                e if e.conversation_id else replace(e, conversation_id=conversation_id) for e in page.events
            )
            page = replace(page, events=events)
        return page, facts

    async def dm_event(self, token: str, event_id: str) -> tuple[EventPage, RateFacts]:
        """``GET /2/dm_events/{event_id}`` as a page of that one event (empty when X does not show
        it: X answers 200 with a "not found" problem, or 404)."""
        path = f"/2/dm_events/{quote(event_id, safe='')}"
        status, headers, payload = await self._call("GET", path, token, params=dict(_INBOX_FIELDS))
        if status == 404:
            return EventPage(events=(), next_token=None), rate_facts(headers)
        facts = self._raise_for(status, headers, payload)
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, dict):
            return EventPage(events=(), next_token=None), facts
        page = event_page_of({**payload, "data": [data]}, facts=facts)
        # Only the event asked for: an answer naming another is X's nonsense, never placed.
        return replace(page, events=tuple(e for e in page.events if e.id == event_id)), facts

    async def download_dm_media(self, token: str, url: str) -> bytes:
        """``GET /2/dm_conversations/media/{dm_id}/{media_id}/{resource_id}``, the three parts
        taken from the TON URL (``…/ton/data/dm/{dm_id}/{media_id}/{resource_id}``). Raises
        ``XRefused`` for a URL that is not one."""
        parts = ton_parts(url)
        if parts is None:
            raise XRefused("the attachment has no downloadable DM media URL")
        return await self._get_bytes(
            token, "/2/dm_conversations/media/" + "/".join(quote(p, safe="") for p in parts)
        )

    async def download_chat_media(self, token: str, conversation_id: str, media_hash_key: str) -> bytes:
        """``GET /2/chat/media/{id}/{media_hash_key}``: an X Chat attachment, still encrypted."""
        if not media_hash_key.isalnum() or len(media_hash_key) > 50:
            raise XRefused("the attachment has no X Chat media hash key")
        path = f"/2/chat/media/{quote(conversation_id, safe='')}/{media_hash_key}"
        return await self._get_bytes(token, path)

    async def _get_bytes(self, token: str, path: str) -> bytes:
        """A GET whose 200 is raw bytes (media); X's errors raised as any call's."""
        headers = {"Authorization": f"Bearer {token}"}
        try:
            async with self._session.get(
                self._base + path, headers=headers, timeout=self._timeout
            ) as response:
                body = await response.read()
                status, response_headers = response.status, response.headers
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise XTransient(f"X did not answer ({type(exc).__name__})") from exc
        if status != 200:
            payload: Any = None
            with contextlib.suppress(ValueError):
                payload = json.loads(body)
            self._raise_for(status, response_headers, payload)
        return body

    async def upload_media(
        self, token: str, media: MediaSource | bytes, *, media_type: str, category: str
    ) -> str:
        """Upload DM media and return its ``media_id`` once X can attach it (usable for 24 h).

        ``dm_image`` (at most 5 MB) goes as one multipart ``POST /2/media/upload``; ``dm_gif``
        and ``dm_video`` go through initialize (with the size) / append / finalize, each append
        read from ``media`` as it is sent, so memory holds one chunk (``chunk_bytes``, more
        only when 1,000 segments need it), never the file. ``STATUS`` is then polled as X's
        ``check_after_secs`` says. Processing that fails raises ``XRefused`` with X's reason;
        still unfinished after ``media_timeout`` seconds raises ``XTransient``. HTTP failures
        map as for every call (401, 429, 4xx, 5xx).
        """
        source = BytesSource(media) if isinstance(media, bytes) else media
        if source.size <= 0:
            raise ValueError("cannot upload empty media")
        if category == "dm_image":
            payload = await self._upload_one_shot(
                token, await read_exactly(source, source.size), media_type, category
            )
        else:
            payload = await self._upload_chunked(token, source, media_type, category)
        media_id = _media_id(payload)
        await self._await_processing(token, media_id, category, payload)
        return media_id

    async def _upload_one_shot(self, token: str, data: bytes, media_type: str, category: str) -> Any:
        form = aiohttp.FormData()
        # A file object, not bytes: aiohttp streams it (raw bytes over 1 MB trigger a ResourceWarning).
        form.add_field("media", io.BytesIO(data), filename="media", content_type=media_type)
        form.add_field("media_category", category)
        status, headers, payload = await self._call("POST", "/2/media/upload", token, form=form)
        self._raise_for(status, headers, payload)
        return payload

    async def _upload_chunked(self, token: str, source: MediaSource, media_type: str, category: str) -> Any:
        total = source.size
        init = {"media_type": media_type, "total_bytes": total, "media_category": category}
        status, headers, payload = await self._call("POST", "/2/media/upload/initialize", token, body=init)
        self._raise_for(status, headers, payload)
        media_id = _media_id(payload)
        chunk = max(self._chunk_bytes, -(-total // MAX_SEGMENTS))
        sent = 0
        for index in range(MAX_SEGMENTS):
            if sent >= total:
                break
            piece = await read_exactly(source, min(chunk, total - sent))
            if not piece:
                break
            sent += len(piece)
            form = aiohttp.FormData()
            form.add_field(
                "media", io.BytesIO(piece), filename="chunk", content_type="application/octet-stream"
            )
            form.add_field("segment_index", str(index))
            del piece  # the form holds the only reference: one chunk in memory at a time
            path = f"/2/media/upload/{media_id}/append"
            status, headers, payload = await self._call("POST", path, token, form=form)
            self._raise_for(status, headers, payload)
        if sent != total:
            raise XTransient(f"the file gave {sent} bytes of the {total} announced to X")
        path = f"/2/media/upload/{media_id}/finalize"
        status, headers, payload = await self._call("POST", path, token)
        self._raise_for(status, headers, payload)
        return payload

    async def _await_processing(self, token: str, media_id: str, category: str, payload: Any) -> None:
        deadline = time.monotonic() + self._media_timeout
        polls = 0
        info = _processing_info(payload)
        while info is not None and info.get("state") != "succeeded":
            if info.get("state") == "failed":
                kind = MEDIA_WORDS.get(category, "media")
                reason = _processing_error(info)
                raise XRefused(f"X could not process the {kind}: {reason}", failure=Failure.FILE_UNUSABLE)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise XTransient(
                    f"X had not finished processing media {media_id} after {self._media_timeout:g} s"
                )
            wait = info.get("check_after_secs")
            delay = 1.0  # when X gives no usable figure; NaN, for one, would sleep forever
            if isinstance(wait, int | float) and not isinstance(wait, bool) and math.isfinite(wait):
                delay = float(wait)
            floor = min(POLL_FLOOR_CAP, POLL_FLOOR * 2**polls)
            polls += 1
            await asyncio.sleep(min(max(delay, floor), remaining))
            params = {"media_id": media_id, "command": "STATUS"}
            status, headers, payload = await self._call("GET", "/2/media/upload", token, params=params)
            self._raise_for(status, headers, payload)
            info = _processing_info(payload)
            log.debug("X media status", extra={"media_id": media_id, "state": (info or {}).get("state")})

    async def delete_event(self, token: str, event_id: str) -> None:
        """Delete a DM the token's user sent (X hides it from the sender's view only).

        An event X no longer knows (404, or a ``resource-not-found`` partial error) counts
        as deleted; anything else X refuses raises the usual ``XError``.
        """
        path = f"/2/dm_events/{quote(event_id, safe='')}"
        status, headers, payload = await self._call("DELETE", path, token)
        if status == 404 or (200 <= status < 300 and _only_not_found(payload)):
            log.info("DM event already gone", extra={"event_id": event_id})
            return
        self._raise_for(status, headers, payload)
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, dict) or data.get("deleted") is not True:
            reason = describe_error(status, payload)
            raise XRefused(f"X did not delete DM event {event_id}: {reason}", status=status)


MEDIA_WORDS = {"dm_image": "image", "dm_gif": "GIF", "dm_video": "video"}


def _media_id(payload: Any) -> str:
    data = payload.get("data") if isinstance(payload, dict) else None
    if isinstance(data, dict) and isinstance(data.get("id"), str | int):
        return str(data["id"])
    if isinstance(payload, dict) and payload.get("errors"):
        raise XRefused(f"X refused the media: {describe_error(200, payload)}", failure=Failure.FILE_UNUSABLE)
    raise XTransient("X's media answer had no media id")


def _processing_info(payload: Any) -> dict[str, Any] | None:
    data = payload.get("data") if isinstance(payload, dict) else None
    info = data.get("processing_info") if isinstance(data, dict) else None
    return info if isinstance(info, dict) else None


def _processing_error(info: Mapping[str, Any]) -> str:
    error = info.get("error")
    if isinstance(error, dict):
        text = error.get("message") or error.get("name")
        if text:
            return str(text)
    return "processing failed"


def _only_not_found(payload: Any) -> bool:
    """A 2xx answer carrying no data and only ``resource-not-found`` errors."""
    if not isinstance(payload, dict) or payload.get("data") is not None:
        return False
    errors = payload.get("errors")
    return (
        isinstance(errors, list)
        and bool(errors)
        and all(
            isinstance(e, dict) and str(e.get("type", "")).endswith("/resource-not-found") for e in errors
        )
    )


def _about_media(payload: Any) -> bool:
    """Whether a 400 names the attachment (its ``parameter``, or a message about media)."""
    if not isinstance(payload, dict):
        return False
    problems = [payload, *(e for e in payload.get("errors") or [] if isinstance(e, dict))]
    for problem in problems:
        if str(problem.get("parameter") or "") in ("media_id", "attachments", "attachments.media_id"):
            return True
        words = f"{problem.get('detail') or ''} {problem.get('message') or ''}".lower()
        if "media" in words or "attachment" in words:
            return True
    return False


def _links(raw: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """``(t.co address, expanded URL)`` of each link in an event's ``entities.urls``."""
    links: list[tuple[str, str]] = []
    entities = raw.get("entities")
    urls = entities.get("urls") if isinstance(entities, dict) else None
    for url in urls if isinstance(urls, list) else []:
        if (
            isinstance(url, dict)
            and isinstance(url.get("url"), str)
            and isinstance(url.get("expanded_url"), str)
        ):
            links.append((url["url"], url["expanded_url"]))
    return tuple(links)


# X's clock is trusted only within these years; anything else is a broken header.
_PLAUSIBLE_DATES = (
    datetime(2000, 1, 1, tzinfo=UTC).timestamp(),
    datetime(2200, 1, 1, tzinfo=UTC).timestamp(),
)


def _http_date(raw: str | None) -> float | None:
    """An HTTP ``Date`` header as epoch seconds; None when absent or not a plausible date."""
    if not raw:
        return None
    try:
        when = parsedate_to_datetime(raw).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    low, high = _PLAUSIBLE_DATES
    return when if low <= when < high else None


def _user(payload: Any) -> XUser | None:
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, dict) or "id" not in data:
        return None
    receives = data.get("receives_your_dm")
    return XUser(
        id=str(data["id"]),
        username=str(data.get("username", "")),
        name=str(data.get("name", "")),
        receives_your_dm=receives if isinstance(receives, bool) else None,
        profile_image_url=str(data.get("profile_image_url") or ""),
    )


_TON = re.compile(r"/1\.1/ton/data/dm/([0-9]{1,19})/([0-9]{1,19})/([A-Za-z0-9_.-]{1,50})$")


def ton_parts(url: str) -> tuple[str, str, str] | None:
    """``(dm_id, media_id, resource_id)`` of a legacy TON URL, or None."""
    match = _TON.search(url.split("?", 1)[0])
    return (match.group(1), match.group(2), match.group(3)) if match else None


# What every read of DM events asks X for: everything reconciling and posting need
# (``sender_id`` and ``participant_ids`` as expansions: spec 2.167 dropped them from
# ``dm_event.fields``).
_INBOX_FIELDS = {
    "dm_event.fields": "id,text,created_at,event_type,dm_conversation_id,entities,attachments",
    "expansions": "sender_id,participant_ids,attachments.media_keys",
    "user.fields": "username,name,profile_image_url",
    "media.fields": "media_key,type,url,preview_image_url",
}


def event_page_of(
    payload: Any, *, server_time: float | None = None, facts: RateFacts | None = None
) -> EventPage:
    """The one parser of X's REST answers of DM events (``GET /2/dm_events``, a conversation's,
    or one event's as a page of one); anything malformed is dropped, not raised."""
    body: dict[str, Any] = payload if isinstance(payload, dict) else {}
    includes: dict[str, Any] = body["includes"] if isinstance(body.get("includes"), dict) else {}
    users: dict[str, XUser] = {}
    for raw in includes.get("users") or []:
        user = _user({"data": raw})
        if user is not None:
            users[user.id] = user
    media = {
        str(m["media_key"]): m
        for m in includes.get("media") or []
        if isinstance(m, dict) and isinstance(m.get("media_key"), str)
    }
    data: list[Any] = body["data"] if isinstance(body.get("data"), list) else []
    events = tuple(e for raw in data if (e := _dm_event(raw, media)) is not None)
    meta: dict[str, Any] = body["meta"] if isinstance(body.get("meta"), dict) else {}
    next_token = meta.get("next_token")
    return EventPage(
        events=events,
        next_token=next_token if isinstance(next_token, str) and next_token else None,
        users=users,
        server_time=server_time,
        facts=facts if facts is not None else RateFacts(),
    )


def _dm_event(raw: Any, media: dict[str, Any]) -> DmEvent | None:
    """One REST DM event; None when it is not one (no X id, or a kind not asked for)."""
    if not isinstance(raw, dict):
        return None
    event_id = raw.get("id")
    if isinstance(event_id, int) and not isinstance(event_id, bool) and event_id >= 0:
        event_id = str(event_id)
    if not isinstance(event_id, str) or not event_id.isdigit():
        return None
    kind = raw.get("event_type") or EventKind.MESSAGE_CREATE
    if kind not in DM_EVENT_KINDS:
        return None  # not a kind asked for (X's nonsense): nothing to post
    attachments: dict[str, Any] = raw["attachments"] if isinstance(raw.get("attachments"), dict) else {}
    keys = [k for k in attachments.get("media_keys") or [] if isinstance(k, str)]
    participants = raw.get("participant_ids")
    return DmEvent(
        id=event_id,
        kind=EventKind(kind),
        conversation_id=str(raw["dm_conversation_id"]) if raw.get("dm_conversation_id") else None,
        sender_id=str(raw["sender_id"]) if raw.get("sender_id") else None,
        text=str(raw.get("text") or ""),
        created_at=_parse_time(raw.get("created_at")),
        links=_links(raw),
        media=tuple(media.get(k, {"media_key": k}) for k in keys),
        participant_ids=tuple(str(p) for p in participants) if isinstance(participants, list) else (),
    )


class XAppClient:
    """X's app-only (Bearer) surface: webhooks and the app's activity subscriptions.

    Implements ``bridge.ports.XApp``."""

    def __init__(self, api: XApiClient, bearer_token: str) -> None:
        self._api = api
        self._token = bearer_token

    async def _json(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        status, headers, payload = await self._api._call(method, path, self._token, body=body)
        self._api._raise_for(status, headers, payload)
        return payload

    async def list_webhooks(self) -> list[dict[str, Any]]:
        payload = await self._json("GET", "/2/webhooks")
        data = payload.get("data") if isinstance(payload, dict) else None
        return [w for w in data or [] if isinstance(w, dict) and "id" in w]

    async def create_webhook(self, url: str) -> dict[str, Any]:
        """``POST /2/webhooks``: X runs the CRC against ``url`` before answering."""
        payload = await self._json("POST", "/2/webhooks", {"url": url})
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, dict) or "id" not in data:
            raise XRefused(f"X did not create the webhook: {describe_error(200, payload)}")
        return data

    async def validate_webhook(self, webhook_id: str) -> bool:
        """``PUT /2/webhooks/{id}``: re-run the CRC (re-enables an invalid webhook)."""
        payload = await self._json("PUT", f"/2/webhooks/{quote(webhook_id, safe='')}")
        data = payload.get("data") if isinstance(payload, dict) else None
        return isinstance(data, dict) and data.get("valid") is True

    async def replay(self, webhook_id: str, start: float, end: float) -> str:
        """``POST /2/webhooks/replay`` for [start, end] (UTC minutes, both inclusive)."""
        body = {
            "webhook_id": webhook_id,
            "from_date": datetime.fromtimestamp(start, UTC).strftime("%Y%m%d%H%M"),
            "to_date": datetime.fromtimestamp(end, UTC).strftime("%Y%m%d%H%M"),
        }
        payload = await self._json("POST", "/2/webhooks/replay", body)
        data = payload.get("data") if isinstance(payload, dict) else None
        return str(data.get("job_id")) if isinstance(data, dict) else ""

    async def list_subscriptions(self) -> list[dict[str, Any]]:
        payload = await self._json("GET", "/2/activity/subscriptions")
        data = payload.get("data") if isinstance(payload, dict) else None
        return [s for s in data or [] if isinstance(s, dict)]

    async def subscribe(self, user_token: str, event_type: str, user_id: str, webhook_id: str) -> None:
        """``POST /2/activity/subscriptions`` with the monitored user's own token (private events)."""
        body = {
            "event_type": event_type,
            "filter": {"user_id": user_id},
            "tag": f"xdm-bridge:{user_id}",
            "webhook_id": webhook_id,
        }
        status, headers, payload = await self._api._call(
            "POST", "/2/activity/subscriptions", user_token, body=body
        )
        self._api._raise_for(status, headers, payload)
