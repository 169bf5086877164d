"""One message cannot make the bridge hammer Slack: users.info is bounded per message and cached."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from adapters.sandbox.fake_slack import run_fake_slack
from adapters.slack.api import SlackApi, web_client
from bridge.render import MENTION_LOOKUPS
from tests.harness import linked, running_bridge


async def test_three_thousand_mentions_cost_a_bounded_number_of_lookups(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        for i in range(3000):
            bridge.slack.add_user(f"U9{i:05d}", display_name=f"person{i}")
        await linked(bridge)
        bridge.slack.clear_calls()
        mentions = " ".join(f"<@U9{i:05d}>" for i in range(3000))
        _, ts = await bridge.post(f"hello {mentions} <@U200> <@U200> <@U200>", blocks=[])
        await bridge.wait_reaction("C100", ts, "white_check_mark", timeout=30.0)
        lookups = bridge.slack.calls_to("users.info")
        # The author, and at most the bound of mentioned users: never one call per mention.
        assert len(lookups) <= MENTION_LOOKUPS + 1, len(lookups)
        assert len({c.params.get("user") for c in lookups}) == len(lookups), "a user looked up twice"
        text = " ".join(bridge.texts())
        assert text.startswith("Ada: hello @person")
        assert "@someone" in text  # beyond the bound: readable, not a raw id
        assert "U9" not in text

        # The same people again: the cache answers.
        bridge.slack.clear_calls()
        _, ts = await bridge.post("again <@U200> <@U900000>", blocks=[])
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        assert bridge.slack.calls_to("users.info") == []
        assert bridge.texts()[-1] == "Ada: again @Grace Hopper @person0"


async def test_the_name_cache_is_bounded_lru() -> None:
    async with run_fake_slack(team_id="T1") as (slack, url), aiohttp.ClientSession() as session:
        for user in ("U1", "U2", "U3"):
            slack.add_user(user, display_name=user.lower())
        api = SlackApi(web_client("xoxb-test", f"{url}/api/", session), session, name_cache_size=2)
        assert [await api.display_name("T1", u) for u in ("U1", "U2", "U1", "U3")] == ["u1", "u2", "u1", "u3"]
        assert [c.params["user"] for c in slack.calls_to("users.info")] == ["U1", "U2", "U3"]
        slack.clear_calls()
        await api.display_name("T1", "U1")  # kept: recently used
        await api.display_name("T1", "U2")  # evicted by U3
        assert [c.params["user"] for c in slack.calls_to("users.info")] == ["U2"]
