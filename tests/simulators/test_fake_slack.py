"""Tests for the fake Slack (adapters.sandbox.fake_slack) over real HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from adapters.sandbox.fake_slack import (
    RESPONSE_URL_MAX_USES,
    FakeSlack,
    PostLimits,
    SlackSender,
    rich_text_blocks,
    run_fake_slack,
)
from adapters.slack.app import message_change

FIXTURES = Path(__file__).parents[1] / "fixtures" / "slack"
TOKEN = "xoxb-test"
SECRET = "s3cr3t-signing"

AiohttpServer = Callable[[web.Application], Awaitable[TestServer]]


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with run_fake_slack() as (slack, base_url):
        assert slack.base_url == base_url
        yield slack


@pytest.fixture
def client(fake: FakeSlack) -> AsyncWebClient:
    # No shared session: slack_sdk opens and closes one per call.
    return AsyncWebClient(token=TOKEN, base_url=fake.api_url)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


# ------------------------------------------------------------------ Web API


async def test_auth_test_and_ephemeral(fake: FakeSlack, client: AsyncWebClient) -> None:
    auth = await client.auth_test()
    assert auth["user_id"] == "UBOT"
    assert auth["bot_id"] == "BBOT"
    assert auth["team_id"] == "T0001"

    resp = await client.chat_postEphemeral(channel="C1", user="U1", text="only you")
    assert resp["message_ts"]
    [eph] = fake.ephemerals("U1")
    assert eph["channel"] == "C1"
    assert eph["text"] == "only you"
    assert eph["message_ts"] == resp["message_ts"]
    assert fake.ephemerals("U2") == []

    [call] = fake.calls_to("chat.postEphemeral")
    assert call.params["user"] == "U1"
    assert call.headers["authorization"] == f"Bearer {TOKEN}"
    assert call.ok


async def test_post_update_delete(fake: FakeSlack, client: AsyncWebClient) -> None:
    first = await client.chat_postMessage(
        channel="C1", text="hello", username="Alice (X)", icon_url="https://img/a.png"
    )
    second = await client.chat_postMessage(channel="C1", text="reply", thread_ts=first["ts"])
    assert float(second["ts"]) > float(first["ts"])
    assert first["message"]["username"] == "Alice (X)"
    assert first["message"]["bot_id"] == "BBOT"
    assert second["message"]["thread_ts"] == first["ts"]

    await client.chat_update(channel="C1", ts=first["ts"], text="hello (edited)")
    assert [m["text"] for m in fake.posted("C1")] == ["hello (edited)", "reply"]

    await client.chat_delete(channel="C1", ts=second["ts"])
    assert [m["ts"] for m in fake.posted()] == [first["ts"]]
    with pytest.raises(SlackApiError) as exc:
        await client.chat_delete(channel="C1", ts=second["ts"])
    assert exc.value.response["error"] == "message_not_found"

    with pytest.raises(SlackApiError) as exc:
        await client.api_call("chat.postMessage", json={"channel": "C1"})
    assert exc.value.response["error"] == "no_text"


async def test_one_message_refused_and_long_text_cut(fake: FakeSlack, client: AsyncWebClient) -> None:
    """A marker refuses that one post, not its channel; Slack keeps 40,000 characters of a text."""
    fake.text_errors["BOOM"] = "msg_too_long"
    with pytest.raises(SlackApiError) as exc:
        await client.chat_postMessage(channel="C1", text="a BOOM here")
    assert exc.value.response["error"] == "msg_too_long"
    await client.chat_postMessage(channel="C1", text="x" * 40_001)
    assert [m["text"] for m in fake.posted("C1")] == ["x" * 40_000]


async def test_reactions(fake: FakeSlack, client: AsyncWebClient) -> None:
    await client.reactions_add(channel="C1", timestamp="1700000000.000100", name="white_check_mark")
    with pytest.raises(SlackApiError) as exc:
        await client.reactions_add(channel="C1", timestamp="1700000000.000100", name="white_check_mark")
    assert exc.value.response["error"] == "already_reacted"
    await client.reactions_add(channel="C1", timestamp="1700000000.000100", name="warning")
    assert fake.reactions("C1", "1700000000.000100") == {"white_check_mark", "warning"}

    await client.reactions_remove(channel="C1", timestamp="1700000000.000100", name="warning")
    with pytest.raises(SlackApiError) as exc:
        await client.reactions_remove(channel="C1", timestamp="1700000000.000100", name="warning")
    assert exc.value.response["error"] == "no_reaction"
    assert fake.reactions("C1", "1700000000.000100") == {"white_check_mark"}


async def test_held_method_answers_only_when_released(fake: FakeSlack, client: AsyncWebClient) -> None:
    gate = fake.hold("reactions.add")
    call = asyncio.create_task(
        client.reactions_add(channel="C1", timestamp="1700000000.000100", name="white_check_mark")
    )
    await client.auth_test()  # other methods are not held
    await asyncio.sleep(0.05)
    assert not call.done() and fake.calls_to("reactions.add") == []
    gate.set()
    await call
    assert fake.reactions("C1", "1700000000.000100") == {"white_check_mark"}


async def test_users_and_conversations_info(fake: FakeSlack, client: AsyncWebClient) -> None:
    fake.add_user("U1", display_name="alice", real_name="Alice Liddell")
    fake.add_channel("C1", "launch", is_private=True)

    user = (await client.users_info(user="U1"))["user"]
    assert user["id"] == "U1"
    assert user["profile"]["display_name"] == "alice"
    assert user["profile"]["real_name"] == "Alice Liddell"
    with pytest.raises(SlackApiError) as exc:
        await client.users_info(user="U404")
    assert exc.value.response["error"] == "user_not_found"

    channel = (await client.conversations_info(channel="C1"))["channel"]
    assert channel["name"] == "launch"
    assert channel["is_private"] is True
    with pytest.raises(SlackApiError) as exc:
        await client.conversations_info(channel="C404")
    assert exc.value.response["error"] == "channel_not_found"


async def test_auth_and_unknown_method(fake: FakeSlack) -> None:
    bad = AsyncWebClient(token="xoxb-wrong", base_url=fake.api_url)
    with pytest.raises(SlackApiError) as exc:
        await bad.auth_test()
    assert exc.value.response["error"] == "invalid_auth"

    good = AsyncWebClient(token=TOKEN, base_url=fake.api_url)
    with pytest.raises(SlackApiError) as exc:
        await good.api_call("nope.nothing")
    assert exc.value.response["error"] == "unknown_method"
    assert [c.method for c in fake.calls] == ["auth.test", "nope.nothing"]


async def test_ratelimit_injection(fake: FakeSlack, client: AsyncWebClient) -> None:
    fake.ratelimit_next("chat.postMessage", retry_after=7)
    with pytest.raises(SlackApiError) as exc:
        await client.chat_postMessage(channel="C1", text="hi")
    assert exc.value.response.status_code == 429
    assert exc.value.response["error"] == "ratelimited"
    assert exc.value.response.headers["Retry-After"] == "7"
    # Only the next call was limited.
    assert (await client.chat_postMessage(channel="C1", text="hi"))["ok"]
    assert [c.status for c in fake.calls_to("chat.postMessage")] == [429, 200]


async def test_post_limits_per_channel(fake: FakeSlack, client: AsyncWebClient) -> None:
    """Slack's chat.postMessage limit, when set: a burst per channel, then one a second; another
    channel has its own; the 429 says how long to wait (whole seconds, as Slack's header)."""
    now = [1000.0]
    fake.clock = lambda: now[0]
    fake.post_limits = PostLimits(per_channel_per_s=1.0, channel_burst=2)
    for _ in range(2):
        assert (await client.chat_postMessage(channel="C1", text="hi"))["ok"]
    with pytest.raises(SlackApiError) as exc:
        await client.chat_postMessage(channel="C1", text="one too many")
    assert exc.value.response.status_code == 429
    assert exc.value.response["error"] == "ratelimited"
    assert exc.value.response.headers["Retry-After"] == "1"
    assert (await client.chat_postMessage(channel="C2", text="another channel"))["ok"]
    now[0] += 1.0
    assert (await client.chat_postMessage(channel="C1", text="a second later"))["ok"]
    assert [m["text"] for m in fake.posted("C1")] == ["hi", "hi", "a second later"]
    other = [c.status for c in fake.calls if c.method != "chat.postMessage"]
    assert other == []  # only chat.postMessage is limited here


async def test_post_limits_workspace(fake: FakeSlack, client: AsyncWebClient) -> None:
    """The workspace-wide limit counts every channel's posts together."""
    now = [1000.0]
    fake.clock = lambda: now[0]
    fake.post_limits = PostLimits(workspace_per_min=60.0, workspace_burst=3)
    for channel in ("C1", "C2", "C3"):
        assert (await client.chat_postMessage(channel=channel, text="hi"))["ok"]
    with pytest.raises(SlackApiError) as exc:
        await client.chat_postMessage(channel="C4", text="past the workspace's limit")
    assert exc.value.response.status_code == 429
    assert exc.value.response.headers["Retry-After"] == "1"
    now[0] += 1.0
    assert (await client.chat_postMessage(channel="C4", text="a second later"))["ok"]
    fake.post_limits = None  # off again: no limit at all
    for _ in range(10):
        assert (await client.chat_postMessage(channel="C4", text="unlimited"))["ok"]


async def test_fail_next(fake: FakeSlack, client: AsyncWebClient) -> None:
    fake.fail_next("chat.postMessage", "not_in_channel")
    with pytest.raises(SlackApiError) as exc:
        await client.chat_postMessage(channel="C1", text="hi")
    assert exc.value.response["error"] == "not_in_channel"


async def test_wait_for(fake: FakeSlack, client: AsyncWebClient) -> None:
    async def later() -> None:
        await asyncio.sleep(0.01)
        await client.chat_postMessage(channel="C1", text="one")
        await client.chat_postMessage(channel="C2", text="two")

    task = asyncio.create_task(later())
    calls = await fake.wait_for("chat.postMessage", count=2, timeout=2)
    await task
    assert [c.params["text"] for c in calls] == ["one", "two"]
    [c2] = await fake.wait_for(lambda c: c.params.get("channel") == "C2")
    assert c2.ok

    with pytest.raises(AssertionError, match=r"(?s)reactions\.add.*Calls seen:.*chat\.postMessage"):
        await fake.wait_for("reactions.add", timeout=0.05)


async def test_works_under_aiohttp_server(aiohttp_server: AiohttpServer) -> None:
    fake = FakeSlack(bot_token="xoxb-other", bot_user_id="U999")
    server = await aiohttp_server(fake.app)
    fake.base_url = str(server.make_url("")).rstrip("/")
    client = AsyncWebClient(token="xoxb-other", base_url=fake.api_url)
    assert (await client.auth_test())["user_id"] == "U999"


# ------------------------------------------------------------------ response_url


async def test_response_url_five_uses(fake: FakeSlack, session: aiohttp.ClientSession) -> None:
    url = fake.new_response_url()
    # The way Bolt's respond() posts.
    hook = AsyncWebhookClient(url)
    assert (await hook.send(text="working on it", response_type="ephemeral")).status_code == 200
    for i in range(1, RESPONSE_URL_MAX_USES):
        async with session.post(url, json={"text": f"update {i}", "replace_original": True}) as r:
            assert r.status == 200
            assert (await r.json())["ok"] is True
    async with session.post(url, json={"text": "one too many"}) as r:
        assert r.status == 404
        assert (await r.json())["error"] == "used_url"

    got = await fake.wait_for_response(url, count=RESPONSE_URL_MAX_USES, timeout=1)
    assert got[0] == {"text": "working on it", "response_type": "ephemeral"}
    assert [p["text"] for p in got[1:]] == [f"update {i}" for i in range(1, RESPONSE_URL_MAX_USES)]


async def test_response_url_expires(session: aiohttp.ClientSession) -> None:
    now = [1_700_000_000.0]
    async with run_fake_slack(clock=lambda: now[0]) as (fake, _base):
        url = fake.new_response_url()
        now[0] += 30 * 60 + 1
        async with session.post(url, json={"text": "late"}) as r:
            assert r.status == 404
            assert (await r.json())["error"] == "expired_url"
        with pytest.raises(AssertionError, match="response_url"):
            await fake.wait_for_response(url, timeout=0.05)


# ------------------------------------------------------------------ files


async def test_file_download(fake: FakeSlack, client: AsyncWebClient, session: aiohttp.ClientSession) -> None:
    png = b"\x89PNG\r\n\x1a\nfake-bytes"
    element = fake.add_file("F1", name="cat pic.png", mimetype="image/png", filetype="png", content=png)
    assert element["size"] == len(png)
    assert element["url_private_download"].startswith(f"{fake.base_url}/files-pri/T0001-F1/download/")

    info = await client.files_info(file="F1")
    assert info["file"]["url_private"] == element["url_private"]

    url = element["url_private_download"]
    async with session.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        assert r.status == 200
        assert r.content_type == "image/png"
        assert await r.read() == png
    async with session.get(url, headers={"Authorization": "Bearer xoxb-wrong"}) as r:
        assert r.status == 200
        assert r.content_type == "text/html"
        assert "<html" in await r.text()
    async with session.get(element["url_private"]) as r:
        assert r.content_type == "text/html"
    assert [d.authorized for d in fake.downloads] == [True, False, False]


# ------------------------------------------------------------------ SlackSender


@pytest.fixture
async def bridge(aiohttp_server: AiohttpServer) -> tuple[TestServer, list[dict[str, Any]]]:
    """A tiny stand-in for the bridge that verifies Slack signatures."""
    received: list[dict[str, Any]] = []
    verifier = SignatureVerifier(SECRET)

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        valid = verifier.is_valid(
            body=body,
            timestamp=request.headers.get("X-Slack-Request-Timestamp"),
            signature=request.headers.get("X-Slack-Signature"),
        )
        received.append({"body": body, "headers": dict(request.headers), "valid": valid})
        if not valid:
            return web.json_response({"error": "invalid request"}, status=401)
        return web.json_response({"verified": True})

    app = web.Application()
    app.router.add_post("/slack/events", handle)
    return await aiohttp_server(app), received


async def test_sender_event_signed(
    bridge: tuple[TestServer, list[dict[str, Any]]], session: aiohttp.ClientSession
) -> None:
    server, received = bridge
    sender = SlackSender(session, str(server.make_url("/slack/events")), SECRET)

    result, ts, event_id = await sender.message("C1", "U1", "hi <@U2> &amp; :cat:")
    assert result.status == 200
    assert result.json() == {"verified": True}
    envelope = json.loads(received[0]["body"])
    assert envelope["type"] == "event_callback"
    assert envelope["event_id"] == event_id
    assert event_id.startswith("Ev")
    assert envelope["team_id"] == "T0001"
    assert envelope["api_app_id"] == "A0001"
    event = envelope["event"]
    assert (event["type"], event["channel"], event["user"], event["ts"]) == ("message", "C1", "U1", ts)
    assert event["event_ts"] == ts
    assert "subtype" not in event
    assert received[0]["headers"]["Content-Type"] == "application/json"

    # A retry of the same event carries Slack's retry headers.
    retry = await sender.event(event, event_id=event_id, retry_num=1)
    assert retry.status == 200
    assert received[1]["headers"]["X-Slack-Retry-Num"] == "1"
    assert received[1]["headers"]["X-Slack-Retry-Reason"] == "http_timeout"
    assert json.loads(received[1]["body"])["event_id"] == event_id

    _, ts2, _ = await sender.message("C1", "U1", "next")
    assert float(ts2) > float(ts)


def test_edit_and_delete_events_have_the_shape_of_slacks_fixtures() -> None:
    """The events :class:`SlackSender` builds for an edit and a deletion carry what Slack's own
    ``message_changed``/``message_deleted`` payloads carry, and the bridge reads them as such."""
    sender = SlackSender(None, "http://127.0.0.1:1/slack/events", SECRET)  # type: ignore[arg-type]
    changed = sender.message_changed_event("C1", "U1", "1.000100", "new", "old", thread_ts="1.000001")
    deleted = sender.message_deleted_event("C1", "U1", "1.000100", "new")
    for event, name in ((changed, "message_changed"), (deleted, "message_deleted")):
        fixture = json.loads((FIXTURES / f"event-message-{name}.json").read_text())["event"]
        assert set(fixture) <= set(event), (name, set(fixture) - set(event))
        assert event["subtype"] == name and event["hidden"] is True and event["ts"] != "1.000100"
    change = message_change({"team_id": "T0001"}, changed)
    assert change is not None
    assert (change.ts, change.text, change.previous_text, change.user_id) == ("1.000100", "new", "old", "U1")
    assert change.event_ts == changed["ts"] and changed["message"]["edited"]["ts"] == changed["ts"]
    assert deleted["deleted_ts"] == "1.000100" and deleted["previous_message"]["text"] == "new"


async def test_sender_bad_signatures(
    bridge: tuple[TestServer, list[dict[str, Any]]], session: aiohttp.ClientSession
) -> None:
    server, received = bridge
    sender = SlackSender(session, str(server.make_url("/slack/events")), SECRET)

    forged = await sender.event({"type": "message", "text": "x"}, signature_override="v0=deadbeef")
    assert forged.status == 401
    stale_ts = int(sender.clock()) - 301
    stale = await sender.event({"type": "message", "text": "x"}, timestamp_override=stale_ts)
    assert stale.status == 401
    unsigned = await sender.raw(b"{}", "application/json", sign=False)
    assert unsigned.status == 401
    assert [r["valid"] for r in received] == [False, False, False]


async def test_sender_command_matches_fixture(
    bridge: tuple[TestServer, list[dict[str, Any]]], session: aiohttp.ClientSession
) -> None:
    server, received = bridge
    fixture = json.loads((FIXTURES / "derived-slash-command-xdm-new-group.json").read_text())
    f = fixture["fields"]
    sender = SlackSender(session, str(server.make_url("/slack/events")), SECRET, team_id=f["team_id"])
    sender.api_app_id = f["api_app_id"]
    sender.verification_token = f["token"]

    result = await sender.command(
        f["text"],
        user_id=f["user_id"],
        channel_id=f["channel_id"],
        response_url=f["response_url"],
        user_name=f["user_name"],
        channel_name=f["channel_name"],
        trigger_id=f["trigger_id"],
        team_domain=f["team_domain"],
        enterprise_id=f["enterprise_id"],
        enterprise_name=f["enterprise_name"],
    )
    assert result.status == 200
    assert received[0]["valid"]
    assert received[0]["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    assert received[0]["body"].decode() == fixture["raw_body"]
    assert dict(parse_qsl(received[0]["body"].decode())) == f


def test_rich_text_blocks_match_fixture() -> None:
    fixture = json.loads((FIXTURES / "event-message-mention-channel-link-url.json").read_text())
    event = fixture["event"]
    [block] = rich_text_blocks(event["text"])
    assert block["elements"] == event["blocks"][0]["elements"]


async def test_buttons_are_shown_clicked_signed_and_replaced(
    fake: FakeSlack,
    client: AsyncWebClient,
    bridge: tuple[TestServer, list[dict[str, Any]]],
    session: aiohttp.ClientSession,
) -> None:
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": "Connect @ada?"}},
        {
            "type": "actions",
            "elements": [
                {
                    "type": "button",
                    "action_id": "yes",
                    "text": {"type": "plain_text", "text": "Yes"},
                    "value": "p1",
                },
                {
                    "type": "button",
                    "action_id": "no",
                    "text": {"type": "plain_text", "text": "No"},
                    "value": "p1",
                },
            ],
        },
    ]
    await client.chat_postEphemeral(channel="C1", user="U1", text="Connect @ada?", blocks=blocks)
    await client.chat_postMessage(channel="U2", text="in a DM", blocks=blocks)  # the bot's DM to U2
    assert [(b.action_id, b.text, b.ephemeral) for b in fake.buttons("U1")] == [
        ("yes", "Yes", True),
        ("no", "No", True),
    ]
    [dm_yes, _] = fake.buttons("U2")
    assert (dm_yes.channel, dm_yes.ephemeral) == ("U2", False)

    server, received = bridge
    sender = SlackSender(session, str(server.make_url("/slack/events")), SECRET)
    yes = fake.buttons("U1")[0]
    response_url = fake.click_response_url(yes)
    result = await sender.click(yes, user_id="U1", response_url=response_url)
    assert result.status == 200 and received[-1]["valid"]
    assert received[-1]["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    [(key, raw)] = parse_qsl(received[-1]["body"].decode())
    payload = json.loads(raw)
    assert key == "payload" and payload["type"] == "block_actions" and payload["user"]["id"] == "U1"
    assert payload["container"] == {
        "type": "message",
        "message_ts": yes.message_ts,
        "channel_id": "C1",
        "is_ephemeral": True,
    }
    assert [(a["action_id"], a["value"]) for a in payload["actions"]] == [("yes", "p1")]
    assert (
        await sender.click(yes, user_id="U1", response_url=response_url, signature_override="v0=00")
    ).status == 401

    # An answer that replaces the message takes its buttons away; one that does not, leaves them.
    await AsyncWebhookClient(response_url).send(text="noted", replace_original=False)
    assert len(fake.buttons("U1")) == 2
    await AsyncWebhookClient(response_url).send(text="Done.", replace_original=True)
    assert fake.buttons("U1") == [] and fake.ephemerals("U1")[0]["text"] == "Done."
    assert len(fake.buttons("U2")) == 2
