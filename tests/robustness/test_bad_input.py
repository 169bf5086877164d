"""Bad input at every route: each request gets a 4xx or a clean 200, never a 500, and afterwards
the bridge still relays a real message to X (✅).

Each test runs one bridge (fake X and fake Slack on loopback, channel C100 linked to 1000-2001)
through a list of cases, and checks that it still relays after each case that could affect it, so
a case that wedges the bridge is named by the failure. Slack requests come
in three flavours: correctly signed (Slack itself sending something odd), forged (a current
timestamp but a wrong signature: anyone on the internet) and unsigned (no Slack headers at all).
A forged or unsigned request must be refused with a 4xx whatever its body, and must not relay.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import pytest

from tests.harness import SIGNING_SECRET, TEAM, Bridge, running_bridge

Auth = Literal["signed", "forged", "unsigned"]

CHANNEL = "C100"
CONVERSATION = "1000-2001"
CHECK_TEXT = "still relaying"
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
MIB = 1024 * 1024
DROP = object()  # marks a field to leave out of a built event


@pytest.fixture
async def bridge(tmp_path: Path) -> AsyncIterator[Bridge]:
    async with running_bridge(tmp_path) as running:
        # One bridge takes a whole list of bad requests, with a relay checked after each: more
        # sends than X's real windows allow, and the budget is not what these tests are about.
        running.x.user_limit_15m = running.x.user_limit_24h = running.x.app_limit_24h = 100_000
        await running.connect()
        await running.map_link(CONVERSATION, channel=CHANNEL)
        yield running


def slack_headers(body: bytes, auth: Auth) -> dict[str, str]:
    """Slack's v0 signature over raw bytes (SlackSender can only sign UTF-8 text)."""
    if auth == "unsigned":
        return {}
    timestamp = str(int(time.time()))
    base = b"v0:" + timestamp.encode() + b":" + body
    digest = hmac.new(SIGNING_SECRET.encode(), base, hashlib.sha256).hexdigest()
    if auth == "forged":
        digest = "0" * len(digest)
    return {"X-Slack-Request-Timestamp": timestamp, "X-Slack-Signature": f"v0={digest}"}


def message(**fields: Any) -> dict[str, Any]:
    """A plausible message event in the linked channel, with ``fields`` replaced or dropped."""
    event: dict[str, Any] = {
        "type": "message",
        "channel": CHANNEL,
        "user": "U100",
        "text": "odd input",
        "ts": "1700000000.000100",
        "team": TEAM,
        "channel_type": "channel",
    }
    event.update(fields)
    return {k: v for k, v in event.items() if v is not DROP}


def envelope(event: Any = DROP, **fields: Any) -> bytes:
    body: dict[str, Any] = {
        "token": "verification_token",
        "team_id": TEAM,
        "api_app_id": "A0001",
        "type": "event_callback",
        "event_id": "Ev0BAD0001",
        "event_time": 1700000000,
        "event": message() if event is DROP else event,
    }
    body.update(fields)
    return json.dumps({k: v for k, v in body.items() if v is not DROP}).encode()


def form(**fields: str) -> bytes:
    return "&".join(f"{k}={quote(v, safe='')}" for k, v in fields.items()).encode()


def connect_click(action: Any = DROP, **fields: Any) -> bytes:
    """A click on the connect question's Confirm (``block_actions``), fields replaced or dropped."""
    button = {"action_id": "xdm_connect_confirm", "type": "button", "value": "no-such-connection"}
    payload: dict[str, Any] = {
        "type": "block_actions",
        "team": {"id": TEAM},
        "user": {"id": "U100", "team_id": TEAM},
        "actions": [button if action is DROP else action],
        **fields,
    }
    return form(payload=json.dumps({k: v for k, v in payload.items() if v is not DROP}))


async def send(
    bridge: Bridge, body: bytes, content_type: str | None, auth: Auth, path: str = "/slack/events"
) -> tuple[int, str]:
    headers = slack_headers(body, auth)
    if content_type is not None:
        headers["Content-Type"] = content_type
    async with bridge.session.post(f"{bridge.url}{path}", data=io.BytesIO(body), headers=headers) as response:
        return response.status, await response.text(errors="replace")


