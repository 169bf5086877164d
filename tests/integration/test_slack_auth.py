"""A Slack blip at start-up loses nothing: events are answered 5xx until the bridge is authorized."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import pytest

from adapters.sandbox.fake_slack import FakeSlack
from tests.harness import Bridge, linked, running_bridge, wait_until


def slack_down(slack: FakeSlack) -> None:
    slack.fail_next("auth.test", "fatal_error", count=10_000)


def accepted_rows(bridge: Bridge) -> int:
    with sqlite3.connect(bridge.db_path) as db:
        (n,) = db.execute("SELECT COUNT(*) FROM outbox").fetchone()
    return int(n)


OPERATOR = "operator-token-for-the-health-details"


async def health(bridge: Bridge) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {OPERATOR}"}  # the details are for the operator
    async with bridge.session.get(f"{bridge.url}/healthz", headers=headers) as response:
        body: dict[str, object] = await response.json()
        return body


async def test_events_get_5xx_while_auth_test_fails_and_the_retry_is_relayed_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with running_bridge(tmp_path, before_start=slack_down, env={"METRICS_TOKEN": OPERATOR}) as bridge:
        await wait_until(lambda: bool(bridge.slack.calls_to("auth.test")), 10.0, "a start-up auth.test")
        assert (await health(bridge))["slack"] == "unauthorized"
        # Slack is unreachable (for the bridge): the event must not be acknowledged.
        event = bridge.sender.message_event("C100", "U100", "sent during the blip", blocks=[])
        first = await bridge.sender.event(event, event_id="Ev0BLIP")
        assert first.status >= 500, (first.status, first.text)
        command, _ = await bridge.command("status")
        assert command.status >= 500
        assert any("auth.test" in r.getMessage() and r.levelno >= logging.WARNING for r in caplog.records)
        assert not any(r.exc_info for r in caplog.records if r.name.startswith("adapters"))

        bridge.slack.stop_failing("auth.test")
        for _ in range(200):  # the start-up retry (or a request) authorizes within seconds
            if (await health(bridge))["slack"] == "authorized":
                break
            await asyncio.sleep(0.1)
        assert (await health(bridge))["slack"] == "authorized"
        await linked(bridge)
        again = await bridge.sender.event(event, event_id="Ev0BLIP", retry_num=1)
        assert again.status == 200
        await bridge.wait_reaction("C100", str(event["ts"]), "white_check_mark")
        assert bridge.texts() == ["Ada: sent during the blip"]
        assert accepted_rows(bridge) == 1


async def test_auth_test_is_called_once_not_per_request(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        for i in range(3):
            _, ts = await bridge.post(f"message {i}", blocks=[])
            await bridge.wait_reaction("C100", ts, "white_check_mark")
        assert len(bridge.slack.calls_to("auth.test")) == 1
