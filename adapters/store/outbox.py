"""The outbox role, written once over the ``Engine`` seam for both stores."""

from __future__ import annotations

import logging

from adapters.store import rows
from adapters.store.roles import StoreBase
from bridge.errors import Failure
from bridge.model import OutboxItem, Unreadable
from migrations import PENDING_STATES

log = logging.getLogger(__name__)


class OutboxRole(StoreBase):
    """Slack messages on their way to X: failing them, and telling their authors."""

    async def mark_failed(self, item_id: int, error: str, failure: Failure = Failure.OTHER) -> None:
        # The author is still to be told, in the same commit: a process killed before the ⚠️ and
        # the ephemeral leaves the row for the next start to tell (``failures_to_tell``).
        await self.engine.execute(
            "UPDATE outbox SET state = 'failed', last_error = ?, untold_failure = ? "
            f"WHERE id = ? AND state IN {PENDING_STATES}",
            error,
            failure.value,
            item_id,
        )

    async def failures_to_tell(self, limit: int = 100) -> list[tuple[OutboxItem | Unreadable, Failure]]:
        rows_ = await self.engine.fetch(
            "SELECT * FROM outbox WHERE untold_failure IS NOT NULL ORDER BY id LIMIT ?", limit
        )
        return [(rows.readable(row), _failure(row["untold_failure"])) for row in rows_]

    async def failure_told(self, item_id: int) -> None:
        await self.engine.execute("UPDATE outbox SET untold_failure = NULL WHERE id = ?", item_id)


def _failure(value: str) -> Failure:
    try:
        return Failure(value)
    except ValueError:  # written by a newer version: still told, counted as other
        return Failure.OTHER
