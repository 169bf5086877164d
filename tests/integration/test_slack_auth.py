"""A Slack blip at start-up loses nothing: events are answered 5xx until the bridge is authorized."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from adapters.sandbox.fake_slack import FakeSlack
from tests.harness import Bridge, linked, running_bridge, wait_until


def slack_down(slack: FakeSlack) -> None:
    slack.fail_next("auth.test", "fatal_error", count=10_000)


async def accepted_rows(bridge: Bridge) -> int:
    [(n,)] = await bridge.sql("SELECT COUNT(*) FROM outbox")
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
        assert (await accepted_rows(bridge)) == 1


async def test_auth_test_is_called_once_not_per_request(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        for i in range(3):
            _, ts = await bridge.post(f"message {i}", blocks=[])
            await bridge.wait_reaction("C100", ts, "white_check_mark")
        assert len(bridge.slack.calls_to("auth.test")) == 1


async def health_status(bridge: Bridge, *, operator: bool = True) -> tuple[int, dict[str, object]]:
    headers = {"Authorization": f"Bearer {OPERATOR}"} if operator else {}
    async with bridge.session.get(f"{bridge.url}/healthz", headers=headers) as response:
        body: dict[str, object] = await response.json()
        return response.status, body


def refusal_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "SLACK_BOT_TOKEN" in r.getMessage()]


async def test_a_token_refused_for_good_at_start_up_is_not_retried_and_health_says_down(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    def refused(slack: FakeSlack) -> None:
        slack.fail_next("auth.test", "invalid_auth", count=10_000)

    async with running_bridge(tmp_path, before_start=refused, env={"METRICS_TOKEN": OPERATOR}) as bridge:
        await wait_until(lambda: bool(refusal_lines(caplog)), 10.0, "the refusal logged")
        status, body = await health_status(bridge)
        assert status == 503 and body["status"] == "down"
        assert body["slack"] == "refused (invalid_auth)"
        assert (await health_status(bridge, operator=False)) == (503, {"status": "down"})
        # Not a blip: a request does not try again either, and nobody is told to wait.
        event = bridge.sender.message_event("C100", "U100", "hello", blocks=[])
        assert (await bridge.sender.event(event, event_id="Ev0REFUSED")).status == 503
        assert len(bridge.slack.calls_to("auth.test")) == 1
        [line] = refusal_lines(caplog)
        assert "invalid_auth" in line and "xoxb-test" not in line


async def test_a_token_revoked_while_running_turns_health_down_and_events_are_still_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with running_bridge(tmp_path, env={"METRICS_TOKEN": OPERATOR}) as bridge:
        await linked(bridge)
        assert (await health_status(bridge))[0] == 200
        # Slack refuses the bot's next calls: the token was revoked under the running bridge.
        for method in ("reactions.add", "reactions.remove", "chat.postMessage"):
            bridge.slack.fail_next(method, "token_revoked", count=100)
        event = bridge.sender.message_event("C100", "U100", "after the revocation", blocks=[])
        answer = await bridge.sender.event(event, event_id="Ev0REVOKED")
        assert answer.status == 200
        await wait_until(lambda: bool(bridge.x.events), 10.0, "the message reaches X all the same")
        await wait_until(lambda: bool(refusal_lines(caplog)), 10.0, "the refusal logged")
        status, body = await health_status(bridge)
        assert status == 503 and body["status"] == "down" and body["slack"] == "refused (token_revoked)"
        assert body["database"] == "ok"
        # Another message is still committed (nothing lost), and the operator is told once.
        later = bridge.sender.message_event("C100", "U100", "still kept", blocks=[])
        assert (await bridge.sender.event(later, event_id="Ev0LATER")).status == 200
        await wait_until(lambda: len(bridge.x.events) == 2, 10.0, "the second message reaches X")
        assert (await accepted_rows(bridge)) == 2
        assert len(refusal_lines(caplog)) == 1


@pytest.mark.parametrize(
    ("event", "down"),
    [
        ({"type": "app_uninstalled"}, True),
        ({"type": "tokens_revoked", "tokens": {"bot": ["UBOT"]}}, True),
        # Only user tokens (the bridge holds none): the bot's token still works.
        ({"type": "tokens_revoked", "tokens": {"oauth": ["U100"]}}, False),
    ],
)
async def test_uninstall_and_revocation_events_turn_health_down(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, event: dict[str, object], down: bool
) -> None:
    caplog.set_level(logging.INFO)
    async with running_bridge(tmp_path, env={"METRICS_TOKEN": OPERATOR}) as bridge:
        await linked(bridge)
        answer = await bridge.sender.event(event, event_id="Ev0GONE")
        assert answer.status == 200  # acknowledged, so Slack does not send it again
        status, body = await health_status(bridge)
        if down:
            assert status == 503 and body["status"] == "down"
            assert body["slack"] == f"refused ({event['type']})"
            assert len(refusal_lines(caplog)) == 1
        else:
            assert status == 200 and body["slack"] == "authorized"
            assert refusal_lines(caplog) == []
        # Messages are still committed and relayed either way.
        posted, _ = await bridge.post("after the event", blocks=[])
        assert posted.status == 200
        await wait_until(lambda: bool(bridge.x.events), 10.0, "the message reaches X")
        assert (await accepted_rows(bridge)) == 1
