"""The Store port's behaviour, method by method, on both engines (what a new store must do); the
tests taking ``engine_or_memory`` or marked ``@memory_too`` also on the in-memory store,
tests/memory_store.py."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.store.crypto import TokenCipher, generate_key
from adapters.store.mappings import LIST_PAGE
from adapters.store.postgres import PostgresStore
from adapters.store.sqlite import SqliteStore
from bridge.errors import Failure
from bridge.model import (
    ChannelMapping,
    IncomingMessage,
    MappingKind,
    OAuthState,
    OutboxItem,
    OutboxState,
    PendingConnection,
    RenderedPart,
    Sent,
    TokenSet,
    XUser,
)
from tests.contract.conftest import (
    ENGINES,
    AnyEngine,
    ContractStore,
    Engine,
    engine_or_memory_named,
    memory_too,
    opened,
)
from tests.memory_store import MemoryEngine, MemoryStore
from tests.outbox import accepted, readable

AnyStore = SqliteStore | PostgresStore


@pytest.fixture(params=ENGINES)
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Engine | MemoryEngine]:
    """Both engines; the in-memory fakes too for the tests marked ``@memory_too``."""
    async with engine_or_memory_named(request.param, request, tmp_path) as chosen:
        yield chosen


async def linked(
    store: ContractStore, channel: str = "C1", kind: MappingKind = MappingKind.LINK
) -> ChannelMapping:
    account = await store.account_for_user("T1", "U1")
    if account is None:
        account = await store.save_account("T1", "U1", XUser("1000", "me"), TokenSet("a", "r", None))
    if kind is MappingKind.DM:
        mapping = ChannelMapping("T1", channel, kind, account.id, None, "2001", "U1", 0.0)
    else:
        mapping = ChannelMapping("T1", channel, kind, account.id, "1000-2001", None, "U1", 0.0)
    assert await store.create_mapping(mapping) == mapping
    return mapping


def msg(n: int, channel: str = "C1", **kw: object) -> IncomingMessage:
    return IncomingMessage("T1", channel, f"{n}.000", "U1", f"m{n}", event_id=f"E{channel}{n}", **kw)  # type: ignore[arg-type]


async def test_an_accepted_message_is_on_disk_when_the_accept_returns(engine: Engine) -> None:
    """Slack gets its 200 right after the accept's commit, and does not send the message again:
    the commit must survive an OS crash or power loss, not only a killed process. SQLite in WAL
    with ``synchronous = NORMAL`` may roll back the last commits then; FULL syncs the WAL at each
    commit. PostgreSQL's accept waits for its log (``synchronous_commit`` on). Read back from the
    store's own connection, where the setting applies."""
    store = engine.store()  # the engines' own call: not a role's
    await store.open()
    try:
        expected = "FULL" if engine.name == "sqlite" else "on"
        assert await store.commit_durability() == expected
    finally:
        await store.close()


async def test_accounts_upsert_per_slack_user_and_keep_tokens_encrypted(engine_or_memory: AnyEngine) -> None:
    async with opened(engine_or_memory) as store:
        first = await store.save_account("T1", "U1", XUser("1000", "me"), TokenSet("acc-1", "ref-1", 10.0))
        await store.set_needs_reconnect(first.id, True)
        assert await store.usernames_needing_reconnect() == ["me"]
        again = await store.save_account(
            "T1", "U1", XUser("1001", "me2"), TokenSet("acc-2", None, None, "dm.read")
        )
        assert again.id == first.id and again.x_username == "me2" and not again.needs_reconnect
        assert again.tokens == TokenSet("acc-2", None, None, "dm.read")
        await store.update_tokens(first.id, TokenSet("acc-3", "ref-3", 99.5))
        fetched = await store.get_account(first.id)
        assert fetched is not None and fetched.tokens == TokenSet("acc-3", "ref-3", 99.5)
        assert await store.account_for_user("T1", "U1") == fetched
        assert await store.account_for_user("T1", "U2") is None and await store.get_account(999) is None
        other = await store.save_account("T1", "U2", XUser("1002", "you"), TokenSet("x", "y", None))
        assert [a.id for a in await store.list_accounts()] == [first.id, other.id]
        assert await store.usernames_needing_reconnect() == []
    if isinstance(engine_or_memory, Engine):  # the fake keeps no columns, so no ciphertext
        raw = await engine_or_memory.sql("SELECT access_token, refresh_token FROM accounts")
        assert all("acc-" not in str(cell) and "ref-" not in str(cell) for row in raw for cell in row)


async def test_an_account_whose_tokens_cannot_be_decrypted_costs_only_itself(
    engine_or_memory: AnyEngine, caplog: pytest.LogCaptureFixture
) -> None:
    # Its key rotated away, or its ciphertext corrupt: listing accounts (inbound polling, push
    # subscriptions) must still hand out everyone else, and the bad one reads as needing
    # reconnection (parked, told in status and health) rather than raising.
    async with opened(engine_or_memory) as store:
        good = await store.save_account("T1", "U1", XUser("1000", "good"), TokenSet("acc-g", "ref-g", 10.0))
        bad = await store.save_account("T1", "U2", XUser("1001", "bad"), TokenSet("acc-b", "ref-b", 10.0))
        other_key = TokenCipher([generate_key()]).encrypt("acc-under-a-retired-key")
        if isinstance(engine_or_memory, Engine):
            await engine_or_memory.sql(
                "UPDATE accounts SET access_token = ?, refresh_token = ? WHERE id = ?",
                other_key,
                "corrupt-ciphertext",
                bad.id,
            )
        else:
            assert isinstance(store, MemoryStore)
            store.make_unreadable(bad.id)
        with caplog.at_level(logging.INFO):
            listed = await store.list_accounts()
            again = await store.list_accounts()
            fetched = await store.get_account(bad.id)
            by_user = await store.account_for_user("T1", "U2")
        assert listed == again and [a.id for a in listed] == [good.id, bad.id]
        assert listed[0] == good and not listed[0].needs_reconnect
        unreadable = listed[1]
        assert unreadable.needs_reconnect and unreadable.x_username == "bad"
        assert unreadable.tokens.access_token == "" and unreadable.tokens.refresh_token is None
        assert fetched == unreadable and by_user == unreadable
        assert await store.usernames_needing_reconnect() == ["bad"]
        lines = [r for r in caplog.records if getattr(r, "account_id", None) == bad.id]
        assert len(lines) == 1, [r.getMessage() for r in caplog.records]  # once, not per listing
        logged = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
        assert "corrupt-ciphertext" not in logged and other_key not in logged and "acc-b" not in logged
        # Connecting again writes new tokens: the account is whole again.
        mended = await store.save_account("T1", "U2", XUser("1001", "bad"), TokenSet("acc-n", "ref-n", 20.0))
        assert mended.id == bad.id and not mended.needs_reconnect
        assert await store.get_account(bad.id) == mended
        assert await store.usernames_needing_reconnect() == []


