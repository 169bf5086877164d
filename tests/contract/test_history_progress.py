"""The history progress `/xdm status` shows (adapters/store/history.py), on both engines."""

from __future__ import annotations

from adapters.store.history import HistoryStore
from bridge.model import (
    ChannelMapping,
    EventKind,
    HistoryState,
    InboundEvent,
    InboundOrigin,
    MappingKind,
    TokenSet,
    XUser,
)
from tests.contract.conftest import Engine


async def test_history_to_read_then_waiting_then_posted(engine: Engine) -> None:
    store = engine.store()
    await store.open()
    try:
        history = HistoryStore(store.engine)
        account = await store.save_account("T1", "U1", XUser("1000", "me"), TokenSet("a", "r", None))
        mapping = ChannelMapping("T1", "C1", MappingKind.LINK, account.id, "1000-2001", None, "U1", 100.0)
        assert await history.history(account.id, "1000-2001", "T1", "C1") == HistoryState(False, 0, 0)
        await store.create_mapping(mapping, history=True)
        assert await history.history(account.id, "1000-2001", "T1", "C1") == HistoryState(True, 0, 0)
        events = [
            InboundEvent(
                str(9000 + i),
                EventKind.MESSAGE_CREATE,
                "1000-2001",
                "2001",
                {"text": f"old {i}"},
                InboundOrigin.BACKFILL,
            )
            for i in range(3)
        ]
        assert await store.take_inbound(account.id, events, None, 101.0) == 3
        await store.finish_backfill(account.id, "1000-2001", 100.0)
        assert await history.history(account.id, "1000-2001", "T1", "C1") == HistoryState(False, 0, 3)
        # Another channel's history is not this one's.
        assert await history.history(account.id, "1000-2001", "T1", "C2") == HistoryState(False, 0, 0)
    finally:
        await store.close()
