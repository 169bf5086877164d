"""The sandbox's JSON API, in-process: everything it shows comes through the real bridge."""

from __future__ import annotations

import asyncio
import base64
import html
import re
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import yarl

from adapters.sandbox.sandbox import (
    LABEL,
    SLACK_PEOPLE,
    Sandbox,
    SandboxError,
    running_sandbox,
    slack_markup,
    text_parts,
)
from bridge.delivery import DeliveryConfig

FAST = DeliveryConfig(retry_base=0.05, retry_cap=0.5, hourglass_after=0.3, rescan_every=0.5)


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with running_sandbox(port=0, delivery_config=FAST) as running:
        yield running
        assert running.x.violations == []


async def call(session: aiohttp.ClientSession, sandbox: Sandbox, path: str, body: dict[str, Any]) -> Any:
    async with session.post(sandbox.url + path.lstrip("/"), json=body) as response:
        return response.status, await response.json()


async def state_when(
    session: aiohttp.ClientSession, sandbox: Sandbox, ready: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    """Poll GET /api/state as the page does until ``ready`` holds."""
    state: dict[str, Any] = {}
    try:
        async with asyncio.timeout(10):
            while True:
                async with session.get(sandbox.url + "api/state") as response:
                    state = await response.json()
                if ready(state):
                    return state
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"never saw {what}; last state: {state}") from None


def text_of(item: dict[str, Any]) -> str:
    return "".join(part["text"] for part in item["parts"])


def authorize_link(state: dict[str, Any]) -> str | None:
    links = [p["url"] for m in state["messages"] for p in m["parts"] if p.get("action") == "authorize"]
    return links[-1] if links else None


def confirm_button(state: dict[str, Any]) -> str | None:
    found = [
        b["id"]
        for m in state["messages"]
        for b in m.get("buttons", [])
        if b["action"] == "xdm_connect_confirm"
    ]
    return found[-1] if found else None


def browser() -> aiohttp.ClientSession:
    """A session that keeps cookies as a browser does on http://127.0.0.1 (the connect flow's)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def open_authorize_link(session: aiohttp.ClientSession, url: str, *, approve: bool = True) -> str:
    """What the browser tab does with the authorize link: the bridge's connect page, "Continue to
    X", the simulated X's consent page, then the bridge's callback. Returns the callback page."""
    async with session.get(url) as response:
        page = await response.text()
    assert response.status == 200 and "Continue to X" in page, page
    fields = dict(re.findall(r"name=(\w+) value='([^']*)'", page))
    async with session.post(url.split("?")[0], data=fields) as response:
        consent = await response.text()
        consent_url = response.url
    assert "Simulated X consent page" in consent and "@you" in consent, consent
    choice = re.search(rf"id={'approve' if approve else 'cancel'} href='([^']*)'", consent)
    assert choice, consent
    async with session.get(
        consent_url.join(yarl.URL(html.unescape(choice.group(1)), encoded=True))
    ) as response:
        return await response.text()


async def connect_and_bridge(session: aiohttp.ClientSession, sandbox: Sandbox) -> dict[str, Any]:
    """/xdm connect through the real pages, Confirm, then /xdm new-group @alice @bob hi."""
    await call(session, sandbox, "/api/slack", {"text": "/xdm connect"})
    state = await state_when(session, sandbox, lambda s: authorize_link(s) is not None, "the link")
    link = authorize_link(state)
    assert link is not None
    assert "Confirm in Slack" in await open_authorize_link(session, link)
    state = await state_when(session, sandbox, lambda s: confirm_button(s) is not None, "the question")
    await call(session, sandbox, "/api/slack/click", {"id": confirm_button(state)})
    await state_when(session, sandbox, lambda s: s["steps"]["connected"], "the connection")
    await call(session, sandbox, "/api/slack", {"text": "/xdm new-group @alice @bob hi"})
    state = await state_when(session, sandbox, lambda s: bool(s["x"]["conversations"]), "the group")
    return dict(state["x"]["conversations"][0])


def group_messages(state: dict[str, Any]) -> list[dict[str, Any]]:
    return list(state["x"]["conversations"][0]["messages"])


