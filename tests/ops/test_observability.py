"""/metrics, /healthz and the log lines an operator relies on, on a running bridge."""

from __future__ import annotations

import logging
import sqlite3
import warnings
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapters.web.app import METRICS, create_app
from adapters.web.metrics import FAILURE_REASONS, worker_state, x_endpoint
from adapters.x.api import REFUSAL_CODES, REFUSAL_FAILURES, XApiClient
from bridge import tokens
from bridge.errors import Failure, XRefused
from bridge.settings import Settings
from tests.harness import ALICE, Bridge, running_bridge, wait_until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def operator(bridge: Bridge) -> dict[str, str]:
    """The Authorization an operator's scraper sends when METRICS_TOKEN is set."""
    token = bridge.settings.metrics_token
    return {"Authorization": f"Bearer {token}"} if token else {}


async def scrape(bridge: Bridge) -> Samples:
    async with bridge.session.get(f"{bridge.url}/metrics", headers=operator(bridge)) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await response.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum over every label set that includes ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


async def linked(bridge: Bridge) -> None:
    await bridge.connect()
    await bridge.map_link("1000-2001")


async def test_metrics_after_relaying_a_message(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        bridge.x.user_limit_15m, bridge.x.user_limit_24h = 40, 1000
        await linked(bridge)
        before = await scrape(bridge)
        assert value(before, "messages_accepted_total") == 0
        assert value(before, "messages_failed_total", reason="recipient_refuses_dms") == 0

        _, ts = await bridge.post("measured")
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        await wait_until(
            lambda: bridge.app[METRICS].registry.get_sample_value("messages_relayed_total") == 1,
            5,
            "relayed counter",
        )
        after = await scrape(bridge)
        [(owner,)] = await bridge.sql("SELECT id FROM accounts WHERE x_username = ?", "bridge_owner")
        # Labelled by the bridge's account number: a scrape never names an X account.
        assert not any("bridge_owner" in dict(labels).values() for _, labels in after)
        assert value(after, "messages_accepted_total") == 1
        assert value(after, "messages_relayed_total") == 1
        assert value(after, "outbox_depth") == 0
        assert value(after, "outbox_oldest_age_seconds") == 0
        # The bridge starts at X's documented 15 / 1,440; X's headers (here 40 / 1,000) win.
        assert value(after, "x_rate_limit_remaining", account=str(owner), window="15m") == 39
        assert value(after, "x_rate_limit_remaining", account=str(owner), window="24h") == 999
        assert ("x_rate_limit_remaining", (("account", "app"), ("window", "24h"))) in after
        sent = total(
            after, "x_request_seconds_count", method="POST", endpoint="/2/dm_conversations/{id}/messages"
        )
        assert sent == 1
        assert total(after, "x_request_seconds_count", endpoint="/2/users/me") >= 1
        assert total(after, "x_request_seconds_count", endpoint="/2/oauth2/token") == 1
        assert total(after, "slack_request_seconds_count", method="reactions.add") >= 1
        assert total(after, "slack_request_seconds_count", method="users.info") >= 1
        assert total(after, "x_request_seconds_sum") > 0


async def test_refusals_are_counted_by_reason(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        bridge.x.users[ALICE].accepts_dms = False
        bridge.x.dm_refusal_body = "code349"
        await linked(bridge)
        registry = bridge.app[METRICS].registry
        _, ts = await bridge.post("nobody home")
        await bridge.wait_reaction("C100", ts, "warning")
        await wait_until(
            lambda: (
                registry.get_sample_value("messages_failed_total", {"reason": "recipient_refuses_dms"}) == 1
            ),
            5,
            "failure",
        )
        samples = await scrape(bridge)
        assert value(samples, "messages_failed_total", reason="recipient_refuses_dms") == 1
        assert value(samples, "messages_relayed_total") == 0


async def test_waiting_messages_show_in_depth_and_healthz_names_accounts_to_reconnect(tmp_path: Path) -> None:
    async with running_bridge(tmp_path, env={"METRICS_TOKEN": "ops-token"}) as bridge:
        await linked(bridge)
        async with bridge.session.get(f"{bridge.url}/healthz", headers=operator(bridge)) as response:
            healthy = await response.json()
        assert response.status == 200
        assert healthy["worker"] == "ok" and healthy["worker_heartbeat_age"] < 5
        assert healthy["accounts_needing_reconnect"] == {"count": 0, "usernames": []}

        with sqlite3.connect(bridge.db_path) as db:
            db.execute("UPDATE accounts SET needs_reconnect = 1")
        result, _ = await bridge.post("held")
        assert result.status == 200

        def parked() -> bool:
            row = sqlite3.connect(bridge.db_path).execute("SELECT state FROM outbox").fetchone()
            return row is not None and row[0] == "waiting"

        await wait_until(parked, 5, "the message parked for reconnection")
        samples = await scrape(bridge)
        assert value(samples, "outbox_depth") == 1
        assert value(samples, "outbox_oldest_age_seconds") > 0
        async with bridge.session.get(f"{bridge.url}/healthz", headers=operator(bridge)) as response:
            body = await response.json()
        assert response.status == 200  # a user's reconnection is not the process's health
        assert body["accounts_needing_reconnect"] == {"count": 1, "usernames": ["bridge_owner"]}
        assert body["status"] == "ok" and body["database"] == "ok"


async def test_bad_signature_is_logged_with_the_likely_cause(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_bridge(tmp_path) as bridge:
        caplog.set_level(logging.WARNING, logger="adapters.web.app")
        body = b'{"type": "event_callback"}'
        headers = bridge.sender.sign(body)
        headers["X-Slack-Signature"] = "v0=" + "0" * 64
        async with bridge.session.post(f"{bridge.url}/slack/events", data=body, headers=headers) as response:
            assert response.status == 401
        [record] = [r for r in caplog.records if "signature does not verify" in r.getMessage()]
        assert "SLACK_SIGNING_SECRET" in record.__dict__["likely_cause"]
        assert abs(record.__dict__["clock_skew_seconds"]) <= 5

        stale = bridge.sender.sign(body, timestamp=1_000_000_000)
        async with bridge.session.post(f"{bridge.url}/slack/events", data=body, headers=stale) as response:
            assert response.status == 401
        assert any("server clock" in str(r.__dict__.get("likely_cause")) for r in caplog.records)


def test_each_app_has_its_own_registry() -> None:
    settings = Settings(signing_secret="s", bot_token="xoxb-t", x_client_id="c", encryption_keys=("k",))
    first, second = create_app(settings), create_app(settings)
    assert first[METRICS].registry is not second[METRICS].registry
    first[METRICS].accepted.inc()
    assert b"messages_accepted_total 1.0" in first[METRICS].render()
    assert b"messages_accepted_total 0.0" in second[METRICS].render()


def test_endpoints_and_worker_state_are_labelled_few_ways() -> None:
    assert x_endpoint("/2/dm_conversations/with/2001/messages") == "/2/dm_conversations/with/{id}/messages"
    assert x_endpoint("/2/users/by/username/alice") == "/2/users/by/username/{username}"
    assert worker_state(heartbeat=100.0, now=150.0, uptime=500.0, stale_after=60.0) == "ok"
    assert worker_state(heartbeat=100.0, now=170.0, uptime=500.0, stale_after=60.0) == "stale"
    assert worker_state(heartbeat=0.0, now=170.0, uptime=10.0, stale_after=60.0) == "starting"


def test_x_endpoint_labels_name_no_conversation_media_or_person() -> None:
    """Every X call is timed under its path as a label: an id left in it makes one series per
    group conversation (X Chat's ``g…`` ids) or per photo received (a TON resource id such as
    ``m42.jpg``), so /metrics grows with every DM that brings a file, and names conversations."""
    calls = {
        "/2/chat/conversations/g1849302930/events": "/2/chat/conversations/{id}/events",
        "/2/chat/conversations/g77/messages/delete": "/2/chat/conversations/{id}/messages/delete",
        "/2/chat/conversations/2001/keys": "/2/chat/conversations/{id}/keys",
        "/2/dm_conversations/media/1900/1901/m1901.jpg": "/2/dm_conversations/media/{id}/{id}/{id}",
        "/2/dm_conversations/media/1900/1901/AbC_d-E.png": "/2/dm_conversations/media/{id}/{id}/{id}",
        "/2/webhooks/wh-abc123": "/2/webhooks/{id}",
        "/2/users/by/username/Ada%20L": "/2/users/by/username/{username}",
        "/2/users/2001/public_keys": "/2/users/{id}/public_keys",
        "/2/media/upload/7yZ/append": "/2/media/upload/{id}/append",
        "/2/dm_events/1999": "/2/dm_events/{id}",
        "/2/dm_conversations/with/2001/dm_events": "/2/dm_conversations/with/{id}/dm_events",
        "/2/chat/conversations/group/initialize": "/2/chat/conversations/group/initialize",
        "/2/webhooks/replay": "/2/webhooks/replay",
        "/2/users/me": "/2/users/me",
    }
    assert {path: x_endpoint(path) for path in calls} == calls


async def test_start_up_warns_about_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As on a dyno: the bot token is in the environment, which Bolt also reads on its own.
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-from-the-environment")
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with running_bridge(tmp_path) as bridge:
            await linked(bridge)  # the first Slack request, where Bolt checks its token
    noisy = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.WARNING]
    assert noisy == []
    assert [str(w.message) for w in caught] == []
    assert any(r.getMessage() == "bridge ready" for r in caplog.records)  # the capture did see start-up


async def failed_count(bridge: Bridge, reason: str, count: int) -> None:
    registry = bridge.app[METRICS].registry
    await wait_until(
        lambda: registry.get_sample_value("messages_failed_total", {"reason": reason}) == count, 5, reason
    )


async def test_each_way_a_message_fails_is_counted_under_its_own_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No path in the bridge deletes an account; an operator's hand in the database does, and the
    # worker trusts its copy of an account for ACCOUNT_TTL. Trust it for no time at all here.
    monkeypatch.setattr(tokens, "ACCOUNT_TTL", 0.0)
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        fired: list[str] = []

        async def fails(reason: str, text: str, **kw: object) -> None:
            _, ts = await bridge.post(text, **kw)  # type: ignore[arg-type]
            await bridge.wait_reaction("C100", ts, "warning")
            await failed_count(bridge, reason, 1)
            fired.append(reason)

        await fails("empty_message", "", blocks=[])
        pdf = bridge.slack.add_file(
            "F3", name="report.pdf", mimetype="application/pdf", filetype="pdf", content=b"%PDF-1.4"
        )
        await fails("file_unusable", "", files=[pdf], blocks=[])
        bridge.x.inject("403")
        await fails("forbidden", "forbidden today")
        bridge.x.max_text_length = 5
        await fails("bad_request", "longer than five")
        bridge.x.max_text_length = 10_000
        bridge.x.users[ALICE].accepts_dms = False
        bridge.x.dm_refusal_body = "code349"
        await fails("recipient_refuses_dms", "nobody home")
        bridge.x.users[ALICE].accepts_dms = True
        # An accepted message whose account is gone by the time it may be sent (X held it back).
        bridge.x.injected_reset_seconds = 1.0
        bridge.x.inject("429")
        _, ts = await bridge.post("after the account went")

        def waiting() -> bool:
            row = (
                sqlite3.connect(bridge.db_path)
                .execute("SELECT state FROM outbox ORDER BY id DESC")
                .fetchone()
            )
            return row is not None and row[0] == "waiting"

        await wait_until(waiting, 5, "the message held by the 429")
        with sqlite3.connect(bridge.db_path) as db:
            db.execute("PRAGMA foreign_keys = OFF")
            db.execute("DELETE FROM accounts")
        await bridge.wait_reaction("C100", ts, "warning")
        await failed_count(bridge, "account_disconnected", 1)
        fired.append("account_disconnected")

        samples = await scrape(bridge)
        counted = {dict(ls)["reason"]: v for (n, ls), v in samples.items() if n == "messages_failed_total"}
        assert set(counted) == set(FAILURE_REASONS)  # every reason is exported, at 0 until it fires
        assert {r for r, v in counted.items() if v} == set(fired) and all(counted[r] == 1 for r in fired)


def test_x_error_codes_become_typed_failures_whatever_the_wording() -> None:
    raise_for = XApiClient._raise_for
    client = XApiClient.__new__(XApiClient)  # _raise_for reads nothing of the client's state
    expected = {
        349: "recipient_refuses_dms",
        150: "recipient_refuses_dms",
        476: "recipient_refuses_dms",
        226: "spam_filter",
        151: "duplicate",
        354: "too_long",
        93: "app_not_permitted",
    }
    assert {code: f.value for code, f in REFUSAL_FAILURES.items()} == expected
    assert set(REFUSAL_FAILURES) == set(REFUSAL_CODES)
    for code, reason in expected.items():
        body = {"errors": [{"code": code, "message": "any words at all"}]}
        with pytest.raises(XRefused) as caught:
            raise_for(client, 403, {}, body)
        assert caught.value.failure is Failure(reason)
    for status, reason in ((400, "bad_request"), (403, "forbidden"), (404, "not_found"), (410, "other")):
        with pytest.raises(XRefused) as caught:
            raise_for(client, status, {}, {"title": "Something", "detail": "new wording"})
        assert caught.value.failure is Failure(reason)
