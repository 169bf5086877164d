"""METRICS_TOKEN guards /metrics (this machine alone reads it without one); /healthz tells the
public only up or down."""

from __future__ import annotations

from pathlib import Path

from tests.harness import running_bridge


async def test_metrics_need_the_token_and_healthz_details_too(tmp_path: Path) -> None:
    async with running_bridge(tmp_path, env={"METRICS_TOKEN": "s3cret-metrics"}) as bridge:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-metrics"}):
            async with bridge.session.get(f"{bridge.url}/metrics", headers=headers) as response:
                assert response.status == 401 and "Bearer" in response.headers["WWW-Authenticate"]
                assert "bridge_" not in await response.text()
        good = {"Authorization": "Bearer s3cret-metrics"}
        async with bridge.session.get(f"{bridge.url}/metrics", headers=good) as response:
            assert response.status == 200 and "outbox_depth" in await response.text()

        async with bridge.session.get(f"{bridge.url}/healthz") as response:
            assert response.status == 200 and await response.json() == {"status": "ok"}
        async with bridge.session.get(f"{bridge.url}/healthz", headers=good) as response:
            details = await response.json()
            assert details["database"] == "ok" and "accounts_needing_reconnect" in details


async def test_without_a_token_metrics_answer_only_this_machine(tmp_path: Path) -> None:
    """Private by default: a scraper beside the bridge reads /metrics, nothing forwarded does.
    Heroku's router (and any proxy) appends the client's address to X-Forwarded-For."""
    async with running_bridge(tmp_path) as bridge:
        async with bridge.session.get(f"{bridge.url}/metrics") as response:
            assert response.status == 200 and "outbox_depth" in await response.text()
        for forwarded in (
            {"X-Forwarded-For": "203.0.113.7"},
            {"X-Forwarded-For": "127.0.0.1, 198.51.100.2"},
            {"Forwarded": 'for="[2001:db8::1]:4711";proto=https'},
            {"Forwarded": "for=_hidden"},
            # A proxy on this machine that names the client otherwise (nginx's usual X-Real-IP,
            # a Cloudflare tunnel's CF-Connecting-IP), or only says it is one (Via).
            {"X-Real-IP": "203.0.113.7"},
            {"CF-Connecting-IP": "2001:db8::7"},
            {"True-Client-IP": "203.0.113.7"},
            {"Fly-Client-IP": "203.0.113.7"},
            {"Via": "1.1 proxy.example"},
            {"X-Forwarded-For": "::ffff:203.0.113.7"},  # an IPv4 client as a dual-stack proxy writes it
        ):
            async with bridge.session.get(f"{bridge.url}/metrics", headers=forwarded) as response:
                assert response.status == 403, forwarded
                body = await response.text()
                assert "METRICS_TOKEN" in body and "outbox_depth" not in body
        local_proxy = {"X-Forwarded-For": "127.0.0.1", "Forwarded": 'for="127.0.0.1:5000"'}
        async with bridge.session.get(f"{bridge.url}/metrics", headers=local_proxy) as response:
            assert response.status == 200
        # This machine over IPv4 as a dual-stack socket (``--host ::``) names it: loopback too,
        # whatever Python's ipaddress says of mapped addresses (3.13 changed it).
        mapped = {"X-Forwarded-For": "::ffff:127.0.0.1", "Forwarded": 'for="[::ffff:127.0.0.1]:5000"'}
        async with bridge.session.get(f"{bridge.url}/metrics", headers=mapped) as response:
            assert response.status == 200
        async with bridge.session.get(
            f"{bridge.url}/healthz", headers={"Authorization": "Bearer "}
        ) as response:
            assert await response.json() == {"status": "ok"}