async def test_message_goes_through_the_bridge_to_x_and_gets_its_check_mark(sandbox: Sandbox) -> None:
    async with browser() as session:
        async with session.get(sandbox.url) as response:
            page = await response.text()
        assert response.status == 200 and LABEL in page

        status, answer = await call(session, sandbox, "/api/slack", {"text": "/xdm connect"})
        assert (status, answer["sent"]) == (200, "command")
        state = await state_when(session, sandbox, lambda s: authorize_link(s) is not None, "the link")
        assert state["steps"] == {"connected": False, "bridged": False, "relayed": False}
        [ack] = [m for m in state["messages"] if m["kind"] == "bot"]
        assert ack["only_you"] and "Connect your X account" in text_of(ack)

        url = authorize_link(state)
        assert url is not None and url.startswith(sandbox.bridge_url + "/x/connect?")
        assert "<h1>Confirm in Slack</h1>" in await open_authorize_link(session, url)
        # The bridge asks in the channel; nothing is connected until you click Confirm there.
        state = await state_when(session, sandbox, lambda s: confirm_button(s) is not None, "the question")
        assert state["steps"]["connected"] is False
        status, answer = await call(session, sandbox, "/api/slack/click", {"id": confirm_button(state)})
        assert (status, answer["status"]) == (200, 200)
        state = await state_when(
            session,
            sandbox,
            lambda s: any("Connected X account @you" in text_of(m) for m in s["messages"]),
            "the connect follow-up",
        )
        assert state["steps"]["connected"] is True
        # The answer takes the question's place (replace_original): one message, without buttons.
        [connected] = [m for m in state["messages"] if "Connected X account @you" in text_of(m)]
        assert connected["only_you"] and not connected.get("buttons")
        # The bridge said it once, in place of the question: the page had shown that answer twice.
        said_at_slack = [
            p for ps in sandbox.slack.responses.values() for p in ps if "Connected X" in p["text"]
        ]
        assert [p.get("replace_original") for p in said_at_slack] == [True]
        assert not any("Connected X" in str(m.get("text")) for m in sandbox.slack.posted())

        await call(session, sandbox, "/api/slack", {"text": "/xdm new-group @alice @bob hi"})
        state = await state_when(session, sandbox, lambda s: bool(s["x"]["conversations"]), "the group")
        [group] = state["x"]["conversations"]
        assert group["kind"] == "Group" and group["title"] == "Group with @alice, @bob"
        assert group["participants"] == ["you", "alice", "bob"]
        # The opening goes through the outbox, formatted like any channel message.
        assert [(m["sender"], m["text"]) for m in group["messages"]] == [("you", "You: hi")]

        status, answer = await call(session, sandbox, "/api/slack", {"text": "fish & <chips> :tada:"})
        assert (status, answer["status"]) == (200, 200)
        ts = answer["ts"]

        def delivered(s: dict[str, Any]) -> bool:
            [message] = [m for m in s["messages"] if m.get("ts") == ts]
            return bool(message["reactions"]) and len(s["x"]["conversations"][0]["messages"]) == 2

        state = await state_when(session, sandbox, delivered, "the relayed message and its ✅")
        [message] = [m for m in state["messages"] if m.get("ts") == ts]
        assert message["reactions"] == [{"name": "white_check_mark", "emoji": "✅"}]
        assert text_of(message) == "fish & <chips> 🎉" and not message["only_you"]
        assert state["x"]["conversations"][0]["messages"][-1]["text"] == "You: fish & <chips> 🎉"

        # Alice answers on X: the real inbound path posts it in the channel as Alice.
        body = {"conversation_id": group["id"], "username": "alice", "text": "chips & fish"}
        status, _ = await call(session, sandbox, "/api/x/reply", body)
        assert status == 200
        state = await state_when(
            session,
            sandbox,
            lambda s: any(m["author"] == "Alice (@alice)" for m in s["messages"]),
            "the reply",
        )
        [reply] = [m for m in state["messages"] if m["author"] == "Alice (@alice)"]
        assert text_of(reply) == "chips & fish" and reply["kind"] == "bot"
        assert state["steps"] == {"connected": True, "bridged": True, "relayed": True}
        # The channel reads in the order things happened.
        order = [m["at"] for m in state["messages"]]
        assert order == sorted(order)

        # The event really was signed and sent to the bridge; X got the DM over HTTP.
        posts = [
            (r.path, r.user_id)
            for r in sandbox.x.all_requests
            if r.method == "POST" and r.path.endswith("/messages")
        ]
        # The bridge's relay (as you), then Alice's reply typed on the simulated X (as her).
        assert posts == [(f"/2/dm_conversations/{group['id']}/messages", u) for u in ("1000", "2001")]


