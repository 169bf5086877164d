"""Many X accounts whose tokens expire at once: every refresh finishes, every message goes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.harness import ALICE, running_bridge, wait_until

pytestmark = pytest.mark.usefixtures("on_both_stores")

ACCOUNTS = 12  # more than the PostgreSQL store's pool has connections (10)


async def test_accounts_refreshing_at_once_all_deliver(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        people = [(f"U{600 + n}", f"C{600 + n}", str(3000 + n)) for n in range(ACCOUNTS)]
        for user, channel, x_user in people:
            bridge.slack.add_user(user, display_name=f"P{x_user}", real_name=f"Person {x_user}")
            bridge.slack.add_channel(channel, f"room-{channel.lower()}")
            bridge.x.add_user(x_user, f"p{x_user}", f"Person {x_user}")
            await bridge.connect(user=user, channel=channel, x_user=x_user)
            await bridge.map_link(f"{ALICE}-{x_user}", user=user, channel=channel)
        for token in bridge.x.access_tokens.values():
            token.expires_at = 0.0  # every access token expires at once: X answers 401 to each
        # Refreshes slow enough to overlap: each holds its account's refresh lock meanwhile.
        bridge.x.token_delay = 1.0
        refreshes_before = len(bridge.x.token_requests)
        # A correctness deadline, not a speed figure: stuck refreshes never deliver at all (and
        # the database's connections all held by them, Slack's events are not even answered).
        async with asyncio.timeout(30.0):
            for user, channel, x_user in people:
                await bridge.post(f"from {x_user}", channel=channel, user=user)
            async with bridge.session.get(f"{bridge.url}/healthz") as response:
                assert response.status == 200  # answered while the refreshes are under way
            await wait_until(lambda: len(bridge.x.events) >= ACCOUNTS, 30.0, "every account's DM at X")
        assert sorted(bridge.texts()) == sorted(f"P{x}: from {x}" for _, _, x in people)
        refreshed = bridge.x.token_requests[refreshes_before:]
        assert {r["grant_type"] for r in refreshed} == {"refresh_token"}
        assert all(r["status"] == 200 for r in refreshed)  # no refresh token spent twice
        assert len(refreshed) == ACCOUNTS  # one each, however many callers met the 401
