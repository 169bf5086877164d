"""X → Slack for encrypted X Chat conversations, through the real bridge between the simulators.

The bridge's account holds X Chat keys (made by ``xchat setup``'s code, kept encrypted in the
store); Alice's phone in the X simulator holds hers. What she writes is encrypted and signed for
real, read by the bridge over HTTP, decrypted and verified with X's ``chat_xdk``, and posted into
the channel as her, once, in order.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

from chat_xdk import Chat

from adapters.sandbox.fake_x import FakeX, sign
from adapters.store.crypto import TokenCipher
from adapters.store.xchat import XChatIdentityStore
from adapters.web.app import METRICS, SERVICES
from adapters.x.xchat import ChatKeys
from bridge.model import ChannelMapping, MappingKind
from bridge.poster import METADATA_TYPE
from tests.harness import ALICE, BOB, CAROL, ME, TEAM, Bridge, running_bridge, wait_until
from tests.integration.test_push import PUSHED, push_env

CONVERSATION = f"{ME}-{ALICE}"


async def encrypted_channel(bridge: Bridge, channel: str = "C100") -> str:
    """X account 1000 has X Chat keys (as ``xchat setup`` leaves them) and U100 connects it;
    Alice opens an encrypted 1-to-1 with it from her phone, and ``channel`` is bridged to it (a
    mapping marked encrypted)."""
    store = bridge.app[SERVICES].store
    made = ChatKeys().new_identity()
    version = bridge.x.register_keys(ME, made.registration)
    identities = XChatIdentityStore(store.engine, TokenCipher(bridge.settings.encryption_keys))
    if await identities.identity(ME) is None:
        await identities.save_identity(ME, made, time.time())
        await identities.mark_registered(ME, version, time.time())
    kept = await identities.identity(ME)
    assert kept is not None and kept.version is not None
    await bridge.connect()
    # The account's own "phone": its keys, writing as the Slack → X side does.
    phone = Chat()
    phone.import_keys(kept.private_keys, kept.version)
    phone.set_identity(ME, kept.version)
    bridge.x.chat.phones[ME] = phone
    bridge.x.chat.enroll(ALICE)
    conversation = bridge.x.chat.person_opens(ALICE, ME)
    [account] = await store.list_accounts()
    mapping = ChannelMapping(
        TEAM, channel, MappingKind.LINK, account.id, conversation, None, "U100", time.time(), encrypted=True
    )
    assert await store.create_mapping(mapping) is not None
    bridge.app[SERVICES].inbound.poll_soon(account.id)
    return conversation


async def first_read(bridge: Bridge) -> None:
    """The poller's first read of the conversation is done: its cursor is kept."""
    for _ in range(1000):
        if await bridge.sql("SELECT newest_sequence_id FROM xchat_cursors"):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no X Chat read")


def posts(bridge: Bridge, channel: str = "C100") -> list[dict[str, Any]]:
    return [
        m
        for m in bridge.slack.posted(channel)
        if (m.get("metadata") or {}).get("event_type") == METADATA_TYPE
    ]


async def wait_posts(bridge: Bridge, count: int, channel: str = "C100", timeout: float = 10.0) -> None:
    await wait_until(lambda: len(posts(bridge, channel)) >= count, timeout, f"{count} posts in {channel}")


def chat_reads(bridge: Bridge, conversation: str = CONVERSATION) -> int:
    path = f"/2/chat/conversations/{conversation}/events"
    return sum(1 for r in bridge.x.all_requests if r.method == "GET" and r.path == path)


