"""Credentials compared in constant time must not crash on what an attacker puts in them.

``hmac.compare_digest`` raises ``TypeError`` when given two ``str`` of which one holds a
non-ASCII character. Anyone on the internet can put such a character in a signature header or a
form field: each such request must be refused (4xx), never a 500 with a traceback in the log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from urllib.parse import quote_from_bytes

import pytest

from tests.harness import Bridge, running_bridge
from tests.integration.test_push import pushing


async def raw_status(bridge: Bridge, request: bytes) -> int:
    """Send ``request`` as is (aiohttp's client would not send a header that is not ASCII)."""
    port = int(bridge.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout=10)
    finally:
        writer.close()
    return int(line.split()[1])


def request(method: str, path: str, headers: dict[str, bytes], body: bytes = b"") -> bytes:
    head = [f"{method} {path} HTTP/1.1".encode(), b"Host: bridge", b"Connection: close"]
    head += [f"Content-Length: {len(body)}".encode()] if body else []
    head += [name.encode() + b": " + value for name, value in headers.items()]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    """ERROR lines from anyone (aiohttp logs a handler's exception as its own)."""
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]


# What an attacker may put in a credential: UTF-8 that is not ASCII, and bytes that are not UTF-8.
ODD = [pytest.param("é".encode(), id="non-ascii"), pytest.param(b"\xff\xfe", id="not-utf8")]


@pytest.mark.parametrize("odd", ODD)
async def test_an_odd_push_signature_is_refused_not_a_500(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, odd: bytes
) -> None:
    """Anyone may POST /x/webhook: a signature header such as ``sha256=é`` crashed the
    comparison (500, and a traceback per request: a flood of them floods the log)."""
    async with pushing(tmp_path) as bridge:
        headers = {"Content-Type": b"application/json", "x-twitter-webhooks-signature": b"sha256=" + odd}
        assert await raw_status(bridge, request("POST", "/x/webhook", headers, b'{"data": {}}')) == 401
    assert errors(caplog) == []


@pytest.mark.parametrize("odd", ODD)
async def test_an_odd_slack_signature_is_refused_not_a_500(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, odd: bytes
) -> None:
    """Anyone may POST /slack/events with a current timestamp and a signature of their own."""
    async with running_bridge(tmp_path) as bridge:
        headers = {
            "Content-Type": b"application/json",
            "X-Slack-Request-Timestamp": str(int(time.time())).encode(),
            "X-Slack-Signature": b"v0=" + odd,
        }
        assert await raw_status(bridge, request("POST", "/slack/events", headers, b"{}")) == 401
    assert errors(caplog) == []


@pytest.mark.parametrize("odd", ODD)
async def test_an_odd_csrf_token_is_refused_not_a_500(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, odd: bytes
) -> None:
    """The connect page's double-submit check: a cross-site form (or anyone) posting a csrf field
    that is not ASCII, against the cookie or with a cookie of its own."""
    async with running_bridge(tmp_path) as bridge:
        body = b"state=s&csrf=" + quote_from_bytes(odd).encode()
        headers = {"Content-Type": b"application/x-www-form-urlencoded", "Cookie": b"xdm_csrf=abc"}
        assert await raw_status(bridge, request("POST", "/x/connect", headers, body)) == 403
        headers["Cookie"] = b"xdm_csrf=" + odd
        assert await raw_status(bridge, request("POST", "/x/connect", headers, b"state=s&csrf=abc")) == 403
    assert errors(caplog) == []


@pytest.mark.parametrize("odd", ODD)
async def test_an_odd_bearer_token_is_refused_not_a_500(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, odd: bytes
) -> None:
    """/healthz's details and /metrics compare a bearer token with METRICS_TOKEN."""
    async with running_bridge(tmp_path, env={"METRICS_TOKEN": "s3cret-token"}) as bridge:
        headers = {"Authorization": b"Bearer " + odd}
        assert await raw_status(bridge, request("GET", "/metrics", headers)) == 401
        assert await raw_status(bridge, request("GET", "/healthz", headers)) == 200
    assert errors(caplog) == []


@pytest.mark.parametrize("timestamp", [b"9" * 5000, "١٢٣".encode()])
async def test_an_odd_slack_timestamp_is_refused_not_a_500(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, timestamp: bytes
) -> None:
    """A timestamp of digits only, but more of them than Python converts to an int (4,300)."""
    async with running_bridge(tmp_path) as bridge:
        headers = {
            "Content-Type": b"application/json",
            "X-Slack-Request-Timestamp": timestamp,
            "X-Slack-Signature": b"v0=00",
        }
        assert await raw_status(bridge, request("POST", "/slack/events", headers, b"{}")) == 401
    assert errors(caplog) == []
