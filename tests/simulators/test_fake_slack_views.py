"""The fake Slack's views.* methods and trigger ids, over real HTTP, with slack_sdk's client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.sandbox.fake_slack import FakeSlack, run_fake_slack
from adapters.sandbox.fake_slack_views import TRIGGER_TTL_SECONDS


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


MODAL = {"type": "modal", "title": {"type": "plain_text", "text": "Bridge to X"}, "blocks": []}
HOME = {"type": "home", "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "*hi*"}}]}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def fake(clock: Clock) -> AsyncIterator[FakeSlack]:
    async with run_fake_slack(clock=clock) as (slack, _):
        yield slack


@pytest.fixture
def client(fake: FakeSlack) -> AsyncWebClient:
    return AsyncWebClient(token=fake.bot_token, base_url=fake.api_url)


async def error_of(call: object) -> str:
    with pytest.raises(SlackApiError) as refused:
        await call  # type: ignore[misc]
    return str(refused.value.response["error"])


async def test_a_trigger_id_opens_one_modal_within_three_seconds(
    fake: FakeSlack, client: AsyncWebClient, clock: Clock
) -> None:
    trigger = fake.views.issue_trigger_id("U1")
    opened = await client.views_open(trigger_id=trigger, view=MODAL)
    assert opened["view"]["id"].startswith("V") and fake.views.modal("U1") is not None
    assert await error_of(client.views_open(trigger_id=trigger, view=MODAL)) == "exchanged_trigger_id"
    late = fake.views.issue_trigger_id("U1")
    clock.now += TRIGGER_TTL_SECONDS + 0.1
    assert await error_of(client.views_open(trigger_id=late, view=MODAL)) == "expired_trigger_id"
    assert await error_of(client.views_open(trigger_id="1.2.3", view=MODAL)) == "invalid_trigger_id"


async def test_views_are_checked_like_slack_checks_them(fake: FakeSlack, client: AsyncWebClient) -> None:
    untitled = {"type": "modal", "title": {"type": "plain_text", "text": "x" * 25}, "blocks": []}
    trigger = fake.views.issue_trigger_id("U1")
    assert await error_of(client.views_open(trigger_id=trigger, view=untitled)) == "invalid_arguments"
    assert await error_of(client.views_publish(user_id="U1", view=MODAL)) == "invalid_arguments"  # not a home


async def test_update_replaces_an_open_modal_unless_its_hash_moved_on(
    fake: FakeSlack, client: AsyncWebClient
) -> None:
    opened = (await client.views_open(trigger_id=fake.views.issue_trigger_id("U1"), view=MODAL))["view"]
    changed = {**MODAL, "blocks": HOME["blocks"]}
    updated = (await client.views_update(view_id=opened["id"], view=changed, hash=opened["hash"]))["view"]
    assert fake.views.modal("U1") is not None and fake.views.modal("U1")["blocks"] == HOME["blocks"]  # type: ignore[index]
    stale = client.views_update(view_id=opened["id"], view=MODAL, hash=opened["hash"])
    assert updated["hash"] != opened["hash"] and await error_of(stale) == "hash_conflict"
    assert await error_of(client.views_update(view_id="V404", view=MODAL)) == "not_found"


async def test_publish_keeps_each_persons_home(fake: FakeSlack, client: AsyncWebClient) -> None:
    await client.views_publish(user_id="U1", view=HOME)
    await client.views_publish(user_id="U2", view={"type": "home", "blocks": []})
    assert fake.views.home_text("U1") == "*hi*" and fake.views.home_text("U2") == ""
    assert fake.views.home("U3") is None
    assert await error_of(client.views_publish(user_id="", view=HOME)) == "invalid_arguments"
