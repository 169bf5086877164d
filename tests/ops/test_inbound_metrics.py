"""/metrics for X → Slack: each counter and gauge moves through the real inbound path, between
the loopback simulators (fake X polling and pushing, fake Slack refusing when told)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

from adapters.sandbox.fake_x import sign
from adapters.web.app import METRICS, create_app
from bridge.inbound import InboundConfig
from bridge.settings import Settings
from tests.harness import ALICE, BOB, ME, Bridge, running_bridge, wait_until
from tests.integration.test_inbound import CONVERSATION, posts, ready, wait_posts
from tests.integration.test_push import pushing, subscribed
from tests.ops.test_observability import Samples, scrape, value

HISTORY = InboundConfig(min_interval=0.05, idle_interval=0.2, retry_base=0.05, retry_cap=0.5, backfill=2)


def counted(bridge: Bridge, name: str, **labels: str) -> float:
    return bridge.app[METRICS].registry.get_sample_value(name, labels) or 0.0


async def test_posts_echoes_failures_reads_and_the_backlog_are_measured(tmp_path: Path) -> None:
    async with running_bridge(tmp_path, inbound=HISTORY) as bridge:
        before = await scrape(bridge)
        # Every label of a bounded set is there from the start, at 0.
        for origin in ("poll", "push", "backfill", "other"):
            assert value(before, "inbound_posted_total", origin=origin) == 0
        assert value(before, "inbound_failed_total", reason="msg_too_long") == 0
        assert value(before, "inbound_failed_total", reason="other") == 0
        assert value(before, "inbound_echoes_skipped_total") == 0
        assert value(before, "x_push_refused_total") == 0
        for state in ("queued", "held", "catching_up"):
            assert value(before, "inbound_waiting", state=state) == 0
        assert value(before, "inbound_oldest_waiting_age_seconds") == 0

        # History, on linking: posted as backfill.
        for i in range(3):
            bridge.x.add_event(CONVERSATION, ALICE, f"old {i}")
        await ready(bridge)
        await wait_posts(bridge, 2)
        await wait_until(
            lambda: counted(bridge, "inbound_posted_total", origin="backfill") == 2, 10, "backfill"
        )

        # A reply, read by polling.
        bridge.x.add_event(CONVERSATION, ALICE, "polled")
        await wait_posts(bridge, 3)
        await wait_until(lambda: counted(bridge, "inbound_posted_total", origin="poll") == 1, 10, "poll")

        # What the bridge sent, read back: an echo, not posted.
        _, ts = await bridge.post("from slack")
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        await wait_until(lambda: counted(bridge, "inbound_echoes_skipped_total") == 1, 10, "an echo")

        # Slack refuses a message and the line in its place: failed for good, by the message's reason.
        bridge.slack.text_errors["BOOM"] = "msg_too_long"
        bridge.slack.text_errors["could not be shown"] = "invalid_arguments"
        bridge.x.add_event(CONVERSATION, ALICE, "BOOM")
        await wait_until(
            lambda: counted(bridge, "inbound_failed_total", reason="msg_too_long") == 1, 10, "a failure"
        )
        status, _ = await bridge.command("status")
        assert "; 1 could not be posted here (last: Slack refused the message (msg_too_long)" in status.text

        # X failing a read: counted as an error, and the read after it as ok.
        ok = counted(bridge, "x_dm_reads_total", outcome="ok")
        assert ok >= 2
        bridge.x.inject("503", path_contains="/2/dm_events")
        await wait_until(
            lambda: counted(bridge, "x_dm_reads_total", outcome="error") == 1, 10, "a failed read"
        )
        await wait_until(
            lambda: counted(bridge, "x_dm_reads_total", outcome="ok") > ok, 10, "a read after it"
        )

        # Slack refusing the channel: what comes waits, and the gauges show it.
        bridge.slack.channel_errors["C100"] = "is_archived"
        bridge.x.add_event(CONVERSATION, ALICE, "waits 1")
        bridge.x.add_event(CONVERSATION, ALICE, "waits 2")
        waiting = await backlog(bridge, "queued", 2)
        assert value(waiting, "inbound_waiting", state="held") == 0
        assert value(waiting, "inbound_oldest_waiting_age_seconds") > 0
        del bridge.slack.channel_errors["C100"]
        await wait_until(
            lambda: counted(bridge, "inbound_posted_total", origin="poll") == 3, 15, "the wait over"
        )
        after = await scrape(bridge)
        assert value(after, "inbound_waiting", state="queued") == 0
        assert value(after, "inbound_oldest_waiting_age_seconds") == 0
        assert value(after, "inbound_posted_total", origin="push") == 0
        assert [m["text"] for m in posts(bridge)][-2:] == ["waits 1", "waits 2"]


async def test_a_paused_channels_backlog_is_held(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await ready(bridge)
        bridge.slack.channel_errors["C100"] = "not_in_channel"
        bridge.x.add_event(CONVERSATION, ALICE, "waits")
        samples = await backlog(bridge, "queued", 1)
        # Its owner disconnects the account: the channel is paused, what waits for it is held.
        _, url = await bridge.confirmed("disconnect")
        await bridge.follow_up(url, count=2)
        samples = await backlog(bridge, "held", 1)
        assert value(samples, "inbound_waiting", state="queued") == 0
        del bridge.slack.channel_errors["C100"]
        await bridge.connect()
        await wait_posts(bridge, 1)
        await backlog(bridge, "held", 0)


async def backlog(bridge: Bridge, state: str, count: int) -> Samples:
    """The scrape once ``inbound_waiting{state}`` reads ``count``."""
    samples: Samples = {}
    for _ in range(500):
        samples = await scrape(bridge)
        if value(samples, "inbound_waiting", state=state) == count:
            return samples
        await asyncio.sleep(0.02)
    raise AssertionError(f"inbound_waiting{{state={state!r}}} never read {count}")


async def test_pushes_posted_and_forged_pushes_refused_are_counted(tmp_path: Path) -> None:
    async with pushing(tmp_path) as bridge:
        await subscribed(bridge)
        bridge.x.add_event(CONVERSATION, ALICE, "pushed")
        await wait_posts(bridge, 1, timeout=3.0)
        await wait_until(lambda: counted(bridge, "inbound_posted_total", origin="push") == 1, 10, "a push")
        event = bridge.x.add_event(f"{ME}-{BOB}", BOB, "not bridged")
        raw = json.dumps(bridge.x.payload_for(event, "dm.received", ME, None)).encode()
        headers = {"Content-Type": "application/json", "x-twitter-webhooks-signature": sign("wrong", raw)}
        async with bridge.session.post(f"{bridge.url}/x/webhook", data=raw, headers=headers) as response:
            assert response.status == 401
        samples = await scrape(bridge)
        assert value(samples, "x_push_refused_total") == 1
        assert value(samples, "inbound_posted_total", origin="push") == 1


def test_the_docs_list_every_metric_once() -> None:
    """docs/monitoring.md's metrics table names each family the registry exports, once, with its labels."""
    settings = Settings(signing_secret="s", bot_token="xoxb-t", x_client_id="c", encryption_keys=("k",))
    registry = create_app(settings)[METRICS].registry
    table = (Path(__file__).resolve().parents[2] / "docs" / "monitoring.md").read_text()
    rows = re.findall(r"^\| `([a-z_]+)(?:\{([a-z_,]+)\})?` \|", table, flags=re.MULTILINE)
    listed = {name: labels for name, labels in rows}
    assert len(rows) == len(listed), "a metric is listed twice"
    exported: dict[str, str | None] = {}
    for family in registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        # A labelled family shows its labels once it has a sample (the per-account gauge and the
        # latency histograms have none before the first account and request).
        label_names = {k for s in family.samples for k in s.labels if k != "le"}
        exported[name] = ",".join(sorted(label_names)) if family.samples else None
    assert set(listed) == set(exported)
    for name, labels in exported.items():
        if labels is not None:
            assert listed[name] == labels, name
