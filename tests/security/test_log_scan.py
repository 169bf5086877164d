"""A full run of `xdm-bridge serve` at debug level: no secret in any log line, reply or page."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp

from bridge.confirm import CONFIRM_DISCONNECT
from tests.harness import ME, SIGNING_SECRET, authorize_url, browser_cookies, wait_until
from tests.process.support import World, world

METRICS_TOKEN = "metrics-token-for-the-log-scan"


async def command(w: World, text: str, user: str = "U100") -> tuple[str, str]:
    response_url = w.slack.new_response_url(user=user, channel="C100")
    result = await w.sender.command(text, user_id=user, channel_id="C100", response_url=response_url)
    assert result.status == 200, result.text
    return result.text, response_url


async def connect_in_browser(
    w: World, browser: aiohttp.ClientSession, ack: str, pages: list[str], cookies: list[str]
) -> str:
    """The whole browser trip; returns X's authorization code, a secret too (``cookies`` gets
    the value of the cookie binding the flow to this browser)."""
    async with browser.get(authorize_url(ack)) as response:
        page = await response.text()
        pages.append(page)  # its CSRF cookie is in the form by design (double submit): not a secret
    fields = dict(re.findall(r"name=(\w+) value='([^']*)'", page))
    async with browser.post(f"{w.url}/x/connect", data=fields, allow_redirects=False) as response:
        x_url = response.headers["Location"]
        cookies.extend(c.value for c in response.cookies.values() if c.value)
    async with browser.get(x_url, allow_redirects=False) as response:
        callback = response.headers["Location"]
    async with browser.get(callback) as response:
        pages.append(await response.text())
        assert response.status == 200, pages[-1]
    return parse_qs(urlsplit(callback).query)["code"][0]


async def test_a_full_run_logs_no_secret(tmp_path: Path) -> None:
    async with world(
        tmp_path, lambda x: {"C100": "1000-2001"}, LOG_LEVEL="debug", METRICS_TOKEN=METRICS_TOKEN
    ) as w:
        log_path = tmp_path / "server.log"
        server = w.server(log_path)
        await server.start(w.url, w.session)
        w.slack.add_user("U200", display_name="Grace")
        w.slack.add_channel("C100", "support")
        pages: list[str] = []
        codes: list[str] = []

        # Messages, a file (downloaded with the bot token), an access token X stops accepting.
        file = w.slack.add_file("F1", name="a.png", mimetype="image/png", filetype="png", content=b"\x89PNG")
        for text, files in (("hello", None), ("with a file", [file])):
            result, _, _ = await w.sender.message("C100", "U100", text, files=files)
            assert result.status == 200
        await wait_until(lambda: len(w.x.events) == 2, 10.0, "the first DMs")
        for token in w.x.access_tokens.values():
            token.expires_at = 0  # X answers 401: the bridge refreshes (the refresh token goes out)
        await w.sender.message("C100", "U100", "after a refresh")
        await wait_until(lambda: len(w.x.events) == 3, 15.0, "the DM after the refresh")
        assert any(r["grant_type"] == "refresh_token" for r in w.x.token_requests)

        # A forged request, the metrics with and without the token, the health check.
        async with w.session.post(
            f"{w.url}/slack/events",
            data=b"{}",
            headers={"X-Slack-Request-Timestamp": "1", "X-Slack-Signature": "v0=" + "0" * 64},
        ) as response:
            assert response.status == 401
        for headers in ({}, {"Authorization": f"Bearer {METRICS_TOKEN}"}):
            async with w.session.get(f"{w.url}/metrics", headers=headers) as response:
                pages.append(await response.text())
        async with w.session.get(f"{w.url}/healthz") as response:
            pages.append(await response.text())

        # Connecting in a browser, a callback without the cookie, status, disconnect, reconnect.
        async with aiohttp.ClientSession(cookie_jar=browser_cookies()) as browser:
            w.x.authorizing_user_id = "2002"
            ack, _ = await command(w, "connect", user="U200")
            cookies: list[str] = []
            codes.append(await connect_in_browser(w, browser, ack, pages, cookies))
            async with w.session.get(f"{w.url}/x/oauth/callback?state=nope&code=abc") as response:
                pages.append(await response.text())
            await command(w, "status")
            ack, response_url = await command(w, "disconnect")
            await w.slack.wait_for_response(response_url, count=1, timeout=10.0)  # the question
            [confirm] = [b for b in w.slack.buttons("U100") if b.action_id == CONFIRM_DISCONNECT]
            click_url = w.slack.click_response_url(confirm)
            assert (await w.sender.click(confirm, user_id="U100", response_url=click_url)).status == 200
            await w.slack.wait_for_response(click_url, count=2, timeout=10.0)  # disconnected
            w.x.authorizing_user_id = ME
            ack, _ = await command(w, "connect")
            codes.append(await connect_in_browser(w, browser, ack, pages, cookies))
        await asyncio.sleep(0.5)
        assert await server.terminate() == 0

        with sqlite3.connect(w.db_path) as db:
            stored = [
                v for row in db.execute("SELECT access_token, refresh_token FROM accounts") for v in row if v
            ]
        secrets = {
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "SLACK_BOT_TOKEN": w.env["SLACK_BOT_TOKEN"],
            "X_CLIENT_SECRET": w.env["X_CLIENT_SECRET"],
            "BRIDGE_ENCRYPTION_KEY": w.env["BRIDGE_ENCRYPTION_KEY"],
            "METRICS_TOKEN": METRICS_TOKEN,
        }
        secrets |= {f"X access token {i}": t for i, t in enumerate(w.x.access_tokens)}
        secrets |= {f"X refresh token {i}": t for i, t in enumerate(w.x.refresh_tokens)}
        secrets |= {f"authorization code {i}": c for i, c in enumerate(codes)}
        secrets |= {f"browser cookie {i}": c for i, c in enumerate(cookies)}
        secrets |= {f"stored ciphertext {i}": c for i, c in enumerate(stored)}
        assert len(w.x.access_tokens) >= 4 and len(codes) == 2 and len(cookies) == 2

        log = log_path.read_text()
        assert "relayed to X" in log and "refreshed X token" in log and '"level": "debug"' in log
        said_in_slack = "\n".join(str(call.params) for call in w.slack.calls)
        said_in_slack += "\n".join(str(r) for rs in w.slack.responses.values() for r in rs)
        for where, text in (("the log", log), ("Slack", said_in_slack), ("a page", "\n".join(pages))):
            leaked = [name for name, value in secrets.items() if value in text]
            assert leaked == [], f"{', '.join(leaked)} found in {where}"
        # Whatever logs headers (slack_sdk does, at debug) shows no Authorization value.
        for value in re.findall(r"Authorization['\"]?:\s*['\"]([^'\"]*)", log, re.IGNORECASE):
            assert "redacted" in value, value
        assert not re.search(r"(Bearer|Basic) (?!\[redacted\])[A-Za-z0-9]", log)


def test_the_log_masks_configured_secrets_and_credential_shapes() -> None:
    import logging

    from adapters.web import logs

    logs._KNOWN[:] = ["a-configured-secret-value"]
    try:
        record = logging.makeLogRecord(
            {
                "msg": "x a-configured-secret-value Bearer abc.DEF-123 "
                "Basic dGVzdC1jbGllbnQ6dGVzdA== Basic Information",
                "levelname": "INFO",
            }
        )
        line = logs.JsonFormatter().format(record)
    finally:
        logs._KNOWN[:] = []
    assert "a-configured-secret-value" not in line and "abc.DEF" not in line and "dGVzdC1j" not in line
    assert "Basic Information" in line


def test_context_that_is_not_a_string_is_masked_too() -> None:
    """A library's ``extra=`` may carry headers or an exception object: they are masked as
    they are written out, not only when they arrive as strings."""
    import logging

    from adapters.web import logs

    logs._KNOWN[:] = ["a-configured-secret-value"]
    try:
        record = logging.makeLogRecord(
            {
                "msg": "request failed",
                "levelname": "WARNING",
                "headers": {"Authorization": "Bearer abc.DEF-123", "X-Secret": "a-configured-secret-value"},
                "error": ValueError("token xoxb-1-2-abcdef rejected"),
                "tokens": ["a-configured-secret-value"],
            }
        )
        lines = [logs.JsonFormatter().format(record), logs.TextFormatter().format(record)]
    finally:
        logs._KNOWN[:] = []
    for line in lines:
        assert "a-configured-secret-value" not in line and "abc.DEF" not in line, line
        assert "xoxb-1-2" not in line, line


def test_every_secret_setting_is_masked_in_the_log() -> None:
    """The log filter masks ``Settings.secrets``: a setting kept out of ``repr`` (a secret) but
    not listed there (push's X_CONSUMER_SECRET and X_BEARER_TOKEN were not) would be written
    out whole by any line or traceback that quoted it."""
    import dataclasses

    from bridge.settings import Settings

    hidden = [f for f in dataclasses.fields(Settings) if not f.repr]
    values = {
        f.name: (f"secret-{f.name}",) if f.name == "encryption_keys" else f"secret-{f.name}" for f in hidden
    }
    settings = Settings(x_client_id="client", **values)  # type: ignore[arg-type]
    expected = {f"secret-{f.name}" for f in hidden}
    assert expected <= set(settings.secrets), expected - set(settings.secrets)


def test_slacks_rotating_tokens_and_refresh_tokens_are_masked_by_their_shape() -> None:
    """Install mode's tokens are made at run time (not configured secrets): a rotating bot token
    (``xoxe.xoxb-…``) and its refresh token (``xoxe-…``) are masked whole, as ``xoxb-`` is."""
    import logging

    from adapters.web import logs

    record = logging.makeLogRecord(
        {
            "msg": "answer {'access_token': 'xoxe.xoxb-1-MTIzNDU2', 'refresh_token': 'xoxe-1-abcdef012345'}",
            "levelname": "DEBUG",
        }
    )
    for line in (logs.JsonFormatter().format(record), logs.TextFormatter().format(record)):
        assert "MTIzNDU2" not in line and "abcdef012345" not in line, line
        assert "xoxe" not in line, line