async def test_what_alice_writes_encrypted_appears_as_her_in_order_once(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        conversation = await encrypted_channel(bridge)
        await first_read(bridge)
        for i in range(4):
            bridge.x.chat.person_says(ALICE, conversation, f"secret {i} <b> & co")
        await wait_posts(bridge, 4)
        reads = chat_reads(bridge)
        await wait_until(lambda: chat_reads(bridge) >= reads + 3, 10, "more reads")
        got = posts(bridge)
        assert [m["text"] for m in got] == [f"secret {i} &lt;b&gt; &amp; co" for i in range(4)]
        assert {m["username"] for m in got} == {"Alice (@alice)"}
        assert got[0]["icons"]["image_48"].endswith(f"/{ALICE}/avatar_normal.png")
        sequence_ids = [e["id"] for e in bridge.x.chat.conversations[f"{ME}:{ALICE}"].events]
        assert [m["metadata"]["event_payload"]["dm_event_id"] for m in got] == sequence_ids
        assert bridge.x.read_rate_limited_count == 0


async def test_after_a_restart_nothing_is_posted_twice(tmp_path: Path) -> None:
    fake = None
    async with running_bridge(tmp_path) as bridge:
        conversation = await encrypted_channel(bridge)
        await first_read(bridge)
        bridge.x.chat.person_says(ALICE, conversation, "before the restart")
        await wait_posts(bridge, 1)
        fake = bridge.x
        env = {"BRIDGE_ENCRYPTION_KEY": bridge.settings.encryption_keys[0]}
    async with running_bridge(tmp_path, fake_x=fake, env=env) as again:
        slack_before = len(posts(again))
        assert slack_before == 0  # a new fake Slack: anything posted here is a repost
        again.x.chat.person_says(ALICE, conversation, "after the restart")
        await wait_posts(again, 1)
        await asyncio.sleep(0.5)
        assert [m["text"] for m in posts(again)] == ["after the restart"]


async def test_a_tampered_or_forged_event_is_refused_counted_and_never_posted(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        conversation = await encrypted_channel(bridge)
        await first_read(bridge)
        bridge.x.chat.enroll(BOB)
        bridge.x.chat.person_says(ALICE, conversation, "genuine")
        bridge.x.chat.person_says(ALICE, conversation, "to be tampered with")
        conv = bridge.x.chat.conversations[f"{ME}:{ALICE}"]
        raw = bytearray(base64.b64decode(conv.events[-1]["encoded_event"]))
        raw[-20] ^= 0x01
        conv.events[-1]["encoded_event"] = base64.b64encode(bytes(raw)).decode()
        # Alice's phone claims the bridge's own account wrote this: signed with her key.
        bridge.x.chat.person_forges(ALICE, conversation, "I am the support team", as_user=ME)
        bridge.x.chat.person_says(ALICE, conversation, "after them")
        await wait_posts(bridge, 2)
        reads = chat_reads(bridge)
        await wait_until(lambda: chat_reads(bridge) >= reads + 3, 10, "more reads")
        assert [m["text"] for m in posts(bridge)] == ["genuine", "after them"]
        metrics = bridge.app[METRICS]
        refused = metrics.registry.get_sample_value("xchat_events_refused_total", {"source": "read"})
        assert refused == 2


async def test_what_the_team_account_writes_in_an_x_app_is_posted_marked_sent_from_x(
    tmp_path: Path,
) -> None:
    """As for legacy DMs: the account's own message that the bridge did not send (typed in X's
    app) is news to the channel, marked so; the bridge's own sends are never posted back (their
    sequence ids are recorded: test_xchat_out's both-ways test)."""
    async with running_bridge(tmp_path) as bridge:
        conversation = await encrypted_channel(bridge)
        await first_read(bridge)
        bridge.x.chat.person_says(ME, conversation, "typed in the X app")
        bridge.x.chat.person_says(ALICE, conversation, "an answer")
        await wait_posts(bridge, 2)
        reads = chat_reads(bridge)
        await wait_until(lambda: chat_reads(bridge) >= reads + 3, 10, "more reads")
        assert [m["text"] for m in posts(bridge)] == ["typed in the X app\n(sent from X)", "an answer"]


async def test_an_edit_and_a_delete_made_on_x_follow_in_slack(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        conversation = await encrypted_channel(bridge)
        await first_read(bridge)
        chat = bridge.x.chat
        chat.person_says(ALICE, conversation, "tpyo here")
        chat.person_says(ALICE, conversation, "to be taken back")
        await wait_posts(bridge, 2)
        first, second = (e["id"] for e in chat.conversations[f"{ME}:{ALICE}"].events)
        chat.person_edits(ALICE, conversation, first, "typo fixed")
        chat.person_deletes(ALICE, conversation, second)
        chat.person_says(ALICE, conversation, "and one more")
        await wait_until(lambda: "and one more" in [m["text"] for m in posts(bridge)], 10, "the last post")
        await wait_until(lambda: len(bridge.slack.deleted) == 1, 10, "the delete in Slack")
        shown = posts(bridge)
        assert [m["text"] for m in shown] == ["typo fixed", "and one more"]
        assert shown[0].get("edited") and shown[0]["username"] == "Alice (@alice)"
        assert [m["text"] for m in bridge.slack.deleted] == ["to be taken back"]
        reads = chat_reads(bridge)
        await wait_until(lambda: chat_reads(bridge) >= reads + 3, 10, "more reads")
        assert len(bridge.slack.deleted) == 1
        updates = [c for c in bridge.slack.calls if c.method == "chat.update"]
        assert len(updates) == 1
        states = await bridge.sql("SELECT event_type, state FROM inbound ORDER BY seq")
        assert [tuple(s) for s in states] == [
            ("MessageCreate", "posted"),
            ("MessageCreate", "posted"),
            ("ChatEdit", "posted"),
            ("ChatDelete", "posted"),
            ("MessageCreate", "posted"),
        ]


async def pushed_and_quiet(bridge: Bridge) -> str:
    """An encrypted channel, the account subscribed to X Chat's push, and polling slowed to its
    safety-net pace (so what arrives quickly came by push)."""
    await wait_until(lambda: any(w["valid"] for w in bridge.x.webhooks.values()), 10, "the webhook")
    conversation = await encrypted_channel(bridge)
    await wait_until(
        lambda: (
            ("chat.received", ME)
            in {(s["event_type"], s["filter"]["user_id"]) for s in bridge.x.subscriptions.values()}
        ),
        10,
        "the chat.received subscription",
    )
    await first_read(bridge)
    inbound = bridge.app[SERVICES].inbound
    await wait_until(
        lambda: (inbound.next_poll_at(1) or 0.0) > time.time() + PUSHED.push_interval / 2,
        10,
        "polling slowed to a safety net",
    )
    return conversation


async def test_a_pushed_x_chat_message_is_checked_read_and_posted_once(tmp_path: Path) -> None:
    x = FakeX()
    async with running_bridge(tmp_path, inbound=PUSHED, env=push_env(x), fake_x=x) as bridge:
        conversation = await pushed_and_quiet(bridge)
        reads = chat_reads(bridge)
        x.chat.person_says(ALICE, conversation, "pushed along")
        await wait_posts(bridge, 1, timeout=PUSHED.push_interval / 2)
        assert chat_reads(bridge) == reads + 1  # the push rang one read, and it brought the message
        await x.wait_pushes()
        assert [d["status"] for d in x.deliveries if b"chat.received" in d["body"]] == [200]
        assert [m["text"] for m in posts(bridge)] == ["pushed along"]
        origins: list[tuple[object, ...]] = []
        for _ in range(500):  # the post is in Slack; its row is marked posted just after
            if origins := await bridge.sql("SELECT origin FROM inbound WHERE state = 'posted'"):
                break
            await asyncio.sleep(0.01)
        assert origins == [("push",)]


async def test_a_forged_or_malformed_x_chat_push_is_refused_and_counted(tmp_path: Path) -> None:
    x = FakeX()
    async with running_bridge(tmp_path, inbound=PUSHED, env=push_env(x), fake_x=x) as bridge:
        conversation = await pushed_and_quiet(bridge)
        x.chat.person_says(ALICE, conversation, "genuine")
        await wait_posts(bridge, 1, timeout=PUSHED.push_interval / 2)
        genuine = x.chat.conversations[f"{ME}:{ALICE}"].events[-1]["encoded_event"]
        raw = bytearray(base64.b64decode(genuine))
        raw[-20] ^= 0x01
        tampered = base64.b64encode(bytes(raw)).decode()

        async def push(payload: dict[str, Any], named: bool = True) -> int:
            data: dict[str, Any] = {"event_type": "chat.received", "payload": payload}
            if named:  # whose subscription it is; without it, the accounts bridging the conversation
                data["filter"] = {"user_id": ME}
            body = json.dumps({"data": data}).encode()
            headers = {
                "Content-Type": "application/json",
                "x-twitter-webhooks-signature": sign(x.consumer_secret, body),
            }
            async with bridge.session.post(f"{bridge.url}/x/webhook", data=body, headers=headers) as response:
                assert "Traceback" not in await response.text()
                return response.status

        forged = {"conversation_id": conversation, "sender_id": ALICE, "encoded_event": tampered}
        assert await push(forged) == 400
        assert await push(forged, named=False) == 400  # checked with the keys of who bridges it
        assert await push({**forged, "conversation_id": "../../etc"}) == 400
        assert await push({**forged, "encoded_event": "not base64!"}) == 400
        assert await push({**forged, "encoded_event": genuine}) == 200  # again: read, never reposted
        await asyncio.sleep(0.5)
        assert [m["text"] for m in posts(bridge)] == ["genuine"]
        metrics = bridge.app[METRICS]
        assert metrics.registry.get_sample_value("xchat_events_refused_total", {"source": "push"}) == 2
        malformed = metrics.registry.get_sample_value("x_push_malformed_total", {"reason": "chat_event"})
        assert malformed == 2


PICTURE = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
    + (64).to_bytes(4, "big")
    + (48).to_bytes(4, "big")
    + b"\x08\x06\x00\x00\x00"
    + bytes(i % 251 for i in range(40_000))
)


async def test_a_file_sent_encrypted_is_decrypted_and_shared_with_its_message(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        conversation = await encrypted_channel(bridge)
        await first_read(bridge)
        media_key = bridge.x.chat.person_sends_media(ALICE, conversation, PICTURE, "cat.png", "look at this")
        bridge.x.chat.person_says(ALICE, conversation, "after the picture")
        await wait_posts(bridge, 2)
        [shared] = bridge.slack.shared_files
        assert shared["channel"] == "C100" and shared["content"] == PICTURE  # decrypted, byte for byte
        assert shared["title"] == "From @alice on X"
        assert [m["text"] for m in posts(bridge)] == ["look at this", "after the picture"]
        # What X stores and serves is ciphertext only.
        assert bridge.x.chat.media[(f"{ME}:{ALICE}", media_key)] != PICTURE
        downloads = [r for r in bridge.x.all_requests if r.path.startswith("/2/chat/media/")]
        assert len(downloads) == 1


async def test_a_tampered_file_is_not_shared_and_its_message_says_so(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        conversation = await encrypted_channel(bridge)
        await first_read(bridge)
        media_key = bridge.x.chat.person_sends_media(ALICE, conversation, PICTURE, "cat.png", "a picture")
        blob = bytearray(bridge.x.chat.media[(f"{ME}:{ALICE}", media_key)])
        blob[100] ^= 0x01
        bridge.x.chat.media[(f"{ME}:{ALICE}", media_key)] = bytes(blob)
        await wait_posts(bridge, 1)
        assert bridge.slack.shared_files == []
        [post] = posts(bridge)
        assert post["text"] == "a picture\n(an attachment could not be brought over from X)"


async def test_a_group_someone_else_made_is_read_and_posted(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await encrypted_channel(bridge)  # the account's keys; C100 is bridged to the 1-to-1
        bridge.x.chat.enroll(BOB)
        group = bridge.x.chat.person_creates_group(BOB, [ME, ALICE], "support EU")
        store = bridge.app[SERVICES].store
        [account] = await store.list_accounts()
        mapping = ChannelMapping(
            TEAM, "C200", MappingKind.LINK, account.id, group, None, "U100", time.time(), encrypted=True
        )
        assert await store.create_mapping(mapping) is not None
        bridge.app[SERVICES].inbound.poll_soon(account.id)
        await wait_until(lambda: chat_reads(bridge, group) >= 1, 10, "the group's first read")
        await first_read(bridge)
        bridge.x.chat.person_says(ALICE, group, "hello group")  # its maker, Bob, has not written
        await wait_posts(bridge, 1, "C200")
        assert [m["text"] for m in posts(bridge, "C200")] == ["hello group"]
        metrics = bridge.app[METRICS]
        assert metrics.registry.get_sample_value("xchat_events_refused_total", {"source": "read"}) == 0


async def test_a_conversation_x_fails_to_serve_does_not_hold_back_another(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        conversation = await encrypted_channel(bridge)
        await first_read(bridge)
        bridge.x.chat.enroll(BOB)
        group = bridge.x.chat.person_creates_group(BOB, [ME, ALICE], "support EU")
        store = bridge.app[SERVICES].store
        [account] = await store.list_accounts()
        mapping = ChannelMapping(
            TEAM, "C200", MappingKind.LINK, account.id, group, None, "U100", time.time(), encrypted=True
        )
        assert await store.create_mapping(mapping) is not None
        bridge.x.inject("503", count=1000, path_contains=f"/2/chat/conversations/{group}/events")
        bridge.x.chat.person_says(ALICE, conversation, "still comes through")
        bridge.x.chat.person_says(ALICE, group, "waits for X")
        await wait_posts(bridge, 1)
        assert [m["text"] for m in posts(bridge)] == ["still comes through"]
        assert posts(bridge, "C200") == []
        bridge.x.clear_faults()  # X serves the group again: its message follows
        await wait_posts(bridge, 1, "C200")
        assert [m["text"] for m in posts(bridge, "C200")] == ["waits for X"]


async def test_a_person_with_new_keys_is_still_read(tmp_path: Path) -> None:
    """Alice registers new X Chat keys (a new phone) and rotates the conversation key: the
    bridge, which fetched her old keys, fetches them again rather than refuse her as forged."""
    async with running_bridge(tmp_path) as bridge:
        conversation = await encrypted_channel(bridge)
        await first_read(bridge)
        bridge.x.chat.person_says(ALICE, conversation, "from my old phone")
        await wait_posts(bridge, 1)
        bridge.x.chat.enroll(ALICE)
        assert bridge.x.chat.person_opens(ALICE, ME) == conversation  # a key change with her new keys
        bridge.x.chat.person_says(ALICE, conversation, "from my new phone")
        await wait_posts(bridge, 2)
        assert [m["text"] for m in posts(bridge)] == ["from my old phone", "from my new phone"]
        metrics = bridge.app[METRICS]
        assert metrics.registry.get_sample_value("xchat_events_refused_total", {"source": "read"}) == 0


async def test_what_was_written_while_no_channel_bridged_it_is_not_posted_when_one_does_again(
    tmp_path: Path,
) -> None:
    """/xdm unlink, then (later, maybe in another channel with other members) the same encrypted
    conversation bridged again: what was written in between was never meant for Slack, as a first
    bridging posts nothing written before it. The conversation's read cursor outlives its
    mapping, and a later read went from it: everything written while unbridged (up to 20 pages)
    was posted into the new channel."""
    async with running_bridge(tmp_path) as bridge:
        conversation = await encrypted_channel(bridge)
        await first_read(bridge)
        bridge.x.chat.person_says(ALICE, conversation, "while bridged")
        await wait_posts(bridge, 1)
        store = bridge.app[SERVICES].store
        assert await store.delete_mapping(TEAM, "C100") is not None  # /xdm unlink
        reads = chat_reads(bridge)
        bridge.x.chat.person_says(ALICE, conversation, "while nobody bridged it")
        bridge.x.chat.person_says(ALICE, conversation, "still unbridged")
        await asyncio.sleep(0.05)  # X's clock moves on before the channel is bridged again
        [account] = await store.list_accounts()
        again = ChannelMapping(
            TEAM,
            "C200",
            MappingKind.LINK,
            account.id,
            conversation,
            None,
            "U100",
            time.time(),
            encrypted=True,
        )
        assert await store.create_mapping(again) is not None
        bridge.app[SERVICES].inbound.poll_soon(account.id)
        await wait_until(lambda: chat_reads(bridge) >= reads + 1, 10, "a read after the bridging")
        bridge.x.chat.person_says(ALICE, conversation, "after bridging again")
        await wait_posts(bridge, 1, channel="C200")
        reads = chat_reads(bridge)
        await wait_until(lambda: chat_reads(bridge) >= reads + 3, 10, "more reads")
        assert [m["text"] for m in posts(bridge, "C200")] == ["after bridging again"]
        assert [m["text"] for m in posts(bridge)] == ["while bridged"]


async def test_an_edit_or_delete_of_someone_elses_message_is_not_followed(tmp_path: Path) -> None:
    """In a group, Bob's phone signs an edit of Alice's message and a delete of another of hers
    (X Chat's events are each signed by their own sender, so Bob can sign these): followed, the
    Slack message posted as Alice would say what Bob wrote, or vanish at his word. Only the
    author's own edit or delete is followed."""
    async with running_bridge(tmp_path) as bridge:
        await encrypted_channel(bridge)
        chat = bridge.x.chat
        chat.enroll(BOB)
        group = chat.person_creates_group(BOB, [ME, ALICE], "support EU")
        store = bridge.app[SERVICES].store
        [account] = await store.list_accounts()
        mapping = ChannelMapping(
            TEAM, "C200", MappingKind.LINK, account.id, group, None, "U100", time.time(), encrypted=True
        )
        assert await store.create_mapping(mapping) is not None
        bridge.app[SERVICES].inbound.poll_soon(account.id)
        await wait_until(lambda: chat_reads(bridge, group) >= 1, 10, "the group's first read")
        chat.person_says(ALICE, group, "the meeting is at 5")
        chat.person_says(ALICE, group, "bring the contract")
        await wait_posts(bridge, 2, "C200")
        first, second = (e["id"] for e in chat.conversations[group].events[-2:])
        chat.person_edits(BOB, group, first, "the meeting is cancelled")
        chat.person_deletes(BOB, group, second)
        chat.person_says(ALICE, group, "see you")
        await wait_until(lambda: "see you" in [m["text"] for m in posts(bridge, "C200")], 10, "the last post")
        reads = chat_reads(bridge, group)
        await wait_until(lambda: chat_reads(bridge, group) >= reads + 3, 10, "more reads")
        shown = posts(bridge, "C200")
        assert [m["text"] for m in shown] == ["the meeting is at 5", "bring the contract", "see you"]
        assert not shown[0].get("edited")
        assert bridge.slack.deleted == []
        assert [c for c in bridge.slack.calls if c.method in ("chat.update", "chat.delete")] == []
        states = await bridge.sql(
            "SELECT event_type, state FROM inbound WHERE channel_id = 'C200' ORDER BY seq"
        )
        assert [tuple(s) for s in states] == [
            ("MessageCreate", "posted"),
            ("MessageCreate", "posted"),
            ("ChatEdit", "skipped"),
            ("ChatDelete", "skipped"),
            ("MessageCreate", "posted"),
        ]


async def test_an_event_of_another_conversation_served_in_a_group_is_not_posted_there(
    tmp_path: Path,
) -> None:
    """X holds only ciphertext, and serves each conversation's events: an event Alice wrote in
    her 1-to-1 with the account, served (replayed) among a group's events, is hers and verifies,
    but it was never said in the group: posted in the group's channel, a private message would
    reach everyone there. The signature binds its own conversation; that one is the read's."""
    async with running_bridge(tmp_path) as bridge:
        conversation = await encrypted_channel(bridge)
        chat = bridge.x.chat
        chat.enroll(BOB)
        group = chat.person_creates_group(BOB, [ME, ALICE], "support EU")
        store = bridge.app[SERVICES].store
        [account] = await store.list_accounts()
        mapping = ChannelMapping(
            TEAM, "C200", MappingKind.LINK, account.id, group, None, "U100", time.time(), encrypted=True
        )
        assert await store.create_mapping(mapping) is not None
        bridge.app[SERVICES].inbound.poll_soon(account.id)
        await wait_until(lambda: chat_reads(bridge, group) >= 1, 10, "the group's first read")
        await first_read(bridge)
        chat.person_says(ALICE, conversation, "my home address, just for you")
        await wait_posts(bridge, 1)
        private = chat.conversations[f"{ME}:{ALICE}"].events[-1]
        chat.conversations[group].events.append(dict(private))  # X replays it in the group
        chat.person_says(ALICE, group, "hello group")
        await wait_posts(bridge, 1, "C200")
        reads = chat_reads(bridge, group)
        await wait_until(lambda: chat_reads(bridge, group) >= reads + 3, 10, "more reads")
        assert [m["text"] for m in posts(bridge, "C200")] == ["hello group"]
        assert [m["text"] for m in posts(bridge)] == ["my home address, just for you"]


async def test_a_push_whose_event_is_signed_for_another_conversation_is_refused(tmp_path: Path) -> None:
    """A push names its conversation outside the signature: Carol's genuine event and key change
    of her own 1-to-1 with the account, pushed as Alice's conversation's, are refused (400,
    counted), as a forgery is; named as her own conversation's, the same push is not refused."""
    x = FakeX()
    async with running_bridge(tmp_path, inbound=PUSHED, env=push_env(x), fake_x=x) as bridge:
        conversation = await pushed_and_quiet(bridge)
        x.chat.enroll(CAROL)
        carols = x.chat.conversation(x.chat.person_opens(CAROL, ME), CAROL)
        x.chat.person_says(CAROL, carols.id, "for the account only")
        event = carols.events[-1]

        async def push(conversation_id: str) -> int:
            payload = {
                "conversation_id": conversation_id,
                "sender_id": CAROL,
                "encoded_event": event["encoded_event"],
                "conversation_key_change_event": carols.key_events[-1],
            }
            data = {"event_type": "chat.received", "filter": {"user_id": ME}, "payload": payload}
            body = json.dumps({"data": data}).encode()
            headers = {
                "Content-Type": "application/json",
                "x-twitter-webhooks-signature": sign(x.consumer_secret, body),
            }
            async with bridge.session.post(f"{bridge.url}/x/webhook", data=body, headers=headers) as response:
                return response.status

        assert await push(conversation) == 400
        assert await push(f"{ME}-{CAROL}") == 200  # named as hers: not refused (nothing bridges it)
        metrics = bridge.app[METRICS]
        assert metrics.registry.get_sample_value("xchat_events_refused_total", {"source": "push"}) == 1
        assert posts(bridge) == []
