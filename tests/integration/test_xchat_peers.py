"""No silent one-way bridges: a conversation with someone on X Chat is said, in the channel and in
status, and counted; someone X has no keys for is never the subject of a word about encryption."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest

from adapters.web.app import METRICS
from adapters.x.xchat import ChatKeys
from tests.harness import ALICE, BOB, CAROL, Bridge, running_bridge, wait_until


def key_reads(bridge: Bridge, user_id: str) -> int:
    path = f"/2/users/{user_id}/public_keys"
    return sum(1 for r in bridge.x.all_requests if r.method == "GET" and r.path == path)


async def test_a_dm_with_someone_on_x_chat_warns_the_channel_once_a_day_and_status_says_it(
    tmp_path: Path,
) -> None:
    async with running_bridge(tmp_path) as bridge:
        bridge.x.register_keys(ALICE, ChatKeys().new_identity().registration)
        await bridge.connect()

        _, response_url = await bridge.command("dm @alice")
        told = await bridge.follow_up(response_url)
        assert told["response_type"] == "in_channel"  # the channel reads it, not only the author
        assert ":lock: @alice uses X's encrypted Chat" in told["text"]
        assert "@bridge_owner" in told["text"] and key_reads(bridge, ALICE) == 1

        ack, _ = await bridge.command("status")
        assert ":lock: @alice uses X's encrypted Chat" in ack.text
        assert key_reads(bridge, ALICE) == 1  # status reads what was kept, never X

        # Another channel with alice within the day: the kept answer, no second request.
        await bridge.confirmed("unlink")
        _, response_url = await bridge.command("dm @alice")
        assert ":lock:" in (await bridge.follow_up(response_url))["text"]
        assert key_reads(bridge, ALICE) == 1

        metrics = bridge.app[METRICS]
        await metrics.refresh()
        assert metrics.registry.get_sample_value("xchat_one_way_conversations") == 1


@pytest.mark.parametrize("answer", ["empty", "no_data", "not_found"])
async def test_no_keys_in_any_of_xs_shapes_says_nothing_about_encryption(
    tmp_path: Path, answer: Literal["empty", "no_data", "not_found"]
) -> None:
    async with running_bridge(tmp_path) as bridge:
        bridge.x.no_keys_answer = answer
        await bridge.connect()
        _, response_url = await bridge.command("dm @bob")
        text = (await bridge.follow_up(response_url))["text"]
        assert key_reads(bridge, BOB) == 1
        assert "encrypt" not in text.lower() and ":lock:" not in text
        ack, _ = await bridge.command("status")
        assert "encrypt" not in ack.text.lower()
        metrics = bridge.app[METRICS]
        await metrics.refresh()
        assert metrics.registry.get_sample_value("xchat_one_way_conversations") == 0


async def test_a_link_and_a_group_name_who_is_on_x_chat(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        bridge.x.register_keys(ALICE, ChatKeys().new_identity().registration)
        bridge.x.register_keys(CAROL, ChatKeys().new_identity().registration)
        await bridge.connect()

        _, response_url = await bridge.command("link 1000-2001")
        told = await bridge.follow_up(response_url)
        assert told["response_type"] == "in_channel" and "X user `2001` uses" in told["text"]

        _, response_url = await bridge.command("new-group @alice @bob @carol", channel="C200")
        text = (await bridge.follow_up(response_url))["text"]
        assert ":lock: @alice and @carol use X's encrypted Chat" in text and "@bob use" not in text


async def test_x_failing_the_check_says_nothing_and_asks_again_next_time(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        bridge.x.register_keys(ALICE, ChatKeys().new_identity().registration)
        await bridge.connect()
        bridge.x.inject("503", path_contains="/public_keys")
        _, response_url = await bridge.command("dm @alice")
        assert ":lock:" not in (await bridge.follow_up(response_url))["text"]
        await bridge.confirmed("unlink")
        _, response_url = await bridge.command("dm @alice")
        assert ":lock:" in (await bridge.follow_up(response_url))["text"]
        await wait_until(lambda: key_reads(bridge, ALICE) == 2, 5, "a second check after X failed")