async def test_an_oauth_state_is_consumed_once_and_never_after_it_expires(
    engine_or_memory: AnyEngine,
) -> None:
    async with opened(engine_or_memory) as store:
        now = time.time()  # saving sweeps states long expired by the wall clock
        state = OAuthState("s1", "verifier", "T1", "U1", "C1", "https://hooks/1", now + 600)
        await store.save_oauth_state(state)
        await store.save_oauth_state(OAuthState("s2", "v2", "T1", "U1", "C1", None, now + 1))
        assert await store.confirm_oauth_state("s1", now, "browser") is not None
        assert await store.confirm_oauth_state("s2", now, "browser") is not None
        results = await asyncio.gather(*(store.consume_oauth_state("s1", now, "browser") for _ in range(5)))
        assert [r for r in results if r is not None] == [state]
        assert await store.consume_oauth_state("s2", now + 1, "browser") is None  # expired
        assert await store.consume_oauth_state("nope", now, "browser") is None


async def test_a_channel_maps_once_until_unmapped(engine_or_memory: AnyEngine) -> None:
    async with opened(engine_or_memory) as store:
        mapping = await linked(store)
        assert await store.create_mapping(mapping) is None
        assert await store.get_mapping("T1", "C1") == mapping
        await store.set_conversation_id("T1", "C1", "1000-2002")
        moved = await store.get_mapping("T1", "C1")
        assert moved is not None and moved.conversation_id == "1000-2002"
        await linked(store, "C0")
        assert [m.channel_id for m in await store.list_mappings()] == ["C0", "C1"]
        assert await store.delete_mapping("T1", "C1") == moved
        assert await store.delete_mapping("T1", "C1") is None and await store.get_mapping("T1", "C1") is None


@memory_too
async def test_a_message_is_accepted_once_by_event_id_and_by_ts(engine: Engine) -> None:
    async with opened(engine) as store:
        await linked(store)
        assert await accepted(store, msg(1), 1.0)
        assert not await accepted(store, msg(1), 2.0)  # Slack's retry: same event id
        retried_under_a_new_id = IncomingMessage("T1", "C1", "1.000", "U1", "m1", event_id="other")
        assert not await accepted(store, retried_under_a_new_id, 3.0)
        second = await store.accept_if_mapped(msg(2), 4.0)
        assert second is not None and second.new and second.head is None  # m1 is first
        assert await store.accept_if_mapped(msg(2), 5.0) == type(second)(new=False)
        assert await store.outbox_summary() == {
            "counts": {"queued": 2},
            "pending": 2,
            "oldest_pending_at": 1.0,
        }
        later = 1.0 + 24 * 3600 + 1.5
        # E…1 is older than a day
        assert await store.prune_batch(later, keep_after=0.0, inbound_keep_after=0.0, batch=10) == 1
        assert await store.prune_batch(later, keep_after=0.0, inbound_keep_after=0.0, batch=10) == 0


async def test_concurrent_accepts_hand_out_exactly_one_head_in_order(engine: Engine) -> None:
    """On PostgreSQL two instances accept at once; each channel's first row is handed on once."""
    async with opened(engine) as one:
        other = engine.store() if engine.name == "postgres" else one
        if other is not one:
            await other.open()
        try:
            await linked(one)
            await linked(one, "C2")
            results = await asyncio.gather(
                *(
                    (one if n % 2 else other).accept_if_mapped(msg(n, channel), float(n))
                    for n in range(1, 41)
                    for channel in ("C1", "C2")
                )
            )
            assert all(r is not None and r.new for r in results)
            heads = [r.head for r in results if r is not None and r.head is not None]
            assert sorted(h.channel_id for h in heads) == ["C1", "C2"]
            for head in heads:
                rows = await engine.sql("SELECT MIN(seq) FROM outbox WHERE channel_id = ?", head.channel_id)
                assert rows == [(head.seq,)]
        finally:
            if other is not one:
                await other.close()


@memory_too
async def test_an_accept_racing_the_channels_last_send_is_handed_on_exactly_once(engine: Engine) -> None:
    """A row is handed on by its accept (its channel was idle) or by the previous row's
    ``mark_sent`` (which returns the channel's next row): never both, never neither, when the two
    commit at the same moment (on PostgreSQL from two instances)."""
    async with opened(engine) as sender:
        accepter = engine.store() if engine.name == "postgres" else sender
        if accepter is not sender:
            await accepter.open()
        try:
            await linked(sender)
            first = await accepter.accept_if_mapped(msg(0), 0.0)
            assert first is not None and first.head is not None
            head = first.head
            for n in range(1, 151):
                parts = [RenderedPart(f"Me: {head.source['text']}")]
                assert await sender.mark_sending(head.id, float(n), parts=parts, source=head.source)
                accepted, following = await asyncio.gather(
                    accepter.accept_if_mapped(msg(n), float(n)),
                    sender.mark_sent(head.id, Sent("1000-2001", f"{9000 + n}"), float(n)),
                )
                assert accepted is not None and accepted.new
                handed = [h for h in (accepted.head, following) if h is not None]
                assert [h.slack_ts for h in handed] == [f"{n}.000"], f"message {n}"
                head = handed[0]
        finally:
            if accepter is not sender:
                await accepter.close()


