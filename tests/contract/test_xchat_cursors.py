"""X Chat read cursors and where X's events were posted: one SQL on both engines."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.store.xchat import ChatCursorStore
from bridge.chat_inbound import ChatGap
from tests.contract.conftest import Engine
from tests.contract.test_xchat_store import database

# Two 19-digit sequence ids whose order as text and as numbers differ from a shorter one's.
OLDER, NEWER = "1900000000000000009", "1900000000000000010"


@pytest.fixture(params=("sqlite", "postgres"))
async def cursors(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[ChatCursorStore, Engine]]:
    async with database(request, request.param, tmp_path) as engine:
        store = engine.store()
        await store.open()
        try:
            yield ChatCursorStore(store.engine), engine
        finally:
            await store.close()


async def test_a_cursor_is_per_account_and_conversation_and_only_moves_forward(
    cursors: tuple[ChatCursorStore, Engine],
) -> None:
    store, _ = cursors
    assert await store.chat_cursor(1, "1000-2001") is None
    await store.save_chat_cursor(1, "1000-2001", "0", 1.0)
    assert await store.chat_cursor(1, "1000-2001") == "0"
    await store.save_chat_cursor(1, "1000-2001", NEWER, 2.0)
    await store.save_chat_cursor(1, "1000-2001", OLDER, 3.0)  # an older read's answer: kept back
    await store.save_chat_cursor(1, "1000-2001", "99", 4.0)
    assert await store.chat_cursor(1, "1000-2001") == NEWER
    assert await store.chat_cursor(1, "g42") is None
    assert await store.chat_cursor(2, "1000-2001") is None


async def test_an_unfinished_read_is_kept_beside_its_cursor_until_it_closes(
    cursors: tuple[ChatCursorStore, Engine],
) -> None:
    store, _ = cursors
    # A conversation never read before: its first read stopped at its page limit.
    await store.save_chat_gap(1, "1000-2001", ChatGap(None, NEWER), 1.0)
    assert await store.chat_gap(1, "1000-2001") == ChatGap(None, NEWER, 0)
    assert await store.chat_cursor(1, "1000-2001") == "0"  # read: everything newer is new
    await store.save_chat_gap(1, "1000-2001", ChatGap("tok", NEWER, 2), 2.0)
    assert await store.chat_gap(1, "1000-2001") == ChatGap("tok", NEWER, 2)
    assert await store.chat_gap(2, "1000-2001") is None
    await store.close_chat_gap(1, "1000-2001", NEWER, 3.0)
    assert await store.chat_gap(1, "1000-2001") is None
    assert await store.chat_cursor(1, "1000-2001") == NEWER
    # A gap over a cursor that is already further (never moved back by closing).
    await store.save_chat_gap(1, "1000-2001", ChatGap("tok", OLDER), 4.0)
    await store.close_chat_gap(1, "1000-2001", OLDER, 5.0)
    assert await store.chat_cursor(1, "1000-2001") == NEWER
    assert await store.chat_gap(1, "1000-2001") is None


async def test_where_an_event_was_posted_is_found_per_channel(
    cursors: tuple[ChatCursorStore, Engine],
) -> None:
    store, engine = cursors
    await engine.sql(
        "INSERT INTO message_map (team_id, channel_id, slack_ts, part, conversation_id, dm_event_id, "
        "created_at) VALUES (?, ?, ?, 0, ?, ?, ?)",
        "T1", "C1", "111.000001", "1000-2001", OLDER, 1.0,
    )  # fmt: skip
    for channel in ("C1", "C2"):  # posted from X in C1, written by 2001
        await engine.sql(
            "INSERT INTO inbound (dm_event_id, seq, account_id, conversation_id, team_id, channel_id, "
            "event_type, sender_id, payload, origin, state, created_at) "
            "VALUES (?, 1, 1, ?, ?, ?, 'MessageCreate', ?, '{}', 'poll', 'posted', 1.0)",
            OLDER, "1000-2001", "T1", channel, "2001",
        )  # fmt: skip
    assert await store.posted_ts("T1", "C1", OLDER, "2001") == "111.000001"
    assert await store.posted_ts("T1", "C2", OLDER, "2001") is None
    assert await store.posted_ts("T1", "C1", NEWER, "2001") is None


async def test_an_event_is_found_only_for_its_own_sender(
    cursors: tuple[ChatCursorStore, Engine],
) -> None:
    """What an edit or a delete made on X follows: only a message its editor wrote (each X Chat
    event is signed by its own sender, so anyone in a group can name anyone's message)."""
    store, engine = cursors
    for event, sender in ((OLDER, "2001"), (NEWER, None)):  # NEWER: sent from Slack, no X sender
        await engine.sql(
            "INSERT INTO message_map (team_id, channel_id, slack_ts, part, conversation_id, dm_event_id, "
            "created_at) VALUES (?, ?, ?, 0, ?, ?, ?)",
            "T1", "C1", f"11{event[-1]}.000001", "g42", event, 1.0,
        )  # fmt: skip
        if sender:
            await engine.sql(
                "INSERT INTO inbound (dm_event_id, seq, account_id, conversation_id, team_id, channel_id, "
                "event_type, sender_id, payload, origin, state, created_at) "
                "VALUES (?, 1, 1, 'g42', 'T1', 'C1', 'MessageCreate', ?, '{}', 'poll', 'posted', 1.0)",
                event, sender,
            )  # fmt: skip
    assert await store.posted_ts("T1", "C1", OLDER, "2001") == "119.000001"
    assert await store.posted_ts("T1", "C1", OLDER, "2002") is None  # another member of the group
    assert await store.posted_ts("T1", "C1", NEWER, "2001") is None
    assert await store.posted_ts("T1", "C1", NEWER, "1000") is None
