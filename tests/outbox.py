"""Narrowing the store's outbox heads for tests that only ever write readable rows."""

from __future__ import annotations

from collections.abc import Sequence

from bridge.model import OutboxItem, Unreadable


def readable(heads: Sequence[OutboxItem | Unreadable]) -> list[OutboxItem]:
    """``heads`` as ``OutboxItem``s, failing the test if any row came back ``Unreadable``."""
    assert all(isinstance(h, OutboxItem) for h in heads), heads
    return [h for h in heads if isinstance(h, OutboxItem)]