@memory_too
async def test_the_first_send_to_a_new_group_names_it_for_the_rows_behind(engine: Engine) -> None:
    """X creates the group on the first send; the mapping and the next row then address it, so no
    second group is created."""
    async with opened(engine) as store:
        account = await store.save_account("T1", "U1", XUser("1000", "me"), TokenSet("a", "r", None))
        group = ("2001", "2002")
        await store.create_mapping(
            ChannelMapping(
                "T1", "C1", MappingKind.GROUP, account.id, None, None, "U1", 1.0, group_participants=group
            )
        )
        first = await store.accept_if_mapped(msg(1), 1.0)
        assert first is not None and first.head is not None and first.head.target.new_group == group
        assert (await store.accept_if_mapped(msg(2), 2.0)) == type(first)(new=True, head=None)
        assert await store.mark_sending(
            first.head.id, 3.0, parts=[RenderedPart("Me: m1")], source=first.head.source
        )
        following = await store.mark_sent(first.head.id, Sent("G1", "9001"), 4.0)
        assert following is not None and following.slack_ts == "2.000"
        assert following.target.conversation_id == "G1" and following.target.new_group is None
        mapping = await store.get_mapping("T1", "C1")
        assert mapping is not None and mapping.conversation_id == "G1"


@memory_too
async def test_sending_records_the_message_map_and_names_the_dm_conversation(engine: Engine) -> None:
    async with opened(engine) as store:
        await linked(store, "C1", MappingKind.DM)
        await store.accept_if_mapped(msg(1), 1.0)
        [head] = readable(await store.outbox_heads())
        assert head.target.participant_id == "2001"
        claimed = await store.mark_sending(head.id, 2.0, parts=[RenderedPart("Me: m1")], source=head.source)
        assert claimed is not None and claimed.sending_since == 2.0
        assert await store.mark_sending(head.id, 2.5) is not None  # a resend after a crash claims again
        assert await store.mark_sent(head.id, Sent("1000-2001", "9001"), 3.0) is None
        mapping = await store.get_mapping("T1", "C1")
        assert mapping is not None and mapping.conversation_id == "1000-2001"
        assert await store.known_event_ids(["9001", "9002"]) == {"9001"}
        assert await store.known_event_ids([]) == set()
        assert await store.relayed_events("T1", "C1", "1.000") == ["9001"]
        assert await store.message_text("T1", "C1", "1.000") == "m1"
        assert await store.message_text("T1", "C1", "9.000") is None
        item = await store.get_item(head.id)
        assert item is not None and (item.state, item.dm_event_id, item.attempts) == (
            OutboxState.SENT,
            "9001",
            2,
        )
        assert await store.mark_sending(head.id, 4.0) is None  # finished rows are never claimed
        assert await store.outbox_heads() == []


async def test_edits_and_deletes(engine: Engine) -> None:
    async with opened(engine) as store:
        await linked(store)
        for n in (1, 2):
            await store.accept_if_mapped(msg(n), float(n))
        edit = {"text": "m1!", "blocks": [], "user_id": "U1"}
        assert await store.accept_edit("T1", "C1", "1.000", "5.000", edit, 5.0) == "updated"
        assert await store.accept_edit("T1", "C1", "7.000", "7.100", edit, 5.0) == "unknown"
        [head] = readable(await store.outbox_heads())
        assert head.source["text"] == "m1!"
        await store.mark_sending(head.id, 6.0, parts=[RenderedPart("Me: m1!")], source=head.source)
        following = await store.mark_sent(head.id, Sent("1000-2001", "9001"), 6.0)
        assert following is not None and following.slack_ts == "2.000"
        assert await store.accept_edit("T1", "C1", "1.000", "8.000", {"text": "m1?"}, 8.0) == "queued"
        assert await store.accept_delete("T1", "C1", "2.000", "9.000", 9.0) == "cancelled"
        assert await store.accept_delete("T1", "C1", "1.000", "9.500", 9.5) == "queued"
        assert await store.accept_delete("T1", "C1", "3.000", "9.600", 9.6) == "unknown"
        kinds = await engine.sql("SELECT kind, state FROM outbox ORDER BY seq, part")
        assert kinds == [
            ("message", "sent"),
            ("message", "cancelled"),
            ("edit", "cancelled"),  # the message is deleted: no point correcting it first
            ("delete", "queued"),
        ]
        [deletion] = readable(await store.outbox_heads())
        assert deletion.kind.value == "delete" and deletion.ref_ts == "1.000"


