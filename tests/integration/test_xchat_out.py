"""Slack -> X over encrypted X Chat (issue 19), through the simulators with X's real crypto.

The bridge's account holds keys saved as ``xchat setup`` saves them (while the bridge runs: it
uses them on the next command, without a restart); the simulated people hold keys on their
"phones", so what they are shown was decrypted and its signature checked as a real app would.
Both stores.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from adapters.store.crypto import TokenCipher
from adapters.store.xchat import XChatIdentityStore
from adapters.web.app import METRICS, SERVICES
from adapters.x.xchat import ChatKeys
from bridge.model import ChannelMapping, MappingKind
from bridge.poster import METADATA_TYPE
from bridge.xchat import IdentityState
from tests.harness import ALICE, BOB, CAROL, FAST, ME, TEAM, Bridge, note, running_bridge, wait_until
from tests.integration.test_fidelity import GIF, PNG
from tests.integration.test_xchat_inbound import chat_reads

ALICE_CHAT = f"{ME}-{ALICE}"


def identities(bridge: Bridge) -> XChatIdentityStore:
    store = bridge.app[SERVICES].store
    return XChatIdentityStore(store.engine, TokenCipher(bridge.settings.encryption_keys))


async def give_identity(bridge: Bridge) -> None:
    """What `xdm-bridge xchat setup @bridge_owner` leaves: keys saved, then registered with X."""
    made = ChatKeys().new_identity()
    await identities(bridge).save_identity(ME, made, 0.0)
    version = bridge.x.register_keys(ME, made.registration)
    await identities(bridge).mark_registered(ME, version, 0.0)


def shown(bridge: Bridge, person: str, conversation: str) -> list[dict[str, Any]]:
    """What ``person``'s phone shows of the conversation (decrypted, verified), oldest first."""
    return bridge.x.chat.received(person, conversation)


def texts(bridge: Bridge, person: str, conversation: str) -> list[str]:
    return [
        e["content"]["text"]
        for e in shown(bridge, person, conversation)
        if e["type"] == "Message" and e["content"].get("content_type") == "Text"
    ]


async def waited_row(bridge: Bridge, ts: str) -> list[tuple[Any, ...]]:
    """The row's state and reason once it waits (the owner is told just before it is rescheduled)."""
    query = "SELECT state, last_error FROM outbox WHERE slack_ts = ?"
    for _ in range(200):
        found = await bridge.sql(query, ts)
        if found and found[0][1] and "waiting" in found[0][1]:
            return found
        await asyncio.sleep(0.02)
    return await bridge.sql(query, ts)


async def encrypted_dm(bridge: Bridge) -> None:
    await bridge.connect()
    await give_identity(bridge)
    bridge.x.chat.enroll(ALICE)
    _, response_url = await bridge.command("dm @alice")
    told = await bridge.follow_up(response_url)
    assert told["response_type"] == "in_channel"
    assert ":lock: This is an encrypted X Chat conversation" in told["text"], told["text"]


