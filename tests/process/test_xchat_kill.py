"""SIGKILL mid-send to an encrypted X Chat conversation (issue 19): the restarted bridge reads
the conversation back for the row's signed message id, and posts only that same message again
when X does not have it, so the person's phone shows it once."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Literal

import pytest

from adapters.store.crypto import TokenCipher
from adapters.store.select import make_store
from adapters.store.xchat import XChatIdentityStore
from adapters.x.xchat import ChatKeys
from bridge.settings import Settings
from tests.harness import ALICE, ME, wait_until
from tests.process.support import World, world

CONVERSATION = f"{ME}-{ALICE}"
PATH = f"/2/chat/conversations/{CONVERSATION}/messages"


async def encrypted(w: World) -> None:
    """The bridge's account has X Chat keys (as `xchat setup` leaves them), Alice is on X Chat and
    started the conversation from her phone, and C100 is bridged to it, encrypted."""
    settings = Settings.from_env(w.env)
    store = make_store(settings)
    await store.open()
    try:
        identities = XChatIdentityStore(store.engine, TokenCipher(settings.encryption_keys))
        made = ChatKeys().new_identity()
        await identities.save_identity(ME, made, 0.0)
        await identities.mark_registered(ME, w.x.register_keys(ME, made.registration), 0.0)
    finally:
        await store.close()
    w.x.chat.enroll(ALICE)
    w.x.chat.person_opens(ALICE, ME)
    await w.sql("UPDATE mappings SET encrypted = ?", True)


def alices(w: World) -> list[str]:
    return [
        e["content"]["text"]
        for e in w.x.chat.received(ALICE, CONVERSATION)
        if e["type"] == "Message" and e["content"].get("content_type") == "Text"
    ]


@pytest.mark.usefixtures("on_both_stores")
@pytest.mark.parametrize("fault", ["record_then_hang", "timeout"])
async def test_kill_mid_send_posts_the_same_signed_message_and_alice_sees_it_once(
    tmp_path: Path, fault: Literal["record_then_hang", "timeout"]
) -> None:
    async with world(tmp_path, lambda x: {"C100": CONVERSATION}, X_TIMEOUT_SECONDS="30") as w:
        await encrypted(w)
        w.x.timeout_seconds = 60.0
        w.x.inject(fault, path_contains=PATH)
        server = w.server(tmp_path / "server.log")
        await server.start(w.url, w.session)
        result, ts, _ = await w.sender.message("C100", "U100", "sent just before the crash")
        assert result.status == 200

        def posts() -> list[dict[str, str]]:
            return [r.json for r in w.x.all_requests if r.method == "POST" and r.path == PATH]

        await wait_until(lambda: len(posts()) == 1, 20, "the POST to reach X")
        await server.kill()
        [(kept,)] = await w.sql("SELECT chat FROM outbox")
        assert json.loads(kept)["message_id"] == posts()[0]["message_id"]  # kept before the attempt

        await server.start(w.url, w.session)
        await w.slack.wait_for(lambda c: c.method == "reactions.add" and c.params.get("timestamp") == ts)
        await asyncio.sleep(0.5)  # room for a duplicate to show up
        assert await server.terminate() == 0
        assert alices(w) == ["Ada: sent just before the crash"]
        assert len({p["message_id"] for p in posts()}) == 1  # every attempt: the same signed message
        assert len(posts()) == (1 if fault == "record_then_hang" else 2)
        assert w.x.events == []  # never the legacy endpoint, in the clear