async def test_edits_and_deletes_of_messages_held_for_a_previous_account_wait_for_it(
    engine: Engine,
) -> None:
    # The account now connects @carol: what was written for 1000's conversation must not go as her,
    # corrections and deletes included, and a message never sent is simply edited in place.
    async with opened(engine) as store:
        mapping = await linked(store)
        await accepted(store, msg(1), 1.0)
        [head] = readable(await store.outbox_heads())
        await store.mark_sending(head.id, 2.0, parts=[RenderedPart("Me: m1")], source=head.source)
        await store.mark_sent(head.id, Sent("1000-2001", "9001"), 2.0)
        await store.accept_if_mapped(msg(2), 3.0)
        me, carol = XUser("1000", "me"), XUser("2003", "carol")
        [held] = await store.hold_for_previous_account(mapping.account_id, me, carol, 4.0)
        assert (held.channel_id, held.held_for) == ("C1", "1000")
        await store.accept_if_mapped(msg(3), 5.0)  # posted after the switch: held too

        assert await store.accept_edit("T1", "C1", "2.000", "6.000", {"text": "m2!"}, 6.0) == "updated"
        assert await store.accept_edit("T1", "C1", "1.000", "7.000", {"text": "m1!"}, 7.0) == "queued"
        assert await store.accept_delete("T1", "C1", "3.000", "8.000", 8.0) == "cancelled"
        assert await store.outbox_heads() == []  # nothing may go as @carol
        rows_now = await engine.sql(
            "SELECT kind, slack_ts, state, held_state, held_for FROM outbox ORDER BY seq"
        )
        assert rows_now == [
            ("message", "1.000", "sent", None, None),
            ("message", "2.000", "held", "queued", "1000"),
            ("message", "3.000", "cancelled", None, None),
            ("edit", "7.000:edit", "held", "queued", "1000"),
        ]

        await store.hold_for_previous_account(mapping.account_id, carol, me, 9.0)  # 1000 is back
        heads = readable(await store.outbox_heads())
        assert [(h.kind.value, h.slack_ts, h.source.get("text")) for h in heads] == [
            ("message", "2.000", "m2!")
        ]
        released = await engine.sql("SELECT kind, state FROM outbox WHERE held_for IS NULL ORDER BY seq")
        assert released == [
            ("message", "sent"),
            ("message", "queued"),
            ("message", "cancelled"),
            ("edit", "queued"),
        ]


@memory_too
async def test_rescheduling_holding_and_releasing(engine: Engine) -> None:
    async with opened(engine) as store:
        mapping = await linked(store)
        await accepted(store, msg(1), 1.0)
        [head] = await store.outbox_heads()
        await store.reschedule(head.id, OutboxState.WAITING, 1e15, "reconnect", held_since=10.0)
        await store.reschedule(head.id, OutboxState.WAITING, 1e15, "reconnect", held_since=20.0)
        await store.set_hourglass(head.id, True)
        await store.set_media_id(head.id, "media-1")
        item = await store.get_item(head.id)
        assert item is not None
        assert (item.held_since, item.hourglass, item.media_id, item.last_error) == (
            10.0,
            True,
            "media-1",
            "reconnect",
        )
        await store.set_held_since(head.id, None)
        assert await store.release_account(mapping.account_id, 30.0) == 1
        assert await store.release_account(mapping.account_id, 30.0) == 1  # still unfinished: due again
        [queued] = await store.list_outbox([OutboxState.QUEUED])
        assert (queued.state, queued.next_attempt_at, queued.held_since) == (OutboxState.QUEUED, 30.0, None)
        await store.mark_failed(head.id, "refused")
        assert [i.last_error for i in await store.list_outbox([OutboxState.FAILED])] == ["refused"]
        await accepted(store, msg(2), 2.0)
        [second] = await store.outbox_heads()
        await store.mark_done(second.id, 40.0)
        assert (await store.outbox_summary("T1", "C1"))["counts"] == {"failed": 1, "sent": 1}
        assert (await store.outbox_summary("T1", "C9"))["pending"] == 0


async def test_budgets_are_saved_together_and_overwritten(engine_or_memory: AnyEngine) -> None:
    async with opened(engine_or_memory) as store:
        assert await store.ping()
        await store.save_budgets([("user:1:15m", 200, 150, 900.0), ("app:24h", 15000, 14000, 86400.0)])
        await store.save_budgets([("user:1:15m", 15, 3, 950.5)])
        await store.save_budgets([])  # nothing to save: a no-op that keeps the saved rows
        loaded = sorted(await store.load_budgets(), key=lambda b: b["key"])
        assert loaded == [
            {"key": "app:24h", "limit_": 15000, "remaining": 14000, "reset_at": 86400.0},
            {"key": "user:1:15m", "limit_": 15, "remaining": 3, "reset_at": 950.5},
        ]


async def test_budgets_saved_twice_in_one_call_keep_the_last(engine_or_memory: AnyEngine) -> None:
    async with opened(engine_or_memory) as store:
        await store.save_budgets([("app:24h", 15000, 14000, 86400.0), ("app:24h", 15000, 13999, 86400.0)])
        assert await store.load_budgets() == [
            {"key": "app:24h", "limit_": 15000, "remaining": 13999, "reset_at": 86400.0}
        ]


@memory_too
async def test_media_upload_bookkeeping(engine: Engine) -> None:
    async with opened(engine) as store:
        await linked(store)
        await accepted(store, msg(1), 1.0)
        [head] = await store.outbox_heads()
        await store.render(head.id, [RenderedPart("Me: m1", {"id": "F1", "name": "a.png"})])
        await store.begin_media_upload(head.id)
        await store.begin_media_upload(head.id)
        item = await store.get_item(head.id)
        assert item is not None and item.media_unfinished == 2
        await store.end_media_upload(head.id)
        await store.set_media_id(head.id, "m-1", 50.0)
        item = await store.get_item(head.id)
        assert item is not None
        assert (item.media_id, item.media_uploaded_at, item.media_unfinished) == ("m-1", 50.0, 0)
        await store.drop_media(head.id)
        item = await store.get_item(head.id)
        assert item is not None and (item.media, item.media_id, item.media_uploaded_at) == (None, None, None)
        assert item.text == "Me: m1"


async def test_a_mapping_keeps_the_participants_handle(engine_or_memory: AnyEngine) -> None:
    async with opened(engine_or_memory) as store:
        account = await store.save_account("T1", "U1", XUser("1000", "me"), TokenSet("a", "r", None))
        mapping = ChannelMapping(
            "T1", "C1", MappingKind.DM, account.id, None, "2001", "U1", 0.0, participant_username="alice"
        )
        await store.create_mapping(mapping)
        assert await store.get_mapping("T1", "C1") == mapping