async def assert_still_relays(bridge: Bridge) -> None:
    """The bridge is alive and a real message in the linked channel still reaches X with ✅."""
    async with bridge.session.get(f"{bridge.url}/healthz") as response:
        assert response.status == 200, await response.text()
    result, ts = await bridge.post(CHECK_TEXT, channel=CHANNEL)
    assert result.status == 200, result.text
    await bridge.wait_reaction(CHANNEL, ts, "white_check_mark")
    assert bridge.texts(CONVERSATION)[-1] == f"Ada: {CHECK_TEXT}"


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Tracebacks or ERROR lines from our code (Bolt's logger is ours: adapters.slack.app.bolt)."""
    return [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.ERROR and r.name.split(".")[0] in ("adapters", "bridge")
    ]


# ---------------------------------------------------------------------------------------------
# POST /slack/events
# ---------------------------------------------------------------------------------------------

SLACK_BODIES = [
    # Not JSON, or JSON that is not an object.
    pytest.param(b'{"type": "event_callback", ', JSON, id="malformed-json"),
    pytest.param(b"{" * 10 + b"}", JSON, id="malformed-json-braces"),
    pytest.param(b"[1, 2]", JSON, id="json-array"),
    pytest.param(b'"event_callback"', JSON, id="json-string"),
    pytest.param(b"42", JSON, id="json-number"),
    pytest.param(b"null", JSON, id="json-null"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, JSON, id="json-nested-100k-deep"),
    pytest.param(b'{"type": "event_callback", "x": "\xff\xfe"}', JSON, id="invalid-utf8"),
    pytest.param(b"", JSON, id="empty-body-json"),
    pytest.param(b"", FORM, id="empty-body-form"),
    pytest.param(b"", None, id="empty-body-no-content-type"),
    # Wrong content types.
    pytest.param(envelope(), "text/plain", id="json-as-text-plain"),
    pytest.param(envelope(), "application/xml", id="json-as-xml"),
    pytest.param(envelope(), f"{JSON}; charset=bogus-charset", id="unknown-charset"),
    pytest.param(envelope(), f"{JSON}; charset=utf-16", id="utf8-body-declared-utf16"),
    pytest.param(envelope(), "multipart/form-data; boundary=xyz", id="json-as-multipart"),
    pytest.param(b"<event><type>message</type></event>", "application/xml", id="xml"),
    pytest.param(b"--xyz\r\ngarbage\r\n--xyz--\r\n", "multipart/form-data; boundary=xyz", id="multipart"),
    # Form bodies (slash commands and interactivity).
    pytest.param(b"a=b&c=d", FORM, id="form-without-payload"),
    pytest.param(b"payload=", FORM, id="form-empty-payload"),
    pytest.param(form(payload="not json"), FORM, id="form-payload-not-json"),
    pytest.param(form(payload="[1]"), FORM, id="form-payload-array"),
    pytest.param(form(payload='{"type": "block_actions", "actions": 5}'), FORM, id="form-payload-unknown"),
    pytest.param(connect_click(), FORM, id="connect-click-unknown-connection"),
    pytest.param(
        connect_click({"action_id": "xdm_connect_confirm", "type": "button", "value": 5}),
        FORM,
        id="click-value-number",
    ),
    pytest.param(connect_click({"action_id": "xdm_connect_cancel"}), FORM, id="click-without-value"),
    pytest.param(connect_click(user=DROP), FORM, id="click-without-user"),
    pytest.param(connect_click(user="U100"), FORM, id="click-user-string"),
    pytest.param(connect_click(team=["T"], user={"id": 7}), FORM, id="click-team-array"),
    pytest.param(connect_click(response_url=42), FORM, id="click-response-url-number"),
    pytest.param(form(command="/xdm"), FORM, id="command-without-fields"),
    pytest.param(form(command="/other", text="x", team_id=TEAM), FORM, id="command-unknown"),
    pytest.param(b"command=%2Fxdm&text=%ZZ%ff&team_id=%00", FORM, id="command-bad-percent-encoding"),
    # Envelopes: unknown types, missing fields, wrong types.
    pytest.param(json.dumps({"type": "url_verification", "challenge": "c1"}).encode(), JSON, id="url-verify"),
    pytest.param(json.dumps({"type": "url_verification"}).encode(), JSON, id="url-verify-no-challenge"),
    pytest.param(json.dumps({"type": "app_rate_limited", "team_id": TEAM}).encode(), JSON, id="rate-limited"),
    pytest.param(json.dumps({"type": "something_new"}).encode(), JSON, id="unknown-envelope-type"),
    pytest.param(json.dumps({"type": 7}).encode(), JSON, id="envelope-type-number"),
    pytest.param(json.dumps({}).encode(), JSON, id="empty-object"),
    pytest.param(json.dumps({"type": "event_callback", "team_id": TEAM}).encode(), JSON, id="no-event"),
    pytest.param(envelope(event=None), JSON, id="event-null"),
    pytest.param(envelope(event="message"), JSON, id="event-string"),
    pytest.param(envelope(event=[message()]), JSON, id="event-array"),
    pytest.param(envelope(event={"type": "reaction_added", "user": "U1"}), JSON, id="unknown-event-type"),
    pytest.param(envelope(event={"type": ["message"]}), JSON, id="event-type-array"),
    pytest.param(envelope(event={"channel": CHANNEL}), JSON, id="event-without-type"),
    pytest.param(envelope(team_id=DROP), JSON, id="no-team-id"),
    pytest.param(envelope(team_id=5), JSON, id="team-id-number"),
    pytest.param(envelope(event_id=["Ev1"]), JSON, id="event-id-array"),
    pytest.param(envelope(event_id={"id": "Ev1"}), JSON, id="event-id-object"),
    pytest.param(envelope(authorizations="everyone"), JSON, id="authorizations-string"),
    pytest.param(envelope(authorizations=[1, None]), JSON, id="authorizations-junk-items"),
    pytest.param(envelope(enterprise_id=[1]), JSON, id="enterprise-id-array"),
    # Message events with missing fields or wrong types.
    pytest.param(envelope(message(channel=DROP)), JSON, id="message-no-channel"),
    pytest.param(envelope(message(ts=DROP)), JSON, id="message-no-ts"),
    pytest.param(envelope(message(user=DROP)), JSON, id="message-no-user"),
    pytest.param(envelope(message(text=DROP)), JSON, id="message-no-text"),
    pytest.param(envelope(message(text=12345)), JSON, id="text-number"),
    pytest.param(envelope(message(text={"a": 1})), JSON, id="text-object"),
    pytest.param(envelope(message(channel=[CHANNEL])), JSON, id="channel-array"),
    pytest.param(envelope(message(channel=100)), JSON, id="channel-number"),
    pytest.param(envelope(message(user=["U100"])), JSON, id="user-array"),
    pytest.param(envelope(message(user=100)), JSON, id="user-number"),
    pytest.param(envelope(message(ts={"a": 1})), JSON, id="ts-object"),
    pytest.param(envelope(message(ts=1700000000.5)), JSON, id="ts-number"),
    pytest.param(envelope(message(subtype=["bot_message"])), JSON, id="subtype-array"),
    pytest.param(envelope(message(subtype={"x": 1})), JSON, id="subtype-object"),
    pytest.param(envelope(message(bot_id=["B1"])), JSON, id="bot-id-array"),
    pytest.param(envelope(message(thread_ts=5)), JSON, id="thread-ts-number"),
    pytest.param(envelope(message(thread_ts=["1.2"])), JSON, id="thread-ts-array"),
    pytest.param(envelope(message(blocks="rich")), JSON, id="blocks-string"),
    pytest.param(envelope(message(blocks=[1, "x", None, {"type": 5}])), JSON, id="blocks-junk-items"),
    pytest.param(
        envelope(message(blocks=[{"type": "rich_text", "elements": {"a": 1}}])), JSON, id="blocks-bad-rich"
    ),
    pytest.param(envelope(message(files="f")), JSON, id="files-string"),
    pytest.param(envelope(message(files=[{"id": 5}], subtype="file_share")), JSON, id="files-junk-items"),
    pytest.param(
        envelope(message(text="\x00 \u202e\ufeff \u0085 \U0001d54f")), JSON, id="text-control-chars"
    ),
    pytest.param(envelope(message(text="lone \ud800 surrogate")), JSON, id="text-lone-surrogate"),
    # Bodies over the 1 MiB limit.
    pytest.param(b'{"a": "' + b"x" * (MIB + 10) + b'"}', JSON, id="huge-json"),
    pytest.param(envelope(message(text="y" * (MIB + 10))), JSON, id="huge-message"),
    pytest.param(b"payload=" + b"x" * (MIB + 10), FORM, id="huge-form"),
]


async def test_slack_events_bad_bodies_correctly_signed(
    bridge: Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    """Slack itself sending something odd: never a 500, and the bridge relays after each one."""
    for case in SLACK_BODIES:
        body, content_type = case.values
        assert isinstance(body, bytes) and (content_type is None or isinstance(content_type, str))
        status, text = await send(bridge, body, content_type, "signed")
        assert status < 500, f"{case.id}: {status}: {text[:300]}"
        await assert_still_relays(bridge)
    assert errors_logged(caplog) == []


@pytest.mark.parametrize("auth", ["forged", "unsigned"])
async def test_slack_events_bad_bodies_unauthenticated(
    bridge: Bridge, caplog: pytest.LogCaptureFixture, auth: Auth
) -> None:
    """Anyone on the internet: every body is refused with a 4xx, and none reaches X."""
    for case in SLACK_BODIES:
        body, content_type = case.values
        assert isinstance(body, bytes) and (content_type is None or isinstance(content_type, str))
        status, text = await send(bridge, body, content_type, auth)
        assert 400 <= status < 500, f"{case.id}: an unauthenticated request got {status}: {text[:300]}"
    await assert_still_relays(bridge)
    assert bridge.texts() == [f"Ada: {CHECK_TEXT}"], "an unauthenticated request reached X"
    assert errors_logged(caplog) == []


async def test_url_verification_answers_the_challenge(bridge: Bridge) -> None:
    body = json.dumps({"token": "t", "challenge": "c-42", "type": "url_verification"}).encode()
    status, text = await send(bridge, body, JSON, "signed")
    assert (status, json.loads(text)) == (200, {"challenge": "c-42"})
    assert (await send(bridge, body, JSON, "forged"))[0] == 401


BAD_SIGNATURE_HEADERS = [
    pytest.param({"X-Slack-Request-Timestamp": "1", "X-Slack-Signature": "v0=00"}, id="stale"),
    pytest.param({"X-Slack-Request-Timestamp": "9" * 40, "X-Slack-Signature": "v0=00"}, id="huge-ts"),
    pytest.param({"X-Slack-Request-Timestamp": "-5", "X-Slack-Signature": "v0=00"}, id="negative-ts"),
    pytest.param({"X-Slack-Request-Timestamp": "١٢٣", "X-Slack-Signature": "v0=00"}, id="arabic-digits"),
    pytest.param({"X-Slack-Request-Timestamp": "now", "X-Slack-Signature": "v0=00"}, id="word-ts"),
    pytest.param({"X-Slack-Signature": "v0=00"}, id="no-ts"),
    pytest.param({"X-Slack-Request-Timestamp": str(int(time.time()))}, id="no-signature"),
]


async def test_slack_events_bad_signature_headers(bridge: Bridge) -> None:
    for case in BAD_SIGNATURE_HEADERS:
        [headers] = case.values
        assert isinstance(headers, dict)
        async with bridge.session.post(
            f"{bridge.url}/slack/events", data=envelope(), headers={"Content-Type": JSON, **headers}
        ) as response:
            assert response.status == 401, f"{case.id}: {await response.text()}"
    await assert_still_relays(bridge)
    assert bridge.texts() == [f"Ada: {CHECK_TEXT}"]


async def test_huge_chunked_body_without_content_length(bridge: Bridge) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(12):
            yield b"x" * 100_000

    headers = {"Content-Type": JSON, **slack_headers(b"", "signed")}
    async with bridge.session.post(f"{bridge.url}/slack/events", data=chunks(), headers=headers) as response:
        assert response.status == 413
    await assert_still_relays(bridge)


# ---------------------------------------------------------------------------------------------
# GET /x/oauth/callback
# ---------------------------------------------------------------------------------------------


CALLBACK_QUERIES = [
    "",
    "?state=",
    "?state=garbage",
    "?state=garbage&code=zzz",
    "?code=only-a-code",
    "?error=access_denied",
    "?error=access_denied&state=garbage",
    "?error=" + "e" * 2000 + "&state=x",
    "?state=%zz&code=%ff",
    "?state=%ff%fe%00",
    "?state=a&state=b&code=c&code=d",
    "?state[]=x&code[a]=y",
    "?code=" + "x" * 6000,
    "?state=" + "s" * 9000,  # over aiohttp's 8 KiB request line
    "?%00=%00",
]


async def test_oauth_callback_garbage_query(bridge: Bridge, caplog: pytest.LogCaptureFixture) -> None:
    for query in CALLBACK_QUERIES:
        async with bridge.session.get(f"{bridge.url}/x/oauth/callback{query}") as response:
            text = await response.text(errors="replace")
            assert response.status < 500, f"{query[:40]}: {response.status}: {text[:300]}"
            assert "is now connected" not in text
        await assert_still_relays(bridge)
    assert errors_logged(caplog) == []


# ---------------------------------------------------------------------------------------------
# Junk methods and bodies at every route
# ---------------------------------------------------------------------------------------------

ROUTES = ["/slack/events", "/x/oauth/callback", "/healthz", "/metrics", "/no/such/route"]


async def test_junk_methods(bridge: Bridge) -> None:
    for route in ROUTES:
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE"):
            async with bridge.session.request(method, f"{bridge.url}{route}", data=b"junk=1") as response:
                assert response.status < 500, f"{method} {route}: {response.status}"
        await assert_still_relays(bridge)


async def test_huge_body_at_every_route(bridge: Bridge) -> None:
    for route in ROUTES:
        for method in ("POST", "PUT"):
            async with bridge.session.request(
                method,
                f"{bridge.url}{route}",
                data=io.BytesIO(b"z" * (2 * MIB)),
                headers={"Content-Type": JSON},
            ) as response:
                assert 400 <= response.status < 500, f"{method} {route}: {response.status}"
        await assert_still_relays(bridge)


RAW_JUNK = [
    pytest.param(b"GARBAGE\r\n\r\n", id="no-request-line"),
    pytest.param(b"BREW /healthz HTTP/1.1\r\nHost: x\r\n\r\n", id="unknown-method"),
    pytest.param(b"GET /healthz HTTP/9.9\r\n\r\n", id="bad-version"),
    pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", id="tls-hello"),
    pytest.param(
        b"POST /slack/events HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", id="negative-length"
    ),
    pytest.param(
        b"POST /slack/events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        id="length-and-chunked",
    ),
    pytest.param(
        b"POST /slack/events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        id="bad-chunk",
    ),
    pytest.param(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Junk: y\r\n" * 200 + b"\r\n", id="many-headers"
    ),
    pytest.param(b"GET /metrics?" + b"q" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", id="url-over-8k"),
]


async def test_raw_protocol_junk(bridge: Bridge) -> None:
    for case in RAW_JUNK:
        [raw] = case.values
        assert isinstance(raw, bytes)
        status_line = await raw_exchange(bridge, raw)
        parts = status_line.split()
        assert len(parts) >= 2 and parts[0].startswith(b"HTTP/"), f"{case.id}: {status_line!r}"
        code = int(parts[1])
        assert 400 <= code < 500 or (code == 200 and raw.startswith(b"GET")), f"{case.id}: {status_line!r}"
        await assert_still_relays(bridge)


async def raw_exchange(bridge: Bridge, raw: bytes) -> bytes:
    port = int(bridge.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), timeout=10)
    finally:
        writer.close()