async def test_reply_on_x_is_recorded_as_from_alice_and_reaches_the_channel(sandbox: Sandbox) -> None:
    conversation_id = sandbox.x.create_group("1000", ["2001", "2002"])
    async with aiohttp.ClientSession() as session:
        body = {"conversation_id": conversation_id, "username": "alice", "text": "hello from X"}
        status, answer = await call(session, sandbox, "/api/x/reply", body)
        assert status == 200 and answer["ok"]
        [event] = sandbox.x.events
        assert (event.sender_id, event.text, event.conversation_id) == (
            "2001",
            "hello from X",
            conversation_id,
        )

        state = await state_when(session, sandbox, lambda s: bool(s["x"]["conversations"]), "the reply")
        [shown] = state["x"]["conversations"][0]["messages"]
        assert shown["sender"] == "alice" and not shown["you"]
        assert "posts it in Slack" in shown["note"]
        # The group is not bridged to this channel, so the bridge keeps it out of Slack.
        assert state["messages"] == []

        refused = {"conversation_id": conversation_id, "username": "carol", "text": "let me in"}
        status, answer = await call(session, sandbox, "/api/x/reply", refused)
        assert status == 400 and "not someone else" in answer["error"]
        assert len(sandbox.x.events) == 1


async def test_mistakes_are_answered_not_sent(sandbox: Sandbox) -> None:
    async with aiohttp.ClientSession() as session:
        status, answer = await call(session, sandbox, "/api/slack", {"text": "   "})
        assert status == 400 and not answer["ok"]
        status, answer = await call(session, sandbox, "/api/slack", {"text": "/giphy cats"})
        assert status == 200 and answer["sent"] == "nothing"
        for path, body in (
            ("/api/slack/edit", {"ts": "1.000001", "text": "new"}),
            ("/api/slack/delete", {"ts": "1.000001"}),
            ("/api/slack/file", {"file": {"name": "a.png", "type": "image/png", "data": "not base64!"}}),
            ("/api/slack/file", {"text": "no file"}),
            ("/api/slack/file", {"file": {"name": "empty.txt", "type": "text/plain", "data": ""}}),
        ):
            status, answer = await call(session, sandbox, path, body)
            assert status == 400 and not answer["ok"] and answer["error"], (path, answer)
        for path in ("api/slack/files/F0NONE", "api/x/media/404"):
            async with session.get(sandbox.url + path) as response:
                assert response.status == 404, path
        state = await state_when(session, sandbox, lambda s: bool(s["messages"]), "the note")
        [note] = state["messages"]
        assert note["kind"] == "note" and "/giphy is not a command here" in text_of(note)
    assert sandbox.x.all_requests == []


async def test_a_busy_port_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SandboxError, match=f"127.0.0.1:{port}.*--port"):
            async with running_sandbox(port=port):
                pass


def test_slack_text_becomes_safe_parts() -> None:
    authorize = "http://127.0.0.1:1/i/oauth2/authorize"
    text = (
        f"<{authorize}?a=1&amp;b=2|Connect> *now* <@U1> `/xdm help` a &lt;b&gt; :x: "
        "<javascript:alert(1)|click> <https://example.com>"
    )
    parts = text_parts(text, users={"U1": "You"}, authorize_url=authorize)
    assert parts == [
        {"type": "link", "url": f"{authorize}?a=1&b=2", "text": "Connect", "action": "authorize"},
        {"type": "text", "text": " "},
        {"type": "bold", "text": "now"},
        {"type": "text", "text": " "},
        {"type": "mention", "text": "@You"},
        {"type": "text", "text": " "},
        {"type": "code", "text": "/xdm help"},
        {"type": "text", "text": " a <b> ❌ "},
        {"type": "text", "text": "javascript:alert(1)|click"},
        {"type": "text", "text": " "},
        {"type": "link", "url": "https://example.com", "text": "https://example.com"},
    ]


def test_typed_text_becomes_slack_markup_as_slack_sends_it() -> None:
    members = dict(SLACK_PEOPLE)
    typed = "hi @ada, @Grace and @nobody: see https://example.com/a?b=1&c=2. <b> mail me@ada.org"
    assert slack_markup(typed, members) == (
        "hi <@U0ADA>, <@U0GRACE> and @nobody: see <https://example.com/a?b=1&amp;c=2>. "
        "&lt;b&gt; mail me@ada.org"
    )
    assert slack_markup("(http://x.example/path)", members) == "(<http://x.example/path>)"


async def test_mentions_and_links_typed_in_the_channel_are_translated_on_the_way_to_x(
    sandbox: Sandbox,
) -> None:
    async with browser() as session:
        await connect_and_bridge(session, sandbox)

        typed = "@ada look: https://example.com/" + "a" * 200
        status, answer = await call(session, sandbox, "/api/slack", {"text": typed})
        assert status == 200
        state = await state_when(
            session, sandbox, lambda s: len(s["x"]["conversations"][0]["messages"]) == 2, "the relayed DM"
        )
        [message] = [m for m in state["messages"] if m.get("ts") == answer["ts"]]
        assert [p["type"] for p in message["parts"]] == ["mention", "text", "link"]
        assert message["parts"][0]["text"] == "@Ada"
        # On X, Slack's <@U0ADA> reads as the person's name and <https://…> as the bare address.
        relayed = state["x"]["conversations"][0]["messages"][-1]["text"]
        assert relayed == "You: @Ada look: https://example.com/" + "a" * 200
        # The channel shows what Slack shows: no word of how each answer travelled.
        assert all("via" not in m for m in state["messages"])