async def test_a_mapping_says_whether_its_conversation_is_encrypted(engine_or_memory: AnyEngine) -> None:
    # X Chat ids look like legacy ones ("A-B", "g…"): only the stored flag tells the paths apart.
    async with opened(engine_or_memory) as store:
        account = await store.save_account("T1", "U1", XUser("1000", "me"), TokenSet("a", "r", None))
        legacy = ChannelMapping("T1", "C1", MappingKind.LINK, account.id, "1000-2001", None, "U1", 0.0)
        chat = ChannelMapping(
            "T1", "C2", MappingKind.LINK, account.id, "1000-2001", None, "U1", 0.0, encrypted=True
        )
        await store.create_mapping(legacy)
        await store.create_mapping(chat)
        assert (await store.get_mapping("T1", "C1")).encrypted is False  # type: ignore[union-attr]
        assert (await store.get_mapping("T1", "C2")).encrypted is True  # type: ignore[union-attr]


async def test_disconnect_deletes_tokens_pauses_mappings_and_reconnect_resumes(
    engine_or_memory: AnyEngine,
) -> None:
    store = engine_or_memory.store()
    await store.open()
    try:
        account = await store.save_account("T1", "U1", XUser("1000", "me"), TokenSet("a", "r", 5.0))
        other = await store.save_account("T1", "U2", XUser("1001", "you"), TokenSet("b", "s", 5.0))
        for channel, owner in (("C1", account), ("C2", account), ("C3", other)):
            mapping = ChannelMapping(
                "T1", channel, MappingKind.LINK, owner.id, "1000-2001", None, owner.slack_user_id, 0
            )
            await store.create_mapping(mapping)

        paused = await store.disconnect_account(account.id, 100.0, "U1")
        assert [(m.channel_id, m.paused_at, m.paused_by) for m in paused] == [
            ("C1", 100.0, "U1"),
            ("C2", 100.0, "U1"),
        ]
        gone = await store.get_account(account.id)
        assert gone is not None and gone.disconnected and gone.needs_reconnect
        assert gone.tokens.access_token == "" and gone.tokens.refresh_token is None
        assert await store.disconnect_account(account.id, 200.0, "U1") == []  # already paused
        untouched = await store.get_mapping("T1", "C3")
        assert untouched is not None and untouched.paused_at is None

        again = await store.save_account("T1", "U1", XUser("1000", "me"), TokenSet("c", "t", 9.0))
        assert again.id == account.id and not again.disconnected and not again.needs_reconnect
        assert [m.channel_id for m in await store.resume_mappings(account.id)] == ["C1", "C2"]
        assert await store.resume_mappings(account.id) == []
    finally:
        await store.close()


async def test_an_oauth_state_is_confirmed_by_one_browser_and_used_once_by_it(
    engine_or_memory: AnyEngine,
) -> None:
    store = engine_or_memory.store()
    await store.open()
    try:
        state = OAuthState("s1", "verifier", "T1", "U1", "C1", None, 1000.0, "ada", "fake")
        await store.save_oauth_state(state)
        shown = await store.get_oauth_state("s1", 10.0)
        assert shown is not None and (shown.slack_user_name, shown.team_name) == ("ada", "fake")
        assert await store.get_oauth_state("s1", 1000.0) is None  # expired
        assert await store.consume_oauth_state("s1", 10.0, "hash-a") is None  # not confirmed yet

        confirmed = await store.confirm_oauth_state("s1", 10.0, "hash-a")
        assert confirmed is not None and confirmed.code_verifier == "verifier"
        assert await store.confirm_oauth_state("s1", 10.0, "hash-b") is None  # one browser only
        assert await store.get_oauth_state("s1", 10.0) is None  # the page no longer shows it

        assert await store.consume_oauth_state("s1", 10.0, "hash-b") is None  # another browser
        used = await store.consume_oauth_state("s1", 10.0, "hash-a")
        assert used is not None and used.slack_user_id == "U1"
        assert await store.consume_oauth_state("s1", 10.0, "hash-a") is None  # single use
        assert await store.confirm_oauth_state("nope", 10.0, "hash-a") is None
    finally:
        await store.close()


async def test_delete_mapping_leaves_a_mapping_made_since_the_check_alone(
    engine_or_memory: AnyEngine,
) -> None:
    """`/xdm unlink` checks who may unlink the mapping it read, then deletes: a mapping someone
    else made in between (the first unlinked meanwhile) must not be what that delete removes."""
    async with opened(engine_or_memory) as store:
        account = await store.save_account("T1", "U1", XUser("1000", "me"), TokenSet("a", "r", None))
        checked = ChannelMapping("T1", "C1", MappingKind.LINK, account.id, "1000-2001", None, "U1", 1.0)
        await store.create_mapping(checked)
        assert await store.delete_mapping("T1", "C1", made=checked) is not None
        since = ChannelMapping("T1", "C1", MappingKind.LINK, account.id, "1000-2002", None, "U2", 2.0)
        await store.create_mapping(since)
        assert await store.delete_mapping("T1", "C1", made=checked) is None
        assert await store.get_mapping("T1", "C1") == since


