"""A scrape's cost does not grow with the bridge's channels: the gauges that need every mapping
(the mapped accounts' rate figures, one-way conversations) read them at most once a minute."""

from __future__ import annotations

from adapters.web.metrics import MAPPINGS_EVERY, BridgeMetrics
from bridge.budget import Budget
from bridge.model import ChannelMapping, MappingKind, TokenSet, XUser
from tests.memory_store import MemoryStore
from tests.virtual_clock import VirtualClock


class CountingStore(MemoryStore):
    """The in-memory store, counting the reads of every mapping."""

    listings = 0

    async def list_mappings(self) -> list[ChannelMapping]:
        self.listings += 1
        return await super().list_mappings()


async def test_scrapes_within_a_minute_read_the_mappings_once_and_then_again() -> None:
    store, clock = CountingStore(), VirtualClock()
    ada = await store.save_account("T1", "U1", XUser("1000", "ada"), TokenSet("a", "r", None))
    await store.create_mapping(ChannelMapping("T1", "C1", MappingKind.DM, ada.id, "2001", None, "U1", 1.0))
    metrics = BridgeMetrics(x_api_url="http://x.invalid", slack_api_url="http://slack.invalid")
    metrics.bind(store, Budget(store), clock)

    def remaining() -> float | None:
        return metrics.registry.get_sample_value(
            "x_rate_limit_remaining", {"account": str(ada.id), "window": "15m"}
        )

    await metrics.refresh()
    assert store.listings == 1 and remaining() == 15  # the mapped account's window is shown
    await clock.advance(MAPPINGS_EVERY - 1)
    await metrics.refresh()
    await metrics.refresh()
    assert store.listings == 1 and remaining() == 15  # still shown, from the mappings read before
    await clock.advance(1)
    await metrics.refresh()
    assert store.listings == 2
