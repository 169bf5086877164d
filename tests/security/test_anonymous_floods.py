"""Anyone may send the bridge's public routes a flood of requests it refuses: each refusal
may cost a line a minute in the log (per route and reason), never a line each. Logs on a dyno go
to a paid drain with a rate cap, so a line per request lets anyone bury the lines that matter."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from tests.harness import running_bridge

FLOOD = 30


async def test_floods_of_refused_requests_cost_a_line_a_minute(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_bridge(tmp_path) as bridge:
        # Let start-up log what it logs first.
        async with bridge.session.get(f"{bridge.url}/healthz") as response:
            assert response.status == 200
        caplog.clear()
        with caplog.at_level(logging.INFO, "adapters"):
            for n in range(FLOOD):
                # X's callback in a browser that confirmed nothing.
                async with bridge.session.get(
                    f"{bridge.url}/x/oauth/callback", params={"state": f"s{n}", "code": "c"}
                ) as response:
                    assert response.status == 400
                # The connect page's form posted without its cookie (cross-site, or a script).
                async with bridge.session.post(
                    f"{bridge.url}/x/connect", data={"state": f"s{n}", "csrf": "c"}
                ) as response:
                    assert response.status == 403
                # /metrics through a proxy, with no METRICS_TOKEN set.
                async with bridge.session.get(
                    f"{bridge.url}/metrics", headers={"X-Forwarded-For": "203.0.113.7"}
                ) as response:
                    assert response.status == 403
                # Slack's route with a current timestamp and a made-up signature.
                headers = {"X-Slack-Request-Timestamp": str(int(time.time())), "X-Slack-Signature": "v0=00"}
                async with bridge.session.post(
                    f"{bridge.url}/slack/events", data=b"{}", headers=headers
                ) as response:
                    assert response.status == 401
        lines = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.name.startswith("adapters")]
        assert len(lines) <= 4, "\n".join(lines[:12])