async def test_dm_with_someone_on_x_chat_is_encrypted_end_to_end_and_never_legacy(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await encrypted_dm(bridge)
        _, ts = await bridge.post("hello from Slack 👋", blocks=[])
        await bridge.wait_reaction("C100", ts, "white_check_mark")

        [message] = [e for e in shown(bridge, ALICE, ALICE_CHAT) if e["type"] == "Message"]
        assert message["verified"] and message["sender_id"] == ME
        assert message["content"]["text"] == "Ada: hello from Slack 👋"
        assert not any(e["type"] == "Error" for e in shown(bridge, ALICE, ALICE_CHAT))
        assert bridge.x.events == []  # nothing went over the legacy DM endpoints, in the clear
        [(encrypted, dm_event_id)] = await bridge.sql("SELECT encrypted, dm_event_id FROM outbox")
        assert encrypted and dm_event_id  # the sequence id X gave it (what edits and deletes name)

        ack, _ = await bridge.command("status")
        assert "encrypted X Chat conversation with @alice" in ack.text
        assert ":lock: This is an encrypted X Chat conversation" in ack.text
        assert "replies may never appear" not in ack.text  # the bridge holds the keys: not one-way
        metrics = bridge.app[METRICS]
        await metrics.refresh()
        assert metrics.registry.get_sample_value("xchat_one_way_conversations") == 0


async def test_dm_with_someone_without_keys_stays_legacy_and_says_nothing_of_encryption(
    tmp_path: Path,
) -> None:
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        await give_identity(bridge)
        bridge.x.no_keys_answer = "not_found"
        _, response_url = await bridge.command("dm @bob")
        text = (await bridge.follow_up(response_url))["text"]
        assert "encrypt" not in text.lower() and ":lock:" not in text
        _, ts = await bridge.post("plain DM", blocks=[])
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        assert bridge.texts() == ["Ada: plain DM"]
        assert await bridge.sql("SELECT encrypted FROM mappings") in ([(0,)], [(False,)])


async def test_an_identity_saved_while_serving_is_used_on_the_next_command(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        bridge.x.chat.enroll(ALICE)
        _, response_url = await bridge.command("dm @alice")
        assert ":lock: @alice uses X's encrypted Chat" in (await bridge.follow_up(response_url))["text"]
        await bridge.confirmed("unlink")
        await give_identity(bridge)  # `xchat setup` in another process, the bridge still running
        _, response_url = await bridge.command("dm @alice")
        assert "This is an encrypted X Chat conversation" in (await bridge.follow_up(response_url))["text"]


async def test_a_lost_answer_is_settled_by_reading_and_makes_no_second_message(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await encrypted_dm(bridge)
        path = f"/2/chat/conversations/{ALICE_CHAT}/messages"
        bridge.x.inject("lost_response", path_contains=path)
        _, ts = await bridge.post("only once", blocks=[])
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        assert ("lost_response", path) in bridge.x.faults_served
        assert texts(bridge, ALICE, ALICE_CHAT) == ["Ada: only once"]
        posts = [r for r in bridge.x.all_requests if r.method == "POST" and r.path == path]
        assert len(posts) == 1  # X had it: read back, found by its signed message id
        [(sequence,)] = await bridge.sql("SELECT dm_event_id FROM outbox WHERE slack_ts = ?", ts)
        [mine] = [e for e in shown(bridge, ALICE, ALICE_CHAT) if e["type"] == "Message"]
        assert str(mine["sequence_id"]) == sequence


async def test_a_failed_attempt_resends_the_same_signed_message(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await encrypted_dm(bridge)
        path = f"/2/chat/conversations/{ALICE_CHAT}/messages"
        bridge.x.inject("503", path_contains=path)
        _, ts = await bridge.post("the same bytes", blocks=[])
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        posts = [r for r in bridge.x.all_requests if r.method == "POST" and r.path == path]
        assert len(posts) == 2 and posts[0].json == posts[1].json  # one message id, one signature
        assert texts(bridge, ALICE, ALICE_CHAT) == ["Ada: the same bytes"]


async def test_several_messages_arrive_in_order(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await encrypted_dm(bridge)
        stamps = [(await bridge.post(f"message {n}", blocks=[]))[1] for n in range(5)]
        for ts in stamps:
            await bridge.wait_reaction("C100", ts, "white_check_mark")
        assert texts(bridge, ALICE, ALICE_CHAT) == [f"Ada: message {n}" for n in range(5)]


async def test_edit_and_delete_arrive_as_x_chat_events(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await encrypted_dm(bridge)
        _, ts = await bridge.post("the meeting is at 3", blocks=[])
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        [(sequence,)] = await bridge.sql("SELECT dm_event_id FROM outbox WHERE slack_ts = ?", ts)

        changed = bridge.sender.message_changed_event("C100", "U100", ts, "the meeting is at 4", "x")
        assert (await bridge.sender.event(changed)).status == 200

        def edits() -> list[dict[str, Any]]:
            return [e for e in shown(bridge, ALICE, ALICE_CHAT) if e["content"].get("content_type") == "Edit"]

        await wait_until(lambda: bool(edits()), 10.0, "the edit at Alice's")
        [edit] = edits()
        assert edit["verified"] and edit["content"]["new_text"] == "Ada: the meeting is at 4"
        assert edit["content"]["target_message_id"] == sequence
        assert texts(bridge, ALICE, ALICE_CHAT) == ["Ada: the meeting is at 3"]  # no second message

        deleted = bridge.sender.message_deleted_event("C100", "U100", ts, "the meeting is at 4")
        assert (await bridge.sender.event(deleted)).status == 200
        [told] = await bridge.slack.wait_for(note, timeout=10.0)
        assert "Deleted on X Chat as well" in told.params["text"]
        [gone] = [e for e in shown(bridge, ALICE, ALICE_CHAT) if e["type"] == "MessageDeleted"]
        assert sequence in [str(s) for s in gone["message_ids"]]
        assert bridge.x.events == []


async def test_a_key_mismatch_flags_the_identity_tells_the_owner_and_sends_nothing(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await encrypted_dm(bridge)
        bridge.x.chat.enroll(ME)  # the account's owner registered other keys in an X app
        _, ts = await bridge.post("must not leak", blocks=[])
        [told] = await bridge.slack.wait_for(note, timeout=10.0)
        assert told.params["user"] == "U100" and "no longer has the X Chat keys" in told.params["text"]
        identity = await identities(bridge).identity(ME)
        assert identity is not None and identity.state is IdentityState.MISMATCH
        [(state, error)] = await waited_row(bridge, ts)
        assert texts(bridge, ALICE, ALICE_CHAT) == [] and bridge.x.events == []
        assert state == "waiting" and "no longer match" in error


async def test_new_group_of_people_on_x_chat_is_an_x_chat_group(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        await give_identity(bridge)
        for person in (ALICE, BOB, CAROL):
            bridge.x.chat.enroll(person)
        _, response_url = await bridge.command("new-group @alice @bob @carol hello all")
        told = await bridge.follow_up(response_url)
        assert "This is an encrypted X Chat conversation" in told["text"], told["text"]
        [(group,)] = await bridge.sql("SELECT conversation_id FROM mappings")
        assert str(group).startswith("g")
        await wait_until(lambda: texts(bridge, CAROL, group) == ["Ada: hello all"], 10.0, "the opening")
        assert bridge.x.events == []


async def test_a_legacy_group_of_an_account_with_keys_says_why_replies_may_not_come(tmp_path: Path) -> None:
    """Bob holds no X Chat keys, so the group is a legacy one although the bridge holds keys for
    the account: the warning for Alice and Carol must not say the bridge holds none."""
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        await give_identity(bridge)
        for person in (ALICE, CAROL):
            bridge.x.chat.enroll(person)
        _, response_url = await bridge.command("new-group @alice @bob @carol")
        told = (await bridge.follow_up(response_url))["text"]
        assert "This is an encrypted X Chat conversation" not in told
        assert (
            ":lock: @alice and @carol use X's encrypted Chat, but this channel is bridged to a legacy DM"
            in told
        )
        assert "the X Chat keys the bridge holds for @bridge_owner" in told
        assert "an encrypted group needs everyone in it on X Chat" in told
        assert "holds none" not in told and "may never appear here" in told

        ack, _ = await bridge.command("status")
        assert "bridged to a legacy DM" in ack.text and "holds none" not in ack.text

        # A legacy 1-to-1 linked by its id: the encrypted one is a `/xdm dm` away.
        _, response_url = await bridge.command(f"link {ME}-{ALICE}", channel="C200")
        told = (await bridge.follow_up(response_url))["text"]
        assert f":lock: X user `{ALICE}` uses X's encrypted Chat, but" in told
        assert "`/xdm dm` bridges the encrypted one instead" in told and "holds none" not in told


async def test_keys_that_cannot_be_used_are_said_as_such_not_as_none(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        await give_identity(bridge)
        await identities(bridge).flag_mismatch(ME, "another key registered on X")
        bridge.x.chat.enroll(ALICE)
        _, response_url = await bridge.command("dm @alice")
        told = (await bridge.follow_up(response_url))["text"]
        assert ":lock: @alice uses X's encrypted Chat." in told
        assert "the X Chat keys the bridge holds for @bridge_owner cannot be used now" in told
        assert "holds none" not in told
        ack, _ = await bridge.command("status")
        assert "cannot be used now" in ack.text

        await identities(bridge).forget_identity(ME)  # `xchat forget`: now none are held
        ack, _ = await bridge.command("status")
        assert "the bridge holds none for @bridge_owner" in ack.text


async def test_link_takes_an_x_chat_conversation_the_account_is_in(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        await give_identity(bridge)
        bridge.x.chat.enroll(ALICE)
        conversation = bridge.x.chat.person_opens(ALICE, ME)  # Alice started it from her phone
        _, response_url = await bridge.command(f"link {conversation}")
        told = await bridge.follow_up(response_url)
        assert "This is an encrypted X Chat conversation" in told["text"], told["text"]
        _, ts = await bridge.post("linked", blocks=[])
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        assert texts(bridge, ALICE, conversation) == ["Ada: linked"]

        _, response_url = await bridge.command("link g1234567", channel="C200")
        refused = (await bridge.follow_up(response_url))["text"]
        assert ":x:" in refused and "Nothing was linked" in refused


async def test_xs_rules_come_back_to_the_author_as_a_reason(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await encrypted_dm(bridge)
        bridge.x.chat_send_refusals.append((403, "The recipient has not accepted your message request"))
        _, ts = await bridge.post("knock knock", blocks=[])
        await bridge.wait_reaction("C100", ts, "warning")
        [told] = await bridge.slack.wait_for(note, timeout=10.0)
        assert "not accepted your message request" in told.params["text"]
        assert texts(bridge, ALICE, ALICE_CHAT) == [] and bridge.x.events == []


async def test_a_refusal_naming_the_accounts_key_is_a_mismatch_and_the_message_waits(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await encrypted_dm(bridge)
        bridge.x.chat_send_refusals.append(
            (400, "The signing key version is not the user's registered public key")
        )
        _, ts = await bridge.post("wait for the keys", blocks=[])
        [told] = await bridge.slack.wait_for(note, timeout=10.0)
        assert "no longer has the X Chat keys" in told.params["text"]
        identity = await identities(bridge).identity(ME)
        assert identity is not None and identity.state is IdentityState.MISMATCH
        [(state, error)] = await waited_row(bridge, ts)
        assert state == "waiting" and "no longer match" in error
        # X refused it: it is made again with the keys the operator brings, never these.
        assert await bridge.sql("SELECT chat FROM outbox WHERE slack_ts = ?", ts) == [(None,)]
        assert texts(bridge, ALICE, ALICE_CHAT) == [] and bridge.x.events == []


async def test_messages_waiting_on_a_mismatch_go_once_the_operator_brings_new_keys(tmp_path: Path) -> None:
    async with running_bridge(tmp_path, delivery=replace(FAST, chat_wait=0.2)) as bridge:
        await encrypted_dm(bridge)
        bridge.x.chat_send_refusals.append((400, "The signing key is not the user's registered public key"))
        _, ts = await bridge.post("after the new keys", blocks=[])
        await waited_row(bridge, ts)
        await identities(bridge).forget_identity(ME)  # `xchat forget`, then `xchat setup` again
        await give_identity(bridge)
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        [message] = [e for e in shown(bridge, ALICE, ALICE_CHAT) if e["type"] == "Message"]
        assert message["verified"] and message["content"]["text"] == "Ada: after the new keys"
        posts = [
            r.json for r in bridge.x.all_requests if r.path == f"/2/chat/conversations/{ALICE_CHAT}/messages"
        ]
        assert len(posts) == 2 and posts[0]["message_id"] != posts[1]["message_id"]  # made again


async def test_files_go_encrypted_and_alices_phone_decrypts_them_byte_for_byte(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await encrypted_dm(bridge)
        photo = bridge.slack.add_file(
            "F1", name="photo.png", mimetype="image/png", filetype="png", content=PNG
        )
        anim = bridge.slack.add_file("F2", name="wave.gif", mimetype="image/gif", filetype="gif", content=GIF)
        _, ts = await bridge.post("two files", files=[photo, anim], blocks=[])
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        messages = [e for e in shown(bridge, ALICE, ALICE_CHAT) if e["type"] == "Message"]
        assert [m["content"]["text"] for m in messages] == ["Ada: two files", ""]
        files = []
        for message in messages:
            [attachment] = message["content"]["attachments"]
            media = attachment["media"]
            files.append(bridge.x.chat.received_media(ALICE, ALICE_CHAT, media["media_hash_key"]))
        assert files == [PNG, GIF]
        assert not any(blob in (PNG, GIF) for blob in bridge.x.chat.media.values())  # X holds ciphertext
        assert bridge.x.events == []


async def test_a_person_whose_keys_do_not_verify_is_said_and_nothing_is_bridged(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        await give_identity(bridge)
        for person in (ALICE, BOB):
            bridge.x.chat.enroll(person)
        forged = ChatKeys().new_identity().registration
        forged["public_key"]["identity_public_key_signature"] = (
            ChatKeys().new_identity().registration["public_key"]["identity_public_key_signature"]
        )  # not a signature of these keys: a key bound to no one
        bridge.x.register_keys(CAROL, forged)
        _, response_url = await bridge.command("new-group @alice @bob @carol")
        told = (await bridge.follow_up(response_url))["text"]
        assert told.startswith(":x: X Chat:") and "2003 has no X Chat keys" in told, told
        assert await bridge.sql("SELECT channel_id FROM mappings") == []
        assert not any(r.path.startswith("/2/chat/conversations/group") for r in bridge.x.all_requests)


async def test_both_ways_in_one_encrypted_conversation_and_no_echo(tmp_path: Path) -> None:
    """The two halves together: a message from Slack reaches Alice encrypted, her answer comes
    back into the channel as her, and the bridge's own message is never posted back."""
    async with running_bridge(tmp_path) as bridge:
        await encrypted_dm(bridge)
        _, ts = await bridge.post("are you there?", blocks=[])
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        assert texts(bridge, ALICE, ALICE_CHAT) == ["Ada: are you there?"]
        bridge.x.chat.person_says(ALICE, ALICE_CHAT, "yes, here 🔒")
        [account] = await bridge.app[SERVICES].store.list_accounts()

        def relayed() -> list[dict[str, Any]]:
            return [
                m
                for m in bridge.slack.posted("C100")
                if (m.get("metadata") or {}).get("event_type") == METADATA_TYPE
            ]

        bridge.app[SERVICES].inbound.poll_soon(account.id)
        await wait_until(lambda: len(relayed()) >= 1, 10, "Alice's answer in the channel")
        reads = chat_reads(bridge)
        bridge.app[SERVICES].inbound.poll_soon(account.id)
        await wait_until(lambda: chat_reads(bridge) >= reads + 2, 10, "more reads")  # nothing more
        [answer] = relayed()
        assert answer["text"] == "yes, here 🔒"
        assert answer["username"].startswith("Alice")


async def test_another_conversations_key_served_here_is_never_encrypted_to(tmp_path: Path) -> None:
    """X serves the conversation's key changes. Carol's key change of her own 1-to-1 with the
    account (signed by her, the key wrapped for the account too) served among Alice's would, if
    taken, have the bridge encrypt what is meant for Alice with a key Carol holds: X hands her the
    ciphertext, and she reads it. A key is this conversation's only when signed for it."""
    async with running_bridge(tmp_path) as bridge:
        await encrypted_dm(bridge)
        chat = bridge.x.chat
        chat.enroll(CAROL)
        carols = chat.conversations[chat.conversation(chat.person_opens(CAROL, ME), CAROL).id]
        # Carol's conversation is bridged too (C200): the bridge knows her signing keys.
        store = bridge.app[SERVICES].store
        [account] = await store.list_accounts()
        mapping = ChannelMapping(
            TEAM,
            "C200",
            MappingKind.LINK,
            account.id,
            f"{ME}-{CAROL}",
            None,
            "U100",
            time.time(),
            encrypted=True,
        )
        assert await store.create_mapping(mapping) is not None
        bridge.app[SERVICES].inbound.poll_soon(account.id)
        await wait_until(lambda: chat_reads(bridge, f"{ME}-{CAROL}") >= 1, 10, "Carol's conversation read")
        alices = chat.conversations[chat.conversation(ALICE_CHAT, ALICE).id]
        alices.key_events.append(carols.key_events[-1])  # the newest key change here is Carol's
        chats = bridge.app[SERVICES].inbound.chats
        assert chats is not None
        for _, session in chats._readers._sessions.values():  # type: ignore[attr-defined]
            session._conversation_keys.clear()  # read from X now, not kept from the command
        _, ts = await bridge.post("for Alice only", blocks=[])
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        assert texts(bridge, ALICE, ALICE_CHAT) == ["Ada: for Alice only"]
        sent = alices.events[-1]["encoded_event"]
        read = chat._phone(CAROL).decrypt_events([*carols.key_events, sent], chat.signing_entries())
        assert [m["event"]["type"] for m in read["messages"]] == ["KeyChange"]  # not the message
