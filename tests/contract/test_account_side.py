"""What the account-side roles do to mappings, on both engines and on the in-memory store
(``engine_or_memory``): switching X accounts and giving up a group. Their effects on the outbox
and the read cursor are held by test_relay_store.py, test_inbound_store.py and
test_store_contract.py (on the fake too where they read through the port)."""

from __future__ import annotations

from bridge.model import ChannelMapping, MappingKind, TokenSet, XUser
from tests.contract.conftest import AnyEngine, ContractStore, opened

ME, OTHER = XUser("1000", "me"), XUser("3000", "other")
GROUP = ("2001", "2002")


async def four_channels(store: ContractStore) -> int:
    """An account bridging C1 by conversation id, C2 by person, C3 as a group to create, C4 a
    group created since, and C5 by person once its conversation's id is known."""
    account = await store.save_account("T1", "U1", ME, TokenSet("a", "r", None))
    for mapping in (
        ChannelMapping("T1", "C1", MappingKind.LINK, account.id, "1000-2001", None, "U1", 1.0),
        ChannelMapping("T1", "C2", MappingKind.DM, account.id, None, "2001", "U1", 1.0),
        ChannelMapping(
            "T1", "C3", MappingKind.GROUP, account.id, None, None, "U1", 1.0, group_participants=GROUP
        ),
        ChannelMapping(
            "T1", "C4", MappingKind.GROUP, account.id, "1234567", None, "U1", 1.0, group_participants=GROUP
        ),
        ChannelMapping("T1", "C5", MappingKind.DM, account.id, "1000-2003", "2003", "U1", 1.0),
    ):
        assert await store.create_mapping(mapping) == mapping
    return account.id


async def paused(store: ContractStore) -> dict[str, tuple[float | None, str | None, str | None]]:
    """Per channel: when and by whom it was paused, and for which X user it is held."""
    return {m.channel_id: (m.paused_at, m.paused_by, m.held_for) for m in await store.list_mappings()}


async def test_another_x_account_holds_the_conversations_of_the_previous_one_until_it_is_back(
    engine_or_memory: AnyEngine,
) -> None:
    async with opened(engine_or_memory) as store:
        account_id = await four_channels(store)
        assert await store.hold_for_previous_account(account_id, ME, ME, 2.0) == []  # the same X user
        held = await store.hold_for_previous_account(account_id, ME, OTHER, 2.0)
        # By conversation id only: a 1-to-1 by person (even with its id known), or a group not
        # created yet, is no one's yet.
        assert [(m.channel_id, m.held_for, m.held_for_username) for m in held] == [
            ("C1", "1000", "me"),
            ("C4", "1000", "me"),
        ]
        assert await paused(store) == {
            "C1": (2.0, "switch", "1000"),
            "C2": (None, None, None),
            "C3": (None, None, None),
            "C4": (2.0, "switch", "1000"),
            "C5": (None, None, None),
        }
        assert await store.hold_for_previous_account(account_id, ME, OTHER, 3.0) == []  # held already
        assert await store.resume_mappings(account_id) == []  # held: not resumed by a reconnection

        # Back to the first X account: its channels are its own again, still paused until resumed.
        assert await store.hold_for_previous_account(account_id, OTHER, ME, 4.0) == []
        assert (await paused(store))["C1"] == (2.0, "switch", None)
        resumed = await store.resume_mappings(account_id)
        assert [(m.channel_id, m.paused_at, m.held_for) for m in resumed] == [
            ("C1", None, None),
            ("C4", None, None),
        ]
        assert set((await paused(store)).values()) == {(None, None, None)}


async def test_a_channel_paused_before_the_switch_keeps_when_and_by_whom(engine_or_memory: AnyEngine) -> None:
    async with opened(engine_or_memory) as store:
        account_id = await four_channels(store)
        assert len(await store.disconnect_account(account_id, 1.5, "U1")) == 5
        again = await store.save_account("T1", "U1", OTHER, TokenSet("b", "s", None))
        assert again.id == account_id and not again.disconnected
        held = await store.hold_for_previous_account(account_id, ME, OTHER, 2.0)
        assert [(m.channel_id, m.paused_at, m.paused_by, m.held_for) for m in held] == [
            ("C1", 1.5, "U1", "1000"),
            ("C4", 1.5, "U1", "1000"),
        ]
        resumed = await store.resume_mappings(account_id)
        assert [m.channel_id for m in resumed] == ["C2", "C3", "C5"]  # what the other X account may send to


async def test_giving_up_a_group_unmaps_only_the_channel_still_waiting_for_that_group(
    engine_or_memory: AnyEngine,
) -> None:
    async with opened(engine_or_memory) as store:
        account_id = await four_channels(store)
        waiting = await store.get_mapping("T1", "C3")
        assert await store.abandon_group("T1", "C3", ("2001", "2003")) == (None, [])  # another group
        assert await store.abandon_group("T1", "C4", GROUP) == (None, [])  # created: it has an id
        assert await store.abandon_group("T1", "C1", GROUP) == (None, [])  # not a group
        assert await store.abandon_group("T1", "C3", GROUP) == (waiting, [])  # no row waited for it
        assert await store.get_mapping("T1", "C3") is None
        assert await store.abandon_group("T1", "C3", GROUP) == (None, [])
        assert [m.channel_id for m in await store.find_mappings(account_id=account_id)] == [
            "C1",
            "C2",
            "C4",
            "C5",
        ]