async def test_a_command_is_shown_as_typed_angle_brackets_and_all(sandbox: Sandbox) -> None:
    async with aiohttp.ClientSession() as session:
        typed = "/xdm dm @alice Q&A <today> *now*"
        status, _ = await call(session, sandbox, "/api/slack", {"text": typed})
        state = await state_when(
            session, sandbox, lambda s: any(m["kind"] == "command" for m in s["messages"]), "the command"
        )
        [command] = [m for m in state["messages"] if m["kind"] == "command"]
        assert status == 200 and text_of(command) == typed


PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
    b"\x00\x00\x00\rIDATx\x9cc\xf8\xcf\xc0\xf0\x1f\x00\x05\x00\x01\xff\x89\x99=\x1d\x00\x00\x00\x00IEND\xaeB`\x82"
)


def png(name: str = "dot.png") -> dict[str, str]:
    return {"name": name, "type": "image/png", "data": base64.b64encode(PNG).decode()}


async def test_the_connect_link_opens_the_bridges_page_and_cancel_on_x_connects_nothing(
    sandbox: Sandbox,
) -> None:
    async with browser() as session:
        await call(session, sandbox, "/api/slack", {"text": "/xdm connect"})
        state = await state_when(session, sandbox, lambda s: authorize_link(s) is not None, "the link")
        link = authorize_link(state)
        assert link is not None
        async with session.get(link) as response:
            page = await response.text()
        # The page says whose Slack user the X account will belong to, and asks for consent.
        assert "Slack user <strong>you</strong> (U0SANDBOX)" in page and "Continue to X" in page
        answer = await open_authorize_link(session, link, approve=False)
        assert "Confirm in Slack" not in answer
        assert not any(t.user_id == "1000" for t in sandbox.x.access_tokens.values())
        state = await state_when(session, sandbox, lambda s: not s["steps"]["connected"], "the state")
        assert confirm_button(state) is None


async def test_an_edit_reaches_x_as_a_correction_and_a_deletion_deletes_the_dm(sandbox: Sandbox) -> None:
    async with browser() as session:
        await connect_and_bridge(session, sandbox)
        status, answer = await call(session, sandbox, "/api/slack", {"text": "the meeting is at 3"})
        ts = answer["ts"]
        await state_when(session, sandbox, lambda s: len(group_messages(s)) == 2, "the DM")

        status, answer = await call(
            session, sandbox, "/api/slack/edit", {"ts": ts, "text": "the meeting is at 4"}
        )
        assert (status, answer["sent"], answer["status"]) == (200, "edit", 200)
        state = await state_when(session, sandbox, lambda s: len(group_messages(s)) == 3, "the correction")
        assert group_messages(state)[-1]["text"] == "You (edited): the meeting is at 4"
        [mine] = [m for m in state["messages"] if m.get("ts") == ts]
        assert mine["edited"] and mine["typed"] == "the meeting is at 4"
        assert text_of(mine) == "the meeting is at 4"

        status, answer = await call(session, sandbox, "/api/slack/delete", {"ts": ts})
        assert (status, answer["sent"], answer["status"]) == (200, "delete", 200)
        state = await state_when(
            session, sandbox, lambda s: sum(m["deleted"] for m in group_messages(s)) == 2, "the deletions"
        )
        # Both X copies (the DM and its correction) are deleted; the opening "hi" stays.
        assert [m["deleted"] for m in group_messages(state)] == [False, True, True]
        [mine] = [m for m in state["messages"] if m.get("ts") == ts]
        assert mine["deleted"] and text_of(mine) == "This message was deleted."
        status, answer = await call(session, sandbox, "/api/slack/edit", {"ts": ts, "text": "again"})
        assert status == 400 and "not in the channel" in answer["error"]


async def test_a_thread_reply_and_several_lines_keep_their_shape_on_x(sandbox: Sandbox) -> None:
    async with browser() as session:
        await connect_and_bridge(session, sandbox)
        status, answer = await call(
            session, sandbox, "/api/slack", {"text": "Is the outage over?\nAsking for Ada"}
        )
        parent = answer["ts"]
        await state_when(session, sandbox, lambda s: len(group_messages(s)) == 2, "the parent")
        body = {"text": "Yes, since noon.\nAll green.", "thread_ts": parent}
        status, answer = await call(session, sandbox, "/api/slack", body)
        assert status == 200
        state = await state_when(session, sandbox, lambda s: len(group_messages(s)) == 3, "the reply")
        first, reply = group_messages(state)[1:]
        assert first["text"] == "You: Is the outage over?\nAsking for Ada"
        assert "Is the outage over?" in reply["text"] and reply["text"].endswith(
            "Yes, since noon.\nAll green."
        )
        [shown] = [m for m in state["messages"] if m.get("ts") == answer["ts"]]
        assert shown["thread_ts"] == parent and text_of(shown) == "Yes, since noon.\nAll green."
        status, answer = await call(session, sandbox, "/api/slack", {"text": "x", "thread_ts": "9.000009"})
        assert status == 400


