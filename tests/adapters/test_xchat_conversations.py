"""The bridge's X Chat client against the X simulator, with X's real crypto on both ends.

The bridge's account holds keys made by ``xchat setup``'s code; the simulated people hold keys on
their "phones" (the simulator's ``chat_xdk`` instances), so everything either side reads was
encrypted and signed by the other, over HTTP, within X's OpenAPI spec.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest

from adapters.sandbox.fake_x import FakeX, run_fake_x
from adapters.x.api import XApiClient
from adapters.x.xchat import ChatConversations, ChatKeys
from bridge.errors import XTransient
from bridge.xchat import ChatEventKind, IdentityState, XChatError, XChatIdentity

ME, ALICE, BOB, CAROL = "1000", "2001", "2002", "2003"


@dataclass
class World:
    fake: FakeX
    chat: ChatConversations
    token: str
    x: XApiClient


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with run_fake_x() as (fake, url), aiohttp.ClientSession() as session:
        fake.add_user(ME, "support", "Support Team")
        for user_id, handle in ((ALICE, "alice"), (BOB, "bob"), (CAROL, "carol")):
            fake.add_user(user_id, handle, handle.title())
        made = ChatKeys().new_identity()
        version = fake.register_keys(ME, made.registration)
        identity = XChatIdentity(
            ME, made.private_keys, made.registration, made.public_key, made.fingerprint,
            IdentityState.REGISTERED, version=version,
        )  # fmt: skip
        for person in (ALICE, BOB):
            fake.chat.enroll(person)
        x = XApiClient(session, url)
        yield World(fake, ChatConversations(x, identity), fake.issue_token(ME).access_token, x)
        assert fake.violations == [], fake.violations


async def test_both_directions_of_a_one_to_one_verified_end_to_end(world: World) -> None:
    conversation = await world.chat.open_one_to_one(world.token, ALICE)
    assert conversation == f"{ME}-{ALICE}"
    message = await world.chat.prepare_text(world.token, conversation, "hello from Slack 👋")
    await world.chat.send(world.token, conversation, message)

    [seen] = world.fake.chat.received(ALICE, conversation)
    assert seen["content"]["text"] == "hello from Slack 👋" and seen["verified"] and seen["sender_id"] == ME
    assert seen["id"] == message.message_id

    world.fake.chat.person_says(ALICE, conversation, "hi, Alice here")
    page = await world.chat.read(world.token, conversation)
    assert [(e.sender_id, e.kind, e.text) for e in page.events] == [
        (ALICE, ChatEventKind.TEXT, "hi, Alice here"),
        (ME, ChatEventKind.TEXT, "hello from Slack 👋"),
    ]
    assert page.refused == 0


async def test_a_retry_posts_the_same_signed_message_and_alice_sees_it_once(world: World) -> None:
    conversation = await world.chat.open_one_to_one(world.token, ALICE)
    message = await world.chat.prepare_text(world.token, conversation, "only once")
    world.fake.inject("lost_response", path_contains="/messages")
    with pytest.raises(XTransient, match="did not answer"):
        await world.chat.send(world.token, conversation, message)
    await world.chat.send(world.token, conversation, message)  # the retry: the very same bytes
    texts = [
        e["content"]["text"] for e in world.fake.chat.received(ALICE, conversation) if e["type"] == "Message"
    ]
    assert texts == ["only once"]


async def test_a_tampered_or_forged_event_is_refused_and_counted_never_shown(world: World) -> None:
    conversation = await world.chat.open_one_to_one(world.token, ALICE)
    world.fake.chat.person_says(ALICE, conversation, "genuine")
    world.fake.chat.person_says(ALICE, conversation, "to be tampered with")
    conv = world.fake.chat.conversations[f"{ME}:{ALICE}"]
    raw = bytearray(base64.b64decode(conv.events[-1]["encoded_event"]))
    raw[-20] ^= 0x01
    conv.events[-1]["encoded_event"] = base64.b64encode(bytes(raw)).decode()

    # Alice's phone claims the bridge's account wrote this: signed with Alice's key, not ours.
    world.fake.chat.person_forges(ALICE, conversation, "I am the support team", as_user=ME)
    page = await world.chat.read(world.token, conversation)
    assert [e.text for e in page.events] == ["genuine"]
    assert page.refused == 2


async def test_edits_and_deletes_both_ways(world: World) -> None:
    chat, token = world.chat, world.token
    conversation = await chat.open_one_to_one(token, ALICE)
    await chat.send(token, conversation, await chat.prepare_text(token, conversation, "tpyo"))
    [mine] = [e for e in (await chat.read(token, conversation)).events if e.sender_id == ME]
    await chat.send(
        token, conversation, await chat.prepare_edit(token, conversation, mine.sequence_id, "fixed")
    )
    edits = [e for e in world.fake.chat.received(ALICE, conversation) if e.get("content", {}).get("new_text")]
    [edited] = edits
    assert edited["content"]["new_text"] == "fixed" and edited["verified"]
    assert edited["content"]["target_message_id"] == mine.sequence_id

    await chat.delete(token, conversation, chat.prepare_delete(conversation, [mine.sequence_id]))
    assert any(e["type"] == "MessageDeleted" for e in world.fake.chat.received(ALICE, conversation))

    world.fake.chat.person_says(ALICE, conversation, "Alice's own")
    page = await chat.read(token, conversation)
    [deleted] = [e for e in page.events if e.kind is ChatEventKind.DELETE]
    [edit_seen] = [e for e in page.events if e.kind is ChatEventKind.EDIT]
    assert deleted.target_sequence_id == mine.sequence_id
    assert edit_seen.text == "fixed" and edit_seen.target_sequence_id == mine.sequence_id
    assert page.events[0].text == "Alice's own" and page.refused == 0


async def test_a_group_everyone_reads(world: World) -> None:
    world.fake.chat.enroll(CAROL)
    group = await world.chat.create_group(world.token, [ALICE, CAROL], "support, EU")
    assert group.startswith("g")
    await world.chat.send(world.token, group, await world.chat.prepare_text(world.token, group, "to all"))
    for person in (ALICE, CAROL):
        texts = [
            e["content"]["text"] for e in world.fake.chat.received(person, group) if e["type"] == "Message"
        ]
        assert texts == ["to all"]
    world.fake.chat.person_says(CAROL, group, "Carol answers")
    page = await world.chat.read(world.token, group)
    assert [(e.sender_id, e.text) for e in page.events if e.kind is ChatEventKind.TEXT] == [
        (CAROL, "Carol answers"),
        (ME, "to all"),
    ]
    listed = world.fake.chat.listing(ME)
    assert [c["group_name"] for c in listed if c["type"] == "Group"] == ["support  EU"]


async def test_someone_without_keys_cannot_be_written_to_encrypted(world: World) -> None:
    with pytest.raises(XChatError, match="has no X Chat keys"):
        await world.chat.open_one_to_one(world.token, CAROL)


def test_the_sequence_id_of_a_send_is_read_from_xs_envelope_or_is_none() -> None:
    from adapters.sandbox.fake_xchat import envelope, message_detail
    from adapters.x.xchat import sequence_of

    detail = message_detail(base64.b64encode(b"\x0b\x00\x01\x00\x00\x00\x02hi\x00").decode())
    encoded = envelope("1900000000000000042", "m-1", ME, f"{ME}:{ALICE}", 1, detail, None)
    assert sequence_of(encoded) == "1900000000000000042"
    for garbage in ("", "not base64!", base64.b64encode(b"\x0b\x00\x01\xff").decode()):
        assert sequence_of(garbage) is None
