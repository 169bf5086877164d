"""Slack's own surfaces over real HTTP: App Home, the bridge modal, Confirm / Cancel.

The bridge runs between the simulators; every payload is signed as Slack signs it, trigger
ids are the fake Slack's own (usable once, for 3 s), and each test runs on both stores.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from adapters.sandbox.fake_slack_views import SurfaceSender, ViewButton, view_text
from bridge.confirm import CONFIRM_CANCEL, CONFIRM_DISCONNECT, CONFIRM_UNLINK
from bridge.home import CONNECT_ACTION, DISCONNECT_ACTION, NEW_BRIDGE_ACTION, UNLINK_ACTION
from bridge.inbound import InboundConfig
from bridge.modals import (
    CHANNEL_ACTION,
    CHANNEL_BLOCK,
    CONVERSATION_ACTION,
    CONVERSATION_BLOCK,
    INBOX_READ,
    MESSAGE_ACTION,
    MESSAGE_BLOCK,
    PEOPLE_ACTION,
    PEOPLE_BLOCK,
)
from tests.harness import ALICE, BOB, ME, Bridge, authorize_url, linked, running_bridge, wait_until

FAST_INBOUND_PAGE = InboundConfig().page_size


def surfaces(bridge: Bridge) -> SurfaceSender:
    return SurfaceSender(bridge.sender, bridge.slack)


async def home_of(bridge: Bridge, user: str, *, containing: str = "") -> str:
    """The Home ``user`` sees once it shows ``containing`` (published in the background)."""
    await wait_until(
        lambda: (
            bridge.slack.views.home(user) is not None and containing in bridge.slack.views.home_text(user)
        ),
        10.0,
        f"{user}'s App Home showing {containing!r}: {bridge.slack.views.home_text(user)!r}",
    )
    return bridge.slack.views.home_text(user)


def publishes(bridge: Bridge, user: str) -> int:
    return sum(1 for c in bridge.slack.calls_to("views.publish") if c.params.get("user_id") == user)


async def opened_home(bridge: Bridge, user: str, containing: str = "") -> str:
    """``user`` opens the Home tab; what the Home published for that opening shows."""
    before = publishes(bridge, user)
    result = await surfaces(bridge).home_opened(user)
    assert result.status == 200, result.text
    await wait_until(lambda: publishes(bridge, user) > before, 10.0, f"{user}'s Home published")
    return await home_of(bridge, user, containing=containing)


def home_button(bridge: Bridge, user: str, action_id: str, value: str = "") -> ViewButton:
    view = bridge.slack.views.home(user)
    assert view is not None
    found = [
        b for b in bridge.slack.views.buttons(view, user) if b.action_id == action_id and value in b.value
    ]
    assert found, f"no {action_id} on {user}'s Home: {bridge.slack.views.home_text(user)}"
    return found[0]


def picked(people: tuple[str, ...] = (), conversation: str = "", message: str = "") -> dict[str, Any]:
    """A modal's state values as Slack sends them."""
    values: dict[str, Any] = {
        PEOPLE_BLOCK: {
            PEOPLE_ACTION: {
                "type": "multi_external_select",
                "selected_options": [
                    {"text": {"type": "plain_text", "text": f"@{p}"}, "value": p} for p in people
                ],
            }
        },
        MESSAGE_BLOCK: {MESSAGE_ACTION: {"type": "plain_text_input", "value": message or None}},
    }
    if conversation:
        values[CONVERSATION_BLOCK] = {
            CONVERSATION_ACTION: {
                "type": "static_select",
                "selected_option": {"text": {"type": "plain_text", "text": "x"}, "value": conversation},
            }
        }
    return values


async def test_each_person_sees_their_own_home(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)  # U100: X account @bridge_owner, C100 bridged to 1000-2001
        _, ts = await bridge.post("hello X")
        await bridge.wait_reaction("C100", ts, "white_check_mark")

        ada = await opened_home(bridge, "U100", "@bridge_owner")
        assert "Reconnect" in ada and "Disconnect" in ada
        assert "<#C100> → an X DM" in ada and "active" in ada
        assert "last activity today" in ada  # the DM just sent
        assert "Workspace settings" not in ada  # Ada is no admin

        grace = await opened_home(bridge, "U200", "Not connected")
        assert "Connect" in grace and "@bridge_owner" not in grace and "<#C100>" not in grace
        assert "Workspace settings" not in grace

        cleo = await opened_home(bridge, "U300", "Workspace settings")  # a workspace admin
        assert "Who may bridge" in cleo and "*Bridged channels*\n1" in cleo
        assert "*Connected X accounts*\n1" in cleo
        assert "@bridge_owner" not in cleo
        # Whether Cleo is an admin is asked of Slack once, not at every opening.
        await opened_home(bridge, "U300", "Workspace settings")
        asked = [c for c in bridge.slack.calls_to("users.info") if c.params.get("user") == "U300"]
        assert len(asked) == 1
        published = [c.params["user_id"] for c in bridge.slack.calls_to("views.publish")]
        assert {"U100", "U200", "U300"} <= set(published)