async def test_a_file_goes_to_x_as_media_fetched_from_slack_with_the_bot_token(sandbox: Sandbox) -> None:
    async with browser() as session:
        await connect_and_bridge(session, sandbox)
        body = {"text": "the dot", "file": png()}
        status, answer = await call(session, sandbox, "/api/slack/file", body)
        assert (status, answer["sent"]) == (200, "message")
        state = await state_when(session, sandbox, lambda s: len(group_messages(s)) == 2, "the photo DM")
        dm = group_messages(state)[-1]
        assert dm["text"] == "You: the dot" and [m["kind"] for m in dm["media"]] == ["image"]
        async with session.get(sandbox.url + dm["media"][0]["url"].lstrip("/")) as response:
            assert (response.status, response.content_type, await response.read()) == (200, "image/png", PNG)
        [shown] = [m for m in state["messages"] if m.get("ts") == answer["ts"]]
        [chip] = shown["files"]
        assert chip["name"] == "dot.png" and chip["image"]
        async with session.get(sandbox.url + chip["url"].lstrip("/")) as response:
            assert (response.status, await response.read()) == (200, PNG)
        # The bridge fetched it from the fake Slack as from Slack: with the bot token.
        assert [d.authorized for d in sandbox.slack.downloads] == [True]

        # A file X cannot take: the text goes, and the bridge says why the file did not.
        notes = {"name": "notes.txt", "type": "text/plain", "data": base64.b64encode(b"a\nb\n").decode()}
        status, answer = await call(session, sandbox, "/api/slack/file", {"text": "my notes", "file": notes})
        assert status == 200
        state = await state_when(
            session,
            sandbox,
            lambda s: (
                len(group_messages(s)) == 3
                and any("notes.txt" in text_of(m) for m in s["messages"] if m["kind"] == "bot")
            ),
            "the DM and the note",
        )
        assert (
            group_messages(state)[-1]["text"] == "You: my notes" and group_messages(state)[-1]["media"] == []
        )
        [shown] = [m for m in state["messages"] if m.get("ts") == answer["ts"]]
        [chip] = shown["files"]
        assert chip["name"] == "notes.txt" and not chip["image"]
        async with session.get(sandbox.url + chip["url"].lstrip("/")) as response:
            # Served as a download, never as a page of the sandbox's origin.
            assert response.content_type == "application/octet-stream"
            assert response.headers["Content-Disposition"] == "attachment"


async def test_a_photo_and_lines_sent_on_x_reach_the_channel(sandbox: Sandbox) -> None:
    async with browser() as session:
        group = await connect_and_bridge(session, sandbox)
        body = {"conversation_id": group["id"], "username": "alice", "text": "look\nhere", "photo": png()}
        status, answer = await call(session, sandbox, "/api/x/reply", body)
        assert status == 200 and answer["ok"]
        # The text and the photo are two posts in Slack: wait for both (the photo alone may come
        # first to the state under load).
        state = await state_when(
            session,
            sandbox,
            lambda s: (
                any(m.get("files") and m["kind"] == "bot" for m in s["messages"])
                and any(m["author"] == "Alice (@alice)" for m in s["messages"])
            ),
            "the photo and the text",
        )
        [sent] = [m for m in group_messages(state) if m["sender"] == "alice"]
        assert sent["text"] == "look\nhere" and [m["kind"] for m in sent["media"]] == ["image"]
        [text] = [m for m in state["messages"] if m["author"] == "Alice (@alice)"]
        assert text_of(text) == "look\nhere"
        [shared] = [m for m in state["messages"] if m.get("files") and m["kind"] == "bot"]
        async with session.get(sandbox.url + shared["files"][0]["url"].lstrip("/")) as response:
            assert await response.read() == PNG

        # A reply in the thread of Alice's message goes to X quoting her.
        body_reply = {"text": "nice one", "thread_ts": text["ts"]}
        status, answer = await call(session, sandbox, "/api/slack", body_reply)
        assert status == 200
        state = await state_when(
            session, sandbox, lambda s: group_messages(s)[-1]["text"].endswith("nice one"), "the thread reply"
        )
        assert 're: "look here"' in group_messages(state)[-1]["text"]

        refused = {**body, "photo": {"name": "a.txt", "type": "text/plain", "data": "aGk="}}
        status, answer = await call(session, sandbox, "/api/x/reply", refused)
        assert status == 400 and "photo" in answer["error"]


