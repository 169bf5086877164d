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
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import aiohttp

from bridge.errors import RateFacts, XAuthExpired, XRateLimited, XRefused, XTransient
from bridge.model import DmEvent, EventPage, Sent, Target, XEvent, XUser

log = logging.getLogger("adapters.x.api")

MB = 1024 * 1024
MAX_SEGMENTS = 1000  # append's segment_index is 0..999 (spec AppendMediaUploadRequest)

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


def rate_facts(headers: Mapping[str, str]) -> RateFacts:
    """Read X's rate-limit headers; absent or malformed ones stay None."""

    def number(name: str) -> int | None:
        raw = headers.get(name)
        try:
            return int(raw) if raw is not None else None
        except ValueError:
            return None

    def epoch(name: str) -> float | None:
        value = number(name)
        return float(value) if value is not None else None

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


def latest_reset(facts: RateFacts, now: float) -> float:
    """When a 429 ends: a spent 24-hour cap wins over the 15-minute window (NOTES §4.5)."""
    resets = []
    if facts.user_day_remaining == 0 and facts.user_day_reset:
        resets.append(facts.user_day_reset)
    if facts.app_day_remaining == 0 and facts.app_day_reset:
        resets.append(facts.app_day_reset)
    if not resets and facts.window_reset:
        resets.append(facts.window_reset)
    later = [r for r in resets if r > now]
    return max(later) if later else now + 60.0


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
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._media_timeout = media_timeout  # upper bound on waiting for X to process a GIF/video
        self._chunk_bytes = chunk_bytes

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
                try:
                    payload = await response.json(content_type=None)
                except ValueError:
                    payload = None
                status, response_headers = response.status, response.headers
        except (aiohttp.ClientError, TimeoutError) as exc:
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
        facts = rate_facts(headers)
        if 200 <= status < 300:
            return facts
        reason = describe_error(status, payload)
        if status == 401:
            raise XAuthExpired(f"X rejected the access token: {reason}", status=status, facts=facts)
        if status == 429:
            reset_at = latest_reset(facts, time.time())
            raise XRateLimited(f"X rate limit: {reason}", reset_at=reset_at, facts=facts)
        if status >= 500 or status == 408:
            raise XTransient(f"X failed with HTTP {status}: {reason}", status=status, facts=facts)
        raise XRefused(f"X refused it (HTTP {status}): {reason}", status=status, facts=facts)

    @staticmethod
    def _sent(payload: Any) -> Sent:
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, dict) or "dm_event_id" not in data:
            raise XTransient("X answered 201 without a dm_event_id")
        return Sent(dm_conversation_id=str(data["dm_conversation_id"]), dm_event_id=str(data["dm_event_id"]))

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

    async def send(
        self, token: str, target: Target, text: str, *, media_id: str | None = None
    ) -> tuple[Sent, RateFacts]:
        """Send one DM; ``media_id`` (from :meth:`upload_media`) attaches X's one allowed file."""
        if target.participant_id is not None:
            path = f"/2/dm_conversations/with/{target.participant_id}/messages"
        else:
            path = f"/2/dm_conversations/{target.conversation_id}/messages"
        body: dict[str, Any] = {}
        if text:
            body["text"] = text
        if media_id is not None:
            body["attachments"] = [{"media_id": media_id}]
        if not body:
            raise ValueError("a DM needs text or a media_id")
        status, headers, payload = await self._call("POST", path, token, body=body)
        facts = self._raise_for(status, headers, payload)
        return self._sent(payload), facts

    async def create_group(
        self, token: str, participant_ids: Sequence[str], text: str
    ) -> tuple[Sent, RateFacts]:
        body = {
            "conversation_type": "Group",
            "participant_ids": list(participant_ids),
            "message": {"text": text},
        }
        status, headers, payload = await self._call("POST", "/2/dm_conversations", token, body=body)
        facts = self._raise_for(status, headers, payload)
        return self._sent(payload), facts

    async def recent_events(
        self, token: str, target: Target, max_results: int = 50
    ) -> tuple[list[DmEvent], RateFacts]:
        if target.conversation_id is not None:
            path = f"/2/dm_conversations/{target.conversation_id}/dm_events"
        else:
            path = f"/2/dm_conversations/with/{target.participant_id}/dm_events"
        params = {
            "max_results": str(max_results),
            "event_types": "MessageCreate",
            "dm_event.fields": "id,text,created_at,event_type,dm_conversation_id",
            "expansions": "sender_id",
        }
        status, headers, payload = await self._call("GET", path, token, params=params)
        facts = self._raise_for(status, headers, payload)
        data = payload.get("data") if isinstance(payload, dict) else None
        events = []
        for raw in data if isinstance(data, list) else []:
            if isinstance(raw, dict) and "id" in raw:
                events.append(
                    DmEvent(
                        id=str(raw["id"]),
                        text=str(raw.get("text", "")),
                        sender_id=str(raw["sender_id"]) if raw.get("sender_id") else None,
                        created_at=_parse_time(raw.get("created_at")),
                    )
                )
        return events, facts

    async def dm_events(
        self,
        token: str,
        *,
        max_results: int,
        pagination_token: str | None = None,
        conversation_id: str | None = None,
    ) -> tuple[EventPage, RateFacts]:
        """One page of ``GET /2/dm_events`` (all the user's conversations, newest first), or of
        one conversation's (``GET /2/dm_conversations/{id}/dm_events``) for backfill.

        ``sender_id`` and ``participant_ids`` are asked for as expansions (spec 2.167 dropped
        them from ``dm_event.fields``, NOTES §1.2); malformed events are left out, never fatal.
        """
        params = {
            "max_results": str(max(1, min(100, max_results))),
            "event_types": "MessageCreate,ParticipantsJoin,ParticipantsLeave",
            "dm_event.fields": "id,text,created_at,event_type,dm_conversation_id,attachments",
            "expansions": "sender_id,participant_ids,attachments.media_keys",
            "user.fields": "username,name,profile_image_url",
            "media.fields": "media_key,type,url,preview_image_url",
        }
        if pagination_token:
            params["pagination_token"] = pagination_token
        path = f"/2/dm_conversations/{conversation_id}/dm_events" if conversation_id else "/2/dm_events"
        status, headers, payload = await self._call("GET", path, token, params=params)
        facts = self._raise_for(status, headers, payload)
        page = _event_page(payload)
        if conversation_id:
            # The per-conversation answer may leave dm_conversation_id out: it is the one asked for.
            events = tuple(
                e if e.conversation_id else replace(e, conversation_id=conversation_id) for e in page.events
            )
            page = replace(page, events=events)
        return page, facts

    async def download_dm_media(self, token: str, url: str) -> bytes:
        """``GET /2/dm_conversations/media/{dm_id}/{media_id}/{resource_id}``, the three parts
        taken from the TON URL (INBOUND.md §6). Raises ``XRefused`` for a URL that is not one."""
        parts = ton_parts(url)
        if parts is None:
            raise XRefused("the attachment has no downloadable DM media URL")
        path = "/2/dm_conversations/media/" + "/".join(quote(p, safe="") for p in parts)
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

    async def upload_media(self, token: str, data: bytes, *, media_type: str, category: str) -> str:
        """Upload DM media and return its ``media_id`` once X can attach it (usable for 24 h).

        ``dm_image`` goes as one multipart ``POST /2/media/upload``; ``dm_gif`` and ``dm_video``
        go through initialize / append (chunks of at most ``chunk_bytes``) / finalize, then
        ``STATUS`` is polled as X's ``check_after_secs`` says. Processing that fails raises
        ``XRefused`` with X's reason; still unfinished after ``media_timeout`` seconds raises
        ``XTransient``. HTTP failures map as for every call (401, 429, 4xx, 5xx).
        """
        if not data:
            raise ValueError("cannot upload empty media")
        if category == "dm_image":
            payload = await self._upload_one_shot(token, data, media_type, category)
        else:
            payload = await self._upload_chunked(token, data, media_type, category)
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

    async def _upload_chunked(self, token: str, data: bytes, media_type: str, category: str) -> Any:
        init = {"media_type": media_type, "total_bytes": len(data), "media_category": category}
        status, headers, payload = await self._call("POST", "/2/media/upload/initialize", token, body=init)
        self._raise_for(status, headers, payload)
        media_id = _media_id(payload)
        chunk = max(self._chunk_bytes, -(-len(data) // MAX_SEGMENTS))
        for index, start in enumerate(range(0, len(data), chunk)):
            form = aiohttp.FormData()
            form.add_field(
                "media",
                io.BytesIO(data[start : start + chunk]),
                filename="chunk",
                content_type="application/octet-stream",
            )
            form.add_field("segment_index", str(index))
            path = f"/2/media/upload/{media_id}/append"
            status, headers, payload = await self._call("POST", path, token, form=form)
            self._raise_for(status, headers, payload)
        path = f"/2/media/upload/{media_id}/finalize"
        status, headers, payload = await self._call("POST", path, token)
        self._raise_for(status, headers, payload)
        return payload

    async def _await_processing(self, token: str, media_id: str, category: str, payload: Any) -> None:
        deadline = time.monotonic() + self._media_timeout
        info = _processing_info(payload)
        while info is not None and info.get("state") != "succeeded":
            if info.get("state") == "failed":
                kind = MEDIA_WORDS.get(category, "media")
                raise XRefused(f"X could not process the {kind}: {_processing_error(info)}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise XTransient(
                    f"X had not finished processing media {media_id} after {self._media_timeout:g} s"
                )
            wait = info.get("check_after_secs")
            delay = float(wait) if isinstance(wait, int | float) and not isinstance(wait, bool) else 1.0
            await asyncio.sleep(min(max(delay, 0.0), remaining))
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
        raise XRefused(f"X refused the media: {describe_error(200, payload)}")
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


def _event_page(payload: Any) -> EventPage:
    """Parse a ``GET /2/dm_events`` answer; anything malformed is dropped, not raised."""
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
    events: list[XEvent] = []
    for raw in body.get("data") or []:
        if not isinstance(raw, dict) or not isinstance(raw.get("id"), str) or not raw["id"].isdigit():
            continue
        attachments: dict[str, Any] = raw["attachments"] if isinstance(raw.get("attachments"), dict) else {}
        keys = [k for k in attachments.get("media_keys") or [] if isinstance(k, str)]
        participants = raw.get("participant_ids")
        events.append(
            XEvent(
                id=raw["id"],
                kind=str(raw.get("event_type") or "MessageCreate"),
                conversation_id=str(raw["dm_conversation_id"]) if raw.get("dm_conversation_id") else None,
                sender_id=str(raw["sender_id"]) if raw.get("sender_id") else None,
                text=str(raw.get("text") or ""),
                created_at=_parse_time(raw.get("created_at")),
                participant_ids=tuple(str(p) for p in participants) if isinstance(participants, list) else (),
                media=tuple(media.get(k, {"media_key": k}) for k in keys),
            )
        )
    meta: dict[str, Any] = body["meta"] if isinstance(body.get("meta"), dict) else {}
    next_token = meta.get("next_token")
    return EventPage(
        events=tuple(events),
        users=users,
        next_token=next_token if isinstance(next_token, str) and next_token else None,
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