@memory_too
async def test_abandoning_a_group_unmaps_only_the_channel_still_waiting_for_it(engine: Engine) -> None:
    """X refused the group for good: the mapping goes, and the rows addressed to that group come
    back for the caller to fail; another group's channel, or a created group, is left alone."""
    async with opened(engine) as store:
        account = await store.save_account("T1", "U1", XUser("1000", "me"), TokenSet("a", "r", None))
        group = ("2001", "2002")
        waiting = ChannelMapping(
            "T1", "C1", MappingKind.GROUP, account.id, None, None, "U1", 1.0, group_participants=group
        )
        await store.create_mapping(waiting)
        for n in (1, 2):
            assert (await store.accept_if_mapped(msg(n), float(n))) is not None
        assert await store.abandon_group("T1", "C1", ("2001", "2003")) == (None, [])
        assert await store.get_mapping("T1", "C1") == waiting

        removed, pending = await store.abandon_group("T1", "C1", group)
        assert removed == waiting and await store.get_mapping("T1", "C1") is None
        assert [(p.slack_ts, p.target.new_group) for p in pending] == [("1.000", group), ("2.000", group)]
        for item in pending:
            await store.mark_failed(item.id, "X refused the group")
        assert await store.abandon_group("T1", "C1", group) == (None, [])


@memory_too
async def test_slack_retrying_a_delete_does_not_cancel_the_delete(engine: Engine) -> None:
    # Found by the fault model (bench/fault_soak.py seed 103): Slack delivered one
    # message_deleted twice; the second cancelled the first's queued delete row (same ref_ts),
    # then could not add its own (same key), so the DM stayed on X.
    async with opened(engine) as store:
        await linked(store)
        await store.accept_if_mapped(msg(1), 1.0)
        [head] = readable(await store.outbox_heads())
        await store.mark_sending(head.id, 2.0, parts=[RenderedPart("Me: m1")], source=head.source)
        await store.mark_sent(head.id, Sent("1000-2001", "9001"), 3.0)
        assert await store.accept_delete("T1", "C1", "1.000", "4.000", 4.0) == "queued"
        await store.accept_delete("T1", "C1", "1.000", "4.000", 5.0)  # Slack's retry
        [delete] = readable(await store.outbox_heads())
        assert delete.kind.value == "delete" and delete.state is OutboxState.QUEUED
        assert await store.relayed_events("T1", "C1", "1.000") == ["9001"]


async def test_a_row_cancelled_in_slack_stays_cancelled_whatever_a_stale_reader_writes(
    engine: Engine,
) -> None:
    # Found by the fault model (bench/fault_soak.py seed 205): the worker read a row, Slack's
    # delete cancelled it, then the worker held it for the rate limit from its stale copy: the
    # hold wrote "waiting" over "cancelled" and the deleted message went to X.
    async with opened(engine) as store:
        await linked(store)
        await store.accept_if_mapped(msg(1), 1.0)
        [stale] = await store.outbox_heads()
        assert await store.accept_delete("T1", "C1", "1.000", "2.000", 2.0) == "cancelled"
        await store.reschedule(
            stale.id, OutboxState.WAITING, 9.0, "waiting for X's rate limit", held_since=3.0
        )
        await store.reschedule(stale.id, OutboxState.QUEUED, 9.0, "X failed with HTTP 503")
        await store.mark_failed(stale.id, "X refused it")
        assert await store.outbox_heads() == []
        assert await engine.sql("SELECT state FROM outbox") == [("cancelled",)]


@memory_too
async def test_recently_sent_lists_the_last_parts_sent_since_newest_first(engine: Engine) -> None:
    async with opened(engine) as store:
        await linked(store)
        for n in (1, 2, 3):
            await store.accept_if_mapped(msg(n), float(n))
        for sent_at in (10.0, 20.0):
            [head] = readable(await store.outbox_heads())
            await store.mark_sending(
                head.id, sent_at, parts=[RenderedPart(f"Me: {head.slack_ts}")], source=head.source
            )
            await store.mark_sent(head.id, Sent("1000-2001", f"90{sent_at:.0f}"), sent_at)
        recent = await store.recently_sent(15.0, 10)
        assert [item.slack_ts for item in recent] == ["2.000"]  # 1 was sent before, 3 not yet
        assert [item.slack_ts for item in await store.recently_sent(0.0, 10)] == ["2.000", "1.000"]
        assert len(await store.recently_sent(0.0, 1)) == 1


async def test_a_pending_connection_is_taken_once_by_its_own_slack_user_before_it_expires(
    engine_or_memory: AnyEngine,
) -> None:
    store = engine_or_memory.store()
    await store.open()
    try:
        tokens = TokenSet("access-secret", "refresh-secret", 5000.0, "dm.read dm.write")
        pending = PendingConnection(
            "p1", "T1", "U1", "C1", "https://r", XUser("1000", "owner"), tokens, 100.0
        )
        await store.save_pending_connection(pending)
        await store.save_pending_connection(
            PendingConnection("p2", "T1", "U1", "", None, XUser("1000", "owner"), tokens, 50.0)
        )
        if isinstance(engine_or_memory, Engine):  # the fake keeps no columns, so no ciphertext
            stored = await engine_or_memory.sql("SELECT access_token, refresh_token FROM pending_connections")
            assert all("secret" not in str(v) for row in stored for v in row)  # encrypted at rest
        assert await store.get_pending_connection("p1", 10.0) == pending
        assert await store.get_pending_connection("p1", 100.0) is None  # expired

        assert await store.take_pending_connection("p1", "T1", "U2", 10.0) is None  # someone else
        assert await store.take_pending_connection("p1", "T2", "U1", 10.0) is None  # another team
        taken = await asyncio.gather(
            *(store.take_pending_connection("p1", "T1", "U1", 10.0) for _ in range(4))
        )
        assert [t for t in taken if t is not None] == [pending]  # once, even racing
        assert await store.get_pending_connection("p1", 10.0) is None

        assert await store.take_pending_connection("p2", "T1", "U1", 60.0) is None  # expired
        assert [p.id for p in await store.take_expired_pending_connections(60.0)] == ["p2"]
        assert await store.take_expired_pending_connections(60.0) == []
    finally:
        await store.close()


