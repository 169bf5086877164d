"""`/xdm disconnect` and `xdm-bridge accounts disconnect`: revoke, forget, pause; nothing lost."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.ops.cli import main
from adapters.sandbox.fake_x import AccessToken, RefreshToken
from tests.harness import Bridge, bridge_env, linked, running_bridge, wait_until


async def rows_until(
    bridge: Bridge, sql: str, done: Callable[[list[tuple[Any, ...]]], bool], what: str
) -> None:
    """Wait (up to 10 s) until ``sql`` on the bridge's database answers what ``done`` accepts."""
    found: list[tuple[Any, ...]] = []
    for _ in range(500):
        found = await bridge.sql(sql)
        if done(found):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"waiting for {what}: {sql} gave {found}")


def x_tokens_live(bridge: Bridge, user_id: str) -> list[str]:
    tokens: list[AccessToken | RefreshToken] = [
        *bridge.x.access_tokens.values(),
        *bridge.x.refresh_tokens.values(),
    ]
    return [t.user_id for t in tokens if t.user_id == user_id and not t.revoked]


def notices(bridge: Bridge, channel: str) -> list[str]:
    return [
        str(c.params.get("text"))
        for c in bridge.slack.calls
        if c.method == "chat.postMessage" and c.params.get("channel") == channel
    ]


async def test_disconnect_with_messages_queued_loses_nothing_and_reconnect_resumes(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        await bridge.map_link("1000-2002", channel="C200")
        bridge.x.inject("503", count=10_000)  # X is down: the first message keeps waiting to be sent
        _, first = await bridge.post("queued before disconnect")
        await rows_until(bridge, "SELECT attempts FROM outbox", lambda r: r[0][0] >= 1, "a failed attempt")

        ack, response_url = await bridge.confirmed("disconnect")
        assert "Disconnecting @bridge_owner" in ack.text
        told = await bridge.follow_up(response_url, count=2)
        bridge.x.clear_faults()
        assert "Disconnected X account @bridge_owner" in told["text"] and "X revoked" in told["text"]
        assert "<#C100>" in told["text"] and "<#C200>" in told["text"]

        assert x_tokens_live(bridge, "1000") == []  # revoked at X, refresh and access token
        assert await bridge.sql("SELECT access_token, refresh_token FROM accounts") == [("", None)]
        paused = await bridge.sql("SELECT channel_id, paused_by FROM mappings ORDER BY channel_id")
        assert paused == [("C100", "U100"), ("C200", "U100")]
        for channel in ("C100", "C200"):

            def noticed(channel: str = channel) -> bool:
                return bool(notices(bridge, channel))

            await wait_until(noticed, 5.0, "a notice")
            assert any("<@U100> disconnected X account @bridge_owner" in n for n in notices(bridge, channel))

        result, second = await bridge.post("posted while paused", channel="C200")
        assert result.status == 200
        # Both held: the one X answered 503 stays "sending" (a 5xx may still have reached X,
        # so it is read back before any resend), the other waits.
        held = "SELECT COUNT(*) FROM outbox WHERE state IN ('waiting', 'sending')"
        await rows_until(bridge, held, lambda r: r == [(2,)], "both messages waiting")
        assert bridge.x.events == []  # nothing reached X in between
        ack, _ = await bridge.command("status", channel="C200")
        assert "paused" in ack.text and "2 message(s) waiting" not in ack.text  # one per channel
        ack, _ = await bridge.command("link 1000-2003", channel="C200")
        assert "needs reconnecting" in ack.text  # no new mappings on a disconnected account

        await bridge.connect()
        await bridge.wait_reaction("C100", first, "white_check_mark")
        await bridge.wait_reaction("C200", second, "white_check_mark")
        assert sorted(bridge.texts()) == ["Ada: posted while paused", "Ada: queued before disconnect"]
        assert await bridge.sql("SELECT COUNT(*) FROM mappings WHERE paused_at IS NOT NULL") == [(0,)]
        assert any("resumes" in n for n in notices(bridge, "C200"))


async def test_disconnect_without_an_account_says_so(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        ack, _ = await bridge.confirmed("disconnect")
        assert "nothing to disconnect" in ack.text


async def test_operator_disconnects_an_account_from_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        env = bridge_env(
            bridge.db_path,
            bridge.x_url,
            bridge.settings.slack_api_url,
            bridge.settings.port,
            BRIDGE_ENCRYPTION_KEY=",".join(bridge.settings.encryption_keys),
        )
        for name, value in env.items():
            monkeypatch.setenv(name, value)

        assert await asyncio.to_thread(main, ["accounts", "disconnect", "99"]) == 1
        assert "no X account with id 99" in capsys.readouterr().err

        assert await asyncio.to_thread(main, ["accounts", "disconnect", "1"]) == 0
        out = capsys.readouterr().out
        assert "disconnected account 1 (@bridge_owner)" in out and "C100" in out
        assert x_tokens_live(bridge, "1000") == []
        await bridge.slack.wait_for(
            lambda c: c.method == "chat.postMessage" and c.params.get("channel") == "C100", timeout=5.0
        )
        assert any("The bridge's operator disconnected" in n for n in notices(bridge, "C100"))
        assert await asyncio.to_thread(main, ["accounts", "disconnect", "1"]) == 1
        assert "already disconnected" in capsys.readouterr().err
