"""Outbox helpers for tests: readable heads, and accepting a message as Slack's event does."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from bridge.model import Accepted, IncomingMessage, OutboxItem, Unreadable


class AcceptingStore(Protocol):
    async def accept_if_mapped(self, message: IncomingMessage, now: float) -> Accepted | None: ...


def readable(heads: Sequence[OutboxItem | Unreadable]) -> list[OutboxItem]:
    """``heads`` as ``OutboxItem``s, failing the test if any row came back ``Unreadable``."""
    assert all(isinstance(h, OutboxItem) for h in heads), heads
    return [h for h in heads if isinstance(h, OutboxItem)]


async def accepted(store: AcceptingStore, message: IncomingMessage, now: float) -> bool:
    """Accept ``message`` into its channel's outbox as Slack's event does; True when it is new
    (False for a message seen before; the test fails if the channel is not mapped)."""
    result = await store.accept_if_mapped(message, now)
    assert result is not None, f"channel {message.channel_id} is not mapped"
    return result.new