async def test_rows_of_an_encrypted_conversation_say_so_whatever_happens_to_the_mapping(
    engine: Engine,
) -> None:
    """Every row of an encrypted channel (its parts, corrections and deletes) is encrypted, even
    once the channel is unlinked: none may ever fall back to the legacy DM, in the clear."""
    async with opened(engine) as store:
        account = await store.save_account("T1", "U1", XUser("1000", "me"), TokenSet("a", "r", None))
        secret = ChannelMapping(
            "T1", "C1", MappingKind.LINK, account.id, "1000-2001", None, "U1", 0.0, encrypted=True
        )
        await store.create_mapping(secret)
        await linked(store, channel="C2")  # a legacy channel beside it
        await store.accept_if_mapped(msg(1), 1.0)
        await store.accept_if_mapped(msg(1, channel="C2"), 1.0)
        heads = {h.channel_id: h for h in readable(await store.outbox_heads())}
        assert heads["C1"].encrypted and not heads["C2"].encrypted
        head = heads["C1"]
        await store.mark_sending(
            head.id, 2.0, parts=[RenderedPart("Me: a"), RenderedPart("Me: b")], source=head.source
        )
        await store.mark_sent(head.id, Sent("1000-2001", "9001"), 2.0)
        await store.delete_mapping("T1", "C1")  # unlinked: its corrections still go encrypted
        assert await store.accept_edit("T1", "C1", "1.000", "4.000", {"text": "m1!"}, 4.0) == "queued"
        rows = await engine.sql(
            "SELECT kind, part, encrypted FROM outbox WHERE channel_id = 'C1' ORDER BY seq, part"
        )
        assert [(kind, part, bool(flag)) for kind, part, flag in rows] == [
            ("message", 0, True),
            ("message", 1, True),
            ("edit", 0, True),
        ]


@memory_too
async def test_the_prepared_x_chat_message_is_kept_once_and_only_for_the_text_it_was_made_from(
    engine: Engine,
) -> None:
    async with opened(engine) as store:
        await linked(store)
        await store.accept_if_mapped(msg(1), 1.0)
        [head] = readable(await store.outbox_heads())
        rendered = await store.render(head.id, [RenderedPart("Me: m1")])
        first = {"message_id": "m-1", "body": {"message_id": "m-1", "encoded_message_create_event": "AA"}}
        assert await store.keep_chat(head.id, "Me: other", first) is None  # an edit changed the text
        kept = await store.keep_chat(rendered.id, "Me: m1", first)
        assert kept is not None and kept.chat == first
        second = {"message_id": "m-2", "body": {}}
        again = await store.keep_chat(head.id, "Me: m1", second)
        assert again is not None and again.chat == first  # a retry never makes another message
        # An edit before anything reached X: the text is rendered again, and the message with it.
        assert await store.accept_edit("T1", "C1", "1.000", "2.000", {"text": "m1!"}, 2.0) == "updated"
        [edited] = readable(await store.outbox_heads())
        assert edited.text is None and edited.chat is None


@memory_too
async def test_a_dropped_x_chat_message_is_replaced_by_the_next_one_kept(engine: Engine) -> None:
    """X refused the prepared message (signed with keys it no longer holds): once dropped, the row
    takes the next one, still only for the text it was made from."""
    async with opened(engine) as store:
        await linked(store)
        await store.accept_if_mapped(msg(1), 1.0)
        [head] = readable(await store.outbox_heads())
        await store.render(head.id, [RenderedPart("Me: m1")])
        first = {"message_id": "m-1", "body": {}}
        assert (kept := await store.keep_chat(head.id, "Me: m1", first)) and kept.chat == first
        await store.drop_chat(head.id)
        dropped = await store.get_item(head.id)
        assert dropped is not None and dropped.chat is None and dropped.text == "Me: m1"
        second = {"message_id": "m-2", "body": {}}
        assert await store.keep_chat(head.id, "Me: other", second) is None
        again = await store.keep_chat(head.id, "Me: m1", second)
        assert again is not None and again.chat == second


@memory_too
async def test_a_failure_is_kept_untold_until_its_author_is_told(engine: Engine) -> None:
    async with opened(engine) as store:
        await linked(store)
        await accepted(store, msg(1), 1.0)
        await accepted(store, msg(2), 2.0)
        first, *_ = readable(await store.outbox_heads())
        assert await store.failures_to_tell() == []
        await store.mark_failed(first.id, "X refused", Failure.RECIPIENT_REFUSES_DMS)
        [(untold, failure)] = await store.failures_to_tell()
        assert (untold.id, failure) == (first.id, Failure.RECIPIENT_REFUSES_DMS)
        assert isinstance(untold, OutboxItem) and untold.last_error == "X refused"
        # Failing a row already failed changes nothing (a second worker, a retried call).
        await store.mark_failed(first.id, "other", Failure.OTHER)
        assert [(i.id, f) for i, f in await store.failures_to_tell()] == [
            (first.id, Failure.RECIPIENT_REFUSES_DMS)
        ]
        await store.failure_told(first.id)
        assert await store.failures_to_tell() == []
        [second] = readable(await store.outbox_heads())
        await store.mark_failed(second.id, "gone")
        assert [(i.id, f) for i, f in await store.failures_to_tell(limit=5)] == [(second.id, Failure.OTHER)]