def buttons_of(state: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [b for m in state["messages"] for b in m.get("buttons", []) if b["action"] == action]


async def test_typed_unlink_asks_in_the_channel_and_its_confirm_button_can_be_clicked(
    sandbox: Sandbox,
) -> None:
    async with browser() as session:
        await connect_and_bridge(session, sandbox)
        await call(session, sandbox, "/api/slack", {"text": "/xdm unlink"})
        state = await state_when(
            session, sandbox, lambda s: bool(buttons_of(s, "xdm_confirm_unlink")), "the question"
        )
        [question] = [m for m in state["messages"] if m.get("buttons")]
        assert question["only_you"] and "Stop bridging" in text_of(question)
        assert [b["text"] for b in question["buttons"]] == ["Confirm: Unlink", "Cancel"]
        assert sum("Stop bridging" in text_of(m) for m in state["messages"]) == 1  # shown once

        [confirm] = buttons_of(state, "xdm_confirm_unlink")
        status, answer = await call(session, sandbox, "/api/slack/click", {"id": confirm["id"]})
        assert (status, answer["status"]) == (200, 200)
        state = await state_when(
            session,
            sandbox,
            lambda s: any("stopped bridging" in text_of(m) and not m["only_you"] for m in s["messages"]),
            "the unlink announced in the channel",
        )
        assert not buttons_of(state, "xdm_confirm_unlink")  # the question's buttons went with it
        # As in Slack: the channel reads the announcement, and the question now reads the same.
        state = await state_when(
            session, sandbox, lambda s: len(said(s, "stopped bridging")) >= 2, "the question replaced"
        )
        assert sorted(m["only_you"] for m in said(state, "stopped bridging")) == [False, True]


# -- X Chat (issue 19) and the /xdm form (issue 20) ---------------------------------------


async def connect(session: aiohttp.ClientSession, sandbox: Sandbox) -> dict[str, Any]:
    """/xdm connect through the real pages and Confirm; the sandbox then runs `xchat setup`."""
    await call(session, sandbox, "/api/slack", {"text": "/xdm connect"})
    state = await state_when(session, sandbox, lambda s: authorize_link(s) is not None, "the link")
    link = authorize_link(state)
    assert link is not None
    await open_authorize_link(session, link)
    state = await state_when(session, sandbox, lambda s: confirm_button(s) is not None, "the question")
    await call(session, sandbox, "/api/slack/click", {"id": confirm_button(state)})
    return await state_when(session, sandbox, lambda s: s["x"]["keys"]["state"] == "held", "@you's keys")


def said(state: dict[str, Any], words: str) -> list[dict[str, Any]]:
    return [m for m in state["messages"] if words in text_of(m)]


def chat_of(state: dict[str, Any], title: str) -> dict[str, Any] | None:
    found = [c for c in state["x"]["conversations"] if c["encrypted"] and c["title"] == title]
    return found[0] if found else None


async def test_an_encrypted_dm_goes_both_ways_through_x_chat_beside_a_legacy_one(sandbox: Sandbox) -> None:
    async with browser() as session:
        state = await connect(session, sandbox)
        # `xdm-bridge xchat setup @you`, through the CLI's own code: registered with X, and said.
        [setup] = said(state, "xdm-bridge xchat setup @you")
        assert state["x"]["keys"]["fingerprint"] in text_of(setup)
        assert len(sandbox.x.public_keys["1000"]) == 1
        people = {p["username"]: p["x_chat"] for p in state["x"]["people"]}
        assert people == {"you": True, "alice": True, "bob": False, "carol": True}

        await call(session, sandbox, "/api/slack", {"text": "/xdm dm @alice"})
        state = await state_when(session, sandbox, lambda s: bool(said(s, "encrypted X Chat")), "the lock")
        chat = chat_of(state, "DM with @alice")
        assert chat is not None and chat["id"] == "chat:1000-2001" and chat["reply_as"] == ["alice"]
        assert state["steps"]["bridged"] is True

        _, answer = await call(session, sandbox, "/api/slack", {"text": "secret plans"})

        def arrived(s: dict[str, Any]) -> bool:
            found = chat_of(s, "DM with @alice")
            return bool(found and found["messages"]) and bool(
                [m for m in s["messages"] if m.get("ts") == answer["ts"] and m["reactions"]]
            )

        state = await state_when(session, sandbox, arrived, "the encrypted DM and its ✅")
        chat = chat_of(state, "DM with @alice")
        assert chat is not None
        [mine] = chat["messages"]
        assert (mine["text"], mine["you"], mine["verified"]) == ("You: secret plans", True, True)
        assert sandbox.x.events == []  # nothing over the legacy DM API, in the clear

        # Alice answers from her phone: encrypted and signed there, decrypted by the bridge.
        reply = {"conversation_id": chat["id"], "username": "alice", "text": "see you at 3"}
        status, _ = await call(session, sandbox, "/api/x/reply", reply)
        assert status == 200
        state = await state_when(
            session,
            sandbox,
            lambda s: any(m["author"] == "Alice (@alice)" for m in s["messages"]),
            "her reply",
        )
        [back] = [m for m in state["messages"] if m["author"] == "Alice (@alice)"]
        assert text_of(back) == "see you at 3"

        # A DM with Bob, who is not on X Chat, is a legacy one: both show on the X side.
        await call(session, sandbox, "/api/slack", {"text": "/xdm unlink"})
        asked = await state_when(
            session, sandbox, lambda s: bool(buttons_of(s, "xdm_confirm_unlink")), "asked"
        )
        await call(
            session, sandbox, "/api/slack/click", {"id": buttons_of(asked, "xdm_confirm_unlink")[0]["id"]}
        )
        await state_when(session, sandbox, lambda s: bool(said(s, "stopped bridging")), "the unlink")
        await call(session, sandbox, "/api/slack", {"text": "/xdm dm @bob hello Bob"})
        state = await state_when(
            session,
            sandbox,
            lambda s: any(
                not c["encrypted"] and c["title"] == "DM with @bob" for c in s["x"]["conversations"]
            ),
            "the legacy DM",
        )
        assert [(c["title"], c["encrypted"]) for c in state["x"]["conversations"]] == [
            ("DM with @bob", False),
            ("DM with @alice", True),
        ]
        assert not said(state, "may never appear")


async def test_a_peer_on_x_chat_without_keys_at_the_bridge_is_warned_of(sandbox: Sandbox) -> None:
    async with browser() as session:
        await connect(session, sandbox)
        status, answer = await call(session, sandbox, "/api/xchat/forget", {})
        assert (status, answer["forgotten"]) == (200, "you")
        await call(session, sandbox, "/api/slack", {"text": "/xdm dm @carol"})
        state = await state_when(
            session, sandbox, lambda s: bool(said(s, "uses X's encrypted")), "the warning"
        )
        [warning] = said(state, "uses X's encrypted")
        assert "may never appear" in text_of(warning)
        assert "@carol uses X's encrypted Chat" in text_of(warning) and not warning["only_you"]
        assert [c["encrypted"] for c in state["x"]["conversations"]] in ([], [False])
        status, answer = await call(session, sandbox, "/api/xchat/forget", {})
        assert status == 400 and "holds no X Chat keys" in answer["error"]


async def test_a_legacy_group_with_someone_on_x_chat_is_warned_of_though_keys_are_held(
    sandbox: Sandbox,
) -> None:
    async with browser() as session:
        await connect(session, sandbox)
        await call(session, sandbox, "/api/slack", {"text": "/xdm new-group @alice @bob"})
        state = await state_when(
            session, sandbox, lambda s: bool(said(s, "uses X's encrypted")), "the warning"
        )
        [warning] = said(state, "uses X's encrypted")
        assert "@alice uses X's encrypted Chat, but this channel is bridged to a legacy DM" in text_of(
            warning
        )
        assert "holds none" not in text_of(warning) and state["x"]["keys"]["state"] == "held"


async def test_xdm_alone_opens_the_form_and_submitting_it_bridges_the_channel(sandbox: Sandbox) -> None:
    async with browser() as session:
        await connect(session, sandbox)
        await call(session, sandbox, "/api/slack", {"text": "/xdm"})
        state = await state_when(session, sandbox, lambda s: bool(s["home"]["modal"]), "the form")
        modal = state["home"]["modal"]
        assert (
            modal["title"] == "Bridge to X"
            and modal["form"]["people"]
            and modal["form"]["submit"] == "Bridge"
        )
        assert not said(state, "/xdm new-group")  # the form, not the help text

        status, answer = await call(session, sandbox, "/api/slack/modal/submit", {"people": []})
        assert status == 200 and answer["errors"]  # nothing picked: said in the form
        _, found = await call(session, sandbox, "/api/slack/modal/suggest", {"value": "bo"})
        _, found = await call(session, sandbox, "/api/slack/modal/suggest", {"value": "bob"})
        assert [o["value"] for o in found["options"]] == ["bob"]
        body = {"people": ["bob"], "message": "Hi Bob, from the form"}
        status, answer = await call(session, sandbox, "/api/slack/modal/submit", body)
        assert (status, answer["errors"]) == (200, {})
        state = await state_when(
            session, sandbox, lambda s: bool(said(s, "bridged this channel")), "the channel told"
        )
        state = await state_when(
            session,
            sandbox,
            lambda s: any(
                m["text"].endswith("Hi Bob, from the form")
                for c in s["x"]["conversations"]
                for m in c["messages"]
            ),
            "the opening message on X",
        )
        modal = state["home"]["modal"]
        assert (
            modal is not None
            and modal["form"] is None
            and "bridged this channel" in "".join(p["text"] for p in modal["parts"])
        )


async def test_edits_deletions_and_files_of_an_encrypted_dm_show_on_both_sides(sandbox: Sandbox) -> None:
    async with browser() as session:
        await connect(session, sandbox)
        await call(session, sandbox, "/api/slack", {"text": "/xdm dm @alice"})
        await state_when(session, sandbox, lambda s: chat_of(s, "DM with @alice") is not None, "the chat")

        def chat_messages(s: dict[str, Any]) -> list[dict[str, Any]]:
            found = chat_of(s, "DM with @alice")
            return list(found["messages"]) if found else []

        _, first = await call(session, sandbox, "/api/slack", {"text": "at 3"})
        await state_when(session, sandbox, lambda s: len(chat_messages(s)) == 1, "the first DM")
        await call(session, sandbox, "/api/slack/edit", {"ts": first["ts"], "text": "at 4"})
        state = await state_when(
            session, sandbox, lambda s: [m["text"] for m in chat_messages(s)] == ["You: at 4"], "the edit"
        )
        assert chat_messages(state)[0]["edited"] and chat_messages(state)[0]["verified"]
        await call(session, sandbox, "/api/slack/delete", {"ts": first["ts"]})
        await state_when(session, sandbox, lambda s: chat_messages(s)[0]["deleted"], "the deletion")

        # A picture from Slack goes as X Chat's encrypted media; Alice's phone decrypts it.
        status, answer = await call(session, sandbox, "/api/slack/file", {"text": "the dot", "file": png()})
        assert (status, answer["sent"]) == (200, "message")
        state = await state_when(
            session,
            sandbox,
            lambda s: len(chat_messages(s)) == 2 and bool(chat_messages(s)[-1]["media"]),
            "file",
        )
        [media] = chat_messages(state)[-1]["media"]
        assert media["kind"] == "image" and media["name"] == "dot.png"
        async with session.get(sandbox.url + media["url"].lstrip("/")) as response:
            assert (response.status, response.content_type, await response.read()) == (200, "image/png", PNG)
        assert not any(PNG in blob for blob in sandbox.x.chat.media.values())  # X holds ciphertext

        # Alice sends a photo from her phone: encrypted there, decrypted by the bridge, shared in Slack.
        chat = chat_of(state, "DM with @alice")
        assert chat is not None
        body = {"conversation_id": chat["id"], "username": "alice", "text": "mine", "photo": png()}
        status, _ = await call(session, sandbox, "/api/x/reply", body)
        assert status == 200
        state = await state_when(
            session,
            sandbox,
            lambda s: any(m["author"] == "xdm-bridge" and m.get("files") for m in s["messages"]),
            "her photo in the channel",
        )
        [shared] = [m for m in state["messages"] if m["author"] == "xdm-bridge" and m.get("files")]
        async with session.get(sandbox.url + shared["files"][0]["url"].lstrip("/")) as response:
            assert await response.read() == PNG


async def test_the_form_opened_from_the_home_asks_for_the_channel(sandbox: Sandbox) -> None:
    async with browser() as session:
        await connect(session, sandbox)
        await call(session, sandbox, "/api/slack/home", {"open": True})
        await state_when(session, sandbox, lambda s: s["home"]["published"], "the Home")
        status, _ = await call(
            session,
            sandbox,
            "/api/slack/home/click",
            {"action": "xdm_home_new_bridge", "value": "xdm_home_new_bridge"},
        )
        assert status == 200
        state = await state_when(session, sandbox, lambda s: bool(s["home"]["modal"]), "the form")
        assert state["home"]["modal"]["form"]["channels"] == [{"value": "C0SANDBOX", "text": "#sandbox"}]
        _, answer = await call(session, sandbox, "/api/slack/modal/submit", {"people": ["alice"]})
        assert answer["errors"]  # no channel picked
        body = {"channel": "C0SANDBOX", "people": ["alice"]}
        _, answer = await call(session, sandbox, "/api/slack/modal/submit", body)
        assert answer["errors"] == {}
        state = await state_when(
            session, sandbox, lambda s: bool(said(s, "bridged this channel")), "the channel told"
        )
        [told] = said(state, "bridged this channel")
        assert not told["only_you"] and "encrypted X Chat" in text_of(told)