async def test_home_is_republished_when_what_it_shows_changes(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        # Nobody opened the Home: connecting publishes it.
        await home_of(bridge, "U100", containing="@bridge_owner")
        ack = await bridge.map_link("1000-2001")
        assert "bridged this channel" in ack.text
        await home_of(bridge, "U100", containing="<#C100>")
        ack, _ = await bridge.confirmed("unlink")
        assert "stopped bridging" in ack.text
        await wait_until(lambda: "<#C100>" not in bridge.slack.views.home_text("U100"), 10.0, "C100 gone")
        ack, response_url = await bridge.confirmed("disconnect")
        await bridge.follow_up(response_url, count=2)
        await home_of(bridge, "U100", containing="Not connected")


async def test_a_failed_message_shows_on_the_home(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        await opened_home(bridge, "U100", "<#C100>")
        bridge.x.inject("403")
        _, ts = await bridge.post("this one X refuses")
        await bridge.wait_reaction("C100", ts, "warning")
        home = await home_of(bridge, "U100", containing="1 failed")
        assert "<#C100>" in home


async def test_xdm_without_text_opens_the_modal_with_the_commands_trigger_id(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        bridge.x.add_event(f"{ME}-{ALICE}", ALICE, "hello from alice")
        form_reads: list[str] = []  # the inbox reads of the form's size (the poller reads 10)

        def note(request: web.Request, response: web.StreamResponse) -> None:
            size = request.query.get("max_results", "")
            if request.path == "/2/dm_events" and size != str(FAST_INBOUND_PAGE):
                form_reads.append(size)

        bridge.x.response_hook = note
        trigger = bridge.slack.views.issue_trigger_id("U100")
        result = await bridge.sender.command(
            "",
            user_id="U100",
            channel_id="C100",
            response_url=bridge.slack.new_response_url(),
            trigger_id=trigger,
        )
        assert result.status == 200 and result.text == "", [
            str(c) for c in bridge.slack.calls_to("views.open")
        ]
        [opened] = bridge.slack.calls_to("views.open")
        assert opened.ok and opened.params["trigger_id"] == trigger
        modal = bridge.slack.views.modal("U100")
        assert modal is not None and modal["title"]["text"] == "Bridge to X"
        # Then the account's conversations, read from X, are filled in by handle (no raw ids shown).
        await wait_until(
            lambda: "@alice" in json.dumps(bridge.slack.views.modal("U100")),
            10.0,
            "conversations in the modal",
        )
        options = json.dumps(bridge.slack.views.modal("U100"))
        assert "DM with @alice" in options

        # Opened again soon after, the form reuses the list: no second read (X bills each event).
        assert form_reads == [str(INBOX_READ)]
        await bridge.sender.command(
            "", user_id="U100", channel_id="C100", response_url=bridge.slack.new_response_url()
        )
        await wait_until(lambda: len(bridge.slack.calls_to("views.update")) >= 2, 10.0, "the second fill")
        assert "DM with @alice" in json.dumps(bridge.slack.views.modal("U100"))
        assert form_reads == [str(INBOX_READ)]


async def test_an_unusable_trigger_id_falls_back_to_the_help(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        result = await bridge.sender.command(
            "",
            user_id="U100",
            channel_id="C100",
            response_url=bridge.slack.new_response_url(),
            trigger_id="1.2.3",
        )
        assert result.status == 200
        assert "/xdm new-group" in result.text  # the typed forms, as before
        assert bridge.slack.calls_to("views.open")[0].error == "invalid_trigger_id"


async def test_a_modal_submission_creates_the_mapping(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        await bridge.sender.command(
            "", user_id="U100", channel_id="C100", response_url=(url := bridge.slack.new_response_url())
        )
        modal = bridge.slack.views.modal("U100")
        assert modal is not None
        ui = surfaces(bridge)
        # The people picker looks the handle up at X and says whether they accept DMs.
        found = await ui.suggest(
            modal, action_id=PEOPLE_ACTION, block_id=PEOPLE_BLOCK, value="@ali", user_id="U100"
        )
        assert found.status == 200 and found.json()["options"] == []  # no X user @ali
        found = await ui.suggest(
            modal, action_id=PEOPLE_ACTION, block_id=PEOPLE_BLOCK, value="alice", user_id="U100"
        )
        [option] = found.json()["options"]
        assert option["value"] == "alice" and "accepts your DMs" in option["text"]["text"]

        answer = await ui.submit(modal, picked(("alice",), message="@bob says hi"), user_id="U100")
        assert answer.status == 200, answer.text
        assert answer.json()["response_action"] == "update"
        # Said in the channel as the typed command says it, and the opening message went to X.
        told = await bridge.follow_up(url)
        assert "bridged this channel" in told["text"] and told["response_type"] == "in_channel"
        rows = await bridge.sql(
            "SELECT kind, participant_id, created_by FROM mappings WHERE channel_id = ?", "C100"
        )
        assert [tuple(r) for r in rows] == [("dm", ALICE, "U100")]
        await bridge.wait_dms(1)
        assert bridge.texts(f"{ME}-{ALICE}")[-1].endswith("@bob says hi")
        await wait_until(
            lambda: "bridged this channel" in json.dumps(bridge.slack.views.modal("U100")),
            10.0,
            "outcome in modal",
        )


async def test_modal_refusals_are_shown_in_the_modal(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await bridge.sender.command(
            "", user_id="U200", channel_id="C100", response_url=bridge.slack.new_response_url()
        )
        modal = bridge.slack.views.modal("U200")
        assert modal is not None
        ui = surfaces(bridge)
        nothing = await ui.submit(modal, picked(), user_id="U200")
        assert nothing.json()["response_action"] == "errors"
        assert PEOPLE_BLOCK in nothing.json()["errors"]
        both = await ui.submit(modal, picked(("alice",), conversation=f"{ME}-{ALICE}"), user_id="U200")
        assert CONVERSATION_BLOCK in both.json()["errors"]
        unconnected = await ui.submit(modal, picked(("alice", "bob")), user_id="U200")
        assert "Connect your X account first" in unconnected.json()["errors"][PEOPLE_BLOCK]
        assert await bridge.sql("SELECT channel_id FROM mappings") == []


async def test_a_conversation_picked_in_the_modal_is_linked(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        group = bridge.x.create_group(ME, [ALICE, BOB])
        bridge.x.add_message(group, BOB, "group chatter")
        await bridge.sender.command(
            "", user_id="U100", channel_id="C100", response_url=(url := bridge.slack.new_response_url())
        )
        await wait_until(
            lambda: "Group with @bob" in json.dumps(bridge.slack.views.modal("U100")),
            10.0,
            "the group listed",
        )
        modal = bridge.slack.views.modal("U100")
        assert modal is not None and group not in surfaces_text(modal)
        answer = await surfaces(bridge).submit(modal, picked(conversation=group), user_id="U100")
        assert answer.json()["response_action"] == "update", answer.text
        told = await bridge.follow_up(url)
        assert "bridged this channel" in told["text"]
        rows = await bridge.sql("SELECT kind, conversation_id FROM mappings WHERE channel_id = ?", "C100")
        assert [tuple(r) for r in rows] == [("link", group)]


def surfaces_text(view: dict[str, Any]) -> str:
    """What a person reads on a view (option labels included), not its values."""
    labels = [
        str(o["text"]["text"])
        for b in view.get("blocks") or []
        for o in (b.get("element") or {}).get("options") or []
    ]
    return view_text(view) + "\n" + "\n".join(labels)


async def test_unlink_from_the_home_asks_and_only_its_person_may_confirm(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        await opened_home(bridge, "U100", "<#C100>")
        clicked = await surfaces(bridge).click(home_button(bridge, "U100", UNLINK_ACTION, "C100"))
        assert clicked.status == 200
        await wait_until(
            lambda: any(b.action_id == CONFIRM_UNLINK for b in bridge.slack.buttons("U100")), 10.0, "ask"
        )
        [confirm] = [b for b in bridge.slack.buttons("U100") if b.action_id == CONFIRM_UNLINK]
        assert confirm.text.startswith("Confirm")
        assert [b.text for b in bridge.slack.buttons("U100") if b.action_id == CONFIRM_CANCEL] == ["Cancel"]

        # Grace clicks Ada's Confirm: refused, nothing changes.
        url = bridge.slack.click_response_url(confirm)
        assert (await bridge.sender.click(confirm, user_id="U200", response_url=url)).status == 200
        told = await bridge.follow_up(url)
        assert "only they can answer" in told["text"] and told.get("response_type") == "ephemeral"
        assert len(await bridge.sql("SELECT channel_id FROM mappings")) == 1

        url = bridge.slack.click_response_url(confirm)
        assert (await bridge.sender.click(confirm, user_id="U100", response_url=url)).status == 200
        told = await bridge.follow_up(url)
        assert "stopped bridging" in told["text"]
        assert await bridge.sql("SELECT channel_id FROM mappings") == []
        assert any("stopped bridging" in m.get("text", "") for m in bridge.slack.posted("C100"))
        await wait_until(lambda: "<#C100>" not in bridge.slack.views.home_text("U100"), 10.0, "Home updated")


async def test_disconnect_from_the_home_asks_and_cancel_changes_nothing(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        await opened_home(bridge, "U100", "Disconnect")
        await surfaces(bridge).click(home_button(bridge, "U100", DISCONNECT_ACTION))
        await wait_until(
            lambda: any(b.action_id == CONFIRM_DISCONNECT for b in bridge.slack.buttons("U100")), 10.0, "ask"
        )
        [cancel] = [b for b in bridge.slack.buttons("U100") if b.action_id == CONFIRM_CANCEL]
        url = bridge.slack.click_response_url(cancel)
        await bridge.sender.click(cancel, user_id="U100", response_url=url)
        assert "nothing was changed" in (await bridge.follow_up(url))["text"]
        assert [tuple(r) for r in await bridge.sql("SELECT disconnected_at FROM accounts")] == [(None,)]

        assert not bridge.slack.buttons("U100"), "the question's buttons go with its answer"

        await surfaces(bridge).click(home_button(bridge, "U100", DISCONNECT_ACTION))
        await wait_until(
            lambda: any(b.action_id == CONFIRM_DISCONNECT for b in bridge.slack.buttons("U100")), 10.0, "ask"
        )
        [confirm] = [b for b in bridge.slack.buttons("U100") if b.action_id == CONFIRM_DISCONNECT]
        assert confirm.text == "Confirm: Disconnect"
        url = bridge.slack.click_response_url(confirm)
        await bridge.sender.click(confirm, user_id="U100", response_url=url)
        done = await bridge.follow_up(url, count=2)
        assert "Disconnected X account @bridge_owner" in done["text"]
        await home_of(bridge, "U100", containing="Not connected")


async def test_interactions_without_a_valid_signature_are_refused(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        await opened_home(bridge, "U100", "<#C100>")
        await surfaces(bridge).click(home_button(bridge, "U100", UNLINK_ACTION, "C100"))
        await wait_until(
            lambda: any(b.action_id == CONFIRM_UNLINK for b in bridge.slack.buttons("U100")), 10.0, "ask"
        )
        [confirm] = [b for b in bridge.slack.buttons("U100") if b.action_id == CONFIRM_UNLINK]
        url = bridge.slack.click_response_url(confirm)
        forged = await bridge.sender.click(
            confirm, user_id="U100", response_url=url, signature_override="v0=" + "0" * 64
        )
        assert forged.status == 401
        payload = bridge.sender.block_actions(confirm, user_id="U100", response_url=url)
        unsigned = await bridge.sender.raw(
            urlencode({"payload": json.dumps(payload)}).encode(),
            "application/x-www-form-urlencoded",
            sign=False,
        )
        assert unsigned.status == 401
        forged_home = await surfaces(bridge).click(
            home_button(bridge, "U100", CONNECT_ACTION), signature_override="v0=" + "f" * 64
        )
        assert forged_home.status == 401
        assert len(await bridge.sql("SELECT channel_id FROM mappings")) == 1
        assert not bridge.slack.responses.get(url.rsplit("/", 1)[-1])  # nothing answered the forged clicks


async def test_a_signed_submission_without_a_view_type_is_a_400_not_a_500(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        payload = {"type": "view_submission", "team": {"id": "T0001"}, "user": {"id": "U100"}, "view": {}}
        body = urlencode({"payload": json.dumps(payload)}).encode()
        result = await bridge.sender.raw(body, "application/x-www-form-urlencoded")
        assert result.status == 400 and "view" in result.text


async def test_connect_from_the_home_asks_in_a_dm_and_the_home_then_shows_the_account(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await opened_home(bridge, "U100", "Not connected")
        assert (await surfaces(bridge).click(home_button(bridge, "U100", CONNECT_ACTION))).status == 200
        modal = bridge.slack.views.modal("U100")
        assert modal is not None, "the Home's Connect opens a modal with the connect link"
        link = authorize_url(view_text(modal))
        x_url = await bridge.confirm(link)
        async with bridge.session.get(x_url, allow_redirects=False) as response:
            callback = response.headers["Location"]
        async with bridge.session.get(callback) as response:
            assert response.status == 200, await response.text()
        # No channel to ask in: the question comes as a direct message from the bot.
        await wait_until(lambda: any(b.channel == "U100" for b in bridge.slack.buttons("U100")), 10.0, "DM")
        _, response_url = await bridge.answer_connect("U100")
        assert "Connected X account @bridge_owner" in (await bridge.follow_up(response_url))["text"]
        home = await home_of(bridge, "U100", containing="@bridge_owner")
        assert "Reconnect" in home and "Not connected" not in home


async def test_a_refused_refresh_shows_on_the_home(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        await opened_home(bridge, "U100", "<#C100>")
        bridge.x.revoke_user_tokens(ME)
        await bridge.post("after the grant was revoked")
        await home_of(bridge, "U100", containing="needs reconnecting")


async def test_bridge_a_channel_from_the_home_picks_the_channel_too(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        await opened_home(bridge, "U100", "Bridge a channel")
        assert (await surfaces(bridge).click(home_button(bridge, "U100", NEW_BRIDGE_ACTION))).status == 200
        modal = bridge.slack.views.modal("U100")
        assert modal is not None and CHANNEL_BLOCK in json.dumps(modal)
        ui = surfaces(bridge)
        no_channel = await ui.submit(modal, picked(("alice",)), user_id="U100")
        assert CHANNEL_BLOCK in no_channel.json()["errors"]

        values = picked(("alice",))
        values[CHANNEL_BLOCK] = {
            CHANNEL_ACTION: {"type": "conversations_select", "selected_conversation": "C200"}
        }
        answer = await ui.submit(modal, values, user_id="U100")
        assert answer.json()["response_action"] == "update", answer.text

        # Slack gave a response_url for the channel picked: the typed command's announcement goes there.
        def announced() -> list[dict[str, Any]]:
            return [
                r for rs in bridge.slack.responses.values() for r in rs if "bridged" in str(r.get("text"))
            ]

        await wait_until(lambda: bool(announced()), 10.0, "the announcement through the response_url")
        [submitted] = announced()
        assert submitted["response_type"] == "in_channel"
        rows = await bridge.sql("SELECT channel_id, participant_id FROM mappings")
        assert [tuple(r) for r in rows] == [("C200", ALICE)]
        await home_of(bridge, "U100", containing="<#C200>")


async def test_a_modals_opening_message_is_posted_as_typed_never_as_a_broadcast_or_a_disguised_link(
    tmp_path: Path,
) -> None:
    """A form's text input gives the text raw, where a typed command's comes escaped by Slack.
    The bot shows the opening message in the channel: raw, ``<!channel>`` would be the bot's own
    @channel (workspaces may keep it from their members; bots are not kept from it) and
    ``<https://…|…>`` a link disguised as another. It is shown and sent as typed."""
    typed = "<!channel> <!subteam^S1> read <https://evil.example|docs.example.com> & co"
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        await bridge.sender.command(
            "", user_id="U100", channel_id="C100", response_url=bridge.slack.new_response_url()
        )
        modal = bridge.slack.views.modal("U100")
        assert modal is not None
        answer = await surfaces(bridge).submit(modal, picked(("alice",), message=typed), user_id="U100")
        assert answer.status == 200 and answer.json()["response_action"] == "update", answer.text
        [shown] = await bridge.slack.wait_for(
            lambda c: c.method == "chat.postMessage" and "opening message" in str(c.params.get("text")),
            timeout=10.0,
        )
        text = str(shown.params["text"])
        assert "<!" not in text and "<https" not in text, text
        assert text.endswith(
            "&lt;!channel&gt; &lt;!subteam^S1&gt; read &lt;https://evil.example|docs.example.com&gt; &amp; co"
        )
        await bridge.wait_dms(1)
        assert bridge.texts(f"{ME}-{ALICE}")[-1] == f"Ada: {typed}"  # X gets it as typed