async def test_accounts_and_mappings_are_found_by_what_the_caller_knows(engine_or_memory: AnyEngine) -> None:
    async with opened(engine_or_memory) as store:
        ada = await store.save_account("T1", "U1", XUser("1000", "ada"), TokenSet("a", "r", None))
        bob = await store.save_account("T2", "U2", XUser("1000", "ada"), TokenSet("b", "r", None))
        cy = await store.save_account("T2", "U3", XUser("3000", "cy"), TokenSet("c", "r", None))
        assert [a.id for a in await store.find_accounts(x_user_id="1000")] == [ada.id, bob.id]
        assert [a.id for a in await store.find_accounts(team_id="T2")] == [bob.id, cy.id]
        assert [a.id for a in await store.find_accounts(team_id="T2", x_user_id="3000")] == [cy.id]
        assert await store.find_accounts(x_user_id="9999") == []
        link = MappingKind.LINK
        await store.create_mapping(ChannelMapping("T1", "C1", link, ada.id, "1000-2001", None, "U1", 1.0))
        await store.create_mapping(ChannelMapping("T2", "C2", link, bob.id, "1000-2001", None, "U2", 2.0))
        await store.create_mapping(ChannelMapping("T2", "C3", link, cy.id, "3000-2001", None, "U3", 3.0))
        found = await store.find_mappings(conversation_id="1000-2001")
        assert [(m.team_id, m.channel_id) for m in found] == [("T1", "C1"), ("T2", "C2")]
        assert [m.channel_id for m in await store.find_mappings(team_id="T2")] == ["C2", "C3"]
        assert [m.channel_id for m in await store.find_mappings(team_id="T2", account_id=cy.id)] == ["C3"]
        assert [m.channel_id for m in await store.find_mappings()] == ["C1", "C2", "C3"]
        assert await store.find_mappings(account_id=ada.id, conversation_id="3000-2001") == []


async def test_the_accounts_with_groups_and_an_accounts_first_bridge_are_asked_of_the_mappings(
    engine_or_memory: AnyEngine,
) -> None:
    async with opened(engine_or_memory) as store:
        ada = await store.save_account("T1", "U1", XUser("1000", "ada"), TokenSet("a", "r", None))
        bob = await store.save_account("T1", "U2", XUser("2000", "bob"), TokenSet("b", "r", None))
        cy = await store.save_account("T1", "U3", XUser("3000", "cy"), TokenSet("c", "r", None))
        assert await store.accounts_with_groups() == set()
        assert await store.first_bridged_at(ada.id) is None
        link = MappingKind.LINK
        await store.create_mapping(ChannelMapping("T1", "C1", link, ada.id, "1000-2001", None, "U1", 5.0))
        await store.create_mapping(ChannelMapping("T1", "C2", link, ada.id, "1000-2002", None, "U1", 3.0))
        await store.create_mapping(ChannelMapping("T1", "C3", link, bob.id, "1234567", None, "U2", 4.0))
        assert await store.accounts_with_groups() == {bob.id}  # linked by a group's id
        # A group being created (no id yet) counts too; a 1-to-1 (an "A-B" id) does not.
        await store.create_mapping(
            ChannelMapping("T1", "C4", MappingKind.GROUP, cy.id, None, None, "U3", 6.0)
        )
        assert await store.accounts_with_groups() == {bob.id, cy.id}
        assert await store.first_bridged_at(ada.id) == 3.0
        assert await store.first_bridged_at(cy.id) == 6.0
        await store.delete_mapping("T1", "C2")
        assert await store.first_bridged_at(ada.id) == 5.0


@memory_too
async def test_the_accounts_to_read_are_those_connected_and_not_needing_reconnection(engine: Engine) -> None:
    async with opened(engine) as store:
        assert await store.account_ids_to_read() == []
        ada = await store.save_account("T1", "U1", XUser("1000", "ada"), TokenSet("a", "r", None))
        bob = await store.save_account("T1", "U2", XUser("2000", "bob"), TokenSet("b", "r", None))
        cy = await store.save_account("T1", "U3", XUser("3000", "cy"), TokenSet("c", "r", None))
        assert await store.account_ids_to_read() == [ada.id, bob.id, cy.id]
        await store.set_needs_reconnect(bob.id, True)  # X refused its refresh
        await store.disconnect_account(cy.id, 10.0, "U3")
        assert await store.account_ids_to_read() == [ada.id]
        await store.save_account("T1", "U3", XUser("3000", "cy"), TokenSet("c2", "r", None))  # back
        await store.set_needs_reconnect(bob.id, False)
        assert await store.account_ids_to_read() == [ada.id, bob.id, cy.id]


@memory_too
async def test_the_accounts_a_pass_works_on_are_read_in_one_go(engine: Engine) -> None:
    async with opened(engine) as store:
        made = [
            await store.save_account(
                "T1", f"U{n}", XUser(str(1000 + n), f"u{n}"), TokenSet(f"a{n}", "r", None)
            )
            for n in range(503)
        ]
        wanted = [made[n].id for n in (502, 0, 250, 5)] + [99_999]  # the last one is not there
        found = await store.accounts_by_id(wanted)
        assert [(a.id, a.tokens.access_token) for a in found] == [
            (made[n].id, f"a{n}") for n in (0, 5, 250, 502)
        ]
        every = await store.accounts_by_id([a.id for a in made])  # past one read's parameters
        assert [a.id for a in every] == [a.id for a in made]
        assert await store.accounts_by_id([]) == []


@memory_too
async def test_every_mapping_is_listed_once_in_channel_order_across_read_pages(engine: Engine) -> None:
    # list_mappings reads a page at a time (the store's thread free between pages): the pages
    # must meet exactly, across a team's boundary too.
    async with opened(engine) as store:
        ada = await store.save_account("T1", "U1", XUser("1000", "ada"), TokenSet("a", "r", None))
        made = [
            (team, f"C{n:05d}")
            for team, count in (("T1", LIST_PAGE + 1), ("T2", LIST_PAGE - 1), ("T3", 2))
            for n in range(count)
        ]
        for team, channel in reversed(made):
            kind = MappingKind.LINK
            await store.create_mapping(
                ChannelMapping(team, channel, kind, ada.id, f"1000-{channel[1:]}", None, "U1", 1.0)
            )
        assert [(m.team_id, m.channel_id) for m in await store.list_mappings()] == made
